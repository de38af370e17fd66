"""
systemd integration, without systemd: socket activation (a listening socket passed
as descriptor 3 with LISTEN_FDS/LISTEN_PID), sd_notify to a NOTIFY_SOCKET the test
binds, graceful stop with a drain deadline, and --uid/--gid after binding.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from tests.integration.ops_support import EchoServer, exchange
from tests.integration.peers import Gatekeep, twistd
from tests.integration.process import PeerError, port_open, wait_until

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent

FORWARD = """\
drain_timeout = "{drain}"

[[listener]]
name = "public"
endpoint = "{endpoint}"
service = "edge"
detect_timeout = "200ms"

[service.edge]
default = "echo"

[[service.edge.route]]
name = "echo"
forward = {{ to = "tcp:127.0.0.1:{echo}" }}
"""


class Notifications:
    """A datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.received: list[str] = []

    def wait_for(self, prefix: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            for message in self.received:
                if message.startswith(prefix):
                    self.received.remove(message)
                    return message
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {prefix!r} notification; got {self.received}")
            self.sock.settimeout(left)
            try:
                self.received.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue

    def close(self) -> None:
        self.sock.close()


def test_socket_activation_and_notify(tmp_path: Path, echo: EchoServer) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    port = listening.getsockname()[1]
    notify = Notifications(tmp_path / "notify")
    config = tmp_path / "gatekeep.toml"
    config.write_text(FORWARD.format(drain="5s", endpoint="systemd:domain=INET:index=0",
                                     echo=echo.port))
    argv: list[str | Path] = [
        sys.executable, HERE / "sd_activate.py", str(listening.fileno()), "https", "--",
        twistd(), "-n", "--pidfile=", "gatekeep", "--config", config]
    gatekeep = Gatekeep(argv, tmp_path, ["public"], env={"NOTIFY_SOCKET": str(notify.path)},
                        pass_fds=[listening.fileno()])
    try:
        listening.close()  # only gatekeep holds the socket now, as with systemd
        assert gatekeep.address("public") == f"127.0.0.1:{port}"
        assert notify.wait_for("READY=1") == "READY=1\nSTATUS=listening: public"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as held:
            exchange(held, b"activated\n")
            # A reload keeps the inherited socket: it cannot be opened again.
            config.write_text(FORWARD.format(drain="5s", endpoint="systemd:domain=INET:index=0",
                                             echo=echo.port).replace('"echo"', '"echo2"'))
            mark = gatekeep.mark()
            os.kill(gatekeep.pid, signal.SIGHUP)
            assert notify.wait_for("RELOADING=1").split("\n")[1].startswith("MONOTONIC_USEC=")
            notify.wait_for("READY=1")
            gatekeep.log.wait_for(lambda line: "reload applied" in line, mark)
            with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
                exchange(fresh, b"after reload\n")
            gatekeep.connection(mark, route="echo2")
            exchange(held, b"old connection\n")
        os.kill(gatekeep.pid, signal.SIGTERM)
        assert notify.wait_for("STOPPING=1").startswith("STOPPING=1")
        assert gatekeep.proc.wait(20) == -signal.SIGTERM  # twistd re-raises the signal it got
    finally:
        gatekeep.stop()
        notify.close()
    assert gatekeep.problems() == []


def test_a_systemd_endpoint_without_systemd_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "gatekeep.toml"
    config.write_text(FORWARD.format(drain="1s", endpoint="systemd:domain=INET:index=0",
                                     echo=9))
    with pytest.raises(PeerError, match="cannot listen on systemd:domain=INET:index=0"):
        Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--config", config], tmp_path,
                 ["public"])


def start_forwarder(tmp_path: Path, echo: EchoServer, drain: str) -> Gatekeep:
    config = tmp_path / "gatekeep.toml"
    config.write_text(FORWARD.format(drain=drain, endpoint="tcp:0:interface=127.0.0.1",
                                     echo=echo.port))
    return Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--config", config], tmp_path,
                    ["public"])


def test_stop_drains_open_connections(tmp_path: Path, echo: EchoServer) -> None:
    gatekeep = start_forwarder(tmp_path, echo, drain="30s")
    port = gatekeep.port("public")
    try:
        held = socket.create_connection(("127.0.0.1", port), timeout=10)
        exchange(held, b"hello\n")
        mark = gatekeep.mark()
        os.kill(gatekeep.pid, signal.SIGTERM)
        gatekeep.log.wait_for(lambda line: "open connection(s) to finish" in line, mark)
        assert not port_open("127.0.0.1", port)  # no new connections ...
        exchange(held, b"still relayed while draining\n")  # ... the open one goes on
        assert gatekeep.proc.poll() is None
        started = time.monotonic()
        held.close()
        assert gatekeep.proc.wait(10) == -signal.SIGTERM  # twistd re-raises the signal it got
        assert time.monotonic() - started < 5  # it left when the last connection did
        gatekeep.connection(mark, close="done")
        assert "0 connection(s) closed at the drain deadline" in gatekeep.log.text(mark)
    finally:
        gatekeep.stop()


def test_drain_deadline_closes_what_is_left(tmp_path: Path, echo: EchoServer) -> None:
    gatekeep = start_forwarder(tmp_path, echo, drain="1500ms")
    try:
        held = socket.create_connection(("127.0.0.1", gatekeep.port("public")), timeout=10)
        exchange(held, b"hello\n")
        started = time.monotonic()
        os.kill(gatekeep.pid, signal.SIGTERM)
        # Closed by gatekeep at the deadline, as an abort (a reset, or EOF if the process
        # ended first): a peer that reads nothing must not hold it open.
        with contextlib.suppress(ConnectionResetError):
            assert held.recv(100) == b""
        took = time.monotonic() - started
        assert gatekeep.proc.wait(10) == -signal.SIGTERM  # twistd re-raises the signal it got
        assert 1.3 < took < 6, took
        assert "1 connection(s) closed at the drain deadline" in gatekeep.log.text()
        # The connection's own line says why it ended (an abort alone reads as a reset).
        assert "close=drain_timeout (1.5s) passed" in gatekeep.log.text()
        held.close()
    finally:
        gatekeep.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="binding a port below 1024 needs root")
def test_binds_as_root_then_runs_as_nobody(tmp_path: Path, echo: EchoServer) -> None:
    port = next(p for p in range(900, 1000) if _bindable(p))
    config = tmp_path / "gatekeep.toml"
    config.write_text(FORWARD.format(drain="1s", endpoint=f"tcp:{port}:interface=127.0.0.1",
                                     echo=echo.port))
    tmp_path.chmod(0o755)  # nobody reads nothing here, but may need to stat its cwd
    gatekeep = Gatekeep([twistd(), "-n", "--pidfile=", "--uid=nobody", "--gid=nogroup",
                         "gatekeep", "--config", config], tmp_path, ["public"])
    try:
        assert gatekeep.port("public") == port

        def dropped() -> bool:
            status = Path(f"/proc/{gatekeep.pid}/status").read_text()
            uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
            return uid.split()[1:] == ["65534"] * 4
        wait_until(dropped, 10, "gatekeep to run as nobody")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            exchange(sock, b"unprivileged\n")
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
