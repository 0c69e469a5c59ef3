"""Server-side sessions: the cookie holds only a random id; what a session knows (logged in, its CSRF token,
the wizard's choices, flashed messages) stays on the router, so a session can be revoked.

- Logged-in sessions are kept in the UI's state directory (<state_dir>/webui/webui-sessions.json, 0600),
  so they survive the web UI's restart on a config reload; the file holds SHA-256 digests of the ids, never
  the ids themselves.
  Anonymous sessions (a login form's CSRF token) live in memory only: nobody can wear out the flash card or
  push the admin's session out by loading the login page many times.
- A session ends on logout, when the admin password is set or changed (every session), after
  IDLE_LIFETIME_S without a request and ABSOLUTE_LIFETIME_S after login, whatever happens.
- At most MAX_SESSIONS are kept: a new one evicts the least recently used anonymous session first
  (counted in `evicted`, shown by /metrics as `quicether_dropped_total{area="web_session"}`).
- Logging in gets a new id (`rotate`): an id known before login (fixation) is worthless after it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Request, Response
from flask.sessions import SessionInterface, SessionMixin
from werkzeug.datastructures import CallbackDict

from quicether import atomic, setup_code

log = logging.getLogger("quicether-webui")
SESSIONS_FILE = setup_code.SESSIONS_FILE
IDLE_LIFETIME_S = 30 * 60.0
ABSOLUTE_LIFETIME_S = 12 * 3600.0
MAX_SESSIONS = 64
# How stale the stored "last seen" time of a logged-in session may get before it is written again: the
# dashboard polls every second, and each request need not be a write to the flash card.
SEEN_WRITE_INTERVAL_S = 60.0


class ServerSession(CallbackDict[str, Any], SessionMixin):
    """A session's data; `sid` is None until it is first saved."""

    def __init__(self, data: dict[str, Any] | None = None, sid: str | None = None) -> None:
        def on_update(_self: CallbackDict[str, Any]) -> None:
            self.modified = True

        super().__init__(data or {}, on_update)
        self.sid = sid
        self.modified = False
        self.rotate = False


def rotate(session: SessionMixin) -> None:
    """Gives `session` a new id when it is saved (call it when the session logs in)."""
    if isinstance(session, ServerSession):
        session.rotate = True


@dataclass
class _Record:
    data: dict[str, Any]
    created: float
    seen: float
    seen_stored: float

    @property
    def admin(self) -> bool:
        return bool(self.data.get("admin"))


def _digest(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class SessionStore:
    """The sessions by digest of their id; thread-safe (waitress serves requests from several threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: dict[str, _Record] = {}
        # Sessions evicted for MAX_SESSIONS, anonymous and logged in (expired ones are not counted).
        self.evicted_anonymous = 0
        self.evicted_logged_in = 0
        self._load()

    def _load(self) -> None:
        try:
            stored = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:  # the next save replaces it
            log.warning("stored sessions %s cannot be read (%s: %s): starting without them (the admin logs in"
                        " again)", self.path, type(exc).__name__, exc)
            return
        for digest, item in stored.items() if isinstance(stored, dict) else []:
            try:
                record = _Record(dict(item["data"]), float(item["created"]), float(item["seen"]), float(item["seen"]))
            except (KeyError, TypeError, ValueError):
                continue
            self._records[str(digest)] = record

    def _save_locked(self) -> None:
        stored = {digest: {"data": r.data, "created": r.created, "seen": r.seen}
                  for digest, r in self._records.items() if r.admin}
        atomic.write_private(self.path, json.dumps(stored))
        for record in self._records.values():
            record.seen_stored = record.seen

    @staticmethod
    def _expired(record: _Record, now: float) -> bool:
        return now - record.seen > IDLE_LIFETIME_S or now - record.created > ABSOLUTE_LIFETIME_S or now < record.created

    def get(self, sid: str, now: float) -> dict[str, Any] | None:
        """The data of a live session (and it counts as used now), or None."""
        digest = _digest(sid)
        with self._lock:
            record = self._records.get(digest)
            if record is None:
                return None
            if self._expired(record, now):
                del self._records[digest]
                if record.admin:
                    self._save_locked()
                return None
            record.seen = now
            if record.admin and now - record.seen_stored > SEEN_WRITE_INTERVAL_S:
                self._save_locked()
            return dict(record.data)

    def put(self, sid: str | None, data: dict[str, Any], now: float) -> str:
        """Stores `data` under `sid` (a new id if None, or if `sid` is not live); returns the id."""
        with self._lock:
            old = self._records.get(_digest(sid)) if sid else None
            if sid is None or old is None:
                sid = secrets.token_urlsafe(32)
                self._make_room_locked(now)
            record = _Record(dict(data), old.created if old else now, now, old.seen_stored if old else 0.0)
            self._records[_digest(sid)] = record
            if record.admin or (old is not None and old.admin):
                self._save_locked()
            return sid

    def delete(self, sid: str) -> None:
        with self._lock:
            record = self._records.pop(_digest(sid), None)
            if record is not None and record.admin:
                self._save_locked()

    def revoke_all(self) -> None:
        """Ends every session (the admin password was set or changed)."""
        with self._lock:
            self._records.clear()
            self._save_locked()

    def _make_room_locked(self, now: float) -> None:
        for digest in [d for d, r in self._records.items() if self._expired(r, now)]:
            del self._records[digest]
        while len(self._records) >= MAX_SESSIONS:
            # Anonymous sessions go first, least recently used first; logged-in ones only if all are.
            victim = min(self._records, key=lambda d: (self._records[d].admin, self._records[d].seen))
            if self._records.pop(victim).admin:
                self.evicted_logged_in += 1
                self._save_locked()
            else:
                self.evicted_anonymous += 1

    def __len__(self) -> int:
        return len(self._records)

    def counters(self) -> dict[str, int]:
        """What /metrics shows of the sessions (`quicether.metrics` reads the evicted ones as drops)."""
        with self._lock:
            return {"sessions": len(self._records), "sessions_evicted_anonymous": self.evicted_anonymous,
                    "sessions_evicted_logged_in": self.evicted_logged_in}


class ServerSessionInterface(SessionInterface):
    """Flask's session, backed by a SessionStore; the cookie is HttpOnly, SameSite=Strict and lasts as long
    as the browser runs (the server decides when the session ends)."""

    def __init__(self, store: SessionStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    def open_session(self, app: Flask, request: Request) -> ServerSession:
        sid = request.cookies.get(self.get_cookie_name(app))
        data = self.store.get(sid, self.clock()) if sid else None
        return ServerSession(data, sid) if data is not None else ServerSession()

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        assert isinstance(session, ServerSession)
        name, path = self.get_cookie_name(app), self.get_cookie_path(app)
        if session.rotate and session.sid is not None:
            self.store.delete(session.sid)
            session.sid = None
        if not session:
            if session.sid is not None:  # cleared (logout): the id must never work again
                self.store.delete(session.sid)
                response.delete_cookie(name, path=path, httponly=True, samesite="Strict")
            return
        if session.sid is not None and not session.modified:
            return
        sid = self.store.put(session.sid, dict(session), self.clock())
        if sid != session.sid:
            response.set_cookie(name, sid, path=path, httponly=True, samesite="Strict",
                                secure=self.get_cookie_secure(app))
        response.vary.add("Cookie")
