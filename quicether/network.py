"""Networks an admin node holds: the network key, the members it has certified and those it has revoked.

A network is the trust root of a mesh (Nebula's model without its lighthouses): an Ed25519 key kept on an
admin node, which signs each member's certificate (node key, name, overlay addresses, groups, LAN prefixes
it may route, exit offer, validity) and each revocation. The wire formats and their checks are the core's
(`core/proto/src/membership.rs`); this module keeps the admin's ledger in the state directory:

    <state_dir>/networks/<name>/network.key    the network key's seed, base64 (mode 600)
    <state_dir>/networks/<name>/network.json   name, public key, overlay prefix, creation time
    <state_dir>/networks/<name>/members.json   every certificate issued and revocation signed, in order
    <state_dir>/networks/<name>/invites.json   the invites made: each one's one-time key (never its secret),
                                               what it grants, when it expires, who used it

Each file is replaced atomically (`atomic.write_private`): a crash leaves the old ledger or the new one.
An overlay address is never given to a second node, not even after its holder was revoked (a stale
route or ACL naming it must not start matching someone else).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from quicether import _core
from quicether.atomic import write_private
from quicether.identity import Identity, IdentityError, decode_node_id, encode_node_id
from quicether.identity import generate as generate_key_file
from quicether.identity import load as load_key_file
from quicether.invite import NetworkInvite

NETWORKS_DIR = "networks"
NAME_RE = re.compile(r"^[a-z0-9-]{1,32}$")
DEFAULT_OVERLAY = "100.64.0.0/16"
# Certificates are renewed before they expire (issue them again: same address); a year is the default.
DEFAULT_VALIDITY_DAYS = 365
# The admin node renews a certificate once less than this share of its validity is left (a year's: about
# four months before it expires, time enough for a member that is offline for weeks to get it).
RENEW_WHEN_LEFT = 1 / 3
# The core honours a certificate this long past its expiry (clock skew; membership.rs CLOCK_TOLERANCE_S).
CLOCK_TOLERANCE_S = 600
DEFAULT_INVITE_HOURS = 24
INVITES_FILE = "invites.json"
# A used or expired invite is still known this long, so its holder is told what happened to it; then it goes.
INVITE_MEMORY_S = 7 * 86400
# Invites kept in the ledger at once (each is a key the admin's TLS verifier accepts).
MAX_INVITES = 256
CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


class NetworkError(ValueError):
    """A network operation that cannot be done; the message says why and what to do."""


@dataclass
class Member:
    name: str
    node_id: str
    ipv4: str
    groups: list[str]
    lan_prefixes: list[str]
    exit: bool
    not_after: int
    certificate: str  # base64 of the signed certificate
    revoked_at: int | None = None


@dataclass
class Network:
    name: str
    key: str  # the network's public key, written like a node id
    overlay: str
    created_at: int
    directory: Path
    members: list[Member] = field(default_factory=list)
    revocations: list[str] = field(default_factory=list)  # base64, in sequence order

    @property
    def public_key(self) -> bytes:
        return decode_node_id(self.key)

    def active(self) -> list[Member]:
        return [m for m in self.members if m.revoked_at is None]

    def find(self, name_or_id: str) -> Member:
        """The active member called `name_or_id` or with that node id."""
        for member in self.active():
            if name_or_id in (member.name, member.node_id):
                return member
        raise NetworkError(f"network {self.name!r} has no member {name_or_id!r} (see `quicether network members"
                           f" {self.name}`)")


@dataclass
class Invitation:
    """An invite as the admin keeps it: its one-time key and what using it grants."""
    key: str                      # the invite's key, written like a node id
    name: str                     # the member name it gives ("": the joining node's choice)
    groups: list[str]
    lan_prefixes: list[str]
    exit: bool
    days: int                     # validity of the certificate it gets
    created_at: int
    expires_at: int
    used_by: str | None = None    # the node id it certified
    used_at: int | None = None


def _check_name(name: str, what: str) -> str:
    if not NAME_RE.match(name):
        raise NetworkError(f"{what} {name!r} must be 1-32 characters of a-z, 0-9 and -")
    return name


def _check_overlay(text: str) -> ipaddress.IPv4Network:
    try:
        overlay = ipaddress.IPv4Network(text)
    except ValueError as exc:
        raise NetworkError(f"overlay {text!r} is not an IPv4 network prefix: {exc}") from None
    if not overlay.subnet_of(CGNAT) or not 10 <= overlay.prefixlen <= 16:
        raise NetworkError(f"overlay {text!r} must be a /10 to /16 inside {CGNAT}")
    return overlay


def _directory(state_dir: Path, name: str) -> Path:
    return state_dir / NETWORKS_DIR / _check_name(name, "network name")


def create(state_dir: Path, name: str, admin: Identity, *, overlay: str = DEFAULT_OVERLAY,
           admin_name: str = "admin", days: int = DEFAULT_VALIDITY_DAYS) -> Network:
    """Makes network `name` with a new key; the admin node is its first member (the overlay's first address)."""
    directory = _directory(state_dir, name)
    _check_overlay(overlay)
    if directory.exists():
        raise NetworkError(f"network {name!r} already exists in {directory}")
    directory.mkdir(parents=True, mode=0o700)
    # A network key is kept like a node key: the same file format, mode and checks (quicether.identity).
    key = generate_key_file(directory / "network.key")
    network = Network(name=name, key=encode_node_id(key.public_key), overlay=overlay,
                      created_at=int(time.time()), directory=directory)
    _save_network(network)
    issue(network, admin.public_key, admin_name, days=days)
    return network


def load(state_dir: Path, name: str) -> Network:
    directory = _directory(state_dir, name)
    reading = directory / "network.json"
    try:
        meta = json.loads(reading.read_text())
        network = Network(name=meta["name"], key=meta["key"], overlay=meta["overlay"],
                          created_at=int(meta["created_at"]), directory=directory)
        decode_node_id(network.key)
        reading = directory / "members.json"
        ledger = json.loads(reading.read_text())
        network.members = [Member(**m) for m in ledger["members"]]
        network.revocations = list(ledger["revocations"])
    except FileNotFoundError:
        known = ", ".join(n.name for n in list_networks(state_dir)) or "none"
        raise NetworkError(f"no network {name!r} on this node (networks here: {known}); create it with"
                           f" `quicether network create {name}`") from None
    except (ValueError, KeyError, TypeError, IdentityError) as exc:
        # The file at fault: a truncated ledger is fixed from a backup, not by recreating the network.
        raise NetworkError(f"network {name!r}: {reading} is damaged ({type(exc).__name__}: {exc})") from None
    return network


def list_networks(state_dir: Path) -> list[Network]:
    root = state_dir / NETWORKS_DIR
    if not root.is_dir():
        return []
    return [load(state_dir, d.name) for d in sorted(root.iterdir()) if (d / "network.json").exists()]


def _seed(network: Network) -> bytes:
    path = network.directory / "network.key"
    try:
        key = load_key_file(path)
    except IdentityError as exc:
        raise NetworkError(f"the key of network {network.name!r}: {exc}") from None
    if key.public_key != network.public_key:
        raise NetworkError(f"{path} is not the key of network {network.name!r}")
    return key.seed


def check_key(network: Network) -> None:
    """NetworkError naming the file if the network's key cannot be used (missing, damaged, another's)."""
    _seed(network)


def _save_network(network: Network) -> None:
    meta = {"name": network.name, "key": network.key, "overlay": network.overlay, "created_at": network.created_at}
    write_private(network.directory / "network.json", json.dumps(meta, indent=2) + "\n")
    _save_ledger(network)


def _save_ledger(network: Network) -> None:
    ledger = {"members": [asdict(m) for m in network.members], "revocations": network.revocations}
    write_private(network.directory / "members.json", json.dumps(ledger, indent=2) + "\n")


def _next_address(network: Network) -> str:
    used = {m.ipv4 for m in network.members}  # revoked members' addresses too: never given again
    for host in _check_overlay(network.overlay).hosts():
        if str(host) not in used:
            return str(host)
    raise NetworkError(f"network {network.name!r} has no free address left in {network.overlay}")


def issue(network: Network, node_key: bytes, name: str, *, groups: list[str] | None = None,
          lan_prefixes: list[str] | None = None, exit: bool = False, days: int = DEFAULT_VALIDITY_DAYS,
          now: int | None = None) -> Member:
    """Certifies `node_key` as member `name`. The same node again renews its certificate (same address,
    new fields and validity); a name another active member holds is refused, as is a revoked node."""
    _check_name(name, "member name")
    if not 1 <= days <= 3650:
        raise NetworkError(f"validity of {days} days is outside 1-3650")
    node_id = encode_node_id(node_key)
    if any(m.node_id == node_id and m.revoked_at is not None for m in network.members):
        raise NetworkError(f"node {node_id} was revoked from network {network.name!r}; it needs a new key")
    previous = next((m for m in network.active() if m.node_id == node_id), None)
    if any(m.name == name and m.node_id != node_id for m in network.active()):
        raise NetworkError(f"network {network.name!r} already has a member called {name!r}")
    ipv4 = previous.ipv4 if previous else _next_address(network)
    now = int(time.time()) if now is None else now
    not_after = now + days * 86400
    try:
        cert = _core.issue_certificate(_seed(network), node_key, name, ipv4, network.overlay, groups or [],
                                       lan_prefixes or [], exit, now, not_after)
    except ValueError as exc:
        raise NetworkError(str(exc)) from None
    member = Member(name=name, node_id=node_id, ipv4=ipv4, groups=list(groups or []),
                    lan_prefixes=list(lan_prefixes or []), exit=exit, not_after=not_after,
                    certificate=base64.b64encode(cert).decode())
    if previous:
        network.members[network.members.index(previous)] = member
    else:
        network.members.append(member)
    _save_ledger(network)
    return member


def renewals_due(network: Network, now: int | None = None) -> list[Member]:
    """Renews every active member's certificate that has less than `RENEW_WHEN_LEFT` of its validity left
    and is still honoured (not expired, give or take the clock tolerance): same address and fields, a
    validity as long as before. Returns the renewed members. A member whose certificate lapsed (offline
    through its whole renewal window) is certified again only by hand (`quicether network issue`)."""
    now = int(time.time()) if now is None else now
    renewed = []
    for member in network.active():
        data = base64.b64decode(member.certificate)
        validity = member.not_after - int(_core.read_certificate(data, network.public_key, None)["not_before"])
        left = member.not_after - now
        if not -CLOCK_TOLERANCE_S < left < validity * RENEW_WHEN_LEFT:
            continue
        days = min(3650, max(1, round(validity / 86400)))
        renewed.append(issue(network, decode_node_id(member.node_id), member.name, groups=member.groups,
                             lan_prefixes=member.lan_prefixes, exit=member.exit, days=days, now=now))
    return renewed


def revoke(network: Network, name_or_id: str, now: int | None = None) -> bytes:
    """Revokes an active member: the signed revocation (sequence one above the last) every member must get."""
    member = network.find(name_or_id)
    now = int(time.time()) if now is None else now
    revocation = _core.issue_revocation(_seed(network), decode_node_id(member.node_id), now,
                                        len(network.revocations) + 1)
    member.revoked_at = now
    network.revocations.append(base64.b64encode(revocation).decode())
    _save_ledger(network)
    return revocation


def describe(member: Member) -> dict[str, Any]:
    """A member as `quicether network members --json` prints it (no certificate bytes)."""
    shown = asdict(member)
    del shown["certificate"]
    return shown


def _invites_path(network: Network) -> Path:
    return network.directory / INVITES_FILE


def invitations(network: Network) -> list[Invitation]:
    try:
        raw = json.loads(_invites_path(network).read_text())
        return [Invitation(**i) for i in raw]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError) as exc:
        raise NetworkError(f"the invites of network {network.name!r} in {_invites_path(network)} are damaged:"
                           f" {exc}") from None


