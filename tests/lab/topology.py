"""The WAN lab: LAN host → router with N WAN ports → one ISP per WAN → the internet, where gateways live.

    lan ── router ─wan0─ isp0 ── wire0 ─┐
                  └wan1─ isp1 ── wire1 ─┴ inet ── br0 ── gateway, server, …

- `isp<i>` is the ISP's (or home) router: it applies the NAT type of the link.
- `wire<i>` is the link itself: rate (tbf, each direction), loss (nft numgen, each direction) and delay/jitter
  (a userspace delay line on a TUN device, since the kernel has no netem). All can change at run time.
- `inet` routes between the wires and a bridge where internet hosts sit (198.18.0.0/24, the benchmark range).

Delay is the round-trip time the link adds: half of it is applied in each direction. Loss is per direction.
"""

from __future__ import annotations

import enum
import json
import subprocess
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from tests.lab.netns import Lab, LabError, Namespace

REPO_ROOT = Path(__file__).resolve().parents[2]
INTERNET_PREFIX = "198.18.0"
LAN_PREFIX = "10.0.50"
# Per-WAN routing tables in the router start here (table 100 + i for WAN i).
WAN_TABLE_BASE = 100
# Table in a wire namespace that sends every forwarded packet into the delay line.
DELAY_TABLE = 50
DELAY_TUN = "dl"
# The lab's sequential symmetric NAT hands out outer UDP ports from this range, in order.
SEQUENTIAL_FIRST_PORT = 20000
SEQUENTIAL_PORTS = 4096
# tbf queue: enough for a TCP flow to keep the link busy across the delay line, small enough to not bloat.
TBF_LATENCY_MS = 40


class NatType(enum.Enum):
    NONE = "none"
    FULL_CONE = "full-cone"            # endpoint-independent mapping and filtering
    PORT_RESTRICTED = "port-restricted"  # endpoint-independent mapping, address+port-dependent filtering
    SYMMETRIC = "symmetric"            # a new random outer port per destination (masquerade random)
    # A new outer port per destination, handed out in sequence (numgen inc): one more for each new flow
    # through the NAT, other destinations' flows (the DHT's) taking theirs in between.
    SYMMETRIC_SEQUENTIAL = "symmetric-sequential"


@dataclass(frozen=True)
class LinkSpec:
    rate_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    nat: NatType = NatType.NONE
    up: bool = True


@dataclass
class Wan:
    index: int
    spec: LinkSpec
    router_if: str
    router_addr: str
    isp_addr: str          # the router's next hop
    public_addr: str       # the address the internet sees when the ISP NATs
    isp: Namespace
    wire: Namespace
    delay_line: subprocess.Popen[str] | None = None

    @property
    def table(self) -> int:
        return WAN_TABLE_BASE + self.index


