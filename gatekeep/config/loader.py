"""
TOML text -> a validated :class:`~gatekeep.config.model.Config`, or every error at once.

Each error names the TOML path (``service.edge.route[1].forward.to``) and, where
there is an obvious one, the fix. Nothing here raises a traceback at a user for a
bad file: the only exception that leaves is :class:`ConfigErrors`.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from gatekeep.config.endpoints import Bound, bound_address, clashes
from gatekeep.config.errors import ConfigError, ConfigErrors
from gatekeep.config.model import (
    AdminConfig,
    Config,
    GlobalSettings,
    ListenerConfig,
    RouteSettings,
    ServiceSettings,
    parse_name,
)
from gatekeep.config.schema import PLANNED, key_path, load_table, unknown_key_error
from gatekeep.config.tor import TorSettings, tor_problems
from gatekeep.detectors._names import normalise_host
from gatekeep.guard import NamedRule
from gatekeep.http.settings import HTTPSite, load_sites
from gatekeep.interfaces import IAccessRule, IShaper, ITarget
from gatekeep.registry import DETECTORS, RULES, SHAPERS, TARGETS, Registry
from gatekeep.routing import NAME_FACTS, split_host_port
from gatekeep.shapers.shaping import ShaperSpec
from gatekeep.targets.http import HTTPTarget
from gatekeep.values import Condition, Route, Service

__all__ = ["load_config", "load_config_file"]


def _canonical_name(text: str) -> str | None:
    """A DNS name (IDNA A-labels, lower case) or an IP literal, bracketed or not."""
    try:
        return ipaddress.ip_address(text).compressed
    except ValueError:
        return normalise_host(text.rstrip(".")) if text else None

_TOP_KEYS = ["listener", "service", "http", "admin", "access", "shaper", "drain_timeout",
             "splice", "workers"]
#: Actions built in the loader itself: their value names another table.
_TABLE_ACTIONS = ("http",)
_GLOBAL_KEYS = ["drain_timeout", "splice", "workers"]
_SERVICE_KEYS = ["default", "route"]


def load_config_file(path: str | Path, registry: Registry) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigErrors([ConfigError("", f"cannot read config file: {error.strerror}")],
                           str(path)) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError("", "the config file is not UTF-8 text")],
                           str(path)) from None
    return load_config(text, registry, source=str(path))


def load_config(text: str, registry: Registry, source: str = "") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigErrors([ConfigError("", f"not valid TOML: {error}")], source) from None
    loader = _Loader(registry)
    config = loader.load(data, source)
    if loader.errors or config is None:
        raise ConfigErrors(loader.errors, source)
    return config


def _exclusive(listener: ListenerConfig) -> list[tuple[str, Bound]]:
    """(key, value) of what no two listeners may share: addresses, onion directories."""
    if listener.tor is None:
        bound = bound_address(listener.endpoint) if listener.endpoint else None
        return [("endpoint", bound)] if bound is not None else []
    tor = listener.tor
    dirs = [("tor.key_dir", tor.key_dir)] + ([("tor.data_dir", tor.data_dir)]
                                           if tor.data_dir else [])
    return [(key, ("dir", os.path.normpath(value))) for key, value in dirs]


def _maker(prototype: Any, factory: Any, options: dict[str, Any]) -> Any:
    """Builds a fresh shaper like ``prototype`` (one per scope and direction)."""
    if attrs.has(type(prototype)):
        return lambda: attrs.evolve(prototype)
    return lambda: factory(**options)


@attrs.define
class _Loader:
    registry: Registry
    errors: list[ConfigError] = attrs.field(factory=list)
    warnings: list[str] = attrs.field(factory=list)
    used_plugins: set[tuple[str, str]] = attrs.field(factory=set)
    access: dict[str, NamedRule] = attrs.field(factory=dict)
    #: Names of [access.X] tables that failed to load (not reported again where used).
    broken_access: set[str] = attrs.field(factory=set)
    shapers: dict[str, ShaperSpec] = attrs.field(factory=dict)
    broken_shapers: set[str] = attrs.field(factory=set)
    #: Targets that hand connections on to another service (``terminate``), by path.
    nesting: list[tuple[str, str, Any]] = attrs.field(factory=list)
    sites: dict[str, HTTPSite] = attrs.field(factory=dict)
    used_sites: set[str] = attrs.field(factory=set)
    #: What each listener's endpoint binds (cross_check finds them; the admin check too).
    bound: list[Bound] = attrs.field(factory=list)

    def error(self, path: str, message: str, fix: str = "") -> None:
        self.errors.append(ConfigError(path, message, fix))

    def load(self, data: dict[str, Any], source: str) -> Config | None:
        for key in data:
            if key not in _TOP_KEYS:
                self.errors.append(unknown_key_error("", key, _TOP_KEYS))
        settings = load_table(
            GlobalSettings, {k: v for k, v in data.items() if k in _GLOBAL_KEYS}, "",
            self.errors)
        admin = (load_table(AdminConfig, data["admin"], "admin", self.errors)
                 if "admin" in data else None)
        self.access_rules(data.get("access"))
        self.shaper_specs(data.get("shaper"))
        listeners = self.listeners(data.get("listener"))
        self.sites = load_sites(data.get("http"), self.errors)
        services = self.services(data.get("service"))
        for name in self.sites:
            if name not in self.used_sites:
                self.warnings.append(f"http.{name}: not used by any route")
        inner = self.link(services)
        self.cross_check(listeners, services, inner)
        self.unused_rules(listeners, services)
        for problem in self.registry.problems:
            if (problem.group, problem.name) in self.used_plugins:
                continue  # already reported as an error where it is used
            self.warnings.append(str(problem))
        admin_bound = bound_address(admin.endpoint) if admin is not None else None
        if admin_bound is not None and any(clashes(admin_bound, b) for b in self.bound):
            self.error("admin.endpoint", "endpoint also used by a [[listener]]",
                       "give the admin listener its own address")
        if self.errors:
            return None
        return Config(tuple(listeners), services, source, tuple(self.warnings), admin,
                      settings, access=dict(self.access), shapers=dict(self.shapers))

    def listeners(self, raw: object) -> list[ListenerConfig]:
        if raw is None:
            self.error("listener", "no listeners: gatekeep would accept nothing",
                       "add a [[listener]] table with name, endpoint and service")
            return []
        if not isinstance(raw, list):
            self.error("listener", "expected an array of tables",
                       "write each listener as [[listener]], not [listener]")
            return []
        result: list[ListenerConfig] = []
        for index, table in enumerate(raw):
            path = key_path("listener", index)
            plain, tor = table, None
            if isinstance(table, dict) and "tor" in table:
                plain = {k: v for k, v in table.items() if k != "tor"}
                tor = self.tor(table["tor"], key_path(path, "tor"))
                if tor is None:
                    continue
            listener = load_table(ListenerConfig, plain, path, self.errors, tor=tor)
            if listener is None:
                continue
            if listener.endpoint is None and tor is None:
                self.error(key_path(path, "endpoint"), "missing required key",
                           'e.g. endpoint = "tcp:443"; or, for an onion service, a '
                           "[listener.tor] table")
                continue
            if tor is not None and (listener.proxy_protocol != "off" or listener.trusted_proxies):
                key = "proxy_protocol" if "proxy_protocol" in plain else "trusted_proxies"
                self.error(key_path(path, key), "not used on an onion listener: tor sends a "
                           "PROXY line with every stream, which gatekeep always reads",
                           f"remove {key}")
                continue
            if listener.endpoint is not None and tor is not None:
                self.error(path, "impossible combination: both `endpoint` and a "
                           "[listener.tor] table",
                           "keep one: a listener listens on an endpoint or is an onion service")
                continue
            result.append(listener)
        return result

    def access_rules(self, raw: object) -> None:
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.error("access", "expected a table of rules: [access.NAME]")
            return
        for name, table in raw.items():
            path = key_path("access", name)
            rule = self.plugin_table(RULES, IAccessRule, name, table, path, "cidr")
            if rule is None:
                self.broken_access.add(name)
            else:
                self.access[name] = NamedRule(name, rule)

    def shaper_specs(self, raw: object) -> None:
        if raw is None:
            return
        if not isinstance(raw, dict):
            self.error("shaper", "expected a table of shapers: [shaper.NAME]")
            return
        for name, table in raw.items():
            path = key_path("shaper", name)
            spec = self.shaper_spec(name, table, path)
            if spec is None:
                self.broken_shapers.add(name)
            else:
                self.shapers[name] = spec

    def shaper_spec(self, name: str, table: object, path: str) -> ShaperSpec | None:
        if not isinstance(table, dict):
            self.error(path, "expected a table", f"write it as [{path}]")
            return None
        scope = table.get("scope", "connection")
        if scope not in ("connection", "ip", "listener"):
            self.error(key_path(path, "scope"),
                       f'expected "connection", "ip" or "listener", not {scope!r}')
            return None
        rest = {k: v for k, v in table.items() if k != "scope"}
        prototype = self.plugin_table(SHAPERS, IShaper, name, rest, path, "bucket")
        if prototype is None:
            return None
        options = {k: v for k, v in rest.items() if k != "kind"}
        make = _maker(prototype, self.registry.shapers[rest.get("kind", "bucket")], options)
        describe = getattr(prototype, "describe", None)
        return ShaperSpec(name, scope, make, describe() if callable(describe) else "")

    def shaper_named(self, name: str | None, path: str) -> None:
        if name is None or name in self.broken_shapers or name in self.shapers:
            return
        self.error(path, f"no shaper named '{name}'",
                   f"define [shaper.{name}] or use one of: "
                   f"{', '.join(self.shapers) or '(none defined)'}")

    def plugin_table(self, group: str, interface: Any, name: str, table: object, path: str,
                     default_kind: str) -> Any:
        """Build a rule or shaper from its table: ``kind`` picks the plugin."""
        if not isinstance(table, dict):
            self.error(path, "expected a table", f"write it as [{path}]")
            return None
        try:
            parse_name(name)
        except ValueError as error:
            self.error(path, str(error))
            return None
        kind = table.get("kind", default_kind)
        kinds = self.registry.rules if group == RULES else self.registry.shapers
        self.used_plugins.add((group, str(kind)))
        problem = self.registry.problem(group, str(kind))
        if problem is not None:
            self.error(key_path(path, "kind"), str(problem), "fix or uninstall that plugin")
            return None
        if not isinstance(kind, str) or kind not in kinds:
            self.error(key_path(path, "kind"), f"unknown kind {kind!r}",
                       f"installed kinds: {', '.join(sorted(kinds))}")
            return None
        factory = kinds[kind]
        options = {k: v for k, v in table.items() if k != "kind"}
        built: Any
        if isinstance(factory, type) and attrs.has(factory):
            built = load_table(factory, options, path, self.errors)
        else:
            try:
                built = factory(**options)
            except Exception as error:  # noqa: BLE001 - third-party constructors
                self.error(path, f"{type(error).__name__}: {error}")
                return None
        if built is None:
            return None
        try:
            verifyObject(interface, built)
        except Invalid as error:
            self.error(path, f"plugin kind '{kind}' does not provide "
                       f"{interface.__name__}: {error}")
            return None
        return built

    def unused_rules(self, listeners: list[ListenerConfig],
                     services: Mapping[str, Service]) -> None:
        used = {listener.access for listener in listeners}
        used |= {getattr(route.access, "name", None)
                 for service in services.values() for route in service.routes}
        for name in self.access:
            if name not in used:
                self.warnings.append(f"access.{name}: not used by any listener or route")
        shaped = {listener.shaper for listener in listeners}
        for name in self.shapers:
            if name not in shaped:
                self.warnings.append(f"shaper.{name}: not used by any listener")

    def access_named(self, name: str | None, path: str) -> NamedRule | None:
        """The [access.NAME] a listener or route refers to (an error if there is none)."""
        if name is None or name in self.broken_access:
            return None
        rule = self.access.get(name)
        if rule is None:
            self.error(path, f"no rule named '{name}'",
                       f"define [access.{name}] or use one of: "
                       f"{', '.join(self.access) or '(none defined)'}")
        return rule

    def tor(self, table: object, path: str) -> TorSettings | None:
        before = len(self.errors)
        settings: TorSettings | None = load_table(TorSettings, table, path, self.errors)
        if settings is None:
            return None
        for key, problem, fix in tor_problems(settings):
            self.error(key_path(path, key), problem, fix)
        return settings if len(self.errors) == before else None

    def services(self, raw: object) -> dict[str, Service]:
        if raw is None:
            self.error("service", "no services defined",
                       "add a [service.NAME] table and [[service.NAME.route]] entries")
            return {}
        if not isinstance(raw, dict):
            self.error("service", "expected a table of services: [service.NAME]")
            return {}
        services: dict[str, Service] = {}
        for name, table in raw.items():
            path = key_path("service", name)
            if not isinstance(table, dict):
                self.error(path, "expected a table", f"write it as [service.{name}]")
                continue
            settings = load_table(
                ServiceSettings, {k: v for k, v in table.items() if k != "route"}, path,
                self.errors)
            routes = self.routes(table.get("route"), key_path(path, "route"))
            if settings is None or routes is None:
                continue
            service = Service(name, tuple(routes), settings.default)
            self.check_service(service, path)
            services[name] = service
        return services

    def routes(self, raw: object, path: str) -> list[Route] | None:
        if raw is None:
            self.error(path, "a service needs at least one route",
                       "add a [[" + path + "]] table")
            return None
        if not isinstance(raw, list):
            self.error(path, "expected an array of tables", "write [[" + path + "]]")
            return None
        routes = [self.route(table, key_path(path, i)) for i, table in enumerate(raw)]
        # One broken route drops its service, so no follow-on errors (a default
        # naming that route, ...) bury the real one.
        return None if None in routes else [r for r in routes if r is not None]

    def route(self, table: object, path: str) -> Route | None:
        if not isinstance(table, dict):
            self.error(path, "expected a table")
            return None
        actions = [key for key in table
                   if key in self.registry.targets or key in _TABLE_ACTIONS]
        planned = [key for key in table if key in PLANNED and key not in self.registry.targets]
        broken = [key for key in table if self.registry.problem(TARGETS, key) is not None]
        plain = {k: v for k, v in table.items()
                 if k not in actions and k not in broken and k != "match"}
        before = len(self.errors)
        for key in broken:
            self.used_plugins.add((TARGETS, key))
            self.error(key_path(path, key), str(self.registry.problem(TARGETS, key)),
                       "fix or uninstall that plugin")
        settings = load_table(RouteSettings, plain, path, self.errors)
        if not actions and not planned and not broken:
            self.error(path, "a route needs an action",
                       f"add exactly one of: {', '.join(sorted(self.registry.targets))}")
        elif len(actions) > 1:
            self.error(path, f"impossible combination: several actions ({', '.join(actions)})",
                       "keep exactly one action per route")
        detector, conditions = self.match(table.get("match"), key_path(path, "match"))
        target = self.target(actions[0], table[actions[0]], key_path(path, actions[0])) \
            if len(actions) == 1 else None
        access = self.access_named(settings.access, key_path(path, "access")) \
            if settings is not None else None
        if settings is None or target is None or len(self.errors) > before:
            return None
        return Route(settings.name, detector, conditions, target, access=access,
                     connect_timeout=settings.connect_timeout,
                     idle_timeout=settings.idle_timeout, max_lifetime=settings.max_lifetime)

    def match(self, raw: object, path: str) -> tuple[str | None, tuple[Condition, ...]]:
        if raw is None:
            return None, ()
        if not isinstance(raw, dict) or not raw:
            self.error(path, "expected a table naming one detector",
                       'e.g. match.tls = { sni = ["example.org"] }')
            return None, ()
        if len(raw) > 1:
            self.error(path, f"impossible combination: one route matches several protocols "
                       f"({', '.join(raw)}), but a connection is detected as only one",
                       "split it into one route per protocol")
            return None, ()
        ((name, table),) = raw.items()
        mpath = key_path(path, name)
        self.used_plugins.add((DETECTORS, name))
        detector = self.registry.detectors.get(name)
        problem = self.registry.problem(DETECTORS, name)
        if problem is not None:
            # Also when another plugin of that name loaded: which one runs is luck.
            self.error(mpath, str(problem), "fix or uninstall that plugin")
            return None, ()
        if detector is None:
            self.error(mpath, f"unknown detector '{name}'",
                       f"installed detectors: {', '.join(sorted(self.registry.detectors))}")
            return None, ()
        if not isinstance(table, dict):
            self.error(mpath, "expected a table of facts to test",
                       f"use match.{name} = {{}} to match any {name} connection")
            return None, ()
        known = getattr(detector, "facts", None)
        conditions = []
        for key, values in table.items():
            cpath = key_path(mpath, key)
            if known is not None and key not in known:
                self.errors.append(unknown_key_error(mpath, key, list(known)))
                continue
            listed = values if isinstance(values, list) else [values]
            if not listed or not all(isinstance(v, str | int | bool) for v in listed):
                self.error(cpath, "expected a value or a non-empty list of strings/numbers")
                continue
            if key in NAME_FACTS:
                patterns = [self.name_pattern(key, str(v), cpath) for v in listed]
                listed = [p for p in patterns if p is not None]
                if len(listed) < len(patterns):
                    continue
            conditions.append(Condition(key, tuple(listed)))
        return name, tuple(conditions)

    def name_pattern(self, key: str, pattern: str, path: str) -> str | None:
        """The pattern in the spelling detectors report names in (A-labels, lower case)."""
        wildcard = pattern.startswith("*.")
        body, port = split_host_port(pattern[2:] if wildcard else pattern)
        if port is not None and key != "host":
            body, port = pattern[2:] if wildcard else pattern, None
        name = _canonical_name(body)
        if name is None or "*" in body or (wildcard and ":" in name):
            self.error(path, f"bad name pattern {pattern!r}",
                       "use an exact name or a leading '*.' wildcard such as '*.example.org'"
                       + (", optionally with ':PORT'" if key == "host" else ""))
            return None
        shown = f"[{name}]" if ":" in name and port is not None else name
        return ("*." if wildcard else "") + shown + (f":{port}" if port is not None else "")

    def http_target(self, options: object, path: str) -> ITarget | None:
        if not isinstance(options, str):
            self.error(path, "expected the name of an [http.NAME] table",
                       'e.g. http = "site", with an [http.site] table')
            return None
        self.used_sites.add(options)
        site = self.sites.get(options)
        if site is None:
            if not any(e.path.startswith(key_path("http", options)) for e in self.errors):
                self.error(path, f"no [http.{options}] table",
                           f"define [http.{options}] or use one of: "
                           f"{', '.join(self.sites) or '(none defined)'}")
            return None
        return HTTPTarget(site)

    def target(self, kind: str, options: object, path: str) -> ITarget | None:
        if kind == "http":
            return self.http_target(options, path)
        factory = self.registry.targets[kind]
        if not isinstance(options, dict):
            self.error(path, "expected a table of options", f"e.g. {kind} = {{ ... }}")
            return None
        target: ITarget | None
        if isinstance(factory, type) and attrs.has(factory):
            target = load_table(factory, options, path, self.errors)
        else:
            try:
                target = factory(**options)
            except Exception as error:  # noqa: BLE001 - third-party constructors
                self.error(path, f"{type(error).__name__}: {error}")
                return None
        if target is None:
            return None
        try:
            verifyObject(ITarget, target)
        except Invalid as error:
            self.error(path, f"target plugin '{kind}' does not provide ITarget: {error}")
            return None
        if isinstance(getattr(target, "inner_service", None), str) and hasattr(target, "link"):
            self.nesting.append((path, path.rsplit(".route[", 1)[0], target))
        return target

    def link(self, services: Mapping[str, Service]) -> set[str]:
        """
        Give each nesting target (``terminate``) the service it hands streams to;
        return the names of the services reached that way.
        """
        reached: set[str] = set()
        for path, owner, target in self.nesting:
            name = target.inner_service
            where = key_path(path, "service")
            if name not in services:
                if not any(e.path.startswith(key_path("service", name)) for e in self.errors):
                    self.error(where, f"no service named '{name}'",
                               f"define [service.{name}] with the routes for the decrypted "
                               "stream")
                continue
            if key_path("service", name) == owner:
                self.error(where, f"impossible combination: the route hands the decrypted "
                           f"stream back to its own service '{name}'",
                           "use a separate inner service, e.g. [service.inner]")
                continue
            target.link(services[name], self.registry.detectors)
            reached.add(name)
        return reached

    def check_service(self, service: Service, path: str) -> None:
        seen: set[str] = set()
        for index, route in enumerate(service.routes):
            if route.name in seen:
                self.error(key_path(key_path(path, "route"), index),
                           f"duplicate route name '{route.name}'", "give each route its own name")
            seen.add(route.name)
        for index, route in enumerate(service.routes[:-1]):
            if route.detector is None:
                self.error(key_path(key_path(path, "route"), index),
                           f"impossible combination: catch-all route '{route.name}' (no match) "
                           "comes before other routes, which can never be taken",
                           "move the catch-all route last, or give it a match table")
                break
        if service.default is not None and service.route_named(service.default) is None:
            self.error(key_path(path, "default"),
                       f"no route named '{service.default}' in service '{service.name}'",
                       f"use one of: {', '.join(r.name for r in service.routes)}")

    def cross_check(
        self, listeners: list[ListenerConfig], services: Mapping[str, Service],
        inner: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> None:
        names: set[str] = set()
        taken: list[tuple[Bound, str]] = []
        used: set[str] = set(inner)
        for index, listener in enumerate(listeners):
            path = key_path("listener", index)
            if listener.name in names:
                self.error(key_path(path, "name"), f"duplicate listener name '{listener.name}'")
            names.add(listener.name)
            for key, value in _exclusive(listener):
                if key == "endpoint":
                    self.bound.append(value)
                holder = next((name for other, name in taken if clashes(value, other)), None)
                if holder is not None:
                    self.error(key_path(key_path(path, key.partition(".")[0]),
                                        key.partition(".")[2]) if "." in key
                               else key_path(path, key),
                               f"{key.rpartition('.')[2]} also used by listener '{holder}'",
                               "give each listener its own address (port 0 lets the "
                               "system pick one)" if key == "endpoint" else "")
                else:
                    taken.append((value, listener.name))
            used.add(listener.service)
            self.access_named(listener.access, key_path(path, "access"))
            self.shaper_named(listener.shaper, key_path(path, "shaper"))
            if listener.proxy_protocol != "off" and not listener.trusted_proxies:
                self.error(key_path(path, "trusted_proxies"),
                           f"impossible combination: proxy_protocol = "
                           f"\"{listener.proxy_protocol}\" honours headers only from "
                           "trusted_proxies, and none are listed",
                           'list your load balancers, e.g. trusted_proxies = ["10.0.0.0/8"]')
            elif listener.proxy_protocol == "off" and listener.trusted_proxies:
                self.warnings.append(f"{key_path(path, 'trusted_proxies')}: has no effect "
                                     'while proxy_protocol = "off"')
            if listener.service not in services and not any(
                e.path.startswith(key_path("service", listener.service)) for e in self.errors
            ):
                self.error(key_path(path, "service"), f"no service named '{listener.service}'",
                           f"define [service.{listener.service}] or use one of: "
                           f"{', '.join(services) or '(none defined)'}")
        for name in services:
            if name not in used:
                self.warnings.append(f"service.{name}: not used by any listener")