def _save_invitations(network: Network, invites: list[Invitation]) -> None:
    write_private(_invites_path(network), json.dumps([asdict(i) for i in invites], indent=2) + "\n")


def invite(network: Network, admin: Identity, endpoints: list[str], *, name: str = "",
           groups: list[str] | None = None, lan_prefixes: list[str] | None = None, exit: bool = False,
           hours: float = DEFAULT_INVITE_HOURS, days: int = DEFAULT_VALIDITY_DAYS,
           now: int | None = None) -> NetworkInvite:
    """A new single-use invite to `network`, admitted by the node `admin` at `endpoints`. Its secret is in the
    code only; the ledger keeps the invite's public key and what it grants."""
    if name:
        _check_name(name, "member name")
        if any(m.name == name for m in network.active()):
            raise NetworkError(f"network {network.name!r} already has a member called {name!r}")
    if not 0 < hours <= 24 * 30:
        raise NetworkError(f"an invite valid for {hours} hours: give 1 minute to 30 days")
    if not 1 <= days <= 3650:
        raise NetworkError(f"validity of {days} days is outside 1-3650")
    now = int(time.time()) if now is None else now
    kept = [i for i in invitations(network) if i.expires_at + INVITE_MEMORY_S > now]
    if len([i for i in kept if i.used_by is None and i.expires_at > now]) >= MAX_INVITES:
        raise NetworkError(f"network {network.name!r} has {MAX_INVITES} unused invites pending: let some expire")
    kept = kept[-(MAX_INVITES - 1):]
    seed = _core.generate_seed()
    invitation = Invitation(key=encode_node_id(_core.public_key_of_seed(seed)), name=name, groups=list(groups or []),
                            lan_prefixes=list(lan_prefixes or []), exit=exit, days=days, created_at=now,
                            expires_at=now + max(60, int(hours * 3600)))
    _save_invitations(network, [*kept, invitation])
    return NetworkInvite(network=network.name, network_key=network.key, admin_key=encode_node_id(admin.public_key),
                         endpoints=endpoints, secret=base64.urlsafe_b64encode(seed).decode().rstrip("="),
                         expires_at=invitation.expires_at, name=name)