@dataclass
class WanLab:
    lab: Lab
    router: Namespace
    inet: Namespace
    lan: Namespace | None
    wans: list[Wan] = field(default_factory=list)
    hosts: dict[str, tuple[Namespace, str]] = field(default_factory=dict)

    def host(self, name: str) -> Namespace:
        return self.hosts[name][0]

    def addr(self, name: str) -> str:
        return self.hosts[name][1]

    def add_internet_host(self, name: str) -> Namespace:
        """A host on the internet bridge with the next free 198.18.0.x address."""
        addr = f"{INTERNET_PREFIX}.{len(self.hosts) + 2}"
        ns = self.lab.add_namespace(name)
        self.lab.veth(ns, "eth0", self.inet, f"h-{name}"[:15])
        self.inet.ip("link", "set", f"h-{name}"[:15], "master", "br0")
        ns.ip("addr", "add", f"{addr}/24", "dev", "eth0")
        ns.ip("route", "add", "default", "via", f"{INTERNET_PREFIX}.1")
        self.hosts[name] = (ns, addr)
        return ns

    def set_link(self, index: int, **changes: object) -> None:
        """Changes link `index` at run time: any of rate_mbit, delay_ms, jitter_ms, loss_pct, up."""
        wan = self.wans[index]
        unknown = set(changes) - {"rate_mbit", "delay_ms", "jitter_ms", "loss_pct", "up"}
        if unknown:
            raise LabError(f"cannot change {sorted(unknown)} at run time")
        new = replace(wan.spec, **changes)  # type: ignore[arg-type]
        if new.rate_mbit != wan.spec.rate_mbit:
            _apply_rate(wan.wire, new.rate_mbit)
        if new.loss_pct != wan.spec.loss_pct:
            _apply_loss(wan.wire, new.loss_pct)
        if (new.delay_ms, new.jitter_ms) != (wan.spec.delay_ms, wan.spec.jitter_ms):
            _apply_delay(wan, new.delay_ms, new.jitter_ms)
        if new.up != wan.spec.up:
            # The cut is upstream of the ISP: the router keeps its carrier, as when an ISP fails.
            wan.wire.ip("link", "set", "dev", "isp", "up" if new.up else "down")
            if new.up:  # taking the device down flushed the route through it
                wan.wire.ip("route", "replace", f"10.{10 + index}.0.0/24", "via", wan.public_addr)
        wan.spec = new

    def unplug(self, index: int, plugged: bool = False) -> None:
        """Takes the router's WAN port carrier down (cable pulled) or back up."""
        self.wans[index].isp.ip("link", "set", "dev", "rtr", "up" if plugged else "down")


def _apply_rate(wire: Namespace, rate_mbit: float | None) -> None:
    for dev in ("isp", "inet"):
        if rate_mbit is None:
            wire.run("tc", "qdisc", "del", "dev", dev, "root", check=False)
            continue
        rate_bps = rate_mbit * 1e6
        # Burst: at least two full frames, else ~4 ms of traffic so a timer tick never starves the link.
        burst = max(2 * 1514, int(rate_bps / 8 * 0.004))
        wire.run("tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate", f"{int(rate_bps)}bit",
                 "burst", str(burst), "latency", f"{TBF_LATENCY_MS}ms")


def _apply_loss(wire: Namespace, loss_pct: float) -> None:
    # Basis points so 0.5 % is expressible; packets coming back out of the delay line are not counted twice.
    threshold = round(loss_pct * 100)
    ruleset = (
        "table inet lablink\ndelete table inet lablink\n"
        "table inet lablink {\n chain forward {\n  type filter hook forward priority 0; policy accept;\n"
        + (f'  iifname != "{DELAY_TUN}" numgen random mod 10000 < {threshold} drop\n' if threshold else "")
        + " }\n}\n"
    )
    wire.run("nft", "-f", "-", input=ruleset)


