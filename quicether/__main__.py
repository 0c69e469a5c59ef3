"""The `quicether` command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from quicether import __version__
from quicether.config import DEFAULT_STATE_DIR, ConfigError, load
from quicether.daemon import api
from quicether.identity import KEY_FILE_NAME, IdentityError
from quicether.identity import generate as generate_identity
from quicether.identity import load as load_identity

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


def _cmd_up(args: argparse.Namespace) -> int:
    from quicether.daemon.service import Daemon
    from quicether.net.links import LinkError
    from quicether.net.nft import FirewallError

    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="quicether: %(levelname)s %(message)s")
    try:
        config = load(Path(args.config))
        identity = load_identity(config.key_path)
        asyncio.run(Daemon(config, identity).run())
    except (ConfigError, IdentityError, LinkError, FirewallError) as exc:
        return _fail(str(exc))
    except OSError as exc:  # from the core (its message names the address or device) or the API socket
        return _fail(exc.strerror or str(exc))
    return 0


def _format_age(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return f"{max(0.0, time.time() - timestamp):.0f}s ago"


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
    node = answer["node"]
    print(f"node {node['node_id']}")
    print(f"  listen {node['listen']}  tun {node['tun']}  mtu {node['mtu']}  address {node['address'] or '-'}")
    router = answer.get("router")
    if router and router["lan"]:
        lan = router["lan"]
        exit_text = (f"exit via {lan['exit_peer']} ({'active' if lan['exit_active'] else 'down, using WANs'})"
                     if lan["exit_peer"] else "no exit peer (internet via WANs)")
        print(f"  lan {lan['device']} {lan['address']}  {'dhcp ' if lan['dhcp'] else ''}{'dns ' if lan['dns'] else ''}"
              f"{len(lan['leases'])} lease(s)  {exit_text}{'  kill switch' if lan['kill_switch'] else ''}")
    if router:
        print(f"  role {router['role']}  outside ports {' '.join(router['outside']) or '-'}")
    for p in answer["peers"]:
        rtt = f"{p['rtt_ms']:.2f} ms" if p["rtt_ms"] is not None else "-"
        print(f"peer {p['name'] or '-'} {p['node_id']}")
        print(f"  {'connected' if p['connected'] else 'not connected'}  endpoint {p['endpoint'] or '-'}  rtt {rtt}"
              f"  last handshake {_format_age(p['last_handshake'])}")
        print(f"  rx {p['rx_bytes']} B / {p['rx_packets']} pkts  tx {p['tx_bytes']} B / {p['tx_packets']} pkts"
              f"  dropped rx {p['rx_dropped']} tx {p['tx_dropped']}")
        r = p["reorder"]
        print(f"  reorder: timeout {r['timeout_ms']:.0f} ms, reordered {r['reordered']}, late {r['late']},"
              f" duplicates {r['duplicates']}, repaired {r['repaired']}, skipped {r['skipped']};"
              f" retransmitted for the peer {p['retransmitted']}")
        if p["paths"]:
            print(f"  {'wan':<10}{'state':<9}{'local':<17}{'remote':<22}{'rtt':>9}{'loss':>7}{'tx rate':>13}"
                  f"{'rx rate':>13}{'share':>7}")
        for path in p["paths"]:
            state = ("up" if path["up"] else "down") + (" (b)" if path["backup"] else "")
            print(f"  {path['wan']:<10}{state:<9}{path['local'] or '-':<17}{path['remote']:<22}"
                  f"{path['rtt_ms']:>6.1f} ms{path['loss'] * 100:>6.1f}%{path['tx_rate_bps'] / 1e6:>8.1f} Mb/s"
                  f"{path['rx_rate_bps'] / 1e6:>8.1f} Mb/s{path['share'] * 100:>6.0f}%")
    return 0


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
    status.set_defaults(func=_cmd_status)
    return parser


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
