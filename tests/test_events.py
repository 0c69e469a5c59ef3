"""The core's event dicts become typed events; unknown kinds and missing fields never break the daemon."""

from __future__ import annotations

from quicether.daemon import events

KEY = bytes(range(32))


def test_path_events_carry_their_route() -> None:
    event = events.parse({"kind": "path_down", "key": KEY, "wan": "wan0", "detail": "no probe replies",
                          "local_wan": "wan0", "peer_wan": None, "path_kind": "relayed", "via": bytes(32),
                          "remote": "198.18.0.2:4433", "reason": "silent"})
    assert isinstance(event, events.PathDown) and isinstance(event, events.PathChanged)
    assert (event.key, event.wan, event.path_kind, event.via, event.reason) == (KEY, "wan0", "relayed", bytes(32),
                                                                                "silent")


def test_every_kind_has_its_type() -> None:
    kinds = {"peer_added": events.PeerAdded, "peer_removed": events.PeerRemoved,
             "peer_connected": events.PeerConnected, "peer_disconnected": events.PeerDisconnected,
             "path_up": events.PathUp, "handshake_refused": events.HandshakeRefused,
             "dial_failed": events.DialFailed, "tun_failed": events.TunFailed,
             "port_mapping": events.PortMappingChanged}
    for kind, expected in kinds.items():
        assert type(events.parse({"kind": kind, "key": KEY, "detail": "x", "wan": "w"})) is expected, kind


def test_an_unknown_kind_or_a_missing_field_is_not_an_error() -> None:
    unknown = events.parse({"kind": "something_new", "key": None})
    assert isinstance(unknown, events.UnknownEvent) and unknown.kind == "something_new" and unknown.detail == ""
    bare = events.parse({"kind": "path_up"})
    assert isinstance(bare, events.PathUp) and bare.key is None and bare.path_kind == "direct"
