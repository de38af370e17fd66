"""
A soak of gatekeep: hours of mixed traffic, mismatches counted, RSS drift reported.

    .venv/bin/python bench/soak.py                       # 1 hour (not run by CI)
    .venv/bin/python bench/soak.py --minutes 10 --json soak.json

It starts an echoing backend and gatekeep (a TLS-passthrough, an XMPP and an HTTP
route to it, plus a catch-all forward for the half-close exchanges) and then, round
after round until the time is up, runs in parallel: ``--clients`` concurrent mixed
connections of ``--size`` bytes each way (checked byte for byte), a burst of
malformed ClientHellos, slowloris connections trickling past ``detect_timeout``, and
half-close exchanges of random sizes with either side closing first. Every round
samples gatekeep's RSS, open descriptors and CPU time. At the end it prints (and with
``--json`` writes) the counts, mismatches and failures, and the RSS drift: the last
sample minus the one taken after the first 10% of the run (warm-up).
A healthy gatekeep ends with 0 mismatches, 0 failures and a drift of a few MiB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.hostile.harness import (  # noqa: E402 - after the path set-up above
    cpu_seconds,
    open_fds,
    raise_nofile,
    rss_kib,
    start_backend,
    start_gatekeep,
)
from tests.hostile.load import ENDLESS, mixed  # noqa: E402

CONFIG = """
[[listener]]
name = "mixed"
endpoint = "tcp:0:interface=127.0.0.1:backlog=4096"
service = "mixed"
detect_timeout = "2s"

[service.mixed]
[[service.mixed.route]]
name = "tls"
match.tls = {{}}
forward = {{ to = "tcp:127.0.0.1:{echo}" }}
[[service.mixed.route]]
name = "xmpp"
match.xmpp = {{}}
forward = {{ to = "tcp:127.0.0.1:{echo}" }}
[[service.mixed.route]]
name = "http"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{echo}" }}

[[listener]]
name = "half"
endpoint = "tcp:0:interface=127.0.0.1:backlog=1024"
service = "half"

