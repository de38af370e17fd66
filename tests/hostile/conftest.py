"""The hostile suite's processes never outlive their module, even after a failed set-up."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.harness import stop_leftovers


@pytest.fixture(autouse=True, scope="module")
def _stop_leftover_backends() -> Iterator[None]:
    yield
    stop_leftovers()
