"""When the relay may take the splice fast path: platform, config and environment."""

from __future__ import annotations

import os

import pytest
from twisted.internet.testing import StringTransport

from gatekeep import splice


@pytest.fixture(autouse=True)
def _restore() -> object:
    yield
    splice.configure(True)


@pytest.mark.skipif(not splice.AVAILABLE, reason="splice(2) is Linux-only")
def test_enabled_by_default_and_switched_off_by_config_or_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEKEEP_SPLICE", raising=False)
    assert splice.enabled()
    splice.configure(False)
    assert not splice.enabled()
    splice.configure(True)
    for value in ("0", "off", "no", "false", " OFF "):
        monkeypatch.setenv("GATEKEEP_SPLICE", value)
        splice.configure(True)  # the environment is read when the config is applied
        assert not splice.enabled(), value
    monkeypatch.setenv("GATEKEEP_SPLICE", "1")
    assert not splice.enabled()  # not per connection
    splice.configure(True)
    assert splice.enabled()


def test_never_enabled_without_splice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splice, "AVAILABLE", False)
    assert not splice.enabled()


def test_only_bare_socket_transports_are_usable() -> None:
    # Test doubles, TLS and other wrapped transports are not sockets we may splice.
    assert not splice.usable(StringTransport())
    assert not splice.usable(object())


def test_pipe_pool_keeps_a_few_spare_pipes() -> None:
    pool = splice._PipePool(spare=1)
    first, second = pool.take(), pool.take()
    pool.give(first)
    pool.give(second)  # beyond the spare count: closed
    assert pool.free == [first]
    with pytest.raises(OSError):
        os.fstat(second[0])
    assert pool.take() == first
    for fd in first:
        os.close(fd)
