"""
bench/httpbench.py: the HTTP reverse proxy, gatekeep vs nginx vs direct, in one run.

Each subject puts one proxy in front of the same tiny nginx backend (``return 200
"ok"``): ``direct`` (no proxy), ``gatekeep`` (``http = "site"``, one process, its
access log off like nginx's), ``nginx`` (``proxy_pass`` with HTTP/1.1 keep-alive
to the backend, one worker). wrk measures requests per second and p99 latency with
keep-alive, then with a new connection per request (``Connection: close``).
gatekeep runs one process and nginx one worker; the proxy's own CPU time is measured
too, so "requests per CPU-second" is the per-core figure, and unlike requests per
second it holds on a machine that other work keeps busy.

    .venv/bin/python bench/httpbench.py             # 5 s per figure: about a minute
    .venv/bin/python bench/httpbench.py --smoke     # 1 s per figure (CI: the harness only)
    .venv/bin/python bench/httpbench.py --json out.json

Exit status 0 when every figure was measured, 1 when one failed, 2 for bad usage.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cpu import CpuMeter
from procs import Instance, StartError, free_port, log_tail, wait_listening
from subjects import HttpBackend, twistd_path

GATEKEEP_CONFIG = """\
workers = 1                 # one process, against one nginx worker: a per-core comparison

[[listener]]
name = "bench"
endpoint = "tcp:{port}:interface=127.0.0.1"
service = "web"

[service.web]
[[service.web.route]]
name = "site"
http = "site"