def invite_keys(network: Network, now: int | None = None) -> list[bytes]:
    """The invite keys the admin node accepts a join handshake with: every invite it still remembers (a
    used or expired one too, so that its holder is told so in words)."""
    now = int(time.time()) if now is None else now
    return [decode_node_id(i.key) for i in invitations(network) if i.expires_at + INVITE_MEMORY_S > now]


def grantable_lan_prefixes(network: Network, node_id: str, asked: list[str]) -> list[str]:
    """The LAN prefixes node `node_id` asks to route, if it may: private IPv4, outside the overlay, and
    routed by no other active member (two sites with one LAN prefix cannot both be reached). NetworkError
    says which prefix clashes, in words for the joining person."""
    overlay = ipaddress.IPv4Network(network.overlay)
    granted: list[str] = []
    for text in asked:
        try:
            prefix = ipaddress.IPv4Network(text)
        except ValueError:
            raise NetworkError(f"LAN prefix {text!r} is not an IPv4 prefix") from None
        if not prefix.is_private or prefix.overlaps(overlay):
            raise NetworkError(f"LAN prefix {prefix} is not a private prefix outside the network's {overlay}")
        for member in network.active():
            if member.node_id == node_id:
                continue
            clash = next((p for p in member.lan_prefixes if ipaddress.ip_network(p).overlaps(prefix)), None)
            if clash is not None:
                raise NetworkError(f"this node's LAN {prefix} overlaps {clash}, the LAN of member {member.name!r}: "
                                   "give this node's LAN another prefix, then join again")
        granted.append(str(prefix))
    return granted


