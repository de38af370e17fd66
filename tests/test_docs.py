"""docs/ stays in step with the code."""

from __future__ import annotations

from pathlib import Path

from gatekeep.config.reference import reference

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_config_reference_is_current() -> None:
    committed = (DOCS / "config-reference.md").read_text(encoding="utf-8")
    assert committed == reference(), (
        "docs/config-reference.md is stale: run "
        "`python -m gatekeep.config.reference > docs/config-reference.md`")


def test_every_detector_has_a_page() -> None:
    from gatekeep.registry import load_registry

    for name in load_registry().detectors:
        assert (DOCS / "detectors" / f"{name}.md").is_file(), name
