"""The web UI in a real browser (Debian's chromium driven by Playwright) on a LAN host of the lab, against
the real daemon on the router: first boot wizard (with the setup code read as the owner would, over SSH),
bad invite codes (damaged; network codes expired, unknown, used) and a good one, the bond coming up on the
dashboard and its live graph moving with traffic; then the wizard again to join a network, and a code of
another network refused; requests naming another host are refused. Screenshots go to tests/artifacts/.

Without the lab: the dashboard in chromium against a stand-in daemon whose peer sends hostile WAN names
(line breaks, NUL, markup): the page never reloads, and cards come and go with the names."""

from __future__ import annotations

import contextlib
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from quicether import network, setup_code
from quicether.config import load
from quicether.identity import decode_node_id, generate
from quicether.identity import load as load_identity
from tests.lab import Lab, LinkSpec
from tests.lab import nodes as qe
from tests.lab.measure import wait_for
from tests.lab.mesh import make_member
from tests.lab.sites import dhcp_lease
from tests.lab.topology import REPO_ROOT, build_wan_lab
from tests.webui_fixtures import FakeDaemon
from webui import auth, create_app, dashboard

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_WRAPPER = REPO_ROOT / "tests" / "lab" / "chromium-in-netns.sh"
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
PASSWORD = "lab admin password"
SITE_OVERLAY = "10.99.0.7/24"
UI = "http://192.168.50.1"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() or shutil.which("ip") is None,
                                reason="needs Debian's chromium (scripts/setup installs it)")


