"""twistd gatekeep raises its open-file limit: every relayed connection costs two."""

from __future__ import annotations

import resource

import pytest

from gatekeep.tap import FD_CEILING, raise_fd_limit


def fake_limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> dict[str, object]:
    limits: dict[str, object] = {"now": (soft, hard)}
    monkeypatch.setattr(resource, "getrlimit", lambda which: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda which, value: limits.update(now=value))
    return limits


def test_soft_limit_raised_to_the_hard_one(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = fake_limits(monkeypatch, 1024, 4096)
    assert raise_fd_limit() == (1024, 4096)
    assert limits["now"] == (4096, 4096)
    assert raise_fd_limit() == (4096, 4096)


def test_unlimited_hard_limit_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    limits = fake_limits(monkeypatch, 1024, resource.RLIM_INFINITY)
    assert raise_fd_limit() == (1024, FD_CEILING)
    assert limits["now"] == (FD_CEILING, resource.RLIM_INFINITY)
