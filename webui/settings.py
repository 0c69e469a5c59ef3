"""Settings: LAN, WANs, peers and their traffic classes, ACLs, and the whole config as TOML (edit,
download, restore). Every form edits the config document and goes through daemon_link.save_and_apply, so
an invalid value is refused with the config's own message and nothing is written."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, flash, redirect, render_template, request, url_for

from quicether import config_edit
from quicether.config import MODES, ConfigError
from quicether.invite import InviteError, decode
from quicether.router_config import PROTOCOL_NUMBERS
from webui.daemon_link import Document, config_text, document, friendly, parse_document, ports, save_and_apply

bp = Blueprint("settings", __name__, url_prefix="/settings")


def _page(error: str | None = None, status: int = 200) -> Any:
    text = config_text()
    try:
        doc = parse_document(text)
    except ConfigError as exc:  # edited by hand into something that is not TOML: the TOML form can repair it
        doc, error, status = {}, error or friendly(exc), 400 if status == 200 else status
    used = {w.get("device") for w in doc.get("wan", [])} | {doc.get("lan", {}).get("device")}
    free_ports = [p["name"] for p in ports() if p["name"] not in used]
    return render_template("settings.html", doc=doc, toml_text=text, error=error, modes=MODES,
                           protocols=sorted(PROTOCOL_NUMBERS), free_ports=free_ports, title="Settings"), status


def _apply(change: Callable[[Document], Document]) -> Any:
    """Runs `change` on the current document, saves and reloads; on a bad value, the page with the error."""
    try:
        doc = change(document())
        _config, outcome = save_and_apply(doc)
    except InviteError as exc:
        return _page(f"Invite code: {exc}", 400)
    except (ConfigError, ValueError) as exc:
        return _page(friendly(str(exc)), 400)
    except IndexError:
        return _page("That entry no longer exists (the config changed meanwhile); reload the page.", 400)
    flash(outcome)
    return redirect(url_for("settings.index"))


def _int_or_none(text: str, what: str) -> int | None:
    text = text.strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a whole number") from None


def _match_fields(form: Any, numbers: tuple[str, ...]) -> dict[str, Any]:
    """The optional match fields of a class or ACL form: protocol, and whole numbers (port, DSCP)."""
    fields: dict[str, Any] = {"protocol": form["protocol"]} if form.get("protocol") else {}
    for key in numbers:
        value = _int_or_none(form.get(key, ""), key.upper() if key == "dscp" else key)
        if value is not None:
            fields[key] = value
    return fields


@bp.get("/")
def index() -> Any:
    return _page()


@bp.post("/lan")
def lan() -> Any:
    form = request.form

    def change(doc: Document) -> Document:
        lan_table = dict(doc.get("lan", {}))
        lan_table.update(address=form.get("address", "").strip(), dhcp="dhcp" in form, dns="dns" in form,
                         kill_switch="kill_switch" in form,
                         dns_servers=[s.strip() for s in form.get("dns_servers", "").split(",") if s.strip()],
                         direct=[d.strip() for d in form.get("direct", "").split(",") if d.strip()])
        if "device" not in lan_table:
            raise ValueError("lan.device: choose the LAN port in the setup wizard first")
        return {**doc, "lan": lan_table}

    return _apply(change)


@bp.post("/wans")
def wans() -> Any:
    form = request.form

    def change(doc: Document) -> Document:
        new = []
        for i, wan in enumerate(doc.get("wan", [])):
            if form.get(f"remove_{i}"):
                continue
            wan = {**wan, "role": form.get(f"role_{i}", wan.get("role", "primary"))}
            rate = form.get(f"rate_{i}", "").strip()
            wan.pop("rate_mbit", None)
            if rate:
                try:
                    wan["rate_mbit"] = float(rate)
                except ValueError:
                    raise ValueError(f"wan[{i}].rate_mbit: {rate!r} is not a number of Mbit/s") from None
            new.append(wan)
        if form.get("add_device"):
            device = form["add_device"]
            # Only a port this machine has (the form offers those): anything else could be a name the
            # kernel or nftables reads as a pattern.
            if device not in {p["name"] for p in ports()}:
                raise ValueError(f"wan: {device!r} is not a port of this router")
            new.append({"device": device, "role": "primary"})
        return {**doc, "wan": new}

    return _apply(change)


@bp.post("/peers/add")
def add_peer() -> Any:
    form = request.form

    def change(doc: Document) -> Document:
        invite = decode(form.get("invite", ""))
        return config_edit.add_invited_peer(doc, invite, address=form.get("address", "").strip() or None,
                                            mode=form.get("mode", "aggregate"), use_exit=form.get("use_exit") == "on")

    return _apply(change)


@bp.post("/peers/<int:index>")
def edit_peer(index: int) -> Any:
    form = request.form

    def change(doc: Document) -> Document:
        peers = [dict(p) for p in doc.get("peer", [])]
        if not 0 <= index < len(peers):
            raise ValueError(f"peer {index}: no such peer (the config changed meanwhile; reload the page)")
        if form.get("action") == "remove":
            removed = peers.pop(index)
            lan_table = dict(doc.get("lan", {}))
            if lan_table.get("exit") == removed.get("name"):
                lan_table.pop("exit")
            return {**doc, "peer": peers, **({"lan": lan_table} if lan_table else {})}
        peers[index].update(mode=form.get("mode", "aggregate"), realtime_mode=form.get("realtime_mode", "redundant"))
        return {**doc, "peer": peers}

    return _apply(change)


@bp.post("/classes")
def classes() -> Any:
    """Adds a traffic class rule to a peer, or removes one (`remove` = "<peer>:<rule>")."""
    form = request.form

    def change(doc: Document) -> Document:
        peers = [dict(p) for p in doc.get("peer", [])]
        if form.get("remove"):
            owner, _, rule_i = form["remove"].partition(":")
            rules = list(peers[int(owner)].get("class", []))
            rules.pop(int(rule_i))
            peers[int(owner)]["class"] = rules
            return {**doc, "peer": peers}
        peer_i = int(form.get("peer", "-1"))
        if not 0 <= peer_i < len(peers):
            raise ValueError("traffic class: choose a peer")
        rule = {"mode": form.get("mode", "redundant"), **_match_fields(form, ("port", "dscp"))}
        peers[peer_i]["class"] = [*peers[peer_i].get("class", []), rule]
        return {**doc, "peer": peers}

    return _apply(change)


@bp.post("/acls")
def acls() -> Any:
    form = request.form

    def change(doc: Document) -> Document:
        rules = list(doc.get("acl", []))
        node = dict(doc.get("node", {}))
        if form.get("acl_default"):
            node["acl_default"] = form["acl_default"]
            return {**doc, "node": node}
        if form.get("remove"):
            rules.pop(int(form["remove"]))
            return {**doc, "acl": rules}
        rule = {"action": form.get("action", "deny"), "from": form.get("from", "").strip() or "0.0.0.0/0",
                "to": form.get("to", "").strip() or "0.0.0.0/0", **_match_fields(form, ("port",))}
        return {**doc, "acl": [*rules, rule]}

    return _apply(change)


def _from_toml(text: str) -> Document:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"not valid TOML: {exc}") from None


@bp.post("/toml")
def edit_toml() -> Any:
    text = request.form.get("toml", "")
    return _apply(lambda _doc: _from_toml(text))


@bp.post("/restore")
def restore() -> Any:
    upload = request.files.get("config")
    if upload is None or not upload.filename:
        return _page("Restore: choose a config file to upload.", 400)
    try:
        text = upload.read().decode()
    except UnicodeDecodeError:
        return _page("Restore: the file is not a text (TOML) config.", 400)
    return _apply(lambda _doc: _from_toml(text))


@bp.get("/config.toml")
def download() -> Any:
    return Response(config_text(), mimetype="application/toml",
                    headers={"Content-Disposition": "attachment; filename=quicether.toml"})
