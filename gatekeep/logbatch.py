"""
Log lines written once per turn of the event loop, not once per line.

Every connection ends with a log line, and a busy gateway ends many connections in
one turn of the reactor: one ``write()`` per line was a system call per connection
(a few microseconds of a short connection's CPU). :class:`LineBatch` keeps the
lines of one turn and writes them together just before the reactor waits for
events again (:func:`gatekeep.eventloop.before_wait`), so a line reaches its file
at most one turn later than it would have, and before gatekeep sleeps.

Writes stay whole lines, and at most :data:`PIPE_BUF` bytes each unless one line
is longer: the destination may be a pipe or a file shared with the workers, where
only writes that size are never interleaved with another process's.

Lines written from another thread, and all lines when the event loop is not
gatekeep's own (``GATEKEEP_EVENTLOOP=twisted``, other reactors) or has stopped,
are written at once, as before.
"""

from __future__ import annotations

import atexit
import select
import threading
from collections.abc import Callable
from typing import Any

from gatekeep.eventloop import before_wait

__all__ = ["PIPE_BUF", "LineBatch"]

#: The size of a write that a pipe takes whole (POSIX guarantees at least 512).
PIPE_BUF = getattr(select, "PIPE_BUF", 512)


class LineBatch:
    """Collects whole lines and hands them to ``write`` in as few calls as it may."""

    def __init__(self, write: Callable[[str], None], limit: int = PIPE_BUF) -> None:
        self._write = write
        self._limit = limit
        self._lines: list[str] = []
        self._size = 0
        self._thread = threading.get_ident()
        #: Whether lines wait for the end of the turn (see :meth:`start`).
        self.active = False

    def start(self, reactor: Any) -> bool:
        """
        Batch from now on if ``reactor`` tells gatekeep when it is about to wait;
        lines are written at once again when it shuts down (and at exit).
        """
        if not before_wait(reactor, self.drain):
            return False
        self.active = True
        reactor.addSystemEventTrigger("after", "shutdown", self.stop)
        atexit.register(self.stop)
        return True

    def stop(self) -> None:
        self.active = False
        self.drain()

    def add(self, line: str) -> None:
        if threading.get_ident() != self._thread:
            self._write(line)  # (draining here would race with the reactor's thread)
            return
        if not self.active:
            self.drain()
            self._write(line)
            return
        if self._size + len(line) > self._limit and self._lines:
            self.drain()
        self._lines.append(line)
        self._size += len(line)

    def drain(self) -> None:
        """Write what is waiting (the reactor calls this before it waits)."""
        if self._lines:
            lines, self._lines, self._size = self._lines, [], 0
            self._write(lines[0] if len(lines) == 1 else "".join(lines))
