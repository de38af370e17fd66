"""
The PROXY protocol's receiver rules, one test each, through the whole chain as the
service builds it (config, access rules, forward target sending PROXY v2), on
in-memory transports and a fake clock; then 10,000 valid headers from an untrusted
source, none of which reaches a log line, an access rule, an outgoing PROXY header or
X-Forwarded-For.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent

from gatekeep.config.loader import load_config
from gatekeep.proxyproto import (
    TLV,
    Command,
    Family,
    InetAddress,
    ProxyHeader,
    build,
    parse,
)
from gatekeep.proxyproto import tlv as t
from gatekeep.registry import load_registry
from gatekeep.service import GatekeepService
from gatekeep.sniff import SniffingProtocol
from tests.helpers import captured_log
from tests.hostile.properties import fast_and_full
from tests.proxyproto.strategies import headers

REAL = IPv4Address("TCP", "198.51.100.4", 50123)  # an untrusted client
LB = IPv4Address("TCP", "10.0.0.5", 40000)  # a trusted load balancer
HOST = IPv4Address("TCP", "127.0.0.1", 443)
HTTP = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"

CONFIG = """
[[listener]]
name = "{mode}"
endpoint = "tcp:{port}"
service = "fwd"
proxy_protocol = "{mode}"
trusted_proxies = ["10.0.0.0/8"]
detect_timeout = "2s"

[[listener]]
name = "{mode}-acl"
endpoint = "tcp:{acl_port}"
service = "fwd"
proxy_protocol = "{mode}"
trusted_proxies = ["10.0.0.0/8"]
access = "no-real"
detect_timeout = "2s"

[access.no-real]
deny = ["198.51.100.0/24"]
default = "allow"

[service.fwd]
[[service.fwd.route]]
name = "all"
forward = {{ to = "tcp:127.0.0.1:9", proxy_protocol = "v2" }}
"""

_REGISTRY = load_registry()


class Chain:
    """The listeners of one ``proxy_protocol`` mode, as the service would run them."""

    def __init__(self, mode: str) -> None:
        self.reactor = MemoryReactorClock()
        config = load_config(CONFIG.format(mode=mode, port=1000, acl_port=1001), _REGISTRY)
        service = GatekeepService(config, _REGISTRY, self.reactor)
        self.runtimes = {listener.name: service._runtime(listener, config)
                         for listener in config.listeners}
        self.mode = mode

    def connect(self, data: bytes, peer: Any = REAL, acl: bool = False
                ) -> tuple[SniffingProtocol, StringTransport]:
        runtime = self.runtimes[f"{self.mode}-acl" if acl else self.mode]
        protocol = SniffingProtocol(runtime)
        transport = StringTransport(peerAddress=peer, hostAddress=HOST)
        protocol.makeConnection(transport)
        if data and not closed(transport):
            protocol.dataReceived(data)
        return protocol, transport

    def backend_bytes(self) -> bytes | None:
        """What the forward target wrote to the backend it connected to, if it did."""
        if not self.reactor.tcpClients:
            return None
        host, port, factory, _timeout, _bind = self.reactor.tcpClients.pop()
        protocol: Any = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return bytes(transport.value())


def closed(transport: StringTransport) -> bool:
    """Whether gatekeep closed (or is closing) the client's connection."""
    return bool(transport.disconnecting)


def v2(source: str = "203.0.113.7", *tlvs: TLV, command: Command = Command.PROXY) -> bytes:
    src = InetAddress(ipaddress.ip_address(source), 4242)
    dst = InetAddress(ipaddress.ip_address("192.0.2.1"), 443)
    return build(ProxyHeader(2, command, Family.TCP4, src, dst, tlvs))


def outgoing_source(data: bytes | None) -> str:
    assert data is not None, "no backend connection"
    header = parse(data)
    assert isinstance(header, ProxyHeader), header
    return str(header.source.host)  # type: ignore[union-attr]


# ------------------------------------------------------------------ the rules


def test_never_guess_off_means_the_header_is_client_data() -> None:
    chain = Chain("off")
    protocol, _transport = chain.connect(v2() + HTTP, peer=LB)
    assert protocol.record is not None and protocol.record.client == "10.0.0.5:40000"
    data = chain.backend_bytes()
    assert outgoing_source(data) == "10.0.0.5"
    assert data is not None and data.endswith(v2() + HTTP)  # passed on, not interpreted


@pytest.mark.parametrize("mode", ["optional", "required"])
def test_header_only_from_trusted_sources(mode: str) -> None:
    chain = Chain(mode)
    _protocol, transport = chain.connect(v2() + HTTP)
    assert closed(transport) and transport.value() == b""
    assert chain.backend_bytes() is None
    protocol, transport = chain.connect(v2() + HTTP, peer=LB)
    assert not closed(transport)
    assert protocol.record is not None and protocol.record.client == "203.0.113.7:4242"
    assert outgoing_source(chain.backend_bytes()) == "203.0.113.7"


