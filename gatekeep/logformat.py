"""
Log output formats: twistd's human-readable text (the default) or JSON lines.

``--log-format json`` writes one JSON object per line (not Twisted's own
``jsonFileLogObserver``, whose record separators and serialised internals log
shippers do not expect). Each line has ``time``, ``level``, ``namespace`` and
the formatted ``message``, plus the event's own fields where they are plain
data: a connection's final line therefore carries ``client``, ``listener``,
``protocol``, ``facts``, ``route``, ``backend``, ``bytes_in``, ``bytes_out``,
``duration``, ``close_reason`` and ``outcome`` by name.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    eventAsText,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python.logfile import LogFile
from zope.interface import implementer

__all__ = [
    "FORMATS",
    "PREFORMATTED",
    "CachedTime",
    "event_as_json",
    "json_observer",
    "observer_for",
    "plain_fields",
    "text_observer",
]

FORMATS = ("text", "json")

#: The format of an event whose message was formatted by its emitter (the connection line).
PREFORMATTED = "{log_text}"


_JSON_SCALARS = (str, int, float, bool, type(None))
# Keys that are presentation for the text line, or legacy-log internals.
_NOT_FIELDS = frozenset({"format", "message", "system", "facts_text", "isError"})


def _plain(value: object) -> Any:
    """``value`` if it is JSON data (tuples become lists), else ``_SKIP``."""
    if isinstance(value, _JSON_SCALARS):
        return value
    if isinstance(value, list | tuple):
        items = [_plain(v) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else items
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) for k in value):
            return _SKIP
        items_d = {k: _plain(v) for k, v in value.items()}
        return _SKIP if any(v is _SKIP for v in items_d.values()) else items_d
    return _SKIP


_SKIP = object()


class JsonTime:
    """
    A JSON line's ``time``: UTC with milliseconds, ``2026-11-28T04:02:58.113Z``, exactly
    what ``datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")`` gives
    (with ``Z``), with the date and time of day formatted once per second.
    """

    def __init__(self) -> None:
        self._cached: tuple[float, str] = (math.nan, "")

    def __call__(self, when: float) -> str:
        if not 0.0 <= when < 1e11:  # not a time this cache is exact for
            return (datetime.fromtimestamp(when, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"))
        second = math.floor(when)
        # As datetime: microseconds rounded half to even from the exact fraction.
        micro = round((when - second) * 1e6)
        if micro >= 1_000_000:
            second, micro = second + 1, micro - 1_000_000
        cached_second, text = self._cached  # one read: other threads may log too
        if cached_second != second:
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._cached = (second, text)
        return f"{text}.{micro // 1000:03d}Z"


_json_time = JsonTime()
_encode = json.JSONEncoder(ensure_ascii=False, default=str).encode


def event_as_json(event: LogEvent, worker: int | None = None) -> str:
    """
    One log event as a single line of JSON (with its newline); a worker's events
    end with ``"worker": N``.
    """
    level = event.get("log_level")
    text = event.get("log_text")
    if type(text) is not str or event.get("log_format") != PREFORMATTED:
        text = formatEvent(event)
    out: dict[str, Any] = {
        "time": _json_time(event.get("log_time") or 0.0),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "message": text,
    }
    if "log_failure" in event:
        out["traceback"] = eventAsText(event, includeTimestamp=False,
                                       includeSystem=False).split("\n", 1)[-1]
    for key, value in plain_fields(event).items():
        out.setdefault(key, value)
    if worker is not None:
        out["worker"] = worker
    return _encode(out) + "\n"


def plain_fields(event: LogEvent) -> dict[str, Any]:
    """The event's own fields that are plain JSON data (not ``log_*`` internals)."""
    out: dict[str, Any] = {}
    for key, value in event.items():
        if key.startswith("log_") or key in _NOT_FIELDS:
            continue
        shown = _plain(value)
        if shown is not _SKIP:
            out[key] = shown
    return out


class CachedTime:
    """
    twistd's text-log timestamp (``formatTime`` with its RFC 3339 format), formatted
    once per second: every line of the same second shares the text. The format has
    whole seconds and the local offset is that of the second, so the text is exactly
    what ``formatTime`` returns; it just skips the time-zone and ``strftime`` work
    that otherwise costs every connection line.
    """

    def __init__(self) -> None:
        self._second: int | None = None
        self._text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when // 1)
        if second != self._second:
            self._text = formatTime(second)
            self._second = second
        return self._text


