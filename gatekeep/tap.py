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

__all__ = ["Options", "load", "makeService"]


class Options(usage.Options):
    synopsis = "[--config FILE] [--demo-port PORT]"
    longdesc = ("Listen, detect each connection's protocol and route it. Without --config, "
                "run the embedded demo on localhost.")
    optParameters = [
        ["config", "c", None, "TOML config file (default: the embedded demo)"],
        ["demo-port", None, 8443, "port of the embedded demo (127.0.0.1 and ::1 only)", int],
    ]


def load(options: Any) -> tuple[Config, Registry]:
    """Load and validate the config the options name, or the demo's."""
    from gatekeep.config.loader import load_config, load_config_file
    from gatekeep.demo import demo_config_text
    from gatekeep.registry import load_registry

    registry = load_registry()
    if options["config"]:
        return load_config_file(options["config"], registry), registry
    text = demo_config_text(options["demo-port"])
    return load_config(text, registry, source="(demo)"), registry


def makeService(options: Any) -> Any:
    from twisted.internet import reactor

    from gatekeep.service import GatekeepService

    try:
        config, registry = load(options)
    except ConfigErrors as errors:
        # A bad config is the user's everyday mistake: show every error, no traceback.
        print(errors.render(), file=sys.stderr)
        raise SystemExit(1) from None
    return GatekeepService(config, registry, reactor)
