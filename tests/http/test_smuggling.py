"""Requests that could smuggle another one are answered 400 (or 501) and never forwarded."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from gatekeep.http.reader import BadRequest, RequestReader
from tests.http.harness import Harness
from tests.tlscerts import scratch_dir

SITE = """
[http.site]
[[http.site.route]]
name = "web"
to = "tcp:127.0.0.1:8080"
"""

GOOD = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"

BAD_HEADS = {
    "cl-te": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n",
    "te-cl": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
             b"Content-Length: 4\r\n\r\n",
    "two-cl": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
    "cl-list": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\n",
    "cl-sign": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\n",
    "two-host": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no-host": b"GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
    "bad-name": b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: z\r\n\r\n",
    "ctl-in-value": b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: a\n\n",
    "bare-cr": b"GET / HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
    "te-gzip": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
    "te-twice": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n",
    "te-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    "bad-target": b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
    "bad-version": b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    "bad-host": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
}

BAD_CHUNKS = {
    "hex-prefix": b"0x4\r\nwiki\r\n0\r\n\r\n",
    "negative": b"-4\r\nwiki\r\n0\r\n\r\n",
    "too-long": b"4\r\nwikipedia\r\n0\r\n\r\n",
    "space-size": b"4 \r\nwiki\r\n0\r\n\r\n",
    "huge": b"11111111111111111\r\n",
    "lf-only": b"4\nwiki\n0\n\n",
    "bad-ext": b"4;a b\r\nwiki\r\n0\r\n\r\n",
}


class Reader(SynchronousTestCase):
    def test_bad_heads_raise(self) -> None:
        for name, head in BAD_HEADS.items():
            reader = RequestReader()
            reader.feed(head)
            with self.assertRaises(BadRequest, msg=name):
                reader.next_event()

    def test_bad_chunks_raise(self) -> None:
        for name, body in BAD_CHUNKS.items():
            reader = RequestReader()
            reader.feed(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
            reader.next_event()
            with self.assertRaises(BadRequest, msg=name):
                for _ in range(10):
                    reader.next_event()

    def test_any_split_reads_the_same(self) -> None:
        data = (b"POST /a%2F//../b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;x=\"y\"\r\nabc\r\n0\r\nT: 1\r\n\r\n")
        for split in range(1, len(data)):
            reader = RequestReader()
            events: list[object] = []
            for part in (data[:split], data[split:]):
                reader.feed(part)
                while True:
                    event = reader.next_event()
                    if repr(event) in ("NEED_DATA", "PAUSED"):
                        break
                    events.append(event)
            body = b"".join(e for e in events if isinstance(e, bytes))
            self.assertEqual(body, b"abc", split)
            self.assertEqual(repr(events[-1]), "END", split)


class Proxy(SynchronousTestCase):
    def check_refused(self, data: bytes, name: str, detect: bool) -> None:
        h = Harness(SITE, detect=detect)
        _p, client = h.connect(data)
        out = client.value()
        if not (detect and out == b""):  # the detector may refuse it as not HTTP at all
            self.assertRegex(out[:13], rb"HTTP/1.1 (400|501|431) ", name)
            self.assertIn(b"Connection: close\r\n", out, name)
        self.assertTrue(client.disconnecting, name)
        self.assertEqual(h.reactor.tcpClients, [], name)

    def test_bad_first_request(self) -> None:
        for name, head in BAD_HEADS.items():
            self.check_refused(head, name, detect=False)
            self.check_refused(head, name, detect=True)

    def test_bad_second_request_after_a_good_one(self) -> None:
        for name, head in BAD_HEADS.items():
            h = Harness(SITE)
            _protocol, client = h.connect(GOOD + head)
            backend, transport = h.backend()
            backend.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
            self.assertEqual(transport.value().count(b"HTTP/1.1\r\n"), 1, name)
            self.assertRegex(client.value(), rb"\r\n\r\nHTTP/1.1 (400|501|431) ", name)
            self.assertTrue(client.disconnecting, name)

    def test_bad_chunk_is_400_and_closes_the_backend(self) -> None:
        for name, body in BAD_CHUNKS.items():
            h = Harness(SITE)
            protocol, client = h.connect(
                b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            _backend, transport = h.backend()
            protocol.dataReceived(body)
            self.assertTrue(client.value().startswith(b"HTTP/1.1 400 "), name)
            self.assertTrue(client.disconnecting, name)
            self.assertTrue(transport.disconnecting, name)


class AccessLogged(SynchronousTestCase):
    def test_a_refused_head_has_its_access_log_line(self) -> None:
        log = str(scratch_dir(self) / "access.log")
        h = Harness(SITE.replace("[http.site]\n", f'[http.site]\naccess_log = "{log}"\n'))
        h.connect(BAD_HEADS["cl-te"])
        h.target.access_log.close()  # type: ignore[union-attr]
        with open(log, encoding="utf-8") as lines:
            [line] = lines.read().splitlines()
        self.assertRegex(line, r'^198\.51\.100\.4 - - \[[^]]+\] "-" 400 0 "-" "-" -$')
