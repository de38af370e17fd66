"""
Runs the atheris harness (:mod:`tests.hostile.fuzz_sniffers`) on every sniffer for a
few seconds each (about 60 s in all), starting from the corpus kept in the repository
(``tests/hostile/corpus/NAME``). Long runs: see docs/hostile-input.md.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hostile.sniffers import SNIFFERS

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent / "corpus"
SECONDS = 5


@pytest.mark.parametrize("name", sorted(SNIFFERS))
def test_atheris_finds_nothing(tmp_path: Path, name: str) -> None:
    # atheris ships wheels for Linux x86_64 only (see setup.cfg's marker).
    pytest.importorskip("atheris")
    kept = CORPUS / name
    assert any(kept.iterdir()), f"no corpus in {kept}"
    grown = tmp_path / "corpus"
    shutil.copytree(kept, grown)  # the run adds to a copy, never to the repository
    result = subprocess.run(
        [sys.executable, "-m", "tests.hostile.fuzz_sniffers", name,
         f"-max_total_time={SECONDS}", "-max_len=4096", "-timeout=10",
         f"-artifact_prefix={tmp_path}/", str(grown)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    done = re.search(r"Done (\d+) runs in (\d+) second", result.stderr)
    assert done is not None, result.stderr[-2000:]
    print(f"atheris {name}: {done[1]} inputs in {done[2]} s, no finding")
