"""The daemon's side of the mesh network this node is a member of ([network] in the config): which
certificates admit a peer and which members are revoked (told to the core), the members the core admitted
or learned from peers (for routes and status), and revocations learned from peers, kept in the state
directory so a restart does not let a revoked member back in.

    <state_dir>/revocations   one base64 revocation per line, every one learned from peers (mode 600)
    <state_dir>/peers.json    the peer cache: each member's certificate and where it was last reached, so a
                              restart redials them at once, even with the DHT and the gateway unreachable
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from quicether import _core, config_edit
from quicether.atomic import write_private
from quicether.config import Config, ConfigError, NetworkConfig
from quicether.daemon.peers import Member, PeerTable
from quicether.identity import encode_node_id, short_id

log = logging.getLogger("quicether")
REVOCATIONS_FILE = "revocations"
PEER_CACHE_FILE = "peers.json"
# Members kept in the peer cache (the network's size bound), and endpoints per member.
MAX_CACHED, MAX_CACHED_ENDPOINTS = 1024, 16
# How often admitted members' certificates are checked again (expiry while connected), and renewals made.
RECHECK_S = 20.0


def member_of(cert: dict[str, Any]) -> Member:
    return Member(name=str(cert["name"]), ipv4=str(cert["ipv4"]), ipv6=str(cert["ipv6"]),
                  groups=[str(g) for g in cert["groups"]], lan_prefixes=[str(p) for p in cert["lan_prefixes"]],
                  exit=bool(cert["exit"]), not_after=int(cert["not_after"]))


class Mesh:
    def __init__(self, node: _core.Node, peers: PeerTable, config: Config,
                 label: Callable[[bytes | None], str]) -> None:
        self.node = node
        self.peers = peers
        self.config = config
        self.label = label
        self.known: dict[bytes, Member] = {}    # every member we know of (admitted, learned), not us
        self.certificates: dict[bytes, bytes] = {}
        self.cache: dict[bytes, list[str]] = {}  # where each member was last reached
        self.learned_revocations: list[bytes] = []
        # On the network's admin node: the revocations in its ledger (`quicether network revoke`), enforced
        # and told to the members like those of [network] revoked.
        self.ledger_revocations: list[bytes] = []
        self.revoked: set[bytes] = set()  # node keys of the revoked members (as of the last `apply`)
        self.record_seen: dict[bytes, float] = {}  # when each member's DHT record was last found (Unix s)
        self._path = config.state_dir / REVOCATIONS_FILE
        if config.network is not None:
            self.learned_revocations = _load_revocations(self._path, config.network)

    @property
    def network(self) -> NetworkConfig | None:
        return self.config.network

    def _revocations(self) -> list[bytes]:
        net = self.network
        if net is None:
            return []
        held = list(net.revoked)
        for revocation in (*self.ledger_revocations, *self.learned_revocations):
            if revocation not in held:
                held.append(revocation)
        return held

    def _revoked_keys(self) -> list[bytes]:
        """The node keys of every revoked member (each revocation verified when it was kept)."""
        net = self.network
        if net is None:
            return []
        return [bytes(_core.read_revocation(r, net.network_key)["node_key"]) for r in self._revocations()]

    def modes(self) -> tuple[str, str]:
        """How members' bulk and real-time traffic is scheduled."""
        net = self.network
        return (net.mode, net.realtime_mode) if net else ("aggregate", "redundant")

    def apply(self, config: Config) -> None:
        """Tells the core which network's certificates admit a peer and which members are revoked."""
        self.config = config
        net = config.network
        removed = self.node.set_network(net.network_key if net else None, self._revocations(),
                                        net.mode if net else "aggregate", net.realtime_mode if net else "redundant",
                                        [])
        for key in removed:
            log.warning("%s cut off: revoked, expired or no longer of this network", self.label(key))
        # A revoked member is neither looked up nor redialed from the cache, nor dialed from the LAN.
        self.revoked = set(self._revoked_keys())
        for key in self.revoked:
            # One we dialed (told of it, found it in the DHT) is not among those the core admitted, which
            # `set_network` cut off: it goes here (its routes with it, on the core's peer_removed event).
            if (key not in removed and self.peers is not None and key in self.peers.members
                    and self.node.remove_peer(key)):
                log.warning("%s cut off: revoked", self.label(key))
            for table in (self.known, self.certificates, self.cache, self.record_seen):
                table.pop(key, None)

    def ledger_revoked(self, revocations: list[bytes]) -> int:
        """The admin's ledger holds `revocations` (all of them, read again): the new ones are enforced here
        and told to every member at once. Returns how many were new."""
        fresh = [r for r in revocations if r not in self._revocations()]
        self.ledger_revocations = list(revocations)
        if fresh:
            log.warning("the network's ledger revokes %d more member(s): cutting them off and telling the members",
                        len(fresh))
            self.apply(self.config)
        return len(fresh)

    def _read(self, key: bytes, certificate: bytes) -> Member | None:
        net = self.network
        if net is None:
            return None
        try:
            return member_of(_core.read_certificate(certificate, net.network_key, None))
        except ValueError as exc:  # the core checked it an instant ago: only a changed network gets here
            log.error("member %s: %s", encode_node_id(key), exc)
            return None

    def admitted(self, key: bytes, certificate: bytes, mark: dict[str, str]) -> Member | None:
        """The core let `key` in by its certificate: known (and named) at once; the caller routes it."""
        member = self._read(key, certificate)
        if member is None:
            return None
        known = self.known.get(key)
        if known is None or known.not_after < member.not_after:  # a renewal learned before stays
            self.known[key], self.certificates[key] = member, certificate
        log.info("member %s (%s) admitted by its certificate: %s%s", member.name, short_id(encode_node_id(key)),
                 member.ipv4, f", LAN {', '.join(member.lan_prefixes)}" if member.lan_prefixes else "", extra=mark)
        return member

    def learned(self, key: bytes, certificate: bytes, mark: dict[str, str]) -> None:
        """A member we did not know, or a renewal of one we knew (it expires later)."""
        member = self._read(key, certificate)
        if member is None:
            return
        known = self.known.get(key)
        if known is not None and known.not_after >= member.not_after:
            return
        self.known[key], self.certificates[key] = member, certificate
        if known is None:
            log.info("learned of member %s (%s) at %s", member.name, short_id(encode_node_id(key)), member.ipv4,
                     extra=mark)
            return
        log.info("member %s's certificate was renewed (valid until %s)", member.name, _date(member.not_after),
                 extra=mark)
        if key in self.cache:
            self._write_cache()

    def renewed(self, certificate: bytes, mark: dict[str, str]) -> Config | None:
        """The admin renewed this node's certificate (it came as member news): shown in handshakes from now
        on and kept in the config file. Returns the running config with it (None: not taken, and why is
        logged: issued to another address, or no later than the one held)."""
        net = self.network
        if net is None:
            return None
        try:
            cert = _core.read_certificate(certificate, net.network_key, int(time.time()), list(self.revoked))
        except ValueError as exc:
            log.error("a renewal of this node's certificate: %s", exc)
            return None
        if int(cert["not_after"]) <= net.not_after:
            return None
        address = f"{cert['ipv4']}/{str(cert['overlay']).split('/')[1]}"
        if address != net.address or cert["name"] != net.name:
            log.warning("a renewal of this node's certificate names %s %s, not %s %s: not taken (issue it again"
                        " by hand to move this node)", cert["name"], address, net.name, net.address, extra=mark)
            return None
        self.node.set_membership(certificate)
        renewed = dataclasses.replace(net, certificate=certificate, not_after=int(cert["not_after"]))
        config = dataclasses.replace(self.config, network=renewed)
        try:
            doc = config_edit.load_document(config.path)
            doc["network"] = {**doc.get("network", {}), "certificate": base64.b64encode(certificate).decode()}
            config_edit.save(doc, config.path)
        except (OSError, ConfigError) as exc:
            log.error("this node's certificate was renewed, but %s cannot be written (%s): it is used until the"
                      " daemon stops, and learned again from the peers after", config.path, exc)
        log.info("this node's certificate was renewed by the network's admin: valid until %s",
                 _date(renewed.not_after), extra=mark)
        self.config = config
        return config

    def revocation_learned(self, key: bytes, revocation: bytes, mark: dict[str, str]) -> None:
        """A peer told us a revocation: keep it (on disk too) and cut the member off here."""
        if self.network is None or revocation in self._revocations():
            return
        self.learned_revocations.append(revocation)
        lines = "".join(base64.b64encode(r).decode() + "\n" for r in self.learned_revocations)
        try:
            write_private(self._path, lines.encode())
        except OSError as exc:
            log.error("cannot keep the learned revocations in %s: %s", self._path, exc.strerror or exc)
        member = self.known.pop(key, None)
        log.warning("learned that member %s was revoked", member.name if member else encode_node_id(key), extra=mark)
        self.apply(self.config)

    def remember(self, key: bytes, endpoints: list[str]) -> None:
        """`key` was reached at `endpoints`: keep them in the peer cache (written when it changes)."""
        endpoints = endpoints[:MAX_CACHED_ENDPOINTS]
        if key not in self.certificates or self.cache.get(key) == endpoints:
            return
        if key not in self.cache and len(self.cache) >= MAX_CACHED:
            return
        self.cache[key] = endpoints
        self._write_cache()

    def _write_cache(self) -> None:
        entries = [{"certificate": base64.b64encode(self.certificates[k]).decode(), "endpoints": e,
                    "seen": int(time.time())} for k, e in self.cache.items() if k in self.certificates]
        try:
            write_private(self.config.state_dir / PEER_CACHE_FILE, json.dumps(entries, indent=1).encode())
        except OSError as exc:
            log.error("cannot write the peer cache: %s", exc.strerror or exc)

    def reached(self, key: bytes, remote: str) -> None:
        """A path to member `key` came up with `remote`: the first address to try after a restart."""
        if key in self.certificates:
            self.remember(key, [remote, *[e for e in self.cache.get(key, []) if e != remote]])

    async def redial_cached(self) -> int:
        """At start: dials every member in the peer cache whose certificate is still valid; returns how many."""
        net = self.network
        if net is None:
            return 0
        entries = _load_cache(self.config.state_dir / PEER_CACHE_FILE)
        revoked = list(self.revoked)
        dialed = 0
        for certificate, endpoints in entries:
            try:
                cert = _core.read_certificate(certificate, net.network_key, int(time.time()), revoked)
            except ValueError as exc:
                log.info("peer cache: an entry skipped: %s", exc)
                continue
            key = bytes(cert["node_key"])
            if key == self.node.public_key():
                continue
            member = member_of(cert)
            self.known[key], self.certificates[key], self.cache[key] = member, certificate, endpoints
            try:
                await self.peers.dial_member(key, member, endpoints, self.modes(), "cache")
            except ValueError as exc:  # an endpoint the core refuses: the DHT may still find it
                log.info("peer cache: %s not dialed: %s", member.name, exc)
                continue
            dialed += 1
        if dialed:
            log.info("peer cache: dialing %d member(s) where they were last reached", dialed)
        return dialed

    async def recheck(self, admin: Callable[[], object]) -> None:
        """Certificates expire while their holders are connected: cut those off (their routes follow). First
        `admin` (on the admin node: renews the certificates that are due, enforces new revocations)."""
        while True:
            admin()
            for key in self.node.recheck_members():
                log.warning("%s cut off: its certificate expired", self.label(key))
            await asyncio.sleep(RECHECK_S)

    def names(self) -> dict[str, list[str]]:
        """Each member's name (this node's too) and overlay addresses, for DNS."""
        net = self.network
        if net is None:
            return {}
        own = [a.split("/")[0] for a in (net.address, net.ipv6) if a]
        return {net.name: own, **{m.name: [m.ipv4, m.ipv6] for m in self.known.values()}}

    def status(self, connected: set[bytes]) -> dict[str, Any] | None:
        """This node's membership and every member known: how it was found ("certificate": it dialed us;
        "dht", "cache", "lan": we dialed it from there; "news": only told of it so far), whether it is
        connected, when its DHT record was last found, until when its certificate is valid."""
        net = self.network
        if net is None:
            return None
        learned, refused = self.node.member_news()
        # "name": this node's name in the network (its certificate's).
        return {"key": base64.b64encode(net.network_key).decode(), "name": net.name, "address": net.address,
                "not_after": net.not_after, "revoked": len(self._revocations()), "members_known": learned,
                "news_refused": refused,
                "members": [{"name": m.name, "node_id": encode_node_id(k), "ipv4": m.ipv4,
                             "connected": k in connected, "found": self.peers.found.get(k, "news"),
                             "record_seen": self.record_seen.get(k), "not_after": m.not_after}
                            for k, m in sorted(self.known.items(), key=lambda kv: kv[1].name)]}


