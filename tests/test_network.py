"""Networks on an admin node: the key, certificates issued and renewed, revocations, and clear refusals."""

from __future__ import annotations

import base64
import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from quicether import _core, network
from quicether.identity import decode_node_id, encode_node_id
from quicether.identity import generate as generate_identity


def _node_key() -> bytes:
    return _core.public_key_of_seed(_core.generate_seed())


def _cli(state: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "quicether", "network", *args, "--state-dir", str(state)],
                          capture_output=True, text=True, timeout=30, check=False)


def test_create_makes_a_private_key_and_certifies_the_admin(tmp_path: Path) -> None:
    admin = generate_identity(tmp_path / "node.key")
    net = network.create(tmp_path, "home", admin, overlay="100.100.0.0/16", admin_name="gw")
    key_file = net.directory / "network.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    (member,) = net.members
    assert (member.name, member.ipv4, member.node_id) == ("gw", "100.100.0.1", admin.node_id)
    cert = _core.read_certificate(base64.b64decode(member.certificate), net.public_key, member.not_after - 10)
    assert cert["node_key"] == admin.public_key and cert["overlay"] == "100.100.0.0/16"
    # What was written is what loads back.
    again = network.load(tmp_path, "home")
    assert again.key == net.key and again.members == net.members
    assert [n.name for n in network.list_networks(tmp_path)] == ["home"]
    with pytest.raises(network.NetworkError, match="already exists"):
        network.create(tmp_path, "home", admin)


@pytest.mark.parametrize(("name", "overlay", "message"), [
    ("Home", network.DEFAULT_OVERLAY, "a-z, 0-9"),
    ("../x", network.DEFAULT_OVERLAY, "a-z, 0-9"),
    ("home", "10.0.0.0/16", "inside 100.64.0.0/10"),
    ("home", "100.64.0.0/24", "/10 to /16"),
    ("home", "100.64.0.0/33", "not an IPv4 network"),
])
def test_create_refuses_bad_names_and_overlays(tmp_path: Path, name: str, overlay: str, message: str) -> None:
    admin = generate_identity(tmp_path / "node.key")
    with pytest.raises(network.NetworkError, match=message):
        network.create(tmp_path, name, admin, overlay=overlay)
    assert not (tmp_path / network.NETWORKS_DIR).exists() or not any((tmp_path / network.NETWORKS_DIR).iterdir())


def test_issue_allocates_renews_and_refuses_a_taken_name(tmp_path: Path) -> None:
    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"))
    alice, bob = _node_key(), _node_key()
    first = network.issue(net, alice, "alice", groups=["laptops"], lan_prefixes=["192.168.7.0/24"], exit=True)
    assert first.ipv4 == "100.64.0.2"
    cert = _core.read_certificate(base64.b64decode(first.certificate), net.public_key, first.not_after - 10)
    assert (cert["name"], cert["groups"], cert["lan_prefixes"], cert["exit"]) == (
        "alice", ["laptops"], ["192.168.7.0/24"], True)
    renewed = network.issue(net, alice, "alice-laptop", days=30, now=first.not_after - 86400)
    assert renewed.ipv4 == first.ipv4 and len(net.members) == 2, "a renewal keeps the address"
    with pytest.raises(network.NetworkError, match="already has a member called 'alice-laptop'"):
        network.issue(net, bob, "alice-laptop")
    with pytest.raises(network.NetworkError, match="outside 1-3650"):
        network.issue(net, bob, "bob", days=0)
    with pytest.raises(network.NetworkError, match="groups|group"):
        network.issue(net, bob, "bob", groups=[f"g{i}" for i in range(9)])
    assert [m.name for m in network.load(tmp_path, "home").members] == ["admin", "alice-laptop"]


