"""
The plugin registry and the example configs, in-process (no venvs: see test_packaging).

Broken plugins must be reported loudly, naming the distribution that ships them: an
error where a config uses them, a warning where it does not. Entry points are built
by hand here (``importlib.metadata.EntryPoint``), or read from a distribution's
metadata written to a temporary directory, which is how an installed one is found.
"""

from __future__ import annotations

import re
import textwrap
import tomllib
from collections.abc import Callable
from importlib.metadata import EntryPoint, distributions, entry_points
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.protocol import Protocol
from zope.interface import implementer
from zope.interface.verify import verifyClass, verifyObject

import gatekeep.cli
from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.interfaces import IDetector, ITarget
from gatekeep.registry import DETECTORS, TARGETS, Registry, load_registry
from gatekeep.routing import select_route
from gatekeep.sniff import run_detectors
from gatekeep.values import Inbound, Match, NeedMore, NoMatch, Verdict

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MQTT_PLUGIN = EXAMPLES / "mqtt-detector"
EXAMPLE_CONFIGS = sorted(EXAMPLES.glob("*.toml"))

#: mosquitto_pub -V mqttv311 -i gk-sensor-1 (see the example's own tests)
MQTT311 = bytes.fromhex("101700044d5154540402003c000b676b2d73656e736f722d31")
MQTT31 = bytes.fromhex("101900064d51497364700302003c000b676b2d73656e736f722d31")
#: MQTT 5, no properties, client id "sensor-01"
MQTT5_SENSOR = b"\x10\x16\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x09sensor-01"


# Plugins for the registry to load, named by entry points like "tests.test_plugins:X".


@implementer(IDetector)
class GoodDetector:
    name = "good"
    max_prefix = 4

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        if not b"GOOD".startswith(prefix[:4]):
            return NoMatch("not GOOD")
        if len(prefix) < 4:
            return NeedMore()
        return Match(facts={"magic": "GOOD"})


@implementer(IDetector)
class SecondGoodDetector(GoodDetector):
    """Another distribution's detector that also calls itself "good"."""


class UndeclaredDetector:
    """Has everything IDetector asks for, but does not declare that it provides it."""

    name = "undeclared"
    max_prefix = 4

    def detect(self, prefix: bytes) -> Match | NoMatch | NeedMore:
        return NoMatch()


@implementer(IDetector)
class MisnamedDetector(GoodDetector):
    name = "not-its-entry-point"


@implementer(IDetector)
class ZeroPrefixDetector(GoodDetector):
    name = "zero"
    max_prefix = 0


@implementer(IDetector)
class BadFactsDetector(GoodDetector):
    name = "badfacts"
    facts = "level"  # a string, not a tuple of names


@implementer(IDetector)
class RaisingDetector(GoodDetector):
    name = "raising"

    def __init__(self) -> None:
        raise RuntimeError("cannot start: missing licence file")


@implementer(ITarget)
class GoodTarget:
    def __init__(self, label: str = "good") -> None:
        self.label = label

    def attach(self, inbound: Inbound) -> Protocol:
        return Protocol()

    def describe(self) -> str:
        return f"good target {self.label}"


class NotATarget:
    """A target class that forgot ``@implementer(ITarget)``."""

    def attach(self, inbound: Inbound) -> Protocol:
        return Protocol()

    def describe(self) -> str:
        return "not a target"


def not_a_target_factory(**options: Any) -> object:
    """A factory function (verified only once it has built something) that builds junk."""
    return object()


NOT_CALLABLE = 42


def ep(name: str, attribute: str, group: str = DETECTORS) -> EntryPoint:
    """An entry point naming ``attribute`` of this module."""
    return EntryPoint(name=name, value=f"{__name__}:{attribute}", group=group)


GOOD = ep("good", "GoodDetector")
GOOD_TARGET = ep("good", "GoodTarget", TARGETS)
FORWARD = EntryPoint("forward", "gatekeep.targets.forward:ForwardTarget", TARGETS)


def only_problem(registry: Registry) -> str:
    assert len(registry.problems) == 1, registry.problems
    return str(registry.problems[0])


# The registry, one kind of breakage at a time.


