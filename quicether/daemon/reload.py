"""What a reload changes: the running config compared with the new one, field by field (pure, no I/O).

The daemon applies the result as a diff: peers are added, changed and removed in the core, WANs and
router parts (LAN address, dnsmasq, web UI, exit policy, firewall) are redone only where their settings
differ, and the TUN and every unchanged peer's paths stay up. A few settings are the node itself (its
listen socket, TUN, overlay address, MTU, role): changing one of them restarts the daemon's services,
as every reload did before.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quicether.config import Config, PeerConfig

# Settings the running node is built from: a change to one means stopping and starting again.
RESTART_FIELDS = ("listen", "tun", "address", "state_dir", "path_mtu", "congestion", "io_threads", "role",
                  "discovery", "nat")


@dataclass(frozen=True)
class ConfigDiff:
    """The changes from one config to the next, in the order the daemon applies them."""

    restart: list[str] = field(default_factory=list)             # RESTART_FIELDS that differ (and why)
    peers_added: list[PeerConfig] = field(default_factory=list)
    peers_changed: list[PeerConfig] = field(default_factory=list)  # the new settings of a known key
    peers_removed: list[PeerConfig] = field(default_factory=list)
    wans: bool = False          # [[wan]] entries or detect_wans
    lan_address: bool = False   # the LAN port or its address
    dnsmasq: bool = False       # anything dnsmasq is started with
    webui: bool = False         # where the web UI listens, or whether it runs
    exit: bool = False          # exit peer, kill switch, direct destinations
    firewall: bool = False      # anything the nft ruleset is built from
    network: bool = False       # the network's revocations, how its members are scheduled, relaying

    @property
    def changes(self) -> list[str]:
        """What changed, in words, for the log and the API answer."""
        words = [f"restart ({', '.join(self.restart)})"] if self.restart else []
        words += [f"peer {p.name} added" for p in self.peers_added]
        words += [f"peer {p.name} changed" for p in self.peers_changed]
        words += [f"peer {p.name} removed" for p in self.peers_removed]
        words += [name.replace("_", " ") for name in ("wans", "lan_address", "dnsmasq", "webui", "exit", "firewall",
                                                      "network") if getattr(self, name)]
        return words


def diff(old: Config, new: Config) -> ConfigDiff:
    restart = [name for name in RESTART_FIELDS if getattr(old, name) != getattr(new, name)]
    if (old.lan is None) != (new.lan is None):
        restart.append("lan")  # forwarding, the exit policy and the web UI come and go with it
    if bool(old.wans or old.detect_wans) != bool(new.wans or new.detect_wans):
        restart.append("wan")  # a node with no WANs dials from its listen socket instead
    old_net, new_net = old.network, new.network
    if (old_net and old_net.certificate) != (new_net and new_net.certificate):
        restart.append("network")  # the membership certificate is in the node's TLS identity
    # Only the peers with a lane count: a peer added or removed without one is an ordinary run-time change.
    if {p.key for p in old.peers if p.tcp_lane == "auto"} != {p.key for p in new.peers if p.tcp_lane == "auto"}:
        restart.append("tcp_lane")  # the lane's listeners, nft rules and MPTCP endpoints are set up at start
    old_peers = {p.key: p for p in old.peers}
    new_peers = {p.key: p for p in new.peers}
    old_lan, new_lan = old.lan, new.lan
    lan_address = (old_lan is not None and new_lan is not None
                   and (old_lan.device, old_lan.address) != (new_lan.device, new_lan.address))
    return ConfigDiff(
        restart=restart,
        peers_added=[p for k, p in new_peers.items() if k not in old_peers],
        peers_changed=[p for k, p in new_peers.items() if k in old_peers and old_peers[k] != p],
        peers_removed=[p for k, p in old_peers.items() if k not in new_peers],
        wans=(old.wans, old.detect_wans) != (new.wans, new.detect_wans),
        lan_address=lan_address,
        dnsmasq=_dnsmasq_view(old) != _dnsmasq_view(new),
        webui=(old.webui, old_lan and old_lan.ip) != (new.webui, new_lan and new_lan.ip),
        exit=_exit_view(old) != _exit_view(new),
        firewall=_firewall_view(old) != _firewall_view(new),
        network="network" not in restart and _network_view(old) != _network_view(new),
    )


def _network_view(config: Config) -> object:
    net = config.network
    return None if net is None else (net.revoked, net.mode, net.realtime_mode, net.relay, net.relay_rate_mbit)


def _dnsmasq_view(config: Config) -> object:
    lan = config.lan
    return None if lan is None else (lan.device, lan.address, lan.dhcp, lan.dhcp_range, lan.dns, lan.dns_servers)


def _exit_view(config: Config) -> object:
    lan = config.lan
    if lan is None:
        return None
    exit_key = next((p.key for p in config.peers if p.name == lan.exit_peer), None)
    return (lan.device, exit_key, lan.kill_switch, lan.direct)


def _firewall_view(config: Config) -> object:
    # Peers count through the ACLs that name them (their allowed_ips and groups).
    return (config.lan, config.gateway, config.acls, config.acl_default, config.webui, config.open_ports,
            [(p.name, p.allowed_ips, p.groups) for p in config.peers] if config.acls else None)