def test_the_certificates_due_are_renewed_with_their_address_fields_and_validity(tmp_path: Path) -> None:
    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"), admin_name="gw")
    now = int(net.members[0].not_after) - 200 * 86400  # the admin's own: 200 of 365 days left, not due
    day = 86400
    # Issued 10 days ago for 12: due (2 of 12 days left). For 30 days 10 days ago: not due yet.
    due = network.issue(net, _node_key(), "due", groups=["g"], lan_prefixes=["192.168.9.0/24"], exit=True,
                        days=12, now=now - 10 * day)
    network.issue(net, _node_key(), "fresh", days=30, now=now - 10 * day)
    # Expired 5 min ago: still honoured (clock tolerance), so still renewed; expired an hour ago: lapsed.
    late = network.issue(net, _node_key(), "late", days=1, now=now - day - 300)
    network.issue(net, _node_key(), "lapsed", days=1, now=now - day - 3600)
    gone = network.issue(net, _node_key(), "gone", days=1, now=now - day + 60)
    network.revoke(net, "gone", now=now - 30)

    renewed = network.renewals_due(net, now=now)

    assert sorted(m.name for m in renewed) == ["due", "late"]
    again = next(m for m in renewed if m.name == "due")
    cert = _core.read_certificate(base64.b64decode(again.certificate), net.public_key, now)
    assert (again.ipv4, cert["groups"], cert["lan_prefixes"], cert["exit"]) == (
        due.ipv4, ["g"], ["192.168.9.0/24"], True), "same address and fields"
    assert (cert["not_before"], cert["not_after"]) == (now, now + 12 * day), "as long a validity as before"
    assert next(m for m in renewed if m.name == "late").not_after == now + day and late.not_after < now
    ledger = {m.name: m for m in network.load(tmp_path, "home").members}
    assert ledger["due"].certificate == again.certificate, "the ledger keeps the renewal"
    assert ledger["gone"].certificate == gone.certificate and ledger["gone"].revoked_at is not None
    assert network.renewals_due(net, now=now + 60) == [], "a renewed certificate is not due again"


def test_revoke_signs_in_sequence_and_never_reuses_the_address(tmp_path: Path) -> None:
    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"))
    alice, bob = _node_key(), _node_key()
    network.issue(net, alice, "alice")
    network.issue(net, bob, "bob")
    first = _core.read_revocation(network.revoke(net, "alice"), net.public_key)
    second = _core.read_revocation(network.revoke(net, encode_node_id(bob)), net.public_key)
    assert (first["node_key"], first["sequence"]) == (alice, 1)
    assert (second["node_key"], second["sequence"]) == (bob, 2)
    # A revoked certificate no longer verifies against the revocation list.
    revoked = next(m for m in net.members if m.name == "alice")
    with pytest.raises(ValueError, match="revoked"):
        _core.read_certificate(base64.b64decode(revoked.certificate), net.public_key, revoked.not_after - 10,
                               [alice])
    with pytest.raises(network.NetworkError, match="no member 'alice'"):
        network.revoke(net, "alice")
    with pytest.raises(network.NetworkError, match="was revoked"):
        network.issue(net, alice, "alice")
    carol = network.issue(net, _node_key(), "carol")
    assert carol.ipv4 == "100.64.0.4", "alice's and bob's addresses stay retired"
    assert len(network.load(tmp_path, "home").revocations) == 2


def test_a_damaged_or_foreign_key_file_is_refused(tmp_path: Path) -> None:
    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"))
    key_file = net.directory / "network.key"
    key_file.write_bytes(base64.b64encode(_core.generate_seed()))
    with pytest.raises(network.NetworkError, match="not the key of network 'home'"):
        network.issue(net, _node_key(), "x")
    key_file.chmod(0o644)
    with pytest.raises(network.NetworkError, match="readable by others"):
        network.issue(net, _node_key(), "x")
    (net.directory / "members.json").write_text("{not json")
    with pytest.raises(network.NetworkError, match="damaged"):
        network.load(tmp_path, "home")


