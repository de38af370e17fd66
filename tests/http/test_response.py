"""The backend response reader: framing by RFC 9112 6.3, whatever the split."""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from gatekeep.http.response import (
    END,
    NEED_DATA,
    BackendError,
    Informational,
    ResponseHead,
    ResponseReader,
)


def read(data: bytes, method: bytes = b"GET", eof: bool = False, split: int = 0,
         upgrade: bool = False) -> list[Any]:
    reader = ResponseReader()
    reader.expect(method, upgrade)
    events: list[Any] = []
    parts = [data[:split], data[split:]] if split else [data]
    for index, part in enumerate(parts):
        reader.feed(part)
        if eof and index == len(parts) - 1:
            reader.feed_eof()
        while True:
            event = reader.next_event()
            if event is NEED_DATA:
                break
            events.append(event)
            if event is END or (isinstance(event, ResponseHead) and event.switched):
                return events
    return events


def body_of(events: list[Any]) -> bytes:
    return b"".join(e for e in events if isinstance(e, bytes))


class Framing(SynchronousTestCase):
    def test_every_split_gives_the_same_events(self) -> None:
        cases = [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", b"hello"),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"3;x=y\r\nhel\r\n2\r\nlo\r\n0\r\nTrailer: 1\r\n\r\n", b"hello"),
            (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", b""),
        ]
        for data, body in cases:
            for split in range(1, len(data)):
                events = read(data, split=split)
                self.assertIs(events[-1], END, (data, split))
                self.assertEqual(body_of(events), body, (data, split))

    def test_no_body_after_head_204_304(self) -> None:
        events = read(b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", method=b"HEAD")
        head = events[0]
        assert isinstance(head, ResponseHead)
        self.assertEqual((head.length, head.keep_alive, events[-1]), (99, True, END))
        for status in (b"204 No Content", b"304 Not Modified"):
            events = read(b"HTTP/1.1 " + status + b"\r\nContent-Length: 3\r\n\r\n")
            self.assertEqual(events[-1], END)
            self.assertEqual(body_of(events), b"")

    def test_close_delimited_and_other_codings_read_to_eof(self) -> None:
        for data in (b"HTTP/1.1 200 OK\r\n\r\nall of it",
                     b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nall of it",
                     b"HTTP/1.0 200 OK\r\nContent-Type: x\r\n\r\nall of it"):
            events = read(data, eof=True)
            head = events[0]
            assert isinstance(head, ResponseHead)
            self.assertFalse(head.keep_alive)
            self.assertEqual(body_of(events), b"all of it")
            self.assertIs(events[-1], END)

    def test_keep_alive(self) -> None:
        for data, keep in ((b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
                           (b"HTTP/1.1 200 OK\r\nConnection: close\r\n"
                            b"Content-Length: 0\r\n\r\n", False),
                           (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False)):
            head = read(data)[0]
            assert isinstance(head, ResponseHead)
            self.assertEqual(head.keep_alive, keep)

    def test_informational_and_upgrade(self) -> None:
        events = read(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertIsInstance(events[0], Informational)
        switched = read(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\nxy",
                        upgrade=True)
        head = switched[-1]
        assert isinstance(head, ResponseHead)
        self.assertTrue(head.switched)

    def test_broken_responses(self) -> None:
        for data, eof in [
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", False),
            (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", False),  # no upgrade asked
            (b"HTTP/2 200\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", False),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", False),
            (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel", True),
            (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhello\r\n", False),
            (b"", True),
        ]:
            with self.assertRaises(BackendError, msg=repr(data)):
                read(data, eof=eof)
