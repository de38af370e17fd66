"""
A small XMPP-over-WebSocket client (RFC 7395) for the tests: TLS, the WebSocket
handshake, SASL PLAIN, resource binding, and a message to itself; stdlib only.
"""

from __future__ import annotations

import base64
import os
import re
import socket
import ssl
from pathlib import Path

__all__ = ["WebSocketXMPP", "ws_login"]


class WebSocketXMPP:
    def __init__(self, host: str, port: int, server_name: str, path: str, cafile: Path,
                 source: str = "127.0.0.1", timeout: float = 15.0) -> None:
        context = ssl.create_default_context(cafile=str(cafile))
        context.set_alpn_protocols(["http/1.1"])
        raw = socket.create_connection((host, port), timeout, source_address=(source, 0))
        self.sock = context.wrap_socket(raw, server_hostname=server_name)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {server_name}:{port}\r\nConnection: Upgrade\r\n"
            f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Protocol: xmpp\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._read()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        self.status_line = head.split(b"\r\n")[0].decode()
        if not self.status_line.startswith("HTTP/1.1 101"):
            raise ConnectionError(f"no upgrade: {head.decode(errors='replace')}")

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("closed")
        self.buffer += data

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        size = len(payload)
        header = bytes([0x81, 0x80 | size]) if size < 126 else \
            bytes([0x81, 0x80 | 126]) + size.to_bytes(2, "big")
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def receive(self) -> str:
        """One text message (the server does not mask; fragments are joined)."""
        message = b""
        while True:
            while len(self.buffer) < 2:
                self._read()
            first, second = self.buffer[0], self.buffer[1]
            size, offset = second & 0x7F, 2
            if size == 126:
                while len(self.buffer) < 4:
                    self._read()
                size, offset = int.from_bytes(self.buffer[2:4], "big"), 4
            elif size == 127:
                while len(self.buffer) < 10:
                    self._read()
                size, offset = int.from_bytes(self.buffer[2:10], "big"), 10
            while len(self.buffer) < offset + size:
                self._read()
            message += self.buffer[offset:offset + size]
            self.buffer = self.buffer[offset + size:]
            if first & 0x0F == 0x8:
                raise ConnectionError("closed by the server")
            if first & 0x80:
                return message.decode()

    def until(self, pattern: str) -> str:
        while True:
            message = self.receive()
            if re.search(pattern, message):
                return message

    def close(self) -> None:
        self.sock.close()


def ws_login(host: str, port: int, server_name: str, domain: str, user: str, password: str,
             cafile: Path, source: str = "127.0.0.1") -> str:
    """Log in over WebSocket and bind a resource; return the full JID."""
    client = WebSocketXMPP(host, port, server_name, "/xmpp-websocket", cafile, source)
    try:
        opening = (f'<open xmlns="urn:ietf:params:xml:ns:xmpp-framing" to="{domain}" '
                   'version="1.0"/>')
        client.send(opening)
        client.until("PLAIN")
        secret = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
        client.send(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>"
                    f"{secret}</auth>")
        outcome = client.until("success|failure")
        if "success" not in outcome:
            raise PermissionError(outcome)
        client.send(opening)
        client.until("bind")
        client.send("<iq xmlns='jabber:client' type='set' id='bind1'>"
                    "<bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
                    "<resource>gatekeep-ws</resource></bind></iq>")
        bound = client.until("bind1")
        jid = re.search(r"<jid>([^<]+)</jid>", bound)
        if jid is None:
            raise ConnectionError(bound)
        client.send(f"<message xmlns='jabber:client' to='{jid.group(1)}' type='chat'>"
                    "<body>round trip</body></message>")
        client.until("round trip")
        client.send('<close xmlns="urn:ietf:params:xml:ns:xmpp-framing"/>')
        return jid.group(1)
    finally:
        client.close()
