"""
The terminate action in memory: SNI picks the certificate, ALPN is chosen per route,
the decrypted stream is detected again by the inner service, failures are counted.

The client is pyOpenSSL on memory BIOs; gatekeep's side is the real chain
(:class:`SniffingProtocol`) on a ``StringTransport`` and a ``MemoryReactorClock``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import directlyProvidedBy
from zope.interface.verify import verifyObject

from gatekeep import metrics
from gatekeep.config.loader import load_config
from gatekeep.interfaces import ITarget
from gatekeep.registry import load_registry
from gatekeep.sniff import ListenerRuntime, SniffingProtocol
from gatekeep.targets._inner import TerminatingProtocol
from gatekeep.targets.terminate import TerminateTarget
from tests.helpers import captured_log
from tests.tlscerts import CA, make_ca, scratch_dir

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0"
service = "edge"

[service.edge]

[[service.edge.route]]
name = "web"
match.tls = {{}}
terminate = {{ {terminate}, service = "inner" }}

[service.inner]
default = "plain"

[[service.inner.route]]
name = "h2"
match.tls = {{ alpn = ["h2"] }}
respond = {{ data = "it is h2" }}

[[service.inner.route]]
name = "xmpp"
match.xmpp = {{}}
respond = {{ data = "<xmpp/>" }}

[[service.inner.route]]
name = "plain"
respond = {{ data = "plain" }}
"""


class MemoryClient:
    """A TLS client on memory BIOs, pumped by hand against gatekeep's chain."""

    def __init__(self, sni: str | None, alpn: Sequence[bytes] = (), ca: CA | None = None,
                 cert: Any = None, max_version: int | None = None,
                 ciphers: bytes | None = None) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        if max_version is not None:
            context.set_max_proto_version(max_version)
        if ciphers is not None:
            context.set_cipher_list(ciphers)
        if alpn:
            context.set_alpn_protos(list(alpn))
        if ca is not None:
            store = context.get_cert_store()
            assert store is not None
            store.add_cert(crypto.X509.from_cryptography(ca.certificate))
            context.set_verify(SSL.VERIFY_PEER)
        if cert is not None:
            context.use_certificate(cert.certificate)
            context.use_privatekey(cert.key)
        self.tls = SSL.Connection(context, None)
        self.tls.set_connect_state()
        if sni is not None:
            self.tls.set_tlsext_host_name(sni.encode())
        self.received = b""
        self.error: Exception | None = None

    def hello(self) -> bytes:
        self._step()
        return self.tls.bio_read(65536)

    def _step(self) -> None:
        try:
            self.tls.do_handshake()
            while True:
                self.received += self.tls.recv(65536)
        except SSL.WantReadError:
            pass
        except (SSL.Error, SSL.ZeroReturnError) as error:
            self.error = self.error or error

    def pump(self, server: StringTransport, protocol: Any, reactor: MemoryReactorClock,
             send: bytes = b"") -> None:
        if send:
            self.tls.sendall(send)
        for _ in range(20):
            reactor.advance(0)
            incoming = server.value()
            server.clear()
            if incoming:
                self.tls.bio_write(incoming)
            self._step()
            try:
                outgoing = self.tls.bio_read(65536)
            except SSL.WantReadError:
                outgoing = b""
            if not incoming and not outgoing:
                return
            if outgoing and not server.disconnecting:
                protocol.dataReceived(outgoing)


class TerminateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = scratch_dir(self) / "certs"
        self.dir.mkdir()
        self.ca = make_ca()
        self.ca.leaf("example.test", kind="rsa").write_combined(self.dir / "example.pem")
        self.ca.leaf("*.example.test").write_pair(self.dir / "wild.crt", self.dir / "wild.key")
        self.ca.leaf("other.test").write_pair(self.dir / "other.test" / "fullchain.pem",
                                              self.dir / "other.test" / "privkey.pem")
        self.reactor = MemoryReactorClock()

    def runtime(self, terminate: str) -> ListenerRuntime:
        config = load_config(CONFIG.format(terminate=terminate), load_registry())
        self.target = config.services["edge"].routes[0].target
        registry = load_registry()
        return ListenerRuntime.build("edge", config.services["edge"], registry.detectors,
                                     5.0, self.reactor)

    def connect(self, client: MemoryClient, terminate: str | None = None
                ) -> tuple[SniffingProtocol, StringTransport]:
        terminate = terminate or f'certificates = "{self.dir}", alpn = ["h2", "http/1.1"]'
        protocol = SniffingProtocol(self.runtime(terminate))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "198.51.100.4", 5000),
                                    hostAddress=IPv4Address("TCP", "127.0.0.1", 443))
        protocol.makeConnection(transport)
        protocol.dataReceived(client.hello())
        client.pump(transport, protocol, self.reactor)
        return protocol, transport

    def test_provides_itarget(self) -> None:
        self.runtime(f'certificates = "{self.dir}"')
        verifyObject(ITarget, self.target)
        self.assertIsInstance(self.target, TerminateTarget)

    def test_tls_layer_set_up_without_per_connection_interface_copies(self) -> None:
        """
        The TLS layer provides ITCPTransport from its class (not copied onto each
        connection), writes nothing before the ClientHello is replayed, and handshakes.
        """
        client = MemoryClient("example.test")
        protocol, _transport = self.connect(client)
        tls: Any = protocol.attached
        self.assertIsInstance(tls, TerminatingProtocol)
        self.assertTrue(ITCPTransport.providedBy(tls))
        self.assertEqual(list(directlyProvidedBy(tls)), [])
        self.assertIsNone(client.error)
        self.assertEqual(self.served_name(client), "CN=example.test")

        target: Any = self.target
        fresh = TerminatingProtocol(target, tls.inbound, tls.context, "example.test")
        quiet = StringTransport()
        fresh.makeConnection(quiet)
        self.assertEqual(quiet.value(), b"")
        self.assertFalse(quiet.disconnecting)

    def served_name(self, client: MemoryClient) -> str:
        certificate = client.tls.get_peer_certificate(as_cryptography=True)
        assert certificate is not None
        return str(certificate.subject.rfc4514_string())

    def test_sni_chooses_exact_then_wildcard_then_default(self) -> None:
        cases = {"example.test": "CN=example.test", "www.example.test": "CN=*.example.test",
                 "other.test": "CN=other.test", "unknown.test": "CN=example.test",
                 None: "CN=example.test", "a.b.example.test": "CN=example.test"}
        # Without default_certificate the first pair in name order is the default.
        for sni, served in cases.items():
            client = MemoryClient(sni, ca=self.ca)
            self.connect(client)
            self.assertIsNone(client.error, sni)
            self.assertEqual(self.served_name(client), served, sni)

    def test_default_certificate(self) -> None:
        default = self.ca.leaf("fallback.test").write_combined(self.dir.parent / "d.pem")
        client = MemoryClient("nothing.test", ca=self.ca)
        self.connect(client, f'certificates = "{self.dir}", '
                             f'default_certificate = {{ cert = "{default}" }}')
        self.assertEqual(self.served_name(client), "CN=fallback.test")

    def test_alpn_is_chosen_and_inner_routes_match_the_negotiated_protocol(self) -> None:
        client = MemoryClient("example.test", [b"http/1.1", b"h2"], ca=self.ca)
        protocol, _transport = self.connect(client)
        self.assertEqual(client.tls.get_alpn_proto_negotiated(), b"h2")
        self.assertEqual(client.received, b"it is h2")  # the inner route, at once
        record = protocol.record
        assert record is not None
        self.assertEqual(record.route, "web>h2")
        self.assertEqual(record.facts["negotiated"], "h2")
        self.assertEqual(record.facts["tls_version"], "TLSv1.3")
        self.assertEqual(record.facts["sni"], "example.test")

    def test_no_common_alpn_goes_on_without_and_detects_inside(self) -> None:
        client = MemoryClient("example.test", [b"xmpp-client"], ca=self.ca)
        protocol, transport = self.connect(client)
        self.assertIsNone(client.error)
        self.assertEqual(client.tls.get_alpn_proto_negotiated(), b"")
        self.assertEqual(client.received, b"")  # waiting for the decrypted bytes
        client.pump(transport, protocol, self.reactor,
                    send=b"<stream:stream to='example.test' xmlns='jabber:client' "
                         b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
        self.assertEqual(client.received, b"<xmpp/>")
        assert protocol.record is not None
        self.assertEqual(protocol.record.route, "web>xmpp")
        self.assertEqual(protocol.record.facts["inner"], "xmpp")

    def test_inner_default_after_its_detect_timeout(self) -> None:
        client = MemoryClient("example.test", [b"http/1.1"], ca=self.ca)
        protocol, transport = self.connect(client, f'certificates = "{self.dir}", '
                                           'alpn = ["http/1.1"], detect_timeout = "2s"')
        self.reactor.advance(1.9)
        client.pump(transport, protocol, self.reactor)
        self.assertEqual(client.received, b"")
        self.reactor.advance(0.1)
        client.pump(transport, protocol, self.reactor)
        self.assertEqual(client.received, b"plain")

    def test_strict_sni_sends_unrecognized_name(self) -> None:
        before = metrics.value("gatekeep_tls_handshakes_total", listener="edge", route="web",
                               outcome="unrecognized_name")
        client = MemoryClient("unknown.org")
        protocol, transport = self.connect(
            client, f'certificates = "{self.dir}", strict_sni = true')
        self.assertIsInstance(client.error, SSL.Error)
        self.assertIn("unrecognized name", str(client.error))
        self.assertTrue(transport.disconnecting)
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertEqual(events[0]["close_reason"], "no certificate for SNI unknown.org")
        self.assertEqual(metrics.value("gatekeep_tls_handshakes_total", listener="edge",
                                       route="web", outcome="unrecognized_name"), before + 1)

    def test_strict_sni_still_serves_known_names(self) -> None:
        client = MemoryClient("a.example.test", ca=self.ca)
        self.connect(client, f'certificates = "{self.dir}", strict_sni = true')
        self.assertIsNone(client.error)

    def test_handshake_failure_is_logged_and_counted(self) -> None:
        before = metrics.value("gatekeep_tls_handshakes_total", listener="edge", route="web",
                               outcome="failed")
        client = MemoryClient("example.test", max_version=SSL.TLS1_2_VERSION)
        protocol, transport = self.connect(client, f'certificates = "{self.dir}", '
                                                   'versions = ["TLSv1.3"]')
        self.assertIsInstance(client.error, SSL.Error)
        self.assertTrue(transport.disconnecting)
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertIn("TLS handshake failed", events[0]["close_reason"])
        self.assertIn("unsupported protocol", events[0]["close_reason"])
        self.assertEqual(metrics.value("gatekeep_tls_handshakes_total", listener="edge",
                                       route="web", outcome="failed"), before + 1)

    def test_handshake_timeout(self) -> None:
        client = MemoryClient("example.test")
        protocol = SniffingProtocol(self.runtime(f'certificates = "{self.dir}", '
                                                 'handshake_timeout = "3s"'))
        transport = StringTransport()
        protocol.makeConnection(transport)
        protocol.dataReceived(client.hello())  # and then nothing more
        self.reactor.advance(3)
        self.assertTrue(transport.disconnecting)
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertEqual(events[0]["close_reason"], "TLS handshake timeout")

    def test_pending_handshakes_share_one_timer(self) -> None:
        runtime = self.runtime(f'certificates = "{self.dir}", handshake_timeout = "3s"')
        protocols = []
        for _ in range(3):
            protocol = SniffingProtocol(runtime)
            protocol.makeConnection(StringTransport())
            protocol.dataReceived(MemoryClient("example.test").hello())
            protocols.append(protocol)
        # One timer for the three handshakes' deadlines, not a DelayedCall each.
        self.assertEqual(len(self.reactor.getDelayedCalls()), 1)
        self.reactor.advance(3)
        for protocol in protocols:
            transport: Any = protocol.transport
            self.assertTrue(transport.disconnecting)
            protocol.connectionLost(connectionDone)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_the_inner_chain_settings_are_made_once_per_listener(self) -> None:
        runtime = self.runtime(f'certificates = "{self.dir}"')
        inner = []
        for _ in range(2):
            client = MemoryClient("example.test")
            protocol = SniffingProtocol(runtime)
            transport = StringTransport()
            protocol.makeConnection(transport)
            protocol.dataReceived(client.hello())
            client.pump(transport, protocol, self.reactor)
            self.assertIsNone(client.error)
            attached: Any = protocol.attached
            inner.append(attached.wrappedProtocol.runtime)
        self.assertIs(inner[0], inner[1])
        # A reload makes a new target, and with it new settings.
        self.assertIsNot(self.runtime(f'certificates = "{self.dir}"'), runtime)

    def test_client_certificates_required(self) -> None:
        ca_file = self.ca.write(self.dir.parent / "clients.pem")
        terminate = (f'certificates = "{self.dir}", client_certificates = "required", '
                     f'client_ca = "{ca_file}"')
        without = MemoryClient("example.test", ca=self.ca)
        protocol, _ = self.connect(without, terminate)
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertIn("certificate", events[0]["close_reason"])
        self.assertIsNone(protocol.record and protocol.record.facts.get("client_cert"))

        with_cert = MemoryClient("example.test", ca=self.ca,
                                 cert=self.ca.leaf(common_name="alice", client=True))
        protocol, _ = self.connect(with_cert, terminate)
        self.assertIsNone(with_cert.error)
        assert protocol.record is not None
        self.assertEqual(protocol.record.facts["client_cert"], "alice")

        stranger = make_ca("someone else")
        wrong = MemoryClient("example.test", ca=self.ca,
                             cert=stranger.leaf(common_name="mallory", client=True))
        protocol, _ = self.connect(wrong, terminate)
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertIn("certificate", events[0]["close_reason"])

    def test_bytes_counted_on_the_wire(self) -> None:
        client = MemoryClient("example.test", [b"h2"], ca=self.ca)
        protocol, _transport = self.connect(client)
        record = protocol.record
        assert record is not None
        # TLS records are bigger than the 8 bytes of plaintext: the wire is counted.
        self.assertGreater(record.bytes_out, 500)
        self.assertGreater(record.bytes_in, 200)

    def test_status_counts_a_terminated_connection_for_its_outer_route(self) -> None:
        client = MemoryClient("example.test", [b"h2"], ca=self.ca)
        before = metrics.connections_by_route().get(("edge", "web"), 0)
        open_before = metrics.open_by_route().get(("edge", "web"), 0)
        protocol, _transport = self.connect(client)
        assert protocol.record is not None
        self.assertEqual(protocol.record.route, "web>h2")
        self.assertEqual(metrics.open_by_route().get(("edge", "web")), open_before + 1)
        with captured_log("gatekeep.connection"):
            protocol.connectionLost(connectionDone)
        self.assertEqual(metrics.connections_by_route().get(("edge", "web"), 0), before + 1)

    def test_rsa_and_ecdsa_for_one_name_each_client_gets_what_it_takes(self) -> None:
        self.ca.leaf("dual.test", kind="rsa", common_name="dual-rsa").write_combined(
            self.dir / "dual-rsa.pem")
        self.ca.leaf("dual.test", common_name="dual-ecdsa").write_combined(
            self.dir / "dual-ecdsa.pem")
        modern = MemoryClient("dual.test", ca=self.ca)
        self.connect(modern)
        self.assertIsNone(modern.error)
        self.assertEqual(self.served_name(modern), "CN=dual-ecdsa")
        # A TLS 1.2 client that only has an RSA key exchange cipher gets the RSA one.
        rsa_only = MemoryClient("dual.test", ca=self.ca, max_version=SSL.TLS1_2_VERSION,
                                ciphers=b"ECDHE-RSA-AES128-GCM-SHA256")
        self.connect(rsa_only)
        self.assertIsNone(rsa_only.error)
        self.assertEqual(self.served_name(rsa_only), "CN=dual-rsa")

    def test_client_certificates_optional(self) -> None:
        ca_file = self.ca.write(self.dir.parent / "clients.pem")
        terminate = (f'certificates = "{self.dir}", client_certificates = "optional", '
                     f'client_ca = "{ca_file}"')
        without = MemoryClient("example.test", ca=self.ca)
        protocol, _ = self.connect(without, terminate)
        self.assertIsNone(without.error)
        assert protocol.record is not None
        self.assertNotIn("client_cert", protocol.record.facts)
        with_cert = MemoryClient("example.test", ca=self.ca,
                                 cert=self.ca.leaf(common_name="bob", client=True))
        protocol, _ = self.connect(with_cert, terminate)
        assert protocol.record is not None
        self.assertEqual(protocol.record.facts["client_cert"], "bob")
        stranger = MemoryClient("example.test", ca=self.ca,
                                cert=make_ca("elsewhere").leaf(common_name="eve", client=True))
        protocol, _ = self.connect(stranger, terminate)
        with captured_log("gatekeep.connection") as events:
            protocol.connectionLost(connectionDone)
        self.assertIn("certificate", events[0]["close_reason"])
