"""The `quicether` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from quicether import __version__


def _cmd_version(_args: argparse.Namespace) -> int:
    try:
        from quicether._core import core_version
    except ImportError as exc:  # the package was installed without its compiled core
        print(f"quicether {__version__} (core not built: {exc})", file=sys.stderr)
        return 1
    print(f"quicether {__version__} (core {core_version()})")
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
