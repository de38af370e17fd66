"""
forward to TLS backends over real sockets: a Twisted TLS echo server with a
certificate from a private CA, verified by name (service-identity) with
``trustRoots``, or trusted by a ``tls_pin`` alone.
"""

from __future__ import annotations

import base64
import hashlib
import socket
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.registry import load_registry
from tests.helpers import captured_log, start_gatekeep
from tests.targets.test_terminate_socket import Echo
from tests.tlscerts import make_ca, scratch_dir

CONFIG = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]

[[service.edge.route]]
name = "backend"
forward.to = '{to}'
{extra}
"""


def exchange(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(data)
        received = b""
        while len(received) < len(data):
            chunk = client.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


class BackendTLSTests(TestCase):
    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:  # type: ignore[override]
        work = scratch_dir(self)
        self.roots = work / "roots"
        self.roots.mkdir()
        ca = make_ca("private CA")
        ca.write(self.roots / "ca.pem")
        leaf = ca.leaf("backend.test")
        combined = leaf.write_combined(work / "backend.pem")
        public = leaf.certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        self.spki = "sha256/" + base64.b64encode(hashlib.sha256(public).digest()).decode()
        self.fingerprint = "sha256:" + hashlib.sha256(
            leaf.certificate.public_bytes(serialization.Encoding.DER)).hexdigest()
        port = yield serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={combined}:certKey={combined}"
        ).listen(Factory.forProtocol(Echo))
        self.addCleanup(port.stopListening)
        self.backend = port.getHost().port

    def to(self, name: str, roots: Path | None) -> str:
        text = f"tls:{name}:{self.backend}:endpoint=tcp\\:127.0.0.1\\:{self.backend}"
        return text + (f":trustRoots={roots}" if roots is not None else "")

    def through(self, to: str, extra: str = "") -> Any:
        ports = start_gatekeep(self, CONFIG.format(to=to, extra=extra))
        return threads.deferToThread(exchange, ports["edge"], b"ping over TLS")

    @defer.inlineCallbacks
    def test_private_ca_and_name(self) -> Any:
        received = yield self.through(self.to("backend.test", self.roots))
        self.assertEqual(received, b"ping over TLS")

    @defer.inlineCallbacks
    def test_wrong_name_is_refused(self) -> Any:
        received = yield self.through(self.to("other.test", self.roots))
        self.assertEqual(received, b"")

    @defer.inlineCallbacks
    def test_untrusted_ca_is_refused(self) -> Any:
        empty = self.roots.parent / "empty"
        empty.mkdir()
        make_ca("someone else").write(empty / "other.pem")
        received = yield self.through(self.to("backend.test", empty))
        self.assertEqual(received, b"")

    @defer.inlineCallbacks
    def test_pins_trust_the_key_alone(self) -> Any:
        for pin in (self.spki, self.fingerprint):
            # No trustRoots and a name the certificate does not hold: the pin decides.
            received = yield self.through(self.to("anything.test", None),
                                      f'forward.tls_pin = ["{pin}"]')
            self.assertEqual(received, b"ping over TLS")

    @defer.inlineCallbacks
    def test_wrong_pin_is_refused_and_logged(self) -> Any:
        wrong = "sha256/" + base64.b64encode(bytes(32)).decode()
        with captured_log() as events:
            received = yield self.through(self.to("backend.test", self.roots),
                                      f'forward.tls_pin = ["{wrong}"]')
        self.assertEqual(received, b"")
        self.assertTrue(any("matches no tls_pin" in str(e.get("log_format")) for e in events))


def test_pin_needs_a_tls_backend_and_a_good_value() -> None:
    registry = load_registry()
    for extra, message in [
        ('forward.tls_pin = ["sha256/AAAA"]', "bad pin 'sha256/AAAA'"),
        ('forward.tls_pin = []', "non-empty list of pins"),
    ]:
        try:
            load_config(CONFIG.format(to="tls:a.test:443", extra=extra), registry)
        except ConfigErrors as errors:
            assert message in str(errors), errors
        else:
            raise AssertionError(extra)
    try:
        load_config(CONFIG.format(to="tcp:127.0.0.1:1", extra='forward.tls_pin = ["sha256:'
                                  + "00" * 32 + '"]'), registry)
    except ConfigErrors as errors:
        assert "tls_pin needs a TLS backend" in str(errors)
    else:
        raise AssertionError("tcp: with a pin")
