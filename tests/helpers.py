"""Small test doubles shared by the unit tests: detectors, targets, log capture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import attrs
from twisted.internet.protocol import Protocol
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher
from zope.interface import implementer

from gatekeep.interfaces import IDetector, ITarget
from gatekeep.values import Inbound, Match, NeedMore, NoMatch


@implementer(IDetector)
class MagicDetector:
    """Matches prefixes starting with ``magic`` and reports the byte after it as ``kind``."""

    def __init__(self, name: str, magic: bytes) -> None:
        self.name = name
        self.magic = magic
        self.max_prefix = len(magic) + 1
        self.calls: list[bytes] = []

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        self.calls.append(prefix)
        common = min(len(prefix), len(self.magic))
        if prefix[:common] != self.magic[:common]:
            return NoMatch("wrong magic")
        if len(prefix) <= len(self.magic):
            return NeedMore()
        return Match({"kind": chr(prefix[len(self.magic)])})


class Recorder(Protocol):
    """Records what a target's protocol receives."""

    def __init__(self, inbound: Inbound) -> None:
        self.inbound = inbound
        self.received = b""
        self.lost: Any = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = reason


@implementer(ITarget)
@attrs.define
class RecordingTarget:
    label: str = "recording"
    attached: list[Recorder] = attrs.field(factory=list)

    def attach(self, inbound: Inbound) -> Protocol:
        protocol = Recorder(inbound)
        self.attached.append(protocol)
        return protocol

    def describe(self) -> str:
        return self.label


@contextmanager
def captured_log(namespace: str | None = None) -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    @implementer(ILogObserver)
    class Observer:
        def __call__(self, event: LogEvent) -> None:
            if namespace is None or event.get("log_namespace") == namespace:
                events.append(event)

    observer = Observer()
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


class LinePeer:
    """
    A child process whose stdout lines arrive as Deferreds, in order.

    Lets a trial test wait for a peer's "ready" line and its final report
    without blocking the reactor.
    """

    def __init__(self, reactor: Any, args: list[str]) -> None:
        from twisted.internet import defer, protocol

        self._lines: list[str] = []
        self._waiting: list[defer.Deferred[str]] = []
        self.ended: defer.Deferred[None] = defer.Deferred()
        peer = self

        class _Protocol(protocol.ProcessProtocol):
            buffer = b""

            def outReceived(self, data: bytes) -> None:
                self.buffer += data
                while b"\n" in self.buffer:
                    line, self.buffer = self.buffer.split(b"\n", 1)
                    peer._line(line.decode())

            def errReceived(self, data: bytes) -> None:
                sys.stderr.write(data.decode(errors="replace"))

            def processEnded(self, reason: Any) -> None:
                peer.ended.callback(None)

        import sys

        self.protocol = _Protocol()
        self.process = reactor.spawnProcess(
            self.protocol, sys.executable, [sys.executable, *args], env=None)

    def _line(self, line: str) -> None:
        if self._waiting:
            self._waiting.pop(0).callback(line)
        else:
            self._lines.append(line)

    def next_line(self) -> Any:
        from twisted.internet import defer

        if self._lines:
            return defer.succeed(self._lines.pop(0))
        waiting: defer.Deferred[str] = defer.Deferred()
        self._waiting.append(waiting)
        return waiting

    def write(self, data: bytes) -> None:
        self.process.write(data)


def start_gatekeep(testcase: Any, config_text: str) -> dict[str, int]:
    """
    Run a config in this process on the real reactor until the test ends.

    Returns each listener's bound port (listeners may use port 0).
    """
    from twisted.internet import reactor

    from gatekeep.config.loader import load_config
    from gatekeep.registry import load_registry
    from gatekeep.service import GatekeepService, ListenerService

    registry = load_registry()
    service = GatekeepService(load_config(config_text, registry), registry, reactor)
    service.startService()
    testcase.addCleanup(service.stopService)
    testcase.gatekeep = service
    ports = {}
    for child in service:
        if isinstance(child, ListenerService) and child.port is not None:
            address: Any = child.port.getHost()
            ports[child.listener.name] = address.port
    return ports
