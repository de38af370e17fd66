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

__all__ = ["ConnectionTracker"]

log = Logger()


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
        timer: IDelayedCall = clock.callLater(timeout, self._abort_all, done)

        def stop_timer(result: int) -> int:
            if timer.active():
                timer.cancel()
            return result

        return done.addCallback(stop_timer)

    def _abort_all(self, done: defer.Deferred[int]) -> None:
        left = list(self._open)
        log.warn("drain deadline passed: closing {count} connection(s)", count=len(left))
        if done in self._drained:
            self._drained.remove(done)
        for protocol in left:
            transport = getattr(protocol, "transport", None)
            abort = getattr(transport, "abortConnection", None)
            if abort is not None:
                abort()
            elif transport is not None:
                transport.loseConnection()
        done.callback(len(left))
