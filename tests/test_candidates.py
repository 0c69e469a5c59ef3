"""A peer with several endpoints (candidates): each is dialed from every WAN with backoff, so one that does
not answer costs nothing, and the one that does carries the path."""

from __future__ import annotations

from pathlib import Path

from quicether.config import ConfigError, parse
from quicether.identity import encode_node_id
from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.measure import ping

KEY = encode_node_id(bytes(32))


def test_endpoints_list_parses_with_the_single_endpoint_first_and_no_repeats() -> None:
    config = parse(f'[[peer]]\nkey = "{KEY}"\nendpoint = "198.51.100.1:4433"\n'
                   'endpoints = ["[2001:db8::1]:4433", "198.51.100.1:4433"]\n', Path("q.toml"))
    peer = config.peers[0]
    assert peer.endpoints == ["198.51.100.1:4433", "[2001:db8::1]:4433"] and peer.endpoint == "198.51.100.1:4433"
    try:
        parse(f'[[peer]]\nkey = "{KEY}"\nendpoints = ["gateway.example:4433"]\n', Path("q.toml"))
    except ConfigError as exc:
        assert "peer[0].endpoints[0]" in str(exc)
    else:
        raise AssertionError("a host name is not an endpoint")


def test_a_dead_candidate_does_not_keep_the_peer_from_connecting(lab: Lab, tmp_path: Path) -> None:
    ns_a, ns_b = qe.two_hosts(lab)
    a = qe.make_node(ns_a, "a", "10.99.0.1/24", tmp_path)
    b = qe.make_node(ns_b, "b", "10.99.0.2/24", tmp_path)
    qe.pair(a, b, None)
    # The first address answers nothing (nobody has it); the second is b.
    a.peers[0]["endpoints"] = ["10.1.0.99:4433", "10.1.0.2:4433"]
    qe.start(b)
    qe.start(a)
    qe.wait_connected(a, timeout=10)
    assert [p["remote"] for p in a.status()["peers"][0]["paths"]] == ["10.1.0.2:4433"]
    assert ping(ns_a, b.overlay_ip, count=3).received == 3
