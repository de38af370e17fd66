"""The JSON log's cached time and preformatted message write exactly what they replaced."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.logger import LogEvent, LogLevel, eventAsText, formatEvent
from twisted.python.failure import Failure

from gatekeep.logformat import JsonTime, event_as_json, plain_fields


def _reference_time(when: float) -> str:
    return (datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"))


def _reference(event: LogEvent) -> str:
    """event_as_json as it was: datetime per line, formatEvent, json.dumps."""
    level = event.get("log_level")
    out: dict[str, Any] = {
        "time": _reference_time(event.get("log_time") or 0.0),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": formatEvent(event),
    }
    if "log_failure" in event:
        out["traceback"] = eventAsText(event, includeTimestamp=False,
                                       includeSystem=False).split("\n", 1)[-1]
    for key, value in plain_fields(event).items():
        out.setdefault(key, value)
    return json.dumps(out, ensure_ascii=False, default=str) + "\n"


@settings(max_examples=3000, deadline=None)
@given(st.floats(min_value=0.0, max_value=5e9, allow_nan=False))
def test_json_time_is_datetimes(when: float) -> None:
    assert JsonTime()(when) == _reference_time(when)


def test_json_time_at_the_edges_of_a_second() -> None:
    cached = JsonTime()
    base = float(int(time.time()))
    edges = [0.0, 0.0005, 0.9995, 0.9999994, 0.9999995, 0.9999996, 0.0000005, 0.0000015]
    # The same cache, back and forth across seconds, and times it does not cache.
    for when in [base + e for e in edges] + [base - 1 + e for e in edges] + [0.0, 2e11 + 0.5]:
        assert cached(when) == _reference_time(when), when


def _failure() -> Failure:
    try:
        raise ValueError("no")
    except ValueError:
        return Failure()


def test_json_lines_are_what_they_were() -> None:
    now = time.time()
    events: list[LogEvent] = [
        {"log_format": "{log_text}", "log_text": "127.0.0.1:1 public tls route=web é",
         "log_time": now, "log_namespace": "gatekeep.connection", "log_level": LogLevel.info,
         "facts": {"alpn": ("h2",)}, "bytes_in": 1, "duration": 0.25, "outcome": "ok"},
        {"log_format": "{log_text}", "log_text": 42, "log_time": now + 0.9996},
        {"log_format": "{log_text} and {x}", "log_text": "a", "x": "b", "log_time": now},
        {"log_format": "worker {index} serving", "index": 2, "log_time": now + 1.5,
         "log_level": LogLevel.warn, "log_namespace": "gatekeep.worker", "obj": object()},
        {"log_format": "failed", "log_failure": _failure(), "log_time": now + 2.25,
         "log_level": LogLevel.critical},
        {"log_time": None},
        {},
    ]
    for event in events:
        assert event_as_json(dict(event)) == _reference(dict(event))
