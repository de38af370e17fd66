"""HTTP/2 from clients (the h2 package as the client), HTTP/1.1 to the backend."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from twisted.trial.unittest import SynchronousTestCase

from tests.http.harness import Harness

SITE = """
[http.site]
health = "/health"
[[http.site.route]]
name = "back"
to = "tcp:127.0.0.1:8008"
"""


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(
        client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def request(conn: h2.connection.H2Connection, stream: int, path: bytes,
            method: bytes = b"GET", end: bool = True, extra: Any = ()) -> None:
    conn.send_headers(stream, [(b":method", method), (b":path", path),
                               (b":authority", b"www.example.test"), (b":scheme", b"https"),
                               *extra], end_stream=end)


class HTTP2(SynchronousTestCase):
    def test_streams_map_to_http11_requests(self) -> None:
        h = Harness(SITE)
        conn = client()
        request(conn, 1, b"/health")
        request(conn, 3, b"/a%2F//../b", b"POST", end=False,
                extra=[(b"cookie", b"a=1"), (b"cookie", b"b=2")])
        conn.send_data(3, b"hello", end_stream=True)
        _p, transport = h.connect(conn.data_to_send())
        events = conn.receive_data(transport.value())
        transport.clear()
        [health] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        self.assertEqual(health.stream_id, 1)
        self.assertIn((b":status", b"200"), health.headers)
        backend, backend_transport = h.backend()
        sent = backend_transport.value()
        self.assertTrue(sent.startswith(
            b"POST /a%2F//../b HTTP/1.1\r\nhost: www.example.test\r\n"))
        self.assertIn(b"cookie: a=1; b=2\r\n", sent)
        self.assertIn(b"Transfer-Encoding: chunked\r\n", sent)
        self.assertTrue(sent.endswith(b"5\r\nhello\r\n0\r\n\r\n"))
        backend.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n"
                             b"Connection: keep-alive\r\n\r\nworld")
        events = conn.receive_data(transport.value())
        [response] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        self.assertEqual(response.headers, [(b":status", b"201"), (b"content-length", b"5")])
        body = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        self.assertEqual(body, b"world")
        self.assertTrue(any(isinstance(e, h2.events.StreamEnded) for e in events))

    def test_response_waits_for_the_clients_window_and_pauses_the_backend(self) -> None:
        h = Harness(SITE)
        conn = client()
        request(conn, 1, b"/big")
        protocol, transport = h.connect(conn.data_to_send())
        conn.receive_data(transport.value())
        transport.clear()
        backend, backend_transport = h.backend()
        size = 200 * 1024
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size
                             + b"x" * (size - 10))
        events = conn.receive_data(transport.value())
        transport.clear()
        got = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
        self.assertEqual(got, 65535)  # the default initial window, no more
        self.assertEqual(backend_transport.producerState, "paused")
        backend.dataReceived(b"x" * 10)
        received = got
        while received < size:
            conn.acknowledge_received_data(65535, 1)
            protocol.dataReceived(conn.data_to_send())
            events = conn.receive_data(transport.value())
            transport.clear()
            chunk = sum(len(e.data) for e in events if isinstance(e, h2.events.DataReceived))
            self.assertGreater(chunk, 0)
            received += chunk
        self.assertEqual(received, size)
        self.assertEqual(backend_transport.producerState, "producing")
        self.assertTrue(any(isinstance(e, h2.events.StreamEnded) for e in events))

    def test_client_reset_closes_the_backend(self) -> None:
        h = Harness(SITE)
        conn = client()
        request(conn, 1, b"/slow")
        protocol, _transport = h.connect(conn.data_to_send())
        _backend, backend_transport = h.backend()
        conn.reset_stream(1)
        protocol.dataReceived(conn.data_to_send())
        self.assertTrue(backend_transport.disconnecting)

    def test_a_connection_without_streams_is_closed_after_keepalive_timeout(self) -> None:
        h = Harness(SITE)
        conn = client()
        request(conn, 1, b"/health")
        protocol, transport = h.connect(conn.data_to_send())
        h.reactor.advance(74)
        self.assertFalse(transport.disconnecting)
        request(conn, 3, b"/slow")
        protocol.dataReceived(conn.data_to_send())
        h.backend()
        h.reactor.advance(60)  # a stream is open: no timeout
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(76)  # that stream ended (504 at 60 s), then nothing for 75 s
        self.assertTrue(transport.disconnecting)
        events = conn.receive_data(transport.value())
        self.assertTrue(any(isinstance(e, h2.events.ConnectionTerminated) for e in events))

    def test_prior_knowledge_on_a_route_that_detected_nothing(self) -> None:
        h = Harness(SITE, detect=False)
        conn = client()
        request(conn, 1, b"/health")
        data = conn.data_to_send()
        protocol, transport = h.connect(data[:5])  # the preface in pieces
        protocol.dataReceived(data[5:30])
        protocol.dataReceived(data[30:])
        events = conn.receive_data(transport.value())
        [response] = [e for e in events if isinstance(e, h2.events.ResponseReceived)]
        self.assertIn((b":status", b"200"), response.headers)

    def test_http11_on_such_a_route_still_works(self) -> None:
        h = Harness(SITE, detect=False)
        protocol, transport = h.connect(b"G")
        protocol.dataReceived(b"ET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK\r\n"))
