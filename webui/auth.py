"""The admin account: password hash (scrypt), login with a rate limit, the session, and CSRF protection.

There is no default password: until the wizard sets one, every page leads to the wizard's first step.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, abort, current_app, redirect, render_template, request, session, url_for

bp = Blueprint("auth", __name__)

PASSWORD_FILE = "webui-admin.json"
MIN_PASSWORD_CHARS = 10
# scrypt cost: ~50 ms and 16 MiB per check on a Raspberry Pi 4, slow enough to make guessing expensive.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Login rate limit per client address: this many failures within the window locks it out for the window.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
# Pages reachable without a session: login itself, the wizard's first step (only before a password
# exists), static files and the health check the "applying…" page polls.
PUBLIC_ENDPOINTS = {"auth.login", "static", "healthz"}

_failures: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)


def _password_path() -> Path:
    return Path(current_app.config["QE_STATE"]) / PASSWORD_FILE


def is_set_up() -> bool:
    return _password_path().exists()


def password_problem(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD_CHARS:
        return f"The password needs at least {MIN_PASSWORD_CHARS} characters."
    if password != confirm:
        return "The two passwords differ."
    if len(set(password)) < 4:
        return "The password is too repetitive."
    return None


def set_password(password: str) -> None:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    record = {"algorithm": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
              "hash": digest.hex()}
    path = _password_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(record, out)
    os.replace(tmp, path)


def check_password(password: str) -> bool:
    try:
        record = json.loads(_password_path().read_text())
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(record["salt"]), n=record["n"],
                                r=record["r"], p=record["p"])
        return hmac.compare_digest(digest.hex(), record["hash"])
    except (OSError, ValueError, KeyError):
        return False


def _locked_out(client: str, now: float) -> bool:
    failures = _failures[client]
    while failures and now - failures[0] > FAILURE_WINDOW_S:
        failures.popleft()
    return len(failures) >= MAX_FAILURES


def csrf_token() -> str:
    token = session.get("csrf")
    if not isinstance(token, str):
        token = secrets.token_urlsafe(32)
        session["csrf"] = token
    return token


def _check_csrf() -> None:
    if request.method in ("GET", "HEAD", "OPTIONS"):
        return
    sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token") or ""
    expected = session.get("csrf")
    if not isinstance(expected, str) or not hmac.compare_digest(sent, expected):
        abort(400, description="This form expired or did not come from this page. Reload the page and try again.")


def _guard() -> Any:
    _check_csrf()
    endpoint = request.endpoint or ""
    if endpoint in PUBLIC_ENDPOINTS:
        return None
    if not is_set_up():
        # First boot: only the wizard's password step, which creates the account.
        return None if endpoint == "wizard.password" else redirect(url_for("wizard.password"))
    if not session.get("admin"):
        return redirect(url_for("auth.login", next=request.path))
    return None


def init_app(app: Flask) -> None:
    app.before_request(_guard)
    app.jinja_env.globals["csrf_token"] = csrf_token

    @app.errorhandler(400)
    def bad_request(error: Any) -> Any:
        return render_template("error.html", message=error.description, title="Refused"), 400


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not is_set_up():
        return redirect(url_for("wizard.password"))
    error = None
    status = 200
    if request.method == "POST":
        client = request.remote_addr or "?"
        now = time.monotonic()
        if _locked_out(client, now):
            error, status = f"Too many wrong passwords. Wait {FAILURE_WINDOW_S:.0f} seconds and try again.", 429
        elif check_password(request.form.get("password", "")):
            _failures.pop(client, None)
            session.clear()
            session["admin"] = True
            csrf_token()
            target = request.args.get("next", "")
            # Only paths on this site: an absolute or protocol-relative URL ("//x", "/\\x" to browsers)
            # would be an open redirect.
            local = target.startswith("/") and not target.startswith(("//", "/\\"))
            return redirect(target if local else url_for("dashboard.index"))
        else:
            _failures[client].append(now)
            error, status = "Wrong password.", 401
    return render_template("login.html", error=error, title="Log in"), status


@bp.post("/logout")
def logout() -> Any:
    session.clear()
    return redirect(url_for("auth.login"))
