"""Changing the config file from code (the web UI, `quicether join`): read it as a TOML document, change
the document, and save it only if the result parses as a valid config — a bad edit never reaches disk.

Saving writes a temporary file and renames it over the old one, so a crash mid-write leaves either the
old or the new config, never half of one. Comments in a hand-written file are not kept by a rewrite.
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path
from typing import Any

from quicether.atomic import write_private
from quicether.config import DEFAULT_STATE_DIR, Config, ConfigError, parse
from quicether.identity import KEY_FILE_NAME, Identity
from quicether.identity import load as load_identity
from quicether.invite import Invite

Document = dict[str, Any]


def load_document(path: Path) -> Document:
    """The file as a TOML document; an empty one if the file does not exist yet (first boot)."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def _value(value: Any) -> str:
    if isinstance(value, bool | int | float | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {value!r} to the config")


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _table(name: str, table: dict[str, Any], array: bool) -> list[str]:
    lines = [f"[[{name}]]" if array else f"[{name}]"]
    nested: list[str] = []
    for key, value in table.items():
        if isinstance(value, dict):
            nested += _table(f"{name}.{key}", value, False)
        elif _is_table_array(value):
            for item in value:
                nested += _table(f"{name}.{key}", item, True)
        else:
            lines.append(f"{key} = {_value(value)}")
    return [*lines, "", *nested]


def dump(doc: Document) -> str:
    lines: list[str] = ["# Written by QuicEther; every setting is described in quicether/config.py.", ""]
    for key, value in doc.items():
        if isinstance(value, dict):
            lines += _table(key, value, False)
        elif _is_table_array(value):
            for item in value:
                lines += _table(key, item, True)
        elif not (isinstance(value, list) and not value):
            raise ConfigError(f"top-level setting {key!r} must be a table")
    return "\n".join(lines)


def check(doc: Document, path: Path) -> Config:
    """The config the document would give; ConfigError (naming the field) if it is not valid."""
    return parse(dump(doc), path)


def save(doc: Document, path: Path) -> Config:
    config = check(doc, path)
    text = dump(doc)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, text)
    return config


def without_clashing_peers(doc: Document, name: str, key: str, replace: bool) -> list[dict[str, Any]]:
    """The document's peers minus an entry for `key` (the same node joined again) and, with `replace`, one
    named `name`; a different node already named `name` is refused (ConfigError), never silently replaced:
    it may be the exit, and ACL rules name it."""
    peers = []
    for peer in doc.get("peer", []):
        if peer.get("key") == key:
            continue
        if peer.get("name") == name:
            if not replace:
                raise ConfigError(f"a different peer is already named {name!r} (key {peer.get('key')}); "
                                  "choose another name or replace it explicitly")
            continue
        peers.append(peer)
    return peers


def add_invited_peer(doc: Document, invite: Invite, *, address: str | None, mode: str = "aggregate",
                     use_exit: bool | None = None, replace: bool = False) -> Document:
    """The document with the inviting node as a peer (an entry with the same key is updated; one with
    the same name is replaced only with `replace`) and, with `use_exit` (only if the invite offers an
    exit and this node has a LAN), that peer as the LAN's exit."""
    use_exit = invite.exit if use_exit is None else use_exit and invite.exit
    allowed = [invite.network] + (["0.0.0.0/0"] if use_exit else [])
    peer = {"name": invite.name, "key": invite.key, "endpoint": invite.endpoints[0], "allowed_ips": allowed,
            "mode": mode}
    peers = without_clashing_peers(doc, invite.name, invite.key, replace)
    new = {**doc, "peer": [*peers, peer]}
    node = dict(new.get("node", {}))
    if address:
        try:
            inside = ipaddress.ip_interface(address).ip in ipaddress.ip_network(invite.network)
        except ValueError:
            raise ConfigError(f"{address!r} is not an address/prefix like 10.99.0.5/24") from None
        if not inside:
            raise ConfigError(f"the overlay address {address} is not inside the invite's network {invite.network}")
        node["address"] = address
    elif "address" not in node:
        raise ConfigError(f"this node needs an overlay address inside the invite's network {invite.network}")
    new["node"] = node
    if use_exit and "lan" in new:
        new["lan"] = {**new["lan"], "exit": invite.name}
    return new


def node_identity(doc: Document) -> Identity:
    """This node's key, from the state directory the document names (IdentityError if there is none)."""
    return load_identity(Path(doc.get("node", {}).get("state_dir", DEFAULT_STATE_DIR)) / KEY_FILE_NAME)


def overlay_address(doc: Document, invite: Invite, given: str | None) -> str:
    """The overlay address to join `invite` with: the one given, else the configured one, else one picked
    from this node's key (IdentityError if that is needed and the node has no key yet)."""
    return given or doc.get("node", {}).get("address") or suggest_address(invite, node_identity(doc).public_key)


def suggest_address(invite: Invite, own_key: bytes) -> str:
    """An overlay address for a joining node: a host of the invite's network picked from the joining
    node's own key (so two sites joining with one invite rarely collide), never the inviter's address."""
    net = ipaddress.ip_network(invite.network)
    taken = ipaddress.ip_address(invite.peer_address.split("/")[0]) if invite.peer_address else None
    # Skip the network address, the first hosts (gateways usually take those) and the broadcast address.
    first, count = 10, max(1, min(net.num_addresses, 256) - 11)
    if net.num_addresses < 16:
        first, count = 1, max(1, net.num_addresses - 2)
    start = int.from_bytes(own_key[:4], "big")
    for step in range(count):
        candidate = net.network_address + first + (start + step) % count
        if candidate != taken:
            return f"{candidate}/{net.prefixlen}"
    raise ConfigError(f"no free address in {invite.network}")
