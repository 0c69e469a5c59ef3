"""The `quicether` command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quicether import __version__
from quicether.config import DEFAULT_STATE_DIR, Config, ConfigError, load
from quicether.daemon import api, portmap
from quicether.identity import KEY_FILE_NAME, Identity, IdentityError, decode_node_id
from quicether.identity import generate as generate_identity
from quicether.identity import load as load_identity

if TYPE_CHECKING:
    from quicether.network import Network

DEFAULT_CONFIG = Path("/etc/quicether/quicether.toml")


def _fail(message: str) -> int:
    print(f"quicether: error: {message}", file=sys.stderr)
    return 1


def _cmd_version(_args: argparse.Namespace) -> int:
    try:
        from quicether._core import core_version
    except ImportError as exc:  # the package was installed without its compiled core
        return _fail(f"quicether {__version__}: core not built ({exc})")
    print(f"quicether {__version__} (core {core_version()})")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.state_dir) / KEY_FILE_NAME
    try:
        identity = generate_identity(path)
    except (IdentityError, OSError) as exc:
        return _fail(str(exc))
    print(identity.node_id)
    print(f"key written to {path} (mode 600)", file=sys.stderr)
    return 0


def _cmd_pubkey(args: argparse.Namespace) -> int:
    try:
        print(load_identity(Path(args.state_dir) / KEY_FILE_NAME).node_id)
    except IdentityError as exc:
        return _fail(str(exc))
    return 0


# The TCP lane holds three descriptors per connection (up to 1024 connections per end), besides the paths' sockets,
# the API's clients and the children's pipes: systemd's default soft limit of 1024 open files is too few.
OPEN_FILES = 65536


def raise_open_files_limit() -> str | None:
    """Raises this process's soft limit of open files to OPEN_FILES (at most its hard limit); why not, if not."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES if hard == resource.RLIM_INFINITY else min(OPEN_FILES, hard)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as exc:
            return f"cannot raise the limit of open files from {soft} to {wanted}: {exc}"
    return None


def _cmd_up(args: argparse.Namespace) -> int:
    from quicether.daemon.eventlog import EscapeControls, EventLog
    from quicether.daemon.service import Daemon
    from quicether.net.links import LinkError
    from quicether.net.nft import FirewallError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="quicether: %(levelname)s %(message)s")
    events = EventLog()
    logger = logging.getLogger("quicether")
    logger.addFilter(EscapeControls())
    logger.addHandler(events)
    if os.geteuid() == 0:
        from quicether import capabilities

        try:
            kept = capabilities.drop_to_needed()
            logger.debug("capabilities: kept only %s", ", ".join(capabilities.names(kept)))  # status lists them
        except OSError as exc:
            logger.warning("capabilities: could not drop the unneeded ones (%s): running with all of root's", exc)
    if (why := raise_open_files_limit()) is not None:
        logger.warning("%s: the TCP lane may refuse connections past it", why)
    try:
        config: Config | None = load(Path(args.config))
        while config is not None:  # once, and again after each reload request
            daemon = Daemon(config, load_identity(config.key_path), events)
            asyncio.run(daemon.run())
            if daemon.failed:
                return _fail(daemon.failed)
            config = daemon.reload_with
    except (ConfigError, IdentityError, LinkError, FirewallError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # from the core (its message names the address or device), the API socket, a file
        return _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror or str(exc))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    try:
        config = load(Path(args.config))
    except ConfigError as exc:
        return _fail(str(exc))
    wans = f"{len(config.wans)} WAN(s)" + (", WANs detected" if config.detect_wans else "")
    print(f"{config.path}: valid ({config.role}, {len(config.peers)} peer(s), {wans}"
          f"{', LAN ' + config.lan.device if config.lan else ''})")
    return 0


