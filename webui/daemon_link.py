"""The web UI's side of the daemon: its status and events over the API socket, config changes saved
through quicether.config_edit (only a valid config reaches the disk) followed by a reload request."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from flask import current_app

from quicether import config_edit
from quicether.config import Config, ConfigError
from quicether.daemon import api
from quicether.net.links import LinkError

Document = config_edit.Document


class DaemonDown(RuntimeError):
    """No daemon answers on the API socket."""


def ask(cmd: str) -> dict[str, Any]:
    path = Path(current_app.config["QE_API"])
    try:
        answer = api.request(path, cmd, timeout=3)
    except (OSError, ValueError) as exc:
        raise DaemonDown(f"the QuicEther daemon is not answering ({exc.strerror if isinstance(exc, OSError) else exc})"
                         ) from None
    return answer


def config_path() -> Path:
    return Path(current_app.config["QE_CONFIG"])


def document() -> Document:
    return config_edit.load_document(config_path())


def friendly(error: ConfigError | LinkError | str) -> str:
    """A config error without the file name in front: the page already says which setting it is about."""
    text = str(error)
    prefix = f"{config_path()}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def save_and_apply(doc: Document) -> tuple[Config, str]:
    """Saves `doc` (ConfigError if it is not valid) and asks the daemon to reload; returns the config and
    a sentence saying what happened to the running daemon."""
    config = config_edit.save(doc, config_path())
    try:
        answer = ask("reload")
    except DaemonDown:
        return config, "Saved. The daemon is not running: the settings apply when it starts."
    if not answer.get("ok"):
        return config, f"Saved, but the daemon refused to reload: {answer.get('error')}"
    return config, "Saved. The daemon is applying the new settings."


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
