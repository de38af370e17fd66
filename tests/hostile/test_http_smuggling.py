"""
HTTP request smuggling against a running gatekeep (``http = "site"``) and a real
backend that echoes every request head it receives (tests/integration/http_echo.py).

- A corpus of desync attempts (CL/TE conflicts and TE obfuscations, duplicate or
  malformed Content-Length and Host, obs-fold, bad chunk sizes and chunk ends, odd
  request lines), each sent after a good request on the same connection with a
  smuggled ``GET /smuggled`` hidden where a lenient parser would find it: the good
  request is answered, the bad one gets 400 (501 for unknown codings, 431 for huge
  heads) and the connection is closed; no backend ever sees ``/smuggled``, and a
  fresh client afterwards gets its own answer (no poisoned backend connection).
- Pipelined requests (with bodies, chunked and not) are answered in order.
- X-Forwarded-For, Forwarded and X-Forwarded-Host from an untrusted client never
  reach the backend: it sees gatekeep's values only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.harness import exchange, start_echo, start_gatekeep
from tests.integration.peers import Gatekeep

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "web"
endpoint = "tcp:0:interface=127.0.0.1"
service = "web"
[service.web]
[[service.web.route]]
name = "site"
http = "site"

[http.site]
[[http.site.route]]
name = "all"
to = "tcp:127.0.0.1:{port}"
"""

GOOD = b"GET /good HTTP/1.1\r\nHost: a.example\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a.example\r\n\r\n"
CHUNKED_SMUGGLE = b"0\r\n\r\n" + SMUGGLED


