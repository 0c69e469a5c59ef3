"""Least privilege for the daemon: at start (as root) it keeps only the capabilities that it and the
children it starts need, and drops every other one from its bounding set too, so neither it nor anything
it runs (dnsmasq, the web UI) can get one back. Gone: loading modules, mounting, ptrace, raw I/O, the clock,
reboot, namespaces, BPF, and the rest root would otherwise hold.

Kept, and why:
    CAP_NET_ADMIN         the TUN, addresses, routes, rules, nft, tc, per-WAN socket marks, forced socket buffers
    CAP_NET_RAW           binding WAN sockets to their device; dnsmasq's DHCP
    CAP_NET_BIND_SERVICE  port 80 for the web UI; dnsmasq's 53 and 67
    CAP_SETUID, CAP_SETGID   the web UI runs as its own user, dnsmasq drops to nobody
    CAP_KILL              a dnsmasq left by a crash runs as nobody
    CAP_CHOWN, CAP_FOWNER, CAP_DAC_OVERRIDE   the web UI's own directory is handed to its user and, being
                          its (0700), entered to remove the setup code's copies once the password is set
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

KEEP = {"CAP_CHOWN": 0, "CAP_DAC_OVERRIDE": 1, "CAP_FOWNER": 3, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
        "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
PR_CAPBSET_DROP = 24
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def keep_mask() -> int:
    return sum(1 << bit for bit in KEEP.values())


def drop_to_needed() -> int:
    """Drops every capability but `KEEP` (bounding, effective, permitted; inheritable emptied). Returns the
    mask kept; OSError if the kernel refuses (then nothing is guaranteed: the caller says so)."""
    libc = ctypes.CDLL(None, use_errno=True)
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    keep = keep_mask()
    for cap in range(last + 1):
        if not keep >> cap & 1 and libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), f"dropping capability {cap}: {os.strerror(ctypes.get_errno())}")
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):
        word = keep >> (32 * i) & 0xFFFFFFFF
        data[i] = _Data(word, word, 0)
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), f"capset: {os.strerror(ctypes.get_errno())}")
    return keep


def names(mask: int) -> list[str]:
    return sorted(name for name, bit in KEEP.items() if mask >> bit & 1)


def effective_names() -> list[str]:
    """This process's effective capabilities by name, ["all"] if it holds any beyond `KEEP`."""
    effective, _ = held()
    return ["all"] if effective & ~keep_mask() else names(effective)


def held(pid: int | str = "self") -> tuple[int, int]:
    """(effective, bounding) capability masks of a process, from /proc."""
    fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":\t" in line)
    return int(fields["CapEff"], 16), int(fields["CapBnd"], 16)