def test_cli_create_issue_members_revoke(tmp_path: Path) -> None:
    assert _cli(tmp_path, "create", "home").returncode == 1, "no node key yet"
    generate_identity(tmp_path / "node.key")
    created = _cli(tmp_path, "create", "home", "--overlay", "100.65.0.0/16")
    assert created.returncode == 0, created.stderr
    assert "overlay 100.65.0.0/16" in created.stdout
    node = encode_node_id(_node_key())
    issued = _cli(tmp_path, "issue", "home", node, "--name", "site1", "--group", "sites", "--exit")
    assert issued.returncode == 0, issued.stderr
    net = network.load(tmp_path, "home")
    cert = _core.read_certificate(base64.b64decode(issued.stdout.strip()), net.public_key, net.created_at + 60)
    assert cert["node_key"] == decode_node_id(node) and cert["ipv4"] == "100.65.0.2" and cert["exit"]
    listed = _cli(tmp_path, "members", "home", "--json")
    assert [m["name"] for m in json.loads(listed.stdout)] == ["admin", "site1"]
    revoked = _cli(tmp_path, "revoke", "home", "site1")
    assert revoked.returncode == 0, revoked.stderr
    assert "no daemon running here: it enforces the revocation" in revoked.stderr
    assert _core.read_revocation(base64.b64decode(revoked.stdout.strip()), net.public_key)["sequence"] == 1
    assert "revoked" in _cli(tmp_path, "members", "home").stdout
    for args, message in [(("issue", "home", "qe1bad", "--name", "x"), "node id"),
                          (("revoke", "home", "nobody"), "no member 'nobody'"),
                          (("members", "work"), "no network 'work'")]:
        result = _cli(tmp_path, *args)
        assert result.returncode == 1 and message in result.stderr, (args, result.stderr)
    assert "home" in _cli(tmp_path, "list").stdout


def _config(tmp_path: Path, network_section: str, node_extra: str = "") -> str:
    return f'[node]\nstate_dir = "{tmp_path}"\n{node_extra}\n[network]\n{network_section}\n'


def test_a_config_takes_the_nodes_certificate_and_the_networks_revocations(tmp_path: Path) -> None:
    from quicether.config import parse
    from quicether.daemon import reload

    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"))
    alice = network.issue(net, _node_key(), "alice", lan_prefixes=["192.168.7.0/24"])
    config = parse(_config(tmp_path, f'certificate = "{alice.certificate}"'), tmp_path / "q.toml")
    assert config.network is not None and config.network.name == "alice"
    assert config.network.network_key == net.public_key and config.address == "100.64.0.2/16"
    revocation = base64.b64encode(network.revoke(net, "alice")).decode()
    revoked = parse(_config(tmp_path, f'certificate = "{alice.certificate}"\nrevoked = ["{revocation}"]'),
                    tmp_path / "q.toml")
    assert revoked.network is not None and len(revoked.network.revoked) == 1
    # New revocations apply in place; another certificate is another TLS identity: the node restarts.
    assert reload.diff(config, revoked).changes == ["network"]
    bob = network.issue(net, _node_key(), "bob")
    other = parse(_config(tmp_path, f'certificate = "{bob.certificate}"', 'address = "100.64.0.3/16"'),
                  tmp_path / "q.toml")
    assert "network" in reload.diff(config, other).restart


def test_a_gateway_relays_for_members_unless_told_not_to_and_a_site_only_when_told(tmp_path: Path) -> None:
    from quicether.config import parse, relays
    from quicether.daemon import reload

    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"))
    cert = network.issue(net, _node_key(), "alice").certificate
    site = parse(_config(tmp_path, f'certificate = "{cert}"'), tmp_path / "q.toml")
    gateway = parse(_config(tmp_path, f'certificate = "{cert}"', 'role = "gateway"'), tmp_path / "q.toml")
    quiet = parse(_config(tmp_path, f'certificate = "{cert}"\nrelay = false', 'role = "gateway"'), tmp_path / "q.toml")
    helper = parse(_config(tmp_path, f'certificate = "{cert}"\nrelay = true'), tmp_path / "q.toml")
    assert (relays(site), relays(gateway), relays(quiet), relays(helper)) == (False, True, False, True)
    assert reload.diff(site, helper).changes == ["network"], "relaying turns on in place"
    assert site.network is not None and site.network.relay_rate_mbit == 50.0


