#!/usr/bin/env python3
"""
gatekeep side by side with HAProxy, nginx stream and sslh: one command, one run.

For each subject (direct, gatekeep, haproxy, nginx, sslh-select, sslh-fork) it
measures bulk throughput both ways with 1 and 4 streams, the proxy's CPU seconds
per GiB, new connections per second, and ping-pong latency, then prints the
figures and their ratios to HAProxy's. See bench/README.md.

    .venv/bin/python bench/run.py                      # full run (several minutes)
    .venv/bin/python bench/run.py --smoke              # a few MiB, 1 s: what CI runs
    .venv/bin/python bench/run.py --subjects direct,gatekeep,haproxy --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from connrate import connection_rate
from cpu import CpuMeter
from idle import IdleBackend, default_idle, hold_idle, raise_nofile
from loadgen import LoadError, bulk, ping_pong
from logcheck import check_logs, log_lines
from machine import busy_fraction, machine_info
from procs import Instance, StartError, reserve_refusing_port
from report import BULK_FIGURES, SubjectResult, ratios, render_table
from spy import Profiler, hotspots, py_spy_path
from subjects import DEFAULT_SUBJECTS, SUBJECTS, HttpBackend, Subject

HERE = Path(__file__).resolve().parent
GIB = 1 << 30
MIB = 1 << 20
#: gatekeep's bulk throughput must reach this fraction of HAProxy's (the issue's target).
BULK_TARGET = 0.9
#: Direct must beat every proxy by this factor, else the load tools may be the limit.
DIRECT_MARGIN = 1.5

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(|B|KiB|MiB|GiB|K|M|G)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kib": 1 << 10, "k": 1 << 10, "mib": MIB, "m": MIB,
               "gib": GIB, "g": GIB}


def parse_size(text: str) -> int:
    found = _SIZE.match(text)
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 1GiB, 64MiB or 4096")
    size = int(float(found.group(1)) * _SIZE_UNITS[found.group(2).lower()])
    if size < 4:
        raise argparse.ArgumentTypeError("size must be at least 4 bytes (4 streams)")
    return size


def parse_subjects(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SUBJECTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown subject(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(SUBJECTS)}")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Settings:
    subjects: list[str]
    bulk_size: int
    duration: int
    clients: int
    wrk_threads: int
    ping_count: int
    ping_size: int
    repeat: int
    verify: bool
    smoke: bool
    stat: str
    profile: bool
    conn_tool: str
    idle: int


def say(text: str) -> None:
    print(text, flush=True)


# --- one subject, one repetition -------------------------------------------------------


def _start(subject: Subject, workdir: Path, backend: int, tls: int,
           result: SubjectResult, phase: str) -> Instance | None:
    try:
        return subject.start(workdir, backend, tls)
    except (StartError, OSError) as error:
        result.errors.append(f"{phase}: could not start: {error}")
        say(f"  {subject.name}: could not start: {error}")
        return None


def _profiler(subject: Subject, settings: Settings, instance: Instance, workdir: Path,
              phase: str, result: SubjectResult) -> Profiler | None:
    """py-spy on gatekeep during the first repetition, with --profile."""
    if not settings.profile or subject.name != "gatekeep" or result.runs:
        return None
    assert instance.process is not None
    profiler = Profiler(instance.process.pid, workdir / f"gatekeep-{phase}.spy.txt")
    try:
        profiler.start()
    except OSError as error:
        result.problems.append(f"{phase}: could not profile: {error}")
        return None
    return profiler


def _profiled(profiler: Profiler | None, result: SubjectResult, phase: str) -> None:
    if profiler is None:
        return
    profiler.stop()
    if profiler.output.exists():
        result.profiles[phase] = hotspots(profiler.output)
    else:
        result.problems.append(f"{phase}: py-spy wrote no profile, see "
                               f"{profiler.output.with_suffix('.py-spy.log')}")


def _finish(instance: Instance, result: SubjectResult, wire: list[tuple[int, int]],
            phase: str) -> None:
    if not instance.alive():
        assert instance.process is not None
        result.errors.append(f"{phase}: the process exited (code {instance.process.returncode}) "
                             "during the measurement")
    instance.stop()
    check_logs(instance, result, wire, phase)


def measure_transfers(subject: Subject, settings: Settings, workdir: Path, backend: int,
                      tls: int, run: dict[str, float], result: SubjectResult) -> None:
    phase = "transfers"
    instance = _start(subject, workdir, backend, tls, result, phase)
    if instance is None:
        return
    address = ("127.0.0.1", instance.port)
    wire: list[tuple[int, int]] = []
    profiler = _profiler(subject, settings, instance, workdir, phase, result)
    try:
        warm = bulk(address, "up", min(settings.bulk_size, 16 * MIB), 1, settings.verify)
        wire += warm.wire
        ping = ping_pong(address, settings.ping_count, settings.ping_size)
        wire.append(ping.wire)
        run["rtt_p50"], run["rtt_p99"] = ping.percentile(0.50), ping.percentile(0.99)
        say(f"  {subject.name}: ping-pong {settings.ping_size} B x {settings.ping_count}: "
            f"p50 {run['rtt_p50']:.1f} us, p99 {run['rtt_p99']:.1f} us")
        cpu_total = moved = 0.0
        for key in BULK_FIGURES:
            direction, streams = key[:-1], int(key[-1])
            sampling = 0.005 if subject.forks_per_connection else None
            meter = CpuMeter(instance.root_pids, interval=sampling)
            meter.start()
            done = bulk(address, direction, settings.bulk_size, streams, settings.verify)
            cpu = meter.stop()
            wire += done.wire
            run[key] = done.gbps
            cpu_total += cpu
            moved += done.size
            say(f"  {subject.name}: {direction:>4} x{streams}: {done.gbps:6.2f} GB/s "
                f"({done.size / MIB:.0f} MiB in {done.elapsed:.2f} s, proxy CPU {cpu:.2f} s)")
        if instance.root_pids:
            run["cpu_per_gib"] = cpu_total / (moved / GIB)
    except (LoadError, OSError) as error:
        result.errors.append(f"{phase}: {type(error).__name__}: {error}")
        say(f"  {subject.name}: FAILED: {error}")
    finally:
        _profiled(profiler, result, phase)
        _finish(instance, result, wire, phase)


def measure_connections(subject: Subject, settings: Settings, workdir: Path, http: int,
                        tls: int, run: dict[str, float], result: SubjectResult) -> None:
    phase = "connections"
    instance = _start(subject, workdir, http, tls, result, phase)
    if instance is None:
        return
    profiler = _profiler(subject, settings, instance, workdir, phase, result)
    try:
        meter = CpuMeter(instance.root_pids, interval=None)
        meter.start()
        rate = connection_rate(("127.0.0.1", instance.port), settings.clients,
                               settings.duration, settings.wrk_threads, settings.conn_tool)
        cpu = meter.stop()
        run["conn_rate"] = rate.rate
        if instance.root_pids and not subject.forks_per_connection and rate.connections:
            run["cpu_per_kconn"] = cpu / rate.connections * 1000 * 1000
        errors = ", ".join(f"{k} {v}" for k, v in rate.errors.items())
        say(f"  {subject.name}: {rate.rate:,.0f} conn/s ({rate.connections} in "
            f"{rate.seconds:.2f} s, {settings.clients} clients, {rate.tool})"
            + (f", errors: {errors}" if errors else ""))
        if errors:
            result.problems.append(f"{phase}: the clients counted errors: {errors} "
                                   f"(besides {rate.connections} complete requests)")
    except (LoadError, OSError, subprocess.TimeoutExpired) as error:
        result.errors.append(f"{phase}: {type(error).__name__}: {error}")
        say(f"  {subject.name}: FAILED: {error}")
    finally:
        _profiled(profiler, result, phase)
        _finish(instance, result, [], phase)


def measure_idle(subject: Subject, settings: Settings, workdir: Path, backend: IdleBackend,
                 tls: int, run: dict[str, float], result: SubjectResult) -> None:
    phase = "idle"
    count = min(settings.idle, subject.idle_max)
    if count < 1 or subject.name == "direct":
        return
    instance = _start(subject, workdir, backend.port, tls, result, phase)
    if instance is None:
        return
    try:
        assert instance.process is not None
        held = hold_idle(("127.0.0.1", instance.port), count, instance.process.pid, backend)
        run["rss_idle"] = held.per_connection_kib
        say(f"  {subject.name}: {count} idle connections: RSS {held.before_kib / 1024:.1f} -> "
            f"{held.after_kib / 1024:.1f} MiB, {held.per_connection_kib:.1f} KiB each")
        if count < settings.idle:
            note = (f"idle: measured with {count} connections (its limit here), not "
                    f"{settings.idle}")
            if note not in result.notes:
                result.notes.append(note)
    except (LoadError, OSError) as error:
        result.errors.append(f"{phase}: {type(error).__name__}: {error}")
        say(f"  {subject.name}: FAILED: {error}")
    finally:
        _finish(instance, result, [], phase)


# --- the whole run ---------------------------------------------------------------------


def start_bulk_backend(workdir: Path) -> tuple[Instance, int]:
    log = workdir / "backend.log"
    with log.open("ab") as errors:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "loadgen.py"), "backend"], stdout=subprocess.PIPE,
            stderr=errors, stdin=subprocess.DEVNULL)
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("port "):
        process.kill()
        raise StartError(f"the bulk backend did not start: {line!r}, see {log}")
    return Instance("backend", int(line.split()[1]), process, log), int(line.split()[1])


def parse_args(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description="Benchmark gatekeep against direct, HAProxy, nginx stream and sslh.")
    parser.add_argument("--subjects", type=parse_subjects, default=None,
                        help="comma-separated, from: " + ", ".join(SUBJECTS)
                        + f" (default: {','.join(DEFAULT_SUBJECTS)})")
    parser.add_argument("--bulk-size", type=parse_size, default=None,
                        help="bytes per bulk test, split over the streams (default 1GiB)")
    parser.add_argument("--duration", type=int, default=None,
                        help="seconds of the connection-rate test (default 5)")
    parser.add_argument("--clients", type=int, default=32,
                        help="concurrent clients in the connection-rate test (default 32)")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--conn-tool", choices=["auto", "wrk", "python"], default="auto",
                        help="connection-rate load: wrk if installed (auto), or the slower "
                             "stdlib client")
    parser.add_argument("--ping-count", type=int, default=None,
                        help="timed ping-pong round trips (default 20000)")
    parser.add_argument("--ping-size", type=int, default=64, help="ping size in bytes (64)")
    parser.add_argument("--idle", type=int, default=None,
                        help="idle connections held open for the memory figure (default "
                             "10000, or what the open-file limit allows at 2 per connection; "
                             "smoke 200; 0 skips it); measured in the first repetition")
    parser.add_argument("--repeat", type=int, default=None,
                        help="repetitions; figures are medians (default 3, smoke 1)")
    parser.add_argument("--verify", action="store_true",
                        help="CRC-check every bulk byte (slows the load tools; on in --smoke)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny and fast: 4MiB bulk, 1 s, 300 round trips, 1 repetition")
    parser.add_argument("--stat", choices=["median", "best"], default="median",
                        help="how repetitions combine: median (default) or best (the highest "
                             "throughput and rate, the lowest CPU and latency: use on a "
                             "machine that other work keeps busy)")
    parser.add_argument("--profile", action="store_true",
                        help="profile gatekeep with py-spy during the first repetition and "
                             "print its hotspots (slows gatekeep: don't compare those figures)")
    parser.add_argument("--json", type=Path, help="also write the results to this JSON file")
    parser.add_argument("--workdir", type=Path,
                        help="where configs and logs go (default: a new temporary directory, "
                             "removed unless something went wrong)")
    args = parser.parse_args(argv)
    smoke = args.smoke
    settings = Settings(
        subjects=args.subjects or DEFAULT_SUBJECTS,
        bulk_size=args.bulk_size or (4 * MIB if smoke else GIB),
        duration=args.duration or (1 if smoke else 5),
        clients=args.clients, wrk_threads=args.wrk_threads,
        ping_count=args.ping_count or (300 if smoke else 20000),
        ping_size=args.ping_size,
        repeat=args.repeat or (1 if smoke else 3),
        verify=args.verify or smoke, smoke=smoke, stat=args.stat, profile=args.profile,
        conn_tool=args.conn_tool,
        idle=args.idle if args.idle is not None else (200 if smoke else default_idle()))
    if settings.conn_tool == "wrk" and shutil.which("wrk") is None:
        parser.error("--conn-tool wrk: wrk is not installed")
    if settings.profile and py_spy_path() is None:
        parser.error("--profile needs py-spy (pip install py-spy into this venv)")
    if min(settings.duration, settings.clients, settings.ping_count, settings.repeat,
           settings.ping_size, settings.wrk_threads) < 1:
        parser.error("--duration, --clients, --ping-count, --ping-size, --repeat and "
                     "--wrk-threads must be at least 1")
    return settings, args


def main(argv: list[str] | None = None) -> int:
    settings, args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    say(f"gatekeep bench, {started:%Y-%m-%d %H:%M} UTC" + (" (smoke run)" if settings.smoke
                                                            else ""))
    busy = busy_fraction()
    machine = machine_info()
    machine["busy_before_run"] = round(busy, 3)
    say(f"machine: {machine['cpu_model']}, {machine['cores']} cores ({machine['platform']}), "
        f"kernel {machine['kernel']}, {machine['os']}")
    say(f"         load average {machine['loadavg']}, {busy:.0%} of all cores busy before "
        "the run (other work on the machine skews figures)")
    results: list[SubjectResult] = []
    for name in settings.subjects:
        subject = SUBJECTS[name]
        result = SubjectResult(name, subject.description, subject.version())
        results.append(result)
        say(f"  {name:<15} {result.version}  [{subject.description}]")
        missing = subject.available()
        if missing:
            result.errors.append(f"not available: {missing}")
    say(f"settings: bulk {settings.bulk_size / MIB:.0f} MiB per test (1 and 4 streams, split "
        f"evenly), connection rate {settings.clients} clients x {settings.duration} s "
        f"({'wrk' if shutil.which('wrk') and settings.conn_tool != 'python' else 'python'}),"
        f" ping-pong {settings.ping_count} x "
        f"{settings.ping_size} B, {settings.repeat} repetition(s), verify "
        f"{'on' if settings.verify else 'off'}")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gatekeep-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    refusing = reserve_refusing_port()
    tls_port = refusing.getsockname()[1]
    http = HttpBackend(workdir)
    backend: Instance | None = None
    idle: IdleBackend | None = None
    raise_nofile()
    harness_errors: list[str] = []
    try:
        backend, backend_port = start_bulk_backend(workdir)
        http_port = http.start()
        idle = IdleBackend(workdir / "idle-backend.log")
        for repetition in range(settings.repeat):
            say(f"repetition {repetition + 1}/{settings.repeat}")
            for result in results:
                if result.errors and result.errors[0].startswith("not available"):
                    continue
                subject = SUBJECTS[result.name]
                run: dict[str, float] = {}
                measure_transfers(subject, settings, workdir, backend_port, tls_port, run, result)
                measure_connections(subject, settings, workdir, http_port, tls_port, run, result)
                if repetition == 0:
                    assert idle is not None
                    measure_idle(subject, settings, workdir, idle, tls_port, run, result)
                result.runs.append(run)
    except StartError as error:
        harness_errors.append(str(error))
    except KeyboardInterrupt:
        harness_errors.append("interrupted")
    finally:
        http.stop()
        if idle is not None:
            idle.stop()
        if backend is not None:
            backend.stop()
            failures = [line for line in log_lines(backend) if line.strip()]
            if failures:
                harness_errors.append(f"the bulk backend logged {len(failures)} failed "
                                      f"connection(s), e.g. {failures[0]}")
        refusing.close()

    by_name = {r.name: r for r in results}
    for result in sorted(results, key=lambda r: r.name != "direct"):  # direct first
        result.aggregate(by_name.get("direct"), settings.stat)
    return conclude(settings, machine, started, results, harness_errors, workdir, args)


def targets(by_name: dict[str, SubjectResult]) -> list[str]:
    """The issue's targets, each with the figures it compares and whether it is met."""
    lines: list[str] = []

    def figure(name: str, key: str) -> float | None:
        result = by_name.get(name)
        return result.figures.get(key) if result is not None else None

    def ratio(mine: str, theirs: str, key: str) -> float | None:
        a, b = figure(mine, key), figure(theirs, key)
        return a / b if a is not None and b is not None and b > 0 else None

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    bulk = [r for k in BULK_FIGURES if (r := ratio("gatekeep", "haproxy", k)) is not None]
    if bulk:
        lines.append(f"target: gatekeep bulk >= {BULK_TARGET}x HAProxy: "
                     f"{verdict(min(bulk) >= BULK_TARGET)} (lowest {min(bulk):.2f}x, over "
                     f"{', '.join(BULK_FIGURES)})")
    cpu = ratio("gatekeep", "haproxy", "cpu_per_gib")
    if cpu is not None:
        lines.append(f"target: gatekeep CPU/GiB <= 1.5x HAProxy: {verdict(cpu <= 1.5)} "
                     f"({cpu:.2f}x)")
    multi = [name for name in by_name if name.startswith("gatekeep-")]
    for mine, theirs in [("gatekeep", "haproxy"),
                         *[(m, "haproxy-" + m.split("-", 1)[1]) for m in multi]]:
        rate = ratio(mine, theirs, "conn_rate")
        if rate is not None:
            lines.append(f"target: {mine} conn/s >= 0.5x {theirs} (same workers/threads): "
                         f"{verdict(rate >= 0.5)} ({rate:.2f}x)")
    for mine in ["gatekeep", *multi]:
        rate = ratio(mine, "sslh-select", "conn_rate")
        if rate is not None:
            lines.append(f"target: {mine} conn/s >= 1x sslh-select: {verdict(rate >= 1)} "
                         f"({rate:.2f}x)")
    p99 = ratio("gatekeep", "haproxy", "added_p99")
    if p99 is not None:
        lines.append(f"target: gatekeep added p99 latency <= 2x HAProxy: {verdict(p99 <= 2)} "
                     f"({p99:.2f}x)")
    for mine in ["gatekeep", *multi]:
        rss = figure(mine, "rss_idle")
        if rss is not None:
            lines.append(f"target: {mine} <= 10 KiB RSS per idle connection: "
                         f"{verdict(rss <= 10)} ({rss:.1f} KiB)")
    return lines