def post(*fields: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    head = b"POST /bad HTTP/" + version + b"\r\nHost: a.example\r\n"
    return head + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + body


CL = b"Content-Length: %d" % len(CHUNKED_SMUGGLE)
TE = b"Transfer-Encoding: chunked"
CORPUS: dict[str, bytes] = {
    "cl-te": post(CL, TE, body=CHUNKED_SMUGGLE),
    "te-cl": post(TE, CL, body=CHUNKED_SMUGGLE),
    "te-space-before-colon": post(CL, b"Transfer-Encoding : chunked", body=CHUNKED_SMUGGLE),
    "te-vtab": post(CL, b"Transfer-Encoding:\x0bchunked", body=CHUNKED_SMUGGLE),
    "te-xchunked": post(CL, b"Transfer-Encoding: xchunked", body=CHUNKED_SMUGGLE),
    "te-chunked-identity": post(b"Transfer-Encoding: chunked, identity", body=CHUNKED_SMUGGLE),
    "te-identity-chunked": post(CL, b"Transfer-Encoding: identity, chunked",
                                body=CHUNKED_SMUGGLE),
    "te-twice": post(TE, b"Transfer-Encoding: x", body=CHUNKED_SMUGGLE),
    "te-obs-fold": post(CL, b"Transfer-Encoding:", b" chunked", body=CHUNKED_SMUGGLE),
    "te-http10": post(TE, body=CHUNKED_SMUGGLE, version=b"1.0"),
    "te-nul": post(CL, b"Transfer-Encoding: chunked\x00", body=CHUNKED_SMUGGLE),
    "two-cl": post(b"Content-Length: 0", CL, body=SMUGGLED),
    "two-cl-case": post(b"content-length: 0", CL, body=SMUGGLED),
    "cl-list": post(b"Content-Length: 0, %d" % len(SMUGGLED), body=SMUGGLED),
    "cl-plus": post(b"Content-Length: +0", body=SMUGGLED),
    "cl-minus": post(b"Content-Length: -1", body=SMUGGLED),
    "cl-hex": post(b"Content-Length: 0x0", body=SMUGGLED),
    "cl-space-inside": post(b"Content-Length: 1 0", body=SMUGGLED),
    "cl-empty": post(b"Content-Length:", body=SMUGGLED),
    "cl-overflow": post(b"Content-Length: 18446744073709551617", body=SMUGGLED),
    "cl-obs-fold": post(b"Content-Length:", b" 0", body=SMUGGLED),
    "two-host": b"GET /bad HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n" + SMUGGLED,
    "no-host": b"GET /bad HTTP/1.1\r\nX: y\r\n\r\n" + SMUGGLED,
    "host-userinfo": b"GET /bad HTTP/1.1\r\nHost: u@a.example\r\n\r\n" + SMUGGLED,
    "obs-fold": b"GET /bad HTTP/1.1\r\nHost: a.example\r\nX: a\r\n b\r\n\r\n" + SMUGGLED,
    "first-line-folded": b"GET /bad HTTP/1.1\r\n Host: a.example\r\n\r\n" + SMUGGLED,
    "bare-lf-head": b"GET /bad HTTP/1.1\nHost: a.example\n\n" + SMUGGLED,
    "bare-cr-head": b"GET /bad HTTP/1.1\r\nHost: a.example\rX: y\r\n\r\n" + SMUGGLED,
    "two-spaces": b"GET  /bad HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED,
    "tab-separator": b"GET\t/bad HTTP/1.1\r\nHost: a.example\r\n\r\n" + SMUGGLED,
    "trailing-space": b"GET /bad HTTP/1.1 \r\nHost: a.example\r\n\r\n" + SMUGGLED,
    "http12": b"GET /bad HTTP/1.2\r\nHost: a.example\r\n\r\n" + SMUGGLED,
    "chunk-size-hex-prefix": post(TE, body=b"0x0\r\n\r\n" + SMUGGLED),
    "chunk-size-plus": post(TE, body=b"+0\r\n\r\n" + SMUGGLED),
    "chunk-size-overflow": post(TE, body=b"10000000000000000\r\n" + b"x" * 20 + SMUGGLED),
    "chunk-size-space": post(TE, body=b"0 \r\n\r\n" + SMUGGLED),
    "chunk-bare-lf": post(TE, body=b"0\n\n" + SMUGGLED),
    "chunk-data-too-long": post(TE, body=b"1\r\nxx\r\n0\r\n\r\n" + SMUGGLED),
    "chunk-no-crlf": post(TE, body=b"1\r\nx0\r\n\r\n" + SMUGGLED),
    "chunk-ext-bare-cr": post(TE, body=b"0;a\rb\r\n\r\n" + SMUGGLED),
    "trailer-obs-fold": post(TE, body=b"0\r\nT: 1\r\n 2\r\n\r\n" + SMUGGLED),
    "huge-head": b"GET /bad HTTP/1.1\r\nHost: a.example\r\nX: " + b"a" * 70000 + b"\r\n\r\n",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeep]:
    root = tmp_path_factory.mktemp("smuggling")
    echo = start_echo(root / "echo")
    gatekeep = start_gatekeep(root / "gk", CONFIG.format(port=echo.port), ["web"])
    yield gatekeep
    gatekeep.stop()
    echo.peer.stop()
    assert b"/smuggled" not in (root / "echo" / "echo.log").read_bytes()


def send(port: int, data: bytes) -> bytes:
    """Send ``data``; everything read until gatekeep closes."""
    return exchange(port, data)[0]


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each response in ``data`` (Content-Length framed)."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        found.append((status, rest[:length]))
        data = rest[length:]
    return found


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_smuggling_attempt_refused(site: Gatekeep, name: str) -> None:
    port = site.port("web")
    got = send(port, GOOD + CORPUS[name])
    answers = responses(got)
    assert answers, got
    assert answers[0][0] == 200 and b"GET /good HTTP/1.1" in answers[0][1], got[:300]
    assert len(answers) == 2, got[:600]
    assert answers[1][0] in (400, 431, 501), got[:600]
    assert b"Connection: close" in got.split(b"\r\n\r\n")[-2] or b"close" in got.lower()
    assert b"/smuggled" not in got
    # A new client is served its own request: no backend connection was poisoned.
    fresh = responses(send(port, b"GET /fresh HTTP/1.1\r\nHost: a.example\r\n"
                                     b"Connection: close\r\n\r\n"))
    assert [s for s, _ in fresh] == [200]
    assert b"GET /fresh HTTP/1.1" in fresh[0][1]


def test_pipelined_requests_answered_in_order(site: Gatekeep) -> None:
    requests = b"".join([
        b"GET /1 HTTP/1.1\r\nHost: a.example\r\n\r\n",
        b"POST /2 HTTP/1.1\r\nHost: a.example\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /3 HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
        b"GET /4 HTTP/1.1\r\nHost: b.example\r\n\r\n",
        b"GET /5 HTTP/1.1\r\nHost: a.example\r\nConnection: close\r\n\r\n",
    ])
    answers = responses(send(site.port("web"), requests))
    assert [s for s, _ in answers] == [200] * 5
    for index, (_, body) in enumerate(answers, 1):
        assert body.split(b" ", 2)[1] == b"/%d" % index, body[:100]
    assert b"body=5 " in answers[1][1] and b"body=3 " in answers[2][1]


def test_forwarded_headers_from_an_untrusted_client_never_reach_the_backend(
        site: Gatekeep) -> None:
    forged = (b"GET /xff HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 6.6.6.6\r\n"
              b"x-forwarded-for: 6.6.6.7\r\nForwarded: for=6.6.6.6;proto=https\r\n"
              b"X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n"
              b"X-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n")
    [(status, body)] = responses(send(site.port("web"), forged))
    assert status == 200
    assert b"6.6.6." not in body.replace(b"X-Real-IP: 6.6.6.6", b""), body
    assert b"evil.example" not in body
    lowered = body.lower()
    assert b"x-forwarded-for: 127.0.0.1\r\n" in lowered
    assert lowered.count(b"x-forwarded-for:") == 1
    assert b"x-forwarded-proto: http\r\n" in lowered