def test_good_plugins_load() -> None:
    registry = load_registry([GOOD, GOOD_TARGET])
    assert registry.problems == []
    assert isinstance(registry.detectors["good"], GoodDetector)
    assert registry.targets["good"] is GoodTarget


def test_detector_is_instantiated_once() -> None:
    registry = load_registry([GOOD])
    assert registry.detectors["good"] is registry.detectors["good"]
    assert verifyObject(IDetector, registry.detectors["good"])


def test_detector_module_missing() -> None:
    registry = load_registry([EntryPoint("gone", "gatekeep_no_such_module:Detector", DETECTORS),
                              GOOD])
    assert list(registry.detectors) == ["good"]
    problem = registry.problem(DETECTORS, "gone")
    assert problem is not None
    assert "ModuleNotFoundError" in problem.message
    assert "gatekeep_no_such_module" in problem.message
    assert "plugin 'gone' (gatekeep.detectors)" in str(problem)


def test_detector_import_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gk_test_raises_on_import.py").write_text(
        "raise RuntimeError('this plugin needs libfoo >= 2')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = load_registry([EntryPoint("foo", "gk_test_raises_on_import:Foo", DETECTORS)])
    assert registry.detectors == {}
    assert "RuntimeError: this plugin needs libfoo >= 2" in only_problem(registry)


def test_detector_attribute_missing() -> None:
    registry = load_registry([ep("good", "NoSuchClass")])
    assert registry.detectors == {}
    assert "AttributeError" in only_problem(registry)


def test_detector_not_providing_idetector() -> None:
    registry = load_registry([ep("undeclared", "UndeclaredDetector")])
    assert registry.detectors == {}
    message = only_problem(registry)
    assert "DoesNotImplement" in message
    assert "IDetector" in message


