"""The PROXY header ``forward`` sends: addresses, families and TLVs, on a memory reactor."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.demo.selfsigned import self_signed_pem
from gatekeep.detectors.http import HTTPDetector
from gatekeep.detectors.tls import TLSDetector
from gatekeep.preamble import ProxyPolicy
from gatekeep.proxyproto import (
    TLV,
    Command,
    Family,
    InetAddress,
    ProxyHeader,
    UnixAddress,
    build,
    decode_ssl,
    parse,
)
from gatekeep.proxyproto import tlv as t
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets.forward import ForwardTarget
from gatekeep.targets.proxyheader import tls_session_ssl
from tests.helpers import captured_log

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"
HELLOS = Path(__file__).resolve().parent.parent / "fixtures" / "clienthello"
PEER = IPv4Address("TCP", "198.51.100.4", 5000)
HOST = IPv4Address("TCP", "192.0.2.1", 443)


def ip(text: str) -> Any:
    return ipaddress.ip_address(text)


class SendTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def backend_bytes(
        self, data: bytes, version: str, tlvs: tuple[str, ...] = (), peer: Any = PEER,
        host: Any = HOST, proxy: ProxyPolicy | None = None,
    ) -> tuple[bytes, SniffingProtocol]:
        from gatekeep.values import Route, Service

        target = ForwardTarget(to="tcp:127.0.0.1:8080", proxy_protocol=2 if version == "v2" else 1,
                               proxy_tlvs=tlvs)
        routes = (Route("tls", "tls", (), target), Route("http", "http", (), target))
        runtime = ListenerRuntime.build(
            "edge", Service("svc", routes), {"tls": TLSDetector(), "http": HTTPDetector()}, 5.0,
            self.reactor, proxy=proxy)
        protocol = SniffingProtocol(runtime)
        protocol.makeConnection(StringTransport(peerAddress=peer, hostAddress=host))
        protocol.dataReceived(data)
        [(_host, _port, factory, _timeout, _bind)] = self.reactor.tcpClients
        backend = StringTransport()
        backend_side: Any = factory.buildProtocol(None)
        backend_side.makeConnection(backend)
        return backend.value(), protocol

    def header(self, sent: bytes, payload: bytes) -> ProxyHeader:
        parsed = parse(sent)
        assert isinstance(parsed, ProxyHeader), parsed
        self.assertEqual(sent[parsed.length:], payload)  # the header, then the client's bytes
        return parsed

    def test_v1_tcp4(self) -> None:
        sent, _ = self.backend_bytes(REQUEST, "v1")
        self.assertEqual(sent, b"PROXY TCP4 198.51.100.4 192.0.2.1 5000 443\r\n" + REQUEST)

    def test_v2_tcp6(self) -> None:
        sent, _ = self.backend_bytes(REQUEST, "v2", peer=IPv6Address("TCP", "2001:db8::7", 1),
                                     host=IPv6Address("TCP", "2001:db8::1", 443))
        header = self.header(sent, REQUEST)
        self.assertEqual((header.family, header.source, header.destination), (
            Family.TCP6, InetAddress(ip("2001:db8::7"), 1), InetAddress(ip("2001:db8::1"), 443)))
        self.assertEqual(header.tlvs, ())

    def test_v4_mapped_ipv6_is_sent_as_tcp4(self) -> None:
        for version in ("v1", "v2"):
            self.reactor = MemoryReactorClock()
            sent, _ = self.backend_bytes(REQUEST, version,
                                         peer=IPv6Address("TCP", "::ffff:198.51.100.4", 5000),
                                         host=IPv6Address("TCP", "::ffff:192.0.2.1", 443))
            header = self.header(sent, REQUEST)
            self.assertEqual((header.family, header.source), (
                Family.TCP4, InetAddress(ip("198.51.100.4"), 5000)))

    def test_mixed_families_are_sent_as_tcp6(self) -> None:
        sent, _ = self.backend_bytes(REQUEST, "v1", peer=IPv6Address("TCP", "2001:db8::7", 1))
        self.assertTrue(sent.startswith(b"PROXY TCP6 2001:db8::7 ::ffff:"))
        header = self.header(sent, REQUEST)
        self.assertEqual(header.destination, InetAddress(ip("::ffff:192.0.2.1"), 443))

    def test_unix_listener(self) -> None:
        unix: dict[str, Any] = {"peer": UNIXAddress(None), "host": UNIXAddress(b"/run/gk.sock")}
        sent, _ = self.backend_bytes(REQUEST, "v2", **unix)
        header = self.header(sent, REQUEST)
        self.assertEqual((header.family, header.source, header.destination), (
            Family.UNIX_STREAM, UnixAddress(b""), UnixAddress(b"/run/gk.sock")))
        self.reactor = MemoryReactorClock()
        sent, _ = self.backend_bytes(REQUEST, "v1", **unix)
        self.assertEqual(sent, b"PROXY UNKNOWN\r\n" + REQUEST)

    def test_inet_client_on_a_unix_listener(self) -> None:
        # A UNIX listener behind a local balancer: the client is an IP, the server a path.
        sent, _ = self.backend_bytes(REQUEST, "v2", host=UNIXAddress(b"/run/gk.sock"))
        header = self.header(sent, REQUEST)
        self.assertEqual((header.family, header.source, header.destination), (
            Family.TCP4, InetAddress(ip("198.51.100.4"), 5000), InetAddress(ip("0.0.0.0"), 0)))

    def test_received_client_is_passed_on_with_checksum_and_unique_id(self) -> None:
        policy = ProxyPolicy.from_settings("required", ["198.51.100.0/24"])
        upstream = b"PROXY TCP4 203.0.113.7 192.0.2.99 4242 8443\r\n"
        sent, protocol = self.backend_bytes(upstream + REQUEST, "v2", ("unique_id", "crc32c"),
                                            proxy=policy)
        header = self.header(sent, REQUEST)  # parse() verified the CRC32C
        self.assertEqual((header.source, header.destination), (
            InetAddress(ip("203.0.113.7"), 4242), InetAddress(ip("192.0.2.99"), 8443)))
        self.assertEqual([e.type for e in header.tlvs], [t.UNIQUE_ID, t.CRC32C])
        unique = header.tlv(t.UNIQUE_ID)
        assert unique is not None and len(unique) == 32
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertEqual(events[0]["facts"]["unique_id"], unique.decode())

    def test_received_tlvs_are_relayed(self) -> None:
        ssl = t.SSLInfo(t.CLIENT_SSL | t.CLIENT_CERT_CONN, 0, version="TLSv1.3", cn="alice")
        upstream = build(ProxyHeader(2, Command.PROXY, Family.TCP4,
                                     InetAddress(ip("203.0.113.7"), 4242),
                                     InetAddress(ip("192.0.2.99"), 443), (
            TLV(t.ALPN, b"http/1.1"), TLV(t.AUTHORITY, b"www.example.org"),
            TLV(t.UNIQUE_ID, b"lb-42"), TLV(t.SSL, ssl.encode()))))
        sent, _ = self.backend_bytes(
            upstream + REQUEST, "v2", ("alpn", "authority", "ssl", "unique_id"),
            proxy=ProxyPolicy.from_settings("required", ["198.51.100.4/32"]))
        header = self.header(sent, REQUEST)
        self.assertEqual(header.tlvs, (TLV(t.ALPN, b"http/1.1"),
                                       TLV(t.AUTHORITY, b"www.example.org"),
                                       TLV(t.SSL, ssl.encode()), TLV(t.UNIQUE_ID, b"lb-42")))

    def test_passthrough_tls_sends_first_alpn_and_sni(self) -> None:
        hello = (HELLOS / "chromium.bin").read_bytes()
        sent, _ = self.backend_bytes(hello, "v2", ("alpn", "authority", "ssl", "crc32c"))
        header = self.header(sent, hello)
        self.assertEqual(header.tlv(t.ALPN), b"h2")
        self.assertEqual(header.tlv(t.AUTHORITY), b"www.example.test")
        self.assertIsNone(header.tlv(t.SSL))  # gatekeep did not terminate this TLS

    def test_no_sni_no_authority(self) -> None:
        hello = (HELLOS / "openssl-tls12-nosni.bin").read_bytes()
        sent, _ = self.backend_bytes(hello, "v2", ("authority",))
        self.assertEqual(self.header(sent, hello).tlvs, ())

    def test_describe(self) -> None:
        target = ForwardTarget(to="tcp:h:1", proxy_protocol=2, proxy_tlvs=("alpn", "crc32c"))
        self.assertEqual(target.describe(),
                         "forward to tcp:h:1 with PROXY v2 (TLVs: alpn, crc32c)")
        with self.assertRaises(ValueError):
            ForwardTarget(to="tcp:h:1", proxy_protocol=1, proxy_tlvs=("alpn",))


class TerminatedSessionTests(SynchronousTestCase):
    """The SSL TLV from a TLS session gatekeep terminated (an in-memory handshake)."""

    def handshake(self, client_cert: bool) -> SSL.Connection:
        cert_pem, key_pem = self_signed_pem("example.test")
        server_ctx = SSL.Context(SSL.TLS_METHOD)
        server_ctx.use_certificate(x509.load_pem_x509_certificate(cert_pem))
        server_ctx.use_privatekey(load_pem_private_key(key_pem, None))  # type: ignore[arg-type]
        server_ctx.set_alpn_select_callback(lambda conn, offered: b"h2")
        client_ctx = SSL.Context(SSL.TLS_METHOD)
        client_ctx.set_alpn_protos([b"h2", b"http/1.1"])
        if client_cert:
            server_ctx.set_verify(SSL.VERIFY_PEER, lambda *args: True)
            alice_cert, alice_key = self_signed_pem("alice")
            client_ctx.use_certificate(x509.load_pem_x509_certificate(alice_cert))
            client_ctx.use_privatekey(load_pem_private_key(alice_key, None))  # type: ignore[arg-type]
        server = SSL.Connection(server_ctx, None)
        server.set_accept_state()
        client = SSL.Connection(client_ctx, None)
        client.set_connect_state()
        client.set_tlsext_host_name(b"example.test")
        for _ in range(10):
            for one, other in ((client, server), (server, client)):
                with contextlib.suppress(SSL.WantReadError):
                    one.do_handshake()
                with contextlib.suppress(SSL.WantReadError):
                    other.bio_write(one.bio_read(65536))
        return server

    def test_terminated_session_gives_alpn_authority_and_ssl(self) -> None:
        from gatekeep.targets.proxyheader import outgoing_header
        from gatekeep.values import ConnectionRecord

        class TLSTransport(StringTransport):
            """Stands for the TLS transport an inner chain runs on after terminate."""

            def __init__(self, connection: SSL.Connection) -> None:
                super().__init__(peerAddress=PEER, hostAddress=HOST)
                self.connection = connection

            def getHandle(self) -> SSL.Connection:
                return self.connection

        inbound: Any = _FakeInbound(TLSTransport(self.handshake(False)),
                                    ConnectionRecord("edge", "-", 0.0))
        header = parse(outgoing_header(inbound, 2, ("alpn", "authority", "ssl")))
        assert isinstance(header, ProxyHeader)
        self.assertEqual(header.tlv(t.ALPN), b"h2")
        self.assertEqual(header.tlv(t.AUTHORITY), b"example.test")
        ssl = header.tlv(t.SSL)
        assert ssl is not None
        self.assertEqual(decode_ssl(ssl).version, "TLSv1.3")
        # A TCP transport's handle is its socket, not TLS: no SSL TLV.
        plain: Any = _FakeInbound(StringTransport(peerAddress=PEER, hostAddress=HOST),
                                  ConnectionRecord("edge", "-", 0.0))
        self.assertEqual(parse(outgoing_header(plain, 2, ("ssl",))), ProxyHeader(
            2, Command.PROXY, Family.TCP4, InetAddress(ip("198.51.100.4"), 5000),
            InetAddress(ip("192.0.2.1"), 443)))

    def test_ssl_tlv_without_and_with_a_client_certificate(self) -> None:
        plain = decode_ssl(tls_session_ssl(self.handshake(False)).encode())
        self.assertEqual((plain.client, plain.verify, plain.version, plain.cn),
                         (t.CLIENT_SSL, 1, "TLSv1.3", None))
        self.assertTrue(plain.cipher and plain.cipher.startswith("TLS_"))
        with_cert = tls_session_ssl(self.handshake(True))
        self.assertEqual((with_cert.client, with_cert.verify, with_cert.cn),
                         (t.CLIENT_SSL | t.CLIENT_CERT_CONN | t.CLIENT_CERT_SESS, 0, "alice"))


class _FakeInbound:
    """The parts of an Inbound the header builder reads."""

    def __init__(self, transport: Any, record: Any) -> None:
        self.transport = transport
        self.client = transport.getPeer()
        self.server = transport.getHost()
        self.detector = "xmpp"
        self.prefix = b""
        self.proxy = None
        self.record = record
