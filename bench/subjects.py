"""
The things being measured: how to configure, start, check and stop each one.

Every subject proxies one loopback port to one backend port, with the same
routing: a TLS ClientHello goes to a TLS backend (a port that refuses
connections, so a misdetection shows up as failed transfers), anything else goes
to the catch-all backend. Each proxy must therefore inspect the first bytes before
choosing, which is the work gatekeep does.

Peers run with one thread / one worker process and without per-connection logs
(gatekeep keeps its one log line per connection: that is part of what it is).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from idle import nofile_limit, raise_nofile
from procs import (
    Instance,
    StartError,
    free_port,
    fresh_path,
    log_tail,
    run_version,
    wait_listening,
)

__all__ = ["CORES", "DEFAULT_SUBJECTS", "SUBJECTS", "HttpBackend", "Subject"]

#: Workers/threads of the multi-core subjects: one per core.
CORES = os.cpu_count() or 1


@dataclass(frozen=True)
class Subject:
    """
    How to run one proxy. ``start(workdir, backend_port, tls_port)`` returns a running
    :class:`Instance` listening on a loopback port that leads to ``backend_port``.
    """

    name: str
    description: str
    version: Callable[[], str]
    available: Callable[[], str | None]
    start: Callable[[Path, int, int], Instance]
    #: Forks a process per connection: its CPU for short connections can't be sampled.
    forks_per_connection: bool = False
    #: Most idle connections it can hold here (select() limits, a process per connection).
    idle_max: int = 10000


def _spawn(name: str, argv: list[str], port: int, output: Path,
           log: Path | None = None) -> Instance:
    """Start a proxy with the open-file limit raised; return it once it listens on ``port``."""
    with output.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=raise_nofile)
    log = log or output
    try:
        wait_listening(port, process, 15, log)
    except StartError:
        process.kill()
        raise
    return Instance(name, port, process, log, [output] if output != log else [])


# --- direct ----------------------------------------------------------------------------


def _direct_start(workdir: Path, backend_port: int, tls_port: int) -> Instance:
    return Instance("direct", backend_port)


# --- gatekeep --------------------------------------------------------------------------

GATEKEEP_CONFIG = """\
# bench: one listener; TLS -> tls route (a refusing port), anything else -> catch-all.
workers = {workers}

[[listener]]
name = "bench"
endpoint = "tcp:0:interface=127.0.0.1"
service = "bench"

[service.bench]
default = "backend"

[[service.bench.route]]
name = "tls"
match.tls = {{}}
forward = {{ to = "tcp:127.0.0.1:{tls_port}" }}

[[service.bench.route]]
name = "backend"
forward = {{ to = "tcp:127.0.0.1:{backend_port}" }}
"""

_LISTENING = re.compile(r"listener bench (?:listening on|bound to) 127\.0\.0\.1:(\d+)")


def twistd_path() -> str | None:
    beside = Path(sys.executable).parent / "twistd"
    if beside.exists():
        return str(beside)
    return shutil.which("twistd")


def _gatekeep_source() -> str:
    """The commit of the gatekeep checkout being run, and whether its files differ from it."""
    try:
        import gatekeep

        source = Path(gatekeep.__file__).resolve().parent
        head = subprocess.run(["git", "-C", str(source), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=10, check=False)
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "."],
                               capture_output=True, text=True, timeout=10, check=False)
    except (ImportError, OSError, subprocess.SubprocessError):
        return ""
    if head.returncode != 0:
        return ""
    changed = " + uncommitted changes" if dirty.stdout.strip() else ""
    return f" (commit {head.stdout.strip()}{changed})"


def _gatekeep_version() -> str:
    try:
        from importlib.metadata import version

        return (f"gatekeep {version('gatekeep')}{_gatekeep_source()}, Twisted "
                f"{version('twisted')}, Python {sys.version.split()[0]}")
    except Exception as error:  # noqa: BLE001 - a version string must never fail the run
        return f"unknown ({error})"


def _gatekeep_available() -> str | None:
    if twistd_path() is None:
        return "twistd not found beside this Python nor on PATH (run with the gatekeep venv)"
    try:
        import gatekeep  # noqa: F401
    except ImportError:
        return "gatekeep is not importable from this Python"
    return None


def _gatekeep_starter(name: str, workers: int) -> Callable[[Path, int, int], Instance]:
    def start(workdir: Path, backend_port: int, tls_port: int) -> Instance:
        twistd = twistd_path()
        assert twistd is not None
        config = workdir / f"{name}.toml"
        config.write_text(GATEKEEP_CONFIG.format(backend_port=backend_port, tls_port=tls_port,
                                                 workers=workers))
        # twistd -n logs to stdout (a --logfile would be rotated every megabyte).
        log = fresh_path(workdir, name, ".log")
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [twistd, "-n", "--pidfile=", "gatekeep", "--config", str(config)],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                preexec_fn=raise_nofile)
        ready = _LISTENING if workers == 1 else re.compile(
            rf"all {workers} workers are serving")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            found = _LISTENING.search(text)
            if found and ready.search(text):
                return Instance(name, int(found.group(1)), process, log)
            if process.poll() is not None:
                raise StartError(f"gatekeep exited with code {process.returncode}"
                                 f"{log_tail(log)}")
            time.sleep(0.05)
        process.kill()
        raise StartError(f"gatekeep did not log 'listening' within 30s{log_tail(log)}")

    return start


# --- HAProxy ---------------------------------------------------------------------------

HAPROXY_CONFIG = """\
# bench: TCP mode, content inspection like gatekeep's detection, one thread, no logs.
global
    nbthread {threads}
    maxconn {maxconn}

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
{options}
frontend bench
    bind 127.0.0.1:{port}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    tcp-request content accept if {{ req.len gt 0 }}
    use_backend tls if {{ req.ssl_hello_type 1 }}
    default_backend plain

