"""QuicEther's web UI: a Flask app (app factory + blueprints) served by waitress on the LAN address.

- `auth`: the admin password (scrypt), login with a guessing limit (`throttle`), server-side sessions
  (`sessions`), CSRF on every form.
- `wizard`: first boot — password (with the one-time setup code), ports (WAN/LAN, WAN role and rate cap),
  invite code, bonding mode.
- `dashboard`: WAN cards and live graphs, bond total, peers and paths, events and log (polls the daemon).
- `settings`: LAN, WANs, peers and traffic classes, ACLs, the config as TOML; download and restore.

The UI runs as the unprivileged user quicether-web and never opens the config file (root's, 0600): it
reads it from the daemon's API and sends every change there (apply_config), after checking it with
quicether.config_edit; the daemon checks it again, writes it and applies it as a reload does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request

from quicether import setup_code
from webui import auth, dashboard, settings, wizard
from webui.daemon_link import DaemonDown

log = logging.getLogger("quicether-webui")
# Uploaded configs and forms are small; anything bigger is not ours.
MAX_REQUEST_BYTES = 256 * 1024


def host_name(header: str) -> str:
    """The name or address in a Host header: without the port, lower case, without a final dot."""
    if header.startswith("["):  # an IPv6 literal, "[fd00::1]:80"
        return header[1:].partition("]")[0].lower()
    return header.partition(":")[0].rstrip(".").lower()


def create_app(config_path: Path, state_dir: Path, overrides: dict[str, Any] | None = None,
               hosts: Iterable[str] = ()) -> Flask:
    """The web UI for the node whose config is `config_path`. It answers only requests whose Host is one of
    `hosts` (the LAN address it is served on, router.lan): a page on another site that points its own name
    at this router (DNS rebinding) gets 400, so it can never read a page or use the first-boot wizard."""
    app = Flask(__name__)
    app.config.update(
        QE_CONFIG=Path(config_path), QE_STATE=Path(state_dir), QE_API=Path(state_dir) / "api.sock",
        QE_HOSTS=frozenset(host_name(h) for h in hosts), SESSION_COOKIE_NAME="qe_session",
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
    )
    app.config.update(overrides or {})

    @app.before_request
    def own_host_only() -> Any:
        if host_name(request.headers.get("Host", "")) not in app.config["QE_HOSTS"]:
            return Response("This router's web UI answers only to its own address.\n", 400, mimetype="text/plain")
        return None

    auth.init_app(app)
    for blueprint in (auth.bp, wizard.bp, dashboard.bp, settings.bp):
        app.register_blueprint(blueprint)
    if (problem := auth.password_record_problem(Path(state_dir))) is not None:
        log.error("%s", problem)
    if setup_code.ensure(Path(state_dir)) is not None:
        # Never the code itself: logs travel further than the owner's eyes.
        log.warning("no admin password yet: the setup wizard asks for the setup code (`quicether setup-code` "
                    "prints it)")

    @app.after_request
    def security_headers(response: Any) -> Any:
        # Scripts and styles only from our own static files; no framing (clickjacking on the admin pages).
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.errorhandler(DaemonDown)
    def daemon_down(error: DaemonDown) -> Any:
        # The config is the daemon's (root's file): without it, no page that shows or changes it works.
        return render_template("error.html", message=f"{error}. The page works again once it is back.",
                               title="Daemon not answering"), 503

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(ok=True)

    return app
