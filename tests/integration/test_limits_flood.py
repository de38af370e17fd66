"""
Connection limits under load, against a real ``twistd gatekeep``:

- 10,000 connections against ``max_connections = 1000``: 1000 are held open (and
  keep being served), the other 9000 are closed right after accept, not queued;
- a slowloris of 2,000 silent connections: every one is closed by the
  ``detect_timeout``, and gatekeep's memory stays bounded.

The clients (and the echo backend) are asyncio in this process; gatekeep runs in
its own, so its memory can be read from /proc. The listeners get a listen backlog
of 1024: with Twisted's default of 50, a burst of 500 connects overflows the
kernel's accept queue and some clients wait for SYN-ACK retransmissions (seconds)
before gatekeep even sees them.
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import ConnectionLine
from tests.integration.process import free_port, wait_until

pytestmark = pytest.mark.slow

HOLD = 1000
FLOOD = 9000
SLOWLORIS = 2000


def raise_fd_limit(need: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need <= hard or (soft < need and hard == resource.RLIM_INFINITY):
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        pytest.skip(f"needs {need} file descriptors, the hard limit is {hard}")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def metric(admin: int, name: str, **labels: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read()
    want = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}"
    for line in text.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def open_and_echo(port: int, message: bytes) -> tuple[asyncio.StreamReader,
                                                              asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(message)
    got = await asyncio.wait_for(reader.readexactly(len(message)), 10)
    assert got == message
    return reader, writer


async def served(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], n: int) -> float:
    reader, writer = conn
    started = time.monotonic()
    message = b"still there %d\n" % n
    writer.write(message)
    assert await asyncio.wait_for(reader.readexactly(len(message)), 10) == message
    return time.monotonic() - started


async def refused_after(port: int) -> float | None:
    """Seconds from connect to gatekeep's close; None if it kept the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        data = await asyncio.wait_for(reader.read(1), 5)
    except ConnectionResetError:
        data = b""
    except TimeoutError:
        data = None
    finally:
        writer.close()
    return time.monotonic() - started if data == b"" else None


FLOOD_CONFIG = """
[[listener]]
name = "flood"
endpoint = "tcp:0:interface=127.0.0.1:backlog=1024"
service = "echo"
max_connections = {limit}

[service.echo]
[[service.echo.route]]
name = "echo"
forward = {{ to = "tcp:127.0.0.1:{echo}" }}

[admin]
endpoint = "tcp:{admin}:interface=127.0.0.1"
"""