backend tls
    server tls 127.0.0.1:{tls_port}

backend plain
    server plain 127.0.0.1:{backend_port}
"""


def _haproxy_available() -> str | None:
    return None if shutil.which("haproxy") else "haproxy not installed"


def _haproxy_starter(name: str, options: str, threads: int = 1,
                     ) -> Callable[[Path, int, int], Instance]:
    def start(workdir: Path, backend_port: int, tls_port: int) -> Instance:
        port = free_port()
        config = workdir / f"{name}.cfg"
        config.write_text(HAPROXY_CONFIG.format(
            port=port, backend_port=backend_port, tls_port=tls_port, options=options,
            threads=threads, maxconn=max(4000, (nofile_limit() - 200) // 2)))
        return _spawn(name, ["haproxy", "-db", "-f", str(config)], port,
                      fresh_path(workdir, name, ".log"))

    return start


# --- nginx stream ----------------------------------------------------------------------

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

NGINX_STREAM_CONFIG = """\
# bench: stream + ssl_preread; not TLS ($ssl_preread_protocol empty) -> plain.
load_module {module};
daemon off;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {workdir}/nginx-stream.pid;
error_log {log} notice;
events {{ worker_connections 30000; }}

stream {{
    upstream plain {{ server 127.0.0.1:{backend_port}; }}
    upstream tls {{ server 127.0.0.1:{tls_port}; }}
    map $ssl_preread_protocol $backend {{
        ""      plain;
        default tls;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        ssl_preread on;
        preread_timeout 5s;
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
        proxy_pass $backend;
    }}
}}
"""


def _nginx_available() -> str | None:
    if not shutil.which("nginx"):
        return "nginx not installed"
    if not Path(NGINX_STREAM_MODULE).exists():
        return f"{NGINX_STREAM_MODULE} missing (install libnginx-mod-stream)"
    return None


def _nginx_start(workdir: Path, backend_port: int, tls_port: int) -> Instance:
    port = free_port()
    config = workdir / "nginx-stream.conf"
    log = fresh_path(workdir, "nginx-stream", ".error.log")
    out = log.with_suffix(".out")
    config.write_text(NGINX_STREAM_CONFIG.format(
        module=NGINX_STREAM_MODULE, workdir=workdir, port=port, backend_port=backend_port,
        tls_port=tls_port, log=log, nofile=nofile_limit()))
    return _spawn("nginx", ["nginx", "-p", str(workdir), "-c", str(config), "-e", str(log)],
                  port, out, log)


# --- sslh ------------------------------------------------------------------------------

SSLH_CONFIG = """\
# bench: tls probe first, then anyprot (matches anything) as the catch-all.
foreground: true;
inetd: false;
numeric: true;
transparent: false;
timeout: 5;
listen: ( {{ host: "127.0.0.1"; port: "{port}"; }} );
protocols: (
    {{ name: "tls"; host: "127.0.0.1"; port: "{tls_port}"; log_level: 0; }},
    {{ name: "anyprot"; host: "127.0.0.1"; port: "{backend_port}"; log_level: 0; }}
);
"""


def sslh_binary(flavour: str) -> str | None:
    """Debian ships sslh-fork as plain ``sslh`` (and ``sslh-select``); check by ``-V``."""
    candidates = [f"sslh-{flavour}"] + (["sslh"] if flavour == "fork" else [])
    for name in candidates:
        path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists()
                                      else None)
        if path and f"sslh-{flavour}" in run_version([path, "-V"]):
            return path
    return None


def _sslh_starter(flavour: str) -> Callable[[Path, int, int], Instance]:
    name = f"sslh-{flavour}"

    def start(workdir: Path, backend_port: int, tls_port: int) -> Instance:
        binary = sslh_binary(flavour)
        assert binary is not None
        port = free_port()
        config = workdir / f"{name}.cfg"
        config.write_text(SSLH_CONFIG.format(
            port=port, backend_port=backend_port, tls_port=tls_port))
        # -F takes the file name with no space.
        return _spawn(name, [binary, f"-F{config}"], port, fresh_path(workdir, name, ".log"))

    return start


def _sslh_version(flavour: str) -> Callable[[], str]:
    def version() -> str:
        binary = sslh_binary(flavour)
        return run_version([binary, "-V"]) if binary else "not installed"

    return version


def _sslh_available(flavour: str) -> Callable[[], str | None]:
    def available() -> str | None:
        return None if sslh_binary(flavour) else f"no sslh-{flavour} binary found"

    return available


# --- the Python floor ------------------------------------------------------------------


def _pyfloor_start(workdir: Path, backend_port: int, tls_port: int) -> Instance:
    port = free_port()
    return _spawn("python-floor", [sys.executable, str(Path(__file__).with_name("pyfloor.py")),
                                   str(port), str(backend_port), str(tls_port)],
                  port, fresh_path(workdir, "python-floor", ".log"))


SUBJECTS: dict[str, Subject] = {s.name: s for s in [
    Subject("direct", "client straight to the backend, no proxy",
            lambda: "-", lambda: None, _direct_start),
    Subject("gatekeep", "twistd gatekeep, workers = 1 (one process), splice relay",
            _gatekeep_version, _gatekeep_available, _gatekeep_starter("gatekeep", 1)),
    Subject(f"gatekeep-{CORES}", f"twistd gatekeep, workers = {CORES} (parent + {CORES} "
            "processes)", _gatekeep_version, _gatekeep_available,
            _gatekeep_starter(f"gatekeep-{CORES}", CORES)),
    Subject("haproxy", "HAProxy mode tcp, inspect-delay + req.ssl_hello_type, nbthread 1",
            lambda: run_version(["haproxy", "-v"]), _haproxy_available,
            _haproxy_starter("haproxy", "")),
    Subject(f"haproxy-{CORES}", f"as haproxy, nbthread {CORES}",
            lambda: run_version(["haproxy", "-v"]), _haproxy_available,
            _haproxy_starter(f"haproxy-{CORES}", "", CORES)),
    Subject("nginx", "nginx stream + ssl_preread, 1 worker",
            lambda: run_version(["nginx", "-v"]), _nginx_available, _nginx_start),
    Subject("sslh-select", "sslh-select, tls probe then anyprot",
            _sslh_version("select"), _sslh_available("select"), _sslh_starter("select"),
            idle_max=400),
    Subject("sslh-fork", "sslh-fork (one process per connection), tls probe then anyprot",
            _sslh_version("fork"), _sslh_available("fork"), _sslh_starter("fork"),
            forks_per_connection=True, idle_max=300),
    Subject("haproxy-splice", "as haproxy, plus `option splice-auto` (not in the default set)",
            lambda: run_version(["haproxy", "-v"]), _haproxy_available,
            _haproxy_starter("haproxy-splice", "    option splice-auto\n")),
    Subject("python-floor", "bench/pyfloor.py: gatekeep's system calls from a bare Python "
            "epoll loop, nothing else (not in the default set)",
            lambda: f"Python {sys.version.split()[0]}", lambda: None, _pyfloor_start),
]}

DEFAULT_SUBJECTS = ["direct", "gatekeep", f"gatekeep-{CORES}", "haproxy", f"haproxy-{CORES}",
                    "nginx", "sslh-select", "sslh-fork"]


# --- the HTTP backend for the connection-rate test --------------------------------------

NGINX_HTTP_CONFIG = """\
# bench: tiny HTTP backend for wrk's one-request connections.
daemon off;
worker_processes 1;
pid {workdir}/http-backend.pid;
error_log {workdir}/http-backend.error.log warn;
events {{ worker_connections 8192; }}

