"""
CPU time of a process tree, from ``/proc/PID/stat`` (utime + stime).

Counting a parent's ``cutime``/``cstime`` is not enough for fork-per-connection
proxies: sslh-fork's children are reaped without adding their time to the parent
(observed with sslh 1.20: the listener's cutime stays 0 after a child exited, and
no zombie is left). So :class:`CpuMeter` samples the whole tree every few milliseconds while
a measurement runs and keeps, per process, the last value it saw; a process that
exits loses at most one sampling interval of its time. Processes that live for
the whole measurement (gatekeep, HAProxy, nginx's worker) are measured exactly by
the final sample.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["CpuMeter", "process_tree", "tick_seconds"]

_TICK = 1.0 / os.sysconf("SC_CLK_TCK")


def tick_seconds() -> float:
    return _TICK


def _cpu_ticks(pid: int) -> int | None:
    """utime + stime of one process, in clock ticks (None if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found.extend(int(word) for word in text.split())
    return found


def process_tree(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        todo.extend(_children(pid))
    return seen


class CpuMeter:
    """
    CPU seconds used by the tree under ``roots`` between :meth:`start` and :meth:`stop`.

    With ``interval`` set, a thread samples the tree so that short-lived children are
    counted; without it only the start and stop samples are taken.
    """

    def __init__(self, roots: list[int], interval: float | None = 0.005) -> None:
        self.roots = roots
        self.interval = interval
        self._first: dict[int, int] = {}
        self._last: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _sample(self) -> dict[int, int]:
        values: dict[int, int] = {}
        for root in self.roots:
            for pid in process_tree(root):
                ticks = _cpu_ticks(pid)
                if ticks is not None:
                    values[pid] = ticks
        return values

    def _record(self) -> None:
        values = self._sample()
        with self._lock:
            self._last.update(values)

    def _loop(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            self._record()

    def start(self) -> None:
        self._first = self._sample()
        self._last = dict(self._first)
        if self.interval is not None and self.roots:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()

    def stop(self) -> float:
        """Stop sampling; CPU seconds used since :meth:`start`."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        self._record()
        with self._lock:
            ticks = sum(last - self._first.get(pid, 0) for pid, last in self._last.items())
        return ticks * _TICK
