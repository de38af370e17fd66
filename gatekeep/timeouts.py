"""
``idle_timeout`` and ``max_lifetime``: many deadlines on one timer.

A connection that lives for a day must not cost a Twisted ``DelayedCall`` (and a
place in the reactor's heap) for all that time, and a busy relay must not
re-arm a timer on every read. So all connections of a process share one
:class:`TimerWheel`: deadlines are rounded up to its resolution and kept in
buckets, and one ``DelayedCall`` waits for the earliest bucket.

Idle time is measured from the connection's byte counters, which the chain and
the relay keep anyway: a :class:`Deadline` looks at them every quarter of
``idle_timeout`` (and at least every resolution step), so nothing is done per read,
and a connection is closed between ``idle_timeout`` and 1.25 times that after its
last byte.
"""

from __future__ import annotations

import heapq
import math
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import attrs
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from gatekeep.config.units import format_duration
from gatekeep.values import ConnectionRecord

__all__ = [
    "RESOLUTION",
    "Deadline",
    "DeadlineQueue",
    "Expiring",
    "QueuedDeadline",
    "Timeouts",
    "TimerWheel",
    "deadlines_for",
    "wheel_for",
]

log = Logger()

#: Seconds: deadlines are rounded up to a multiple of this.
RESOLUTION = 0.25


class Expiring(Protocol):
    def expired(self, now: float) -> None: ...


