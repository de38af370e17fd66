"""
A timeout re-armed on every request without a timer per request.

Cancelling a ``callLater`` and making a new one for each request of a kept-alive
connection costs more than the rest of the request's bookkeeping. A
:class:`Deadline` keeps one delayed call per connection: arming it again only notes
the new deadline when the pending call fires no later than that; when the call
fires before the noted deadline it sleeps again for the rest. So a connection
serving requests back to back wakes up once per timeout period, not twice per
request, and the callback still runs no earlier than the deadline last armed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["Deadline"]


class Deadline:
    """One pending timeout, armed and disarmed often, on an injected reactor clock."""

    def __init__(self, reactor: Any, expired: Callable[[], None]) -> None:
        self.reactor = reactor
        self.expired = expired
        #: When :attr:`expired` is due (reactor seconds), or None when disarmed.
        self.due: float | None = None
        self._call: Any = None

    @property
    def armed(self) -> bool:
        return self.due is not None

    def arm(self, seconds: float) -> None:
        """Run :attr:`expired` ``seconds`` from now unless disarmed or armed again first."""
        due = self.reactor.seconds() + seconds
        self.due = due
        call = self._call
        if call is not None:
            if call.getTime() <= due:
                return  # it fires first and sleeps again for the rest
            call.cancel()
        self._call = self.reactor.callLater(seconds, self._fire)

    def disarm(self) -> None:
        """No timeout for now; the pending call (if any) stays, to be re-used."""
        self.due = None

    def cancel(self) -> None:
        """Disarm and drop the pending call (the connection is gone)."""
        self.due = None
        if self._call is not None:
            self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        due = self.due
        if due is None:
            return
        left = due - self.reactor.seconds()
        if left > 0:
            self._call = self.reactor.callLater(left, self._fire)
            return
        self.due = None
        self.expired()
