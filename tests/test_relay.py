"""
The forward relay over real sockets: byte-exact both ways, half-close, flow control.

Every test runs twice: on the portable path (Twisted transports as each other's
producers) and on the Linux splice fast path (:mod:`gatekeep.splice`), and checks
which path actually carried the bytes. The peers run as separate processes
(tests/relay_peer.py) so that gatekeep's reactor is the only thing moving bytes in
this process.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, endpoints, protocol, reactor, task
from twisted.trial.unittest import SkipTest, TestCase

from gatekeep import splice
from gatekeep.relay import Relay
from gatekeep.sniff import SniffingProtocol
from gatekeep.targets.rawbackend import RawBackend
from tests.helpers import LinePeer, captured_log, start_gatekeep

PEER = str(Path(__file__).with_name("relay_peer.py"))
KiB = 1024
MiB = 1024 * KiB

CONFIG = """
splice = {splice}

[[listener]]
name = "relay"
endpoint = "tcp:0:interface=127.0.0.1"
service = "svc"

[service.svc]

[[service.svc.route]]
name = "tls"
match.tls = {{}}
reject = {{}}

[[service.svc.route]]
name = "rest"
forward = {{ to = "tcp:{host}:{port}" }}
"""


def _buffered(transport: Any) -> int:
    """Bytes in a Twisted transport's write buffer."""
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


def _held(relay: Relay) -> int:
    """Bytes gatekeep holds for the connection (write buffers, or the splice pipes)."""
    if relay.splicer is not None:
        return relay.splicer.buffered()
    return max(_buffered(relay.client), _buffered(relay.backend))


def _live_relays() -> list[Relay]:
    """The relays of connections currently open in this process (via the reactor)."""
    found = []
    selectables = [*reactor.getReaders(), *reactor.getWriters()]
    for selectable in selectables:
        protocol = getattr(selectable, "protocol", None)
        attached = getattr(protocol, "attached", None)
        relay = getattr(attached, "relay", None)
        if (isinstance(protocol, SniffingProtocol) and isinstance(relay, Relay)
                and relay.backend is not None and relay not in found):
            found.append(relay)
    return found


