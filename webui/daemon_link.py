"""The web UI's side of the daemon, all over the API socket: its status and events, the config file (root's,
0600: the UI never opens it) and changes to it. A change is checked here with quicether.config_edit first
(the page names the field at fault), then sent whole to the daemon (apply_config), which checks it again,
writes it and applies it as a reload does."""

from __future__ import annotations

import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app

from quicether import config_edit, joining
from quicether.config import Config, ConfigError
from quicether.daemon import api
from quicether.identity import IdentityError, decode_node_id
from quicether.invite import InviteError
from quicether.net.links import LinkError

Document = config_edit.Document


class DaemonDown(RuntimeError):
    """No daemon answers on the API socket."""


# A change waits until the daemon has applied it (restarting dnsmasq or the UI takes seconds).
RELOAD_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 3.0
SLOW_COMMANDS = ("reload", "apply_config", "join_network")


def ask(cmd: str, **args: Any) -> dict[str, Any]:
    path = Path(current_app.config["QE_API"])
    try:
        answer = api.request(path, cmd, timeout=RELOAD_TIMEOUT_S if cmd in SLOW_COMMANDS else REQUEST_TIMEOUT_S,
                             **args)
    except (OSError, ValueError) as exc:
        raise DaemonDown(f"the QuicEther daemon is not answering ({exc.strerror if isinstance(exc, OSError) else exc})"
                         ) from None
    return answer


def join_network(code: str, name: str, lan: list[str] | None = None) -> joining.Joined:
    """Has the daemon join the network of invite `code` (this node's key is root's), routing the LAN
    prefixes `lan`: InviteError says why not (used, expired, damaged, foreign, unreachable admin, a LAN
    another member routes). The config is not changed here."""
    answer = ask("join_network", code=code, name=name, **({} if lan is None else {"lan": lan}))
    if not answer.get("ok"):
        raise InviteError(str(answer.get("error", "the daemon did not say why")))
    return joining.from_dict(answer.get("joined") or {})


def config_path() -> Path:
    """Where the config file is (for messages: the daemon's errors name it)."""
    return Path(current_app.config["QE_CONFIG"])


def config_text() -> str:
    """The config file as the daemon reads it (DaemonDown if it does not answer)."""
    answer = ask("config")
    if not answer.get("ok") or not isinstance(answer.get("text"), str):
        raise DaemonDown(f"the QuicEther daemon did not give its config ({answer.get('error', 'no text')})")
    text: str = answer["text"]
    return text


def parse_document(text: str) -> Document:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{config_path()}: not valid TOML: {exc}") from None


def document() -> Document:
    """The config as a TOML document (ConfigError if the file is not TOML, DaemonDown without a daemon)."""
    return parse_document(config_text())


def node_key() -> bytes:
    """This node's public key, from the daemon's status (the UI cannot read the key file; IdentityError)."""
    node_id = ask("status").get("node", {}).get("node_id")
    if not isinstance(node_id, str):
        raise IdentityError("the daemon did not name this node's id")
    return decode_node_id(node_id)


def friendly(error: ConfigError | LinkError | str) -> str:
    """A config error without the file name in front: the page already says which setting it is about."""
    text = str(error)
    prefix = f"{config_path()}: "
    return text[len(prefix):] if text.startswith(prefix) else text


@dataclass(frozen=True)
class Applied:
    """What the daemon said to a reload request, for the page that follows the change."""
    message: str
    ok: bool  # False: the daemon refused the new config (the message names the field) or is not running
    restarting: bool = False  # the daemon restarts its services (and this UI) to apply it
    changes: list[str] = field(default_factory=list)  # what it changed, when it applied a diff
    saved: bool = True  # False: no daemon answered, the config is as it was


def save_and_reload(doc: Document) -> tuple[Config, Applied]:
    """Checks `doc` (ConfigError if it is not valid) and has the daemon write and apply it; returns the
    config and the daemon's answer."""
    config = config_edit.check(doc, config_path())
    try:
        answer = ask("apply_config", text=config_edit.dump(doc))
    except DaemonDown as exc:
        return config, Applied(f"Not saved: {exc}. Nothing was changed; try again when it runs.", ok=False,
                               saved=False)
    if answer.get("saved") is False:  # disk full, read-only: the file and the running config are the old ones
        return config, Applied(f"Not saved: {answer.get('error')}.", ok=False, saved=False)
    if not answer.get("ok"):
        return config, Applied(f"Saved, but the daemon refused to reload: {answer.get('error')}", ok=False)
    if answer.get("reloading", True):  # a daemon without diff reloads answers {"ok": true} and restarts
        fields = answer.get("restart") or []
        reason = f" for {', '.join(str(f) for f in fields)}" if fields else ""
        return config, Applied(f"Saved. The daemon is applying the new settings: it restarts its services{reason}, "
                               "which takes a few seconds.", ok=True, restarting=True)
    changes = [str(c) for c in answer.get("changes", [])]
    return config, Applied("Saved. The daemon applied the new settings." if changes else
                           "Saved. Nothing the daemon runs had to change.", ok=True, changes=changes)


def save_and_apply(doc: Document) -> tuple[Config, str]:
    """save_and_reload, with the daemon's answer as one sentence (for a flashed message)."""
    config, applied = save_and_reload(doc)
    return config, applied.message + (f" ({'; '.join(applied.changes)})" if applied.changes else "")


def ports() -> list[dict[str, Any]]:
    """Ethernet-like ports of this machine (not loopback, tunnels or bridges), with carrier and MAC."""
    found = []
    for _index, name in socket.if_nameindex():
        base = Path("/sys/class/net") / name
        try:
            kind = int((base / "type").read_text())
            mac = (base / "address").read_text().strip()
            state = (base / "operstate").read_text().strip()
        except (OSError, ValueError):
            continue
        # Type 1 is Ethernet (also veth and Wi-Fi); TUN devices are 65534. Bridges carry a "bridge" dir.
        if name == "lo" or kind != 1 or (base / "bridge").exists():
            continue
        found.append({"name": name, "mac": mac, "up": state in ("up", "unknown")})
    return sorted(found, key=lambda p: p["name"])
