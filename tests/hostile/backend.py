"""
A scripted backend for the hostile suite, run as its own process (asyncio)::

    python -m tests.hostile.backend [--nofile N] [--unix PATH] [--proxy] [--echo]

It listens on 127.0.0.1 (a free port), or on a UNIX socket, prints ``PORT <n>`` (0
for a UNIX socket) and then, per connection, reads a PROXY header first with
``--proxy`` (a missing or broken one is reported ``BAD``), then one command line
and acts on it, printing one result line per connection that checks anything
(``OK <id>`` or ``BAD <id> <why>``):

``ECHO``
    Echo everything until EOF, then close (half-close relayed as it comes).
``HALF <id> <client_bytes> <backend_bytes> <first> <seed>``
    The half-close exchange: with ``first = client`` the backend reads the client's
    bytes to EOF, checks them, then sends its own and closes; with ``first =
    backend`` it sends its bytes and shuts down its write side at once, then reads
    the client's to EOF; ``both`` does the two at the same time.
``DIE <n>``
    Send ``n`` bytes, then reset the connection (SO_LINGER 0).
``SILENT``
    Read and discard forever: never answers, never closes.
``GET ...`` (an HTTP/1 request head)
    Answer ``200`` with the body ``ok`` and close.

With ``--echo`` every connection is echoed from its first byte (no command line): the
backend behind TLS passthrough, XMPP and HTTP routes in the load tests.

Payloads are :func:`payload` (seeded pseudo-random bytes), so both ends know them.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import resource
import socket
import struct
import sys

__all__ = ["payload"]


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = await reader.read(1 << 18)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


async def send(writer: asyncio.StreamWriter, data: bytes, close: bool) -> None:
    for start in range(0, len(data), 1 << 18):
        writer.write(data[start:start + (1 << 18)])
        await writer.drain()
    if close:
        writer.close()
    else:
        writer.write_eof()
        await writer.drain()


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def half(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args: list[str],
) -> None:
    ident, client_bytes, backend_bytes, first, seed = args
    expected = payload(int(seed), int(client_bytes))
    mine = payload(int(seed) + 1, int(backend_bytes))
    if first == "client":
        got = await read_all(reader)
        await send(writer, mine, close=True)
    elif first == "backend":
        await send(writer, mine, close=False)
        got = await read_all(reader)
        writer.close()
    else:
        sending = asyncio.ensure_future(send(writer, mine, close=False))
        got = await read_all(reader)
        await sending
        writer.close()
    if got == expected:
        report(f"OK {ident}")
    else:
        report(f"BAD {ident} got {len(got)} bytes {digest(got)}, "
               f"expected {len(expected)} {digest(expected)}")


async def die(writer: asyncio.StreamWriter, size: int) -> None:
    writer.write(payload(0, size))
    await writer.drain()
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def proxy_header(reader: asyncio.StreamReader) -> str | None:
    """Read a PROXY header; None if it is whole and valid, else what is wrong."""
    from gatekeep.proxyproto import Incomplete, ProxyHeader, parse

    data = b""
    while True:
        result = parse(data)
        if isinstance(result, ProxyHeader):
            extra = data[result.length:]
            if extra:
                reader.feed_data(extra)  # pragma: no cover - we read one byte at a time
            return None if result.source is not None else "no source address"
        if not isinstance(result, Incomplete):
            return f"not a PROXY header: {result!r}"
        byte = await reader.read(1)
        if not byte:
            return "EOF inside the PROXY header"
        data += byte


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 18):
            writer.write(chunk)
            await writer.drain()
        writer.close()
    except (ConnectionError, OSError) as error:
        report(f"ERROR {error!r}")


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        if PROXY:
            problem = await proxy_header(reader)
            if problem is not None:
                report(f"BAD proxy {problem}")
                writer.close()
                return
        line = (await reader.readline()).decode("ascii", "replace").split()
        if not line:
            writer.close()
            return
        command, args = line[0], line[1:]
        if command == "ECHO":
            await echo(reader, writer)
        elif command == "HALF":
            await half(reader, writer, args)
        elif command == "DIE":
            await die(writer, int(args[0]))
        elif command == "GET":
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
            writer.close()
        elif command == "SILENT":
            while await reader.read(1 << 16):
                pass
            writer.close()
        else:
            writer.close()
    except (ConnectionError, OSError) as error:
        report(f"ERROR {error!r}")


PROXY = False


async def main(argv: list[str]) -> None:
    global PROXY
    unix = None
    handler = handle
    while argv:
        option = argv.pop(0)
        if option == "--nofile":
            limit = int(argv.pop(0))
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        elif option == "--unix":
            unix = argv.pop(0)
        elif option == "--proxy":
            PROXY = True
        elif option == "--echo":
            handler = echo
    if unix is not None:
        server = await asyncio.start_unix_server(handler, unix, backlog=4096)
        report("PORT 0")
    else:
        server = await asyncio.start_server(handler, "127.0.0.1", 0, backlog=4096)
        report(f"PORT {server.sockets[0].getsockname()[1]}")
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
