"""QuicEther's web UI: a Flask app (app factory + blueprints) served by waitress on the LAN address.

- `auth`: the admin password (scrypt), login with a rate limit, sessions, CSRF on every form.
- `wizard`: first boot — password, ports (WAN/LAN, WAN role and rate cap), invite code, bonding mode.
- `dashboard`: WAN cards and live graphs, bond total, peers and paths, events and log (polls the daemon).
- `settings`: LAN, WANs, peers and traffic classes, ACLs, the config as TOML; download and restore.

The UI never writes anything the CLI could not: every change goes through quicether.config_edit, which
saves only a config that parses, then asks the daemon to reload.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from flask import Flask, jsonify

from webui import auth, dashboard, settings, wizard

# Uploaded configs and forms are small; anything bigger is not ours.
MAX_REQUEST_BYTES = 256 * 1024


def _secret_key(path: Path) -> bytes:
    """The session signing key, kept in the state directory so sessions survive a daemon reload."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        key = secrets.token_bytes(32)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(key)
        return key


def create_app(config_path: Path, state_dir: Path, overrides: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update(
        QE_CONFIG=Path(config_path), QE_STATE=Path(state_dir), QE_API=Path(state_dir) / "api.sock",
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="qe_session",
        MAX_CONTENT_LENGTH=MAX_REQUEST_BYTES,
    )
    app.config.update(overrides or {})
    app.secret_key = _secret_key(Path(state_dir) / "webui.secret")
    auth.init_app(app)
    for blueprint in (auth.bp, wizard.bp, dashboard.bp, settings.bp):
        app.register_blueprint(blueprint)

    @app.after_request
    def security_headers(response: Any) -> Any:
        # Scripts and styles only from our own static files; no framing (clickjacking on the admin pages).
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.get("/healthz")
    def healthz() -> Any:
        return jsonify(ok=True)

    return app
