"""The TCP lane (issue 16) in the bond lab: the LAN's TCP to the dc host is terminated on the site router
and carried over MPTCP + TLS to the gateway, one subflow per WAN; an unpinned key is refused; nothing is
left behind after stop."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.lab import Lab
from tests.lab import nodes as qe
from tests.lab.bond import THREE_WANS, BondLab, build_bond_lab
from tests.lab.netns import Namespace

FILE_MB = 64
HTTP_PORT = 8080


def serve_file(bond: BondLab, root: Path) -> tuple[subprocess.Popen[str], str]:
    """A FILE_MB MB file of random bytes served over HTTP by the dc host; returns the server and its sha256."""
    data = root / "big.bin"
    data.write_bytes(os.urandom(FILE_MB << 20))
    errors = root.parent / "http.err"
    server = bond.dc.popen([sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", bond.dc_addr,
                            "--directory", str(root)], stdout=subprocess.DEVNULL, stderr=errors.open("w"))
    deadline = time.monotonic() + 20
    while not bond.dc.run("ss", "-Hltn", f"sport = :{HTTP_PORT}", check=False).stdout.strip():
        assert server.poll() is None and time.monotonic() < deadline, f"no HTTP server: {errors.read_text()}"
        time.sleep(0.1)
    return server, hashlib.sha256(data.read_bytes()).hexdigest()


def wan_tx_bytes(router: Namespace, devices: list[str]) -> list[int]:
    return [int(router.run("cat", f"/sys/class/net/{d}/statistics/tx_bytes").stdout) for d in devices]


def leftovers(router: Namespace) -> list[str]:
    found = []
    if "quicether_lane" in router.run("nft", "list", "tables").stdout:
        found.append("nft table quicether_lane")
    if "7090:" in router.run("ip", "rule", "show").stdout:
        found.append("ip rule 7090")
    endpoints = router.run("ip", "mptcp", "endpoint", "show").stdout.strip()
    if endpoints:
        found.append(f"mptcp endpoints: {endpoints}")
    return found


def test_curl_download_goes_through_the_lane_over_every_wan_and_stop_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    bond = build_bond_lab(lab, THREE_WANS, tmp_path, tcp_lane=True)
    www = tmp_path / "www"
    www.mkdir()
    server, digest = serve_file(bond, www)
    try:
        devices = [w.router_if for w in bond.wl.wans]
        before = wan_tx_bytes(bond.wl.router, devices)
        # The site's upload carries the request; the download is measured at the gateway's sending side, so
        # look at the router's subflows from the MPTCP socket table while curl runs.
        curl = bond.lan.popen(["curl", "-sS", "--max-time", "120", "-o", "-",
                               f"http://{bond.dc_addr}:{HTTP_PORT}/big.bin"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
        subflow_sources: set[str] = set()
        while curl.poll() is None:
            out = bond.wl.router.run("ss", "-Htn", "state", "established", f"dport = :{qe.QUIC_PORT + 1}",
                                     check=False).stdout
            subflow_sources |= {line.split()[2].rpartition(":")[0] for line in out.splitlines() if line.split()}
            time.sleep(0.2)
        body, err = curl.communicate()
        assert curl.returncode == 0, err
        assert hashlib.sha256(body).hexdigest() == digest, "the download arrived intact"
        after = wan_tx_bytes(bond.wl.router, devices)
        lane = bond.site.status()["node"]["lane"]
        assert lane["site_connections"] >= 1 and lane["site_bytes_in"] >= FILE_MB << 20, lane
        gw_lane = bond.gateway.status()["node"]["lane"]
        assert gw_lane["gateway_connections"] >= 1 and gw_lane["gateway_bytes_in"] >= FILE_MB << 20, gw_lane
        wan_addrs = {w.router_addr for w in bond.wl.wans}
        assert len(subflow_sources & wan_addrs) >= 2, f"MPTCP subflows from {subflow_sources}"
        print(f"lane subflows from {sorted(subflow_sources)}; router bytes sent per WAN:"
              f" {[a - b for a, b in zip(after, before, strict=True)]}")
    finally:
        server.terminate()
        server.wait()
    qe.stop(bond.site)
    qe.stop(bond.gateway)
    assert leftovers(bond.wl.router) == []


def test_the_gateway_refuses_a_lane_connection_from_an_unpinned_key(lab: Lab, tmp_path: Path) -> None:
    bond = build_bond_lab(lab, THREE_WANS, tmp_path, tcp_lane=True, extra_hosts=("stranger",))
    stranger = bond.wl.host("stranger")
    key, cert = tmp_path / "stranger.key", tmp_path / "stranger.crt"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ed25519", "-nodes", "-subj", "/CN=quicether",
                    "-days", "1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    hello = stranger.run("sh", "-c", f"echo QEL | timeout 10 openssl s_client -connect"
                         f" {bond.wl.addr('gateway')}:{qe.QUIC_PORT + 1} -tls1_3 -alpn quicether-lane/1"
                         f" -cert {cert} -key {key} -servername quicether -ign_eof", check=False)
    deadline = time.monotonic() + 5
    while bond.gateway.status()["node"]["lane"]["gateway_refused"] < 1:
        assert time.monotonic() < deadline, f"not refused: {hello.stdout[-500:]} {hello.stderr[-500:]}"
        time.sleep(0.1)
    assert bond.gateway.status()["node"]["lane"]["gateway_connections"] == 0
    assert "tcp lane" in qe.read_log(bond.gateway)


def test_a_killed_site_leaves_nothing_after_its_restart_and_stop(lab: Lab, tmp_path: Path) -> None:
    bond = build_bond_lab(lab, THREE_WANS, tmp_path, tcp_lane=True)
    assert leftovers(bond.wl.router) != [], "the lane's rules and endpoints are in place while it runs"
    assert bond.site.proc is not None
    bond.site.proc.kill()
    bond.site.proc.wait()
    qe.start(bond.site)
    qe.wait_connected(bond.site)
    endpoints = bond.wl.router.run("ip", "mptcp", "endpoint", "show").stdout.strip().splitlines()
    assert len(endpoints) == len(bond.wl.wans), f"one endpoint per WAN after the restart: {endpoints}"
    qe.stop(bond.site)
    assert leftovers(bond.wl.router) == []
