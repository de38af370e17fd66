"""The figures, how they are aggregated over repetitions, and the printed tables."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

__all__ = ["BULK_FIGURES", "FIGURES", "Figure", "SubjectResult", "ratios", "render_table"]


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int


FIGURES = [
    Figure("up1", "bulk client->backend, 1 stream", "GB/s", True, 2),
    Figure("up4", "bulk client->backend, 4 streams", "GB/s", True, 2),
    Figure("down1", "bulk backend->client, 1 stream", "GB/s", True, 2),
    Figure("down4", "bulk backend->client, 4 streams", "GB/s", True, 2),
    Figure("cpu_per_gib", "proxy CPU per GiB relayed", "s/GiB", False, 2),
    Figure("conn_rate", "new connections (request+response)", "conn/s", True, 0),
    Figure("cpu_per_kconn", "proxy CPU per 1000 connections", "ms", False, 0),
    Figure("rtt_p50", "ping-pong round trip p50", "us", False, 1),
    Figure("rtt_p99", "ping-pong round trip p99", "us", False, 1),
    Figure("added_p50", "added latency p50 (minus direct)", "us", False, 1),
    Figure("added_p99", "added latency p99 (minus direct)", "us", False, 1),
    Figure("rss_idle", "RSS per idle proxied connection", "KiB", False, 1),
]
BY_KEY = {f.key: f for f in FIGURES}
BULK_FIGURES = ["up1", "up4", "down1", "down4"]
#: Figures measured per repetition (the added latencies are derived from them).
MEASURED = [f.key for f in FIGURES if not f.key.startswith("added_")]


@dataclass
class SubjectResult:
    name: str
    description: str
    version: str
    runs: list[dict[str, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float | None] = field(default_factory=dict)
    profiles: dict[str, list[str]] = field(default_factory=dict)

    def aggregate(self, direct: SubjectResult | None, stat: str = "median") -> None:
        """
        Combine repetitions: the median, or with ``stat="best"`` the best value. Added
        latency is this subject's figure minus direct's (median: per repetition, paired).
        """
        for key in MEASURED:
            values = [run[key] for run in self.runs if key in run]
            self.figures[key] = _combine(values, BY_KEY[key], stat)
        for pct in ("p50", "p99"):
            key = f"rtt_{pct}"
            if direct is None:
                self.figures[f"added_{pct}"] = None
            elif stat == "best":
                mine, theirs = self.figures.get(key), direct.figures.get(key)
                self.figures[f"added_{pct}"] = (
                    mine - theirs if mine is not None and theirs is not None else None)
            else:
                added = [a[key] - b[key] for a, b in zip(self.runs, direct.runs, strict=False)
                         if key in a and key in b]
                self.figures[f"added_{pct}"] = statistics.median(added) if added else None


def _combine(values: list[float], figure: Figure, stat: str) -> float | None:
    if not values:
        return None
    if stat == "best":
        return max(values) if figure.higher_is_better else min(values)
    return statistics.median(values)


def ratios(results: Sequence[SubjectResult], base: SubjectResult) -> dict[str, dict[str, float]]:
    """``subject / base`` for every figure both have (and base is not zero)."""
    table: dict[str, dict[str, float]] = {}
    for result in results:
        row: dict[str, float] = {}
        for figure in FIGURES:
            mine, theirs = result.figures.get(figure.key), base.figures.get(figure.key)
            if mine is not None and theirs is not None and theirs > 0:
                row[figure.key] = mine / theirs
        table[result.name] = row
    return table


def _format(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render_table(
    results: Sequence[SubjectResult], cells: Mapping[str, Mapping[str, float | None]],
    ratio: bool = False, skip_subjects: Sequence[str] = (),
) -> str:
    """Rows are figures, columns subjects; ``cells[subject][figure]``."""
    shown = [r for r in results if r.name not in skip_subjects]
    header = ["figure", "unit"] + [r.name for r in shown]
    rows: list[list[str]] = []
    for figure in FIGURES:
        values = [cells.get(r.name, {}).get(figure.key) for r in shown]
        if all(v is None for v in values):
            continue
        unit = "x" if ratio else figure.unit
        better = "higher" if figure.higher_is_better else "lower"
        label = f"{figure.label} ({better} is better)" if ratio else figure.label
        text = [(f"{v:.2f}x" if v is not None else "-") if ratio else _format(v, figure.digits)
                for v in values]
        rows.append([label, unit, *text])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for n, row in enumerate([header, *rows]):
        cells_text = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells_text += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells_text).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
