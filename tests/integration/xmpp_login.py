"""
Log in to an XMPP server with slixmpp 1.17 and send a message to oneself.

Connects to HOST:PORT with STARTTLS (the default) or direct TLS (``--direct-tls``,
XEP-0368, optionally with ``--alpn xmpp-client``), authenticates, binds a resource,
sends a message to its own full JID and waits for it to come back. Only the mode
asked for is tried: no fallback, no reconnect.

    python xmpp_login.py --port 5222 --jid alice@example.test --password secret \\
        --cafile example.test.crt
    python xmpp_login.py --port 5223 --direct-tls --alpn xmpp-client ...

On success it prints one line and exits 0::

    OK jid=alice@example.test/abc tls=TLSv1.3 alpn=xmpp-client local=127.0.0.1:40312 rtt_ms=1.2

Otherwise one ``FAIL(code) ...`` line on stderr; codes: 3 connect failed or
connection lost, 4 TLS, 5 authentication, 6 timeout, 1 anything else.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import ssl
import sys
import time
import uuid
from typing import Any

import slixmpp

EXIT_OK, EXIT_OTHER, EXIT_CONNECT, EXIT_TLS, EXIT_AUTH, EXIT_TIMEOUT = 0, 1, 3, 4, 5, 6


class LoginProbe(slixmpp.ClientXMPP):
    """A client that settles ``done`` with (exit code, message) exactly once."""

    def __init__(self, jid: str, password: str, done: asyncio.Future[tuple[int, str]]) -> None:
        super().__init__(jid, password)
        self.done = done
        self.body = "gatekeep-integration " + uuid.uuid4().hex
        self.sent_at = 0.0
        self.report = ""
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", self.on_failed_auth)
        self.add_event_handler("connection_failed", self.on_connection_failed)
        self.add_event_handler("ssl_invalid_chain", self.on_invalid_chain)
        self.add_event_handler("stream_error", self.on_stream_error)
        self.add_event_handler("disconnected", self.on_disconnected)

    def finish(self, code: int, message: str) -> None:
        if not self.done.done():
            self.done.set_result((code, message))

    def on_failed_auth(self, _: Any) -> None:
        self.finish(EXIT_AUTH, "authentication failed")

    def on_invalid_chain(self, error: Any) -> None:
        self.finish(EXIT_TLS, f"TLS certificate not trusted: {error}")

    def on_stream_error(self, error: Any) -> None:
        self.finish(EXIT_OTHER, f"stream error: {error['condition']} {error['text']}".strip())

    def on_connection_failed(self, error: Any) -> None:
        if isinstance(error, ssl.SSLError):
            self.finish(EXIT_TLS, f"TLS handshake failed: {error}")
        else:
            self.finish(EXIT_CONNECT, f"connection failed: {error}")

    def on_disconnected(self, reason: Any) -> None:
        text = str(reason or "no reason given")
        code = EXIT_TLS if "SSL" in text or "CERTIFICATE" in text else EXIT_CONNECT
        self.finish(code, f"disconnected before the round trip: {text}")

    async def on_session_start(self, _: Any) -> None:
        transport = self.transport
        assert transport is not None
        tls: Any = transport.get_extra_info("ssl_object")
        local = transport.get_extra_info("sockname")
        version = tls.version() if tls is not None else "none"
        alpn = (tls.selected_alpn_protocol() if tls is not None else None) or "-"
        host = f"[{local[0]}]" if ":" in local[0] else local[0]
        self.report = f"tls={version} alpn={alpn} local={host}:{local[1]}"
        self.send_presence()
        self.sent_at = time.monotonic()
        # To the full JID: delivered straight back to this session.
        self.send_message(mto=self.boundjid, mbody=self.body, mtype="chat")

    def on_message(self, message: Any) -> None:
        if message["body"] == self.body:
            rtt = (time.monotonic() - self.sent_at) * 1000
            self.finish(EXIT_OK, f"OK jid={self.boundjid.full} {self.report} rtt_ms={rtt:.1f}")


def ssl_context(args: argparse.Namespace) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=args.cafile)
    if args.alpn:
        context.set_alpn_protocols(args.alpn)
    return context


async def run(args: argparse.Namespace) -> tuple[int, str]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[tuple[int, str]] = loop.create_future()
    client = LoginProbe(args.jid, args.password, done)
    client.ssl_context = ssl_context(args)
    client.enable_direct_tls = args.direct_tls
    client.enable_starttls = not args.direct_tls
    client.enable_plaintext = False
    if args.sni:
        client.default_domain = args.sni  # TLS server name; the stream still says to=domain
    if args.bind:
        # slixmpp has no source-address option; its connections go through this call.
        create_connection = loop.create_connection

        def bound(*positional: Any, **named: Any) -> Any:
            named.setdefault("local_addr", (args.bind, 0))
            return create_connection(*positional, **named)

        loop.create_connection = bound  # type: ignore[method-assign]
    client.connect(args.host, args.port)
    try:
        code, message = await asyncio.wait_for(done, args.timeout)
    except TimeoutError:
        code, message = EXIT_TIMEOUT, f"no round trip within {args.timeout:g}s"
    # slixmpp reconnects for ever by default: cancel that, then close quickly.
    client.cancel_connection_attempt()
    with contextlib.suppress(Exception):
        client.disconnect(wait=0.5)
        await asyncio.wait_for(asyncio.shield(client.disconnected), 1.0)
    client.abort()
    return code, message


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--direct-tls", action="store_true")
    parser.add_argument("--alpn", action="append", help="ALPN protocol to offer (repeatable)")
    parser.add_argument("--sni", help="TLS server name instead of the JID's domain")
    parser.add_argument("--bind", help="local source address, e.g. 127.0.0.5")
    parser.add_argument("--cafile", required=True)
    parser.add_argument("--timeout", type=float, default=15.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="slixmpp debug log")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.CRITICAL)
    try:
        code, message = asyncio.run(run(args))
    except Exception as error:  # noqa: BLE001 - report anything unexpected in one line
        code, message = EXIT_OTHER, f"unexpected {type(error).__name__}: {error}"
    mode = "direct-tls" if args.direct_tls else "starttls"
    if code == EXIT_OK:
        print(f"{message} via={args.host}:{args.port} mode={mode}")
    else:
        print(f"FAIL({code}) {args.host}:{args.port} ({mode}): {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
