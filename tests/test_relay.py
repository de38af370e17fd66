"""
The forward relay over real sockets: byte-exact both ways, half-close, flow control.

The peers run as separate processes (tests/relay_peer.py) so that gatekeep's
reactor is the only thing moving bytes in this process.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import defer, reactor, task
from twisted.trial.unittest import TestCase

from gatekeep.relay import Relay
from gatekeep.sniff import SniffingProtocol
from tests.helpers import LinePeer, captured_log, start_gatekeep

PEER = str(Path(__file__).with_name("relay_peer.py"))
MiB = 1024 * 1024

CONFIG = """
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
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


def _buffered(transport: Any) -> int:
    return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)


@pytest.mark.slow
class RelayOverSocketsTests(TestCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_64MiB_each_way_with_half_close(self) -> Any:
        size = 64 * MiB
        backend = LinePeer(reactor, [PEER, "backend", "2", str(size)])
        port = int((yield backend.next_line()))
        ports = start_gatekeep(self, CONFIG.format(port=port))
        with captured_log("gatekeep.connection") as events:
            client = LinePeer(reactor, [PEER, "client", str(ports["relay"]), "1", str(size)])
            client_report = json.loads((yield client.next_line()))
            backend_report = json.loads((yield backend.next_line()))
            yield client.ended
            yield backend.ended
            while not events:  # the log line follows the close by at most a turn
                yield task.deferLater(reactor, 0.01, lambda: None)
        self.assertEqual(client_report["received"], size)
        self.assertEqual(backend_report["received"], size)
        self.assertEqual(client_report["received_sha256"], backend_report["sent_sha256"])
        self.assertEqual(backend_report["received_sha256"], client_report["sent_sha256"])
        [event] = events
        self.assertEqual((event["bytes_in"], event["bytes_out"]), (size, size))
        self.assertEqual(event["route"], "rest")
        self.assertEqual(event["close_reason"], "done")

    @defer.inlineCallbacks
    def test_slow_reader_bounds_buffering(self) -> Any:
        """A client that does not read makes gatekeep stop reading the backend."""
        size = 64 * MiB
        backend = LinePeer(reactor, [PEER, "backend", "3", str(size)])
        port = int((yield backend.next_line()))
        ports = start_gatekeep(self, CONFIG.format(port=port))
        client = LinePeer(
            reactor, [PEER, "client", str(ports["relay"]), "4", "1", "--wait-go"])
        relays: list[Relay] = []
        peak = 0
        progress: list[int] = []

        def sample() -> None:
            nonlocal peak
            if not relays:
                relays.extend(_live_relays())
                return
            relay = relays[0]
            peak = max(peak, _buffered(relay.client), _buffered(relay.backend))
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
            self.fail(f"bytes kept flowing to a client that reads nothing: {progress[-1:]}")
        stalled_at = progress[-1]
        self.assertLess(stalled_at, size // 2, "gatekeep kept reading a backend nobody reads")
        client.write(b"go\n")
        client_report = json.loads((yield client.next_line()))
        backend_report = json.loads((yield backend.next_line()))
        sampler.stop()
        yield client.ended
        yield backend.ended
        self.assertEqual(client_report["received_sha256"], backend_report["sent_sha256"])
        # Twisted pauses a producer once a transport buffers 64 KiB; one more read
        # (at most 64 KiB) may land before the pause: the bound is a few of those.
        self.assertLessEqual(peak, 512 * 1024, f"gatekeep buffered {peak} bytes")


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
