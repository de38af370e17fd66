"""
Log lines batched per turn of gatekeep's event loop: written whole, in order, before
the reactor waits, in writes a pipe takes whole; at once elsewhere.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.task import Clock

from gatekeep.eventloop import coalesce
from gatekeep.logbatch import PIPE_BUF, LineBatch


@pytest.fixture(autouse=True)
def gatekeeps_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about gatekeep's event loop, also when the suite runs on Twisted's."""
    monkeypatch.delenv("GATEKEEP_EVENTLOOP", raising=False)


def batch_on_loop() -> tuple[Any, LineBatch, list[str]]:
    reactor: Any = EPollReactor()
    assert coalesce(reactor)
    writes: list[str] = []
    batch = LineBatch(writes.append)
    assert batch.start(reactor)
    return reactor, batch, writes


def test_a_turns_lines_go_out_in_one_write_before_the_wait() -> None:
    reactor, batch, writes = batch_on_loop()
    for n in range(5):
        batch.add(f"line {n}\n")
    assert writes == []
    reactor.iterate(0)
    assert writes == ["line 0\nline 1\nline 2\nline 3\nline 4\n"]
    reactor.iterate(0)
    assert len(writes) == 1  # nothing new: no write


def test_writes_stay_within_what_a_pipe_takes_whole() -> None:
    reactor, batch, writes = batch_on_loop()
    line = "x" * 99 + "\n"
    lines = [line] * (3 * PIPE_BUF // len(line))
    for text in lines:
        batch.add(text)
    long_line = "y" * (2 * PIPE_BUF) + "\n"
    batch.add(long_line)  # longer than a pipe takes: written alone, whole
    reactor.iterate(0)
    assert "".join(writes) == "".join(lines) + long_line
    assert all(chunk.endswith("\n") for chunk in writes)
    assert all(len(chunk) <= PIPE_BUF for chunk in writes if chunk != long_line)
    assert len(writes) <= 5


def test_lines_from_another_thread_are_written_at_once() -> None:
    _reactor, batch, writes = batch_on_loop()
    batch.add("from the reactor\n")
    other = threading.Thread(target=batch.add, args=("from a thread\n",))
    other.start()
    other.join()
    assert writes == ["from a thread\n"]


def test_stop_writes_what_waits_and_lines_go_out_at_once_after() -> None:
    _reactor, batch, writes = batch_on_loop()
    batch.add("before\n")
    batch.stop()
    assert writes == ["before\n"]
    batch.add("after\n")
    assert writes == ["before\n", "after\n"]


def test_without_gatekeeps_loop_every_line_is_written_at_once() -> None:
    writes: list[str] = []
    batch = LineBatch(writes.append)
    assert not batch.start(Clock())
    batch.add("one\n")
    batch.add("two\n")
    assert writes == ["one\n", "two\n"]
