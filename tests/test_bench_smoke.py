"""
The benchmark harness runs end to end: ``bench/run.py --smoke`` with gatekeep and HAProxy.

This guards the harness (starting each subject, moving and counting the bytes,
printing the tables), never gatekeep's speed: no figure is compared with anything.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "bench" / "run.py"


@pytest.mark.slow
def test_bench_smoke_runs_and_prints_ratios(tmp_path: Path) -> None:
    for tool in ("haproxy", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the CI script installs it)")
    results = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(RUN), "--smoke", "--subjects", "direct,gatekeep,haproxy,python-floor",
         "--json", str(results), "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output

    # Both tables, with a row for every figure, and a ratio for gatekeep in each row.
    assert "Results (" in done.stdout, output
    assert "Ratios relative to HAProxy (subject / haproxy)" in done.stdout, output
    ratios_part = done.stdout.split("Ratios relative to HAProxy", 1)[1]
    header = ratios_part.splitlines()[1]
    assert header.split()[-3:] == ["direct", "gatekeep", "python-floor"], output
    better = re.compile(r"^(.*) \((higher|lower) is better\)")
    rows = [line for line in ratios_part.splitlines() if better.match(line)]
    labels = {m.group(1) for m in map(better.match, rows) if m}
    for label in ("bulk client->backend, 1 stream", "bulk backend->client, 4 streams",
                  "proxy CPU per GiB relayed", "new connections (request+response)",
                  "ping-pong round trip p50", "RSS per idle proxied connection"):
        assert label in labels, output
    # Added latency is a difference: on a busy machine HAProxy's may come out <= 0, and
    # then there is no ratio to show.
    for row in rows:
        if not row.startswith("added latency"):
            # gatekeep's column (and the floor's, last) hold ratios
            assert re.search(r"\d+\.\d\dx +\d+\.\d\dx$", row), row
    for target in ("target: gatekeep bulk >= 0.9x HAProxy:",
                   "target: gatekeep CPU/GiB <= 1.5x HAProxy:",
                   "target: gatekeep conn/s >= 0.5x haproxy (same workers/threads):",
                   "target: gatekeep <= 10 KiB RSS per idle connection:"):
        assert target in done.stdout, output

    # The JSON holds every subject's figures, and gatekeep and HAProxy ran without errors.
    import json

    document = json.loads(results.read_text())
    assert set(document["subjects"]) == {"direct", "gatekeep", "haproxy", "python-floor"}
    assert document["errors"] == []  # (the floor's bulk bytes were CRC-checked too)
    for name in ("gatekeep", "haproxy", "python-floor"):
        figures = document["subjects"][name]["figures"]
        for key in ("up1", "up4", "down1", "down4", "cpu_per_gib", "conn_rate", "rtt_p50",
                    "rss_idle"):
            assert isinstance(figures[key], float), (name, key, figures)
    assert document["ratios_vs_haproxy"]["gatekeep"]["up1"] > 0
