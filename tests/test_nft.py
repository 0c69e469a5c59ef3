"""The firewall ruleset as data (no root): one atomic transaction that replaces the table."""

from __future__ import annotations

import json

from quicether.net.nft import TABLE, build_ruleset


def test_ruleset_replaces_the_table_in_one_transaction() -> None:
    commands = build_ruleset(["eth1", "eth2"], 4433, "qe0")["nftables"][1:]
    assert commands[:3] == [{"add": {"table": TABLE}}, {"delete": {"table": TABLE}}, {"add": {"table": TABLE}}]


def test_wan_input_allows_only_established_and_the_quic_port() -> None:
    text = json.dumps(build_ruleset(["eth1", "eth2"], 4433, "qe0"))
    assert '"right": {"set": ["eth1", "eth2"]}' in text
    assert '"field": "dport"}}, "right": 4433' in text
    assert '{"drop": null}' in text


def test_without_wans_there_is_no_input_filter_but_mss_is_still_clamped() -> None:
    ruleset = build_ruleset([], 4433, "qe0")
    rules = [c["add"]["rule"] for c in ruleset["nftables"][1:] if "rule" in c.get("add", {})]
    assert rules and all(r["chain"] == "forward" for r in rules)
    assert all("maxseg" in json.dumps(r) for r in rules)
