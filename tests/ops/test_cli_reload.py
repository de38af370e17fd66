"""`gatekeep reload`: finds the process from a pid file or --pid and sends SIGHUP."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gatekeep.cli import main

# A stand-in "gatekeep" process: its argv names gatekeep, and it reports a SIGHUP.
_CHILD = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGHUP, lambda *a: (print('HUP', flush=True), sys.exit(0)))\n"
    "print('ready', flush=True)\n"
    "time.sleep(30)\n"
)


def child(*argv: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, *argv], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def test_signals_the_pid_in_the_pid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) \
        -> None:
    proc = child("gatekeep")
    try:
        pidfile = tmp_path / "gk.pid"
        pidfile.write_text(f"{proc.pid}\n")
        assert main(["reload", "--pidfile", str(pidfile)]) == 0
        assert proc.stdout is not None and proc.stdout.readline() == "HUP\n"
        assert f"pid {proc.pid}" in capsys.readouterr().out
    finally:
        proc.kill()
        proc.wait()


def test_refuses_a_process_that_is_not_gatekeep(capsys: pytest.CaptureFixture[str]) -> None:
    proc = child("something-else")
    try:
        assert main(["reload", "--pid", str(proc.pid)]) == 1
        assert "is not gatekeep" in capsys.readouterr().err
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_missing_pid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reload", "--pidfile", str(tmp_path / "none.pid")]) == 1
    assert "cannot read pid file" in capsys.readouterr().err


def test_check_first_signals_nothing_for_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    proc = child("gatekeep")
    try:
        bad = tmp_path / "bad.toml"
        bad.write_text("[[listener]]\nname = 1\n")
        assert main(["reload", "--pid", str(proc.pid), "--check", str(bad)]) == 1
        assert "nothing signalled" in capsys.readouterr().err
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == -signal.SIGTERM
    finally:
        proc.kill()
        proc.wait()
