"""The HTTP/1.1 reverse proxy on a memory reactor: routing, headers, bodies, failures."""

from __future__ import annotations

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from gatekeep import metrics
from gatekeep.http.upstream import Gate
from tests.http.harness import Harness

SITE = """
[http.site]
health = "/health"
max_body = "1KiB"
connect_timeout = "3s"
response_timeout = "10s"
trusted_proxies = ["127.0.0.7/32"]

[[http.site.route]]
name = "wk"
path = ["/.well-known/matrix/client"]
[http.site.route.respond]
body = '{"m.homeserver": {}}'
[http.site.route.respond.headers]
"Content-Type" = "application/json"
"Access-Control-Allow-Origin" = "*"
"Access-Control-Allow-Methods" = "GET, OPTIONS"

[[http.site.route]]
name = "matrix"
host = ["matrix.example.org", "*.example.org", "fed.example.org:8448"]
path = ["/_matrix", "/_synapse/client"]
to = "tcp:127.0.0.1:8008"
max_body = "4KiB"

[[http.site.route]]
name = "rewritten"
host = ["internal.example.net"]
to = "tcp:127.0.0.1:8009"
host_header = "backend.internal"

[[http.site.route]]
name = "web"
host = ["www.example.org"]
to = "tcp:127.0.0.1:8080"
"""

OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def head_of(data: bytes) -> list[bytes]:
    return data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


class AnsweredByGatekeep(SynchronousTestCase):
    def test_health_and_respond_routes_for_every_method(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(
            b"GET /health HTTP/1.1\r\nHost: any\r\n\r\n"
            b"OPTIONS /.well-known/matrix/client HTTP/1.1\r\nHost: x\r\n"
            b"Access-Control-Request-Method: GET\r\nOrigin: https://app\r\n\r\n"
            b"HEAD /.well-known/matrix/client HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /.well-known/matrix/client HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: 3\r\n\r\nabc"
            b"GET /nowhere HTTP/1.1\r\nHost: unknown.test\r\n\r\n")
        out = client.value()
        self.assertEqual(out.count(b"HTTP/1.1 200 OK\r\n"), 4)
        self.assertIn(b"\r\n\r\nOK\n", out)
        self.assertEqual(out.count(b"Access-Control-Allow-Origin: *\r\n"), 3)
        self.assertEqual(out.count(b'\r\n\r\n{"m.homeserver": {}}'), 2)  # not for HEAD
        self.assertIn(b"Content-Length: 20\r\n\r\nHTTP/1.1 200 OK", out)  # HEAD: length only
        self.assertTrue(out.endswith(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; "
            b"charset=utf-8\r\nContent-Length: 14\r\n\r\n404 Not Found\n"))
        self.assertFalse(client.disconnecting)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_connect_method_refused(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"CONNECT www.example.org:443 HTTP/1.1\r\n"
                               b"Host: www.example.org\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 405 "))
        self.assertTrue(client.disconnecting)


