"""
10,000 concurrent mixed connections (TLS passthrough, XMPP, HTTP), 64 KiB each way,
through one gatekeep to an echoing backend: every byte comes back exact, and
gatekeep's RSS stays bounded (reported).

All connections are open before any of them sends its 64 KiB, so they are truly
concurrent. RLIMIT_NOFILE is raised for the test's processes and gatekeep (each
connection costs gatekeep two descriptors). Where the hard limit cannot be raised
(a container without CAP_SYS_RESOURCE) the count is what fits under it, and says so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.harness import open_fds, raise_nofile, rss_kib, start_backend, start_gatekeep

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WANTED = 10_000
SIZE = 64 * 1024

CONFIG = """
[[listener]]
name = "pub"
endpoint = "tcp:0:interface=127.0.0.1:backlog=4096"
service = "svc"
detect_timeout = "30s"

[service.svc]
[[service.svc.route]]
name = "tls"
match.tls = {{}}
forward = {{ to = "tcp:127.0.0.1:{port}" }}
[[service.svc.route]]
name = "xmpp"
match.xmpp = {{}}
forward = {{ to = "tcp:127.0.0.1:{port}" }}
[[service.svc.route]]
name = "http"
match.http = {{}}
forward = {{ to = "tcp:127.0.0.1:{port}" }}
"""


def run_round(gatekeep_pid: int, port: int, count: int, nofile: int) -> dict[str, Any]:
    """One round of ``count`` concurrent clients; their report plus gatekeep's peaks."""
    clients = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile.load", "mixed", str(port), str(count), str(SIZE),
         "--nofile", str(nofile)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    peak, peak_fds = rss_kib(gatekeep_pid), 0
    while clients.poll() is None:
        peak = max(peak, rss_kib(gatekeep_pid))
        peak_fds = max(peak_fds, open_fds(gatekeep_pid))
        time.sleep(0.2)  # sampling while the clients run
    out, _ = clients.communicate(timeout=30)
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    report.update(peak=peak, peak_fds=peak_fds, after=rss_kib(gatekeep_pid))
    return report


def test_ten_thousand_mixed_connections(tmp_path: Path) -> None:
    nofile = raise_nofile(2 * WANTED + 1024)
    # gatekeep needs two descriptors a connection, plus its own few dozen.
    count = min(WANTED, (nofile - 200) // 2)
    backend = start_backend(tmp_path / "backend", nofile=nofile, echo=True)
    gatekeep = start_gatekeep(tmp_path / "gk", CONFIG.format(port=backend.port), ["pub"],
                              nofile=nofile)
    try:
        before = rss_kib(gatekeep.pid)
        rounds = [run_round(gatekeep.pid, gatekeep.port("pub"), count, nofile)
                  for _ in range(2)]
        for index, report in enumerate(rounds, 1):
            print(f"{count} concurrent mixed (RLIMIT_NOFILE {nofile}), round {index}: "
                  f"{report['exact']}/{count} byte-exact ({SIZE // 1024} KiB each way) in "
                  f"{report['wall']:.1f}s; gatekeep RSS {before // 1024} MiB at start, peak "
                  f"{report['peak'] // 1024} MiB (~{(report['peak'] - before) / count:.0f} KiB "
                  f"per connection), {report['after'] // 1024} MiB after; peak "
                  f"{report['peak_fds']} descriptors")
            assert report["failed"] == 0, report["failures"]
            assert report["exact"] == count
            assert report["peak_fds"] >= count  # they really were open at once
            assert report["peak"] - before < count * 64  # KiB: bounded per connection
        # A second round reuses what the first one left: no growth from round to round.
        assert rounds[1]["peak"] <= rounds[0]["peak"] * 1.1 + 10 * 1024
    finally:
        gatekeep.stop()
        backend.stop()
    assert not gatekeep.problems(), gatekeep.problems()[:10]
