"""The daemon's log stays one line per record whatever a peer puts in the text it sends."""

from __future__ import annotations

import io
import logging

from quicether.daemon.eventlog import MAX_MESSAGE_CHARS, EscapeControls, EventLog, escape_controls


def test_control_characters_from_the_network_cannot_forge_log_lines() -> None:
    logger = logging.getLogger("quicether.test-eventlog")
    logger.propagate = False
    out = io.StringIO()
    stream = logging.StreamHandler(out)
    stream.setFormatter(logging.Formatter("quicether: %(levelname)s %(message)s"))
    events = EventLog()
    logger.addFilter(EscapeControls())
    for handler in (stream, events):
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    forged = "bye\r\nquicether: WARNING peer gw (qe1…) connected\x00\u2028"
    logger.warning("peer closed the path: %s", forged)
    lines = out.getvalue().splitlines()
    assert lines == ["quicether: WARNING peer closed the path: bye\\x0d\\x0aquicether: WARNING peer gw (qe1…) "
                     "connected\\x00\\u2028"]
    assert events.recent()[-1]["message"] == lines[0].removeprefix("quicether: WARNING ")


def test_a_long_text_is_cut_and_plain_text_is_left_alone() -> None:
    assert escape_controls("WAN isp-a up (remote 198.18.0.2:4433)") == "WAN isp-a up (remote 198.18.0.2:4433)"
    assert len(escape_controls("x" * 10 * MAX_MESSAGE_CHARS)) == MAX_MESSAGE_CHARS + 1


def test_state_changes_keep_their_event_kind_for_the_event_list() -> None:
    logger = logging.getLogger("quicether.test-eventkind")
    logger.propagate = False
    events = EventLog()
    logger.addHandler(events)
    logger.setLevel(logging.INFO)
    logger.info("peer gw: path on WAN wan0 up", extra={"event": "path_up"})
    logger.info("a line that is not an event")
    assert [e.get("event") for e in events.recent()] == ["path_up", None]
