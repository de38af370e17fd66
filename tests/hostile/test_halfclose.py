"""
The half-close matrix: 0 B to 10 MiB each way, each side closing first (and both at
once), on every relay path on main, byte-exact.

The client sends a command line that the scripted backend (:mod:`tests.hostile.backend`)
obeys, so both ends know what to send, when to shut down their write side and what
they must receive. Paths: a TCP backend relayed by splice(2) (the default on Linux)
and by the portable user-space relay (``splice = false``), a UNIX socket backend, a
TCP backend behind a PROXY v2 header (written before the replayed bytes), and a
shaped relay (token buckets pausing the sender).
"""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from OpenSSL import SSL

from tests.hostile.backend import payload, read_all, send
from tests.hostile.harness import start_backend, start_gatekeep
from tests.tlscerts import make_ca

pytestmark = pytest.mark.slow

MiB = 1 << 20
SIZES = (0, 1, 65536 + 7, MiB, 10 * MiB)
ORDERS = ("client", "backend", "both")

CONFIG = """
{top}
[[listener]]
name = "plain"
endpoint = "tcp:0:interface=127.0.0.1"
service = "plain"
{listener}

[service.plain]
[[service.plain.route]]
name = "all"
forward = {{ to = "{to}"{extra} }}
{tables}
"""

#: path -> (top-level keys, listener keys, extra tables)
PATHS = {
    "tcp": ("", "", ""),  # the splice fast path where the kernel has it (bare backend socket)
    "tcp-by-name": ("", "", ""),  # spliced too, the backend connected by Twisted (a name)
    "tcp-portable": ("splice = false", "", ""),
    "unix": ("", "", ""),
    "tcp+proxy-v2": ("", "", ""),
    "shaped": ("", 'shaper = "fast"',
               '[shaper.fast]\nrate = "400MiB/s"\nburst = "8MiB"\nscope = "connection"'),
}


async def one_case(port: int, ident: int, client_bytes: int, backend_bytes: int,
                   first: str) -> str | None:
    """Run one exchange; None if the client got exactly the backend's bytes."""
    seed = ident * 2
    mine, expected = payload(seed, client_bytes), payload(seed + 1, backend_bytes)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"HALF {ident} {client_bytes} {backend_bytes} {first} {seed}\n".encode())
        if first == "client":
            await send(writer, mine, close=False)
            got = await read_all(reader)
        elif first == "backend":
            got = await read_all(reader)
            await send(writer, mine, close=False)
        else:
            sending = asyncio.ensure_future(send(writer, mine, close=False))
            got = await read_all(reader)
            await sending
    finally:
        writer.close()
    if got != expected:
        return f"case {ident}: client got {len(got)} of {len(expected)} bytes (or others)"
    return None


async def run_matrix(port: int, cases: list[tuple[int, int, str]]) -> list[str]:
    limit = asyncio.Semaphore(6)

    async def guarded(ident: int, case: tuple[int, int, str]) -> str | None:
        async with limit:
            try:
                return await asyncio.wait_for(one_case(port, ident, *case), 60)
            except (OSError, TimeoutError) as error:
                return f"case {ident} {case}: {error!r}"

    found = await asyncio.gather(*(guarded(i, c) for i, c in enumerate(cases)))
    return [f for f in found if f is not None]


CASES = [(c, b, o) for o, (c, b) in itertools.product(ORDERS, itertools.product(SIZES, SIZES))]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_half_close_matrix(tmp_path: Path, path: str) -> None:
    sock = tmp_path / "backend.sock"
    backend = start_backend(tmp_path / "backend", unix=sock if path == "unix" else None,
                            proxy=path == "tcp+proxy-v2")
    try:
        host = "localhost" if path == "tcp-by-name" else "127.0.0.1"
        to = f"unix:{sock}" if path == "unix" else f"tcp:{host}:{backend.port}"
        extra = ', proxy_protocol = "v2"' if path == "tcp+proxy-v2" else ""
        top, listener, tables = PATHS[path]
        config = CONFIG.format(to=to, extra=extra, top=top, listener=listener, tables=tables)
        gatekeep = start_gatekeep(tmp_path / "gk", config, ["plain"])
        try:
            started = time.monotonic()
            problems = asyncio.run(run_matrix(gatekeep.port("plain"), CASES))
            results = backend.wait_results(len(CASES), timeout=60)
            elapsed = time.monotonic() - started
            bad = [r for r in results if not r.startswith("OK ")]
            assert not problems, problems
            assert not bad, bad
            print(f"half-close {path}: {len(CASES)} cases byte-exact in {elapsed:.1f}s")
        finally:
            gatekeep.stop()
        assert not gatekeep.problems(), gatekeep.problems()
    finally:
        backend.stop()


