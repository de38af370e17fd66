"""
An HTTP/1.1 backend that shows what it received, run as a subprocess by the tests.

It prints ``listening on 127.0.0.1:PORT``. Every response body starts with the raw
request head exactly as it arrived (request line and header lines), then a line
``body=N sha256=HEX`` for the request body it read (Content-Length or chunked).
Paths: ``/slow/S`` waits S seconds before answering, ``/bytes/N`` answers N bytes
(chunked), ``/close`` answers and closes, ``/page`` is an HTML page whose script
opens a WebSocket to ``/ws`` (which echoes text messages) and shows the answer; the
page's load event waits for its iframe ``/hold``, which the backend answers only once
the script requested ``/release`` after showing the answer (or after 15 s), so a
browser that prints the DOM at load prints the WebSocket's answer.
Keep-alive otherwise.

    python http_echo.py [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PAGE = b"""<!doctype html><html><head><title>gatekeep</title></head><body>
<p id="page">page loaded</p><p id="ws">ws pending</p>
<script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onopen = () => ws.send("ping");
const release = () => fetch("/release");
ws.onmessage = (m) => { document.getElementById("ws").textContent = "ws answer: " + m.data;
                         ws.close(); release(); };
ws.onerror = () => { document.getElementById("ws").textContent = "ws error"; release(); };
</script><iframe src="/hold"></iframe></body></html>"""


async def _websocket(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                     head: bytes) -> None:
    """Answer the upgrade, then echo text frames as "echo:<text>" until a close frame."""
    key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
    writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
    while True:
        first, second = await reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if second & 0x80 else b"\0\0\0\0"
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(await reader.readexactly(length)))
        if first & 0x0F == 8:
            writer.write(b"\x88\x00")
            await writer.drain()
            return
        answer = b"echo:" + payload
        writer.write(bytes([0x81, len(answer)]) + answer)
        await writer.drain()


async def _body(reader: asyncio.StreamReader, head: bytes) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    lower = head.lower()
    if b"\r\ntransfer-encoding: chunked" in lower:
        while True:
            line = await reader.readuntil(b"\r\n")
            length = int(line.split(b";")[0], 16)
            if length == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            data = await reader.readexactly(length)
            await reader.readexactly(2)
            digest.update(data)
            size += length
    elif b"\r\ncontent-length:" in lower:
        start = lower.index(b"\r\ncontent-length:") + 17
        length = int(lower[start:lower.index(b"\r\n", start)].strip())
        while size < length:
            data = await reader.read(min(65536, length - size))
            if not data:
                break
            digest.update(data)
            size += len(data)
    return size, digest.hexdigest()


async def serve(host: str, port: int) -> None:
    released = asyncio.Event()

    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size, digest = await _body(reader, head)
                target = head.split(b" ", 2)[1]
                if target == b"/ws":
                    await _websocket(reader, writer, head)
                    break
                if target in (b"/hold", b"/release"):
                    if target == b"/release":
                        released.set()
                    else:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(released.wait(), 15)
                        released.clear()
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    await writer.drain()
                    continue
                if target == b"/page":
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(PAGE), PAGE))
                    await writer.drain()
                    continue
                if target.startswith(b"/slow/"):
                    await asyncio.sleep(float(target[6:]))
                if target.startswith(b"/bytes/"):
                    count = int(target[7:])
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    block = b"x" * 65536
                    while count > 0:
                        part = block[:count]
                        writer.write(b"%x\r\n%s\r\n" % (len(part), part))
                        count -= len(part)
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
                    continue
                body = head + b"body=%d sha256=%s\n" % (size, digest.encode())
                close = target == b"/close"
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                             b"Content-Length: %d\r\n%s\r\n%s" % (
                                 len(body), b"Connection: close\r\n" if close else b"", body))
                await writer.drain()
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(session, host, port)
    bound = server.sockets[0].getsockname()
    print(f"listening on {bound[0]}:{bound[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
