"""
terminate over real sockets: Python's ssl module (and ``openssl s_client`` where
installed) against gatekeep on the real reactor, with an in-process echo backend
that receives a PROXY v2 header with the TLS session's TLVs.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
from typing import Any

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from gatekeep.proxyproto import ProxyHeader, parse
from gatekeep.proxyproto import tlv as t
from tests.helpers import start_gatekeep
from tests.tlscerts import make_ca, scratch_dir

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]

[[service.edge.route]]
name = "web"
match.tls = {{ sni = ["example.test", "*.example.test"] }}
terminate.certificates = "{certs}"
terminate.alpn = ["h2", "http/1.1"]
terminate.strict_sni = true
terminate.service = "inner"

[service.inner]

[[service.inner.route]]
name = "echo"
forward.to = "tcp:127.0.0.1:{port}"
forward.proxy_protocol = "v2"
forward.proxy_tlvs = ["alpn", "authority", "ssl"]
"""

REQUEST = b"GET / HTTP/1.1\r\nHost: example.test\r\n\r\n"


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def fetch(port: int, sni: str, alpn: list[str], cafile: str) -> tuple[bytes, str | None]:
    """One TLS client in a thread: send REQUEST, read the echo of header + request."""
    context = ssl.create_default_context(cafile=cafile)
    context.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(REQUEST)
        received = b""
        while not received.endswith(REQUEST):
            chunk = tls.recv(65536)
            if not chunk:
                break
            received += chunk
        return received, tls.selected_alpn_protocol()


class TerminateSocketTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        self.dir = scratch_dir(self) / "certs"
        self.dir.mkdir()
        ca = make_ca()
        self.cafile = str(ca.write(self.dir.parent / "ca.pem"))
        ca.leaf("example.test", "*.example.test", kind="rsa").write_combined(
            self.dir / "example.pem")
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        ports = start_gatekeep(self, CONFIG.format(certs=self.dir, port=port.getHost().port))
        self.port = ports["edge"]

    @defer.inlineCallbacks
    def test_python_ssl_client_reaches_the_inner_route_with_tlvs(self) -> Any:
        received, alpn = yield threads.deferToThread(
            fetch, self.port, "www.example.test", ["http/1.1"], self.cafile)
        self.assertEqual(alpn, "http/1.1")
        header = parse(received)
        assert isinstance(header, ProxyHeader), header
        self.assertEqual(received[header.length:], REQUEST)
        assert header.source is not None
        self.assertEqual(str(header.source.host), "127.0.0.1")  # type: ignore[union-attr]
        self.assertEqual(header.tlv(t.ALPN), b"http/1.1")
        self.assertEqual(header.tlv(t.AUTHORITY), b"www.example.test")
        ssl_value = header.tlv(t.SSL)
        assert ssl_value is not None
        info = t.decode_ssl(ssl_value)
        self.assertEqual(info.version, "TLSv1.3")
        self.assertTrue(info.client & t.CLIENT_SSL)

    @defer.inlineCallbacks
    def test_unknown_sni_is_refused_with_unrecognized_name(self) -> Any:
        # The route matches *.example.test; the certificate store has no such name
        # for a deeper label, and strict_sni refuses it.
        error = yield self.assertFailure(threads.deferToThread(
            fetch, self.port, "a.b.example.test", ["h2"], self.cafile), ssl.SSLError)
        self.assertIn("UNRECOGNIZED_NAME", str(error).upper())

    @defer.inlineCallbacks
    def test_openssl_s_client(self) -> Any:
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        done = yield threads.deferToThread(
            subprocess.run,
            ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-servername",
             "example.test", "-alpn", "h2,http/1.1", "-CAfile", self.cafile],
            input=b"", capture_output=True, timeout=30, check=False)
        text = (done.stdout + done.stderr).decode(errors="replace")
        self.assertIn("Verification: OK", text)
        self.assertIn("ALPN protocol: h2", text)


class CertificateRenewalTests(TestCase):
    """A certificate replaced on disk serves new connections; open ones carry on."""

    timeout = 60

    @defer.inlineCallbacks
    def test_new_connections_get_the_new_certificate(self) -> Any:
        from gatekeep import certstore

        self.patch(certstore, "REFRESH_INTERVAL", 0.0)  # look at the files every time
        directory = scratch_dir(self) / "certs"
        directory.mkdir()
        ca = make_ca()
        cafile = str(ca.write(directory.parent / "ca.pem"))
        ca.leaf("example.test", common_name="old").write_combined(directory / "site.pem")
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        ports = start_gatekeep(self, CONFIG.format(certs=directory,
                                                   port=port.getHost().port))
        first = yield threads.deferToThread(Client, ports["edge"], cafile)
        self.addCleanup(first.close)
        self.assertEqual(first.name, "CN=old")
        # certbot-style renewal: the new file is written beside and renamed over.
        ca.leaf("example.test", common_name="new").write_combined(directory / "site.tmp")
        (directory / "site.tmp").replace(directory / "site.pem")
        second = yield threads.deferToThread(Client, ports["edge"], cafile)
        self.addCleanup(second.close)
        self.assertEqual(second.name, "CN=new")
        # The first connection is undisturbed.
        echoed = yield threads.deferToThread(first.echo, b"still here")
        self.assertEqual(echoed, b"still here")


class Client:
    """A TLS connection kept open across the test (blocking calls, run in threads)."""

    def __init__(self, port: int, cafile: str) -> None:
        context = ssl.create_default_context(cafile=cafile)
        raw = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.tls = context.wrap_socket(raw, server_hostname="example.test")
        certificate = self.tls.getpeercert()
        assert certificate is not None
        subject = dict(x[0] for x in certificate["subject"])  # type: ignore[misc]
        self.name = f"CN={subject['commonName']}"
        self.echo(b"hello")  # past the PROXY header the backend echoes back

    def echo(self, data: bytes) -> bytes:
        self.tls.sendall(data)
        received = b""
        while not received.endswith(data):
            chunk = self.tls.recv(65536)
            if not chunk:
                break
            received += chunk
        return received[-len(data):]

    def close(self) -> None:
        self.tls.close()