class _RelayMatrix:
    """The relay tests; subclasses pick the path."""

    timeout = 300
    use_splice: bool
    #: The backend's host: an IPv4 literal is connected with a bare socket when the
    #: relay splices (gatekeep.targets.rawbackend); a name through Twisted's connectTCP.
    host = "127.0.0.1"

    def setUp(self) -> None:
        if self.use_splice and not splice.AVAILABLE:
            raise SkipTest("splice(2) is Linux-only")
        # The config's `splice` key picks the path (the service applies it).
        self.addCleanup(splice.configure, True)  # type: ignore[attr-defined]
        self.relays: list[Relay] = []
        original = Relay.joined

        def joined(relay: Relay, backend: Any, pending: list[bytes]) -> None:
            self.relays.append(relay)
            original(relay, backend, pending)

        self.patch(Relay, "joined", joined)  # type: ignore[attr-defined]
        # How a spliced relay ends: the splicer's shutdown(2) calls, and whether both
        # connections were closed by the time spliced_done returned.
        self.shutdowns: list[int] = []
        self.closed_at_once: list[bool] = []
        original_end = splice._End.__init__
        shutdowns = self.shutdowns

        class CountingSocket:
            def __init__(self, sock: Any) -> None:
                self._sock = sock

            def __getattr__(self, name: str) -> Any:
                return getattr(self._sock, name)

            def shutdown(self, how: int) -> None:
                shutdowns.append(how)
                self._sock.shutdown(how)

        def end(end: Any, splicer: Any, transport: Any, side: str) -> None:
            original_end(end, splicer, transport, side)
            end.sock = CountingSocket(end.sock)

        self.patch(splice._End, "__init__", end)  # type: ignore[attr-defined]
        original_done = Relay.spliced_done

        def spliced_done(relay: Relay) -> None:
            original_done(relay)
            self.closed_at_once.append(bool(relay.client.disconnected
                                            and relay.backend.disconnected
                                            # no shutdown(2) after both FINs
                                            and relay.client._shouldShutdown is False))

        self.patch(Relay, "spliced_done", spliced_done)  # type: ignore[attr-defined]

    def _config(self, port: int) -> str:
        return CONFIG.format(port=port, host=self.host, splice=str(self.use_splice).lower())

    def _check_path(self, relay: Relay) -> None:
        test: Any = self
        test.assertEqual(relay.splicer is not None, self.use_splice,
                         "the relay did not take the path under test")
        bare = self.use_splice and self.host == "127.0.0.1"
        test.assertEqual(isinstance(relay.backend, RawBackend), bare,
                         "the backend was not connected the way under test")

    @defer.inlineCallbacks
    def _exchange(self, client_size: int, backend_size: int, client_flags: tuple[str, ...] = (),
                  backend_flags: tuple[str, ...] = ()) -> Any:
        test: Any = self
        backend = LinePeer(reactor, [PEER, "backend", "2", str(backend_size), *backend_flags])
        port = int((yield backend.next_line()))
        ports = start_gatekeep(self, self._config(port))
        with captured_log("gatekeep.connection") as events:
            client = LinePeer(reactor, [PEER, "client", str(ports["relay"]), "1",
                                        str(client_size), *client_flags])
            client_report = json.loads((yield client.next_line()))
            backend_report = json.loads((yield backend.next_line()))
            yield client.ended
            yield backend.ended
            while not events:  # the log line follows the close by at most a turn
                yield task.deferLater(reactor, 0.01, lambda: None)
        test.assertEqual(client_report["received"], backend_size)
        test.assertEqual(backend_report["received"], client_size)
        test.assertEqual(client_report["received_sha256"], backend_report["sent_sha256"])
        test.assertEqual(backend_report["received_sha256"], client_report["sent_sha256"])
        [event] = events
        test.assertEqual((event["bytes_in"], event["bytes_out"]), (client_size, backend_size))
        test.assertEqual(event["route"], "rest")
        test.assertEqual(event["close_reason"], "done")
        [relay] = self.relays
        self._check_path(relay)
        if self.use_splice:
            # The first direction to end is half-closed with shutdown(SHUT_WR); when the
            # second ends, both sockets close at once (the close sends that FIN).
            test.assertEqual(self.shutdowns, [socket.SHUT_WR])
            test.assertEqual(self.closed_at_once, [True])

    def test_nothing_either_way(self) -> Any:
        # Detection ends at the client's EOF; the backend gets the half-close at once.
        return self._exchange(0, 0)

    def test_one_byte_each_way(self) -> Any:
        return self._exchange(1, 1)

    def test_only_the_backend_speaks(self) -> Any:
        return self._exchange(0, 70 * KiB)

    def test_sizes_that_differ(self) -> Any:
        return self._exchange(3 * MiB + 17, 5 * MiB + 3)

    def test_64MiB_each_way_with_half_close(self) -> Any:
        return self._exchange(64 * MiB, 64 * MiB)

    def test_client_half_closes_first(self) -> Any:
        """The backend answers only after the client's EOF reached it."""
        return self._exchange(100 * KiB, 4 * MiB, backend_flags=("--after-eof",))

    def test_backend_half_closes_first(self) -> Any:
        """The client sends only after the backend's EOF reached it."""
        return self._exchange(4 * MiB, 100 * KiB, client_flags=("--after-eof",))

    @defer.inlineCallbacks
    def _reset(self, who: str) -> Any:
        """``who`` resets mid-transfer: the other side is closed and the log says so."""
        test: Any = self
        reset = ("--reset-after=65536",)
        backend = LinePeer(reactor, [PEER, "backend", "2", str(16 * MiB),
                                     *(reset if who == "backend" else ())])
        port = int((yield backend.next_line()))
        ports = start_gatekeep(self, self._config(port))
        with captured_log("gatekeep.connection") as events:
            client = LinePeer(reactor, [PEER, "client", str(ports["relay"]), "1",
                                        str(16 * MiB), *(reset if who == "client" else ())])
            client_report = json.loads((yield client.next_line()))
            backend_report = json.loads((yield backend.next_line()))
            yield client.ended
            yield backend.ended
            while not events:
                yield task.deferLater(reactor, 0.01, lambda: None)
        resetter, other = ((backend_report, client_report) if who == "backend"
                           else (client_report, backend_report))
        test.assertTrue(resetter["reset"])
        test.assertGreaterEqual(resetter["received"], 65536)
        # The other side saw its connection end before all 16 MiB came.
        test.assertLess(other["received"], 16 * MiB)
        [event] = events
        test.assertEqual(event["close_reason"], f"{who} reset")
        [relay] = self.relays
        self._check_path(relay)

    def test_backend_resets(self) -> Any:
        return self._reset("backend")

    def test_client_resets(self) -> Any:
        return self._reset("client")

    @defer.inlineCallbacks
    def test_idle_timeout_closes_a_quiet_relay(self) -> Any:
        """Idleness is read from the byte counts, which both paths keep current."""
        test: Any = self
        echoed: defer.Deferred[None] = defer.Deferred()
        lost: defer.Deferred[None] = defer.Deferred()

        class Echo(protocol.Protocol):
            def dataReceived(self, data: bytes) -> None:
                assert self.transport is not None
                self.transport.write(data)

        class Client(protocol.Protocol):
            def connectionMade(self) -> None:
                assert self.transport is not None
                self.transport.write(b"hello")

            def dataReceived(self, data: bytes) -> None:
                if not echoed.called:
                    echoed.callback(None)

            def connectionLost(self, reason: Any = None) -> None:
                lost.callback(None)

        backend = yield endpoints.TCP4ServerEndpoint(
            reactor, 0, interface="127.0.0.1").listen(protocol.Factory.forProtocol(Echo))
        self.addCleanup(backend.stopListening)  # type: ignore[attr-defined]
        config = self._config(backend.getHost().port).replace(
            'service = "svc"', 'service = "svc"\nidle_timeout = "300ms"')
        ports = start_gatekeep(self, config)
        with captured_log("gatekeep.connection") as events:
            yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", ports["relay"]).connect(
                protocol.Factory.forProtocol(Client))
            yield echoed
            yield lost
            while not events:
                yield task.deferLater(reactor, 0.01, lambda: None)
        [event] = events
        test.assertEqual(event["close_reason"], "idle_timeout (300ms) passed")
        test.assertEqual((event["bytes_in"], event["bytes_out"]), (5, 5))
        [relay] = self.relays
        self._check_path(relay)

    @defer.inlineCallbacks
    def test_slow_reader_bounds_buffering(self) -> Any:
        """A client that does not read makes gatekeep stop reading the backend."""
        test: Any = self
        size = 64 * MiB
        backend = LinePeer(reactor, [PEER, "backend", "3", str(size)])
        port = int((yield backend.next_line()))
        ports = start_gatekeep(self, self._config(port))
        client = LinePeer(
            reactor, [PEER, "client", str(ports["relay"]), "4", "1", "--wait-go"])
        peak = 0
        progress: list[int] = []

        def sample() -> None:
            nonlocal peak
            if not self.relays or self.relays[0].backend is None:
                return
            relay = self.relays[0]
            peak = max(peak, _held(relay))
            progress.append(relay.record.bytes_out)

        sampler = task.LoopingCall(sample)
        sampler.start(0.005)
        # Wait until nothing more moves towards the stalled client (flow control
        # engaged); give up after 20 s of movement.
        for _ in range(1000):
            if len(progress) >= 40 and progress[-1] == progress[-40]:
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        else:
            test.fail(f"bytes kept flowing to a client that reads nothing: {progress[-1:]}")
        stalled_at = progress[-1]
        test.assertLess(stalled_at, size // 2, "gatekeep kept reading a backend nobody reads")
        client.write(b"go\n")
        client_report = json.loads((yield client.next_line()))
        backend_report = json.loads((yield backend.next_line()))
        sampler.stop()
        yield client.ended
        yield backend.ended
        test.assertEqual(client_report["received_sha256"], backend_report["sent_sha256"])
        # Twisted pauses a producer once a transport buffers 64 KiB; one more read
        # (at most 64 KiB) may land before the pause: the bound is a few of those.
        # The fast path holds at most a pipe (64 KiB) per direction.
        test.assertLessEqual(peak, 512 * KiB, f"gatekeep buffered {peak} bytes")
        self._check_path(self.relays[0])


@pytest.mark.slow
class PortableRelayTests(_RelayMatrix, TestCase):
    use_splice = False


@pytest.mark.slow
class SplicedRelayTests(_RelayMatrix, TestCase):
    use_splice = True


@pytest.mark.slow
class SplicedTwistedBackendRelayTests(_RelayMatrix, TestCase):
    """Spliced, with a backend Twisted connected (by name: no bare socket)."""

    use_splice = True
    host = "localhost"