def _system(event: LogEvent) -> str:
    """The ``[system]`` part of a classic log line, as twisted.logger writes it."""
    system = event.get("log_system")
    if system is None:
        level = event.get("log_level")
        return f"{event.get('log_namespace', '-')}#{level.name if level is not None else '-'}"
    try:
        return str(system)
    except Exception:  # noqa: BLE001 - as twisted.logger: never fail to log
        return "UNFORMATTABLE"


class _Batched:
    """
    A log destination whose lines wait for the end of the reactor's turn
    (:class:`gatekeep.logbatch.LineBatch`); ``FileLogObserver`` flushes after every
    line, which here leaves them waiting.
    """

    def __init__(self, output: IO[str], reactor: Any) -> None:
        from gatekeep.logbatch import LineBatch

        self._output = output
        self.batch = LineBatch(self._write_now)
        self.batch.start(reactor)

    def _write_now(self, text: str) -> None:
        self._output.write(text)
        self._output.flush()

    def write(self, text: str) -> None:
        self.batch.add(text)

    def flush(self) -> None:
        if not self.batch.active:
            self._output.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._output, name)


@implementer(ILogObserver)
class TextObserver:
    """
    twisted's ``textFileLogObserver``, byte for byte, with the timestamp cached per
    second; an event whose message is already text (``log_format`` is
    :data:`PREFORMATTED`, as the connection line) skips the PEP 3101 formatting, and
    its ``[system]`` is made once per namespace and level. Lines go to a
    :class:`_Batched` destination's batch directly (no flush per line).
    """

    def __init__(self, output: IO[str]) -> None:
        self.output = output
        self._when = CachedTime()
        self._systems: dict[tuple[Any, Any], str] = {}
        from gatekeep.logbatch import LineBatch

        batch = getattr(output, "batch", None)  # a _Batched destination's
        self._write: Callable[[str], None] = (
            batch.add if isinstance(batch, LineBatch) else self._flushed)

    def _flushed(self, line: str) -> None:
        self.output.write(line)
        self.output.flush()

    def __call__(self, event: LogEvent) -> None:
        text = event.get("log_text")
        if (type(text) is not str or not text or event.get("log_format") != PREFORMATTED
                or "log_failure" in event):
            line = formatEventAsClassicLogText(event, formatTime=self._when)
            if line:
                self._write(line)
            return
        namespace = event.get("log_namespace")
        if event.get("log_system") is None and type(namespace) is str:
            key = (namespace, event.get("log_level"))
            system = self._systems.get(key)
            if system is None:
                system = self._systems[key] = _system(event)
        else:
            system = _system(event)
        line = f"{self._when(event.get('log_time'))} [{system}] {text}"
        if "\n" in line:
            line = line.replace("\n", "\n\t")
        self._write(line + "\n")


def text_observer(output: IO[str]) -> ILogObserver:
    """The text format's observer (see :class:`TextObserver`)."""
    return TextObserver(output)


def _rotate_on_sigusr1(output: LogFile) -> None:
    """As twistd does for its own log file: SIGUSR1 rotates it (unless handled already)."""
    import signal

    if signal.getsignal(signal.SIGUSR1):
        return

    def rotate(signum: int, frame: Any) -> None:
        from twisted.internet import reactor

        reactor.callFromThread(output.rotate)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, rotate)


def json_observer(output: IO[str]) -> ILogObserver:
    return FileLogObserver(output, event_as_json)


def observer_for(log_format: str, logfile: str | None, nodaemon: bool,
                 reactor: Any = None) -> ILogObserver:
    """
    The observer twistd should start with: the same destination twistd would use
    (stdout with ``-n`` and no ``--logfile``, or ``--logfile``), in our format. With
    gatekeep's event loop as ``reactor``, a turn's lines are written together.
    """
    output: IO[str]
    if logfile == "-" or (nodaemon and not logfile):
        output = sys.stdout
    else:
        rotating = LogFile.fromFullPath(logfile or "twistd.log")
        _rotate_on_sigusr1(rotating)
        output = rotating
    if reactor is not None:
        output = _Batched(output, reactor)  # type: ignore[assignment]
    if log_format == "json":
        return json_observer(output)
    return text_observer(output)