class Proxied(SynchronousTestCase):
    def test_uri_exact_and_forwarding_headers_replaced(self) -> None:
        h = Harness(SITE)
        target = b"/_matrix/a%2Fb/%25/..%2f//x/../y?q=%2F&r=//"
        _p, client = h.connect(
            b"GET " + target + b" HTTP/1.1\r\nHost: Matrix.Example.org\r\n"
            b"X-Forwarded-For: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n"
            b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nUser-Agent: t\r\n\r\n")
        backend, transport = h.backend()
        lines = head_of(transport.value())
        self.assertEqual(lines[0], b"GET " + target + b" HTTP/1.1")
        self.assertIn(b"Host: Matrix.Example.org", lines)
        self.assertIn(b"X-Forwarded-For: 198.51.100.4", lines)
        self.assertIn(b"X-Forwarded-Proto: http", lines)
        self.assertIn(b"X-Forwarded-Host: Matrix.Example.org", lines)
        self.assertIn(b"Forwarded: for=198.51.100.4;proto=http;host=Matrix.Example.org", lines)
        self.assertNotIn(b"6.6.6.6", transport.value())
        self.assertNotIn(b"evil", transport.value())
        backend.dataReceived(OK_EMPTY)
        self.assertEqual(client.value(), OK_EMPTY)

    def test_trusted_proxy_headers_appended(self) -> None:
        h = Harness(SITE, client="127.0.0.7")
        h.connect(b"GET /_matrix/x HTTP/1.1\r\nHost: fed.example.org:8448\r\n"
                  b"X-Forwarded-For: 203.0.113.5\r\nX-Forwarded-Proto: https\r\n"
                  b"Forwarded: for=203.0.113.5;proto=https\r\n\r\n")
        _b, transport = h.backend()
        lines = head_of(transport.value())
        self.assertIn(b"X-Forwarded-For: 203.0.113.5, 127.0.0.7", lines)
        self.assertIn(b"X-Forwarded-Proto: https", lines)
        self.assertIn(b'Forwarded: for=203.0.113.5;proto=https, for=127.0.0.7;proto=http;'
                      b'host="fed.example.org:8448"', lines)

    def test_host_header_rewritten(self) -> None:
        h = Harness(SITE)
        h.connect(b"GET / HTTP/1.1\r\nHost: internal.example.net\r\n\r\n")
        self.assertEqual(h.reactor.tcpClients[0][:2], ("127.0.0.1", 8009))
        _b, transport = h.backend()
        lines = head_of(transport.value())
        self.assertIn(b"Host: backend.internal", lines)
        self.assertIn(b"X-Forwarded-Host: internal.example.net", lines)

    def test_routing_by_host_port_and_path(self) -> None:
        cases = [
            (b"matrix.example.org", b"/_matrix/client", 8008),
            (b"sub.example.org:443", b"/_synapse/client/x", 8008),
            (b"fed.example.org:8448", b"/_matrix/federation", 8008),
            (b"www.example.org", b"/_matrix/client", 8008),  # *.example.org, first route
            (b"www.example.org", b"/", 8080),
            (b"WWW.example.org.", b"/", 8080),
            (b"example.org", b"/_matrix", None),  # wildcard never fits the bare parent
            (b"matrix.example.org", b"/_matri", None),
        ]
        for host, path, port in cases:
            h = Harness(SITE)
            _p, client = h.connect(b"GET " + path + b" HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
            if port is None:
                self.assertTrue(client.value().startswith(b"HTTP/1.1 404 "), (host, path))
                self.assertEqual(h.reactor.tcpClients, [])
            else:
                self.assertEqual(h.reactor.tcpClients[0][1], port, (host, path))

    def test_chunked_streams_both_ways_and_keep_alive_reuses_backend(self) -> None:
        h = Harness(SITE)
        protocol, client = h.connect(
            b"POST /_matrix/upload HTTP/1.1\r\nHost: matrix.example.org\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n")
        backend, transport = h.backend()
        self.assertTrue(transport.value().endswith(b"\r\n\r\n4\r\nwiki\r\n"))
        protocol.dataReceived(b"5;ext=1\r\npedia\r\n0\r\nTrailer: x\r\n\r\n")
        self.assertTrue(transport.value().endswith(b"5\r\npedia\r\n0\r\n\r\n"))
        backend.dataReceived(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n"
                             b"Connection: keep-alive\r\n\r\n3\r\nabc\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 201 Created\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        backend.dataReceived(b"0\r\n\r\n")
        self.assertTrue(client.value().endswith(b"3\r\nabc\r\n0\r\n\r\n"))
        transport.clear()
        client.clear()
        protocol.dataReceived(b"GET /_matrix/b HTTP/1.1\r\nHost: matrix.example.org\r\n\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)  # the same backend connection
        self.assertTrue(transport.value().startswith(b"GET /_matrix/b HTTP/1.1\r\n"))
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")

    def test_pipelined_requests_answered_in_order(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(
            b"GET /_matrix/1 HTTP/1.1\r\nHost: matrix.example.org\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: matrix.example.org\r\n\r\n"
            b"GET /_matrix/3 HTTP/1.1\r\nHost: matrix.example.org\r\n\r\n")
        self.assertEqual(client.value(), b"")  # /health waits for the first answer
        backend, transport = h.backend()
        self.assertNotIn(b"/_matrix/3", transport.value())
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1")
        self.assertIn(b"/_matrix/3", transport.value())
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n3")
        out = client.value()
        self.assertLess(out.index(b"\r\n\r\n1"), out.index(b"OK\n"))
        self.assertLess(out.index(b"OK\n"), out.index(b"\r\n\r\n3"))

    def test_http10_client_gets_close_delimited_body(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"GET / HTTP/1.0\r\nHost: www.example.org\r\n\r\n")
        backend, transport = h.backend()
        self.assertTrue(transport.value().startswith(b"GET / HTTP/1.1\r\n"))
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"2\r\nhi\r\n0\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(client.disconnecting)

    def test_http10_keep_alive_client_keeps_its_connection(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(
            b"GET / HTTP/1.0\r\nHost: www.example.org\r\nConnection: keep-alive\r\n\r\n")
        backend, transport = h.backend()
        self.assertNotIn(b"keep-alive", transport.value().lower())  # hop-by-hop: not passed
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(client.value(),
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive"
                         b"\r\n\r\nhi")
        self.assertFalse(client.disconnecting)
        # A second request on it; a body of unknown length can only end with the connection.
        client.clear()
        transport.clear()
        _p.dataReceived(
            b"GET / HTTP/1.0\r\nHost: www.example.org\r\nConnection: Keep-Alive\r\n\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)  # the backend connection is reused
        self.assertTrue(transport.value().startswith(b"GET / HTTP/1.1\r\n"))
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"2\r\nhi\r\n0\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(client.disconnecting)

    def test_websocket_upgrade_becomes_a_tunnel(self) -> None:
        h = Harness(SITE)
        protocol, client = h.connect(
            b"GET /xmpp-websocket HTTP/1.1\r\nHost: www.example.org\r\nConnection: Upgrade\r\n"
            b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n\x81\x01a")
        backend, transport = h.backend()
        lines = head_of(transport.value())
        self.assertIn(b"Connection: upgrade", lines)
        self.assertIn(b"Upgrade: websocket", lines)
        backend.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                             b"Connection: Upgrade\r\nSec-WebSocket-Accept: x\r\n\r\n\x81\x01b")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 101 Switching Protocols\r\n"))
        self.assertIn(b"Sec-WebSocket-Accept: x\r\n", client.value())
        self.assertTrue(client.value().endswith(b"\r\n\r\n\x81\x01b"))
        self.assertTrue(transport.value().endswith(b"\r\n\r\n\x81\x01a"))
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")  # just bytes now
        self.assertTrue(transport.value().endswith(b"GET / HTTP/1.1\r\n"))
        backend.dataReceived(b"\x88\x00")
        self.assertTrue(client.value().endswith(b"\x88\x00"))
        protocol.readConnectionLost()  # the client half-closes: so does gatekeep, towards it
        self.assertTrue(transport.disconnecting)
        self.assertFalse(client.disconnecting)
        backend.dataReceived(b"last words")
        self.assertTrue(client.value().endswith(b"last words"))
        backend.connectionLost(Failure(connectionDone.value))
        self.assertTrue(client.disconnecting)


class Limits(SynchronousTestCase):
    def test_declared_length_over_max_body_is_413_without_backend(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"POST /x HTTP/1.1\r\nHost: www.example.org\r\n"
                               b"Content-Length: 1025\r\n\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(client.disconnecting)
        self.assertEqual(h.reactor.tcpClients, [])

    def test_route_max_body_overrides_site(self) -> None:
        h = Harness(SITE)
        h.connect(b"POST /_matrix/x HTTP/1.1\r\nHost: matrix.example.org\r\n"
                  b"Content-Length: 4096\r\n\r\n")
        self.assertEqual(len(h.reactor.tcpClients), 1)

    def test_chunked_growing_past_the_limit_is_413(self) -> None:
        h = Harness(SITE)
        protocol, client = h.connect(b"POST /x HTTP/1.1\r\nHost: www.example.org\r\n"
                                     b"Transfer-Encoding: chunked\r\n\r\n")
        _backend, transport = h.backend()
        protocol.dataReceived(b"400\r\n" + b"a" * 1024 + b"\r\n")
        self.assertFalse(client.disconnecting)
        protocol.dataReceived(b"1\r\nb\r\n")
        self.assertTrue(client.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(client.disconnecting)
        self.assertTrue(transport.disconnecting)

    def test_backend_unreachable_is_502(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        factory = h.reactor.tcpClients[0][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))  # type: ignore[arg-type]
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 Bad Gateway\r\n"))
        self.assertTrue(client.value().endswith(
            b"\r\n\r\n502 Bad Gateway: the backend is unreachable\n"))
        self.assertTrue(client.disconnecting)

    def test_connect_timeout_is_502(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        h.reactor.advance(3.1)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "))

    def test_response_timeout_is_504(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        _backend, transport = h.backend()
        h.reactor.advance(9.9)
        self.assertEqual(client.value(), b"")
        h.reactor.advance(0.2)
        self.assertTrue(client.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertTrue(client.disconnecting)
        self.assertTrue(transport.disconnecting)

    def test_backend_closing_mid_body_aborts_the_client(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, _transport = h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        backend.connectionLost(Failure(connectionDone.value))
        self.assertTrue(client.value().endswith(b"abc"))
        self.assertTrue(client.disconnecting)


class FlowControl(SynchronousTestCase):
    def test_each_side_pauses_the_other(self) -> None:
        h = Harness(SITE)
        protocol, client = h.connect(b"POST / HTTP/1.1\r\nHost: www.example.org\r\n"
                                     b"Content-Length: 100\r\n\r\n")
        _backend, transport = h.backend()
        self.assertEqual(client.producerState, "producing")
        to_client, to_backend = client.producer, transport.producer
        assert isinstance(to_client, Gate) and isinstance(to_backend, Gate)
        to_backend.pauseProducing()  # the backend's buffer is full
        self.assertEqual(client.producerState, "paused")
        to_backend.resumeProducing()
        self.assertEqual(client.producerState, "producing")
        to_client.pauseProducing()  # the client reads slowly
        self.assertEqual(transport.producerState, "paused")
        to_client.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        protocol.dataReceived(b"x" * 100)
        self.assertTrue(transport.value().endswith(b"x" * 100))

    def test_pipelined_backlog_pauses_reading(self) -> None:
        h = Harness(SITE)
        request = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
        protocol, client = h.connect(request)
        h.backend()
        protocol.dataReceived(request * 3000)
        self.assertEqual(client.producerState, "paused")


class Pooling(SynchronousTestCase):
    def test_backend_connections_are_shared_by_client_connections(self) -> None:
        h = Harness(SITE)
        request = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
        _p1, first = h.connect(request)
        backend, transport = h.backend()
        backend.dataReceived(OK_EMPTY)
        self.assertEqual(first.value(), OK_EMPTY)
        transport.clear()
        _p2, second = h.connect(request)
        self.assertEqual(len(h.reactor.tcpClients), 1)  # reused, no new connection
        self.assertTrue(transport.value().startswith(b"GET / HTTP/1.1\r\n"))
        backend.dataReceived(OK_EMPTY)
        self.assertEqual(second.value(), OK_EMPTY)

    def test_a_reused_connection_closed_by_the_backend_is_retried_once(self) -> None:
        h = Harness(SITE)
        request = b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
        _p1, _first = h.connect(request)
        backend, _transport = h.backend()
        backend.dataReceived(OK_EMPTY)
        _p2, second = h.connect(request)
        backend.connectionLost(Failure(connectionDone.value))  # its idle timeout, say
        self.assertEqual(len(h.reactor.tcpClients), 2)
        fresh, fresh_transport = h.backend()
        self.assertTrue(fresh_transport.value().startswith(b"GET / HTTP/1.1\r\n"))
        fresh.dataReceived(OK_EMPTY)
        self.assertEqual(second.value(), OK_EMPTY)

    def test_a_request_with_a_body_is_not_retried(self) -> None:
        h = Harness(SITE)
        _p1, _first = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, _transport = h.backend()
        backend.dataReceived(OK_EMPTY)
        _p2, second = h.connect(b"POST / HTTP/1.1\r\nHost: www.example.org\r\n"
                                b"Content-Length: 2\r\n\r\nhi")
        backend.connectionLost(Failure(connectionDone.value))
        self.assertEqual(len(h.reactor.tcpClients), 1)
        self.assertTrue(second.value().startswith(b"HTTP/1.1 502 "))


class BackendFraming(SynchronousTestCase):
    def test_close_delimited_body_is_chunked_for_the_client(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, _transport = h.backend()
        backend.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
        backend.connectionLost(Failure(connectionDone.value))
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"d\r\nuntil the end\r\n0\r\n\r\n")
        self.assertFalse(client.disconnecting)

    def test_head_keeps_the_length_and_sends_no_body(self) -> None:
        h = Harness(SITE)
        _p, client = h.connect(b"HEAD / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, _transport = h.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        self.assertEqual(client.value(), b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")

    def test_idle_backend_connections_are_closed_after_30s(self) -> None:
        h = Harness(SITE)
        _p, _client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, transport = h.backend()
        backend.dataReceived(OK_EMPTY)
        h.reactor.advance(29)
        self.assertFalse(transport.disconnecting)
        h.reactor.advance(1.5)
        self.assertTrue(transport.disconnecting)


class KeepAliveTimeout(SynchronousTestCase):
    def test_idle_and_trickled_connections_are_closed(self) -> None:
        h = Harness(SITE)
        protocol, client = h.connect(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        h.reactor.advance(74)
        self.assertFalse(client.disconnecting)
        protocol.dataReceived(b"GET /health HTTP/1.1\r\n")  # a head that never ends
        h.reactor.advance(1.5)
        self.assertTrue(client.disconnecting)

    def test_a_slow_response_is_not_cut_by_it(self) -> None:
        h = Harness(SITE.replace('response_timeout = "10s"', 'response_timeout = "300s"'))
        _p, client = h.connect(b"GET / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, _transport = h.backend()
        h.reactor.advance(200)
        self.assertFalse(client.disconnecting)
        backend.dataReceived(OK_EMPTY)
        self.assertEqual(client.value(), OK_EMPTY)
        h.reactor.advance(76)
        self.assertTrue(client.disconnecting)


class RequestMetrics(SynchronousTestCase):
    """Each finished request is counted by site, route and status, and timed."""

    def count(self, route: str, code: str) -> float:
        return metrics.value("gatekeep_http_requests_total", listener="edge", site="site",
                             route=route, code=code)

    def test_answered_proxied_missing_and_abandoned_requests(self) -> None:
        before = {key: self.count(*key) for key in
                  [("wk", "200"), ("web", "200"), ("-", "404"), ("matrix", "499"), ("-", "200"),
                   ("matrix", "502")]}
        failures = metrics.value("gatekeep_backend_connect_failures_total", listener="edge",
                                 route="web", reason="unreachable")
        timed = metrics.value("gatekeep_http_request_seconds_count", listener="edge",
                              site="site", route="web")
        h = Harness(SITE)
        _p, client = h.connect(
            b"GET /.well-known/matrix/client HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
            b"GET /health HTTP/1.1\r\nHost: www.example.org\r\n\r\n"
            b"GET /x HTTP/1.1\r\nHost: nowhere.example.net\r\n\r\n"
            b"GET /page HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
        backend, _transport = h.backend()
        h.reactor.advance(0.25)  # the backend takes a quarter of a second
        backend.dataReceived(OK_EMPTY)
        self.assertEqual(client.value().count(b"HTTP/1.1 "), 4)  # all four answered
        _p2, client2 = h.connect(b"GET /_matrix/x HTTP/1.1\r\nHost: matrix.example.org\r\n\r\n")
        client2.loseConnection()
        _p2.connectionLost(Failure(connectionDone))  # gone before the backend answered
        after = {key: self.count(*key) for key in before}
        self.assertEqual({key: after[key] - before[key] for key in before},
                         {("wk", "200"): 1, ("web", "200"): 1, ("-", "404"): 1,
                          ("matrix", "499"): 1, ("-", "200"): 1,  # ("-": health)
                          ("matrix", "502"): 0})  # the connect it cancelled: no failure
        self.assertEqual(metrics.value("gatekeep_backend_connect_failures_total",
                                       listener="edge", route="web", reason="unreachable"),
                         failures)
        self.assertEqual(metrics.value("gatekeep_http_request_seconds_count", listener="edge",
                                       site="site", route="web") - timed, 1)
        bucket = metrics.value("gatekeep_http_request_seconds_bucket", listener="edge",
                               site="site", route="web", le="0.25")
        self.assertGreaterEqual(bucket, 1)  # 0.25 s, in the le="0.25" bucket
