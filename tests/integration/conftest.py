"""
Fixtures for the real-peer tests.

The peers (Prosody, nginx, sshd, the banner server) are started once per test
session, on first use, and stopped by PID at the end; each test module starts its
own gatekeep in front of them with its own config (:func:`gatekeep_runner`).
Every file they write lives under pytest's tmp dir.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from tests.integration.certs import Certificate, make_certificate
from tests.integration.clients import require
from tests.integration.ops_support import EchoServer
from tests.integration.peers import (
    BannerServer,
    Gatekeep,
    HTTPEcho,
    Prosody,
    Sshd,
    Web,
    start_banner_server,
    start_gatekeep,
    start_http_echo,
    start_prosody,
    start_sshd,
    start_web,
)
from tests.integration.process import PeerError
from tests.integration.tornet import OfflineTor, Tornet, start_offline_tor, start_tornet

GatekeepRunner = Callable[[str, list[str]], Gatekeep]
T = TypeVar("T")


def _started(start: Callable[[], T], attempts: int = 3) -> T:
    """
    Start a peer on ports picked free just before; try again with new ports if it
    failed (another process may have taken one in between).
    """
    for attempt in range(attempts):
        try:
            return start()
        except PeerError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def peers_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("peers")


@pytest.fixture(scope="session")
def certificate(peers_dir: Path) -> Certificate:
    return make_certificate(peers_dir / "certs")


@pytest.fixture(scope="session")
def prosody(peers_dir: Path, certificate: Certificate) -> Iterator[Prosody]:
    require("prosody")
    require("prosodyctl")
    started = _started(lambda: start_prosody(peers_dir / "prosody", certificate))
    yield started
    started.peer.stop()


@pytest.fixture(scope="session")
def web(peers_dir: Path, certificate: Certificate) -> Iterator[Web]:
    require("nginx")
    started = _started(lambda: start_web(peers_dir / "web", certificate))
    yield started
    started.peer.stop()


@pytest.fixture(scope="session")
def sshd(peers_dir: Path) -> Iterator[Sshd]:
    if not Path("/usr/sbin/sshd").exists():
        require("sshd")  # skips or fails with the usual message
    require("ssh-keygen")
    if os.geteuid() != 0:
        pytest.skip("sshd needs root (its privilege separation)")
    started = _started(lambda: start_sshd(peers_dir / "sshd"))
    yield started
    started.peer.stop()


@pytest.fixture(scope="session")
def banner_server(peers_dir: Path) -> Iterator[BannerServer]:
    started = start_banner_server(peers_dir / "banner")
    yield started
    started.peer.stop()


@pytest.fixture(scope="session")
def http_echo(peers_dir: Path) -> Iterator[HTTPEcho]:
    """An HTTP/1.1 backend echoing raw request heads (and a WebSocket echo on /ws)."""
    started = start_http_echo(peers_dir / "http-echo")
    yield started
    started.peer.stop()


@pytest.fixture(scope="session")
def tornet(peers_dir: Path) -> Iterator[Tornet]:
    """A private Tor network on loopback, shared by the session (15-40 s to start)."""
    require("tor")
    require("tor-gencert")
    attempts = iter(range(3))
    started = _started(lambda: start_tornet(peers_dir / f"tornet{next(attempts)}"))
    yield started
    started.stop()


@pytest.fixture(scope="module")
def offline_tor(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineTor]:
    """A tor with DisableNetwork 1: its control port works, it never goes online."""
    require("tor")
    root = tmp_path_factory.mktemp("offline-tor")
    attempts = iter(range(3))
    started = _started(lambda: start_offline_tor(root / str(next(attempts))))
    yield started
    started.peer.stop()



@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """A threaded TCP echo backend on 127.0.0.1, stopped after the test."""
    server = EchoServer()
    yield server
    server.stop()

@pytest.fixture(scope="module")
def gatekeep_runner(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest,
) -> Iterator[GatekeepRunner]:
    """
    Start gatekeep with a config text and wait for the named listeners; stop it after
    the module. A traceback or an error event in its log fails the module's teardown.
    """
    started: list[Gatekeep] = []
    base = tmp_path_factory.mktemp(f"gatekeep-{request.module.__name__.rpartition('.')[2]}")

    def runner(config: str, listeners: list[str]) -> Gatekeep:
        gatekeep = start_gatekeep(base / str(len(started)), config, listeners)
        started.append(gatekeep)
        return gatekeep

    yield runner
    problems: list[str] = []
    for gatekeep in started:
        gatekeep.stop()
        problems += gatekeep.problems()
    assert not problems, "gatekeep logged errors:\n" + "\n".join(problems)
