"""The network lab: real namespaces, veth pairs, rate limits, loss, delay and NAT, cleaned up always."""

from tests.lab.netns import Lab, LabError, Namespace, sweep_stale_labs
from tests.lab.topology import LinkSpec, NatType, Wan, WanLab, build_wan_lab

__all__ = ["Lab", "LabError", "LinkSpec", "Namespace", "NatType", "Wan", "WanLab", "build_wan_lab",
           "sweep_stale_labs"]
