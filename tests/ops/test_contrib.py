"""The files in contrib/: systemd units that systemd accepts, a config that checks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gatekeep.cli import main
from tests.integration.clients import require

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


def test_the_example_config_checks(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(CONTRIB / "systemd" / "gatekeep.toml")]) == 0
    out = capsys.readouterr().out
    assert "systemd:domain=INET:index=0" in out and "systemd:domain=INET6:index=1" in out


@pytest.mark.slow
def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = require("systemd-analyze")
    bin_dir = str(Path(sys.executable).parent)
    for name in ("gatekeep.socket", "gatekeep.service"):
        text = (CONTRIB / "systemd" / name).read_text()
        (tmp_path / name).write_text(text.replace("/opt/gatekeep/bin", bin_dir))
    dropin = tmp_path / "gatekeep.service.d"
    dropin.mkdir()
    shutil.copy(CONTRIB / "systemd" / "gatekeep-bind.conf", dropin / "bind.conf")
    # SYSTEMD_UNIT_PATH makes it load the drop-in too (the trailing ':' keeps the defaults).
    done = subprocess.run([analyze, "verify", "gatekeep.socket", "gatekeep.service"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
                          env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"})
    # Unknown keys are only warnings to systemd: any output is a mistake here.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
