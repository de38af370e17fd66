"""
The example third-party rule (examples/geoip-rule), loaded in-process through an
entry point as an installed distribution's would be (test_packaging installs it).
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

import gatekeep.cli
from gatekeep import metrics
from gatekeep.config.loader import load_config_file
from gatekeep.guard import Guard, GuardState
from gatekeep.registry import DETECTORS, RULES, TARGETS, Registry, load_registry
from gatekeep.sniff import ListenerRuntime, SniffingFactory

ROOT = Path(__file__).resolve().parent.parent.parent
PLUGIN = ROOT / "examples" / "geoip-rule"
CONFIG = PLUGIN / "geoip.toml"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    monkeypatch.syspath_prepend(str(PLUGIN))
    monkeypatch.chdir(ROOT)  # the example names its database relative to the checkout
    geoip = EntryPoint("geoip", "gatekeep_geoip:CountryRule", RULES)
    found = load_registry([*entry_points(group=DETECTORS), *entry_points(group=TARGETS),
                           *entry_points(group=RULES), geoip])
    assert found.problems == []
    monkeypatch.setattr(gatekeep.cli, "load_registry", lambda: found)
    return found


def test_check_shows_the_plugin_rule(registry: Registry,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert gatekeep.cli.main(["check", str(CONFIG)]) == 0
    out = capsys.readouterr().out
    assert ("access europe: countries (5 networks from examples/geoip-rule/countries.csv): "
            "allow DE,FR; otherwise deny") in out


def test_the_chain_asks_it(registry: Registry) -> None:
    config = load_config_file(CONFIG, registry)
    listener = config.listeners[0]
    clock = Clock()
    guard = Guard("public", GuardState("public", clock), clock,
                  access=config.access[listener.access])  # type: ignore[index]
    runtime = ListenerRuntime.build("public", config.services["web"], registry.detectors, 5.0,
                                    clock, guard=guard)
    factory = SniffingFactory(runtime)
    before = metrics.value("gatekeep_refusals_total", listener="public", reason="access:europe")
    outcomes = {}
    for host in ("192.0.2.1", "198.51.100.1", "203.0.113.1", "10.0.0.1"):
        transport = StringTransport(peerAddress=IPv4Address("TCP", host, 1))
        protocol = factory.buildProtocol(transport.getPeer())
        assert protocol is not None
        protocol.makeConnection(transport)
        assert protocol.record is not None
        outcomes[host] = (protocol.record.close_reason or "").startswith("refused")
    assert outcomes == {"192.0.2.1": False, "198.51.100.1": False, "203.0.113.1": True,
                        "10.0.0.1": True}
    assert metrics.value("gatekeep_refusals_total", listener="public",
                         reason="access:europe") == before + 2


def test_without_the_plugin_check_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    registry = load_registry([*entry_points(group=DETECTORS), *entry_points(group=TARGETS)])
    if "geoip" in registry.rules:
        pytest.skip("the example GeoIP plugin is installed in this environment")
    assert gatekeep.cli.main(["check", str(CONFIG)]) == 1
    assert "access.europe.kind: unknown kind 'geoip'" in capsys.readouterr().err