def _date(unix_s: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix_s))


def _load_revocations(path: Path, net: NetworkConfig) -> list[bytes]:
    """Revocations kept from earlier runs; one that is damaged or of another network is skipped (and said)."""
    try:
        lines = path.read_bytes().split()  # bytes: a line of garbage is skipped below, not a decoding error
    except FileNotFoundError:
        return []
    except OSError as exc:
        log.error("cannot read the learned revocations in %s: %s", path, exc.strerror or exc)
        return []
    kept = []
    for i, line in enumerate(lines):
        try:
            data = base64.b64decode(line, validate=True)
            _core.read_revocation(data, net.network_key)
        except (ValueError, binascii.Error) as exc:
            log.warning("%s line %d skipped: %s", path, i + 1, exc)
            continue
        kept.append(data)
    return kept


def _load_cache(path: Path) -> list[tuple[bytes, list[str]]]:
    """The peer cache's entries; a damaged file is set aside as <name>.damaged (and said), not fatal: the
    DHT and the configured peers find the members too, and the next write makes a new cache."""
    try:
        raw = json.loads(path.read_text())
        entries = [(base64.b64decode(e["certificate"], validate=True),
                    [str(a) for a in e["endpoints"]][:MAX_CACHED_ENDPOINTS]) for e in raw[:MAX_CACHED]]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError, KeyError, binascii.Error) as exc:
        aside = path.with_name(path.name + ".damaged")
        try:
            path.replace(aside)
            kept = f"set aside as {aside}"
        except OSError as move_exc:
            kept = f"left in place ({move_exc.strerror or move_exc})"
        log.warning("peer cache %s is damaged (%s: %s): %s, starting without it", path, type(exc).__name__, exc,
                    kept)
        return []
    return entries
