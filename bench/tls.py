"""
bench/tls.py: TLS termination, gatekeep (``terminate``) vs HAProxy (``bind ... ssl``).

Both terminate TLS 1.3 with the certificate chosen by SNI from two: RSA-2048
(``rsa.bench``) and ECDSA P-256 (``ecdsa.bench``), and forward the decrypted stream
to the same backend. HAProxy runs ``nbthread 1`` and gatekeep one process, and each
proxy's CPU time is measured (``/proc``), so "handshakes per CPU second" is a per-core
figure that does not depend on how much CPU the load generator left over.

- handshakes: client processes loop: connect, full handshake (no resumption), read
  the backend's ``ok``, close. The backend is nginx ``stream { return "ok"; }``.
- bulk: one connection reads BULK bytes that the backend sends through the proxy
  (backend -> client, decrypted by nothing but the client: the proxy encrypts).

    .venv/bin/python bench/tls.py                 # 5 s per figure, 3 rounds
    .venv/bin/python bench/tls.py --smoke         # 1 s per figure, small bulk (CI)
    .venv/bin/python bench/tls.py --json out.json

Exit status 0 when every figure was measured, 1 otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cpu import CpuMeter
from procs import Instance, StartError, free_port, log_tail, wait_listening
from subjects import twistd_path

KINDS = ("rsa", "ecdsa")
SUBJECTS = ("gatekeep", "haproxy")
MiB = 1024 * 1024

GATEKEEP = """\
workers = 1                 # one process, against HAProxy's nbthread 1: a per-core comparison

[[listener]]
name = "bench"
endpoint = "tcp:{port}:interface=127.0.0.1"
service = "edge"

[service.edge]
[[service.edge.route]]
name = "tls"
match.tls = {{}}
terminate = {{ certificates = "{certs}", alpn = ["http/1.1"], service = "inner" }}

[service.inner]
[[service.inner.route]]
name = "backend"
forward = {{ to = "tcp:127.0.0.1:{backend}" }}
"""

HAPROXY = """\
global
    nbthread 1
    maxconn 4000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend bench
    bind 127.0.0.1:{port} ssl crt {certs}/rsa.pem crt {certs}/ecdsa.pem alpn http/1.1
    default_backend backend
backend backend
    server backend 127.0.0.1:{backend}
"""

NGINX = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
worker_processes 1;
pid {workdir}/backend.pid;
error_log {workdir}/backend.log warn;
events {{ worker_connections 8192; }}
stream {{ server {{ listen 127.0.0.1:{port} backlog=4096; return "ok"; }} }}
"""


def make_certificates(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    for kind in KINDS:
        key: Any = (rsa.generate_private_key(65537, 2048) if kind == "rsa"
                    else ec.generate_private_key(ec.SECP256R1()))
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{kind}.bench")])
        certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(f"{kind}.bench")]),
                           critical=False)
            .sign(key, hashes.SHA256()))
        (directory / f"{kind}.pem").write_bytes(
            certificate.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))


def _start(name: str, argv: list[str], port: int, workdir: Path, log: Path) -> Instance:
    with log.open("ab") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, cwd=workdir)
    instance = Instance(name, port, process, log)
    try:
        wait_listening(port, process, 30, log)
    except StartError:
        instance.stop()
        raise
    return instance


def start_subject(subject: str, workdir: Path, certs: Path, backend: int) -> Instance:
    port = free_port()
    if subject == "gatekeep":
        twistd = twistd_path()
        if twistd is None:
            raise StartError("twistd not found beside this Python (use the gatekeep venv)")
        config = workdir / "gatekeep-tls.toml"
        config.write_text(GATEKEEP.format(port=port, certs=certs, backend=backend))
        # twistd -n logs to stdout, here a file. Never --logfile=/dev/null: Twisted
        # rotates a log file every megabyte, renaming the device and leaving a plain
        # file in its place.
        return _start("gatekeep", [twistd, "-n", "--pidfile=",
                                   "gatekeep", "--config", str(config)],
                      port, workdir, workdir / "gatekeep-tls.out")
    config = workdir / "haproxy-tls.cfg"
    config.write_text(HAPROXY.format(port=port, certs=certs, backend=backend))
    return _start("haproxy", ["haproxy", "-db", "-f", str(config)], port, workdir,
                  workdir / "haproxy-tls.log")


