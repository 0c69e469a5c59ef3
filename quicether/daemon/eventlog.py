"""The recent log, kept in memory for the API (the web UI's events and log panels): the daemon's own log
records, newest last, bounded so a long uptime never grows it. And the filter that keeps every log line
one line: text from the network (a peer's close reason, its WAN label) is in many messages, and a CR/LF
in it could forge a whole log line ("quicether: WARNING …") for whoever reads the log."""

from __future__ import annotations

import collections
import logging
import unicodedata
from typing import Any

# Longest message kept: a peer can send a close reason of any length.
MAX_MESSAGE_CHARS = 2000


def escape_controls(text: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`text` with every control or line/paragraph separator character written as an escape (\\x0a,
    \\u2028), and cut to `limit` characters."""
    if len(text) > limit:
        text = text[:limit] + "…"
    return "".join(c if unicodedata.category(c) not in ("Cc", "Zl", "Zp") else
                   (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}") for c in text)


class EscapeControls(logging.Filter):
    """Escapes control characters in each record's message (its arguments merged in): one record, one line.
    Tracebacks attached to a record are formatted separately and keep their lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message or record.args:
            record.msg, record.args = escaped, None
        return True

# Enough for an hour of a flapping WAN; older entries are in the system log.
MAX_EVENTS = 500


class EventLog(logging.Handler):
    def __init__(self, capacity: int = MAX_EVENTS) -> None:
        super().__init__(level=logging.INFO)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        entry = {"time": record.created, "level": record.levelname.lower(), "message": record.getMessage()}
        # A state change the core or the daemon reported as an event (logged with extra={"event": kind}):
        # the dashboard's event list shows these, not every log line.
        kind = getattr(record, "event", None)
        if isinstance(kind, str):
            entry["event"] = kind
        self.records.append(entry)

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.records)[-limit:]
