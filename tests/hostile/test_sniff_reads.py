"""
The sniffer reads at most SNIFF_CAP bytes at a time from a TCP transport while no route
is chosen (Twisted reads 64 KiB otherwise), and gives the transport its normal read size
back once routed. Found by the 10,000-connection test: clients that send 64 KiB at once
cost gatekeep 74-123 KiB each before detection ended; with the cap, 23-25 KiB.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.testing import MemoryReactorClock

from gatekeep.sniff import SNIFF_CAP, ListenerRuntime, SniffingProtocol
from gatekeep.values import Route, Service
from tests.helpers import MagicDetector, RecordingTarget


@pytest.fixture
def server_transport() -> Iterator[tuple[tcp.Server, MemoryReactorClock, SniffingProtocol]]:
    reactor = MemoryReactorClock()
    target = RecordingTarget()
    service = Service("svc", (Route("abc", "abc", (), target),))
    runtime = ListenerRuntime.build("edge", service, {"abc": MagicDetector("abc", b"ABC")},
                                    5.0, reactor)
    protocol = SniffingProtocol(runtime)
    listener = socket.create_server(("127.0.0.1", 0))
    right = socket.create_connection(listener.getsockname())
    left, peer = listener.accept()
    transport = tcp.Server(left, protocol, peer, None, 1, reactor)  # type: ignore[arg-type]
    try:
        yield transport, reactor, protocol
    finally:
        for sock in (left, right, listener):
            sock.close()


def test_reads_are_capped_while_sniffing_and_restored_after(
        server_transport: tuple[tcp.Server, MemoryReactorClock, SniffingProtocol]) -> None:
    transport, _reactor, protocol = server_transport
    assert tcp.Server.bufferSize == 65536
    protocol.makeConnection(transport)
    assert transport.bufferSize == SNIFF_CAP
    protocol.dataReceived(b"AB")
    assert transport.bufferSize == SNIFF_CAP  # still undecided
    protocol.dataReceived(b"Cx")
    assert protocol.attached is not None  # routed
    assert transport.bufferSize == 65536
    assert "bufferSize" not in vars(transport)
