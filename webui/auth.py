"""The admin account: password hash (scrypt), login with a guessing limit, server-side sessions, CSRF
protection, and where a login may send the browser next.

There is no default password: until the wizard sets one (with the one-time setup code, see
quicether.setup_code), every page leads to the wizard's first step.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, abort, current_app, flash, redirect, render_template, request, session, url_for

from quicether import atomic, setup_code
from webui import sessions
from webui.throttle import FAILURE_WINDOW_S, Throttle

bp = Blueprint("auth", __name__)

PASSWORD_FILE = setup_code.ADMIN_PASSWORD_FILE
MIN_PASSWORD_CHARS = 10
# scrypt cost: ~50 ms and 16 MiB per check on a Raspberry Pi 4, slow enough to make guessing expensive.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# Pages reachable without a session: login itself, the wizard's first step (only before a password
# exists), static files, the health check, and the metrics (they check a session or the admin password
# given by HTTP Basic auth themselves: a Prometheus scraper has no cookie).
PUBLIC_ENDPOINTS = {"auth.login", "static", "healthz", "dashboard.metrics"}


def _state_dir() -> Path:
    return Path(current_app.config["QE_STATE"])


def _password_path() -> Path:
    return setup_code.ui_dir(_state_dir()) / PASSWORD_FILE


def is_set_up() -> bool:
    return setup_code.is_set_up(_state_dir())


def password_problem(password: str, confirm: str) -> str | None:
    if len(password) < MIN_PASSWORD_CHARS:
        return f"The password needs at least {MIN_PASSWORD_CHARS} characters."
    if password != confirm:
        return "The two passwords differ."
    if len(set(password)) < 4:
        return "The password is too repetitive."
    return None


def _session_store() -> sessions.SessionStore:
    store: sessions.SessionStore = current_app.extensions["qe_sessions"]
    return store


def throttle() -> Throttle:
    """The app's guessing limit, shared by the login and the setup code."""
    limit: Throttle = current_app.extensions["qe_throttle"]
    return limit


def set_password(password: str) -> None:
    """Stores the new password's hash and ends every session (whoever was logged in must log in again)."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    record = {"algorithm": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt.hex(),
              "hash": digest.hex()}
    path = _password_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_private(path, json.dumps(record))
    _session_store().revoke_all()


def _read_record(path: Path) -> dict[str, Any]:
    """The stored password record, checked field by field (ValueError saying what is wrong)."""
    try:
        record = json.loads(path.read_text())
    except OSError as exc:
        raise ValueError(f"cannot be read: {exc.strerror or exc}") from None
    except ValueError as exc:  # JSON, or not UTF-8
        raise ValueError(f"is not a password record ({type(exc).__name__}: {exc})") from None
    if not isinstance(record, dict):
        raise ValueError("is not a password record (not a JSON object)")
    for name in ("n", "r", "p"):
        if not isinstance(record.get(name), int) or record[name] < 1:
            raise ValueError(f"is damaged: scrypt parameter {name!r} missing or not a positive whole number")
    for name in ("salt", "hash"):
        value = record.get(name)
        try:
            bytes.fromhex(value if isinstance(value, str) else "?")
        except ValueError:
            raise ValueError(f"is damaged: its {name} is missing or not hexadecimal") from None
    return record


def password_record_problem(state_dir: Path) -> str | None:
    """Why the admin password record cannot be used (naming the file and what to do), or None if it can or
    does not exist yet. A damaged record locks everyone out: it must be said, never taken as 'wrong
    password' nor silently replaced (that would hand the router to whoever reaches the wizard first)."""
    path = setup_code.ui_dir(state_dir) / PASSWORD_FILE
    if not path.exists():
        return None
    try:
        _read_record(path)
    except ValueError as exc:
        return (f"The admin password record {path} {exc}: nobody can log in. Restore it from a backup, or "
                "delete it and run `quicether setup-code` to set a new password with the setup wizard.")
    return None


def check_password(password: str) -> bool:
    try:
        record = _read_record(_password_path())
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(record["salt"]), n=record["n"],
                                r=record["r"], p=record["p"])
        return hmac.compare_digest(digest.hex(), record["hash"])
    except (ValueError, MemoryError):  # MemoryError: scrypt parameters beyond its memory limit
        return False