def _format_age(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return f"{max(0.0, time.time() - timestamp):.0f}s ago"


def _date(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(unix_s))


def _print_network(node: dict[str, Any]) -> None:
    """The mesh part of `quicether status`: this node's membership, every member known, the DHT and mDNS."""
    net = node.get("network")
    if not net:
        return
    members = net["members"]
    print(f"  network: this node is member {net['name']} {net.get('address', '-')}, certificate valid until"
          f" {_date(net['not_after'])}; {len(members)} member(s) known,"
          f" {sum(m['connected'] for m in members)} connected, {net['revoked']} revoked,"
          f" {net['news_refused']} news item(s) refused")
    for m in members:
        seen = _format_age(m["record_seen"]) if m.get("record_seen") else "-"
        print(f"    member {m['name']:<20} {m['ipv4']:<15} {'connected' if m['connected'] else 'not connected':<14}"
              f" found {m.get('found', '-'):<12} record seen {seen:<10} valid until {_date(m['not_after'])}")
    if dht := node.get("dht"):
        c = dht["counters"]
        if dht["published_at"]:
            published = f"published {', '.join(dht['published']) or 'no address'} {_format_age(dht['published_at'])}"
            if dht.get("published_relays"):
                published += f" (through relays {', '.join(dht['published_relays'])})"
        else:
            published = "not published yet" + (f" ({dht['publish_failed']})" if dht["publish_failed"] else "")
        refused = ", ".join(f"{k.replace('_', ' ')} {c.get(k, 0)}"
                            for k in ("bad_signature", "replay", "expired", "non_member", "malformed"))
        print(f"  dht: {published}; lookups {c.get('lookups', 0)}, found {c.get('found', 0)};"
              f" records refused: {refused}")
        if dht.get("serving"):
            print(f"  dht: serving on {', '.join(dht['serving'])}")
    if (lan := node.get("lan_discovery")) is not None:
        counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(lan.items()))
        print(f"  lan discovery: {counts or '-'}")