[service.half]
[[service.half.route]]
name = "all"
forward = {{ to = "tcp:127.0.0.1:{scripted}" }}
"""

MALFORMED = [b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00", b"\x16\x03\x09\x00\x10",
             b"\x16\x03\x01\x40\x01" + b"\x01" * 40, b"\x16\x03\x01\x00\x30\x01\x00\x00\x2c\x02"]


async def malformed(port: int, count: int) -> int:
    """Send malformed hellos; return how many were not closed within 1 s."""
    slow = 0
    for index in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(MALFORMED[index % len(MALFORMED)])
        try:
            while await asyncio.wait_for(reader.read(4096), 1.0):
                pass
        except TimeoutError:
            slow += 1
        except ConnectionError:
            pass
        writer.close()
    return slow


async def slowloris(port: int, count: int, deadline: float) -> int:
    """Trickle heads that never end; return how many outlived the deadline + 1 s."""

    async def one(index: int) -> bool:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head = ENDLESS[("http", "tls", "xmpp")[index % 3]]
        opened = time.monotonic()
        try:
            for byte in head:  # one byte a second until gatekeep closes
                writer.write(bytes([byte]))
                try:
                    if not await asyncio.wait_for(reader.read(4096), 1.0):
                        break
                except TimeoutError:
                    continue
        except ConnectionError:
            pass
        finally:
            writer.close()
        return time.monotonic() - opened > deadline + 1.0 + 0.5

    return sum(await asyncio.gather(*(one(i) for i in range(count))))


async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    await writer.drain()
    writer.write_eof()


async def half_close(port: int, count: int, rng: random.Random) -> tuple[int, int]:
    """Half-close exchanges; (exchanges, client-side mismatches)."""
    from tests.hostile.backend import payload

    bad = 0
    for _ in range(count):
        ident = rng.randrange(1 << 30)
        ours, theirs = rng.choice([0, 1, 5000, 300_000]), rng.choice([0, 1, 5000, 300_000])
        first = rng.choice(["client", "backend", "both"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"HALF {ident} {ours} {theirs} {first} {ident * 2}\n".encode())
        mine, expected = payload(ident * 2, ours), payload(ident * 2 + 1, theirs)
        got = b""
        if first == "backend":
            while chunk := await reader.read(65536):
                got += chunk
            await _send(writer, mine)
        else:
            sending = asyncio.ensure_future(_send(writer, mine))
            while chunk := await reader.read(65536):
                got += chunk
            await sending
        writer.close()
        bad += got != expected
    return count, bad


async def one_round(ports: dict[str, int], args: argparse.Namespace,
                    rng: random.Random) -> dict[str, Any]:
    loaded, slow_malformed, late, (halves, half_bad) = await asyncio.gather(
        mixed(ports["mixed"], args.clients, args.size),
        malformed(ports["mixed"], 20),
        slowloris(ports["mixed"], 30, 2.0),
        half_close(ports["half"], 10, rng),
    )
    return {"mixed": loaded["count"], "mixed_failed": loaded["failed"],
            "failures": loaded["failures"][:3], "malformed_slow": slow_malformed,
            "slowloris_late": late, "half": halves, "half_bad": half_bad}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--size", type=int, default=64 * 1024)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    raise_nofile(8192)
    work = Path(tempfile.mkdtemp(prefix="gatekeep-soak-"))
    echo = start_backend(work / "echo", echo=True)
    scripted = start_backend(work / "scripted")
    gatekeep = start_gatekeep(work / "gk", CONFIG.format(echo=echo.port, scripted=scripted.port),
                              ["mixed", "half"], nofile=8192)
    rng = random.Random(1)
    totals = {"mixed": 0, "mixed_failed": 0, "malformed_slow": 0, "slowloris_late": 0,
              "half": 0, "half_bad": 0}
    samples: list[dict[str, float]] = []
    failures: list[str] = []
    started = time.monotonic()
    try:
        ports = {name: gatekeep.port(name) for name in ("mixed", "half")}
        while time.monotonic() - started < args.minutes * 60:
            result = asyncio.run(one_round(ports, args, rng))
            failures += result.pop("failures")
            for key in totals:
                totals[key] += result[key]
            samples.append({"t": time.monotonic() - started, "rss_kib": rss_kib(gatekeep.pid),
                            "fds": open_fds(gatekeep.pid), "cpu_s": cpu_seconds(gatekeep.pid)})
            print(f"{samples[-1]['t']:7.0f}s rss {samples[-1]['rss_kib'] / 1024:6.1f} MiB "
                  f"fds {samples[-1]['fds']:5.0f} {json.dumps(result)}", flush=True)
        problems = gatekeep.problems()
    finally:
        gatekeep.stop()
        echo.stop()
        scripted.stop()
    warm = next((s for s in samples if s["t"] >= args.minutes * 6), samples[0])
    report = {
        "minutes": round((time.monotonic() - started) / 60, 1), "rounds": len(samples),
        **totals, "mismatches": totals["mixed_failed"] + totals["half_bad"],
        "rss_start_mib": round(samples[0]["rss_kib"] / 1024, 1),
        "rss_warm_mib": round(warm["rss_kib"] / 1024, 1),
        "rss_end_mib": round(samples[-1]["rss_kib"] / 1024, 1),
        "rss_drift_mib": round((samples[-1]["rss_kib"] - warm["rss_kib"]) / 1024, 1),
        "rss_max_mib": round(max(s["rss_kib"] for s in samples) / 1024, 1),
        "fds_end": samples[-1]["fds"], "cpu_seconds": round(samples[-1]["cpu_s"], 1),
        "failures": failures[:20], "log_problems": problems[:20],
    }
    print(json.dumps(report, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps({"report": report, "samples": samples}, indent=1))


if __name__ == "__main__":
    main()