def test_detector_lacking_detect(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixture distribution that test_packaging installs, loaded from source.
    monkeypatch.syspath_prepend(str(ROOT / "tests/fixtures/plugins/broken-detector"))
    registry = load_registry([EntryPoint("broken", "broken_detector:BrokenDetector",
                                         DETECTORS)])
    message = only_problem(registry)
    assert "BrokenImplementation" in message
    assert "detect" in message


def test_detector_name_mismatch() -> None:
    registry = load_registry([ep("misnamed", "MisnamedDetector")])
    assert registry.detectors == {}
    assert ("its name is 'not-its-entry-point' but its entry point is 'misnamed'"
            in only_problem(registry))


def test_detector_bad_max_prefix() -> None:
    registry = load_registry([ep("zero", "ZeroPrefixDetector")])
    assert "max_prefix must be a positive int, not 0" in only_problem(registry)


def test_detector_bad_facts() -> None:
    registry = load_registry([ep("badfacts", "BadFactsDetector")])
    assert "facts must be a tuple of fact names, not 'level'" in only_problem(registry)


def test_detector_constructor_raises() -> None:
    registry = load_registry([ep("raising", "RaisingDetector")])
    assert "RuntimeError: cannot start: missing licence file" in only_problem(registry)


def test_duplicate_name_keeps_the_first() -> None:
    registry = load_registry([GOOD, ep("good", "SecondGoodDetector")])
    assert isinstance(registry.detectors["good"], GoodDetector)
    assert "another plugin already registered this name" in only_problem(registry)


def test_same_name_in_two_groups_is_no_duplicate() -> None:
    registry = load_registry([GOOD, GOOD_TARGET])
    assert registry.problems == []


def test_target_class_not_providing_itarget() -> None:
    registry = load_registry([ep("junk", "NotATarget", TARGETS), FORWARD])
    assert list(registry.targets) == ["forward"]
    message = only_problem(registry)
    assert "plugin 'junk' (gatekeep.targets)" in message
    assert "DoesNotImplement" in message and "ITarget" in message


def test_target_not_callable() -> None:
    registry = load_registry([ep("junk", "NOT_CALLABLE", TARGETS)])
    assert "must name a class or a callable" in only_problem(registry)


def test_other_groups_are_ignored() -> None:
    registry = load_registry([ep("x", "NoSuchThing", "console_scripts"), GOOD])
    assert registry.problems == []
    assert list(registry.detectors) == ["good"]


def test_entry_points_without_a_distribution() -> None:
    registry = load_registry([ep("undeclared", "UndeclaredDetector")])
    assert "from distribution 'unknown distribution'" in only_problem(registry)


# Through a config: an error where the plugin is used, a warning where it is not.

CONFIG = """
[[listener]]
name = "public"
endpoint = "tcp:8443"
service = "edge"

[service.edge]
default = "other"

[[service.edge.route]]
name = "plugin"
match.{detector} = {{}}
{action} = {{ {options} }}

[[service.edge.route]]
name = "other"
match.tls = {{}}
forward = {{ to = "tcp:127.0.0.1:8080" }}
"""


def config(detector: str = "tls", action: str = "forward",
           options: str = 'to = "tcp:127.0.0.1:8081"') -> str:
    return CONFIG.format(detector=detector, action=action, options=options)


TLS = EntryPoint("tls", "gatekeep.detectors.tls:TLSDetector", DETECTORS)
BROKEN = ep("broken", "UndeclaredDetector")


def test_config_using_a_broken_detector_is_an_error() -> None:
    registry = load_registry([TLS, FORWARD, BROKEN])
    with pytest.raises(ConfigErrors) as caught:
        load_config(config(detector="broken"), registry)
    (error,) = caught.value.errors
    assert error.path == "service.edge.route[0].match.broken"
    assert "plugin 'broken' (gatekeep.detectors)" in error.message
    assert "DoesNotImplement" in error.message
    assert error.fix == "fix or uninstall that plugin"


def test_config_not_using_a_broken_detector_warns() -> None:
    registry = load_registry([TLS, FORWARD, BROKEN])
    loaded = load_config(config(), registry)
    (warning,) = loaded.warnings
    assert "plugin 'broken' (gatekeep.detectors)" in warning
    assert "DoesNotImplement" in warning


def test_config_not_using_a_broken_target_warns() -> None:
    registry = load_registry([TLS, FORWARD, ep("junk", "NotATarget", TARGETS)])
    loaded = load_config(config(), registry)
    (warning,) = loaded.warnings
    assert "plugin 'junk' (gatekeep.targets)" in warning


def test_config_using_a_broken_target_names_it() -> None:
    registry = load_registry([TLS, FORWARD, ep("junk", "NotATarget", TARGETS)])
    with pytest.raises(ConfigErrors) as caught:
        load_config(config(action="junk", options=""), registry)
    assert "plugin 'junk' (gatekeep.targets)" in caught.value.render()


def test_config_with_a_factory_building_junk_is_an_error() -> None:
    registry = load_registry([TLS, FORWARD, ep("junk", "not_a_target_factory", TARGETS)])
    with pytest.raises(ConfigErrors) as caught:
        load_config(config(action="junk", options=""), registry)
    (error,) = caught.value.errors
    assert error.path == "service.edge.route[0].junk"
    assert "target plugin 'junk' does not provide ITarget" in error.message


def test_plugin_target_gets_its_options() -> None:
    registry = load_registry([TLS, FORWARD, GOOD_TARGET])
    loaded = load_config(config(action="good", options='label = "x"'), registry)
    route = loaded.services["edge"].routes[0]
    assert isinstance(route.target, GoodTarget)
    assert route.target.describe() == "good target x"


def test_config_using_a_duplicated_detector_name_is_not_silent() -> None:
    registry = load_registry([TLS, FORWARD, GOOD, ep("good", "SecondGoodDetector")])
    assert registry.problem(DETECTORS, "good") is not None
    try:
        loaded = load_config(config(detector="good"), registry)
    except ConfigErrors as errors:
        assert "another plugin already registered this name" in errors.render()
    else:
        assert any("already registered" in warning for warning in loaded.warnings)


# Distributions on disk, found by the real entry-point scan (as pip would install them).


def write_distribution(root: Path, name: str, eps: str, modules: dict[str, str]) -> None:
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(eps))


BROKEN_IMPORT = """
    from gatekeep.interfaces import IDetector
    from gatekeep.no_such_api import Helper   # written for a newer gatekeep
"""