def _cmd_status(args: argparse.Namespace) -> int:
    socket_path = Path(args.socket) if args.socket else None
    if socket_path is None:
        try:
            socket_path = load(Path(args.config)).api_socket
        except ConfigError as exc:
            return _fail(str(exc))
    try:
        answer = api.request(socket_path, "status")
    except OSError as exc:
        return _fail(f"no daemon answers on {socket_path} ({exc.strerror or exc}); is `quicether up` running?")
    if not answer.get("ok"):
        return _fail(str(answer.get("error")))
    if args.json:
        print(json.dumps(answer, indent=1, sort_keys=True))
        return 0
    if args.metrics:
        from quicether.metrics import render

        print(render(answer), end="")
        return 0
    node = answer["node"]
    print(f"node {node['node_id']}")
    print(f"  listen {node['listen']}  tun {node['tun']}  mtu {node['mtu']}"
          f"  offloads {node.get('tun_offloads') or '-'}  address {node['address'] or '-'}"
          f"  refused handshakes {node.get('refused_handshakes', 0)}"
          f" (retried {node.get('handshakes_retried', 0)}, dropped {node.get('handshakes_dropped', 0)})")
    if cipher := node.get("cipher"):
        print(f"  cipher {cipher['preferred']} preferred ({cipher['why']})")
    if threads := node.get("io_threads"):
        print(f"  io threads {threads['count']} ({threads['why']})")
    if (batching := node.get("udp_batching")) and batching["send_calls"] and batching["recv_calls"]:
        print(f"  UDP batching: {batching['sent_datagrams'] / batching['send_calls']:.1f} datagrams per send call,"
              f" {batching['received_datagrams'] / batching['recv_calls']:.1f} per receive call")
    router = answer.get("router")
    if router and router["lan"]:
        lan = router["lan"]
        exit_text = (f"exit via {lan['exit_peer']} ({'active' if lan['exit_active'] else 'down, using WANs'})"
                     if lan["exit_peer"] else "no exit peer (internet via WANs)")
        print(f"  lan {lan['device']} {lan['address']}  {'dhcp ' if lan['dhcp'] else ''}{'dns ' if lan['dns'] else ''}"
              f"{len(lan['leases'])} lease(s)  {exit_text}{'  kill switch' if lan['kill_switch'] else ''}")
    if router:
        print(f"  role {router['role']}  outside ports {' '.join(router['outside']) or '-'}")
    for wan, nat in sorted(node.get("nat", {}).items()):
        print(f"  wan {wan}: NAT {nat}")
    for wan, mapping in sorted((node.get("port_mapping") or {}).items()):
        print(portmap.describe(wan, mapping))
    punch = node.get("punch") or {}
    if punch:
        print(f"  hole punching: {punch.get('attempts', 0)} attempts, {punch.get('successes', 0)} punched paths up,"
              f" {punch.get('forwarded', 0)} forwarded for others, {punch.get('refused', 0)} refused,"
              f" {punch.get('skipped', 0)} not tried (both NATs random)")
        if punch.get("probe_hits", 0) or punch.get("probe_misses", 0):
            print(f"  birthday probes: {punch.get('probe_hits', 0)} hit, {punch.get('probe_misses', 0)} missed;"
                  f" {punch.get('probes_sent', 0)} probe packets sent, {punch.get('probe_sockets', 0)} extra sockets"
                  " opened")
    relay = node.get("relay") or {}
    if relay.get("enabled") or relay.get("dials"):
        drops = {k.removeprefix("dropped_"): v for k, v in relay.items() if k.startswith("dropped_") and v}
        print(f"  relay {'on' if relay.get('enabled') else 'off'}: {relay.get('forwarded_packets', 0)} packets"
              f" ({relay.get('forwarded_bytes', 0)} bytes) forwarded for members, dropped {drops or 'none'};"
              f" through relays: {relay.get('dials', 0)} dials, {relay.get('sent_packets', 0)} sent,"
              f" {relay.get('received_packets', 0)} received ({relay.get('received_dropped', 0)} dropped)")
    from quicether.metrics import health_line, lane_end_line, lane_ends, lane_subflow_shares

    for end, counters in lane_ends(node).items():
        print(f"  tcp lane ({end} end): {lane_end_line(counters)}")
    for name, until in sorted((node.get("lane_bypassed") or {}).items()):
        print(f"  tcp lane to {name}: MPTCP is stripped on the way, its TCP goes through the QUIC bond until"
              f" {time.strftime('%H:%M:%S', time.localtime(until))}")
    if shares := lane_subflow_shares(node):
        print("  tcp lane subflows: " + ", ".join(f"{wan} {count} ({100 * share:.0f} % of the bytes)"
                                                  for wan, count, share in shares))
    if health := answer.get("health"):
        print(f"  system: {health_line(health)}")
    _print_network(node)
    for p in answer["peers"]:
        rtt = f"{p['rtt_ms']:.2f} ms" if p["rtt_ms"] is not None else "-"
        punches = f"  punch attempts {p['punch_attempts']}" if p.get("punch_attempts") else ""
        print(f"peer {p['name'] or '-'} {p['node_id']}  found {p.get('found', 'config')}{punches}")
        print(f"  {'connected' if p['connected'] else 'not connected'}  endpoint {p['endpoint'] or '-'}  rtt {rtt}"
              f"  last handshake {_format_age(p['last_handshake'])}")
        print(f"  rx {p['rx_bytes']} B / {p['rx_packets']} pkts  tx {p['tx_bytes']} B / {p['tx_packets']} pkts"
              f"  dropped rx {p['rx_dropped']} tx {p['tx_dropped']}"
              f" (queue full {p.get('tx_dropped_queue_full', 0)}), resend memory full {p.get('resend_evicted', 0)}")
        r = p["reorder"]
        print(f"  reorder: timeout {r['timeout_ms']:.0f} ms, reordered {r['reordered']}, late {r['late']},"
              f" duplicates {r['duplicates']}, repaired {r['repaired']}, skipped {r['skipped']}"
              f" ({r.get('overflowed', 0)} for its bound);"
              f" retransmitted for the peer {p['retransmitted']}")
        if p["paths"]:
            print(f"  {'wan':<10}{'state':<9}{'kind':<9}{'local':<17}{'public':<17}{'remote':<22}{'rtt':>9}{'loss':>7}"
                  f"{'tx rate':>13}{'rx rate':>13}{'share':>7}{'window':>9}{'queue':>9}")
        for path in p["paths"]:
            state = ("up" if path["up"] else "down") + (" (b)" if path["backup"] else "")
            public = path["public"].rsplit(":", 1)[0] if path.get("public") else "-"
            kind = path.get("kind", "direct") + (f" via {path['via'][:10]}" if path.get("via") else "")
            print(f"  {path['wan']:<10}{state:<9}{kind:<9}{path['local'] or '-':<17}{public:<17}{path['remote']:<22}"
                  f"{path['rtt_ms']:>6.1f} ms{path['loss'] * 100:>6.1f}%{path['tx_rate_bps'] / 1e6:>8.1f} Mb/s"
                  f"{path['rx_rate_bps'] / 1e6:>8.1f} Mb/s{path['share'] * 100:>6.0f}%"
                  f"{path.get('cwnd_bytes', 0) / 1000:>6.0f} kB{path.get('queued_bytes', 0) / 1000:>6.0f} kB")
    return 0