def floor_context(by_name: dict[str, SubjectResult]) -> list[str]:
    """With ``python-floor`` measured: how much of gatekeep's cost Python alone makes."""
    floor = by_name.get("python-floor")
    if floor is None:
        return []
    lines = []
    cost, rate = floor.figures.get("cpu_per_kconn"), floor.figures.get("conn_rate")
    for name in ("gatekeep", "sslh-select"):
        other = by_name.get(name)
        if other is None:
            continue
        theirs, their_rate = other.figures.get("cpu_per_kconn"), other.figures.get("conn_rate")
        if cost is not None and theirs is not None:
            lines.append(f"python-floor: {cost:.0f} ms CPU per 1000 connections; {name}: "
                         f"{theirs:.0f} ({theirs - cost:+.0f} ms)")
        if rate is not None and their_rate:
            lines.append(f"python-floor: conn/s {rate / their_rate:.2f}x {name}'s")
    return lines


def conclude(settings: Settings, machine: dict[str, str | int | float],
             started: datetime.datetime, results: list[SubjectResult],
             harness_errors: list[str], workdir: Path, args: argparse.Namespace) -> int:
    by_name = {r.name: r for r in results}
    say("")
    kind = "medians" if settings.stat == "median" else "best of each"
    if settings.repeat == 1:
        kind = "one repetition"
    say(f"Results ({'smoke run: tiny sizes, not meaningful' if settings.smoke else kind}"
        f"; GB/s = 10^9 bytes/s; {machine['cores']} cores, {machine['cpu_model']})")
    say(render_table(results, {r.name: r.figures for r in results}))
    warnings: list[str] = []
    ratio_table: dict[str, dict[str, float]] = {}
    base = by_name.get("haproxy")
    say("")
    if base is None or not any(v is not None for v in base.figures.values()):
        say("Ratios relative to HAProxy: not computed (haproxy not measured)")
    else:
        ratio_table = ratios(results, base)
        say("Ratios relative to HAProxy (subject / haproxy)")
        say(render_table(results, ratio_table, ratio=True, skip_subjects=("haproxy",)))
    say("")
    for line in [*targets(by_name), *floor_context(by_name)]:
        say(line + ("  (smoke run: not meaningful)" if settings.smoke else ""))
    direct = by_name.get("direct")
    if direct is not None and not settings.smoke:
        for key in [*BULK_FIGURES, "conn_rate"]:
            best = direct.figures.get(key)
            for result in results:
                value = result.figures.get(key)
                if result is direct or best is None or value is None or value <= 0:
                    continue
                if best < DIRECT_MARGIN * value:
                    warnings.append(
                        f"direct {key} is only {best / value:.2f}x {result.name}'s: the load "
                        "tools or backend may be limiting, or the machine is busy")
    errors = harness_errors + [f"{r.name}: {e}" for r in results for e in r.errors]
    problems = [f"{r.name}: {p}" for r in results for p in r.problems]
    notes = [f"{r.name}: {n}" for r in results for n in r.notes]
    profiles = [f"{r.name}, {phase}: {line}" if n == 0 else f"    {line}"
                for r in results for phase, lines in r.profiles.items()
                for n, line in enumerate(lines)]
    if settings.profile:
        warnings.append("gatekeep ran under py-spy in the first repetition: its figures are "
                        "lower than without --profile")
    for title, items in (("Warnings", warnings), ("Problems seen", problems),
                         ("Errors", errors), ("Notes", notes), ("Profile (py-spy)", profiles)):
        if items:
            say("")
            say(f"{title}:")
            for item in items:
                say(f"  {item}" if item.startswith(" ") else f"  - {item}")
    if args.json is not None:
        document = {
            "date": started.isoformat(timespec="seconds"),
            "machine": machine,
            "settings": asdict(settings),
            "subjects": {r.name: asdict(r) for r in results},
            "ratios_vs_haproxy": ratio_table,
            "warnings": warnings, "errors": errors, "problems": problems,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        say(f"\nresults written to {args.json}")
    keep = bool(errors or problems) or args.workdir is not None
    if keep:
        say(f"configs and logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
