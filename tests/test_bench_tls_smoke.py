"""``bench/tls.py --smoke`` runs end to end: the harness, never the figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tls_bench_smoke(tmp_path: Path) -> None:
    for tool in ("haproxy", "nginx"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (the CI script installs it)")
    results = tmp_path / "tls.json"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "tls.py"), "--smoke",
                           "--json", str(results), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "ratios gatekeep / haproxy" in done.stdout, output
    assert "handshakes per core, rsa:" in done.stdout and "ecdsa:" in done.stdout, output
    document = json.loads(results.read_text())
    assert document["problems"] == []
    for subject in ("gatekeep", "haproxy"):
        figures = document["results"][subject]
        for kind in ("rsa", "ecdsa"):
            assert figures[f"handshakes {kind}"]["handshakes"] > 0, (subject, kind)
            assert figures[f"handshakes {kind}"]["failed"] == 0, (subject, kind)
        assert figures["bulk backend->client"]["bytes"] == 32 * 1024 * 1024