def _cmd_invite(args: argparse.Namespace) -> int:
    import ipaddress

    from quicether import joining, network
    from quicether.invite import Invite

    try:
        config = load(Path(args.config))
        identity = load_identity(config.key_path)
        endpoints = joining.invite_endpoints(config, args.endpoint or [])
        admin_of = (network.holding_key(config.state_dir, config.network.network_key)
                    if config.network is not None and not args.peer else None)
    except (ConfigError, IdentityError, network.NetworkError) as exc:
        return _fail(str(exc))
    if admin_of is not None:
        return _network_invite(args, config, identity, admin_of, endpoints)
    if config.address is None:
        return _fail(f"{config.path}: node.address: needed for an invite (it names the overlay network)")
    offers_exit = config.gateway is not None and config.gateway.internet is not None
    invite = Invite(key=identity.node_id, endpoints=endpoints,
                    network=str(ipaddress.ip_interface(config.address).network), name=args.name,
                    exit=offers_exit if args.exit is None else args.exit, peer_address=config.address)
    try:
        from quicether.invite import decode
        decode(invite.encode())  # the endpoints given on the command line are checked like a pasted code
    except ValueError as exc:
        return _fail(str(exc))
    print(invite.encode())
    print("paste it into the joining node's web UI or run `quicether join <code>` there; then allow that node "
          "here with `quicether add-peer NAME NODE_ID --allowed-ips ...`", file=sys.stderr)
    return 0


def _network_invite(args: argparse.Namespace, config: Config, identity: Identity, net: Network,
                    endpoints: list[str]) -> int:
    """A single-use invite to the network this node is admin of; the running daemon accepts it at once."""
    from quicether import network
    from quicether.invite import InviteError, decode_network

    try:
        invite = network.invite(net, identity, endpoints, name=args.member_name or "", groups=args.group,
                                lan_prefixes=args.lan_prefix, hours=args.hours, days=args.days)
        decode_network(invite.encode())  # the endpoints given on the command line are checked like a pasted code
    except (network.NetworkError, InviteError) as exc:
        return _fail(str(exc))
    print(invite.encode())
    until = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(invite.expires_at))
    print(f"an invite to network {net.name}, usable once until {until}: run `quicether join <code>` on the new "
          "node (or paste it into its web UI). It is a secret: whoever holds it can join.", file=sys.stderr)
    try:
        api.request(config.api_socket, "invites")
    except OSError:
        print("no daemon running here: the invite works once `quicether up` runs", file=sys.stderr)
    return 0


def _reload_daemon(config: Config) -> None:
    try:
        answer = api.request(config.api_socket, "reload")
    except OSError:
        print("no daemon running: the change applies at the next `quicether up`", file=sys.stderr)
        return
    if not answer.get("ok"):
        print(f"daemon refused: {answer.get('error')}", file=sys.stderr)
    elif answer.get("reloading"):
        print(f"daemon restarting its node ({', '.join(answer.get('restart', []))} changed)", file=sys.stderr)
    else:
        print(f"daemon applied: {'; '.join(answer.get('changes', [])) or 'nothing changed'}", file=sys.stderr)


def _cmd_join(args: argparse.Namespace) -> int:
    from quicether import config_edit
    from quicether.invite import InviteError, decode, is_network_invite

    path = Path(args.config)
    if is_network_invite(args.code):
        return _join_network(args, path)
    try:
        invite = decode(args.code)
        doc = config_edit.load_document(path)
        identity = config_edit.node_identity(doc)
        address = config_edit.overlay_address(doc, invite, args.address)
        doc = config_edit.add_invited_peer(doc, invite, address=address, mode=args.mode, use_exit=args.exit,
                                           replace=args.replace)
        config = config_edit.save(doc, path)
    except (InviteError, ConfigError, IdentityError) as exc:
        return _fail(f"{exc} (--replace replaces it)" if "already named" in str(exc) else str(exc))
    peer = next(p for p in config.peers if p.node_id == invite.key)
    print(f"added peer {peer.name} at {peer.endpoint} to {path}")
    if config.lan is not None and config.lan.exit_peer == peer.name:
        print(f"LAN internet traffic now goes through {peer.name}")
    elif invite.exit and not args.exit:
        print(f"{peer.name} offers an exit to the internet: join again with --exit to send LAN internet traffic "
              "through it")
    subnets = [config.address.split("/")[0] + "/32"] if config.address else []
    if config.lan is not None:
        subnets.append(config.lan.subnet)
    print(f"now allow this node on {peer.name}:\n  quicether add-peer SITE-NAME {identity.node_id} "
          f"--allowed-ips {','.join(subnets)}")
    _reload_daemon(config)
    return 0


