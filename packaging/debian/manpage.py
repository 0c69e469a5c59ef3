"""Writes quicether(1) in roff from the command line's own parser, so the man page lists every command and
option `--help` does, with the same words:

    python3 packaging/debian/manpage.py VERSION > quicether.1
"""

from __future__ import annotations

import argparse
import datetime
import sys

from quicether.__main__ import build_parser

FILES = [
    ("/etc/quicether/quicether.toml", "the config (a conffile: kept on upgrade, removed by a purge); every "
                                      "setting is described in the source's quicether/config.py and "
                                      "quicether/router_config.py"),
    ("/var/lib/quicether/node.key", "this node's private key (mode 600); its public half is the node id"),
    ("/var/lib/quicether/gateway-endpoint", "the public address and port the invite of `gateway init` carries"),
    ("/var/lib/quicether/api.sock", "the running daemon's local API (`quicether status`, reloads)"),
    ("/etc/sysctl.d/60-quicether.conf", "IPv4 forwarding, written by `gateway init`"),
]


def roff(text: str) -> str:
    """Text as roff: backslashes and minus signs escaped, no line starting with a control character."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in out.split("\n"))


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return []


def _command(prefix: str, name: str, summary: str, parser: argparse.ArgumentParser) -> list[str]:
    subs = _subcommands(parser)
    lines = []
    if not subs or parser.description:
        lines += [f'.SS "{roff(prefix + " " + name)}"', roff(parser.description or summary)]
        usage = parser.format_usage().removeprefix("usage: ").strip()
        lines += [".PP", roff(" ".join(usage.split()))]
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            if action.option_strings:
                metavar = "" if action.nargs == 0 else " " + (action.metavar or action.dest.upper())
                label = ", ".join(f"\\fB{roff(o)}\\fR{roff(str(metavar))}" for o in action.option_strings)
            else:
                label = f"\\fI{roff(str(action.metavar or action.dest))}\\fR"
            help_text = formatter._expand_help(action) if action.help else ""
            lines += [".TP", label, roff(help_text)]
    for sub_name, sub_summary, sub in subs:
        lines += _command(f"{prefix} {name}", sub_name, sub_summary, sub)
    return lines


def manpage(version: str) -> str:
    parser = build_parser()
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    lines = [f'.TH QUICETHER 1 "{date}" "quicether {roff(version)}" "User Commands"',
             ".SH NAME", "quicether \\- " + roff(parser.description or "").removeprefix("QuicEther: "),
             ".SH SYNOPSIS", ".B quicether", ".I COMMAND", "[\\fIoptions\\fR]",
             ".SH DESCRIPTION",
             roff("QuicEther bonds every WAN port of a router through multipath QUIC into one link to the user's "
                  "own gateway. On a VPS, `quicether gateway init` (as root) makes this host that gateway and "
                  "prints the invite code a router's setup wizard asks for. The daemon runs as "
                  "quicether.service (`quicether up`). Every command has --help."),
             ".SH COMMANDS"]
    for name, summary, sub in _subcommands(parser):
        lines += _command("quicether", name, summary, sub)
    lines.append(".SH FILES")
    for path, text in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(text)]
    lines += [".SH SEE ALSO", roff("systemctl(1), nft(8), ip(8), /usr/share/doc/quicether/README.md.gz")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(manpage(sys.argv[1]))
