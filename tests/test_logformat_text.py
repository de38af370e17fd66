"""The text log's cached timestamp writes exactly what twistd's text observer writes."""

from __future__ import annotations

import io
import time

import pytest
from twisted.logger import LogLevel, formatTime, textFileLogObserver

from gatekeep.logformat import PREFORMATTED, CachedTime, observer_for


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


def test_preformatted_lines_match_twisted(monkeypatch: pytest.MonkeyPatch) -> None:
    # The connection line's event ("{log_text}") is written without PEP 3101 formatting:
    # still exactly textFileLogObserver's line, whatever the system, level and text.
    from twisted.python.failure import Failure

    ours, theirs = io.StringIO(), io.StringIO()
    monkeypatch.setattr("sys.stdout", ours)
    mine = observer_for("text", "-", nodaemon=True)
    reference = textFileLogObserver(theirs)
    now = time.time()
    try:
        raise ValueError("boom")
    except ValueError:
        failure = Failure()
    events = [
        {"log_format": PREFORMATTED, "log_text": "127.0.0.1:5 l http route=r close=done",
         "log_time": now, "log_namespace": "gatekeep.connection", "log_level": LogLevel.info},
        {"log_format": PREFORMATTED, "log_text": "a {brace} and\nnewline", "log_time": now,
         "log_system": "worker-1"},
        {"log_format": PREFORMATTED, "log_text": "no level", "log_time": None},
        {"log_format": PREFORMATTED, "log_text": "", "log_time": now},
        {"log_format": PREFORMATTED, "log_text": 42, "log_time": now},
        {"log_format": PREFORMATTED, "log_text": "failed", "log_failure": failure,
         "log_time": now},
        {"log_format": "other {log_text}", "log_text": "x", "log_time": now},
    ]
    for event in events:
        mine(dict(event))
        reference(dict(event))
    assert ours.getvalue() == theirs.getvalue()
    assert "127.0.0.1:5 l http route=r close=done\n" in ours.getvalue()


def test_preformatted_skips_pep3101(monkeypatch: pytest.MonkeyPatch) -> None:
    import gatekeep.logformat as logformat

    def fail(*args: object, **kwargs: object) -> str:
        raise AssertionError("formatted through twisted.logger")

    monkeypatch.setattr(logformat, "formatEventAsClassicLogText", fail)
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    observer_for("text", "-", nodaemon=True)(
        {"log_format": PREFORMATTED, "log_text": "line", "log_time": 1e9,
         "log_namespace": "n", "log_level": LogLevel.info})
    assert out.getvalue() == f"{formatTime(1e9)} [n#info] line\n"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_twistd_uses_gatekeep_observer(log_format: str, tmp_path: object) -> None:
    from twisted.logger import FileLogObserver, ILogObserver
    from zope.interface.verify import verifyObject

    from gatekeep.logformat import TextObserver
    from gatekeep.tap import Options, _log_observer

    options = Options()
    options.parseOptions(["--log-format", log_format])
    options.parent = {"nodaemon": True, "logfile": None, "syslog": False}  # type: ignore[assignment]
    observer = _log_observer(options)
    assert isinstance(observer, TextObserver if log_format == "text" else FileLogObserver)
    verifyObject(ILogObserver, observer)
    options.parent = {"nodaemon": True, "logfile": None, "syslog": True}  # type: ignore[assignment]
    assert _log_observer(options) is None  # twistd's syslog observer
