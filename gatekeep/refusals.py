"""
Refused connections: counted always, logged at a bounded rate.

A flood of refused connections (a scan, a connection-limit hit, a slowloris) must
not fill the disk, so refusals get no per-connection log line. Each listener logs
at most :data:`LINES_PER_WINDOW` refusals per :data:`WINDOW` seconds in full; after
that, one summary line per window says how many more there were, and why.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.logger import Logger

from gatekeep import metrics

__all__ = ["LINES_PER_WINDOW", "WINDOW", "RefusalLog"]

log = Logger(namespace="gatekeep.refusal")

LINES_PER_WINDOW = 10
WINDOW = 10.0


class RefusalLog:
    """The refusals of one listener (outlives reloads, like its counters)."""

    def __init__(self, listener: str, clock: Any, lines: int = LINES_PER_WINDOW,
                 window: float = WINDOW) -> None:
        self.listener = listener
        self.clock = clock
        self.lines = lines
        self.window = window
        self._started = -window
        self._logged = 0
        self._suppressed: Counter[str] = Counter()
        self._summary: Any = None

    def refused(self, client: str, reason: str, why: str) -> None:
        """
        Count one refusal (``reason`` is the metric label: a fixed word or a rule's
        name, never the client's bytes) and log it unless this window is full.
        """
        metrics.refused(self.listener, reason)
        now = self.clock.seconds()
        if now - self._started >= self.window:
            self._flush()
            self._started = now
            self._logged = 0
        if self._logged < self.lines:
            self._logged += 1
            log.info("refused {client} on listener {listener}: {why} (reason={reason})",
                     client=client, listener=self.listener, why=why, reason=reason)
        else:
            self._suppressed[reason] += 1
            if self._summary is None:
                # The summary comes at the window's end even if the flood stops.
                delay = max(0.0, self._started + self.window - now)
                self._summary = self.clock.callLater(delay, self._window_ended)

    def _window_ended(self) -> None:
        self._summary = None
        self._flush()

    def _flush(self) -> None:
        if not self._suppressed:
            return
        total = sum(self._suppressed.values())
        reasons = ", ".join(f"{reason} {count}" for reason, count
                            in self._suppressed.most_common())
        log.warn("{count} more refusal(s) on listener {listener} not logged one by one in "
                 "{window:g}s ({reasons}); gatekeep_refusals_total has them all",
                 count=total, listener=self.listener, window=self.window, reasons=reasons)
        self._suppressed.clear()

    def flush(self) -> None:
        """Log the summary of what is suppressed so far (on stop)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        self._flush()
