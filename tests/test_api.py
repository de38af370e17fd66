"""The public API promised to plugin authors, and the providers gatekeep ships."""

from __future__ import annotations

import subprocess
import sys

from zope.interface.verify import verifyClass, verifyObject

import gatekeep
import gatekeep.interfaces
import gatekeep.values
from gatekeep.interfaces import IDetector, IInboundReceiver, ITarget
from gatekeep.registry import load_registry


def test_public_names_are_pinned() -> None:
    assert sorted(gatekeep.interfaces.__all__) == [
        "IAccessRule", "IDetector", "IInboundReceiver", "IShaper", "ITarget"]
    assert sorted(gatekeep.values.__all__) == [
        "Condition", "ConnectionRecord", "Decision", "FactValue", "Inbound", "Match",
        "NeedMore", "NoMatch", "Route", "Service", "Verdict"]
    assert gatekeep.__all__ == ["__version__"]


def test_builtins_register_through_entry_points() -> None:
    registry = load_registry()
    assert registry.problems == []
    assert {"tls", "xmpp", "http", "ssh"} <= set(registry.detectors)
    assert {"forward", "respond", "reject", "app"} <= set(registry.targets)
    for name, detector in registry.detectors.items():
        assert verifyObject(IDetector, detector)
        assert detector.name == name
    for factory in registry.targets.values():
        assert isinstance(factory, type)
        assert verifyClass(ITarget, factory)


def test_demo_protocols_receive_inbound() -> None:
    from gatekeep.demo import backends

    for make in (backends.http_backend, backends.xmpp_backend, backends.ssh_backend):
        assert verifyObject(IInboundReceiver, make().buildProtocol(None))
    assert verifyObject(IInboundReceiver, backends.tls_backend().buildProtocol(None))


def test_twistd_plugin_file_imports_lazily() -> None:
    code = (
        "import sys, runpy; runpy.run_path('twisted/plugins/gatekeep_plugin.py');"
        "print(sorted(m for m in sys.modules if m.startswith('gatekeep')))"
    )
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
