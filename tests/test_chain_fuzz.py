"""
Hostile bytes through the whole chain with the real detectors.

Whatever a client sends, split however, the connection ends up routed within
``detect_timeout``: no exception, no hang, and the route equals the one chosen
when the same bytes arrive in a single read.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gatekeep.registry import load_registry
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.values import Route, Service
from tests.helpers import RecordingTarget

_REGISTRY = load_registry()
_TARGET = RecordingTarget()
_SERVICE = Service("svc", (
    Route("tls", "tls", (), _TARGET),
    Route("xmpp", "xmpp", (), _TARGET),
    Route("http", "http", (), _TARGET),
    Route("ssh", "ssh", (), _TARGET),
), default="ssh")

PREFIXES = [b"", b"\x16\x03\x01", b"<?xml version='1.0'?>", b"<stream:stream ",
            b"GET / HTTP/1.1\r\n", b"PRI * HTTP/2.0\r\n", b"SSH-2.0-", b"\xef\xbb\xbf<"]


def route_taken(chunks: list[bytes]) -> tuple[str, bytes]:
    clock = Clock()
    runtime = ListenerRuntime.build("fuzz", _SERVICE, _REGISTRY.detectors, 5.0, clock)
    protocol = SniffingProtocol(runtime)
    protocol.makeConnection(StringTransport())
    _TARGET.attached.clear()
    for chunk in chunks:
        protocol.dataReceived(chunk)
    clock.advance(5.0)
    [attached] = _TARGET.attached
    assert clock.getDelayedCalls() == []
    return attached.inbound.route.name, attached.received


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.sampled_from(PREFIXES), st.binary(max_size=600), st.lists(st.integers(0, 700)))
def test_any_bytes_any_split_same_route(prefix: bytes, tail: bytes, cuts: list[int]) -> None:
    data = prefix + tail
    points = sorted({c for c in cuts if 0 < c < len(data)})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    whole = route_taken([data])
    split = route_taken(chunks)
    assert split == whole
    assert whole[1] == data
