"""
ClientHellos made by real TLS stacks, for the hostile suite.

- :func:`python_hello`: Python's ``ssl`` (OpenSSL through CPython) on a memory BIO,
  with the SNI and ALPN asked for;
- :func:`pyopenssl_hello`: pyOpenSSL on a memory BIO, which sends any SNI bytes at all
  (invalid names too, as a hostile client would);
- :func:`s_client_hello`: the ``openssl s_client`` program, captured on a socket;
- the captured fixtures (Chromium's post-quantum hello, curl, slixmpp, ...).

:func:`expected_sni` and :func:`expected_alpn` say what the TLS detector should report
for what OpenSSL's server side saw, written apart from the detector's own code.
"""

from __future__ import annotations

import contextlib
import re
import socket
import ssl
import subprocess
import threading

from OpenSSL import SSL

from gatekeep.detectors._clienthello import Incomplete, parse_client_hello

__all__ = ["expected_alpn", "expected_sni", "pyopenssl_hello", "python_hello", "s_client_hello"]

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")


def expected_sni(raw: bytes | None) -> str | None:
    """An SNI as the detector must report it: a canonical LDH host name, else None."""
    if raw is None:
        return None
    try:
        text = raw.decode("ascii").lower()
    except UnicodeDecodeError:
        return None
    if text.endswith("."):
        text = text[:-1]
    labels = text.split(".")
    if not 0 < len(text) <= 253 or not all(_LABEL.fullmatch(label) for label in labels):
        return None
    last = labels[-1]
    if last.isdigit() or re.fullmatch(r"0x[0-9a-f]*", last):
        return None  # an IP literal is not a host name (RFC 6066)
    return text


def expected_alpn(offered: tuple[bytes, ...]) -> tuple[str, ...]:
    """ALPN ids as the detector reports them: visible ASCII as is, else ``0x`` + hex."""
    return tuple(p.decode("ascii") if p and all(0x21 <= b <= 0x7E for b in p)
                 else "0x" + p.hex() for p in offered)


def python_hello(sni: str | None, alpn: list[str], version: ssl.TLSVersion | None = None
                 ) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if version is not None:
        context.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with contextlib.suppress(ssl.SSLWantReadError):
        client.do_handshake()
    return outgoing.read()


def pyopenssl_hello(sni: bytes | None, alpn: list[bytes]) -> bytes:
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    if alpn:
        context.set_alpn_protos(alpn)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    if sni is not None:
        client.set_tlsext_host_name(sni)
    with contextlib.suppress(SSL.WantReadError):
        client.do_handshake()
    return client.bio_read(65536)


def s_client_hello(sni: str, alpn: list[str], extra: tuple[str, ...] = ()) -> bytes:
    """The hello ``openssl s_client`` sends, read off a loopback socket."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    captured: list[bytes] = []

    def accept() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            data = b""
            while isinstance(parse_client_hello(data, 65536), Incomplete):
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
            captured.append(data)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    argv = ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", sni,
            *extra]
    if alpn:
        argv += ["-alpn", ",".join(alpn)]
    subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20,
                   check=False)
    thread.join(10)
    listener.close()
    return captured[0]