def _join_network(args: argparse.Namespace, path: Path) -> int:
    """Joins with a network invite: gets this node's certificate from the admin, then writes the config."""
    from quicether import config_edit, joining
    from quicether.invite import InviteError, decode_network

    try:
        invite = decode_network(args.code)
        doc = config_edit.load_document(path)
        identity = config_edit.node_identity(doc)
        print(f"asking the admin node of network {invite.network} at {', '.join(invite.endpoints)} …",
              file=sys.stderr)
        joined = joining.join(args.code, identity, doc, args.member_name or "")
        config = config_edit.save(joining.add_membership(doc, joined, invite, use_exit=args.exit), path)
    except (InviteError, ConfigError, IdentityError) as exc:
        return _fail(str(exc))
    routed = f", routing its LAN {', '.join(joined.lan_prefixes)}" if joined.lan_prefixes else ""
    print(f"joined network {joined.network} as {joined.name} ({joined.address}{routed}); {joined.admin_name} "
          f"(the admin node) is a peer, the other members are found through "
          f"{'the DHT' if config.discovery.dht else 'the peers'}: written to {path}")
    if config.lan is not None and config.lan.exit_peer is not None and args.exit and joined.exit_offered:
        print(f"LAN internet traffic now goes through {config.lan.exit_peer}")
    elif joined.exit_offered and not args.exit:
        print(f"{joined.admin_name} offers an exit to the internet: join again with --exit to send LAN internet "
              "traffic through it")
    elif args.exit and not joined.exit_offered:
        print(f"{joined.admin_name} offers no exit to the internet: LAN internet traffic keeps leaving by the WANs")
    _reload_daemon(config)
    return 0


def _cmd_add_peer(args: argparse.Namespace) -> int:
    from quicether import config_edit

    path = Path(args.config)
    try:
        doc = config_edit.load_document(path)
        known = next((p for p in doc.get("peer", []) if p.get("key") == args.node_id), None)
        if known is not None and known.get("name") != args.name and not args.replace:
            return _fail(f"node {args.node_id} is already the peer {known.get('name')!r}; --replace renames it")
        try:
            peers = config_edit.without_clashing_peers(doc, args.name, args.node_id, args.replace)
        except ConfigError as exc:
            return _fail(f"{exc} (--replace replaces it)")
        peer = {"name": args.name, "key": args.node_id, "allowed_ips": [a for a in args.allowed_ips.split(",") if a]}
        if args.endpoint:
            peer["endpoint"] = args.endpoint
        config = config_edit.save({**doc, "peer": [*peers, peer]}, path)
    except ConfigError as exc:
        return _fail(str(exc))
    print(f"peer {args.name} written to {path}")
    _reload_daemon(config)
    return 0


def _cmd_upgrade(args: argparse.Namespace) -> int:
    from quicether import upgrade

    try:
        if args.confirm:
            slot = upgrade.confirm()
            print(f"running slot {slot} confirmed" if slot else "not an A/B appliance image: nothing to confirm")
            return 0
        if not args.image:
            return _fail("give the new image (a file or device), or --confirm")
        slot = upgrade.upgrade(Path(args.image))
    except upgrade.UpgradeError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or args.image}: {exc.strerror or exc}")
    print(f"slot {slot} written; reboot to start it (if it does not come up, the current system starts again)")
    return 0


def _cmd_setup_code(args: argparse.Namespace) -> int:
    from quicether import setup_code

    state_dir = Path(args.state_dir) if args.state_dir else None
    if state_dir is None:
        try:
            state_dir = load(Path(args.config)).state_dir
        except ConfigError as exc:
            return _fail(f"{exc} (or give --state-dir)")
    try:
        code = setup_code.ensure(state_dir, tuple(Path(c) for c in args.copy_to or []))
    except OSError as exc:
        return _fail(f"{exc.filename or state_dir}: {exc.strerror or exc}")
    if code is None:
        print("the web UI's admin password is already set: there is no setup code", file=sys.stderr)
        return 0
    print(code)
    return 0


def _cmd_gateway_init(args: argparse.Namespace) -> int:
    import os

    from quicether import gateway_init

    if os.geteuid() != 0:
        return _fail("run as root (it writes the config, the node key and a sysctl file, and starts the unit)")
    opts = gateway_init.Options(config_path=Path(args.config), state_dir=Path(args.state_dir),
                                public_ip=args.public_ip, port=args.port, device=args.internet,
                                address=args.address, name=args.name, start=args.start, force=args.force,
                                keep_ssh=args.keep_ssh, network=args.network)
    try:
        result = gateway_init.run_init(opts)
    except gateway_init.GatewayInitError as exc:
        return _fail(str(exc))
    return 1 if result.quic_answers is False else 0


