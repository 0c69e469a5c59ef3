"""First boot: admin password (with the one-time setup code) → ports (WAN/LAN, WAN role, rate cap) →
connect (invite code, bonding mode). The invite is a gateway's (qei1.: added as a peer) or a network's
(qej1.: the daemon gets this node's membership certificate from the network's admin node).

Each step validates its form and shows what is wrong on the page. The last step writes the same TOML config
the CLI uses (via quicether.config_edit) and asks the daemon to reload: no reboot.
"""

from __future__ import annotations

import contextlib
import ipaddress
import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, session, url_for

from quicether import config_edit, joining, setup_code
from quicether.config import MAX_RATE_MBIT, MIN_RATE_MBIT, MODES, ConfigError
from quicether.identity import IdentityError
from quicether.invite import InviteError, decode, decode_network, is_network_invite
from quicether.router_config import DEFAULT_LAN_ADDRESS
from webui import auth
from webui.daemon_link import DaemonDown, ask, document, friendly, join_network, node_key, ports, save_and_reload

bp = Blueprint("wizard", __name__, url_prefix="/setup")
# Setting the first password and consuming the setup code happen together, once.
_first_password = threading.Lock()


@bp.route("/", methods=["GET", "POST"])
def password() -> Any:
    if auth.is_set_up() and request.method == "GET":
        return redirect(url_for("wizard.port_roles"))
    if auth.is_set_up():  # a second POST after the account exists: never overwrite it from here
        return redirect(url_for("auth.login"))
    error, status = None, 200
    if request.method == "POST":
        state_dir = Path(current_app.config["QE_STATE"])
        given = request.form.get("setup_code", "")
        # The code first, under the login's guessing limit: without it, nothing else is looked at.
        right = auth.limited_check(lambda: setup_code.matches(state_dir, given))
        if right is None:
            error, status = auth.LOCKED_OUT, 429
        elif not right:
            error, status = "Wrong setup code.", 403
        else:
            error = auth.password_problem(request.form.get("password", ""), request.form.get("confirm", ""))
            status = 400 if error else 200
        if error is None:
            with _first_password:
                if auth.is_set_up():  # someone with the code was faster (two tabs)
                    return redirect(url_for("auth.login"))
                auth.set_password(request.form["password"])
                setup_code.consume(state_dir)
            with contextlib.suppress(DaemonDown):
                ask("setup_done")  # the code's copies (EFI partition, console banner) are root's: the daemon's job
            auth.log_in()
            return redirect(url_for("wizard.port_roles"))
    return render_template("wizard_password.html", error=error, step=1, title="Set up: password",
                           min_chars=auth.MIN_PASSWORD_CHARS), status