http {{
    access_log off;
    client_body_temp_path {workdir}/tmp/body;
    proxy_temp_path {workdir}/tmp/proxy;
    fastcgi_temp_path {workdir}/tmp/fastcgi;
    uwsgi_temp_path {workdir}/tmp/uwsgi;
    scgi_temp_path {workdir}/tmp/scgi;
    server_tokens off;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ return 200 "ok\\n"; }}
    }}
}}
"""


class HttpBackend:
    """An nginx ``return 200 "ok"`` server: the far end of the connection-rate test."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.instance: Instance | None = None

    def start(self) -> int:
        (self.workdir / "tmp").mkdir(exist_ok=True)
        port = free_port()
        config = self.workdir / "http-backend.conf"
        config.write_text(NGINX_HTTP_CONFIG.format(workdir=self.workdir, port=port))
        log = self.workdir / "http-backend.error.log"
        with (self.workdir / "http-backend.out").open("ab") as sink:
            process = subprocess.Popen(
                ["nginx", "-p", str(self.workdir), "-c", str(config), "-e", str(log)],
                stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.instance = Instance("http-backend", port, process, log)
        try:
            wait_listening(port, process, 15, log)
        except StartError:
            self.instance.stop()
            raise
        return port

    def stop(self) -> None:
        if self.instance is not None:
            self.instance.stop()
            self.instance = None