def _cmd_network(args: argparse.Namespace) -> int:
    from quicether import network

    state_dir = Path(args.state_dir)
    try:
        if args.network_command == "create":
            admin = load_identity(state_dir / KEY_FILE_NAME)
            net = network.create(state_dir, args.name, admin, overlay=args.overlay, admin_name=args.member_name,
                                 days=args.days)
            print(f"network {net.name} created: key {net.key}, overlay {net.overlay}")
            print(f"this node is member {args.member_name} at {net.members[0].ipv4}; the network key is in"
                  f" {net.directory / 'network.key'} (mode 600): keep a copy somewhere safe", file=sys.stderr)
        elif args.network_command == "list":
            for net in network.list_networks(state_dir):
                print(f"{net.name}  {net.key}  {net.overlay}  {len(net.active())} members"
                      f"  {len(net.revocations)} revoked")
        elif args.network_command == "members":
            net = network.load(state_dir, args.name)
            if args.json:
                print(json.dumps([network.describe(m) for m in net.members], indent=2))
                return 0
            for m in net.members:
                state = "revoked" if m.revoked_at is not None else time.strftime("until %Y-%m-%d",
                                                                                 time.gmtime(m.not_after))
                print(f"{m.name:<16} {m.ipv4:<15} {m.node_id}  {state}"
                      f"{'  exit' if m.exit else ''}{'  groups ' + ','.join(m.groups) if m.groups else ''}")
        elif args.network_command == "issue":
            net = network.load(state_dir, args.name)
            member = network.issue(net, decode_node_id(args.node_id), args.member_name, groups=args.group,
                                   lan_prefixes=args.lan_prefix, exit=args.exit, days=args.days)
            print(member.certificate)
            print(f"{member.name} is {member.ipv4} in {net.name} until"
                  f" {time.strftime('%Y-%m-%d', time.gmtime(member.not_after))}", file=sys.stderr)
        elif args.network_command == "revoke":
            import base64

            net = network.load(state_dir, args.name)
            member = net.find(args.member)
            print(base64.b64encode(network.revoke(net, args.member)).decode())
            print(f"{member.name} ({member.node_id}) revoked from {net.name}", file=sys.stderr)
            _tell_revocation(state_dir, net.name)
    except (network.NetworkError, IdentityError) as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{exc.filename or state_dir}: {exc.strerror or exc}")
    return 0


