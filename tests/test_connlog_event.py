"""The connection line's event is the one ``log.info(PREFORMATTED, ...)`` would emit."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from twisted.logger import Logger, LogLevel

from gatekeep import connlog
from gatekeep.logformat import PREFORMATTED, event_as_json
from gatekeep.values import ConnectionRecord
from tests.helpers import captured_log


def _record() -> ConnectionRecord:
    record = ConnectionRecord("public", "203.0.113.5:4000", 10.0, protocol="tls",
                              facts={"sni": "example.org", "alpn": ("h2",)}, route="web",
                              bytes_in=517, bytes_out=4096)
    record.backend = "tcp:127.0.0.1:8443"
    record.close("done")
    return record


def test_event_matches_logger_info(monkeypatch: pytest.MonkeyPatch) -> None:
    with captured_log("gatekeep.connection") as events:
        connlog.log_connection(_record(), 12.5)
    [ours] = events

    # The reference: the same fields through Logger.info, as the line was emitted before.
    fields = {k: ours[k] for k in ("client", "listener", "protocol", "facts_text", "route",
                                   "backend", "bytes_in", "bytes_out", "duration",
                                   "close_reason")}
    with captured_log("gatekeep.connection") as events:
        connlog.log.info(PREFORMATTED, log_text=ours["log_text"], facts=ours["facts"],
                         outcome=ours["outcome"], **fields)
    [theirs] = events

    assert list(ours) == list(theirs)
    for key in theirs:
        if key != "log_time":
            assert ours[key] == theirs[key], key
    assert isinstance(ours["log_time"], float)
    assert abs(ours["log_time"] - theirs["log_time"]) < 60
    assert ours["log_level"] is LogLevel.info and ours["log_logger"] is connlog.log
    assert ours["outcome"] == "ok"
    assert ours["log_text"] == ("203.0.113.5:4000 public tls sni=example.org alpn=h2 "
                                "route=web backend=tcp:127.0.0.1:8443 in=517 out=4096 "
                                "time=2.500s close=done")
    same_time: dict[str, Any] = dict(ours, log_time=theirs["log_time"])
    assert event_as_json(same_time) == event_as_json(theirs)


def test_goes_to_the_loggers_observer(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []
    observer: Any = seen.append
    monkeypatch.setattr(connlog, "log", Logger(namespace="gatekeep.connection",
                                               observer=observer))
    connlog.log_connection(_record(), 11.0)
    [event] = seen
    assert event["log_namespace"] == "gatekeep.connection"
    assert event["log_logger"] is connlog.log


def test_a_fact_is_bare_only_when_printable_without_space_quote_equals_or_backslash() -> None:
    alphabet = ["a", " ", '"', "=", "\\", "\n", "é", "\x00", "."]
    for size in range(5):
        for letters in itertools.product(alphabet, repeat=size):
            text = "".join(letters)
            bare = bool(text) and text.isprintable() and not set(text) & set(' "=\\')
            assert connlog._show(text) == (text if bare else json.dumps(text)), repr(text)


@pytest.mark.parametrize("facts", [{}, {"sni": None}, {"sni": "example.org", "alpn": ()},
                                   {"host": 'a "quoted" name'}])
@pytest.mark.parametrize(("protocol", "route", "reason"), [
    (None, None, None), ("http", "web", "client closed"), ("tls", "web>inner", "done")])
def test_line_is_what_the_format_says(facts: dict[str, Any], protocol: str | None,
                                      route: str | None, reason: str | None) -> None:
    record = ConnectionRecord("public", "[2001:db8::1]:4000", 10.0, protocol=protocol,
                              facts=facts, route=route, bytes_in=5, bytes_out=7)
    if reason is not None:
        record.close(reason)
    with captured_log("gatekeep.connection") as events:
        connlog.log_connection(record, 9.0)  # (a clock step back: time 0)
    [event] = events
    assert event["log_text"] == connlog._FORMAT.format_map(event)
    assert event["duration"] == 0.0
