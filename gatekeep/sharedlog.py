"""
The log of a ``workers = N`` gateway: one destination that the parent and every
worker write to, each line whole.

The parent opens the destination twistd would use: stdout with ``-n`` and no
``--logfile``, else the ``--logfile`` (default ``twistd.log``). Each worker inherits
it as its own stdout and writes its own lines there, formatted as the parent would
(text or JSON lines, with ``worker-N`` in the text line's system and ``"worker": N``
in JSON), whole lines in one ``write()`` per turn of its event loop
(:mod:`gatekeep.logbatch`). Nothing is relayed through the parent.

Lines never split or overwrite each other: a log file is opened with ``O_APPEND`` by
every process, so each ``write()`` lands whole at the end; a pipe takes writes of up
to ``PIPE_BUF`` (4 KiB) whole, which holds every line but long tracebacks.

Only the parent rotates a log file, as twistd does: when it reaches 1 MB (looked at
five times a second and before each of the parent's own lines) or on ``SIGUSR1``. It then
tells each worker, over the worker's stdin pipe, to open the file again by name;
lines a worker writes in between end, whole, in the file just rotated.
"""

from __future__ import annotations

import contextlib
import os
import select
import sys
from collections.abc import Callable
from typing import IO, Any

import attrs
from twisted.logger import ILogObserver, LogEvent, eventAsText
from twisted.python.logfile import LogFile
from zope.interface import implementer

from gatekeep.logbatch import LineBatch
from gatekeep.logformat import (
    PREFORMATTED,
    CachedTime,
    event_as_json,
    json_observer,
    text_observer,
)

__all__ = ["REOPEN", "SharedLog", "SharedLogFile", "WorkerLog", "shared_log", "worker_text"]

#: What the parent writes to a worker's stdin to make it open the log file again.
REOPEN = b"R"


class SharedLogFile(LogFile):
    """
    twistd's rotating log file, opened for appending and rotated on the size of the
    file itself (which the workers' lines grow), not on what this process wrote.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        #: Called after each rotation that opened a new file.
        self.rotated: list[Callable[[], None]] = []
        super().__init__(*args, **kwargs)

    def _openFile(self) -> None:
        self.closed = False
        if self.defaultMode is not None and not os.path.exists(self.path):
            old_umask = os.umask(0o777)  # as twistd: create it with no permissions first
            try:
                self._file = open(self.path, "ab", 0)  # noqa: SIM115 - kept open
            finally:
                os.umask(old_umask)
        else:
            self._file = open(self.path, "ab", 0)  # noqa: SIM115 - kept open
        if self.defaultMode is not None:
            with contextlib.suppress(OSError):  # as twistd: e.g. /dev/null
                os.chmod(self.path, self.defaultMode)
        self.size = self.current_size()

    def fileno(self) -> int:
        return self._file.fileno()

    def current_size(self) -> int:
        return os.fstat(self._file.fileno()).st_size

    def shouldRotate(self) -> bool:
        return bool(self.rotateLength) and self.current_size() >= self.rotateLength

    def rotate(self) -> None:
        before = os.fstat(self._file.fileno())
        super().rotate()  # does nothing when the directory or file is not writable
        after = os.fstat(self._file.fileno())
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            for callback in list(self.rotated):
                callback()


@attrs.define
class SharedLog:
    """The parent's log destination, which its workers inherit."""

    #: ``text`` or ``json``.
    log_format: str
    #: What the parent's observer writes to.
    output: IO[str] | SharedLogFile
    #: The log file's absolute path; ``None`` for stdout (never rotated).
    path: str | None
    observer: ILogObserver

    def fileno(self) -> int:
        return self.output.fileno()

    def check_rotation(self) -> None:
        """Rotate the file if it has grown past its limit."""
        if isinstance(self.output, SharedLogFile) and self.output.shouldRotate():
            self.output.rotate()

    def rotate(self) -> None:
        if isinstance(self.output, SharedLogFile):
            self.output.rotate()

    def on_rotation(self, callback: Callable[[], None]) -> None:
        if isinstance(self.output, SharedLogFile):
            self.output.rotated.append(callback)


def shared_log(log_format: str, logfile: str | None, nodaemon: bool) -> SharedLog:
    """
    The destination twistd would write to (as :func:`gatekeep.logformat.observer_for`),
    opened so that workers can write to it too.
    """
    output: IO[str]
    path: str | None = None
    if logfile == "-" or (nodaemon and not logfile):
        output = sys.stdout
    else:
        log_file = SharedLogFile.fromFullPath(logfile or "twistd.log")
        output, path = log_file, log_file.path
    observer = json_observer(output) if log_format == "json" else text_observer(output)
    return SharedLog(log_format, output, path, observer)


def worker_text(event: LogEvent, index: int, when: Callable[[float | None], str]) -> str | None:
    """
    A worker's event as the text line the parent's text observer writes for it:
    twistd's ``TIME [NAMESPACE#LEVEL worker-N] MESSAGE``, more lines indented.
    """
    level = event.get("log_level")
    text = event.get("log_text")
    if (type(text) is not str or event.get("log_format") != PREFORMATTED
            or "log_failure" in event):
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
    if not text:
        return None
    system = f"{event.get('log_namespace', '-')}#{level.name if level else 'info'}"
    line = f"{when(event.get('log_time'))} [{system} worker-{index}] {text}"
    return line.replace("\n", "\n\t") + "\n"


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: one ``write()`` unless the destination is full."""
    while data:
        try:
            written = os.write(fd, data)
        except BlockingIOError:
            # Someone made the shared descriptor non-blocking: wait as a blocking
            # write would.
            waiting = select.poll()
            waiting.register(fd, select.POLLOUT)
            waiting.poll()
            continue
        except InterruptedError:
            continue
        data = data[written:]


@implementer(ILogObserver)
class WorkerLog:
    """
    A worker's log observer: each event as one line, written to the shared
    destination (the worker's stdout, inherited from the parent) in whole lines, one
    ``write()`` per turn of the reactor (:mod:`gatekeep.logbatch`).
    """

    def __init__(self, index: int, log_format: str, path: str | None, fd: int = 1) -> None:
        self.index = index
        self.path = path
        self.fd = fd
        self._when = CachedTime()
        self._format: Callable[[LogEvent], str | None] = (
            self._json if log_format == "json" else self._text)
        #: Lines wait for the end of the reactor's turn once the worker starts it.
        self.batch = LineBatch(self._write_now)

    def _text(self, event: LogEvent) -> str | None:
        return worker_text(event, self.index, self._when)

    def _json(self, event: LogEvent) -> str | None:
        return event_as_json(event, worker=self.index)

    def __call__(self, event: LogEvent) -> None:
        line = self._format(event)
        if line:
            self.batch.add(line)

    def _write_now(self, text: str) -> None:
        _write_all(self.fd, text.encode("utf-8"))

    def reopen(self) -> None:
        """Follow a rotation: write to the file now at the log's path."""
        if self.path is None:
            return
        self.batch.drain()  # what was logged before the rotation goes to the old file
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o644)
        except OSError as error:
            # Keep writing to the rotated file rather than losing lines.
            from twisted.logger import Logger

            Logger().error("cannot open the log {path} again after its rotation: {why}",
                           path=self.path, why=error.strerror)
            return
        try:
            os.dup2(fd, self.fd, inheritable=self.fd <= 2)
        finally:
            os.close(fd)
