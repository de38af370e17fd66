"""
``twistd gatekeep``: options and the service maker.

With no ``--config`` the embedded demo runs (localhost only), so that a new user
sees detection work with one command.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.python import usage

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.model import Config
from gatekeep.registry import Registry

__all__ = ["Options", "load", "makeService", "raise_fd_limit"]

#: The most file descriptors gatekeep asks for, even when the hard limit is higher.
FD_CEILING = 1 << 20


class Options(usage.Options):
    synopsis = "[--config FILE] [--demo-port PORT] [--log-format text|json]"
    longdesc = ("Listen, detect each connection's protocol and route it. Without --config, "
                "run the embedded demo on localhost.")
    optParameters = [
        ["config", "c", None, "TOML config file (default: the embedded demo)"],
        ["demo-port", None, 8443, "port of the embedded demo (127.0.0.1 and ::1 only)", int],
        ["log-format", None, "text", "text (human-readable) or json (one object per line)"],
    ]

    def postOptions(self) -> None:
        if self["log-format"] not in ("text", "json"):
            raise usage.UsageError("--log-format must be text or json")


def load(options: Any, registry: Registry | None = None) -> tuple[Config, Registry]:
    """Load and validate the config the options name, or the demo's."""
    from gatekeep.config.loader import load_config, load_config_file
    from gatekeep.demo import demo_config_text
    from gatekeep.registry import load_registry

    registry = registry or load_registry()
    if options["config"]:
        return load_config_file(options["config"], registry), registry
    text = demo_config_text(options["demo-port"])
    return load_config(text, registry, source="(demo)"), registry


def _log_observer(options: Any, reactor: Any = None) -> Any:
    parent = getattr(options, "parent", None) or {}
    if parent.get("syslog"):
        return None  # twistd's own syslog observer
    from gatekeep.logformat import observer_for

    # The text format is twistd's own, written by gatekeep's observer: the same lines,
    # destination and SIGUSR1 rotation, at less cost per line (logformat.text_observer).
    return observer_for(options["log-format"], parent.get("logfile"),
                        bool(parent.get("nodaemon")), reactor)


def _shared_log(options: Any) -> Any:
    """
    With workers: the log destination they will write to themselves, or ``None`` when
    twistd logs where they cannot (``--syslog``, a ``--logger``): then they relay their
    events through the parent.
    """
    parent = getattr(options, "parent", None) or {}
    if parent.get("logger") or parent.get("syslog"):
        return None
    from gatekeep.sharedlog import shared_log

    return shared_log(options["log-format"], parent.get("logfile"),
                      bool(parent.get("nodaemon")))


def raise_fd_limit() -> tuple[int, int]:
    """
    Raise the soft open-file limit to the hard one (at most :data:`FD_CEILING`).

    Every relayed connection costs two descriptors, and a distribution's default
    soft limit (often 1024) would refuse connections long before ``max_connections``.
    Returns the limit before and after.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = FD_CEILING if hard == resource.RLIM_INFINITY else min(hard, FD_CEILING)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def makeService(options: Any) -> Any:
    from twisted.internet import reactor

    from gatekeep.eventloop import coalesce
    from gatekeep.service import GatekeepService

    try:
        config, registry = load(options)
    except ConfigErrors as errors:
        # A bad config is the user's everyday mistake: show every error, no traceback.
        print(errors.render(), file=sys.stderr)
        raise SystemExit(1) from None
    coalesce(reactor)
    before, after = raise_fd_limit()
    if after != before:
        from twisted.logger import Logger

        Logger().info("open-file limit raised from {before} to {after}", before=before,
                      after=after)

    def loader() -> Config:
        return load(options, registry)[0]

    # SIGHUP re-reads the same file (or re-renders the demo) with the same plugins.
    if options["config"]:
        from gatekeep.workers import SupervisorService, worker_count

        if worker_count(config) > 1:
            shared = _shared_log(options)
            return SupervisorService(
                config, reactor, loader=loader, shared_log=shared,
                log_observer=None if shared is not None else _log_observer(options),
                options={"config": options["config"], "demo-port": options["demo-port"]})
    return GatekeepService(config, registry, reactor, loader=loader,
                           handle_signals=True, log_observer=_log_observer(options, reactor))
