"""The recent log, kept in memory for the API (the web UI's events and log panels): the daemon's own log
records, newest last, bounded so a long uptime never grows it."""

from __future__ import annotations

import collections
import logging
from typing import Any

# Enough for an hour of a flapping WAN; older entries are in the system log.
MAX_EVENTS = 500


class EventLog(logging.Handler):
    def __init__(self, capacity: int = MAX_EVENTS) -> None:
        super().__init__(level=logging.INFO)
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=capacity)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append({"time": record.created, "level": record.levelname.lower(),
                             "message": record.getMessage()})

    def recent(self, limit: int = 100) -> list[dict[str, Any]]:
        return list(self.records)[-limit:]