[http.site]
[[http.site.route]]
name = "backend"
to = "tcp:127.0.0.1:{backend}"
"""

NGINX_PROXY_CONFIG = """\
daemon off;
worker_processes 1;
pid {workdir}/proxy.pid;
error_log {workdir}/proxy.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    upstream backend {{ server 127.0.0.1:{backend}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"""

SUBJECTS = ("direct", "gatekeep", "nginx")
_LISTENING = re.compile(r"listener bench listening on 127\.0\.0\.1:(\d+)")


def start_gatekeep(workdir: Path, backend: int) -> Instance:
    twistd = twistd_path()
    if twistd is None:
        raise StartError("twistd not found beside this Python (use the gatekeep venv)")
    config = workdir / "gatekeep-http.toml"
    config.write_text(GATEKEEP_CONFIG.format(port=0, backend=backend))
    log = workdir / "gatekeep-http.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([twistd, "-n", "--pidfile=", "gatekeep", "--config",
                                    str(config)], stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_text(errors="replace"))
        if found:
            return Instance("gatekeep", int(found.group(1)), process, log)
        if process.poll() is not None:
            raise StartError(f"gatekeep exited with code {process.returncode}{log_tail(log)}")
        time.sleep(0.05)
    process.kill()
    raise StartError(f"gatekeep did not start within 30 s{log_tail(log)}")


def start_nginx(workdir: Path, backend: int) -> Instance:
    (workdir / "tmp").mkdir(exist_ok=True)
    port = free_port()
    config = workdir / "proxy.conf"
    config.write_text(NGINX_PROXY_CONFIG.format(workdir=workdir, port=port, backend=backend))
    log = workdir / "proxy.error.log"
    with (workdir / "proxy.out").open("ab") as sink:
        process = subprocess.Popen(["nginx", "-p", str(workdir), "-c", str(config), "-e",
                                    str(log)], stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    instance = Instance("nginx", port, process, log)
    try:
        wait_listening(port, process, 15, log)
    except StartError:
        instance.stop()
        raise
    return instance


def _latency_ms(text: str) -> float:
    value = float(re.sub(r"[a-z]+$", "", text))
    unit = re.sub(r"^[0-9.]+", "", text)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def wrk(port: int, seconds: float, connections: int, close: bool,
        proxy: Instance | None = None) -> dict[str, float]:
    """Requests/s, p99 latency (ms), errors and the proxy's requests per CPU-second."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
               "-H", "Host: bench.example"]
    if close:
        command += ["-H", "Connection: close"]
    meter = CpuMeter([proxy.process.pid], interval=None) \
        if proxy is not None and proxy.process is not None else None
    if meter is not None:
        meter.start()
    done = subprocess.run([*command, f"http://127.0.0.1:{port}/"], capture_output=True,
                          text=True, timeout=seconds + 60, check=False)
    cpu = meter.stop() if meter is not None else 0.0
    out = done.stdout
    total = re.search(r"(\d+) requests in", out)
    rate = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    if done.returncode != 0 or rate is None or p99 is None or total is None:
        raise RuntimeError(f"wrk failed (exit {done.returncode}): {(out + done.stderr)[-500:]}")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": float(rate.group(1)), "p99_ms": _latency_ms(p99.group(1)),
            "cpu_s": cpu, "per_cpu_s": int(total.group(1)) / cpu if cpu > 0 else 0.0,
            "non_2xx": float(errors.group(1)) if errors else 0.0,
            "socket_errors": 1.0 if socket_errors else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per figure")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--smoke", action="store_true", help="1 s per figure, 8 connections")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    subjects = [s for s in args.subjects.split(",") if s]
    if any(s not in SUBJECTS for s in subjects):
        parser.error(f"subjects are {', '.join(SUBJECTS)}")
    if args.smoke:
        args.duration, args.connections = 1.0, 8
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench/httpbench.py: {tool} is not installed", file=sys.stderr)
            return 1
    workdir = Path(tempfile.mkdtemp(prefix="gatekeep-bench-http-"))
    backend = HttpBackend(workdir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    problems: list[str] = []
    try:
        backend_port = backend.start()
        for subject in subjects:
            instance: Instance | None = None
            try:
                if subject == "gatekeep":
                    instance = start_gatekeep(workdir, backend_port)
                elif subject == "nginx":
                    instance = start_nginx(workdir, backend_port)
                port = instance.port if instance is not None else backend_port
                wrk(port, 1, args.connections, False)  # warm-up
                results[subject] = {
                    "keep-alive": wrk(port, args.duration, args.connections, False, instance),
                    "new connections": wrk(port, args.duration, args.connections, True,
                                           instance),
                }
            except (StartError, RuntimeError, subprocess.SubprocessError) as error:
                problems.append(f"{subject}: {error}")
            finally:
                if instance is not None:
                    instance.stop()
    except StartError as error:
        problems.append(f"backend: {error}")
    finally:
        backend.stop()
    _report(results, args)
    if args.json is not None:
        args.json.write_text(json.dumps({"settings": vars(args) | {"json": str(args.json)},
                                         "results": results, "problems": problems}, indent=2))
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if not problems:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"work directory kept: {workdir}", file=sys.stderr)
    return 1 if problems else 0


def _report(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    print(f"HTTP reverse proxy, wrk -t1 -c{args.connections}, {args.duration:g} s per figure; "
          "gatekeep 1 process, nginx 1 worker (per core)")
    print(f"{'subject':<10} {'mode':<16} {'req/s':>10} {'p99 ms':>9} {'req/CPU-s':>10} "
          f"{'non-2xx':>8}")
    for subject, modes in results.items():
        for mode, figures in modes.items():
            per_cpu = f"{figures['per_cpu_s']:>10.0f}" if figures["per_cpu_s"] else f"{'-':>10}"
            print(f"{subject:<10} {mode:<16} {figures['rps']:>10.0f} {figures['p99_ms']:>9.2f} "
                  f"{per_cpu} {figures['non_2xx']:>8.0f}")
    if "gatekeep" in results and "nginx" in results:
        print("ratios gatekeep / nginx (target: req per CPU-second >= 0.30x):")
        for mode in ("keep-alive", "new connections"):
            ours, theirs = results["gatekeep"][mode], results["nginx"][mode]
            ratio = ours["rps"] / max(theirs["rps"], 1e-9)
            cpu_ratio = ours["per_cpu_s"] / max(theirs["per_cpu_s"], 1e-9)
            p99 = ours["p99_ms"] / max(theirs["p99_ms"], 1e-9)
            print(f"  {mode:<16} req/CPU-s {cpu_ratio:.2f}x  req/s {ratio:.2f}x  p99 {p99:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