def _ui_processes(state_dir: Path) -> list[tuple[int, int]]:
    """(pid, real uid) of each web UI process serving `state_dir`, from /proc."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
            status = (proc / "status").read_text()
        except OSError:
            continue
        if b"webui" in args and str(state_dir).encode() in args:
            uid = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("Uid:"))
            found.append((int(proc.name), uid))
    return found


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the web UI's user can pass (pytest's own tmp tree is root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="qe-browser-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_wizard_invite_and_live_dashboard_in_a_browser(lab: Lab, tmp_path: Path, open_dir: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    wl = build_wan_lab(lab, [LinkSpec(rate_mbit=50, delay_ms=6), LinkSpec(rate_mbit=30, delay_ms=12)],
                       lan_static=False, internet_hosts=("gateway",), policy_routing=False)
    gateway = qe.make_node(wl.host("gateway"), "gw", "10.99.0.1/24", tmp_path)
    site = qe.make_node(wl.router, "site", SITE_OVERLAY, open_dir)
    gateway.node_extra = {"role": "gateway"}
    gateway.sections["gateway"] = {"internet": "eth0"}
    # The gateway already allows the site's key (the add-peer step the wizard tells the user to run there).
    gateway.peers = [{"name": "site", "key": site.node_id, "allowed_ips": ["10.99.0.7/32", "192.168.50.0/24"]}]
    # First boot: the appliance's default config (LAN with DHCP, WANs found by their default route, no peers).
    site.address = ""
    site.node_extra = {"detect_wans": True}
    site.sections["lan"] = {"device": "lan"}
    for node in (gateway, site):
        lab.on_close(lambda node=node: node.proc.kill() if node.proc and node.proc.poll() is None else None)
    # Both WAN ports have a DHCP-style default route (the second with a higher metric).
    wl.router.ip("route", "add", "default", "via", wl.wans[1].isp_addr, "dev", "wan1", "metric", "200")
    qe.start(gateway)
    qe.start(site)
    site.config_path.chmod(0o600)  # root's, as on the appliance: the UI reads and writes it only through the API
    invite = subprocess.run([sys.executable, "-m", "quicether", "invite", "-c", str(gateway.config_path), "--endpoint",
                             f"{wl.addr('gateway')}:{qe.QUIC_PORT}", "--name", "gw"],
                            capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout.strip()
    # Network invites that must fail: the gateway is the admin of no network.
    (tmp_path / "elsewhere").mkdir()
    other = network.create(tmp_path / "elsewhere", "home", generate(tmp_path / "elsewhere" / "node.key"))
    endpoint = f"{wl.addr('gateway')}:{qe.QUIC_PORT}"
    expired_code = network.invite(other, load_identity(gateway.state_dir / "node.key"), [endpoint],
                                  now=int(time.time()) - 90000).encode()
    unknown_code = network.invite(other, load_identity(gateway.state_dir / "node.key"), [endpoint]).encode()
    # A network's admin node, another host on the internet: network "home", whose codes the wizard gets
    # below (one another node used already, and a good one).
    admin = qe.make_node(wl.add_internet_host("admin"), "admin", "", tmp_path)
    admin_key = load_identity(admin.state_dir / "node.key")
    home = network.create(admin.state_dir, "home", admin_key, admin_name="admin")
    make_member(admin, home.members[0], None)  # no DHT: members reach it at its address
    admin_endpoint = f"{wl.addr('admin')}:{qe.QUIC_PORT}"
    used_code = network.invite(home, admin_key, [admin_endpoint]).encode()
    network.admit(home, decode_node_id(network.invitations(home)[-1].key),
                  generate(tmp_path / "someone.key").public_key, "someone")
    home_code = network.invite(home, admin_key, [admin_endpoint]).encode()
    lab.on_close(lambda: admin.proc.kill() if admin.proc and admin.proc.poll() is None else None)
    qe.start(admin)
    lan = wl.lan
    assert lan is not None
    lease = dhcp_lease(lan, tmp_path / "lease")
    assert lease["router"] == "192.168.50.1"

    # Only the router's own names are served: a rebound name (another site's, pointed at the router) is not.
    for host, status in (("evil.example", "400"), ("router.lan", "200"), ("192.168.50.1", "200")):
        answer = lan.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}", f"{UI}/setup/",
                         check=False, timeout=15).stdout
        assert answer == status, (host, answer)
    # The web UI runs unprivileged, as quicether-web (the daemon bound port 80 for it); its state is its own.
    ui_user = pwd.getpwnam(setup_code.UI_USER)
    assert [uid for _pid, uid in _ui_processes(site.state_dir)] == [ui_user.pw_uid], qe.read_log(site)
    ui_state = setup_code.ui_dir(site.state_dir)
    assert (ui_state.stat().st_uid, stat.S_IMODE(ui_state.stat().st_mode)) == (ui_user.pw_uid, 0o700)
    # The owner reads the setup code on the router (over SSH: `quicether setup-code`).
    code = subprocess.run([sys.executable, "-m", "quicether", "setup-code", "-c", str(site.config_path)],
                          capture_output=True, text=True, check=True, cwd=REPO_ROOT).stdout.strip()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(BROWSER_WRAPPER), args=["--no-sandbox"],
                                     env={"QE_NETNS": lan.netns, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                          "HOME": str(tmp_path)})
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(15_000)
        page.goto(f"{UI}/")
        expect(page).to_have_url(f"{UI}/setup/")
        assert code not in page.content()
        page.fill("input[name=setup_code]", "WRNG-WRNG-WRNG")
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=confirm]", PASSWORD)
        page.click("text=Next: ports")
        expect(page.locator("#error")).to_contain_text("Wrong setup code")
        page.fill("input[name=setup_code]", code)
        page.fill("input[name=password]", PASSWORD)
        page.fill("input[name=confirm]", PASSWORD)
        page.screenshot(path=str(ARTIFACTS / "wizard-1-password.png"), full_page=True)
        page.click("text=Next: ports")
        expect(page).to_have_url(f"{UI}/setup/ports")
        # Used up: the code is gone from the router.
        assert setup_code.read(site.state_dir) is None
        page.select_option("select[name=role_lan]", "lan")
        page.select_option("select[name=role_wan0]", "wan")
        page.select_option("select[name=role_wan1]", "wan")
        page.fill("input[name=rate_wan1]", "25")
        page.screenshot(path=str(ARTIFACTS / "wizard-2-ports.png"), full_page=True)
        page.click("text=Next: connect")
        expect(page).to_have_url(f"{UI}/setup/connect")
        # A code that lost its end on the way: the page says so and nothing is applied.
        page.fill("textarea[name=invite]", invite[:-8])
        page.fill("input[name=address]", SITE_OVERLAY)
        page.click("text=Apply")
        expect(page.locator("#error")).to_contain_text("the invite code is damaged")
        page.screenshot(path=str(ARTIFACTS / "wizard-3-bad-invite.png"), full_page=True)
        # Network invites the router's daemon tries for the wizard: an expired one (said without asking
        # anyone), one the node it names never made and one another node used (that node refuses them in
        # the handshake).
        for network_code, shown in ((expired_code, "expired on"), (unknown_code, "does not know it"),
                                    (used_code, "this invite was already used")):
            page.fill("textarea[name=invite]", network_code)
            page.click("text=Apply")
            expect(page.locator("#error")).to_contain_text(shown)
        assert "[network]" not in site.config_path.read_text()
        page.fill("textarea[name=invite]", invite)
        page.check("input[name=use_exit]")  # the exit is the owner's explicit choice
        page.click("text=Apply")
        expect(page.locator("#outcome")).to_contain_text(re.compile("(applied|applying) the new settings"))
        expect(page.locator("#allow-command")).to_contain_text(site.node_id)
        # A daemon that restarts its services (the UI with them) to apply it: the page goes to the dashboard
        # when the UI is back. One that applied a diff: the UI kept running, the link goes there.
        if page.locator("#waiting").count() == 0:
            page.click("#to-dashboard")
        expect(page).to_have_url(f"{UI}/", timeout=30_000)
        expect(page.locator('[data-wan="wan0"] [data-field="state"]')).to_have_text("up", timeout=30_000)
        expect(page.locator('[data-wan="wan1"] [data-field="state"]')).to_have_text("up", timeout=30_000)
        expect(page.locator('[data-peer="gw"] [data-field="connected"]')).to_have_text("connected")

        # Traffic through the bond: the total graph gains samples and shows the rate.
        server = wl.host("gateway").popen(["iperf3", "-s", "-1", "-B", "10.99.0.1"], stdout=subprocess.DEVNULL)
        lab.on_close(server.kill)
        time.sleep(0.5)
        graph = page.locator('canvas[data-graph="total"]')
        samples_before = int(graph.get_attribute("data-samples") or 0)
        client = lan.popen(["iperf3", "-c", "10.99.0.1", "-t", "6", "-R"], stdout=subprocess.DEVNULL)
        lab.on_close(client.kill)
        deadline = time.monotonic() + 10
        peak = 0.0
        while time.monotonic() < deadline and client.poll() is None:
            peak = max(peak, float(graph.get_attribute("data-last") or 0))
            time.sleep(0.5)
        client.wait(timeout=20)
        assert int(graph.get_attribute("data-samples") or 0) > samples_before + 3
        assert peak > 5.0, peak  # Mbit/s on the graph while iperf3 ran through the bond
        page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

        # A settings change goes through the daemon (the UI cannot write the config): applied as a diff.
        page.goto(f"{UI}/settings/")
        form = page.locator("#class-form")
        form.locator("select[name=protocol]").select_option("udp")
        form.locator("input[name=port]").fill("5060")
        form.locator("button").click()
        expect(page.locator("p.notice").first).to_contain_text("applied the new settings")
        peer = load(site.config_path).peers[0]
        assert [(c.protocol, c.port) for c in peer.classes] == [(17, 5060)]  # udp
        assert stat.S_IMODE(site.config_path.stat().st_mode) == 0o600 and site.config_path.stat().st_uid == 0
        assert "peer gw changed" in qe.read_log(site)
        # Still the same unprivileged process: the change did not need a restart of the UI.
        assert [uid for _pid, uid in _ui_processes(site.state_dir)] == [ui_user.pw_uid]
        # The rate cap chosen in the wizard shapes the port.
        assert "tbf 71: root" in wl.router.run("tc", "qdisc", "show", "dev", "wan1").stdout
        assert site.status()["router"]["lan"]["exit_peer"] == "gw"

        # The wizard again (the ports as they are): the router joins network "home" with its admin's code;
        # the admin becomes a peer beside the gateway.
        page.goto(f"{UI}/setup/")
        expect(page).to_have_url(f"{UI}/setup/ports")
        page.click("text=Next: connect")
        page.fill("textarea[name=invite]", home_code)
        page.fill("input[name=member_name]", "site")
        page.click("text=Apply")
        expect(page.locator("#outcome")).to_contain_text(re.compile("(applied|applying) the new settings"))
        if page.locator("#waiting").count() == 0:
            page.click("#to-dashboard")
        expect(page).to_have_url(f"{UI}/", timeout=30_000)
        expect(page.locator('[data-peer="admin"] [data-field="connected"]')).to_have_text("connected",
                                                                                         timeout=30_000)
        member = network.load(admin.state_dir, "home").find(site.node_id)
        assert member.name == "site"

        def network_address() -> object:
            # The join restarts the daemon: its API may be away or not yet report the network for a moment.
            try:
                return site.status().get("node", {}).get("network", {}).get("address")
            except OSError:
                return None

        wait_for(lambda: network_address() == f"{member.ipv4}/16", timeout=30)
        # Foreign: a code of another network (called "home" too: its key tells them apart), now that the
        # router is a member of the admin's: refused on the router's side before anything is sent, and
        # nothing changes.
        joined = site.config_path.read_bytes()
        page.goto(f"{UI}/setup/ports")
        page.click("text=Next: connect")
        page.fill("textarea[name=invite]", unknown_code)
        page.click("text=Apply")
        expect(page.locator("#error")).to_contain_text("this node is a member of another network")
        page.screenshot(path=str(ARTIFACTS / "wizard-4-foreign-invite.png"), full_page=True)
        assert site.config_path.read_bytes() == joined
        browser.close()


PEER_WAN_NAMES = ["wan0\r\n", "wan0\n", "a\x00b", "<img src=x onerror=alert(1)>", "x,y", "\u202eevil", "w" * 300]


@contextlib.contextmanager
def _served_ui(state: Path) -> Iterator[str]:
    """The web UI on 127.0.0.1 (a free port) with its password set; yields its base URL."""
    generate(state / "node.key")
    config = state / "quicether.toml"
    config.write_text(f'[node]\nstate_dir = "{state}"\n')
    app = create_app(config, state, hosts=["127.0.0.1"])
    with app.app_context():
        auth.set_password(PASSWORD)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(5)


@pytest.fixture
def served_dashboard(tmp_path: Path) -> Iterator[tuple[str, FakeDaemon]]:
    """The web UI in front of a stand-in daemon."""
    with FakeDaemon(tmp_path / "api.sock") as daemon, _served_ui(tmp_path) as base:
        yield base, daemon


def _logged_in_page(browser: Any, base: str) -> Any:
    page = browser.new_page()
    page.set_default_timeout(10_000)
    page.goto(f"{base}/login")
    page.fill("input[name=password]", PASSWORD)
    page.click("button:has-text(\"Log in\")")
    return page


def _local_chromium(pw: Any, home: Path) -> Any:
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"],
                              env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(home)})


def test_dashboard_never_reloads_and_shows_any_wan_name_as_text(served_dashboard: tuple[str, FakeDaemon],
                                                                  tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    base, daemon = served_dashboard
    with sync_playwright() as pw:
        browser = _local_chromium(pw, tmp_path)
        page = _logged_in_page(browser, base)
        expect(page).to_have_url(f"{base}/")
        loads: list[str] = []
        page.on("framenavigated", lambda frame: loads.append(frame.url) if frame == page.main_frame else None)
        cards = page.locator("#dashboard [data-wan-key]")
        expect(cards).to_have_count(2)  # wan0 and wan1 of the sample status

        # A peer renames its paths' WANs to names that break attributes, lines and markup.
        template = daemon.status["peers"][0]["paths"][0]
        daemon.status["peers"][0]["paths"] = [{**template, "wan": name} for name in PEER_WAN_NAMES]
        expect(cards).to_have_count(len(PEER_WAN_NAMES))
        shown = sorted(page.locator("#dashboard [data-wan-key] [data-field=name]").all_text_contents())
        assert shown == sorted(dashboard.printable(n, dashboard.MAX_NAME_CHARS) for n in PEER_WAN_NAMES)
        assert page.locator("#dashboard img").count() == 0
        samples = page.locator("#dashboard [data-wan-key] canvas").first
        time.sleep(3)  # three polls: a page that reloads on a name it cannot match would have reloaded
        assert int(samples.get_attribute("data-samples") or 0) >= 3

        # The WANs go, one comes back: its card appears, the others are removed, still without a reload.
        daemon.status["peers"][0]["paths"] = [{**template, "wan": "wan9"}]
        expect(cards).to_have_count(1)
        expect(page.locator('[data-wan="wan9"] [data-field="state"]')).to_have_text("up")
        # The punch view follows the daemon's counters too.
        daemon.status["peers"][0]["punch_attempts"] = 7
        daemon.status["node"]["punch"] = {"attempts": 9, "successes": 2, "forwarded": 0, "refused": 1, "skipped": 3,
                                          "probes_sent": 0, "probe_sockets": 256, "probe_hits": 0, "probe_misses": 4}
        expect(page.locator('#peers [data-field="punches"]')).to_have_text("7")
        expect(page.locator("#punch")).to_contain_text("Hole punching: 9 attempt(s), 2 punched path(s) up")
        expect(page.locator("#punch")).to_contain_text("3 not tried (both NATs random)")
        expect(page.locator("#punch")).to_contain_text("birthday probes 0 hit / 4 missed")
        # So does the TCP lane's line: hidden while the lane is off, shown when it comes.
        expect(page.locator("#lane")).to_be_hidden()
        daemon.status["node"]["lane"] = {"gateway_connections": 5, "gateway_active": 1, "gateway_bytes_out": 0,
                                         "gateway_bytes_in": 0, "gateway_refused": 2, "gateway_failed": 0,
                                         "gateway_at_cap": 0}
        expect(page.locator("#lane")).to_have_text("TCP lane: gateway end: 5 connection(s), 1 active, 0 B out, 0 B"
                                                   " in, 2 refused, 0 failed, 0 closed at the cap")
        assert loads == [], loads
        page.screenshot(path=str(ARTIFACTS / "dashboard-hostile-names.png"), full_page=True)
        browser.close()


def test_a_dashboard_shown_while_the_daemon_restarts_comes_back(tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with _served_ui(tmp_path) as base, sync_playwright() as pw:
        browser = _local_chromium(pw, tmp_path)
        page = _logged_in_page(browser, base)
        expect(page.locator("#error")).to_contain_text("daemon is not answering")
        with FakeDaemon(tmp_path / "api.sock"):  # the daemon is back
            expect(page.locator("#dashboard [data-wan-key]")).to_have_count(2)
            expect(page.locator("#error")).to_have_count(0)
        browser.close()
