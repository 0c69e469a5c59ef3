"""DHCP and DNS for LAN clients: the daemon runs dnsmasq on the LAN port only, from arguments it builds
(no config file outside the state directory), and stops it with itself.

dnsmasq is asked to die with the daemon (PR_SET_PDEATHSIG), but dropping to its own user clears that, so a
dnsmasq left by a crash keeps serving the LAN until the daemon is restarted (by its service manager), which
finds it by its pid file and kills it before starting its own. Leases live in the state directory, so they
survive restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from quicether.daemon import names
from quicether.daemon.children import die_with_parent, terminate
from quicether.router_config import LanConfig

log = logging.getLogger("quicether")
LEASE_TIME = "12h"
# dnsmasq fails within this time when it cannot start (port 53/67 taken, bad interface).
STARTUP_CHECK_S = 0.3
LOCAL_DOMAIN = "lan"


def build_args(lan: LanConfig, state_dir: Path, binary: str = "dnsmasq", names_dir: Path | None = None) -> list[str]:
    """dnsmasq's arguments; `names_dir`: the directory of the mesh members' names (a node in a network)."""
    net = ipaddress.IPv4Interface(lan.address).network
    args = [binary, "--keep-in-foreground", "--conf-file=/dev/null", "--log-facility=-",
            f"--pid-file={state_dir / 'dnsmasq.pid'}", f"--interface={lan.device}", "--bind-interfaces",
            "--except-interface=lo", f"--domain={LOCAL_DOMAIN}", f"--local=/{LOCAL_DOMAIN}/",
            f"--host-record=router.{LOCAL_DOMAIN},{lan.ip}"]
    if lan.dns:
        if names_dir is not None:
            # The mesh members' names (quicether/daemon/names.py), answered here and never forwarded. Not
            # from /etc/hosts (it has them too, for the node itself): dnsmasq reads that only at its start,
            # and would go on answering for a member revoked since.
            args += [f"--local=/{names.DOMAIN}/", f"--hostsdir={names_dir}", "--no-hosts"]
        args += [f"--server={s}" for s in lan.dns_servers]
        if lan.dns_servers:
            args.append("--no-resolv")
    else:
        args.append("--port=0")
    if lan.dhcp:
        first, last = lan.dhcp_range
        args += [f"--dhcp-range={first},{last},{net.netmask},{LEASE_TIME}",
                 f"--dhcp-leasefile={state_dir / 'dhcp.leases'}", "--dhcp-authoritative",
                 f"--dhcp-option=option:router,{lan.ip}"]
        args.append(f"--dhcp-option=option:dns-server,{lan.ip}" if lan.dns else "--dhcp-option=option:dns-server")
    return args


def leases(state_dir: Path) -> list[dict[str, Any]]:
    """Current DHCP leases: expiry (unix time), mac, ip, hostname ("" if the client gave none)."""
    path = state_dir / "dhcp.leases"
    found = []
    with contextlib.suppress(OSError, ValueError):  # ValueError: not UTF-8
        for line in path.read_text().splitlines():
            fields = line.split()
            # A damaged line is skipped (dnsmasq writes the file anew with the next lease): the status
            # answer, and the dashboard polling it, must not fail over it.
            if len(fields) >= 4 and fields[0].isdigit():
                found.append({"expiry": int(fields[0]), "mac": fields[1], "ip": fields[2],
                              "hostname": "" if fields[3] == "*" else fields[3]})
    return found


def _running(pid: int) -> bool:
    """Whether `pid` still runs (a zombie has already closed its sockets)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


# How long a dnsmasq left by a crashed run may take to go after SIGKILL.
STALE_EXIT_WAIT_S = 3.0


class Dnsmasq:
    def __init__(self, lan: LanConfig, state_dir: Path, names_dir: Path | None = None) -> None:
        self.lan = lan
        self.state_dir = state_dir
        self.names_dir = names_dir if lan.dns else None
        self._proc: asyncio.subprocess.Process | None = None
        self._logger: asyncio.Task[None] | None = None

    def _kill_stale(self) -> None:
        pid_file = self.state_dir / "dnsmasq.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            if Path(f"/proc/{pid}/comm").read_text().strip() == "dnsmasq":
                os.kill(pid, signal.SIGKILL)
                # Its sockets are free only once it is gone (a loaded board takes a moment to reap it).
                deadline = time.monotonic() + STALE_EXIT_WAIT_S
                while _running(pid) and time.monotonic() < deadline:
                    time.sleep(0.02)
                log.info("killed dnsmasq %d left by an earlier run", pid)
        pid_file.unlink(missing_ok=True)

    async def start(self) -> None:
        await asyncio.to_thread(self._kill_stale)
        if self.names_dir is not None:
            await asyncio.to_thread(names.prepare, self.names_dir)
        args = build_args(self.lan, self.state_dir, names_dir=self.names_dir)
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, preexec_fn=die_with_parent(signal.SIGKILL))
        except FileNotFoundError:
            raise OSError("dnsmasq is not installed (needed for DHCP/DNS on the LAN; apt install dnsmasq)") from None
        assert self._proc.stderr is not None
        try:
            await asyncio.wait_for(self._proc.wait(), STARTUP_CHECK_S)
        except TimeoutError:
            self._logger = asyncio.get_running_loop().create_task(self._log_output(self._proc.stderr))
            log.info("LAN %s: %s%s on %s", self.lan.device, "DHCP " if self.lan.dhcp else "",
                     "DNS" if self.lan.dns else "", self.lan.address)
            return
        output = (await self._proc.stderr.read()).decode(errors="replace").strip()
        raise OSError(f"dnsmasq for the LAN exited {self._proc.returncode}: {output.splitlines()[-1:] or ''}")

    async def _log_output(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            log.debug("dnsmasq: %s", line.decode(errors="replace").rstrip())

    async def stop(self) -> None:
        await terminate(self._proc)
        if self._logger is not None:
            self._logger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._logger
        (self.state_dir / "dnsmasq.pid").unlink(missing_ok=True)