def limited_check(check: Callable[[], bool]) -> bool | None:
    """Runs a password or setup-code check under the guessing limit: None if this client (or everyone)
    guessed wrong too often lately; the attempt counts as a failure unless `check` says it is right."""
    limit = throttle()
    attempt = limit.attempt(request.remote_addr or "?", time.monotonic())
    if attempt is None:
        return None
    if not check():
        return False
    limit.succeeded(attempt)
    return True


def admin_or_basic_auth() -> bool | None:
    """True for an admin session, or a request carrying the admin password by HTTP Basic auth (any user
    name), under the same guessing limit as the login form; None while that limit holds."""
    if session.get("admin"):
        return True
    given = request.authorization
    if not is_set_up() or given is None or given.type != "basic" or not given.password:
        return False
    password = given.password
    return limited_check(lambda: check_password(password))


LOCKED_OUT = f"Too many wrong guesses. Wait {FAILURE_WINDOW_S:.0f} seconds and try again."


def log_in() -> None:
    """The current session becomes the admin's, under a new id and with a new CSRF token."""
    session.clear()
    sessions.rotate(session)
    session["admin"] = True
    csrf_token()


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
    # Compared as bytes: compare_digest refuses str with non-ASCII characters (a 500 otherwise).
    if not isinstance(expected, str) or not hmac.compare_digest(sent.encode(), expected.encode()):
        abort(400, description="This form expired or did not come from this page. Reload the page and try again.")


def local_target(target: str) -> str | None:
    """`target` if it is a plain path on this site, else None. Browsers drop tabs and newlines anywhere in a
    URL and read a backslash as a slash, so "/%09/evil.example" (a tab) or "/%5Cevil.example" would
    lead to //evil.example (another site); a scheme ("https:", "javascript:") or a host is never local either. Our
    pages' paths have no empty or dot segments, so "//", "/./" and "/../" are refused rather than resolved."""
    if not target.startswith("/") or "\\" in target or any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):
        return None
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or "//" in parts.path or target.startswith("//"):
        return None
    if any(segment in (".", "..") for segment in parts.path.split("/")):
        return None
    return target


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
    store = sessions.SessionStore(setup_code.ui_dir(Path(app.config["QE_STATE"])) / sessions.SESSIONS_FILE)
    app.extensions["qe_sessions"] = store
    app.extensions["qe_throttle"] = Throttle()
    app.session_interface = sessions.ServerSessionInterface(store)
    app.before_request(_guard)
    app.jinja_env.globals["csrf_token"] = csrf_token
    app.jinja_env.globals["min_password_chars"] = MIN_PASSWORD_CHARS

    @app.errorhandler(400)
    def bad_request(error: Any) -> Any:
        return render_template("error.html", message=error.description, title="Refused"), 400


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    if not is_set_up():
        return redirect(url_for("wizard.password"))
    error = password_record_problem(_state_dir())
    if error is not None:  # no password can be right: say why instead of "Wrong password."
        return render_template("login.html", error=error, title="Log in"), 503
    status = 200
    if request.method == "POST":
        password = request.form.get("password", "")
        right = limited_check(lambda: check_password(password))
        if right is None:
            error, status = LOCKED_OUT, 429
        elif right:
            log_in()
            return redirect(local_target(request.args.get("next", "")) or url_for("dashboard.index"))
        else:
            error, status = "Wrong password.", 401
    return render_template("login.html", error=error, title="Log in"), status


@bp.post("/logout")
def logout() -> Any:
    session.clear()  # the server forgets the id: the cookie is worthless, also if it was copied
    return redirect(url_for("auth.login"))


@bp.post("/account/password")
def change_password() -> Any:
    """Settings → admin password: needs the current one (under the guessing limit); ends every session but
    this one, which continues under a new id."""
    current, new = request.form.get("current", ""), request.form.get("password", "")
    right = limited_check(lambda: check_password(current))
    problem = password_problem(new, request.form.get("confirm", "")) if right else None
    if right is None:
        flash(LOCKED_OUT)
    elif not right:
        flash("Password not changed: the current password is wrong.")
    elif problem:
        flash(f"Password not changed: {problem}")
    else:
        set_password(new)
        log_in()
        flash("Password changed. Every other session was logged out.")
    return redirect(url_for("settings.index") + "#password")
