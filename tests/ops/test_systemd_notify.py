"""sd_notify against a NOTIFY_SOCKET the test binds itself."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gatekeep import systemd


def bound(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path if not path.startswith("@") else "\0" + path[1:])
    sock.settimeout(5)
    return sock


def test_ready_reaches_a_path_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    with bound(path) as sock:
        assert systemd.notify("READY=1\nSTATUS=ok", {"NOTIFY_SOCKET": path})
        assert sock.recv(4096) == b"READY=1\nSTATUS=ok"


def test_abstract_socket(tmp_path: Path) -> None:
    name = f"@gatekeep-test-{tmp_path.name}"
    with bound(name) as sock:
        assert systemd.notify("STOPPING=1", {"NOTIFY_SOCKET": name})
        assert sock.recv(4096) == b"STOPPING=1"


def test_without_systemd_nothing_happens() -> None:
    assert not systemd.notify("READY=1", {})
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": "vsock:2:1234"})


def test_a_missing_socket_is_logged_not_raised(tmp_path: Path) -> None:
    assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "gone")})


def test_reloading_message_has_a_monotonic_timestamp() -> None:
    first, second = systemd.reloading_message().split("\n")
    assert first == "RELOADING=1"
    key, _, usec = second.partition("=")
    assert key == "MONOTONIC_USEC" and int(usec) > 0


@pytest.fixture(autouse=True)
def _no_real_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
