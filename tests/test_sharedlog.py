"""
The shared log of ``workers = N``: a worker's own lines are exactly the lines the
parent wrote for its relayed records; the parent's log file is appended to by every
process and rotated on its real size; a worker follows a rotation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import select
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.logger import LogEvent, LogLevel
from twisted.python.failure import Failure

from gatekeep.logformat import json_observer, text_observer
from gatekeep.sharedlog import SharedLogFile, WorkerLog, shared_log
from gatekeep.worker import _ToParent
from gatekeep.workers import relayed_event


def _failure() -> Failure:
    try:
        raise ValueError("broken backend")
    except ValueError:
        return Failure()


def _events() -> list[LogEvent]:
    now = time.time()
    connection = {"client": "127.0.0.1:5555", "listener": "public", "protocol": "tls",
                  "facts_text": " sni=example.org", "route": "web", "backend": "tcp:b:1",
                  "bytes_in": 10, "bytes_out": 20, "duration": 0.25, "close_reason": "done"}
    return [
        {"log_format": "{log_text}", "log_text": "127.0.0.1:5555 public tls route=web",
         "log_time": now, "log_namespace": "gatekeep.connection",
         "log_level": LogLevel.info, "facts": {"sni": "example.org", "alpn": ("h2",)},
         "outcome": "ok", **connection},
        {"log_format": "worker {index} serving (pid {pid})", "index": 2, "pid": 7,
         "worker_ready": True, "log_time": now + 0.5, "log_namespace": "gatekeep.worker",
         "log_level": LogLevel.info},
        {"log_format": "reload rejected:\n{why}", "why": "line one\nline two",
         "log_time": now + 1.2, "log_namespace": "gatekeep.service",
         "log_level": LogLevel.error},
        {"log_format": "Starting factory {factory!r}", "factory": object(),
         "log_time": now + 2.0, "log_namespace": "twisted", "log_level": LogLevel.info,
         "system": "-", "isError": 0, "format": "%(x)s", "message": ()},
        {"log_format": "odd: {text}", "text": "é \"quoted\" \x00", "log_time": now + 2.1,
         "log_namespace": "gatekeep.sniff", "log_level": LogLevel.warn, "n": 1.5e16,
         "nested": [1, [2, "three"]]},
        {"log_format": "no level or namespace", "log_time": now + 3.0},
        {"log_time": now + 3.5, "log_namespace": "x", "log_level": LogLevel.info},
    ]


def _relayed(event: LogEvent, log_format: str) -> str:
    """What the parent wrote for ``event`` when the worker relayed it."""
    records = io.StringIO()
    _ToParent(records)(event)
    out = io.StringIO()
    observe = json_observer(out) if log_format == "json" else text_observer(out)
    observe(relayed_event(records.getvalue().strip("\x1e\n").encode(), 2, time.time()))
    return out.getvalue()


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read, write = os.pipe()
    yield read, write
    os.close(read)
    os.close(write)


def _direct(event: LogEvent, log_format: str, pipe: tuple[int, int]) -> str:
    WorkerLog(2, log_format, None, fd=pipe[1])(event)
    os.set_blocking(pipe[0], False)
    try:
        return os.read(pipe[0], 1 << 16).decode()
    except BlockingIOError:
        return ""


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_workers_own_lines_are_the_lines_the_parent_wrote(
        log_format: str, pipe: tuple[int, int]) -> None:
    for event in _events():
        assert _direct(dict(event), log_format, pipe) == _relayed(dict(event), log_format)
    lines = [_direct(dict(event), log_format, pipe) for event in _events()]
    assert "[gatekeep.connection#info worker-2] 127.0.0.1:5555" in lines[0] or (
        json.loads(lines[0])["worker"] == 2)


def test_a_workers_traceback_in_text_and_json(pipe: tuple[int, int]) -> None:
    event = {"log_format": "connection failed", "log_failure": _failure(),
             "log_time": time.time(), "log_namespace": "gatekeep.relay",
             "log_level": LogLevel.critical}
    text = _direct(dict(event), "text", pipe)
    assert text == _relayed(dict(event), "text")
    assert text.split("\n")[0].endswith("[gatekeep.relay#critical worker-2] connection failed")
    assert "\n\tTraceback" in text and "ValueError: broken backend" in text
    # JSON: as in one process, the traceback has its own field (relayed, it was
    # appended to the message).
    line = json.loads(_direct(dict(event), "json", pipe))
    assert line["message"] == "connection failed" and line["worker"] == 2
    assert "ValueError: broken backend" in line["traceback"]


def test_the_parents_log_file_is_appended_to_by_every_process(tmp_path: Path) -> None:
    path = tmp_path / "gk.log"
    path.write_text("from before\n")
    parent = SharedLogFile.fromFullPath(str(path))
    other = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        for n in range(50):
            parent.write(f"parent {n}\n")
            os.write(other, f"worker {n}\n".encode())
    finally:
        os.close(other)
        parent.close()
    expected = ["from before"] + [f"{who} {n}" for n in range(50) for who in ("parent", "worker")]
    assert path.read_text().splitlines() == expected


def test_rotation_counts_the_workers_bytes_and_tells_the_workers(tmp_path: Path) -> None:
    path = tmp_path / "gk.log"
    log = shared_log("text", str(path), nodaemon=True)
    assert log.path == str(path)
    assert isinstance(log.output, SharedLogFile)
    log.output.rotateLength = 1000
    rotations: list[int] = []
    log.on_rotation(lambda: rotations.append(1))
    worker = WorkerLog(1, "text", str(path), fd=os.dup(log.fileno()))
    try:
        event = {"log_format": "a line of {n} bytes", "n": 60, "log_time": 1e9,
                 "log_namespace": "t", "log_level": LogLevel.info}
        while path.stat().st_size < 1000:
            log.check_rotation()
            worker(dict(event))
        assert rotations == [] and not (tmp_path / "gk.log.1").exists()
        log.check_rotation()  # the parent wrote nothing: the file's size counts
        assert rotations == [1]
        rotated = (tmp_path / "gk.log.1").read_text()
        assert len(rotated) >= 1000 and path.read_text() == ""
        worker(dict(event, n=1))  # not told yet: the line goes whole to the old file
        worker.reopen()
        worker(dict(event, n=2))
        log.observer(dict(event, n=3))
        assert (tmp_path / "gk.log.1").read_text() == rotated + rotated.splitlines()[0].replace(
            "60", "1") + "\n"
        assert [line.split("] ")[1] for line in path.read_text().splitlines()] == [
            "a line of 2 bytes", "a line of 3 bytes"]
        log.check_rotation()
        assert rotations == [1]
    finally:
        os.close(worker.fd)


def test_stdout_is_never_rotated(monkeypatch: pytest.MonkeyPatch) -> None:
    log = shared_log("json", None, nodaemon=True)
    assert log.path is None
    log.check_rotation()
    log.rotate()
    assert log.output is sys.stdout


def test_workers_relay_only_where_they_cannot_write_themselves() -> None:
    from gatekeep.tap import Options, _shared_log

    def options(log_format: str, **twistd: object) -> Options:
        made = Options()
        made.parseOptions(["--log-format", log_format])
        made.parent = Options()  # stands in for twistd's options
        made.parent.update({"nodaemon": True, "logfile": None, **twistd})
        return made

    assert _shared_log(options("text", syslog=True)) is None
    assert _shared_log(options("json", syslog=True)) is None
    assert _shared_log(options("json", logger="my.observer")) is None
    text = _shared_log(options("text"))
    assert text is not None and text.log_format == "text" and text.path is None
    json_log = _shared_log(options("json"))
    assert json_log is not None and json_log.log_format == "json"


def test_a_full_non_blocking_pipe_delays_a_line_but_never_splits_it(
        pipe: tuple[int, int]) -> None:
    import threading

    read, write = pipe
    os.set_blocking(write, False)  # as if another process had made it non-blocking
    filled = 0
    with contextlib.suppress(BlockingIOError):
        while True:
            filled += os.write(write, b"x" * 4096)
    event = {"log_format": "{log_text}", "log_text": "y" * 300, "log_time": 1e9,
             "log_namespace": "gatekeep.connection", "log_level": LogLevel.info}
    writer = threading.Thread(target=WorkerLog(1, "text", None, fd=write), args=(event,))
    writer.start()
    got = b""
    while not got.endswith(b"\n"):  # the pipe's bytes are "x"s until the line's end
        assert select.select([read], [], [], 10)[0], f"the line never came: {got[-80:]!r}"
        got += os.read(read, 65536)
    writer.join(10)
    line = got[filled:].decode()
    assert line.endswith("[gatekeep.connection#info worker-1] " + "y" * 300 + "\n")
