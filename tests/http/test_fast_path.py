"""
The keep-alive fast paths equal the general ones: request heads read in one pass,
backend request heads written in one pass, response fields read without the regex
engine, and a response that arrives whole passed on in one call.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.http.fields import field_name
from gatekeep.http.forwarding import backend_head, request_fields, written
from gatekeep.http.reader import BadRequest, RequestHead, parse_head, parse_head_general
from gatekeep.http.response import _FIELD, BackendError, ResponseReader
from tests.http.harness import Harness, site_from
from tests.http.test_proxy import SITE

_NAMES = [b"Host", b"host", b"HOST", b"Content-Length", b"content-length",
          b"Transfer-Encoding", b"Connection", b"connection", b"Upgrade", b"Keep-Alive",
          b"TE", b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host",
          b"X-Forwarded-Port", b"Forwarded", b"X-Real-IP", b"User-Agent", b"Accept",
          b"Cookie", b"X-Secret", b"Proxy-Connection", b"Http2-Settings", b"Trailer",
          b"Referer", b"X_Under", b"X-A", b"x", b"", b"Bad Name", b"Bad\x01", b" Lead",
          b"\tTab", b"Na\xe9me", b"Colon:"]
_VALUES = [b"a.example", b"www.example.org", b"matrix.example.org:8448", b"[::1]:80",
           b"a b", b"", b" ", b"\t", b"0", b"12", b"+4", b"4, 4", b"007", b"1" * 19,
           b"chunked", b"gzip, chunked", b"close", b"keep-alive", b"Upgrade",
           b"X-Secret, close", b"x-secret", b"websocket", b"203.0.113.9", b"v\tv",
           b" pad ", b"\t pad\t", b"a\x00b", b"a\x7fb", b"caf\xe9", b"a\rb", b"a\nb",
           b"q\x0bq", b"\x1f", b'"quoted"', b"for=192.0.2.1"]
_LINES = [b"GET / HTTP/1.1", b"GET /a%2F//../b?x=1 HTTP/1.1", b"POST /up HTTP/1.1",
          b"HEAD / HTTP/1.0", b"GET / HTTP/1.0", b"OPTIONS * HTTP/1.1", b"GET * HTTP/1.1",
          b"GET http://a.example/x HTTP/1.1", b"GET https://b.example HTTP/1.1",
          b"GET http:/// HTTP/1.1", b"CONNECT a:443 HTTP/1.1", b"GET a/b HTTP/1.1",
          b"GET / HTTP/1.2", b"GET  / HTTP/1.1", b"G\x00T / HTTP/1.1", b"GET /\x80 HTTP/1.1",
          b"get / HTTP/1.1"]
_ENDS = [b"\r\n"] * 12 + [b"\n", b"\r", b"\r\r\n"]

_GOOD_NAMES = [n for n in _NAMES if field_name(n) not in (
    None, b"host", b"content-length", b"transfer-encoding")] + [b"Content-Length: 12\r\nX"]
_GOOD_VALUES = [v for v in _VALUES if re.fullmatch(rb"[\t \x21-\x7e\x80-\xff]*", v)]
_GOOD_LINES = [line for line in _LINES if b"1.1" in line and b"*" not in line][:5]
#: Mostly fields a client really sends (so that many heads are valid), some anything.
good_field = st.tuples(st.sampled_from(_GOOD_NAMES), st.sampled_from([b": ", b":", b":\t"]),
                       st.sampled_from(_GOOD_VALUES), st.just(b"\r\n"))
any_field = st.tuples(st.sampled_from(_NAMES), st.sampled_from([b":", b": ", b":\t", b" :", b""]),
                      st.one_of(st.sampled_from(_VALUES), st.binary(max_size=6)),
                      st.sampled_from(_ENDS))


@st.composite
def heads(draw: Any) -> bytes:
    clean = draw(st.integers(0, 3)) > 0
    parts = [draw(st.sampled_from(_GOOD_LINES if clean else _LINES))]
    if clean:
        parts += [b"\r\nHost: ", draw(st.sampled_from([b"a.example", b"www.example.org",
                                                        b"internal.example.net"]))]
    for name, colon, value, end in draw(st.lists(
            st.one_of(good_field, good_field, good_field, any_field), max_size=8)):
        parts += [end, name, colon, value]
    return b"".join(parts)


def outcome(parse: Any, head: bytes) -> Any:
    try:
        return parse(head)
    except BadRequest as bad:
        return ("refused", bad.reason, bad.status)


class RequestHeadEquivalence(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(heads())
    @example(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-Secret , Keep-Alive\r\nX-Secret: 1")
    @example(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5")
    @example(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a")
    @example(b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c")
    @example(b"GET / HTTP/1.0\r\nConnection: keep-alive")
    def test_one_pass_equals_line_by_line(self, head: bytes) -> None:
        self.assertEqual(outcome(parse_head, head), outcome(parse_head_general, head))

    def test_clean_heads_take_the_one_pass(self) -> None:
        head = (b"GET /x HTTP/1.1\r\nHost: a.example\r\nUser-Agent: wrk\r\n"
                b"Connection: keep-alive, Foo")
        parsed = parse_head(head)
        self.assertEqual(parsed, parse_head_general(head))
        self.assertEqual(parsed.connection, frozenset({b"keep-alive", b"foo"}))
        self.assertEqual(field_name(b"User-Agent"), b"user-agent")
        self.assertIsNone(field_name(b"User Agent"))


_SITE = site_from(SITE)
_CLIENTS = [IPv4Address("TCP", "198.51.100.4", 5000), IPv4Address("TCP", "127.0.0.7", 1),
            IPv6Address("TCP", "2001:db8::1", 5000), IPv6Address("TCP", "::ffff:192.0.2.1", 2),
            UNIXAddress(None)]


class BackendHeadEquivalence(SynchronousTestCase):
    @settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(heads(), st.sampled_from(_SITE.routes), st.sampled_from(_CLIENTS),
           st.sampled_from(["http", "https"]),
           st.sampled_from([None, b"websocket"]))
    def test_one_pass_equals_the_field_list(self, raw: bytes, route: Any, client: Any,
                                            scheme: str, upgrade: bytes | None) -> None:
        parsed = outcome(parse_head, raw)
        if not isinstance(parsed, RequestHead) or route.to is None:
            return
        self.assertEqual(
            backend_head(_SITE, route, parsed, client, scheme, upgrade),
            written(parsed, request_fields(_SITE, route, parsed, client, scheme, upgrade)))

    def test_h2_heads_without_connection_tokens(self) -> None:
        head = RequestHead(b"GET", b"/", b"2", ((b"host", b"a"), (b"x-forwarded-for", b"1")),
                           "a", None, b"a", b"/", None, False)
        route = _SITE.routes[-1]
        self.assertEqual(
            backend_head(_SITE, route, head, _CLIENTS[0], "https", None),
            written(head, request_fields(_SITE, route, head, _CLIENTS[0], "https", None)))


def regex_fields(lines: list[bytes]) -> Any:
    """The response fields as the regex reader read them (the reference)."""
    fields = []
    for raw in lines:
        found = _FIELD.fullmatch(raw)
        if found is None or raw[:1] in (b" ", b"\t"):
            return "refused"
        fields.append((found.group(1), found.group(2)))
    return fields


class ResponseEquivalence(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from([b":", b": ", b" :", b""]),
                              st.one_of(st.sampled_from(_VALUES), st.binary(max_size=6))),
                    max_size=6))
    def test_fields_equal_the_regex(self, triples: list[tuple[bytes, bytes, bytes]]) -> None:
        lines = [n + c + v for n, c, v in triples if b"\n" not in n + c + v and n + c + v]
        reader = ResponseReader()
        reader.expect(b"GET", False)
        reader.feed(b"HTTP/1.1 200 OK\r\n" + b"".join(line + b"\r\n" for line in lines)
                    + b"\r\n")
        try:
            got: Any = reader.next_event().fields  # type: ignore[union-attr]
        except BackendError as error:
            got = "refused" if "header field" in str(error) else "other"
        expected = regex_fields(lines)
        if got != "other":
            self.assertEqual(got, expected)

    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from([b"GET", b"HEAD"]),
           st.sampled_from([200, 204, 304, 404, 500]),
           st.lists(st.sampled_from([b"Server: nginx", b"Connection: keep-alive",
                                     b"Connection: close", b"Connection: X-Secret",
                                     b"X-Secret: 1", b"Keep-Alive: timeout=5",
                                     b"Content-Type: text/plain", b"Content-Length: 5",
                                     b"Content-Length: 5, 5", b"Content-Length: 3",
                                     b"Transfer-Encoding: chunked", b"Upgrade: h2c"]),
                    max_size=5),
           st.sampled_from([b"hello", b"abc", b"", b"5\r\nhello\r\n0\r\n\r\n"]))
    def test_a_whole_response_equals_its_bytes_one_by_one(
            self, method: bytes, status: int, fields: list[bytes], body: bytes) -> None:
        response = (b"HTTP/1.1 %d X\r\n" % status + b"".join(f + b"\r\n" for f in fields)
                    + b"\r\n" + body)
        outputs = []
        cut = response.index(b"\r\n\r\n") + 4
        # Whole, or the head byte by byte (the general path) and then the body.
        for pieces in ([response], [response[i:i + 1] for i in range(cut)] + [response[cut:]]):
            h = Harness(SITE)
            protocol, client = h.connect(method + b" / HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
            backend, transport = h.backend()
            for piece in pieces:
                backend.dataReceived(piece)
            protocol.dataReceived(b"GET /2 HTTP/1.1\r\nHost: www.example.org\r\n\r\n")
            outputs.append((client.value(), client.disconnecting, transport.value(),
                            transport.disconnecting, len(h.reactor.tcpClients)))
        self.assertEqual(outputs[0], outputs[1])


class StatusLine(SynchronousTestCase):
    def test_reference_regex_is_the_one_documented(self) -> None:
        self.assertEqual(_FIELD.pattern, rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*(.*?)[ \t]*")
        self.assertIsInstance(_FIELD, re.Pattern)
