"""The text log's cached timestamp writes exactly what twistd's text observer writes."""

from __future__ import annotations

import io
import time

import pytest
from twisted.logger import LogLevel, formatTime, textFileLogObserver

from gatekeep.logformat import CachedTime, observer_for


def test_cached_time_matches_format_time() -> None:
    cached = CachedTime()
    start = time.time()
    # Across second boundaries, back and forth, and fractions of the same second.
    for when in (start, start + 0.25, start + 1.0, start + 1.999, start, 0.5, 1e9 + 0.1):
        assert cached(when) == formatTime(when)
    assert cached(None) == formatTime(None) == "-"


def test_text_observer_lines_match_twisted(monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = io.StringIO(), io.StringIO()
    # observer_for writes to sys.stdout for "-": a buffer stands in for it.
    monkeypatch.setattr("sys.stdout", ours)
    mine = observer_for("text", "-", nodaemon=True)
    reference = textFileLogObserver(theirs)
    now = time.time()
    events = [
        {"log_format": "connection {n} done", "n": 1, "log_time": now,
         "log_namespace": "gatekeep.connlog", "log_level": LogLevel.info},
        {"log_format": "two\nlines", "log_time": now + 0.5, "log_system": "worker-1"},
        {"log_format": "later", "log_time": now + 3.2, "log_namespace": "x",
         "log_level": LogLevel.warn},
        {"log_format": "no time"},
        {},
    ]
    for event in events:
        mine(dict(event))
        reference(dict(event))
    assert ours.getvalue() == theirs.getvalue()
    assert ours.getvalue().count("\n") == 5