def _current_roles(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    roles: dict[str, dict[str, Any]] = {}
    for wan in doc.get("wan", []):
        roles[wan.get("device", "")] = {"role": "wan", "wan_role": wan.get("role", "primary"),
                                        "rate": wan.get("rate_mbit", "")}
    lan = doc.get("lan", {})
    if lan.get("device"):
        roles[lan["device"]] = {"role": "lan"}
    return roles


def _parse_ports(form: Any, names: list[str]) -> tuple[dict[str, Any] | None, str | None]:
    wans, lan = [], None
    for name in names:
        role = form.get(f"role_{name}", "unused")
        if role == "lan":
            if lan is not None:
                return None, "Choose one LAN port (bridging several is not supported yet)."
            lan = name
        elif role == "wan":
            wan: dict[str, Any] = {"device": name, "role": form.get(f"wanrole_{name}", "primary")}
            if wan["role"] not in ("primary", "backup"):
                return None, f"{name}: the WAN role must be primary or backup."
            rate = form.get(f"rate_{name}", "").strip()
            if rate:
                try:
                    wan["rate_mbit"] = float(rate)
                except ValueError:
                    return None, f"{name}: the rate cap must be a number of Mbit/s (or empty for none)."
                if not MIN_RATE_MBIT <= wan["rate_mbit"] <= MAX_RATE_MBIT:
                    return None, f"{name}: the rate cap must be between {MIN_RATE_MBIT} and {MAX_RATE_MBIT} Mbit/s."
            wans.append(wan)
    if lan is None:
        return None, "Choose the LAN port (where your computers are)."
    if not wans:
        return None, "Choose at least one WAN port (towards an ISP)."
    address = form.get("lan_address", "").strip() or DEFAULT_LAN_ADDRESS
    try:
        iface = ipaddress.IPv4Interface(address)
    except ValueError:
        return None, f"The LAN address {address!r} is not like 192.168.50.1/24."
    if iface.network.prefixlen > 30 or iface.ip == iface.network.network_address:
        return None, f"The LAN address {address} is not a usable host address."
    return {"wans": wans, "lan": lan, "lan_address": str(iface)}, None


@bp.route("/ports", methods=["GET", "POST"])
def port_roles() -> Any:
    found = ports()
    doc = document()
    error = None
    if request.method == "POST":
        chosen, error = _parse_ports(request.form, [p["name"] for p in found])
        if chosen is not None:
            session["setup_ports"] = chosen
            return redirect(url_for("wizard.connect"))
    roles = _current_roles(doc)
    lan_address = doc.get("lan", {}).get("address", DEFAULT_LAN_ADDRESS)
    return render_template("wizard_ports.html", ports=found, roles=roles, lan_address=lan_address, error=error,
                           step=2, title="Set up: ports", form=request.form), 400 if error else 200


def _build_config(chosen: dict[str, Any], form: Any) -> dict[str, Any]:
    """The new config document from the ports step and the connect form (ConfigError/InviteError)."""
    doc = document()
    node = dict(doc.get("node", {}))
    node["detect_wans"] = False  # the ports were chosen by hand: unused ones stay unused
    doc["node"] = node
    doc["wan"] = chosen["wans"]
    doc["lan"] = {**doc.get("lan", {}), "device": chosen["lan"], "address": chosen["lan_address"]}
    mode = form.get("mode", "aggregate")
    if mode not in MODES:
        raise ConfigError(f"bonding mode {mode!r} is not one of {', '.join(MODES)}")
    code = form.get("invite", "").strip()
    if code and is_network_invite(code):
        # A network invite: checked here first (a damaged code is never sent), then the daemon gets this
        # node's certificate from the admin (the code is used; the same node may use it again).
        network_invite = decode_network(code)
        joined = join_network(code, form.get("member_name", "").strip(), joining.lan_prefixes_of(doc))
        # As for a gateway's peer invite: the exit is the owner's choice (the box), if the admin offers one.
        doc = joining.add_membership(doc, joined, network_invite, use_exit=form.get("use_exit") == "on")
    elif code:
        invite = decode(code)
        try:
            address = (form.get("address", "").strip() or doc.get("node", {}).get("address")
                       or config_edit.suggest_address(invite, node_key()))
        except IdentityError as exc:
            raise ConfigError(f"this node has no key yet ({exc}); run `quicether keygen`") from None
        # The exit is the owner's choice, never the invite's: an unticked box routes nothing through it.
        doc = config_edit.add_invited_peer(doc, invite, address=address, mode=mode,
                                           use_exit=form.get("use_exit") == "on")
    for peer in doc.get("peer", []):
        peer["mode"] = mode
    return doc


@bp.route("/connect", methods=["GET", "POST"])
def connect() -> Any:
    chosen = session.get("setup_ports")
    if not chosen:
        return redirect(url_for("wizard.port_roles"))
    error = None
    if request.method == "POST":
        try:
            doc = _build_config(chosen, request.form)
            config, applied = save_and_reload(doc)
        except InviteError as exc:
            error = f"Invite code: {exc}"
        except ConfigError as exc:
            error = friendly(exc)
        else:
            session.pop("setup_ports", None)
            return render_template("applying.html", applied=applied, config=config, title="Applying",
                                   node_id=_node_id())
    return render_template("wizard_connect.html", error=error, modes=MODES, step=3, title="Set up: connect",
                           form=request.form), 400 if error else 200


def _node_id() -> str:
    """This node's id as the daemon reports it (the UI cannot read the key file)."""
    try:
        node_id = ask("status").get("node", {}).get("node_id")
    except DaemonDown:
        node_id = None
    return node_id if isinstance(node_id, str) else "(unknown: run `quicether pubkey` on the router)"
