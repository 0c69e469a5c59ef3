"""Network namespaces, veth pairs and the processes started in them, with guaranteed cleanup.

Every object a lab creates carries the lab's tag in its name (`qe1a2b3c-router`), so labs run in parallel
without clashing, and a lab whose owner died (SIGKILL, crash) is swept by the next lab that starts: each lab
registers its owner's pid under RUN_DIR, and a registry entry whose pid is gone marks a stale lab.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

RUN_DIR = Path("/run/quicether-lab")
# `ip netns exec NS` mounts each file of /etc/netns/NS over its namesake in /etc: every namespace gets a
# hosts file of its own (a copy of the host's), which the nodes in it write their members' names to.
NETNS_ETC = Path("/etc/netns")
# Commands in a namespace that take longer than this are hung, not slow (ip/tc/nft answer in milliseconds).
COMMAND_TIMEOUT_S = 30.0


class LabError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def run(args: Sequence[str], *, check: bool = True, timeout: float = COMMAND_TIMEOUT_S,
        input: str | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _list_namespaces() -> list[str]:
    out = run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _kill_namespace_processes(ns: str) -> None:
    pids = run(["ip", "netns", "pids", ns], check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def destroy_tagged(tag: str) -> None:
    """Removes every namespace (and so every veth, bridge and TUN in it) and process of lab `tag`."""
    for ns in _list_namespaces():
        if ns.startswith(f"{tag}-"):
            _kill_namespace_processes(ns)
            run(["ip", "netns", "del", ns], check=False)
    if NETNS_ETC.is_dir():
        for etc in NETNS_ETC.glob(f"{tag}-*"):
            shutil.rmtree(etc, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (RUN_DIR / tag).unlink()


def sweep_stale_labs() -> list[str]:
    """Destroys labs whose owner process is gone; returns their tags."""
    swept = []
    if RUN_DIR.is_dir():
        for entry in RUN_DIR.iterdir():
            try:
                owner = int(entry.read_text().strip() or "0")
            except (OSError, ValueError):
                owner = 0
            if not owner or not _pid_alive(owner):
                destroy_tagged(entry.name)
                swept.append(entry.name)
    return swept


class Namespace:
    """One network namespace of a lab: a host, a router, an ISP."""

    def __init__(self, lab: Lab, name: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = f"{lab.tag}-{name}"

    def __repr__(self) -> str:
        return f"Namespace({self.netns})"

    @property
    def hosts_file(self) -> Path:
        """This namespace's /etc/hosts (as its processes see it), from outside."""
        return NETNS_ETC / self.netns / "hosts"

    def argv(self, args: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *args]

    def run(self, *args: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        return run(self.argv(args), check=check, timeout=timeout, input=input)

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(["ip", "-n", self.netns, *args], check=check)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def popen(self, args: Sequence[str], **kwargs: object) -> subprocess.Popen[str]:
        """Starts a process in this namespace; the lab kills it on close."""
        proc: subprocess.Popen[str] = subprocess.Popen(self.argv(args), text=True, **kwargs)  # type: ignore[call-overload]
        self.lab.processes.append(proc)
        return proc


class Lab:
    """A set of namespaces with one life time: use as a context manager; everything goes on exit."""

    def __init__(self, prefix: str = "qe") -> None:
        self.tag = f"{prefix}{secrets.token_hex(3)}"
        self.namespaces: dict[str, Namespace] = {}
        self.processes: list[subprocess.Popen[str]] = []
        self._closed = False
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Lab:
        sweep_stale_labs()
        RUN_DIR.mkdir(parents=True, exist_ok=True)
        (RUN_DIR / self.tag).write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def add_namespace(self, name: str, *, forwarding: bool = False) -> Namespace:
        if name in self.namespaces:
            raise LabError(f"namespace {name!r} already exists in lab {self.tag}")
        ns = Namespace(self, name)
        run(["ip", "netns", "add", ns.netns])
        self.namespaces[name] = ns
        etc = NETNS_ETC / ns.netns
        etc.mkdir(parents=True, exist_ok=True)
        shutil.copyfile("/etc/hosts", etc / "hosts")
        ns.ip("link", "set", "dev", "lo", "up")
        # Labs route asymmetrically on purpose (one WAN out, another back): strict reverse-path
        # filtering would drop that, and new namespaces don't all start with the same defaults.
        for scope in ("all", "default"):
            ns.sysctl(f"net.ipv4.conf.{scope}.rp_filter", "0")
        ns.sysctl("net.ipv4.ip_forward", "1" if forwarding else "0")
        return ns

    def __getitem__(self, name: str) -> Namespace:
        return self.namespaces[name]

    def veth(self, a: Namespace, a_if: str, b: Namespace, b_if: str) -> None:
        """Connects `a` and `b` with a veth pair named `a_if` in a and `b_if` in b, both up."""
        run(["ip", "link", "add", a_if, "netns", a.netns, "type", "veth", "peer", "name", b_if,
             "netns", b.netns])
        a.ip("link", "set", "dev", a_if, "up")
        b.ip("link", "set", "dev", b_if, "up")

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Runs `cleanup` when the lab closes, after its processes are gone."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
        deadline = time.monotonic() + 5
        for proc in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        destroy_tagged(self.tag)
        for cleanup in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                cleanup()
