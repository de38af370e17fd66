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


def test_docs_site_builds_without_warnings(tmp_path: Path) -> None:
    """`mkdocs build --strict`: broken links, anchors and pages missing from nav fail."""
    import subprocess
    import sys

    root = DOCS.parent
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=root, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "operations" / "index.html").is_file()
    assert (tmp_path / "config-reference" / "index.html").is_file()
