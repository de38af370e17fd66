"""
Many-connection clients for the hostile suite and the soak (asyncio, one process)::

    python -m tests.hostile.load slowloris PORT COUNT DEADLINE [--nofile N]
    python -m tests.hostile.load mixed PORT COUNT SIZE [--nofile N]

Each prints one JSON report line on stdout.

``slowloris``: COUNT connections, each either silent (stalls) or trickling one byte
per second of a head that never ends (an HTTP request, a TLS ClientHello, an XMPP
stream header, in turn); reports how long after its connect each saw its close, and
how many were still open DEADLINE + 5 s later.

``mixed``: COUNT connections at once, in turn a TLS ClientHello, an XMPP stream
header or an HTTP request head followed by pseudo-random bytes up to SIZE, all sent
after every connection is open; an echoing backend sends them back. Reports how
many came back byte-exact.
"""

from __future__ import annotations

import asyncio
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["PREFIXES", "mixed", "slowloris"]

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
XMPP = (b"<?xml version='1.0'?><stream:stream to='example.test' xmlns='jabber:client' "
        b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
HTTP = b"POST /upload HTTP/1.1\r\nHost: example.test\r\nContent-Length: 65536\r\n\r\n"


def _prefixes() -> dict[str, bytes]:
    return {"tls": (FIXTURES / "clienthello" / "chromium.bin").read_bytes(),
            "xmpp": XMPP, "http": HTTP}


PREFIXES = _prefixes()
#: Heads that never end, for the trickle: each keeps its detector waiting.
ENDLESS = {
    "http": b"GET / HTTP/1.1\r\nHost: example.test\r\nX-Slow: " + b"a" * 4000,
    "tls": PREFIXES["tls"][:-1],
    "xmpp": XMPP[:-1] + b" " * 4000,
}


async def _attacker(port: int, index: int, deadline: float) -> tuple[str, float | None]:
    kind = ("stall", "http", "tls", "xmpp")[index % 4]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return kind, -1.0
    opened = time.monotonic()

    async def trickle() -> None:
        for byte in ENDLESS[kind]:
            writer.write(bytes([byte]))
            await asyncio.sleep(1.0)

    trickling = None if kind == "stall" else asyncio.ensure_future(trickle())
    try:
        await asyncio.wait_for(reader.read(65536 * 4), deadline + 5.0)
        while await asyncio.wait_for(reader.read(65536), deadline + 5.0):
            pass
        closed: float | None = time.monotonic() - opened
    except (ConnectionError, OSError):
        closed = time.monotonic() - opened
    except TimeoutError:
        closed = None
    finally:
        if trickling is not None:
            trickling.cancel()
        writer.close()
    return kind, closed


async def slowloris(port: int, count: int, deadline: float) -> dict[str, Any]:
    started = time.monotonic()
    tasks = []
    for index in range(count):
        tasks.append(asyncio.ensure_future(_attacker(port, index, deadline)))
        if index % 250 == 249:
            await asyncio.sleep(0.05)  # ramp up over ~1 s rather than one burst of SYNs
    results = await asyncio.gather(*tasks)
    closed = [t for _, t in results if t is not None and t >= 0]
    return {
        "count": count,
        "connect_failed": sum(1 for _, t in results if t is not None and t < 0),
        "not_closed": sum(1 for _, t in results if t is None),
        "closed": len(closed),
        "max_close": max(closed, default=0.0),
        "late": sum(1 for t in closed if t > deadline + 1.0),
        "wall": time.monotonic() - started,
    }


async def _mixed_one(port: int, index: int, size: int, go: asyncio.Event,
                     opened: list[int], count: int) -> str | None:
    kind = ("tls", "xmpp", "http")[index % 3]
    body = random.Random(index).randbytes(max(0, size - len(PREFIXES[kind])))
    data = PREFIXES[kind] + body
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as error:
        opened[0] += 1
        if opened[0] == count:
            go.set()
        return f"{kind} #{index}: connect {error!r}"
    opened[0] += 1
    if opened[0] == count:
        go.set()
    try:
        await go.wait()

        async def send() -> None:
            for start in range(0, len(data), 16384):
                writer.write(data[start:start + 16384])
                await writer.drain()
            writer.write_eof()

        sending = asyncio.ensure_future(send())
        got = bytearray()
        while chunk := await reader.read(65536):
            got += chunk
        await sending
    except (ConnectionError, OSError) as error:
        return f"{kind} #{index}: {error!r}"
    finally:
        writer.close()
    if bytes(got) != data:
        return f"{kind} #{index}: got {len(got)} of {len(data)} bytes (or other bytes)"
    return None


async def mixed(port: int, count: int, size: int) -> dict[str, Any]:
    started = time.monotonic()
    go = asyncio.Event()
    opened = [0]
    tasks = []
    for index in range(count):
        tasks.append(asyncio.ensure_future(_mixed_one(port, index, size, go, opened, count)))
        if index % 500 == 499:
            await asyncio.sleep(0.02)
    failures = [f for f in await asyncio.gather(*tasks) if f is not None]
    return {"count": count, "size": size, "exact": count - len(failures),
            "failures": failures[:20], "failed": len(failures),
            "wall": time.monotonic() - started}


def main(argv: list[str]) -> None:
    if "--nofile" in argv:
        at = argv.index("--nofile")
        limit = int(argv[at + 1])
        del argv[at:at + 2]
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
    mode, port, count, extra = argv[0], int(argv[1]), int(argv[2]), argv[3]
    if mode == "slowloris":
        report = asyncio.run(slowloris(port, count, float(extra)))
    elif mode == "mixed":
        report = asyncio.run(mixed(port, count, int(extra)))
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
