"""
TLS to backends: ``tls:NAME:PORT:endpoint=...:trustRoots=DIR`` endpoints, and pins.

Without a pin, ``forward`` uses Twisted's own ``tls:`` endpoint: the backend's
certificate must chain to ``trustRoots`` (a directory of PEM CA certificates; the
system's CAs without it) and name ``NAME`` (checked with service-identity). With
``tls_pin`` the backend is trusted by its key alone, as with SSH host keys: its
leaf certificate must match one of the pins, whoever issued it and whatever names
it holds, so a self-signed backend needs no CA at all.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

import attrs
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from twisted.internet.endpoints import clientFromString, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gatekeep.config.endpoints import split_endpoint

__all__ = ["Pin", "PinMismatch", "check_pinned_target", "parse_pins", "pinned_endpoint"]

log = Logger()


class PinMismatch(Exception):
    """The backend's certificate matches none of the route's pins."""


@attrs.frozen
class Pin:
    """``spki``: SHA-256 of the public key (SubjectPublicKeyInfo); ``cert``: of the certificate."""

    kind: str
    digest: bytes

    def text(self) -> str:
        if self.kind == "spki":
            return "sha256/" + base64.b64encode(self.digest).decode()
        return "sha256:" + self.digest.hex()


def _pin(text: str) -> Pin:
    if text.startswith("sha256/"):
        try:
            digest = base64.b64decode(text[7:], validate=True)
        except binascii.Error:
            digest = b""
        if len(digest) == 32:
            return Pin("spki", digest)
    elif text.startswith("sha256:"):
        try:
            digest = bytes.fromhex(text[7:].replace(":", ""))
        except ValueError:
            digest = b""
        if len(digest) == 32:
            return Pin("cert", digest)
    raise ValueError(
        f"bad pin {text!r}: use \"sha256/BASE64\" (the public key's SHA-256, as "
        "`openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst "
        "-sha256 -binary | base64` prints it) or \"sha256:HEX\" (the certificate's "
        "fingerprint, `openssl x509 -noout -fingerprint -sha256`)")


def parse_pins(value: object) -> tuple[Pin, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise TypeError('expected a non-empty list of pins, e.g. ["sha256/BASE64..."]')
    return tuple(_pin(v) for v in value)


def _matches(certificate: Any, pins: tuple[Pin, ...]) -> bool:
    spki = hashlib.sha256(certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).digest()
    whole = hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()
    return any(pin.digest == (spki if pin.kind == "spki" else whole) for pin in pins)


@implementer(IOpenSSLClientConnectionCreator)
class _PinnedCreator:
    def __init__(self, hostname: str, pins: tuple[Pin, ...]) -> None:
        self.hostname = hostname
        self.pins = pins
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_options(SSL.OP_NO_COMPRESSION)
        # The server always sends its certificate; the pin, checked when the handshake
        # is done, is the only trust decision.
        context.set_verify(SSL.VERIFY_NONE)
        context.set_info_callback(self._info)
        self.context = context

    def clientConnectionForTLS(self, protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(protocol)
        connection.set_connect_state()
        connection.set_tlsext_host_name(self.hostname.encode("idna"))
        return connection

    def _info(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        certificate = connection.get_peer_certificate(as_cryptography=True)
        if certificate is not None and _matches(certificate, self.pins):
            return
        log.warn("backend {host}: its certificate matches no tls_pin; connection closed",
                 host=self.hostname)
        connection.get_app_data().failVerification(
            Failure(PinMismatch(f"{self.hostname}: certificate matches no tls_pin")))


def pinned_endpoint(reactor: Any, description: str, pins: tuple[Pin, ...]
                    ) -> IStreamClientEndpoint:
    """The ``tls:`` endpoint ``description`` with the pins as its only trust."""
    args, kwargs = split_endpoint(description)
    host, port = args[1], args[2]
    # split_endpoint undid one level of escaping: endpoint= is a plain string now.
    inner = kwargs.get("endpoint") or f"tcp:{host}:{port}"
    return wrapClientTLS(_PinnedCreator(host, pins), clientFromString(reactor, inner))


def check_pinned_target(description: str) -> None:
    """``tls_pin`` needs a ``tls:NAME:PORT`` endpoint."""
    args, _ = split_endpoint(description)
    if args[0].strip().lower() != "tls" or len(args) < 3:
        raise ValueError("impossible combination: tls_pin needs a TLS backend, "
                         'to = "tls:NAME:PORT:endpoint=tcp\\:HOST\\:PORT"')
