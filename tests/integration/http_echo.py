"""
An HTTP/1.1 backend that shows what it received, run as a subprocess by the tests.

It prints ``listening on 127.0.0.1:PORT``. Every response body starts with the raw
request head exactly as it arrived (request line and header lines), then a line
``body=N sha256=HEX`` for the request body it read (Content-Length or chunked).
Paths: ``/slow/S`` waits S seconds before answering, ``/bytes/N`` answers N bytes
(chunked), ``/close`` answers and closes. Keep-alive otherwise.

    python http_echo.py [--port P]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib


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
    async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                size, digest = await _body(reader, head)
                target = head.split(b" ", 2)[1]
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