@pytest.mark.parametrize(("section", "node_extra", "message"), [
    ("", "", "network.certificate: missing"),
    ('certificate = "not base64!"', "", "not base64"),
    ('certificate = "AQID"', "", "too short"),
    ("CERT_DAMAGED", "", "certificate refused: bad signature"),
    ('certificate = "CERT"\nrevoked = ["AQID"]', "", r"network.revoked\[0\]: revocation refused: malformed"),
    ('certificate = "CERT"', 'address = "10.99.0.1/24"', "is not the address the network certificate gives"),
    ('certificate = "CERT"\nmode = "fastest"', "", "network.mode"),
    ('certificate = "CERT"\nrelay = "yes"', "", "network.relay: must be true or false"),
    ('certificate = "CERT"\nrelay_rate_mbit = -1', "", "network.relay_rate_mbit: must be a rate"),
])
def test_a_bad_network_section_is_refused_naming_the_field(tmp_path: Path, section: str, node_extra: str,
                                                           message: str) -> None:
    from quicether.config import ConfigError, parse

    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"))
    cert = network.issue(net, _node_key(), "alice").certificate
    raw = bytearray(base64.b64decode(cert))
    raw[-1] ^= 1
    section = section.replace("CERT_DAMAGED", f'certificate = "{base64.b64encode(bytes(raw)).decode()}"')
    section = section.replace("CERT", cert)
    with pytest.raises(ConfigError, match=message):
        parse(_config(tmp_path, section, node_extra), tmp_path / "q.toml")


def test_an_invite_is_used_once_for_what_it_grants_and_its_secret_is_not_kept(tmp_path: Path) -> None:
    admin = generate_identity(tmp_path / "node.key")
    net = network.create(tmp_path, "home", admin, admin_name="gw")
    now = 1_800_000_000
    invite = network.invite(net, admin, ["10.1.0.2:4433"], groups=["sites"], lan_prefixes=["192.168.7.0/24"],
                            hours=2, now=now)
    assert invite.expires_at == now + 7200 and invite.network_key == net.key
    invite_key = _core.public_key_of_seed(invite.seed)
    assert network.invite_keys(net, now) == [invite_key]
    assert invite.secret not in (net.directory / network.INVITES_FILE).read_text()
    node = _node_key()
    member = network.admit(net, invite_key, node, "site-a", now=now + 60)
    assert (member.name, member.groups, member.lan_prefixes) == ("site-a", ["sites"], ["192.168.7.0/24"])
    # The same node asking again (its answer was lost) gets its certificate again; anyone else is refused.
    assert network.admit(net, invite_key, node, "site-a", now=now + 70).certificate == member.certificate
    with pytest.raises(network.NetworkError, match="already used"):
        network.admit(net, invite_key, _node_key(), "site-b", now=now + 80)
    # Still known a while (to say "used"), then forgotten.
    assert network.invite_keys(net, now + 7200 + network.INVITE_MEMORY_S) == []


@pytest.mark.parametrize(("name", "when", "message"), [
    ("", 60, "give this node a name"),
    ("gw", 60, "already has a member called 'gw'"),
    ("site-a", 7201, "expired on"),
])
def test_an_invite_refusal_says_why_and_leaves_it_usable(tmp_path: Path, name: str, when: int, message: str) -> None:
    admin = generate_identity(tmp_path / "node.key")
    net = network.create(tmp_path, "home", admin, admin_name="gw")
    now = 1_800_000_000
    invite = network.invite(net, admin, ["10.1.0.2:4433"], hours=2, now=now)
    key = _core.public_key_of_seed(invite.seed)
    with pytest.raises(network.NetworkError, match=message):
        network.admit(net, key, _node_key(), name, now=now + when)
    assert all(i.used_by is None for i in network.invitations(net))
    with pytest.raises(network.NetworkError, match="not known to the admin node"):
        network.admit(net, _node_key(), _node_key(), "site-x", now=now)
    with pytest.raises(network.NetworkError, match="already has a member called 'gw'"):
        network.invite(net, admin, ["10.1.0.2:4433"], name="gw")


