"""
What the subjects' logs say after a measurement: error lines, and for gatekeep
whether every connection the clients made was logged with the same byte counts.
"""

from __future__ import annotations

import re
from collections import Counter

from procs import Instance
from report import SubjectResult

__all__ = ["check_logs", "log_lines"]

_PROBLEM_LINES = {
    "gatekeep": re.compile(
        r"#(error|critical)(?: worker-\d+)?\]|Traceback|Unhandled|exceptions\.\w+Error"),
    "haproxy": re.compile(r"\[(ALERT|WARNING)\]"),
    "nginx": re.compile(r"\[(emerg|alert|crit|error)\]"),
    "sslh": re.compile(r"^(?!.*\bstarted\b).+$"),
}
_GATEKEEP_CONN = re.compile(
    r"#info(?: worker-\d+)?\] \S+ bench .* in=(\d+) out=(\d+) time=\S+ close=(.*)$")
_GATEKEEP_WARN = re.compile(r"#warn(?: worker-\d+)?\] (.*)$")


def log_lines(instance: Instance) -> list[str]:
    lines: list[str] = []
    for path in [instance.log, *instance.extra_logs]:
        if path is not None and path.exists():
            lines += path.read_text(errors="replace").splitlines()
    return lines


def check_logs(instance: Instance, result: SubjectResult, wire: list[tuple[int, int]],
               phase: str) -> None:
    """
    Add to ``result`` the problem lines of the instance's log (each start has its own)
    and, for gatekeep, any connection in ``wire`` (the clients' own counts of bytes sent
    and received) missing from its connection log lines.
    """
    lines = log_lines(instance)
    kind = instance.subject.split("-")[0]
    pattern = _PROBLEM_LINES.get(kind)
    if pattern is not None:
        bad = [line for line in lines if pattern.search(line)]
        for line in bad[:5]:
            result.problems.append(f"{phase}: log: {line.strip()[:300]}")
        if len(bad) > 5:
            result.problems.append(f"{phase}: log: ... {len(bad) - 5} more such lines")
    if kind != "gatekeep":
        return
    for line in lines:
        warned = _GATEKEEP_WARN.search(line)
        if warned and f"start warning: {warned.group(1)}" not in result.notes:
            result.notes.append(f"start warning: {warned.group(1)}")
    logged = Counter[tuple[int, int]]()
    reasons = Counter[str]()
    for line in lines:
        found = _GATEKEEP_CONN.search(line)
        if found:
            logged[(int(found.group(1)), int(found.group(2)))] += 1
            reasons[found.group(3).strip()] += 1
    for sent, received in wire:
        if logged[(sent, received)] > 0:
            logged[(sent, received)] -= 1
        else:
            result.problems.append(
                f"{phase}: no connection log line with in={sent} out={received} "
                "(the client's own byte counts)")
    if reasons:
        summary = ", ".join(f"{reason} {n}" for reason, n in reasons.most_common())
        aside = (" (the load tool drops the connections still open when it stops)"
                 if phase == "connections" else "")
        result.notes.append(f"{phase}: {sum(reasons.values())} connections logged; close: "
                            f"{summary}{aside}")
