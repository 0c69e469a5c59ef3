"""Serves the web UI with waitress (not Flask's development server).

    python -m webui --config /etc/quicether/quicether.toml --state-dir /var/lib/quicether --bind 192.168.50.1:80 \
        --host-name router.lan

It answers requests for the --bind address and each --host-name only (any other Host: 400). The daemon
binds the socket itself (port 80 needs root) and runs this as the unprivileged user quicether-web with
`--listen-fd N`: the listening socket it passes; without it, this binds --bind itself.
"""

from __future__ import annotations

import argparse
import logging
import socket
from pathlib import Path

import waitress

from webui import create_app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m webui", description="QuicEther's web UI (waitress).")
    parser.add_argument("--config", required=True, help="the node's config file (written by the wizard)")
    parser.add_argument("--state-dir", required=True, help="where the key, API socket and UI secrets are")
    parser.add_argument("--bind", required=True, metavar="HOST:PORT", help="the LAN address and port to serve on")
    parser.add_argument("--host-name", action="append", default=[], metavar="NAME",
                        help="another name this UI is reached by (repeatable; e.g. router.lan)")
    parser.add_argument("--listen-fd", type=int, metavar="FD",
                        help="an inherited listening socket to serve on (the daemon binds --bind for us)")
    args = parser.parse_args()
    host, _, port = args.bind.rpartition(":")
    logging.basicConfig(level=logging.WARNING, format="quicether-webui: %(levelname)s %(message)s")
    app = create_app(Path(args.config), Path(args.state_dir), hosts=[host, *args.host_name])
    # A few threads: the dashboard polls once a second per open tab; an appliance has few admins.
    if args.listen_fd is not None:
        waitress.serve(app, sockets=[socket.socket(fileno=args.listen_fd)], threads=4, ident="quicether")
    else:
        waitress.serve(app, host=host.strip("[]"), port=int(port), threads=4, ident="quicether")


if __name__ == "__main__":
    main()
