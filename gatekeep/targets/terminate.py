"""
The ``terminate`` action: TLS server side, then the decrypted stream is detected again.

The ClientHello the chain already read chooses the certificate (SNI: exact name,
then wildcard, then the default) before the handshake starts, so an unknown name
under ``strict_sni`` gets a TLS ``unrecognized_name`` alert without any TLS work.
The handshake itself is Twisted's :class:`~twisted.protocols.tls.TLSMemoryBIOProtocol`
(pyOpenSSL) fed the sniffed bytes first; the plaintext goes to an inner chain
(:mod:`gatekeep.targets._inner`) for the route's ``service``.
"""

from __future__ import annotations

import datetime
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from cryptography.hazmat.primitives import hashes
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from gatekeep import metrics
from gatekeep.certstore import (
    CertificateProblem,
    CertificateStore,
    KeyPair,
    PairSource,
    load_ca_file,
    warn_expiry,
)
from gatekeep.config.schema import expect, setting
from gatekeep.config.units import parse_duration
from gatekeep.detectors._clienthello import ClientHello, parse_client_hello
from gatekeep.detectors.tls import TLSDetector, host_name
from gatekeep.failures import failure_bytes
from gatekeep.interfaces import IDetector, ITarget
from gatekeep.values import Inbound, Service

if TYPE_CHECKING:
    from gatekeep.sniff import ListenerRuntime

__all__ = ["TLS_VERSIONS", "TerminateTarget"]

#: ``versions`` entries and OpenSSL's numbers for them, oldest first.
TLS_VERSIONS: Mapping[str, int] = {
    "TLSv1": SSL.TLS1_VERSION,
    "TLSv1.0": SSL.TLS1_VERSION,
    "TLSv1.1": SSL.TLS1_1_VERSION,
    "TLSv1.2": SSL.TLS1_2_VERSION,
    "TLSv1.3": SSL.TLS1_3_VERSION,
}
_VERIFY = {
    "none": SSL.VERIFY_NONE,
    "optional": SSL.VERIFY_PEER,
    "required": SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
}