def _apply_delay(wan: Wan, delay_ms: float, jitter_ms: float) -> None:
    one_way_us = int(delay_ms * 1000 / 2)
    jitter_us = int(jitter_ms * 1000 / 2)
    wire = wan.wire
    if wan.delay_line is None:
        if one_way_us == 0 and jitter_us == 0:
            return
        wire.run("ip", "tuntap", "add", "dev", DELAY_TUN, "mode", "tun")
        wire.ip("link", "set", DELAY_TUN, "up")
        wire.sysctl(f"net.ipv4.conf.{DELAY_TUN}.rp_filter", "0")
        # Above the processes under test (nice -10): a link does not share a CPU with what it carries, and
        # a delay line starved on a loaded machine holds every packet of its WAN at once, which the nodes
        # rightly take for a dead path (two clean-clone runs saw two WANs' paths declared silent together).
        proc = wire.popen(["nice", "-n", "-10", sys.executable, "-m", "tests.lab.delayline", "--tun", DELAY_TUN,
                           "--delay-us", str(one_way_us), "--jitter-us", str(jitter_us)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=REPO_ROOT)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise LabError(f"delay line in {wire.netns} did not start (exit {proc.poll()})")
        wan.delay_line = proc
        wire.ip("route", "add", "default", "dev", DELAY_TUN, "table", str(DELAY_TABLE))
        for dev in ("isp", "inet"):
            wire.ip("rule", "add", "iif", dev, "lookup", str(DELAY_TABLE), "pref", "100")
        return
    assert wan.delay_line.stdin is not None and wan.delay_line.stdout is not None
    wan.delay_line.stdin.write(f"set {one_way_us} {jitter_us}\n")
    wan.delay_line.stdin.flush()
    if wan.delay_line.stdout.readline().strip() != "ok":
        raise LabError(f"delay line in {wire.netns} refused new settings")


def delay_line_stats(wan: Wan) -> dict[str, int]:
    if wan.delay_line is None or wan.delay_line.stdin is None or wan.delay_line.stdout is None:
        return {}
    wan.delay_line.stdin.write("stats\n")
    wan.delay_line.stdin.flush()
    stats: dict[str, int] = json.loads(wan.delay_line.stdout.readline())
    return stats


def _apply_nat(wan: Wan) -> None:
    apply_nat(wan.isp, wan.spec.nat, inside_host=wan.router_addr, outside_if="wire")


def _sequential_ports() -> str:
    return ", ".join(f"{i} : {SEQUENTIAL_FIRST_PORT + i}" for i in range(SEQUENTIAL_PORTS))


def apply_nat(ns: Namespace, nat: NatType, *, inside_host: str, outside_if: str) -> None:
    """Makes `ns` (a router with one inside host, `inside_host`) a NAT of type `nat` on `outside_if`,
    replacing the NAT this function made there before (at run time too: one nft transaction, and the
    kernel's conntrack entries stay, so flows under way keep the mappings they have, as on a home router
    whose NAT settings are changed)."""
    replace = "table ip labnat\ndelete table ip labnat\n"
    if nat is NatType.NONE:
        ns.run("nft", "-f", "-", input=replace)
        return
    masquerade = {
        NatType.SYMMETRIC: "masquerade random",
        # Only a new conntrack entry (a new destination) runs the NAT rule, so each gets the next number.
        # Through a map: numgen's plain number would be read as a port in network byte order (steps of 256).
        NatType.SYMMETRIC_SEQUENTIAL: "meta l4proto udp masquerade to :numgen inc mod"
                                      f" {SEQUENTIAL_PORTS} map {{ {_sequential_ports()} }}"
                                      f'\n  oifname "{outside_if}" masquerade',
    }.get(nat, "masquerade")
    inbound = ""
    if nat is NatType.FULL_CONE:
        # One inner host per ISP link: forwarding every unsolicited UDP port to it is endpoint-independent
        # filtering, and masquerade keeps the inner port, so mapping is endpoint-independent too.
        inbound = (" chain prerouting {\n  type nat hook prerouting priority dstnat;\n"
                   f'  iifname "{outside_if}" udp dport 1024-65535 dnat ip to {inside_host}\n }}\n')
    # Like a home router's firewall, unsolicited UDP to the router itself is dropped, and so leaves no
    # conntrack state behind. (Without this rule the kernel keeps an entry for it, answers port
    # unreachable, and a later outbound packet of the inside host to that sender gets another outside
    # port: a peer's early punch packet would move the very mapping the punch is opening.)
    ruleset = replace + (
        "table ip labnat {\n"
        f" chain postrouting {{\n  type nat hook postrouting priority srcnat;\n"
        f'  oifname "{outside_if}" {masquerade}\n }}\n'
        f" chain input {{\n  type filter hook input priority filter;\n"
        f'  iifname "{outside_if}" meta l4proto udp ct state new drop\n }}\n'
        f"{inbound}}}\n"
    )
    ns.run("nft", "-f", "-", input=ruleset)


def build_wan_lab(lab: Lab, links: list[LinkSpec], *, lan: bool = True, lan_static: bool = True,
                  internet_hosts: tuple[str, ...] = ("server",), policy_routing: bool = True) -> WanLab:
    """Builds the topology in `lab` with one WAN per entry of `links`. With `policy_routing`, the router
    gets a routing table and source rule per WAN; without, that is left to QuicEther (only WAN 0 has a
    default route in the main table). Without `lan_static`, neither the LAN host nor the router's LAN port
    gets an address (the router's DHCP server is under test)."""
    router = lab.add_namespace("router", forwarding=True)
    inet = lab.add_namespace("inet", forwarding=True)
    inet.ip("link", "add", "br0", "type", "bridge")
    inet.ip("link", "set", "br0", "up")
    inet.ip("addr", "add", f"{INTERNET_PREFIX}.1/24", "dev", "br0")
    lan_ns = None
    if lan:
        lan_ns = lab.add_namespace("lan")
        lab.veth(lan_ns, "eth0", router, "lan")
        if lan_static:
            router.ip("addr", "add", f"{LAN_PREFIX}.1/24", "dev", "lan")
            lan_ns.ip("addr", "add", f"{LAN_PREFIX}.10/24", "dev", "eth0")
            lan_ns.ip("route", "add", "default", "via", f"{LAN_PREFIX}.1")
    wl = WanLab(lab=lab, router=router, inet=inet, lan=lan_ns)
    if lan_ns is not None:
        wl.hosts["lan"] = (lan_ns, f"{LAN_PREFIX}.10")
    for i, spec in enumerate(links):
        wl.wans.append(_build_wan(lab, router, inet, i, spec, policy_routing))
    for name in internet_hosts:
        wl.add_internet_host(name)
    return wl


def _build_wan(lab: Lab, router: Namespace, inet: Namespace, i: int, spec: LinkSpec, policy_routing: bool) -> Wan:
    isp = lab.add_namespace(f"isp{i}", forwarding=True)
    wire = lab.add_namespace(f"wire{i}", forwarding=True)
    wan = Wan(index=i, spec=LinkSpec(nat=spec.nat), router_if=f"wan{i}", router_addr=f"10.{10 + i}.0.2",
              isp_addr=f"10.{10 + i}.0.1", public_addr=f"10.{40 + i}.0.1", isp=isp, wire=wire)
    lab.veth(router, wan.router_if, isp, "rtr")
    router.ip("addr", "add", f"{wan.router_addr}/24", "dev", wan.router_if)
    isp.ip("addr", "add", f"{wan.isp_addr}/24", "dev", "rtr")
    lab.veth(isp, "wire", wire, "isp")
    isp.ip("addr", "add", f"{wan.public_addr}/24", "dev", "wire")
    wire.ip("addr", "add", f"10.{40 + i}.0.2/24", "dev", "isp")
    lab.veth(wire, "inet", inet, f"wire{i}")
    wire.ip("addr", "add", f"10.{70 + i}.0.1/24", "dev", "inet")
    inet.ip("addr", "add", f"10.{70 + i}.0.2/24", "dev", f"wire{i}")
    # Routes: the ISP sends everything up the wire; the wire and the internet know both the ISP's public
    # side and (for links without NAT) the router's WAN subnet.
    isp.ip("route", "add", "default", "via", f"10.{40 + i}.0.2")
    wire.ip("route", "add", "default", "via", f"10.{70 + i}.0.2")
    wire.ip("route", "add", f"10.{10 + i}.0.0/24", "via", wan.public_addr)
    inet.ip("route", "add", f"10.{10 + i}.0.0/24", "via", f"10.{70 + i}.0.1")
    inet.ip("route", "add", f"10.{40 + i}.0.0/24", "via", f"10.{70 + i}.0.1")
    # Router: each WAN address leaves by its own ISP; unbound traffic uses WAN 0.
    if policy_routing:
        router.ip("route", "add", "default", "via", wan.isp_addr, "table", str(wan.table))
        router.ip("rule", "add", "from", wan.router_addr, "lookup", str(wan.table), "pref", str(1000 + i))
    if i == 0:
        router.ip("route", "add", "default", "via", wan.isp_addr)
    _apply_nat(wan)
    if spec.rate_mbit is not None:
        _apply_rate(wire, spec.rate_mbit)
    if spec.loss_pct:
        _apply_loss(wire, spec.loss_pct)
    _apply_delay(wan, spec.delay_ms, spec.jitter_ms)
    wan.spec = replace(spec, up=True)
    if not spec.up:
        wan.wire.ip("link", "set", "dev", "isp", "down")
        wan.spec = spec
    return wan