def start_backends(workdir: Path) -> tuple[Instance, Instance]:
    port = free_port()
    config = workdir / "backend.conf"
    config.write_text(NGINX.format(workdir=workdir, port=port))
    nginx = _start("backend", ["nginx", "-p", str(workdir), "-c", str(config), "-e",
                               str(workdir / "backend.log")], port, workdir,
                   workdir / "backend.out")
    bulk_port = free_port()
    bulk = _start("bulk", [sys.executable, __file__, "--bulk-server", str(bulk_port)],
                  bulk_port, workdir, workdir / "bulk.log")
    return nginx, bulk


def bulk_server(port: int) -> None:
    """Each connection: the client sends the size wanted (8 bytes), gets that many bytes."""
    chunk = b"\xa5" * (256 * 1024)
    with socket.create_server(("127.0.0.1", port), backlog=64) as server:
        while True:
            conn, _ = server.accept()
            with conn:
                want = b""
                while len(want) < 8:
                    data = conn.recv(8 - len(want))
                    if not data:
                        break
                    want += data
                left = int.from_bytes(want, "big") if len(want) == 8 else 0
                while left > 0:
                    sent = conn.send(chunk[:min(left, len(chunk))])
                    left -= sent


def _client_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.set_alpn_protocols(["http/1.1"])
    return context


def handshake_worker(port: int, sni: str, until: float, results: Any) -> None:
    context = _client_context()
    done = failed = 0
    while time.monotonic() < until:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=sni) as tls:
                received = b""
                while b"ok" not in received:
                    data = tls.recv(64)
                    if not data:
                        break
                    received += data
            if b"ok" in received:
                done += 1
            else:
                failed += 1
        except OSError:
            failed += 1
    results.put((done, failed))


def measure_handshakes(instance: Instance, sni: str, seconds: float, clients: int
                       ) -> dict[str, float]:
    results: Any = multiprocessing.Queue()
    meter = CpuMeter(instance.root_pids, interval=None)
    until = time.monotonic() + seconds
    workers = [multiprocessing.Process(target=handshake_worker,
                                       args=(instance.port, sni, until, results))
               for _ in range(clients)]
    started = time.monotonic()
    meter.start()
    for worker in workers:
        worker.start()
    counts = [results.get(timeout=seconds + 60) for _ in workers]
    elapsed = time.monotonic() - started
    cpu = meter.stop()
    for worker in workers:
        worker.join()
    done = sum(c[0] for c in counts)
    failed = sum(c[1] for c in counts)
    return {"handshakes": done, "failed": failed, "per_second": done / elapsed,
            "proxy_cpu_s": cpu, "per_cpu_second": done / cpu if cpu > 0 else 0.0}


def measure_bulk(instance: Instance, size: int) -> dict[str, float]:
    meter = CpuMeter(instance.root_pids, interval=None)
    context = _client_context()
    meter.start()
    started = time.monotonic()
    received = 0
    with socket.create_connection(("127.0.0.1", instance.port), timeout=30) as raw, \
            context.wrap_socket(raw, server_hostname="ecdsa.bench") as tls:
        tls.sendall(size.to_bytes(8, "big"))
        while received < size:
            data = tls.recv(1024 * 1024)
            if not data:
                break
            received += len(data)
    elapsed = time.monotonic() - started
    cpu = meter.stop()
    return {"bytes": received, "mib_per_s": received / MiB / elapsed,
            "proxy_cpu_s_per_gib": cpu / (received / (1024 * MiB)) if received else 0.0}


