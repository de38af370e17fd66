"""
The per-request write and timer paths: a response head leaves with its body in one
write, requests re-use one timer per connection, and :func:`send_now` falls back to
the transport's own ``write`` wherever it cannot send at once.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from gatekeep.http.deadline import Deadline
from gatekeep.sendnow import close_now, send_now
from tests.http.harness import Harness
from tests.http.test_proxy import SITE

REACTOR: Any = _reactor
GET = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"


def counting_writes(transport: StringTransport) -> list[bytes]:
    """Record each ``write`` made to ``transport`` (as well as writing it)."""
    writes: list[bytes] = []
    write = transport.write

    def record(data: bytes) -> None:
        writes.append(data)
        write(data)

    transport.write = record  # type: ignore[method-assign]
    return writes


class DeadlineTests(SynchronousTestCase):
    def test_fires_at_the_last_deadline_armed_with_one_call_pending(self) -> None:
        clock, fired = Clock(), []
        deadline = Deadline(clock, lambda: fired.append(clock.seconds()))
        deadline.arm(5)
        for _ in range(100):  # a request every 0.03 s: disarmed, then armed again
            clock.advance(0.01)
            deadline.disarm()
            clock.advance(0.02)
            deadline.arm(5)
            self.assertLessEqual(len(clock.getDelayedCalls()), 1)
        armed_at = clock.seconds()
        clock.advance(4.99)
        self.assertEqual(fired, [])
        clock.advance(0.01)
        self.assertEqual(fired, [armed_at + 5])
        self.assertFalse(deadline.armed)
        clock.advance(60)
        self.assertEqual(len(fired), 1)

    def test_disarmed_or_cancelled_it_never_fires(self) -> None:
        clock, fired = Clock(), []
        deadline = Deadline(clock, lambda: fired.append(1))
        deadline.arm(1)
        deadline.disarm()
        clock.advance(2)
        self.assertEqual(fired, [])
        deadline.arm(1)
        deadline.cancel()
        self.assertEqual(clock.getDelayedCalls(), [])
        clock.advance(2)
        self.assertEqual(fired, [])

    def test_an_earlier_deadline_replaces_the_pending_call(self) -> None:
        clock, fired = Clock(), []
        deadline = Deadline(clock, lambda: fired.append(clock.seconds()))
        deadline.arm(10)
        deadline.arm(2)
        clock.advance(2)
        self.assertEqual(fired, [2])
        self.assertEqual(clock.getDelayedCalls(), [])


class HeldHeadTests(SynchronousTestCase):
    def test_head_and_body_leave_in_one_write(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect()
        writes = counting_writes(client)
        _p.dataReceived(GET)
        backend, _t = h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
        self.assertEqual(len(writes), 1)
        self.assertTrue(writes[0].startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(writes[0].endswith(b"\r\n\r\nhello"))

    def test_a_head_whose_body_is_late_is_not_held(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(GET)
        backend, _t = h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(client.value().endswith(b"\r\n\r\n"))
        backend.dataReceived(b"hel")
        self.assertTrue(client.value().endswith(b"\r\n\r\nhel"))


class ResponseTimeoutReused(SynchronousTestCase):
    def test_each_request_on_a_kept_connection_has_its_own_timeout(self) -> None:
        h = Harness(SITE)
        protocol, client = h.connect(GET)
        backend, _t = h.backend()
        for _ in range(20):
            h.reactor.advance(9)  # each answered just before its 10 s
            backend.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
            protocol.dataReceived(GET)
        self.assertEqual(len(h.reactor.tcpClients), 1)  # one backend connection, reused
        self.assertEqual(client.value().count(b"HTTP/1.1 204 "), 20)
        self.assertLessEqual(len(h.reactor.getDelayedCalls()), 4)
        h.reactor.advance(9.9)
        self.assertNotIn(b" 504 ", client.value())
        h.reactor.advance(0.2)
        self.assertIn(b"HTTP/1.1 504 Gateway Timeout\r\n", client.value())


class _Collect(Protocol):
    def __init__(self, want: int, done: Deferred[bytes]) -> None:
        self.want, self.done, self.got = want, done, b""

    def dataReceived(self, data: bytes) -> None:
        self.got += data
        if len(self.got) >= self.want:
            self.done.callback(self.got)


class SendNowTests(TestCase):
    def test_falls_back_to_write_for_wrappers(self) -> None:
        transport = StringTransport()
        send_now(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_bytes_stay_in_order_on_a_real_socket(self) -> Deferred[None]:
        """More than a socket buffer's worth: what the kernel refuses is queued, in order."""
        data = bytes(range(256)) * 40_000  # 10 MB
        done: Deferred[bytes] = Deferred()
        server_side: list[Protocol] = []

        class Server(Protocol):
            def connectionMade(self) -> None:
                server_side.append(self)
                sock = self.transport.getHandle()  # type: ignore[union-attr]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                send_now(self.transport, data[:1000])
                send_now(self.transport, data[1000:])
                send_now(self.transport, b"")

        factory: Any = Factory.forProtocol(Server)
        port = REACTOR.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        from twisted.internet.endpoints import TCP4ClientEndpoint

        endpoint = TCP4ClientEndpoint(REACTOR, "127.0.0.1", port.getHost().port)
        connecting = endpoint.connect(Factory.forProtocol(lambda: _Collect(len(data), done)))

        def check(client: Any) -> Deferred[None]:
            def got(received: bytes) -> None:
                self.assertEqual(received, data)
                client.transport.loseConnection()
                server_side[0].transport.loseConnection()  # type: ignore[union-attr]
            return done.addCallback(got)

        result: Deferred[None] = connecting.addCallback(check)
        return result


