"""
Shaping a relayed connection: pause reading instead of buffering.

A :class:`ShaperSpec` is one ``[shaper.NAME]`` table. For each connection the chain
asks it for a :class:`Shaping`: one :class:`~gatekeep.interfaces.IShaper` per
direction, shared with the other connections of the same scope (the client's
address, or the whole listener) or the connection's own.

The relay tells the shaping how many bytes it passed on in each direction; when the
shaper asks for a pause, the producing side's transport is paused for that long.
Each transport sits behind a :class:`Gate`, which is what the other transport sees
as its producer: the transport reads again only when neither the consumer's
buffer (flow control) nor the shaper holds it. So a shaped connection holds at most
one read (64 KiB) per direction beyond an unshaped one, and nothing is dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import attrs
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from gatekeep.interfaces import IShaper

__all__ = ["MAX_PAUSE", "Direction", "Gate", "ShaperSpec", "Shaping"]

log = Logger()

#: The longest a shaper may pause a direction at once (a plugin answering a huge
#: delay must not stall a connection for good; it is asked again after this).
MAX_PAUSE = 60.0

#: ``in``: from the client (its transport is paused); ``out``: to the client (the
#: backend's transport is paused).
Direction = Literal["in", "out"]
Scope = Literal["connection", "ip", "listener"]


@implementer(IPushProducer)
class Gate:
    """A transport as a producer, held back by flow control or by a shaper."""

    __slots__ = ("_timer", "done", "flow_paused", "held", "transport")

    def __init__(self, transport: Any, paused: bool = False) -> None:
        self.transport = transport
        self.flow_paused = paused
        self.held = False
        #: The transport saw EOF: resuming it would read the EOF again.
        self.done = False
        self._timer: IDelayedCall | None = None

    def pauseProducing(self) -> None:
        self.flow_paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.flow_paused = False
        if not self.held and not self.done:
            self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.cancel()
        self.transport.stopProducing()

    def hold(self, delay: float, clock: Any) -> None:
        """Stop reading for ``delay`` seconds (longer if flow control says so)."""
        if self._timer is not None:
            # Already held: the shaper's newer answer covers everything so far.
            self._timer.reset(delay)
            return
        self.held = True
        self.transport.pauseProducing()
        self._timer = clock.callLater(delay, self._release)

    def _release(self) -> None:
        self._timer = None
        self.held = False
        if not self.flow_paused and not self.done:
            self.transport.resumeProducing()

    def cancel(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        self.held = False


class Shaping:
    """The shapers of one connection, and the gates they hold."""

    def __init__(self, shapers: dict[Direction, IShaper], clock: Any,
                 release: Callable[[], None] | None = None) -> None:
        self.shapers = shapers
        self.clock = clock
        self.gates: dict[Direction, Gate] = {}
        self._release = release

    def gate(self, direction: Direction, transport: Any, paused: bool = False) -> Any:
        """What to register as the producer of ``direction``'s bytes."""
        if direction not in self.shapers:
            return transport
        gate = self.gates[direction] = Gate(transport, paused)
        return gate

    def passed(self, direction: Direction, nbytes: int) -> None:
        """``nbytes`` went on in ``direction``: hold its producer if the shaper says so."""
        shaper = self.shapers.get(direction)
        gate = self.gates.get(direction)
        if shaper is None or gate is None:
            return
        try:
            delay = float(shaper.admit(nbytes, self.clock.seconds()))
        except Exception:  # noqa: BLE001 - a plugin's bug must not break the relay
            # Unshaped from now on (data is never held hostage by a broken shaper).
            log.failure("shaper {shaper!r} raised; this connection is no longer shaped",
                        shaper=shaper)
            del self.shapers[direction]
            return
        if delay > 0 and not gate.done:
            gate.hold(min(delay, MAX_PAUSE), self.clock)

    def read_done(self, direction: Direction) -> None:
        gate = self.gates.get(direction)
        if gate is not None:
            gate.done = True
            gate.cancel()

    def stop(self) -> None:
        """The connection ended: no more timers; a shared shaper loses a user."""
        for gate in self.gates.values():
            gate.cancel()
        release, self._release = self._release, None
        if release is not None:
            release()


@attrs.define(eq=False)
class ShaperSpec:
    """One ``[shaper.NAME]``: builds the shapers of each scope, per direction."""

    name: str
    scope: Scope
    make: Callable[[], IShaper]
    description: str = ""
    #: Shared shapers of the ``ip`` and ``listener`` scopes, with their users.
    _shared: dict[Any, tuple[dict[Direction, IShaper], int]] = attrs.field(
        factory=dict, init=False, repr=False)

    def describe(self) -> str:
        return f"{self.name}: {self.description or 'plugin'} per {self.scope}, each direction"

    def _new(self) -> dict[Direction, IShaper]:
        return {"in": self.make(), "out": self.make()}

    def open(self, listener: str, client: str | None, clock: Any) -> Shaping:
        """The shaping of a new connection of ``listener`` from ``client`` (a key)."""
        if self.scope == "connection":
            return Shaping(self._new(), clock)
        key = (listener, client) if self.scope == "ip" else listener
        shapers, users = self._shared.get(key) or (self._new(), 0)
        self._shared[key] = (shapers, users + 1)

        def release() -> None:
            shared, left = self._shared[key]
            if left <= 1:
                del self._shared[key]
            else:
                self._shared[key] = (shared, left - 1)

        return Shaping(shapers, clock, release)
