"""
The open connections of the whole process, across reloads.

A reload replaces a listener's runtime but its connections live on with the old
one; a graceful stop must still find them all to wait for them (and, past the
deadline, close them). So one tracker outlives every config.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gatekeep.config.units import format_duration

__all__ = ["ConnectionTracker"]

log = Logger()

#: Seconds a stop waits, past the drain deadline, for the aborted connections to end.
ABORT_GRACE = 1.0


class ConnectionTracker:
    """Counts open connections per listener and drains them on stop."""

    def __init__(self) -> None:
        self._open: dict[Any, str] = {}
        self._by_listener: Counter[str] = Counter()
        self.total_accepted: Counter[str] = Counter()
        self._drained: list[defer.Deferred[int]] = []

    def opened(self, listener: str, protocol: Any) -> None:
        self._open[protocol] = listener
        self._by_listener[listener] += 1
        self.total_accepted[listener] += 1

    def closed(self, protocol: Any) -> None:
        listener = self._open.pop(protocol, None)
        if listener is None:
            return
        self._by_listener[listener] -= 1
        if not self._open:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(0)

    def count(self, listener: str | None = None) -> int:
        if listener is None:
            return len(self._open)
        return self._by_listener[listener]

    def drain(self, timeout: float, clock: Any) -> defer.Deferred[int]:
        """
        Fire when no connection is open, or after ``timeout`` seconds, having then
        aborted what was left. The result is how many were aborted.
        """
        if not self._open:
            return defer.succeed(0)
        log.info("waiting up to {timeout}s for {count} open connection(s) to finish",
                 timeout=timeout, count=len(self._open))
        done: defer.Deferred[int] = defer.Deferred()
        self._drained.append(done)
        timer: IDelayedCall = clock.callLater(timeout, self._abort_all, done, timeout, clock)

        def stop_timer(result: int) -> int:
            if timer.active():
                timer.cancel()
            return result

        return done.addCallback(stop_timer)

    def _abort_all(self, done: defer.Deferred[int], timeout: float, clock: Any) -> None:
        left = list(self._open)
        # Each connection's line says why it ended (as an idle_timeout's does), not
        # "client reset", which the abort would otherwise make of it.
        reason = f"drain_timeout ({format_duration(timeout)}) passed"
        log.warn("drain deadline passed: closing {count} connection(s)", count=len(left))
        if done in self._drained:
            self._drained.remove(done)
        for protocol in left:
            record = getattr(protocol, "record", None)
            if record is not None:
                record.close(reason)
            transport = getattr(protocol, "transport", None)
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            elif transport is not None:
                transport.loseConnection()
        if not self._open:
            done.callback(len(left))
            return
        # Twisted's abortConnection ends a connection on the reactor's next turn, and
        # its log line and metrics come then: the stop waits for that (a little),
        # or the lines of the very connections the deadline closed would be lost.
        ended: defer.Deferred[int] = defer.Deferred()
        self._drained.append(ended)

        def give_up() -> None:
            if ended in self._drained:
                self._drained.remove(ended)
                ended.callback(0)

        grace = clock.callLater(ABORT_GRACE, give_up)

        def finish(_: int) -> None:
            if grace.active():
                grace.cancel()
            done.callback(len(left))

        ended.addCallback(finish)
