"""The embedded demo config loads and its backends report what was detected."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from gatekeep.config.loader import load_config
from gatekeep.demo import demo_config_text
from gatekeep.registry import load_registry
from gatekeep.sniff import ListenerRuntime, SniffingProtocol


class DemoTests(SynchronousTestCase):
    def setUp(self) -> None:
        registry = load_registry()
        self.config = load_config(demo_config_text(8443), registry)
        self.clock = Clock()
        listener = self.config.listeners[0]
        self.runtime = ListenerRuntime.build(
            listener.name, self.config.services["demo"], registry.detectors,
            listener.detect_timeout, self.clock)

    def exchange(self, data: bytes) -> bytes:
        protocol = SniffingProtocol(self.runtime)
        transport = StringTransport()
        protocol.makeConnection(transport)
        if data:
            protocol.dataReceived(data)
        else:
            self.clock.advance(2)
        reply: bytes = transport.value()
        return reply

    def test_listens_on_loopback_only(self) -> None:
        endpoints = [listener.endpoint for listener in self.config.listeners]
        self.assertEqual(endpoints[0], "tcp:8443:interface=127.0.0.1")
        for endpoint in endpoints[1:]:
            self.assertEqual(endpoint, "tcp6:8443:interface=\\:\\:1")

    def test_http(self) -> None:
        reply = self.exchange(b"GET /hello HTTP/1.1\r\nHost: localhost:8443\r\n\r\n")
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertIn(b"detector: http", reply)
        self.assertIn(b"host=localhost port=8443 path=/hello", reply)

    def test_xmpp(self) -> None:
        reply = self.exchange(
            b"<stream:stream to='localhost' xmlns='jabber:client' "
            b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
        self.assertIn(b"<stream:error>", reply)
        self.assertIn(b"detector: xmpp", reply)
        self.assertIn(b"to=localhost", reply)

    def test_ssh(self) -> None:
        reply = self.exchange(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
        self.assertIn(b"detector: ssh", reply)
        self.assertIn(b"software=OpenSSH_9.2p1", reply)

    def test_silence_reaches_the_default(self) -> None:
        reply = self.exchange(b"")
        self.assertIn(b"detector: none matched", reply)
        self.assertIn(b"route:    other", reply)
