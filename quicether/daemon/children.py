"""Processes the daemon runs beside itself (dnsmasq, the web UI): tied to its life, stopped politely."""

from __future__ import annotations

import asyncio
import ctypes
import signal
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
# Time a child gets to exit after SIGTERM before it is killed.
STOP_GRACE_S = 5.0


def die_with_parent(sig: signal.Signals) -> Callable[[], None]:
    """A preexec function: the child gets `sig` when the daemon dies, even by SIGKILL. The kernel clears
    this when the child changes its user (dnsmasq does), so such children need another safety net."""

    def arm() -> None:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return arm


async def terminate(proc: asyncio.subprocess.Process | None) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_GRACE_S; nothing if it already exited."""
    if proc is None or proc.returncode is not None:
        return
    proc.terminate()
    try:
        await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
