"""Runs the atheris fuzzer of the PROXY parser for a bounded number of inputs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def test_atheris_finds_nothing(tmp_path: Path) -> None:
    # atheris ships wheels for Linux x86_64 only (see setup.cfg's marker).
    pytest.importorskip("atheris")
    from tests.proxyproto.atheris_fuzz import SEEDS

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for index, seed in enumerate(SEEDS):
        (corpus / f"seed-{index}").write_bytes(seed)
    result = subprocess.run(
        [sys.executable, "-m", "tests.proxyproto.atheris_fuzz", "-runs=30000",
         "-max_len=600", "-timeout=10", f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done 30000 runs" in result.stderr, result.stderr[-2000:]
