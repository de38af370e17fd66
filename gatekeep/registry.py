"""
Plugins from entry points, verified loudly.

Built-in detectors and targets register through gatekeep's own entry points, so
they are loaded exactly like third-party ones. A plugin that fails to import, to
build, or to provide its interface is reported with the distribution that ships
it; it only stops gatekeep when a config actually uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyClass, verifyObject

from gatekeep.interfaces import IAccessRule, IDetector, IShaper, ITarget

__all__ = [
    "DETECTORS",
    "RULES",
    "SHAPERS",
    "TARGETS",
    "PluginProblem",
    "Registry",
    "load_registry",
]

DETECTORS = "gatekeep.detectors"
TARGETS = "gatekeep.targets"
RULES = "gatekeep.rules"
SHAPERS = "gatekeep.shapers"

#: gatekeep's own rule and shaper kinds, also registered as entry points in its
#: setup.cfg. An editable install made before they existed has stale entry-point
#: metadata; these fill the gap so built-ins are always there.
_BUILTIN = {
    RULES: {"cidr": "gatekeep.rules.cidr:CIDRRule"},
    SHAPERS: {"bucket": "gatekeep.shapers.bucket:TokenBucket"},
}


@attrs.frozen
class PluginProblem:
    """A plugin that could not be used, and which distribution shipped it."""

    group: str
    name: str
    distribution: str
    message: str

    def __str__(self) -> str:
        return (
            f"plugin {self.name!r} ({self.group}) from distribution "
            f"{self.distribution!r} is broken: {self.message}"
        )


@attrs.define
class Registry:
    """The detectors, target factories, rule kinds and shaper kinds available to configs."""

    detectors: dict[str, IDetector] = attrs.field(factory=dict)
    targets: dict[str, Callable[..., ITarget]] = attrs.field(factory=dict)
    rules: dict[str, Callable[..., IAccessRule]] = attrs.field(factory=dict)
    shapers: dict[str, Callable[..., IShaper]] = attrs.field(factory=dict)
    problems: list[PluginProblem] = attrs.field(factory=list)

    def problem(self, group: str, name: str) -> PluginProblem | None:
        for problem in self.problems:
            if problem.group == group and problem.name == name:
                return problem
        return None


def _distribution(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    return getattr(dist, "name", None) or "unknown distribution"


def _load_detector(ep: EntryPoint) -> IDetector:
    factory = ep.load()
    detector = factory()
    verifyObject(IDetector, detector)
    if detector.name != ep.name:
        raise Invalid(f"its name is {detector.name!r} but its entry point is {ep.name!r}")
    max_prefix = detector.max_prefix
    if not isinstance(max_prefix, int) or isinstance(max_prefix, bool) or max_prefix < 1:
        raise Invalid(f"max_prefix must be a positive int, not {max_prefix!r}")
    facts = getattr(detector, "facts", ())
    if not isinstance(facts, tuple | list) or not all(isinstance(f, str) for f in facts):
        raise Invalid(f"facts must be a tuple of fact names, not {facts!r}")
    return detector  # type: ignore[no-any-return]


def _load_target(ep: EntryPoint) -> Callable[..., ITarget]:
    factory = ep.load()
    if isinstance(factory, type):
        verifyClass(ITarget, factory)
    elif not callable(factory):
        raise Invalid("the entry point must name a class or a callable that builds an ITarget")
    return factory  # type: ignore[no-any-return]


def _load_factory(interface: Any) -> Callable[[EntryPoint], Callable[..., Any]]:
    """A rule or shaper kind: a class providing ``interface``, or a factory of one."""

    def load(ep: EntryPoint) -> Callable[..., Any]:
        factory = ep.load()
        if isinstance(factory, type):
            verifyClass(interface, factory)
        elif not callable(factory):
            raise Invalid(f"the entry point must name a class or a callable that builds "
                          f"an {interface.__name__}")
        return factory  # type: ignore[no-any-return]

    return load


def _with_builtins(found: list[EntryPoint]) -> list[EntryPoint]:
    have = {(ep.group, ep.name) for ep in found}
    return found + [EntryPoint(name, value, group)
                    for group, kinds in _BUILTIN.items()
                    for name, value in kinds.items() if (group, name) not in have]


def load_registry(eps: Iterable[EntryPoint] | None = None) -> Registry:
    """
    Load every detector, target, rule and shaper plugin.

    ``eps`` replaces the installed entry points (tests use it to load a broken one).
    """
    registry = Registry()
    found = list(eps) if eps is not None else _with_builtins([
        *entry_points(group=DETECTORS), *entry_points(group=TARGETS),
        *entry_points(group=RULES), *entry_points(group=SHAPERS),
    ])
    loaders: dict[str, tuple[Callable[[EntryPoint], Any], dict[str, Any]]] = {
        DETECTORS: (_load_detector, registry.detectors),
        TARGETS: (_load_target, registry.targets),
        RULES: (_load_factory(IAccessRule), registry.rules),
        SHAPERS: (_load_factory(IShaper), registry.shapers),
    }
    for ep in found:
        if ep.group not in loaders:
            continue
        load, into = loaders[ep.group]
        if ep.name in into:
            registry.problems.append(PluginProblem(
                ep.group, ep.name, _distribution(ep),
                "another plugin already registered this name"))
            continue
        try:
            into[ep.name] = load(ep)
        except Exception as error:  # noqa: BLE001 - any failure of foreign code
            detail = str(error).strip().replace("\n", " ") or type(error).__name__
            registry.problems.append(
                PluginProblem(ep.group, ep.name, _distribution(ep),
                              f"{type(error).__name__}: {detail}"))
    return registry