def _path(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError("expected a file or directory path")
    return value


def _pair(value: object, what: str = "a table { cert = \"...\", key = \"...\" }") -> PairSource:
    if not isinstance(value, dict) or "cert" not in value:
        raise TypeError(f"expected {what}")
    unknown = set(value) - {"cert", "key"}
    if unknown:
        raise ValueError(f"unknown key {sorted(unknown)[0]!r} (a pair has cert and key; "
                         "without key, cert holds the key too)")
    cert, key = value["cert"], value.get("key")
    if not isinstance(cert, str) or (key is not None and not isinstance(key, str)):
        raise TypeError("cert and key are file paths (strings)")
    return PairSource(cert, key)


def _pairs(value: object) -> tuple[PairSource, ...]:
    if not isinstance(value, list):
        raise TypeError('expected a list of tables, e.g. [{ cert = "chain.pem", '
                        'key = "key.pem" }]')
    return tuple(_pair(entry) for entry in value)


def _protocols(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise TypeError('expected a list of ALPN protocol ids, e.g. ["h2", "http/1.1"]')
    for entry in value:
        if len(entry.encode()) > 255:
            raise ValueError(f"ALPN id {entry[:20]!r}... is longer than 255 bytes")
    return tuple(dict.fromkeys(value))


def _versions(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TypeError('expected a list of TLS versions, e.g. ["TLSv1.2", "TLSv1.3"]')
    unknown = [v for v in value if v not in TLS_VERSIONS]
    if unknown:
        raise ValueError(f"unknown TLS version {unknown[0]!r}; known: "
                         + ", ".join(TLS_VERSIONS))
    numbers = sorted({TLS_VERSIONS[v] for v in value})
    order = sorted(set(TLS_VERSIONS.values()))
    span = order[order.index(numbers[0]):order.index(numbers[-1]) + 1]
    if numbers != span:
        raise ValueError("versions must be a range without gaps (OpenSSL sets a minimum "
                         "and a maximum)")
    return tuple(value)


def _client_mode(value: object) -> str:
    if value in _VERIFY:
        return str(value)
    raise ValueError(f'expected "none", "optional" or "required", not {value!r}')


def _ciphers(value: object) -> str:
    text = expect(str, "an OpenSSL cipher string")(value)
    try:
        SSL.Context(SSL.TLS_SERVER_METHOD).set_cipher_list(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError):
        raise ValueError(f"OpenSSL accepts no cipher from {text!r}") from None
    return str(text)


def _seconds(value: object) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be longer than zero")
    return seconds


@implementer(IOpenSSLServerConnectionCreator)
class _ChosenContext:
    """Twisted asks it for each connection's OpenSSL object; the protocol carries the context."""

    def serverConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(protocol.context, None)
        connection.set_accept_state()
        return connection


def _alpn_chooser(preferred: tuple[bytes, ...]) -> Any:
    def choose(connection: SSL.Connection, offered: list[bytes]) -> Any:
        for protocol in preferred:
            if protocol in offered:
                return protocol
        return SSL.NO_OVERLAPPING_PROTOCOLS  # go on without ALPN, as nginx does

    return choose


@implementer(ITarget)
@attrs.define(eq=False)
class TerminateTarget:
    """
    ``terminate = { certificates = "/etc/gatekeep/certs", service = "inner" }``: do the
    TLS handshake with a certificate chosen by SNI, then detect again what arrives
    decrypted, with the routes of `service`. Inner routes see the real client address
    (for their PROXY headers) and, in `match.tls`, the SNI and the *negotiated* ALPN
    protocol. The TLS session's details reach backends in a PROXY v2 header's `ssl`,
    `alpn` and `authority` TLVs. Certificate files replaced on disk are picked up by
    new connections within a second, without a reload; open connections keep theirs.
    """

    service: str = setting(
        "The `[service.X]` that detects and routes the decrypted stream.",
    )
    certificates: str | None = setting(
        "Directory of certificates: combined `NAME.pem` files (the chain, leaf first, and "
        "the private key), `NAME.crt` + `NAME.key` pairs, or certbot's `NAME/fullchain.pem` "
        "+ `NAME/privkey.pem` (point it at `/etc/letsencrypt/live`). RSA and ECDSA keys; "
        "with one of each for a name, clients that take ECDSA get it and others RSA. "
        "The names served come from each leaf's subjectAltName DNS entries.",
        default=None, parse=_path, shown="none",
    )
    certificate_pairs: tuple[PairSource, ...] = setting(
        "Explicit pairs `[{ cert = \"chain.pem\", key = \"key.pem\" }]` (without `key`, "
        "`cert` holds the key too); they win over the directory for the same name.",
        default=(), parse=_pairs, shown="`[]`",
    )
    default_certificate: PairSource | None = setting(
        "`{ cert, key }` served when the SNI matches no certificate (exact names first, "
        "then `*.` wildcards) or the client sends none. Without it the first certificate "
        "loaded (explicit pairs, then the directory in name order) is the default.",
        default=None, parse=_pair, shown="the first certificate",
    )
    strict_sni: bool = setting(
        "Refuse a ClientHello whose SNI is missing or matches no certificate with a TLS "
        "`unrecognized_name` alert, instead of serving the default certificate.",
        default=False, parse=expect(bool, "true or false"), shown="`false`",
    )
    alpn: tuple[str, ...] = setting(
        "ALPN protocols offered, in the server's order of preference; the first one the "
        "client also offers is chosen (none in common: the handshake goes on without "
        "ALPN). Inner routes match the chosen one with `match.tls = { alpn = [...] }`.",
        default=(), parse=_protocols, shown="`[]` (no ALPN)",
    )
    versions: tuple[str, ...] = setting(
        "TLS versions accepted, a range without gaps: `TLSv1`, `TLSv1.1`, `TLSv1.2`, "
        "`TLSv1.3`.",
        default=("TLSv1.2", "TLSv1.3"), parse=_versions, shown='`["TLSv1.2", "TLSv1.3"]`',
    )
    ciphers: str | None = setting(
        "OpenSSL cipher string for TLS 1.2 and older, e.g. `\"ECDHE+AESGCM:ECDHE+CHACHA20\"` "
        "(TLS 1.3 suites are OpenSSL's defaults).",
        default=None, parse=_ciphers, shown="OpenSSL's defaults",
    )
    client_certificates: str = setting(
        "Client certificates: `none` (not asked for), `optional` (asked for; one that is "
        "sent must verify against `client_ca`) or `required` (the handshake fails without "
        "a valid one). The result is in the PROXY v2 `ssl` TLV and the `client_cert` fact.",
        default="none", parse=_client_mode, shown='"none"',
    )
    client_ca: str | None = setting(
        "PEM file of the CAs that client certificates must chain to (needed for "
        "`optional` and `required`).",
        default=None, parse=_path, shown="none",
    )
    handshake_timeout: float = setting(
        "The TLS handshake must finish within this time, else the connection is closed.",
        default=10.0, parse=_seconds, shown='"10s"',
    )
    detect_timeout: float = setting(
        "Deadline for detecting the decrypted stream, as a listener's `detect_timeout`; "
        "then the inner service's `default` route is taken.",
        default=5.0, parse=_seconds, shown='"5s"',
    )
    store: CertificateStore = attrs.field(init=False, repr=False)
    inner: Service | None = attrs.field(default=None, init=False, repr=False)
    detectors: Mapping[str, IDetector] = attrs.field(factory=dict, init=False, repr=False)
    _contexts: dict[tuple[KeyPair, ...], SSL.Context] = attrs.field(
        factory=dict, init=False, repr=False)
    _generation: int = attrs.field(default=0, init=False, repr=False)
    _factories: weakref.WeakKeyDictionary[Any, TLSMemoryBIOFactory] = attrs.field(
        factory=weakref.WeakKeyDictionary, init=False, repr=False)
    _runtimes: dict[tuple[str, int, int], tuple[Any, ListenerRuntime]] = attrs.field(
        factory=dict, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.client_certificates != "none" and self.client_ca is None:
            raise ValueError(f'impossible combination: client_certificates = '
                             f'"{self.client_certificates}" needs client_ca (the CAs client '
                             "certificates must chain to)")
        if self.client_ca is not None:
            try:
                load_ca_file(self.client_ca)
            except CertificateProblem as problem:
                raise ValueError(f"client_ca {problem}") from None
        self.store = CertificateStore(self.certificates, self.certificate_pairs,
                                      self.default_certificate)
        problems = self.store.load()
        if problems:
            raise ValueError("certificate problem" + ("s" if len(problems) > 1 else "")
                             + ": " + "; ".join(str(p) for p in problems))
        warn_expiry(self.store.loaded, datetime.datetime.now(datetime.UTC))
        for pair in self.store.loaded:
            self.context((pair,))  # OpenSSL's own checks, at load time

    # ------------------------------------------------------------ wiring by the loader

    @property
    def inner_service(self) -> str:
        """The service this target hands decrypted streams to (resolved by the loader)."""
        return self.service

    def link(self, service: Service, detectors: Mapping[str, IDetector]) -> None:
        self.inner = service
        self.detectors = detectors
        self._runtimes.clear()

    def inner_runtime(self, outer: Inbound) -> ListenerRuntime:
        """
        The chain settings for the decrypted streams of ``outer``'s listener: the same
        for all its connections, so made once (per listener, its guard and reactor).
        """
        assert self.inner is not None, "the loader links terminate to its service"
        guard = outer.guard
        key = (outer.listener, id(guard), id(outer.reactor))
        known = self._runtimes.get(key)
        if known is not None and known[0] is guard and known[1].reactor is outer.reactor:
            return known[1]
        from gatekeep.sniff import ListenerRuntime

        runtime = ListenerRuntime.build(
            outer.listener, self.inner, self.detectors, self.detect_timeout, outer.reactor,
            guard=guard.inner() if guard is not None else None)
        self._runtimes[key] = (guard, runtime)
        return runtime

    # ------------------------------------------------------------ TLS

    def context(self, pairs: tuple[KeyPair, ...]) -> SSL.Context:
        """
        The OpenSSL context serving ``pairs`` (one per key type: OpenSSL keeps an RSA
        and an ECDSA certificate side by side and picks by what the client supports).
        """
        if self._generation != self.store.generation:
            self._contexts.clear()  # drop contexts of certificates replaced on disk
            self._generation = self.store.generation
        context = self._contexts.get(pairs)
        if context is not None:
            return context
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        numbers = [TLS_VERSIONS[v] for v in self.versions]
        context.set_min_proto_version(min(numbers))
        context.set_max_proto_version(max(numbers))
        context.set_options(SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE
                            | SSL.OP_NO_RENEGOTIATION)
        if self.ciphers is not None:
            context.set_cipher_list(self.ciphers.encode("ascii"))
        extras: dict[bytes, Any] = {}
        for pair in pairs:
            try:
                context.use_certificate(pair.leaf)
                context.use_privatekey(pair.key)
                context.check_privatekey()
            except SSL.Error as error:
                raise ValueError(f"{pair.source}: OpenSSL refuses it: {error}") from None
            for extra in pair.chain[1:]:
                extras.setdefault(extra.fingerprint(hashes.SHA256()), extra)
        # The chain certificates are shared by every key type of the context (pyOpenSSL
        # has no per-certificate chain): a client may get an unneeded intermediate.
        for extra in extras.values():
            context.add_extra_chain_cert(extra)
        if self.alpn:
            context.set_alpn_select_callback(
                _alpn_chooser(tuple(p.encode() for p in self.alpn)))
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca.encode())
            context.load_client_ca(self.client_ca.encode())
        context.set_verify(_VERIFY[self.client_certificates])
        # Session resumption across contexts of one route (needed with client certs).
        context.set_session_id(b"gatekeep-terminate")
        self._contexts[pairs] = context
        return context

    def factory(self, reactor: Any) -> TLSMemoryBIOFactory:
        factory = self._factories.get(reactor)
        if factory is None:
            wrapped = Factory.forProtocol(Protocol)
            factory = TLSMemoryBIOFactory(_ChosenContext(), False, wrapped, clock=reactor)
            self._factories[reactor] = factory
        return factory

    def attach(self, inbound: Inbound) -> Protocol:
        from gatekeep.targets._inner import Refusal, TerminatingProtocol

        self.store.refresh(inbound.reactor.seconds())
        sni = _sni(inbound)
        pairs = self.store.find_all(sni, self.strict_sni)
        if not pairs:
            metrics.tls_handshake(inbound.listener, inbound.route.name, "unrecognized_name")
            why = f"no certificate for SNI {sni}" if sni else "no SNI (strict_sni)"
            return Refusal(failure_bytes("tls", {}, "refused"), why, inbound)
        inbound.record.backend = f"terminate>{self.service}"
        return TerminatingProtocol(self, inbound, self.context(pairs), sni)

    def describe(self) -> str:
        count = len(self.store.loaded)
        alpn = f", ALPN {','.join(self.alpn)}" if self.alpn else ""
        strict = ", strict SNI" if self.strict_sni else ""
        clients = (f", client certificates {self.client_certificates}"
                   if self.client_certificates != "none" else "")
        return (f"terminate TLS ({count} certificate{'s' if count != 1 else ''}{alpn}"
                f"{strict}{clients}), then service {self.service}")


def _sni(inbound: Inbound) -> str | None:
    """The ClientHello's SNI: from the detector's facts, else parsed from the prefix."""
    if inbound.detector == "tls":
        value = inbound.facts.get("sni")
        return value if isinstance(value, str) else None
    hello = parse_client_hello(inbound.prefix, TLSDetector.max_prefix)
    if isinstance(hello, ClientHello) and hello.server_name is not None:
        return host_name(hello.server_name)
    return None
