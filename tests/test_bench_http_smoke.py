"""``bench/httpbench.py --smoke`` runs end to end: the harness, never the figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_http_bench_smoke(tmp_path: Path) -> None:
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the CI script installs it)")
    results = tmp_path / "http.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "httpbench.py"), "--smoke",
                           "--json", str(results)], capture_output=True, text=True,
                          timeout=300, check=False, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ratios gatekeep / nginx (target: req per CPU-second >= 0.30x):" in done.stdout, \
        output
    document = json.loads(results.read_text())
    assert document["problems"] == []
    for subject in ("direct", "gatekeep", "nginx"):
        for mode in ("keep-alive", "new connections"):
            figures = document["results"][subject][mode]
            assert figures["rps"] > 0 and figures["non_2xx"] == 0, (subject, mode, figures)
            if subject != "direct":
                assert figures["cpu_s"] > 0, (subject, mode, figures)