def run_subject(subject: str, workdir: Path, certs: Path, backend: int, bulk: int,
                seconds: float, clients: int, bulk_size: int,
                into: dict[str, list[dict[str, float]]]) -> list[str]:
    """One round of every figure for one subject; the problems seen."""
    problems: list[str] = []
    try:
        instance = start_subject(subject, workdir, certs, backend)
    except StartError as error:
        return [f"{subject}: {error}"]
    try:
        for kind in KINDS:
            figures = measure_handshakes(instance, f"{kind}.bench", seconds, clients)
            into.setdefault(f"handshakes {kind}", []).append(figures)
            if figures["handshakes"] == 0 or figures["failed"]:
                problems.append(f"{subject} {kind}: {figures}")
    finally:
        instance.stop()
    # Bulk: the same proxy config, its backend the bulk sender.
    try:
        instance = start_subject(subject, workdir, certs, bulk)
    except StartError as error:
        return [*problems, f"{subject} bulk: {error}{log_tail(workdir / 'bulk.log')}"]
    try:
        figures = measure_bulk(instance, bulk_size)
        into.setdefault("bulk backend->client", []).append(figures)
        if figures["bytes"] != bulk_size:
            problems.append(f"{subject} bulk: {figures}")
    finally:
        instance.stop()
    return problems


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--smoke", action="store_true", help="1 s per figure, 32 MiB bulk")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=2, help="handshake client processes")
    parser.add_argument("--bulk-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3,
                        help="subjects take turns this many times; medians are reported")
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--bulk-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bulk_server:
        bulk_server(args.bulk_server)
        return 0
    seconds = 1.0 if args.smoke else args.seconds
    bulk_size = (32 if args.smoke else args.bulk_mib) * MiB
    subjects = [s for s in args.subjects.split(",") if s]
    for tool in ["nginx", *(["haproxy"] if "haproxy" in subjects else [])]:
        if shutil.which(tool) is None:
            print(f"{tool} is not installed", file=sys.stderr)
            return 1
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="gatekeep-tlsbench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    certs = workdir / "certs"
    make_certificates(certs)
    problems: list[str] = []
    backend, bulk = start_backends(workdir)
    try:
        # Subjects take turns, round after round, so that other load on the machine
        # falls on both alike; each figure is the median of its rounds.
        rounds: dict[str, dict[str, list[dict[str, float]]]] = {s: {} for s in subjects}
        for _ in range(1 if args.smoke else args.rounds):
            for subject in subjects:
                problems += run_subject(subject, workdir, certs, backend.port, bulk.port,
                                        seconds, args.clients, bulk_size, rounds[subject])
        results = {subject: {name: _median(runs) for name, runs in figures.items()}
                   for subject, figures in rounds.items()}
    finally:
        backend.stop()
        bulk.stop()
    _report(results, seconds, args.clients, 1 if args.smoke else args.rounds)
    if args.json is not None:
        args.json.write_text(json.dumps({"results": results, "problems": problems,
                                         "seconds": seconds, "clients": args.clients,
                                         "rounds": rounds},
                                        indent=2))
    for problem in problems:
        print("problem:", problem, file=sys.stderr)
    return 1 if problems else 0


def _report(results: dict[str, dict[str, dict[str, float]]], seconds: float,
            clients: int, rounds: int) -> None:
    print(f"TLS termination, {seconds:g} s per figure, {clients} handshake clients "
          f"(TLS 1.3, full handshakes, no resumption); medians of {rounds} round(s)")
    rows = []
    for subject, figures in results.items():
        for kind in KINDS:
            f = figures.get(f"handshakes {kind}")
            if f:
                rows.append(f"  {subject:9} {kind:6} {f['per_second']:9.0f} handshakes/s  "
                            f"{f['per_cpu_second']:9.0f} per proxy CPU-second")
        b = figures.get("bulk backend->client")
        if b:
            rows.append(f"  {subject:9} bulk   {b['mib_per_s']:9.1f} MiB/s        "
                        f"{b['proxy_cpu_s_per_gib']:9.2f} proxy CPU-s per GiB")
    print("\n".join(rows))
    gk, ha = results.get("gatekeep", {}), results.get("haproxy", {})
    if gk and ha:
        print("ratios gatekeep / haproxy")
        for kind in KINDS:
            a, b = gk.get(f"handshakes {kind}"), ha.get(f"handshakes {kind}")
            if a and b and b["per_cpu_second"]:
                ratio = a["per_cpu_second"] / b["per_cpu_second"]
                print(f"  handshakes per core, {kind}: {ratio:.2f}x "
                      f"(target >= 0.50x: {'met' if ratio >= 0.5 else 'NOT met'})")
        a, b = gk.get("bulk backend->client"), ha.get("bulk backend->client")
        if a and b and a["proxy_cpu_s_per_gib"]:
            print(f"  bulk throughput: {a['mib_per_s'] / b['mib_per_s']:.2f}x; "
                  f"CPU per GiB: {a['proxy_cpu_s_per_gib'] / b['proxy_cpu_s_per_gib']:.2f}x "
                  "(lower is better)")


if __name__ == "__main__":
    sys.exit(main())