def _tell_revocation(state_dir: Path, network_name: str) -> None:
    """The daemon running on this admin node enforces the ledger's new revocation and tells every member."""
    try:
        answer = api.request(state_dir / "api.sock", "revocations")
    except (OSError, ValueError):
        print("no daemon running here: it enforces the revocation and tells the members once `quicether up`"
              " runs", file=sys.stderr)
        return
    if not answer.get("ok"):
        print(f"the running daemon did not take it: {answer.get('error')}", file=sys.stderr)
    elif answer.get("network") != network_name:
        print(f"the daemon running here is not a member of {network_name}: give the revocation printed above to"
              " a member's [network] revoked (a member tells it to the others)", file=sys.stderr)
    else:
        print("the running daemon cut it off and tells every member now", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="quicether",
        description="QuicEther: bond every WAN port through multipath QUIC to your own gateway.",
    )
    parser.add_argument("--version", action="version", version=f"quicether {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    version = sub.add_parser("version", help="print the package and compiled core versions")
    version.set_defaults(func=_cmd_version)

    keygen = sub.add_parser("keygen", help="create this node's key pair and print its node id")
    keygen.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where the key goes (default %(default)s)")
    keygen.set_defaults(func=_cmd_keygen)

    pubkey = sub.add_parser("pubkey", help="print this node's id (its public key)")
    pubkey.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR), help="where the key is (default %(default)s)")
    pubkey.set_defaults(func=_cmd_pubkey)

    up = sub.add_parser("up", help="run the node in the foreground (SIGTERM stops it and removes TUN and routes)")
    up.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    up.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    up.set_defaults(func=_cmd_up)

    status = sub.add_parser("status", help="show peers, endpoints, RTT, bytes and last handshake")
    status.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    status.add_argument("--socket", help="API socket of the daemon (default: from the config)")
    status.add_argument("--json", action="store_true", help="print the daemon's whole answer as JSON (for scripts)")
    status.add_argument("--metrics", action="store_true",
                        help="print it as Prometheus text metrics (the web UI serves the same at /metrics)")
    status.set_defaults(func=_cmd_status)

    check = sub.add_parser("check", help="validate a config file without applying it (exit 1 naming the field)")
    check.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    check.set_defaults(func=_cmd_check)

    invite = sub.add_parser("invite", help="print an invite code: to the network this node is admin of (single-use,"
                                           " expiring), else to connect to this node as a peer",
                            description="On the admin node of the network in [network] (it holds the network key):"
                                        " a single-use, expiring code with which a new node gets its membership"
                                        " certificate (`quicether join CODE`). Elsewhere, or with --peer: a code"
                                        " to add this node as a peer.")
    invite.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    invite.add_argument("--endpoint", action="append", metavar="IP:PORT",
                        help="address others reach this node at (repeatable; default: the listen address)")
    invite.add_argument("--name", default="gateway", help="name the joining node gives this one (default %(default)s)")
    exit_group = invite.add_mutually_exclusive_group()
    exit_group.add_argument("--exit", dest="exit", action="store_true", default=None,
                            help="offer to carry the joining site's internet traffic (default: if [gateway] has"
                                 " an internet port)")
    exit_group.add_argument("--no-exit", dest="exit", action="store_false", help="do not offer an exit")
    invite.add_argument("--peer", action="store_true", help="a peer invite even on a network's admin node")
    from quicether import network

    invite.add_argument("--member-name", help="network invite: the name the new member gets (default: its choice)")
    invite.add_argument("--hours", type=float, default=network.DEFAULT_INVITE_HOURS,
                        help="network invite: hours until it expires (default %(default)s)")
    invite.add_argument("--group", action="append", default=[], help="network invite: a group the member is in"
                                                                     " (repeatable)")
    invite.add_argument("--lan-prefix", action="append", default=[], metavar="CIDR",
                        help="network invite: a LAN prefix the member may route (repeatable)")
    invite.add_argument("--days", type=int, default=network.DEFAULT_VALIDITY_DAYS,
                        help="network invite: validity of the certificate it gets (default %(default)s)")
    invite.set_defaults(func=_cmd_invite)

    join = sub.add_parser("join", help="join a network (qej1.… code) or add the node of a peer invite (qei1.…)"
                                       " as a peer: rewrites the config, reloads")
    join.add_argument("code", help="the invite code (qej1.… from a network's admin node, or qei1.…)")
    join.add_argument("--name", dest="member_name", help="network invite: this node's name in the network, if the"
                                                         " invite leaves it open (default: the host name)")
    join.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    join.add_argument("--address", help="this node's overlay address (default: the configured one, or one picked"
                                        " in the invite's network)")
    join.add_argument("--mode", default="aggregate", choices=["aggregate", "lowest-rtt", "redundant"],
                      help="bonding mode for bulk traffic to it (default %(default)s)")
    join_exit = join.add_mutually_exclusive_group()
    join_exit.add_argument("--exit", dest="exit", action="store_true", default=False,
                           help="send this LAN's internet traffic through it (if the invite offers an exit)")
    join_exit.add_argument("--no-exit", dest="exit", action="store_false",
                           help="do not send LAN internet traffic through it (the default)")
    join.add_argument("--replace", action="store_true", help="replace a different peer that has the invite's name")
    join.set_defaults(func=_cmd_join)

    add_peer = sub.add_parser("add-peer", help="allow a node (by its id) as a peer: rewrites the config, reloads")
    add_peer.add_argument("name", help="a name for the peer (letters, digits, '_', '.', '-'; used in ACL rules)")
    add_peer.add_argument("--replace", action="store_true",
                          help="replace a peer that already has this name, or rename the peer with this id")
    add_peer.add_argument("node_id", help="its node id (qe1…, `quicether pubkey` there)")
    add_peer.add_argument("--allowed-ips", default="", help="comma-separated prefixes it may use (its overlay"
                                                            " address /32 and its LAN subnet)")
    add_peer.add_argument("--endpoint", help="IP:PORT to dial it at (default: wait for it to dial)")
    add_peer.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    add_peer.set_defaults(func=_cmd_add_peer)

    upgrade = sub.add_parser("upgrade", help="write a new system image into the idle A/B slot (keeps the config)")
    upgrade.add_argument("image", nargs="?", help="quicether-x86_64.img or root.img, as a file or a device")
    upgrade.add_argument("--confirm", action="store_true",
                         help="mark the running slot as good (run at boot by quicether-slot.service)")
    upgrade.set_defaults(func=_cmd_upgrade)

    code = sub.add_parser("setup-code", help="print the one-time code the web UI asks for with the first admin"
                                             " password (made if missing)")
    code.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    code.add_argument("--state-dir", help="where the code is kept (default: the config's node.state_dir)")
    code.add_argument("--copy-to", action="append", metavar="FILE",
                      help="also write it to FILE (repeatable; removed when the password is set)")
    code.set_defaults(func=_cmd_setup_code)

    gateway = sub.add_parser("gateway", help="set up this host as the sites' gateway (gateway init)")
    gateway_sub = gateway.add_subparsers(dest="gateway_command", metavar="COMMAND", required=True)
    init = gateway_sub.add_parser(
        "init", help="make this host a gateway: key, config, forwarding, unit, invite code (safe to run again)",
        description="Creates the node key, writes a gateway config (role gateway, exit through the internet"
                    " port, overlay address), enables IPv4 forwarding persistently, enables and starts"
                    " quicether.service, checks the QUIC port answers, and prints an invite code with a QR"
                    " code: a single-use network invite the gateway admits a router with by itself. Run"
                    " again, it says what exists, changes nothing unless --force, and prints a new invite.")
    init.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="config file (default %(default)s)")
    init.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                      help="node key and state (default %(default)s)")
    init.add_argument("--public-ip", metavar="ADDRESS",
                      help="the address sites reach this host at (default: the internet port's address; give it"
                           " behind a provider's 1:1 NAT)")
    init.add_argument("--port", type=int, metavar="PORT", help="UDP port for QUIC (default 4433)")
    init.add_argument("--internet", metavar="DEVICE", help="the port facing the internet (default: the default"
                                                           " route's)")
    init.add_argument("--network", default="home", metavar="NAME",
                      help="the mesh network this gateway is the admin of, made if missing: its invite admits a"
                           " router by itself (default %(default)s)")
    init.add_argument("--no-network", dest="network", action="store_const", const=None,
                      help="no network: a peer invite, and each router admitted here with `quicether add-peer`")
    init.add_argument("--address", default="10.99.0.1/24",
                      help="with --no-network: this gateway's overlay address; its network is the sites'"
                           " (default %(default)s)")
    init.add_argument("--name", default="gateway", help="name the sites give this gateway (default %(default)s)")
    init.add_argument("--no-start", dest="start", action="store_false",
                      help="do not enable or start quicether.service")
    init.add_argument("--force", action="store_true",
                      help="rewrite an existing config (its peers, ACLs, port forwards and open ports are kept)")
    init.add_argument("--close-ssh", dest="keep_ssh", action="store_false",
                      help="do not keep the SSH server's port open on the internet port (default: it goes into"
                           " [firewall] open)")
    init.set_defaults(func=_cmd_gateway_init)

    _add_network_parser(sub)
    return parser


