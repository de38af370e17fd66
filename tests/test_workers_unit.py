"""The parts of ``workers = N`` that need no processes: the count, metrics merging."""

from __future__ import annotations

from gatekeep.config.loader import load_config
from gatekeep.registry import load_registry
from gatekeep.workers import as_worker, worker_count
from gatekeep.workers_admin import merge_expositions

BASE = """
[admin]
endpoint = "tcp:9100:interface=127.0.0.1"

[[listener]]
name = "public"
endpoint = "tcp:8443"
service = "edge"

[service.edge]
default = "web"

[[service.edge.route]]
name = "web"
forward = { to = "tcp:127.0.0.1:8080" }
"""


def test_worker_count_key_then_environment_then_cores() -> None:
    registry = load_registry()
    plain = load_config(BASE, registry)
    assert worker_count(load_config("workers = 3\n" + BASE, registry),
                        {"GATEKEEP_WORKERS": "5"}) == 3
    assert worker_count(plain, {"GATEKEEP_WORKERS": "5"}) == 5
    assert worker_count(plain, {"GATEKEEP_WORKERS": "0"}) == 1
    assert worker_count(plain, {}) >= 1  # the number of cores


def test_a_worker_serves_its_private_admin_endpoint() -> None:
    config = load_config(BASE, load_registry())
    mine = as_worker(config, "unix:/run/w/1.sock")
    assert mine.admin is not None and mine.admin.endpoint == "unix:/run/w/1.sock"
    assert mine.listeners == config.listeners
    assert as_worker(config, None).admin is None


def test_expositions_merge_by_family_with_a_worker_label() -> None:
    one = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 2.0\n"
           "# HELP b B.\n# TYPE b gauge\nb 1.0\n")
    two = ("# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\"} 5.0\n"
           "# HELP b B.\n# TYPE b gauge\nb 0.0\n# HELP c C.\n# TYPE c gauge\nc{} 3.0\n")
    assert merge_expositions({2: two, 1: one}).splitlines() == [
        "# HELP a_total A.", "# TYPE a_total counter",
        'a_total{worker="1",x="1"} 2.0', 'a_total{worker="2",x="1"} 5.0',
        "# HELP b B.", "# TYPE b gauge", 'b{worker="1"} 1.0', 'b{worker="2"} 0.0',
        "# HELP c C.", "# TYPE c gauge", 'c{worker="2"} 3.0',
    ]
