"""
Helpers for the TLS detector tests: fixtures, re-framing, hand-built hellos, OpenSSL.

Re-framed and hand-built hellos are generated here rather than stored, so every
variant is derived from the captured bytes by code that can be read.
"""

from __future__ import annotations

import datetime
import functools
import itertools
import json
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL

from gatekeep.detectors._clienthello import MAX_RECORD

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "clienthello"


@attrs.frozen
class Fixture:
    name: str
    data: bytes
    sidecar: dict[str, Any]

    @property
    def facts(self) -> dict[str, Any]:
        """The facts the sidecar promises, in the detector's types."""
        s = self.sidecar
        return {
            "sni": s["sni"],
            "alpn": tuple(s["alpn"]),
            "versions": tuple(s["versions"]),
            "ech": s["ech"],
        }


@functools.cache
def fixtures() -> tuple[Fixture, ...]:
    found = []
    for path in sorted(FIXTURES.glob("*.bin")):
        sidecar = json.loads(path.with_suffix(".json").read_text())
        found.append(Fixture(path.stem, path.read_bytes(), sidecar))
    return tuple(found)


def handshake_of(data: bytes) -> tuple[bytes, bytes]:
    """The handshake bytes carried by ``data``'s records, and the first record version."""
    pos, out = 0, b""
    while pos < len(data):
        length = struct.unpack_from("!H", data, pos + 3)[0]
        out += data[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return out, data[1:3]


def records(message: bytes, cuts: Iterable[int], version: bytes = b"\x03\x01") -> bytes:
    """Frame ``message`` as handshake records, cutting it at the given offsets."""
    points = [0, *sorted(set(c for c in cuts if 0 < c < len(message))), len(message)]
    return b"".join(
        b"\x16" + version + struct.pack("!H", b - a) + message[a:b]
        for a, b in itertools.pairwise(points)
    )


def reframe(data: bytes, cuts: Iterable[int]) -> bytes:
    message, version = handshake_of(data)
    return records(message, cuts, version)


def even_cuts(length: int, parts: int) -> list[int]:
    return [length * i // parts for i in range(1, parts)]


# ------------------------------------------------------------ hand-built hellos


def ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!HH", ext_type, len(body)) + body


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(struct.pack("!BH", name_type, len(n)) + n for n in names)
    return ext(0, struct.pack("!H", len(entries)) + entries)


def alpn_ext(*protocols: bytes) -> bytes:
    entries = b"".join(bytes([len(p)]) + p for p in protocols)
    return ext(16, struct.pack("!H", len(entries)) + entries)


def versions_ext(*versions: int) -> bytes:
    return ext(43, bytes([2 * len(versions)]) + b"".join(struct.pack("!H", v) for v in versions))


def hello_message(
    extensions: Sequence[bytes] | None = (),
    legacy_version: int = 0x0303,
    session_id: bytes = b"\x11" * 32,
    suites: Sequence[int] = (0x1301, 0x1302, 0xC02B),
) -> bytes:
    """A ClientHello handshake message; ``extensions=None`` omits the block entirely."""
    body = struct.pack("!H", legacy_version) + b"\x5a" * 32
    body += bytes([len(session_id)]) + session_id
    body += struct.pack("!H", 2 * len(suites)) + b"".join(struct.pack("!H", s) for s in suites)
    body += b"\x01\x00"
    if extensions is not None:
        block = b"".join(extensions)
        body += struct.pack("!H", len(block)) + block
    return b"\x01" + len(body).to_bytes(3, "big") + body


def hello(*extensions: bytes, **kwargs: Any) -> bytes:
    """A ClientHello in one record."""
    return records(hello_message(extensions, **kwargs), ())


def with_body(body: bytes) -> bytes:
    """A one-record hello around a hand-made ClientHello body."""
    return records(b"\x01" + len(body).to_bytes(3, "big") + body, ())


def padded_hello(total: int, record: int = MAX_RECORD) -> bytes:
    """A hello whose records take exactly ``total`` bytes, cut into ``record``-sized parts."""
    base = len(hello_message([sni_ext(b"big.example"), ext(21, b"")]))
    parts = 1
    while True:  # the record count depends on the padding: find the fixed point
        message = hello_message(
            [sni_ext(b"big.example"), ext(21, b"\x00" * (total - base - 5 * parts))]
        )
        if -(-len(message) // record) == parts:
            break
        parts = -(-len(message) // record)
    data = records(message, range(record, len(message), record))
    assert len(data) == total
    return data


# ------------------------------------------------------------ OpenSSL's view


@attrs.frozen
class OpenSSLView:
    """What OpenSSL's server side saw: SNI, offered ALPN, and whether it answered."""

    sni: bytes | None
    alpn: tuple[bytes, ...]
    server_hello: bool
    error: str = ""


@functools.cache
def _credentials() -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .sign(key, hashes.SHA256())
    )
    return cert, key


def openssl_view(data: bytes) -> OpenSSLView:
    """Feed ``data`` to a real OpenSSL server over a memory BIO and record its view."""
    seen: dict[str, Any] = {"sni": None, "alpn": ()}
    cert, key = _credentials()
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.use_certificate(cert)
    ctx.use_privatekey(key)

    def on_servername(conn: SSL.Connection) -> None:
        seen["sni"] = conn.get_servername()

    def on_alpn(conn: SSL.Connection, offered: list[bytes]) -> bytes:
        seen["alpn"] = tuple(offered)
        return offered[0]

    ctx.set_tlsext_servername_callback(on_servername)
    ctx.set_alpn_select_callback(on_alpn)
    conn = SSL.Connection(ctx, None)
    conn.set_accept_state()
    conn.bio_write(data)
    error = ""
    try:
        conn.do_handshake()
    except SSL.WantReadError:
        pass
    except SSL.Error as e:
        error = str(e)
    try:
        reply = conn.bio_read(65536)
    except SSL.WantReadError:
        reply = b""
    # A ServerHello: a handshake record whose first message has type 2.
    answered = reply[:1] == b"\x16" and reply[5:6] == b"\x02"
    return OpenSSLView(seen["sni"], seen["alpn"], answered, error)
