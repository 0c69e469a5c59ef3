"""Membership certificates and revocations through the core: issue, read back, and every refusal."""

from __future__ import annotations

from typing import Any

import pytest

from quicether import _core

NET_SEED = bytes(range(32))
NET_KEY = _core.public_key_of_seed(NET_SEED)
NODE_KEY = _core.public_key_of_seed(bytes(range(1, 33)))
NOW = 1_800_000_000


def _issue(**changes: Any) -> bytes:
    fields: dict[str, Any] = dict(
        network_seed=NET_SEED, node_key=NODE_KEY, name="site-a", ipv4="100.64.3.7", overlay="100.64.0.0/16",
        groups=["lab"], lan_prefixes=["192.168.50.0/24", "fd12::/16"], exit=True,
        not_before=NOW - 10, not_after=NOW + 3600)
    fields.update(changes)
    return _core.issue_certificate(**fields)


def test_certificate_reads_back_with_a_derived_ula() -> None:
    cert = _core.read_certificate(_issue(), NET_KEY, NOW)
    assert cert["network"] == NET_KEY and cert["node_key"] == NODE_KEY
    assert (cert["name"], cert["ipv4"], cert["overlay"]) == ("site-a", "100.64.3.7", "100.64.0.0/16")
    assert cert["lan_prefixes"] == ["192.168.50.0/24", "fd12::/16"] and cert["groups"] == ["lab"]
    assert cert["exit"] is True and (cert["not_before"], cert["not_after"]) == (NOW - 10, NOW + 3600)
    assert cert["ipv6"].startswith("fd")
    other = _core.read_certificate(_issue(node_key=NET_KEY), NET_KEY, NOW)
    assert other["ipv6"].split(":")[:3] == cert["ipv6"].split(":")[:3] and other["ipv6"] != cert["ipv6"]


@pytest.mark.parametrize("data,now,cause", [
    (_issue(network_seed=bytes(32)), NOW, "foreign network"),
    (_issue()[:-1] + bytes([_issue()[-1] ^ 1]), NOW, "bad signature"),
    (_issue(), NOW + 3600 + 601, "expired"),
    (_issue(), NOW - 10 - 601, "not yet valid"),
    (_issue()[:40], NOW, "malformed: truncated"),
    (b"\x07" + _issue()[1:], NOW, "malformed: not a version 1 certificate"),
    (b"", NOW, "malformed: truncated"),
])
def test_certificate_refusals_name_their_cause(data: bytes, now: int, cause: str) -> None:
    with pytest.raises(ValueError, match=f"^certificate refused: {cause}"):
        _core.read_certificate(data, NET_KEY, now)


def test_revoked_member_is_refused_and_revocations_verify() -> None:
    rev = _core.issue_revocation(NET_SEED, NODE_KEY, NOW, 4)
    got = _core.read_revocation(rev, NET_KEY)
    assert (got["node_key"], got["revoked_at"], got["sequence"]) == (NODE_KEY, NOW, 4)
    with pytest.raises(ValueError, match="^certificate refused: revoked"):
        _core.read_certificate(_issue(), NET_KEY, NOW, [got["node_key"]])
    with pytest.raises(ValueError, match="^revocation refused: foreign network"):
        _core.read_revocation(_core.issue_revocation(bytes(32), NODE_KEY, NOW, 4), NET_KEY)
    with pytest.raises(ValueError, match="^revocation refused: bad signature"):
        _core.read_revocation(rev[:-1] + bytes([rev[-1] ^ 1]), NET_KEY)
    with pytest.raises(ValueError, match="^revocation refused: malformed: truncated"):
        _core.read_revocation(rev[:-1], NET_KEY)


@pytest.mark.parametrize("change,field", [
    ({"name": "Site_A"}, "name"),
    ({"groups": ["g"] * 9}, "too many groups"),
    ({"lan_prefixes": ["10.0.0.1/8"]}, "host bits"),
    ({"lan_prefixes": ["not-a-prefix"]}, "lan_prefixes"),
    ({"overlay": "100.64.0.0/20"}, "/10 to /16"),
    ({"overlay": "100.64.0.0"}, "overlay must be an IPv4 prefix"),
    ({"ipv4": "100.65.0.1"}, "inside the overlay"),
    ({"ipv4": "nope"}, "ipv4"),
    ({"not_after": NOW - 10}, "not_before"),
    ({"node_key": b"short"}, "node key must be 32 bytes"),
])
def test_issue_refuses_bad_fields(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        _issue(**change)
