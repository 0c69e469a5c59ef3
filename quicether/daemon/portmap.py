"""Port mappings on the home routers ([nat] port_mapping, on by default): for each WAN that comes up (or
the listen socket on a node without WANs), the core asks that WAN's gateway with PCP (or NAT-PMP, or
UPnP-IGD) for a mapping of the WAN socket's UDP port, from the WAN's own address, renews it and deletes it
when the WAN goes or the daemon stops (core/io/src/portmap.rs). The mapped public address is the WAN's first
punch candidate and an endpoint of kind "mapped" in our DHT record: a peer reaches it directly even through
a symmetric NAT. This module decides which WANs ask, and says per WAN why one does not.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

from quicether import _core

log = logging.getLogger("quicether")
# The core's name for the listen socket, which dials on a node without WANs (core/io/src/node.rs).
LISTEN_SOURCE = "default"
OFF = "off ([nat] port_mapping = false)"


class PortMaps:
    def __init__(self, node: _core.Node, enabled: bool) -> None:
        self.node = node
        self.enabled = enabled
        self.unasked: dict[str, str] = {}  # WAN → why its gateway is not asked for a mapping

    def wan_up(self, wan: str, gateway: str | None) -> None:
        """WAN `wan` is dialed from now on, through `gateway` (None: none known)."""
        if not self.enabled:
            self.unasked[wan] = OFF
            return
        try:
            is_v4 = gateway is not None and ipaddress.ip_address(gateway).version == 4
        except ValueError:
            is_v4 = False
        if not is_v4:
            self.unasked[wan] = "no IPv4 gateway known (the mapping is asked of the WAN's gateway)"
            return
        assert gateway is not None
        try:
            self.node.map_port(wan, gateway)
        except (OSError, ValueError) as exc:
            self.unasked[wan] = f"cannot ask the gateway {gateway}: {exc}"
            log.warning("WAN %s: no port mapping: %s", wan, self.unasked[wan])
            return
        self.unasked.pop(wan, None)
        log.info("WAN %s: asking the gateway %s for a port mapping (PCP, NAT-PMP, UPnP-IGD)", wan, gateway)

    def wan_down(self, wan: str) -> None:
        """The WAN was removed from the core (which released its mapping)."""
        self.unasked.pop(wan, None)

    def status(self) -> dict[str, dict[str, Any]]:
        """Per WAN: protocol, gateway, internal_port, external ("ip:port" or None), expires_in_s, and
        problem (why there is no mapping, None while mapped)."""
        found: dict[str, dict[str, Any]] = {}
        for mapping in self.node.port_mappings():
            wan = str(mapping.pop("wan"))
            found[wan] = mapping
        for wan, why in self.unasked.items():
            found.setdefault(wan, {"protocol": None, "gateway": None, "internal_port": None, "external": None,
                                   "expires_in_s": None, "problem": why})
        return dict(sorted(found.items()))


def record_endpoints(node: _core.Node) -> list[dict[str, str]]:
    """The mapped public addresses, as endpoints of our DHT record (kind "mapped")."""
    return [{"wan": str(m["wan"])[:32], "kind": "mapped", "addr": str(m["external"])}
            for m in node.port_mappings() if m["external"]]


def describe(wan: str, mapping: dict[str, Any]) -> str:
    """One line of `quicether status`."""
    if mapping.get("external"):
        return (f"  wan {wan}: port mapping {mapping['external']} ({mapping['protocol']} on {mapping['gateway']},"
                f" port {mapping['internal_port']}, expires in {mapping['expires_in_s']} s)")
    return f"  wan {wan}: no port mapping: {mapping.get('problem') or 'asking the gateway'}"