def _add_network_parser(sub: Any) -> None:
    from quicether import network

    net = sub.add_parser("network", help="networks this node is admin of: create, members, issue, revoke",
                         description="A network is a mesh's trust root: its key signs each member's certificate"
                                     " (name, overlay address, groups, LAN prefixes, exit offer, expiry) and each"
                                     " revocation. The key and the ledger stay in <state-dir>/networks/NAME.")
    net_sub = net.add_subparsers(dest="network_command", metavar="COMMAND", required=True)
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                       help="node key and networks (default %(default)s)")
    create = net_sub.add_parser("create", parents=[state], help="make a network key; this node is its first member")
    create.add_argument("name", help="network name (1-32 of a-z 0-9 -)")
    create.add_argument("--overlay", default=network.DEFAULT_OVERLAY,
                        help="members' IPv4 addresses: a /10 to /16 of 100.64.0.0/10 (default %(default)s)")
    create.add_argument("--member-name", default="admin", help="this node's name in it (default %(default)s)")
    create.add_argument("--days", type=int, default=network.DEFAULT_VALIDITY_DAYS,
                        help="certificate validity (default %(default)s)")
    net_sub.add_parser("list", parents=[state], help="the networks this node holds the key of")
    members = net_sub.add_parser("members", parents=[state], help="every member certified, and who was revoked")
    members.add_argument("name", help="network name")
    members.add_argument("--json", action="store_true", help="print them as JSON")
    issue = net_sub.add_parser("issue", parents=[state],
                               help="certify a node (again: renews it, same address); prints the certificate")
    issue.add_argument("name", help="network name")
    issue.add_argument("node_id", help="the member's node id (qe1…, from its `quicether pubkey`)")
    issue.add_argument("--name", dest="member_name", required=True, help="its name in the network")
    issue.add_argument("--group", action="append", default=[], help="a group it is in (repeatable, up to 8)")
    issue.add_argument("--lan-prefix", action="append", default=[], metavar="CIDR",
                       help="a LAN prefix it may route (repeatable, up to 16)")
    issue.add_argument("--exit", action="store_true", help="it offers its internet access as an exit")
    issue.add_argument("--days", type=int, default=network.DEFAULT_VALIDITY_DAYS,
                       help="validity (default %(default)s)")
    revoke = net_sub.add_parser("revoke", parents=[state],
                                help="revoke a member (by name or node id); prints the signed revocation, which"
                                     " the daemon running here enforces and tells every member at once")
    revoke.add_argument("name", help="network name")
    revoke.add_argument("member", help="member name or node id")
    net.set_defaults(func=_cmd_network)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
