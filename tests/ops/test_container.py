"""
The container and Kubernetes examples in contrib/: the config they carry checks, and
what they run is what this package installs. (Building the image needs a container
registry, which the tests do not reach.)
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gatekeep.cli import main
from gatekeep.tap import Options

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"


def manifests() -> list[dict[str, Any]]:
    text = (CONTRIB / "kubernetes" / "gatekeep.yaml").read_text()
    return [doc for doc in yaml.safe_load_all(text) if doc]


def test_kubernetes_config_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    [config_map] = [m for m in manifests() if m["kind"] == "ConfigMap"]
    data = config_map["data"]
    assert isinstance(data, dict)
    path = tmp_path / "gatekeep.toml"
    path.write_text(data["gatekeep.toml"])
    assert main(["check", str(path)]) == 0, capsys.readouterr().err


def test_kubernetes_deployment_matches_the_config_and_image() -> None:
    docs = {m["kind"]: m for m in manifests()}
    spec = docs["Deployment"]["spec"]["template"]["spec"]
    [container] = spec["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = docs["ConfigMap"]["data"]["gatekeep.toml"]
    assert f'endpoint = "tcp:{ports["public"]}"' in config
    assert f'endpoint = "tcp:{ports["admin"]}"' in config
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    # The grace period must cover the drain.
    assert spec["terminationGracePeriodSeconds"] > 25 and 'drain_timeout = "25s"' in config
    Options().parseOptions(container["args"])  # twistd gatekeep accepts the arguments


def test_dockerfile_runs_twistd_gatekeep_unprivileged() -> None:
    lines = (CONTRIB / "container" / "Dockerfile").read_text().splitlines()
    instructions = {line.split()[0]: line.split(None, 1)[1] for line in lines
                    if line and not line.startswith("#") and not line.startswith(" ")}
    assert json.loads(instructions["ENTRYPOINT"]) == [
        "twistd", "--nodaemon", "--pidfile=", "gatekeep"]
    Options().parseOptions(json.loads(instructions["CMD"]))
    assert instructions["USER"] == "gatekeep"
    assert any(line.startswith("RUN useradd --system") for line in lines)
    assert shlex.split(instructions["STOPSIGNAL"]) == ["SIGTERM"]