# ------------------------------------------------------------------ TLS-terminated

TLS_CONFIG = """
[[listener]]
name = "tls"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]
[[service.edge.route]]
name = "terminate"
match.tls = {{}}
terminate = {{ certificate_pairs = [{{ cert = "{cert}", key = "{key}" }}], service = "inner" }}

[service.inner]
[[service.inner.route]]
name = "all"
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""
TLS_SIZES = (0, 1, 65536 + 7, MiB)


def _tls_read_all(conn: SSL.Connection) -> tuple[bytes, str]:
    """Read to the end; also say how it ended (close_notify, or a bare TCP close)."""
    chunks: list[bytes] = []
    while True:
        try:
            chunk = conn.recv(1 << 16)
        except SSL.ZeroReturnError:
            return b"".join(chunks), "close_notify"
        except SSL.SysCallError:
            return b"".join(chunks), "tcp close"
        if not chunk:
            return b"".join(chunks), "tcp close"
        chunks.append(chunk)


def tls_case(port: int, ident: int, client_bytes: int, backend_bytes: int,
             first: str) -> str | None:
    """One exchange over TLS; a TLS half-close is a close_notify with reading going on."""
    seed = ident * 2
    mine, expected = payload(seed, client_bytes), payload(seed + 1, backend_bytes)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(None)  # pyOpenSSL needs a blocking socket
        conn = SSL.Connection(SSL.Context(SSL.TLS_CLIENT_METHOD), sock)
        conn.set_tlsext_host_name(b"half.example")
        conn.set_connect_state()
        conn.sendall(f"HALF {ident} {client_bytes} {backend_bytes} {first} {seed}\n".encode())
        try:
            if first == "backend":
                got, how = _tls_read_all(conn)
                conn.sendall(mine)
                conn.shutdown()
            else:  # "client": all sent and close_notify before reading anything
                conn.sendall(mine)
                conn.shutdown()
                got, how = _tls_read_all(conn)
        except SSL.Error as error:
            return f"case {ident} {(client_bytes, backend_bytes, first)}: {error!r}"
    if got != expected or how != "close_notify":
        return (f"case {ident} {(client_bytes, backend_bytes, first)}: client got "
                f"{len(got)} of {len(expected)} bytes, ended by {how}")
    return None


TLS_CASES = [(c, b, o) for o, (c, b) in itertools.product(
    ("client", "backend"), itertools.product(TLS_SIZES, TLS_SIZES))]


def test_half_close_matrix_tls_terminated(tmp_path: Path) -> None:
    cert, key = make_ca().leaf("half.example").write_pair(tmp_path / "c.pem", tmp_path / "k.pem")
    backend = start_backend(tmp_path / "backend")
    try:
        config = TLS_CONFIG.format(cert=cert, key=key, port=backend.port)
        gatekeep = start_gatekeep(tmp_path / "gk", config, ["tls"])
        try:
            port = gatekeep.port("tls")
            with ThreadPoolExecutor(4) as pool:
                problems = [p for p in pool.map(lambda a: tls_case(port, *a),
                                                [(i, *c) for i, c in enumerate(TLS_CASES)])
                            if p is not None]
            results = backend.wait_results(len(TLS_CASES), timeout=30)
            bad = [r for r in results if not r.startswith("OK ")]
            assert not problems, problems
            assert not bad, bad
            print(f"half-close tls-terminated: {len(TLS_CASES)} cases byte-exact")
        finally:
            gatekeep.stop()
        assert not gatekeep.problems(), gatekeep.problems()
    finally:
        backend.stop()