def test_required_refuses_untrusted_peers_at_accept_and_a_missing_header() -> None:
    chain = Chain("required")
    _protocol, transport = chain.connect(b"")
    assert closed(transport)  # before it sent a byte
    _protocol, transport = chain.connect(HTTP, peer=LB)
    assert closed(transport)
    assert chain.backend_bytes() is None


def test_optional_without_header_from_a_trusted_peer_is_its_own_client() -> None:
    chain = Chain("optional")
    protocol, _transport = chain.connect(HTTP, peer=LB)
    assert protocol.record is not None and protocol.record.client == "10.0.0.5:40000"
    assert outgoing_source(chain.backend_bytes()) == "10.0.0.5"


def test_v1_line_cap_107_bytes() -> None:
    longest = b"PROXY UNKNOWN " + b"f" * (107 - 16) + b"\r\n"
    assert len(longest) == 107
    chain = Chain("required")
    _protocol, transport = chain.connect(longest + HTTP, peer=LB)
    assert not closed(transport)
    assert chain.backend_bytes() is not None
    # One byte more, and the line is refused once the 107th byte is not the end of it.
    protocol, transport = chain.connect(b"PROXY UNKNOWN " + b"f" * 92, peer=LB)
    assert not closed(transport)
    protocol.dataReceived(b"f")
    assert closed(transport)
    assert chain.backend_bytes() is None


def test_v2_length_cap_refused_from_the_fixed_header() -> None:
    chain = Chain("required")
    fixed = b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + (65535).to_bytes(2, "big")
    _protocol, transport = chain.connect(fixed, peer=LB)
    assert closed(transport)  # not waiting for 64 KiB it announced
    assert chain.backend_bytes() is None


def test_local_and_unknown_keep_the_real_endpoints() -> None:
    chain = Chain("required")
    local = v2(command=Command.LOCAL)
    for header in (local, b"PROXY UNKNOWN\r\n", b"PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n"):
        protocol, transport = chain.connect(header + HTTP, peer=LB)
        assert not closed(transport), header
        assert protocol.record is not None and protocol.record.client == "10.0.0.5:40000"
        assert outgoing_source(chain.backend_bytes()) == "10.0.0.5"


def test_crc32c_checked() -> None:
    chain = Chain("required")
    good = v2("203.0.113.7", TLV(t.ALPN, b"h2"), TLV(t.CRC32C, bytes(4)))
    _protocol, transport = chain.connect(good + HTTP, peer=LB)
    assert not closed(transport)
    assert outgoing_source(chain.backend_bytes()) == "203.0.113.7"
    bad = bytearray(good)
    bad[-1] ^= 0x01  # the checksum's last byte
    _protocol, transport = chain.connect(bytes(bad) + HTTP, peer=LB)
    assert closed(transport)
    assert chain.backend_bytes() is None


def test_trickled_header_refused_at_the_total_deadline() -> None:
    chain = Chain("required")
    protocol, transport = chain.connect(b"P", peer=LB)
    for byte in b"ROXY TCP4 ":
        chain.reactor.advance(0.19)
        protocol.dataReceived(bytes([byte]))
    assert not closed(transport)
    chain.reactor.advance(0.2)  # 2.0 s since accept, however recently a byte came
    assert closed(transport)
    assert chain.backend_bytes() is None


# ------------------------------------------------------------------ untrusted headers


def _valid_inet(header: ProxyHeader) -> bool:
    return header.command is Command.PROXY and header.family in (Family.TCP4, Family.TCP6)


def _check_untrusted(mode: str, header: ProxyHeader, v1: bool) -> None:
    chain = CHAINS[mode]
    if v1:
        header = ProxyHeader(1, header.command, header.family, header.source,
                             header.destination)
    wire = build(header)
    forged = str(header.source.host) if isinstance(header.source, InetAddress) else None
    with captured_log() as events:
        protocol, transport = chain.connect(wire + HTTP)
        _acl, acl_transport = chain.connect(wire + HTTP, acl=True)
        sent = chain.backend_bytes()
        protocol.connectionLost()
    # The access rule denies the real client, whatever the header claims.
    assert closed(acl_transport)
    assert protocol.record is not None and protocol.record.client == "198.51.100.4:50123"
    if mode == "off":
        # The header is client data; the backend's header names the real client.
        assert outgoing_source(sent) == "198.51.100.4"
    else:
        assert closed(transport) and sent is None
    text = "\n".join(formatEvent(e) for e in events)
    assert "198.51.100.4:50123" in text  # the connection's line is among them
    if forged is not None and forged != "198.51.100.4":
        assert forged not in text, text
    assert "proxy_via" not in text


CHAINS = {mode: Chain(mode) for mode in ("off", "optional", "required")}
_headers = headers.filter(_valid_inet)


def _property(mode: str) -> tuple[Any, Any]:
    # 10,000 headers in all, a third per mode.
    @fast_and_full(_headers, st.booleans(), share=3)
    def prop(header: ProxyHeader, v1: bool) -> None:
        _check_untrusted(mode, header, v1 and not header.tlvs)

    return prop


test_untrusted_off, test_untrusted_off_full = _property("off")
test_untrusted_optional, test_untrusted_optional_full = _property("optional")
test_untrusted_required, test_untrusted_required_full = _property("required")
