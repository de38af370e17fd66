"""
The ``gatekeep`` command: ``check``, ``run``, ``explain``, ``reload``.

``check`` and ``explain`` never start the reactor; ``run`` is ``twistd -n gatekeep``
with a config, for people who do not want to learn twistd's options first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.model import Config, ListenerConfig
from gatekeep.config.units import format_duration
from gatekeep.registry import Registry, load_registry
from gatekeep.values import Route, Service

__all__ = ["main", "route_table"]


def describe_match(route: Route) -> str:
    if route.detector is None:
        return "(catch-all)"
    tests = " ".join(f"{c.key}={','.join(map(str, c.values))}" for c in route.conditions)
    return f"{route.detector} {tests}".strip()


def service_table(service: Service) -> list[str]:
    default = service.default or "none: unmatched connections are rejected"
    lines = [f"  service {service.name} (default route: {default})"]
    width = max(len(r.name) for r in service.routes)
    match_width = max(len(describe_match(r)) for r in service.routes)
    for number, route in enumerate(service.routes, 1):
        lines.append(f"    {number}. {route.name:<{width}}  {describe_match(route):<{match_width}}"
                     f"  -> {route.target.describe()}")
        if route.access is not None:
            lines.append(f"       {'':<{width}}  access {route.access.describe()}")
        timeouts = _timeouts(route.idle_timeout, route.max_lifetime)
        if timeouts:
            lines.append(f"       {'':<{width}}  timeouts: {timeouts}")
    return lines


def listener_guard_lines(listener: ListenerConfig, config: Config) -> list[str]:
    """The effective access rule and limits of a listener, for check and explain."""
    from gatekeep.guard import limits_of

    lines = []
    if listener.access is not None:
        lines.append(f"access {config.access[listener.access].describe()}")
    else:
        lines.append("access: everyone (no access rule)")
    if listener.shaper is not None:
        lines.append(f"shaper {config.shapers[listener.shaper].describe()}")
    limits = limits_of(listener).describe()
    if limits:
        lines.append("limits: " + ", ".join(limits))
    timeouts = _timeouts(listener.idle_timeout, listener.max_lifetime)
    if timeouts:
        lines.append("timeouts: " + timeouts)
    return lines


def _timeouts(idle: float | None, lifetime: float | None) -> str:
    parts = []
    if idle is not None:
        parts.append(f"idle_timeout {format_duration(idle)}")
    if lifetime is not None:
        parts.append(f"max_lifetime {format_duration(lifetime)}")
    return ", ".join(parts)


def route_table(config: Config) -> str:
    lines = ["listeners:"]
    width = max((len(listener.name) for listener in config.listeners), default=0)
    for listener in config.listeners:
        timeout = format_duration(listener.detect_timeout)
        lines.append(f"  {listener.name:<{width}}  {listener.where}  -> service "
                     f"{listener.service} (detect_timeout {timeout}"
                     + (f"; PROXY header {listener.proxy_protocol} from "
                        f"{', '.join(listener.trusted_proxies)}"
                        if listener.proxy_protocol != "off" else "") + ")")
        pad = " " * (width + 4)
        lines.extend(f"  {pad}{line}" for line in listener_guard_lines(listener, config))
    lines.append("services:")
    for service in config.services.values():
        lines.extend(service_table(service))
    lines.extend(_http_sites(config))
    return "\n".join(lines)


def _http_sites(config: Config) -> list[str]:
    from gatekeep.http.settings import HTTPSite, site_table

    sites: dict[str, HTTPSite] = {}
    for service in config.services.values():
        for route in service.routes:
            site = getattr(route.target, "site", None)
            if isinstance(site, HTTPSite):
                sites[site.name] = site
    lines = ["http sites:"] if sites else []
    for site in sites.values():
        lines.extend(site_table(site))
    return lines


def _load(path: str, registry: Registry) -> Config | None:
    from gatekeep.config.loader import load_config_file

    try:
        return load_config_file(path, registry)
    except ConfigErrors as errors:
        print(errors.render(), file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config, load_registry())
    if config is None:
        return 1
    print(f"{args.config}: OK")
    print(route_table(config))
    for warning in config.warnings:
        print(f"warning: {warning}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from twisted.scripts.twistd import run

    # Validate first so a bad config prints its errors exactly as `check` does.
    if _load(args.config, load_registry()) is None:
        return 1
    sys.argv = ["twistd", "--nodaemon", f"--pidfile={args.pidfile}", *args.twistd,
                "gatekeep", "--config", args.config]
    run()
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from gatekeep.explain import explain, read_input

    registry = load_registry()
    config = _load(args.config, registry)
    if config is None:
        return 1
    try:
        data = read_input(args.input)
    except (OSError, ValueError) as error:
        print(f"gatekeep explain: cannot read {args.input!r}: {error}", file=sys.stderr)
        return 1
    client = None
    if args.client is not None:
        from gatekeep.explain import parse_client

        try:
            client = parse_client(args.client)
        except ValueError as error:
            print(f"gatekeep explain: --client: {error}", file=sys.stderr)
            return 1
    try:
        text = explain(config, registry, args.listener, data, client)
    except KeyError as error:
        print(f"gatekeep explain: {error.args[0]}", file=sys.stderr)
        return 1
    print(text)
    return 0


#: Where the systemd unit in contrib/ has twistd write its PID; `gatekeep run`
#: and `twistd --pidfile` can use any path.
DEFAULT_PIDFILE = "/run/gatekeep/gatekeep.pid"


def _running_pid(args: argparse.Namespace) -> int | str:
    """The PID to signal, or why there is none."""
    pid: int
    if args.pid is not None:
        pid = int(args.pid)
    else:
        try:
            text = open(args.pidfile, encoding="ascii").read().strip()  # noqa: SIM115
        except OSError as error:
            return f"cannot read pid file {args.pidfile}: {error.strerror}"
        if not text.isdigit():
            return f"pid file {args.pidfile} does not hold a process id"
        pid = int(text)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            argv = cmdline.read().split(b"\0")
    except OSError:
        return f"no process {pid} (is gatekeep running? a stale pid file?)"
    if not any(b"gatekeep" in arg for arg in argv):
        return f"process {pid} is not gatekeep (a stale pid file?)"
    return pid


def cmd_reload(args: argparse.Namespace) -> int:
    if args.check and _load(args.check, load_registry()) is None:
        print("gatekeep reload: config has errors; nothing signalled", file=sys.stderr)
        return 1
    pid = _running_pid(args)
    if isinstance(pid, str):
        print(f"gatekeep reload: {pid}", file=sys.stderr)
        return 1
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as error:
        print(f"gatekeep reload: cannot signal {pid}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"sent SIGHUP to gatekeep (pid {pid}); its log says whether the config was applied")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="gatekeep", description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate a config and print its route table")
    check.add_argument("config")
    check.set_defaults(func=cmd_check)
    run = sub.add_parser("run", help="run gatekeep in the foreground (twistd -n gatekeep)")
    run.add_argument("config")
    run.add_argument("--pidfile", default="", help="write the PID here (default: none)")
    run.add_argument("twistd", nargs=argparse.REMAINDER,
                     help="further twistd options, e.g. --uid=gatekeep --gid=gatekeep")
    run.set_defaults(func=cmd_run)
    explain = sub.add_parser(
        "explain", help="show how a listener would route captured bytes, and why")
    explain.add_argument("config")
    explain.add_argument("--listener", required=True, help="the [[listener]] name")
    explain.add_argument("--client", metavar="IP[:PORT]",
                         help="decide the access rules for this client address (default: "
                         "the input's PROXY header's client, if any)")
    explain.add_argument(
        "input", help="a file of raw bytes, hex:<hex digits>, a .pcap/.pcapng of one "
        "connection (the client's side is used), or - for stdin")
    explain.set_defaults(func=cmd_explain)
    reload = sub.add_parser(
        "reload", help="make the running gatekeep re-read its config (sends SIGHUP)")
    which = reload.add_mutually_exclusive_group()
    which.add_argument("--pidfile", default=DEFAULT_PIDFILE,
                       help=f"twistd's pid file (default: {DEFAULT_PIDFILE})")
    which.add_argument("--pid", type=int, help="the process id (e.g. systemd's $MAINPID)")
    reload.add_argument("--check", metavar="CONFIG",
                        help="validate this config first; signal only if it is valid")
    reload.set_defaults(func=cmd_reload)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
