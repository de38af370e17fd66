"""
A Synapse homeserver for the HTTP proxy tests (pip ``matrix-synapse``, a test extra).

Server name example.test, SQLite, one plain HTTP listener on 127.0.0.1 with
``x_forwarded: true``, no federation traffic, open registration without
verification (so the tests register users through the client API). Its log is
unbuffered, one access line per request with the client address it recorded.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import attrs
import pytest

from tests.integration.clients import run
from tests.integration.process import Peer, PeerError, free_port, wait_until

__all__ = ["Synapse", "start_synapse"]


@attrs.frozen
class Synapse:
    peer: Peer
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def _edit_config(config: Path, root: Path, port: int) -> None:
    import yaml

    data = yaml.safe_load(config.read_text())
    log_config = {
        "version": 1,
        "formatters": {"precise": {"format": "%(asctime)s - %(name)s - %(lineno)d - "
                                             "%(levelname)s - %(request)s - %(message)s"}},
        "handlers": {"file": {"class": "logging.FileHandler", "formatter": "precise",
                              "filename": str(root / "homeserver.log"), "encoding": "utf8"}},
        "root": {"level": "INFO", "handlers": ["file"]},
        "disable_existing_loggers": False,
    }
    Path(data["log_config"]).write_text(yaml.safe_dump(log_config, sort_keys=False))
    data["listeners"] = [{
        "port": port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
        "x_forwarded": True,
        "resources": [{"names": ["client", "federation"], "compress": False}],
    }]
    data.update({
        "report_stats": False, "trusted_key_servers": [], "suppress_key_server_warning": True,
        "federation_domain_whitelist": [], "enable_registration": True,
        "enable_registration_without_verification": True, "enable_metrics": False,
        "rc_registration": {"per_second": 100, "burst_count": 100},
        "rc_login": {"address": {"per_second": 100, "burst_count": 100},
                     "account": {"per_second": 100, "burst_count": 100}},
    })
    config.write_text(yaml.safe_dump(data, sort_keys=False))


def start_synapse(root: Path) -> Synapse:
    if importlib.util.find_spec("synapse") is None:
        if os.environ.get("CI"):
            raise PeerError("matrix-synapse is not installed (pip install -e '.[test]')")
        pytest.skip("matrix-synapse is not installed (pip install -e '.[test]')")
    root.mkdir(parents=True, exist_ok=True)
    config = root / "homeserver.yaml"
    port = free_port()
    if not config.exists():
        generated = run([sys.executable, "-m", "synapse.app.homeserver", "--server-name",
                         "example.test", "--config-path", str(config), "--data-directory",
                         str(root), "--generate-config", "--report-stats=no"], timeout=120)
        if generated.returncode != 0:
            raise PeerError(f"synapse --generate-config failed: {generated.stderr[-2000:]}")
    _edit_config(config, root, port)
    peer = Peer("synapse", [sys.executable, "-m", "synapse.app.homeserver", "-c", str(config)],
                root / "stdout.log", cwd=root, extra_logs=[root / "homeserver.log"])
    synapse = Synapse(peer, port, root / "homeserver.log")

    def healthy() -> bool:
        result = run(["curl", "-s", "-m", "1", f"http://127.0.0.1:{port}/health"], timeout=5)
        return result.stdout == "OK"

    try:
        wait_until(healthy, 120, "synapse /health", peer.proc, peer.output)
    except PeerError:
        peer.stop()
        raise
    return synapse