def admit(network: Network, invite_key: bytes, node_key: bytes, name: str, now: int | None = None,
          asked_lan: list[str] | None = None) -> Member:
    """Uses the invite with key `invite_key` to certify `node_key` as `name` (the invite's name wins if it
    fixes one), routing the LAN prefixes the invite grants, else those it asks for (`asked_lan`, checked by
    `grantable_lan_prefixes`). Refused, in words for the joining person: unknown, expired or used invite (the
    node that used it asking again gets its certificate again: its first answer may have been lost), a name
    taken, no name, a LAN prefix another member routes. A node that is a member already is certified again
    (renewed, same address)."""
    now = int(time.time()) if now is None else now
    invites = invitations(network)
    key_id, node_id = encode_node_id(invite_key), encode_node_id(node_key)
    found = next((i for i in invites if i.key == key_id), None)
    if found is None:
        raise NetworkError("this invite is not known to the admin node (made for another network, or long expired)")
    if found.used_by is not None:
        if found.used_by == node_id:
            return network.find(node_id)
        used = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(found.used_at or 0))
        raise NetworkError(f"this invite was already used (on {used}); ask the admin for a new one")
    if found.expires_at <= now:
        expired = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(found.expires_at))
        raise NetworkError(f"this invite expired on {expired}; ask the admin for a new one")
    name = found.name or name
    if not name:
        raise NetworkError("give this node a name in the network (the invite leaves it to you)")
    lan_prefixes = found.lan_prefixes or grantable_lan_prefixes(network, node_id, asked_lan or [])
    member = issue(network, node_key, name, groups=found.groups, lan_prefixes=lan_prefixes, exit=found.exit,
                   days=found.days, now=now)
    found.used_by, found.used_at = node_id, now
    _save_invitations(network, invites)
    return member


def holding_key(state_dir: Path, network_key: bytes) -> Network | None:
    """The network with key `network_key` if this node is its admin (holds the key), else None."""
    root = state_dir / NETWORKS_DIR
    if not root.is_dir():
        return None
    for directory in sorted(root.iterdir()):
        if (directory / "network.json").exists():
            net = load(state_dir, directory.name)
            if net.public_key == network_key:
                return net
    return None
