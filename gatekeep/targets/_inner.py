"""
The protocols of a terminated connection: TLS over the client's transport, and the
inner chain that detects and routes what arrives decrypted (DESIGN.md, step 6).

The inner chain is a :class:`~gatekeep.sniff.SniffingProtocol` on the TLS layer. It
waits for the handshake, then detects like a listener would, with two differences:
its client (and PROXY header) are the outer connection's, and a ``tls`` detector
in its service reports the SNI and the *negotiated* ALPN protocol. It keeps its own
tally; what matters of it (route, backend, facts, close reason) is copied into the
outer connection's record, which alone is logged, once, with the bytes on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from OpenSSL import SSL
from OpenSSL._util import ffi as _ffi
from OpenSSL._util import lib as _lib
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IHandshakeListener,
    ITCPTransport,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.policies import ProtocolWrapper
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep import metrics
from gatekeep.detectors.proxy import PREAMBLE, header_facts
from gatekeep.routing import Selection
from gatekeep.sendnow import send_now
from gatekeep.sniff import SniffingProtocol
from gatekeep.timeouts import QueuedDeadline, deadlines_for
from gatekeep.values import ConnectionRecord, FactValue, Inbound, Match, NoMatch

if TYPE_CHECKING:
    from gatekeep.targets.terminate import TerminateTarget

__all__ = ["InnerSniffer", "Refusal", "TerminatingProtocol", "handshake_error"]

# Where BIO_get_mem_data puts its pointer (never read: only the length is wanted).
_DATA = _ffi.new("char **")


def _pending(bio: Any) -> int:
    """Bytes waiting in an OpenSSL memory BIO (pyOpenSSL's bio_read raises on none)."""
    return int(_lib.BIO_get_mem_data(bio, _DATA))


class Refusal(Protocol):
    """Writes a TLS alert record and closes: no handshake is started."""

    def __init__(self, alert: bytes, reason: str, inbound: Inbound) -> None:
        self.alert = alert
        self.reason = reason
        self.inbound = inbound

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.inbound.record.close(self.reason)
        self.inbound.record.bytes_out += len(self.alert)
        self.transport.write(self.alert)
        self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        pass


@implementer(ITCPTransport)
class _Counting:
    """
    The client's transport, counting the bytes TLS writes to it (``bytes_out``).

    It declares only ITCPTransport: TLSMemoryBIOProtocol copies every interface its
    transport provides onto itself, one ``directlyProvides`` call each, which cost
    about a tenth of a terminated connection's CPU time with the TCP transport's dozen.
    """

    def __init__(self, transport: Any, record: ConnectionRecord) -> None:
        self._transport = transport
        self._record = record

    def write(self, data: bytes) -> None:
        self._record.bytes_out += len(data)
        # TLS writes each flight as it is ready (handshake, tickets, records): sent at
        # once, not on the reactor's next turn (two epoll_ctl calls and a loop trip each).
        send_now(self._transport, data)

    def writeSequence(self, data: Iterable[bytes]) -> None:
        chunks = list(data)
        self._record.bytes_out += sum(map(len, chunks))
        self._transport.writeSequence(chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@implementer(ITCPTransport)  # what _Counting provides, declared once for the class
class TerminatingProtocol(TLSMemoryBIOProtocol):
    """
    TLS server side over the sniffed connection, with the context chosen by SNI.

    Half-close is relayed through TLS as it is through TCP (RFC 8446 6.1: a
    close_notify closes one direction). Twisted's TLS layer tears the whole connection
    down when the client's close_notify arrives, losing what the backend still had to
    say; here it becomes the inner protocol's ``readConnectionLost`` while gatekeep
    keeps writing. The other way, :meth:`loseWriteConnection` sends close_notify, and
    Twisted keeps reading until the client's own close_notify.
    """

    _peer_closed = False  # the client's close_notify arrived

    def __init__(self, target: TerminateTarget, inbound: Inbound, context: SSL.Context,
                 sni: str | None) -> None:
        #: Read by the connection creator when Twisted builds the OpenSSL connection.
        self.context = context
        self.inbound = inbound
        super().__init__(target.factory(inbound.reactor), InnerSniffer(target, inbound, sni))

    def makeConnection(self, transport: Any) -> None:
        # TLS writes small records right after the handshake (session tickets, then
        # the first data): with Nagle on, the data waits for the client's delayed ACK
        # (40 ms on Linux). HAProxy and nginx set TCP_NODELAY too.
        set_no_delay = getattr(transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)
        counting = _Counting(transport, self.inbound.record)
        # Twisted's TLSMemoryBIOProtocol.makeConnection less two per-connection costs:
        # it copies the transport's interfaces onto the protocol (twice: directlyProvides
        # per interface, then ProtocolWrapper's own; declared once for the class here), and it
        # takes a first handshake step before any byte arrived, which on the server
        # side only raises WantReadError twice: the ClientHello the chain read comes
        # next, through dataReceived, and starts the handshake.
        self._tlsConnection = self.factory._creatorCallable(self)
        self._appSendBuffer = []
        Protocol.makeConnection(self, counting)
        self.factory.registerProtocol(self)
        if self._connectWrapped:
            # ProtocolWrapper.makeConnection, less its own copy of the interfaces and a
            # second Protocol.makeConnection and registerProtocol (done just above).
            self.wrappedProtocol.makeConnection(self)

    def _flushReceiveBIO(self) -> None:
        # Twisted's loop, except for what a close_notify means.
        while not self._lostTLSConnection:
            try:
                data = self._tlsConnection.recv(2**15)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                wrapped: Any = self.wrappedProtocol
                if not self._peer_closed and IHalfCloseableProtocol.providedBy(wrapped):
                    self._peer_closed = True
                    wrapped.readConnectionLost()
                    if not self.disconnecting:
                        break  # keep writing: the other direction is still open
                self._shutdownTLS()
                self._tlsShutdownFinished(None)
            except SSL.Error:
                self._tlsShutdownFinished(Failure())
            else:
                if not self._aborted:
                    ProtocolWrapper.dataReceived(self, data)
        self._flushSendBIO()

    def _flushSendBIO(self) -> None:
        # Twisted's, without asking an empty BIO (OpenSSL's "want read" then costs an
        # exception): most flushes follow a step that wrote nothing.
        if _pending(self._tlsConnection._from_ssl):
            TLSMemoryBIOProtocol._flushSendBIO(self)

    def loseWriteConnection(self) -> None:
        """
        A backend's EOF ends the TLS session (close_notify, then FIN) once everything
        before it is written. Without this, the relay's half-close would reach the TCP
        transport underneath (ProtocolWrapper passes unknown attributes on) and send a
        FIN past TLS, cutting off data still buffered in the TLS layer.
        """
        self.loseConnection()


def handshake_error(reason: Failure) -> str:
    """OpenSSL's reasons for a failed handshake, or how the connection ended."""
    if reason.check(SSL.Error):
        errors = reason.value.args[0] if reason.value.args else []  # type: ignore[union-attr]
        if isinstance(errors, list) and errors:
            return "; ".join(str(entry[-1]) for entry in errors if entry)
    return reason.getErrorMessage() or reason.type.__name__  # type: ignore[union-attr]


def _common_name(connection: SSL.Connection) -> str | None:
    from cryptography.x509.oid import NameOID

    certificate = connection.get_peer_certificate(as_cryptography=True)
    if certificate is None:
        return None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    value = str(names[0].value) if names else certificate.subject.rfc4514_string()
    return value if value.isprintable() else repr(value)


@implementer(IHandshakeListener)
class InnerSniffer(SniffingProtocol):
    """Detects and routes the decrypted stream of one terminated connection."""

    def __init__(self, target: TerminateTarget, outer: Inbound, sni: str | None) -> None:
        assert target.inner is not None, "the loader links terminate to its service"
        super().__init__(target.inner_runtime(outer))
        # The outer connection's shaping paces the decrypted relay (it is released
        # when the outer connection ends).
        self._shaping = outer.shaping
        self.target = target
        self.outer = outer
        self.sni = sni
        self.handshake_done = False
        self._handshake_timer: QueuedDeadline | None = None
        self._began = 0.0

    def connectionMade(self) -> None:
        outer = self.outer
        self.client, self.server, self.header = outer.client, outer.server, outer.proxy
        self._began = outer.reactor.seconds()
        self.record = ConnectionRecord(outer.listener, outer.record.client, self._began)
        # One shared queue per timeout value, not a DelayedCall per connection.
        self._handshake_timer = deadlines_for(
            outer.reactor, self.target.handshake_timeout).callLater(self._handshakeTimedOut)

    def _handshakeTimedOut(self) -> None:
        self._handshake_timer = None
        self._failed("timeout", "TLS handshake timeout")
        transport: Any = self.transport
        transport.abortConnection()

    def _failed(self, outcome: str, why: str) -> None:
        outer = self.outer
        metrics.tls_handshake(outer.listener, outer.route.name, outcome)
        outer.record.close(why)

    def handshakeCompleted(self) -> None:
        self.handshake_done = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        outer = self.outer
        transport: Any = self.transport
        tls: SSL.Connection = transport.getHandle()
        negotiated = tls.get_alpn_proto_negotiated() or b""
        alpn = negotiated.decode("ascii", "backslashreplace")
        version = tls.get_protocol_version_name()
        metrics.tls_handshake(outer.listener, outer.route.name, "ok",
                              outer.reactor.seconds() - self._began)
        added: dict[str, FactValue] = {"tls_version": version, "negotiated": alpn or None}
        if self.target.client_certificates != "none":
            client_cert = _common_name(tls)
            if client_cert is not None:
                added["client_cert"] = client_cert
        outer.record.facts = {**outer.record.facts, **added}
        runtime = self.runtime
        if "tls" in runtime.detectors:
            # The inner ``tls`` detector's answer is the terminated session's facts;
            # a decided verdict is never asked again (run_detectors).
            self._verdicts["tls"] = Match({
                "sni": self.sni, "alpn": (alpn,) if alpn else (), "versions": (version,),
                "ech": False, "truncated": False})
        if runtime.proxy_routes:
            self._verdicts[PREAMBLE] = (Match(header_facts(self.header), self.header.length)
                                        if self.header is not None else
                                        NoMatch("no PROXY header"))
        self._startDetecting()
        if self.attached is None and self.runtime.detectors:
            self._decide(final=False)

    def _route(self, selection: Selection, prefix: bytes) -> None:
        super()._route(selection, prefix)
        self._merge()

    def _merge(self) -> None:
        inner, outer = self.record, self.outer.record
        assert inner is not None
        if inner.route is not None:
            outer.route = f"{self.outer.route.name}>{inner.route}"
        if inner.backend is not None:
            outer.backend = inner.backend
        extra: dict[str, FactValue] = {}
        if inner.protocol is not None and inner.protocol != "tls":
            extra["inner"] = inner.protocol
            extra.update((k, v) for k, v in inner.facts.items() if k not in outer.facts)
        elif "unique_id" in inner.facts:
            extra["unique_id"] = inner.facts["unique_id"]
        if extra:
            outer.facts = {**outer.facts, **extra}

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
            why = handshake_error(reason)
            verifying = self.target.client_certificates != "none"
            outcome = "client_certificate" if verifying and "certificate" in why else "failed"
            self._failed(outcome, f"TLS handshake failed: {why}")
        if self.attached is not None:
            self.attached.connectionLost(reason)
        record = self.record
        if record is not None:
            self._merge()
            if record.close_reason is not None:
                self.outer.record.close(record.close_reason)
            elif self.handshake_done and record.route is None:
                self.outer.record.close("client closed before detection")
