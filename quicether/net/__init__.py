"""Adapters to the kernel's network configuration (pyroute2, libnftables). No packet handling here."""
