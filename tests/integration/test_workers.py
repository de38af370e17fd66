"""
``workers = N`` with real processes: the parent binds, N workers share each
listener, a killed worker comes back, SIGHUP and SIGTERM reach every worker, log
lines name the worker, /metrics merges the workers, systemd socket activation works.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.ops_support import EchoServer, exchange
from tests.integration.peers import Gatekeep, twistd
from tests.integration.process import free_port, wait_until
from tests.integration.test_systemd import Notifications

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent

CONFIG = """\
workers = 2
drain_timeout = "5s"

[admin]
endpoint = "tcp:{admin}:interface=127.0.0.1"

[[listener]]
name = "public"
endpoint = "{endpoint}"
service = "edge"
detect_timeout = "200ms"
{more}
[service.edge]
default = "{route}"

[[service.edge.route]]
name = "{route}"
forward = {{ to = "tcp:127.0.0.1:{echo}" }}
"""

SECOND = """
[[listener]]
name = "second"
endpoint = "tcp:{port}:interface=127.0.0.1"
service = "edge"
"""


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.stop()


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"


def write(path: Path, echo: EchoServer, admin: int, route: str = "echo", more: str = "",
          endpoint: str = "tcp:0:interface=127.0.0.1") -> None:
    path.write_text(CONFIG.format(admin=admin, endpoint=endpoint, echo=echo.port,
                                  route=route, more=more))


def start(tmp_path: Path, config: Path) -> Gatekeep:
    gatekeep = Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--config", config],
                        tmp_path, ["public"], env={"GATEKEEP_WORKERS": "7"})
    gatekeep.log.wait_for(lambda line: "all 2 workers are serving" in line)
    return gatekeep


def test_workers_serve_restart_reload_and_stop(tmp_path: Path, echo: EchoServer) -> None:
    admin = free_port()
    config = tmp_path / "gatekeep.toml"
    write(config, echo, admin)
    gatekeep = start(tmp_path, config)  # the key wins over $GATEKEEP_WORKERS
    try:
        workers = children(gatekeep.pid)
        assert len(workers) == 2
        mark = gatekeep.mark()
        for n in range(20):
            with socket.create_connection(("127.0.0.1", gatekeep.port("public")), 10) as sock:
                exchange(sock, f"hello {n}\n".encode())
        wait_until(lambda: len(gatekeep.connections(mark)) == 20, 10, what="20 lines")
        lines = [line.raw for line in gatekeep.connections(mark)]
        assert all(re.search(r"\[gatekeep\.connection#info worker-[12]\] ", r) for r in lines)
        body = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10).read()
        counts = re.findall(rb'^gatekeep_connections_total\{worker="([12])",listener="public",'
                            rb'outcome="ok",protocol="unknown",route="echo"\} (\d+)\.0$',
                            body, re.M)
        assert sum(int(count) for _, count in counts) == 20, body
        assert urllib.request.urlopen(f"http://127.0.0.1:{admin}/health").read() == b"ok\n"

        # A worker that dies is started again; the other serves meanwhile.
        mark = gatekeep.mark()
        os.kill(workers[0], signal.SIGKILL)
        gatekeep.log.wait_for(
            lambda line: re.search(r"worker \d \(pid \d+\) ended \(signal 9\)", line) is not None,
            mark)
        wait_until(lambda: len(children(gatekeep.pid)) == 2
                   and workers[0] not in children(gatekeep.pid), 20, what="a new worker")
        gatekeep.log.wait_for(lambda line: re.search(r"worker \d serving", line) is not None,
                              mark)
        with socket.create_connection(("127.0.0.1", gatekeep.port("public")), 10) as sock:
            exchange(sock, b"after the crash\n")
        wait_until(lambda: len(gatekeep.connections(mark)) == 1, 10, what="its line")

        # SIGHUP reaches every worker; new connections take the new route.
        write(config, echo, admin, route="echo2")
        mark = gatekeep.mark()
        os.kill(gatekeep.pid, signal.SIGHUP)
        wait_until(lambda: gatekeep.log.text(mark).count("reload applied") == 2, 20,
                   what="both workers reloaded")
        for n in range(6):
            with socket.create_connection(("127.0.0.1", gatekeep.port("public")), 10) as sock:
                exchange(sock, f"reloaded {n}\n".encode())
        wait_until(lambda: len(gatekeep.connections(mark)) == 6, 10, what="6 lines")
        assert {line.route for line in gatekeep.connections(mark)} == {"echo2"}

        # SIGTERM stops the workers, then the parent.
        workers = children(gatekeep.pid)
        os.kill(gatekeep.pid, signal.SIGTERM)
        assert gatekeep.proc.wait(30) == -signal.SIGTERM
        assert not any(alive(pid) for pid in workers)
    finally:
        gatekeep.stop()
    assert [p for p in gatekeep.problems() if "ended (signal 9)" not in p] == []


def test_new_listener_starts_a_new_generation(tmp_path: Path, echo: EchoServer) -> None:
    admin = free_port()
    config = tmp_path / "gatekeep.toml"
    write(config, echo, admin)
    gatekeep = start(tmp_path, config)
    try:
        old = children(gatekeep.pid)
        with socket.create_connection(("127.0.0.1", gatekeep.port("public")), 10) as held:
            exchange(held, b"before\n")
            port = free_port()
            write(config, echo, admin, more=SECOND.format(port=port))
            mark = gatekeep.mark()
            os.kill(gatekeep.pid, signal.SIGHUP)
            gatekeep.log.wait_for(lambda text: "all 2 workers are serving" in text, mark)
            with socket.create_connection(("127.0.0.1", port), 10) as sock:
                exchange(sock, b"new listener\n")
            with socket.create_connection(("127.0.0.1", gatekeep.port("public")), 10) as sock:
                exchange(sock, b"old listener, new workers\n")
            exchange(held, b"still served by an old worker\n")
        wait_until(lambda: not any(alive(pid) for pid in old), 20,
                   what="the old workers to finish")
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []


def test_socket_activation_with_workers(tmp_path: Path, echo: EchoServer) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    notify = Notifications(tmp_path / "notify")
    config = tmp_path / "gatekeep.toml"
    write(config, echo, free_port(), endpoint="systemd:domain=INET:index=0")
    argv: list[str | Path] = [
        sys.executable, HERE / "sd_activate.py", str(listening.fileno()), "https", "--",
        twistd(), "-n", "--pidfile=", "gatekeep", "--config", config]
    gatekeep = Gatekeep(argv, tmp_path, ["public"], env={"NOTIFY_SOCKET": str(notify.path)},
                        pass_fds=[listening.fileno()])
    try:
        listening.close()
        assert notify.wait_for("READY=1") == "READY=1\nSTATUS=listening: public (2 workers)"
        for n in range(4):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                exchange(sock, f"activated {n}\n".encode())
        os.kill(gatekeep.pid, signal.SIGTERM)
        assert notify.wait_for("STOPPING=1").startswith("STOPPING=1")
        assert gatekeep.proc.wait(30) == -signal.SIGTERM
    finally:
        gatekeep.stop()
        notify.close()
    assert gatekeep.problems() == []