@pytest.fixture
def broken_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    write_distribution(
        tmp_path, "gatekeep-acme-detector",
        "[gatekeep.detectors]\nacme = gk_test_acme_detector:AcmeDetector\n",
        {"gk_test_acme_detector": BROKEN_IMPORT})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_distribution_is_named(broken_distribution: Path) -> None:
    (dist,) = distributions(path=[str(broken_distribution)])
    registry = load_registry(dist.entry_points)
    message = only_problem(registry)
    assert "plugin 'acme' (gatekeep.detectors) from distribution 'gatekeep-acme-detector'" \
        in message
    assert "No module named 'gatekeep.no_such_api'" in message


def test_installed_broken_plugin_found_by_the_real_scan(broken_distribution: Path) -> None:
    registry = load_registry()
    problem = registry.problem(DETECTORS, "acme")
    assert problem is not None
    assert problem.distribution == "gatekeep-acme-detector"


@pytest.fixture
def write_config(tmp_path: Path) -> Callable[[str], str]:
    def write(text: str) -> str:
        path = tmp_path / "gatekeep.toml"
        path.write_text(text)
        return str(path)

    return write


def test_check_using_a_broken_plugin_exits_1(
    broken_distribution: Path, write_config: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gatekeep.cli.main(["check", write_config(config(detector="acme"))]) == 1
    err = capsys.readouterr().err
    assert "service.edge.route[0].match.acme: plugin 'acme'" in err
    assert "from distribution 'gatekeep-acme-detector' is broken" in err
    assert "ModuleNotFoundError" in err


def test_check_not_using_a_broken_plugin_warns(
    broken_distribution: Path, write_config: Callable[[str], str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert gatekeep.cli.main(["check", write_config(config())]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^warning: plugin 'acme' \(gatekeep\.detectors\) from distribution "
                     r"'gatekeep-acme-detector' is broken: ModuleNotFoundError", out, re.M)


# gatekeep's own plugins, found through the real entry points.


def builtin(group: str) -> list[EntryPoint]:
    found = [e for e in entry_points(group=group) if e.dist is not None
             and e.dist.name == "gatekeep"]
    return sorted(found, key=lambda e: e.name)


def test_builtins_are_registered() -> None:
    assert {"tls", "xmpp", "http", "ssh"} <= {e.name for e in builtin(DETECTORS)}
    assert {"forward", "respond", "reject", "app"} <= {e.name for e in builtin(TARGETS)}


@pytest.mark.parametrize("entry", builtin(DETECTORS), ids=lambda e: e.name)
def test_builtin_detector_provides_idetector(entry: EntryPoint) -> None:
    registry = load_registry([entry])
    assert registry.problems == []
    detector = registry.detectors[entry.name]
    assert verifyObject(IDetector, detector)
    assert detector.name == entry.name
    # Pure and total: garbage and the empty prefix get one of the three answers.
    for prefix in (b"", b"\x00", b"\xff" * 64, b"GET / HTTP/1.1\r\n\r\n"):
        assert isinstance(detector.detect(prefix), Match | NoMatch | NeedMore)


#: A table of options for each built-in target, to build one and verify the object.
TARGET_OPTIONS: dict[str, str] = {
    "forward": 'to = "tcp:127.0.0.1:8080"',
    "respond": 'data = "hello"',
    "reject": "",
    "app": 'factory = "hello_web:make_site"',
    "terminate": f'certificates = "{Path(__file__).parent / "fixtures" / "tls"}", '
                 'service = "inner"',
}
#: Services some targets hand connections on to.
INNER = """
[service.inner]

[[service.inner.route]]
name = "inner"
forward = { to = "tcp:127.0.0.1:8082" }
"""


@pytest.mark.parametrize("entry", builtin(TARGETS), ids=lambda e: e.name)
def test_builtin_target_provides_itarget(
    entry: EntryPoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # for hello_web
    # Routes need a detector, and the sample config a forward target beside it.
    registry = load_registry([entry, TLS, *([FORWARD] if entry.name != "forward" else [])])
    assert registry.problems == []
    factory = registry.targets[entry.name]
    if isinstance(factory, type):
        assert verifyClass(ITarget, factory)
    assert entry.name in TARGET_OPTIONS, f"add sample options for target {entry.name!r}"
    loaded = load_config(
        config(action=entry.name, options=TARGET_OPTIONS[entry.name]) + INNER, registry)
    target = loaded.services["edge"].routes[0].target
    assert verifyObject(ITarget, target)
    assert isinstance(target.describe(), str)


# The example configs: each passes `gatekeep check`.


@pytest.fixture
def mqtt_registry(monkeypatch: pytest.MonkeyPatch) -> Registry:
    """The installed plugins plus the example MQTT detector, loaded from its source."""
    monkeypatch.syspath_prepend(str(MQTT_PLUGIN))
    mqtt = EntryPoint("mqtt", "gatekeep_mqtt:MQTTDetector", DETECTORS)
    registry = load_registry([*entry_points(group=DETECTORS), *entry_points(group=TARGETS),
                              mqtt])
    assert registry.problem(DETECTORS, "mqtt") is None
    return registry


def route_names(path: Path) -> list[str]:
    data = tomllib.loads(path.read_text())
    return [route["name"] for service in data["service"].values()
            for route in service["route"]]


@pytest.mark.parametrize("path", EXAMPLE_CONFIGS, ids=lambda p: p.name)
def test_example_config_checks(
    path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLES))  # in-process-app.toml imports hello_web
    if "match.mqtt" in path.read_text():
        registry = request.getfixturevalue("mqtt_registry")
        monkeypatch.setattr(gatekeep.cli, "load_registry", lambda: registry)
    status = gatekeep.cli.main(["check", str(path)])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert out.startswith(f"{path}: OK\n")
    assert "warning:" not in out
    for name in route_names(path):
        assert re.search(rf"^    \d+\. {re.escape(name)} ", out, re.M), name


def test_example_configs_exist() -> None:
    names = {path.name for path in EXAMPLE_CONFIGS}
    assert {"website-and-xmpp.toml", "mqtt.toml", "multi-listener.toml",
            "in-process-app.toml"} <= names


def test_mqtt_example_needs_the_plugin(capsys: pytest.CaptureFixture[str]) -> None:
    registry = load_registry([*entry_points(group=DETECTORS), *entry_points(group=TARGETS)])
    if "mqtt" in registry.detectors:
        pytest.skip("the example MQTT plugin is installed in this environment")
    assert gatekeep.cli.main(["check", str(EXAMPLES / "mqtt.toml")]) == 1
    assert "match.mqtt: unknown detector 'mqtt'" in capsys.readouterr().err


def test_mqtt_plugin_fact_keys_are_checked(mqtt_registry: Registry) -> None:
    text = (EXAMPLES / "mqtt.toml").read_text().replace("level = [4, 5]", "levle = [4, 5]")
    with pytest.raises(ConfigErrors) as caught:
        load_config(text, mqtt_registry)
    (error,) = caught.value.errors
    assert error.path == "service.iot.route[1].match.mqtt.levle"
    assert "did you mean 'level'" in error.fix


@pytest.mark.parametrize(
    ("data", "route"),
    [
        (MQTT311, "broker"),
        (MQTT5_SENSOR, "lab-sensors"),
        (MQTT31, "mqtt-3.1"),
    ],
    ids=["3.1.1", "5-sensor", "3.1"],
)
def test_mqtt_example_routes(mqtt_registry: Registry, data: bytes, route: str) -> None:
    """The plugin's facts select the example's routes, split any way."""
    loaded = load_config((EXAMPLES / "mqtt.toml").read_text(), mqtt_registry)
    service = loaded.services["iot"]
    detectors = {name: mqtt_registry.detectors[name] for name in ("mqtt", "tls")}
    for size in range(len(data) + 1):
        verdicts: dict[str, Verdict] = {}
        run_detectors(detectors, data[:size], verdicts, final=False)
        selection = select_route(service, verdicts, final=False)
        if size < len(data):
            assert selection.waiting, size
        else:
            assert selection.route is not None
            assert selection.route.name == route


def test_mqtt_example_explain(
    mqtt_registry: Registry, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(gatekeep.cli, "load_registry", lambda: mqtt_registry)
    status = gatekeep.cli.main(["explain", str(EXAMPLES / "mqtt.toml"), "--listener", "mqtt",
                                "hex:" + MQTT311.hex()])
    out = capsys.readouterr().out
    assert status == 0
    assert re.search(r"\bmqtt +match   protocol_name=MQTT level=4 client_id=gk-sensor-1", out)
    assert "result: route broker -> forward to tcp:127.0.0.1:11883" in out