class CloseNowTests(TestCase):
    def test_falls_back_to_lose_connection_for_wrappers(self) -> None:
        transport = StringTransport()
        close_now(transport)
        self.assertTrue(transport.disconnecting)

    def closing(self, data: bytes) -> Deferred[None]:
        """A server writes ``data`` and closes at once; the client gets it all, then EOF."""
        lost: list[bool] = []
        done: Deferred[bytes] = Deferred()

        class Server(Protocol):
            def connectionMade(self) -> None:
                sock = self.transport.getHandle()  # type: ignore[union-attr]
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
                send_now(self.transport, data)
                queued = bool(self.transport.dataBuffer  # type: ignore[union-attr]
                              or self.transport._tempDataBuffer)  # type: ignore[union-attr]
                close_now(self.transport)
                # Nothing queued: closed now, not on a later turn of the reactor.
                lost.append(queued)
                if not queued:
                    test.assertTrue(self.closed)

            def connectionLost(self, reason: Any = None) -> None:
                self.closed = True

        class Client(Protocol):
            def __init__(self) -> None:
                self.got = b""

            def dataReceived(self, received: bytes) -> None:
                self.got += received

            def connectionLost(self, reason: Any = None) -> None:
                done.callback(self.got)

        test = self
        Server.closed = False
        factory: Any = Factory.forProtocol(Server)
        port = REACTOR.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        from twisted.internet.endpoints import TCP4ClientEndpoint

        endpoint = TCP4ClientEndpoint(REACTOR, "127.0.0.1", port.getHost().port)
        endpoint.connect(Factory.forProtocol(Client))

        def got(received: bytes) -> None:
            self.assertEqual(received, data)
            self.assertEqual(len(lost), 1)

        result: Deferred[None] = done.addCallback(got)
        return result

    def test_nothing_queued_closes_at_once_after_every_byte(self) -> Deferred[None]:
        return self.closing(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def test_bytes_queued_are_sent_before_the_close(self) -> Deferred[None]:
        return self.closing(bytes(range(256)) * 40_000)  # more than the socket takes


class HeadScanTests(SynchronousTestCase):
    def test_head_end_and_lines_equal_the_regexes_on_every_short_input(self) -> None:
        """Every string of up to 8 bytes of ``a``, CR and LF, as bytes and bytearray."""
        from itertools import product

        from gatekeep.http.response import _HEAD_END, _LINE, head_end, split_lines

        for size in range(9):
            for letters in product(b"a\r\n", repeat=size):
                data = bytes(letters)
                found = _HEAD_END.search(data)
                expected = None if found is None else (found.start(), found.end())
                self.assertEqual(head_end(data), expected, data)
                self.assertEqual(head_end(bytearray(data)), expected, data)
                self.assertEqual(split_lines(data), _LINE.split(data), data)

    def test_bare_cr_or_lf_equals_the_regexes_on_every_short_input(self) -> None:
        from itertools import product

        from gatekeep.http.reader import _BARE_CR, _BARE_LF, has_bare_cr_or_lf

        for size in range(9):
            for letters in product(b"a\r\n", repeat=size):
                data = bytes(letters)
                expected = bool(_BARE_LF.search(data) or _BARE_CR.search(data))
                self.assertEqual(has_bare_cr_or_lf(data), expected, data)


class ResponseConnectionTokens(SynchronousTestCase):
    def test_the_reader_hands_over_the_connection_tokens_and_listed_fields_are_dropped(
            self) -> None:
        from gatekeep.http.response import ResponseHead, ResponseReader

        reader = ResponseReader()
        reader.expect(b"GET", False)
        reader.feed(b"HTTP/1.1 200 OK\r\nConnection: X-Secret , Keep-Alive\r\n"
                    b"X-Secret: 1\r\nContent-Length: 0\r\n\r\n")
        head = reader.next_event()
        assert isinstance(head, ResponseHead)
        self.assertEqual(head.connection, frozenset({b"x-secret", b"keep-alive"}))

        h = Harness(SITE)
        _p, client = h.connect(GET)
        backend, _t = h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: X-Secret\r\nX-Secret: 1\r\n"
                             b"X-Kept: 2\r\nContent-Length: 0\r\n\r\n")
        self.assertNotIn(b"X-Secret", client.value())
        self.assertIn(b"X-Kept: 2\r\n", client.value())
