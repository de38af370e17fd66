"""
``workers = N`` logging with real processes: each worker writes its own lines to the
parent's destination (the parent reads none of them), lines of two workers under load
are whole, and the log file rotates once while every worker follows it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.ops_support import EchoServer, exchange
from tests.integration.peers import Gatekeep, twistd
from tests.integration.process import free_port, stop_pid, wait_until
from tests.integration.test_workers import children, write

pytestmark = pytest.mark.slow

# twistd's text line: time, [system], message; a worker's system ends with its name.
_TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[[^\]]+\] \S")
_WORKER = re.compile(r"^\S+ \[gatekeep\.connection#info worker-([12])\] ")


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


def _connect(port: int, count: int, threads: int = 8) -> None:
    def one(n: int) -> None:
        with socket.create_connection(("127.0.0.1", port), 10) as sock:
            exchange(sock, f"line {n} ".encode() * 4 + b"\n")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))


def _bytes_read(pid: int) -> int:
    """Bytes the process has read with read() and the like (``rchar``)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar")


def test_workers_write_their_own_lines_to_the_parents_stdout(
        tmp_path: Path, echo: EchoServer) -> None:
    admin = free_port()
    config = tmp_path / "gatekeep.toml"
    write(config, echo, admin)
    gatekeep = Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--config", config],
                        tmp_path, ["public"])
    try:
        gatekeep.log.wait_for(lambda line: "all 2 workers are serving" in line)
        workers = children(gatekeep.pid)
        stdout = os.readlink(f"/proc/{gatekeep.pid}/fd/1")
        assert [os.readlink(f"/proc/{pid}/fd/1") for pid in workers] == [stdout, stdout]
        mark = gatekeep.mark()
        read_before = _bytes_read(gatekeep.pid)
        _connect(gatekeep.port("public"), 400)
        wait_until(lambda: len(gatekeep.connections(mark)) == 400, 30, what="400 lines")
        # The parent took part in none of the 400 lines: it read (almost) nothing.
        assert _bytes_read(gatekeep.pid) - read_before < 4096
        lines = gatekeep.log.text(mark).splitlines()
        bad = [line for line in lines if not _TEXT_LINE.match(line)]
        assert bad == []
        by_worker = [m[1] for m in map(_WORKER.match, lines) if m]
        assert len(by_worker) == 400 and set(by_worker) == {"1", "2"}
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []


def test_workers_relay_to_a_logger_they_cannot_share(tmp_path: Path, echo: EchoServer) -> None:
    # A custom --logger (like --syslog) is the parent's alone: workers send it their events.
    config = tmp_path / "gatekeep.toml"
    write(config, echo, free_port())
    root = Path(__file__).resolve().parents[2]
    gatekeep = Gatekeep(
        [twistd(), "-n", "--pidfile=", "--logger=tests.integration.stdout_logger.observer",
         "gatekeep", "--config", config], tmp_path, ["public"],
        env={"PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])})
    try:
        gatekeep.log.wait_for(lambda line: "all 2 workers are serving" in line)
        workers = children(gatekeep.pid)
        stdout = os.readlink(f"/proc/{gatekeep.pid}/fd/1")
        assert all(os.readlink(f"/proc/{pid}/fd/1") != stdout for pid in workers)
        mark = gatekeep.mark()
        _connect(gatekeep.port("public"), 40, threads=4)
        wait_until(lambda: len(gatekeep.connections(mark)) == 40, 30, what="40 lines")
        lines = gatekeep.log.text(mark).splitlines()
        assert len([m for m in map(_WORKER.match, lines) if m]) == 40
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []


def _json_lines(path: Path) -> list[dict[str, object]]:
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    assert text == "" or text.endswith("\n"), "a line cut short"
    return [json.loads(line) for line in text.splitlines()]  # fails on a mixed line


def _connection_lines(paths: list[Path]) -> list[dict[str, object]]:
    return [line for path in paths for line in _json_lines(path)
            if line.get("namespace") == "gatekeep.connection"]


def test_json_log_file_rotates_once_and_every_worker_follows(
        tmp_path: Path, echo: EchoServer) -> None:
    port, admin = free_port(), free_port()
    config = tmp_path / "gatekeep.toml"
    write(config, echo, admin, endpoint=f"tcp:{port}:interface=127.0.0.1")
    log = tmp_path / "gk.log"
    rotated, older = tmp_path / "gk.log.1", tmp_path / "gk.log.2"
    # A log already near twistd's 1 MB: the workers' lines push it over.
    filler = json.dumps({"time": "2026-01-01T00:00:00.000Z", "message": "x" * 180}) + "\n"
    log.write_text(filler * (700_000 // len(filler)))
    argv = [str(twistd()), "-n", "--pidfile=", f"--logfile={log}", "gatekeep", "--config",
            str(config), "--log-format", "json"]
    output = tmp_path / "stdout"
    with output.open("wb") as sink:
        proc = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path,
                                stdin=subprocess.DEVNULL, start_new_session=True)

    def shown() -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in (output, log)
                         if p.exists())

    try:
        wait_until(lambda: "all 2 workers are serving" in log.read_text(), 30,
                   what="the workers", proc=proc, output=shown)
        # About 500 KB of connection lines from both workers, from 8 clients at once.
        _connect(port, 1200)
        wait_until(lambda: len(_connection_lines([rotated, log])) == 1200, 30,
                   what="1200 connection lines", proc=proc, output=shown)
        # Rotated once, by the parent, on the file's size, though it wrote none of them.
        wait_until(rotated.exists, 10, what="the rotation", proc=proc, output=shown)
        assert rotated.stat().st_size >= 1_000_000 and not older.exists()
        workers = {line["worker"] for line in _connection_lines([rotated, log])}
        assert workers == {1, 2}

        # SIGUSR1 rotates at once (as twistd does); every worker follows the new file.
        os.kill(proc.pid, signal.SIGUSR1)
        wait_until(older.exists, 10, what="the second rotation", proc=proc, output=shown)
        made = 1200
        while {line["worker"] for line in _connection_lines([log])} != {1, 2}:
            assert made < 3000, "a worker kept writing to the rotated file"
            _connect(port, 20)
            made += 20
        wait_until(lambda: len(_connection_lines([older, rotated, log])) == made, 30,
                   what=f"{made} connection lines", proc=proc, output=shown)
        assert not (tmp_path / "gk.log.3").exists()
        every = [line for p in (older, rotated, log) for line in _json_lines(p)]
        assert not [line for line in every
                    if line.get("level") in ("error", "critical") or "traceback" in line]
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(30) == -signal.SIGTERM
    finally:
        stop_pid(proc)