def test_10000_connections_against_max_connections_1000(
    gatekeep_runner: GatekeepRunner,
) -> None:
    raise_fd_limit(4 * HOLD + 2000)
    echo_port, admin = free_port(), free_port()
    gatekeep = gatekeep_runner(FLOOD_CONFIG.format(limit=HOLD, echo=echo_port, admin=admin),
                               ["flood"])
    port = gatekeep.port("flood")
    rss_before = rss_kib(gatekeep.pid)
    report: dict[str, object] = {}

    async def run() -> None:
        server = await asyncio.start_server(echo, "127.0.0.1", echo_port, backlog=1024)
        held = []
        for start in range(0, HOLD, 100):
            held += await asyncio.gather(*(open_and_echo(port, b"hello %d\n" % i)
                                           for i in range(start, start + 100)))
        report["rss_held_kib"] = rss_kib(gatekeep.pid)
        times: list[float | None] = []
        latencies: list[float] = []
        flood_started = time.monotonic()
        for start in range(0, FLOOD, 500):
            times += await asyncio.gather(*(refused_after(port) for _ in range(500)))
            # The held clients are served all along.
            latencies += await asyncio.gather(*(served(held[(start + i * 97) % HOLD], i)
                                                for i in range(10)))
        report["flood_seconds"] = time.monotonic() - flood_started
        report["kept"] = sum(1 for t in times if t is None)
        refusals = sorted(t for t in times if t is not None)
        report["refused"] = len(refusals)
        report["refusal_median_ms"] = statistics.median(refusals) * 1000
        report["refusal_p99_ms"] = refusals[int(len(refusals) * 0.99)] * 1000
        report["refusal_max_ms"] = refusals[-1] * 1000
        report["held_latency_max_ms"] = max(latencies) * 1000
        # Every held connection still works; closing some makes room for new ones.
        await asyncio.gather(*(served(conn, i) for i, conn in enumerate(held)))
        for _reader, writer in held[:100]:
            writer.close()
        await asyncio.sleep(0)  # let the closes go out before counting on them
        deadline = time.monotonic() + 10
        fresh: list[object] = []
        while len(fresh) < 100 and time.monotonic() < deadline:
            try:
                fresh.append(await open_and_echo(port, b"new\n"))
            except (asyncio.IncompleteReadError, ConnectionError):
                await asyncio.sleep(0.05)  # gatekeep has not seen that close yet
        report["new_after_closing_100"] = len(fresh)
        for _reader, writer in [*held[100:], *fresh]:  # type: ignore[misc]
            writer.close()
        server.close()

    asyncio.run(run())
    report["refusals_metric"] = metric(admin, "gatekeep_refusals_total", listener="flood",
                                       reason="max_connections")
    report["rss_before_kib"] = rss_before
    report["refusal_log_lines"] = gatekeep.log.text().count("refused 127.0.0.1:")
    print("\nmax_connections flood:", report)
    assert report["kept"] == 0
    assert report["refused"] == FLOOD
    # The flood's, and maybe one of the reconnects racing the close of a held one.
    assert FLOOD <= report["refusals_metric"] <= FLOOD + 100  # type: ignore[operator]
    assert report["new_after_closing_100"] == 100
    assert report["refusal_p99_ms"] < 500  # type: ignore[operator]
    assert report["held_latency_max_ms"] < 2000  # type: ignore[operator]
    # At most 10 lines a listener per 10 s (plus summaries): a flood cannot fill the disk.
    assert report["refusal_log_lines"] <= 10 * (1 + report["flood_seconds"] // 10)  # type: ignore[operator]


SLOW_CONFIG = """
[[listener]]
name = "slow"
endpoint = "tcp:0:interface=127.0.0.1:backlog=1024"
service = "tls"
detect_timeout = "{timeout}s"

[service.tls]
[[service.tls.route]]
name = "tls"
match.tls = {{}}
reject = {{}}
"""


def test_slowloris_closed_by_the_detect_timeout(gatekeep_runner: GatekeepRunner) -> None:
    raise_fd_limit(SLOWLORIS + 1000)
    timeout = 3.0
    gatekeep = gatekeep_runner(SLOW_CONFIG.format(timeout=timeout), ["slow"])
    port = gatekeep.port("slow")
    rss_before = rss_kib(gatekeep.pid)
    report: dict[str, float] = {}

    async def silent() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        try:
            data = await asyncio.wait_for(reader.read(1), timeout + 10)
        except ConnectionResetError:
            data = b""
        writer.close()
        assert data == b"", data
        return time.monotonic() - started

    async def run() -> list[float]:
        tasks = []
        for _ in range(SLOWLORIS // 200):
            tasks += [asyncio.ensure_future(silent()) for _ in range(200)]
            await asyncio.sleep(0.01)
        await asyncio.sleep(timeout / 2)  # all open, none timed out yet
        report["rss_peak_kib"] = rss_kib(gatekeep.pid)
        return await asyncio.gather(*tasks)

    closed_after = sorted(asyncio.run(run()))
    report["rss_before_kib"] = rss_before
    report["per_connection_bytes"] = (report["rss_peak_kib"] - rss_before) * 1024 / SLOWLORIS
    report["closed_min_s"], report["closed_max_s"] = closed_after[0], closed_after[-1]
    report["closed_median_s"] = statistics.median(closed_after)
    print("\nslowloris:", report)
    assert len(closed_after) == SLOWLORIS
    assert closed_after[-1] <= timeout + 2.0  # as the clients saw it
    # Bounded: a silent connection costs gatekeep a few KiB, not its buffers' worth.
    assert report["per_connection_bytes"] < 16 * 1024

    def logged() -> list[ConnectionLine]:
        return [c for c in gatekeep.connections() if c.listener == "slow"]

    # The log reaches us through a pipe, a little after the clients saw the closes.
    wait_until(lambda: len(logged()) >= SLOWLORIS, 10, "a line per connection", gatekeep.proc)
    lines = logged()
    assert len(lines) == SLOWLORIS
    assert {c.close for c in lines} == {"no route (detect_timeout passed)"}
    # Each closed by its own deadline (from accept, as gatekeep logs it): not before
    # it, and not much after.
    durations = sorted(c.time for c in lines)
    print(f"gatekeep's durations: {durations[0]:.3f}s to {durations[-1]:.3f}s")
    assert durations[0] >= timeout - 0.001
    assert durations[-1] <= timeout + 0.5