class TimerWheel:
    """Deadlines of many objects, fired by a single ``DelayedCall``."""

    def __init__(self, clock: Any, resolution: float = RESOLUTION) -> None:
        self.clock = clock
        self.resolution = resolution
        self._buckets: dict[int, set[Expiring]] = {}
        self._ticks: list[int] = []
        self._call: IDelayedCall | None = None
        self._call_tick: int | None = None

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def add(self, when: float, item: Expiring) -> int:
        """Call ``item.expired(now)`` at ``when`` (rounded up); returns a handle."""
        tick = math.ceil(when / self.resolution - 1e-9)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
        bucket.add(item)
        if self._call_tick is None or tick < self._call_tick:
            self._schedule()
        return tick

    def remove(self, tick: int, item: Expiring) -> None:
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.discard(item)
            if not bucket:
                del self._buckets[tick]  # its tick leaves the heap when it comes up

    def _schedule(self) -> None:
        while self._ticks and self._ticks[0] not in self._buckets:
            heapq.heappop(self._ticks)
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._call_tick = None
        if not self._ticks:
            return
        tick = self._ticks[0]
        delay = max(0.0, tick * self.resolution - self.clock.seconds())
        self._call_tick = tick
        self._call = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        self._call = self._call_tick = None
        now = self.clock.seconds()
        due = math.floor(now / self.resolution + 1e-9)
        while self._ticks and self._ticks[0] <= due:
            tick = heapq.heappop(self._ticks)
            for item in self._buckets.pop(tick, ()):
                try:
                    item.expired(now)
                except Exception:  # noqa: BLE001 - one connection's bug must not stop the rest
                    log.failure("a connection deadline failed")
        self._schedule()

    def stop(self) -> None:
        """Forget everything (the process is stopping)."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = self._call_tick = None
        self._buckets.clear()
        self._ticks.clear()


_wheels: weakref.WeakKeyDictionary[Any, TimerWheel] = weakref.WeakKeyDictionary()


def wheel_for(clock: Any) -> TimerWheel:
    """The one wheel of ``clock`` (a reactor, or a test's ``Clock``)."""
    wheel = _wheels.get(clock)
    if wheel is None:
        wheel = _wheels[clock] = TimerWheel(clock)
    return wheel


class QueuedDeadline:
    """One deadline of a :class:`DeadlineQueue`; ``cancel`` as for a ``DelayedCall``."""

    __slots__ = ("callback", "queue", "when")

    def __init__(self, queue: DeadlineQueue, when: float, callback: Callable[[], None]) -> None:
        self.queue = queue
        self.when = when
        self.callback: Callable[[], None] | None = callback

    def active(self) -> bool:
        return self.callback is not None

    def cancel(self) -> None:
        if self.callback is not None:
            self.callback = None
            self.queue._cancelled()


class DeadlineQueue:
    """
    Deadlines that all lie ``delay`` after they are set (a listener's
    ``detect_timeout``): first set, first due, so a plain FIFO with one
    ``DelayedCall`` for its head keeps them exact, at a few dozen bytes each
    instead of a ``DelayedCall`` per connection. A cancelled deadline stays queued
    (inert) until its time comes, or until no live one is left.
    """

    def __init__(self, clock: Any, delay: float) -> None:
        self.clock = clock
        self.delay = delay
        self._entries: deque[QueuedDeadline] = deque()
        self._live = 0
        self._call: IDelayedCall | None = None

    def __len__(self) -> int:
        return self._live

    def callLater(self, callback: Callable[[], None]) -> QueuedDeadline:
        """Call ``callback`` ``delay`` seconds from now, unless cancelled."""
        entry = QueuedDeadline(self, self.clock.seconds() + self.delay, callback)
        self._entries.append(entry)
        self._live += 1
        if self._call is None:
            self._call = self.clock.callLater(self.delay, self._fire)
        return entry

    def _cancelled(self) -> None:
        self._live -= 1
        if self._live == 0:
            # Nothing left to wait for: no timer, no inert entries.
            self._entries.clear()
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = None

    def _fire(self) -> None:
        self._call = None
        entries = self._entries
        now = self.clock.seconds()
        while entries and entries[0].when <= now:
            entry = entries.popleft()
            callback, entry.callback = entry.callback, None
            if callback is not None:
                self._live -= 1
                try:
                    callback()
                except Exception:  # noqa: BLE001 - one connection's bug must not stop the rest
                    log.failure("a detect deadline failed")
        while entries and entries[0].callback is None:
            entries.popleft()
        if entries and self._call is None:
            self._call = self.clock.callLater(max(0.0, entries[0].when - now), self._fire)


_queues: weakref.WeakKeyDictionary[Any, dict[float, DeadlineQueue]] = \
    weakref.WeakKeyDictionary()


def deadlines_for(clock: Any, delay: float) -> DeadlineQueue:
    """The one queue of deadlines ``delay`` seconds ahead on ``clock``."""
    queues = _queues.get(clock)
    if queues is None:
        queues = _queues[clock] = {}
    queue = queues.get(delay)
    if queue is None:
        queue = queues[delay] = DeadlineQueue(clock, delay)
    return queue


class Deadline:
    """The idle and lifetime deadlines of one connection."""

    __slots__ = ("_tick", "_total", "idle", "lifetime_at", "quiet_since", "record",
                 "settings", "transport")

    def __init__(self, settings: Timeouts, record: ConnectionRecord, transport: Any,
                 idle: float | None, lifetime: float | None) -> None:
        self.settings = settings
        self.record = record
        self.transport = transport
        self.idle = idle
        self.lifetime_at = record.started + lifetime if lifetime is not None else None
        now = settings.wheel.clock.seconds()
        self.quiet_since = now
        self._total = record.bytes_in + record.bytes_out
        self._tick: int | None = None
        self._arm(now)

    def _arm(self, now: float) -> None:
        candidates = []
        if self.lifetime_at is not None:
            candidates.append(self.lifetime_at)
        if self.idle is not None:
            step = max(self.idle / 4, self.settings.wheel.resolution)
            candidates.append(min(self.quiet_since + self.idle, now + step))
        if candidates:
            self._tick = self.settings.wheel.add(min(candidates), self)

    def expired(self, now: float) -> None:
        self._tick = None
        record = self.record
        if self.lifetime_at is not None and now >= self.lifetime_at - 1e-9:
            lifetime = self.lifetime_at - record.started
            self._end(f"max_lifetime ({format_duration(lifetime)}) reached")
            return
        if self.idle is not None:
            total = record.bytes_in + record.bytes_out
            if total != self._total:
                self._total = total
                self.quiet_since = now
            elif now - self.quiet_since >= self.idle - 1e-9:
                self._end(f"idle_timeout ({format_duration(self.idle)}) passed")
                return
        self._arm(now)

    def _end(self, reason: str) -> None:
        self.record.close(reason)
        transport = self.transport
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()  # a peer that reads nothing must not keep it open
        else:
            transport.loseConnection()

    def stop(self) -> None:
        if self._tick is not None:
            self.settings.wheel.remove(self._tick, self)
            self._tick = None


@attrs.frozen
class Timeouts:
    """A listener's ``idle_timeout`` and ``max_lifetime``, on the process's wheel."""

    wheel: TimerWheel = attrs.field(repr=False)
    idle: float | None = None
    lifetime: float | None = None

    def start(self, record: ConnectionRecord, transport: Any, idle: float | None = None,
              lifetime: float | None = None) -> Deadline | None:
        """Watch a connection; ``idle``/``lifetime`` override the listener's (a route's)."""
        idle = idle if idle is not None else self.idle
        lifetime = lifetime if lifetime is not None else self.lifetime
        if idle is None and lifetime is None:
            return None
        return Deadline(self, record, transport, idle, lifetime)