def test_a_joining_node_is_granted_the_lan_it_asks_for_unless_another_member_routes_it(tmp_path: Path) -> None:
    admin = generate_identity(tmp_path / "node.key")
    net = network.create(tmp_path, "home", admin, admin_name="gw")
    now = 1_800_000_000

    def join(asked: list[str], granted_by_invite: list[str] | None = None, name: str = "") -> network.Member:
        invite = network.invite(net, admin, ["10.1.0.2:4433"], lan_prefixes=granted_by_invite, now=now)
        return network.admit(net, _core.public_key_of_seed(invite.seed), _node_key(),
                             name or f"site-{len(net.members)}", now=now + 1, asked_lan=asked)

    assert join(["192.168.50.0/24"]).lan_prefixes == ["192.168.50.0/24"]
    assert join([]).lan_prefixes == []
    # What the admin wrote into the invite wins over what the node asks for.
    assert join(["192.168.60.0/24"], granted_by_invite=["10.20.0.0/16"]).lan_prefixes == ["10.20.0.0/16"]
    for asked, message in [(["192.168.50.128/25"], "overlaps 192.168.50.0/24, the LAN of member 'site-1'"),
                           (["8.8.8.0/24"], "not a private prefix"), (["0.0.0.0/0"], "not a private prefix"),
                           (["100.64.3.0/24"], "not a private prefix outside the network's 100.64.0.0/16"),
                           (["192.168.1.1/24"], "not an IPv4 prefix")]:
        with pytest.raises(network.NetworkError, match=re.escape(message)):
            join(asked)
    # A refused join leaves its invite unused and nothing certified.
    assert [m.name for m in net.active()] == ["gw", "site-1", "site-2", "site-3"]


class _RecordingNode:
    """The core's set_network, recorded: the revocations the daemon enforces and tells the members."""

    def __init__(self) -> None:
        self.told: list[list[bytes]] = []

    def set_network(self, _key: bytes | None, revocations: list[bytes], *_policy: object) -> list[bytes]:
        self.told.append(list(revocations))
        return []


def test_the_admin_daemon_enforces_its_ledgers_revocations(tmp_path: Path) -> None:
    """`quicether network revoke` writes the ledger; the admin node's daemon reads it (the CLI asks it to,
    and every recheck) and hands the new revocations to the core; a damaged ledger entry is skipped."""
    from quicether.config import parse
    from quicether.daemon.mesh import Mesh
    from quicether.joining import Admissions

    net = network.create(tmp_path, "home", generate_identity(tmp_path / "node.key"), admin_name="gw")
    network.issue(net, _node_key(), "alice")
    config = parse(_config(tmp_path, f'certificate = "{net.members[0].certificate}"'), tmp_path / "q.toml")
    node = _RecordingNode()
    admissions = Admissions(node, config)  # type: ignore[arg-type]
    mesh = Mesh(node, None, config, str)  # type: ignore[arg-type]
    assert admissions.revocations() == [] and mesh.ledger_revoked([]) == 0 and node.told == []
    revocation = network.revoke(net, "alice")
    assert admissions.revocations() == [revocation]
    assert mesh.ledger_revoked(admissions.revocations()) == 1 and node.told == [[revocation]]
    assert mesh.ledger_revoked(admissions.revocations()) == 0 and len(node.told) == 1, "told once"
    net.revocations.append(base64.b64encode(b"\x02" + bytes(40)).decode())
    network._save_ledger(net)
    assert admissions.revocations() == [revocation]
    # Not the admin of the network in [network]: no ledger is read.
    other = network.create(tmp_path / "other", "home", generate_identity(tmp_path / "other" / "node.key"))
    assert Admissions(node, parse(_config(tmp_path, f'certificate = "{other.members[0].certificate}"'),  # type: ignore[arg-type]
                                  tmp_path / "q.toml")).revocations() == []
