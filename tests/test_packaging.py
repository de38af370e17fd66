"""
Installing gatekeep (and plugins for it) into fresh venvs, the way users do.

Each mode gets one venv per test module, made with ``python -m venv`` from the base
interpreter, and pip installs from this checkout (pip's cache makes the
dependencies cheap after the first run). Builds happen in a temporary directory
(``DIST_EXTRA_CONFIG`` points setuptools' ``build`` and ``egg_info`` there), so a
stale ``build/`` in the checkout can never leak into what is tested, and the shared
checkout is left as it was.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MQTT_PLUGIN = EXAMPLES / "mqtt-detector"
GEOIP_PLUGIN = EXAMPLES / "geoip-rule"
BROKEN_PLUGIN = ROOT / "tests" / "fixtures" / "plugins" / "broken-detector"

#: MQTT 3.1.1 CONNECT as mosquitto_pub sends it (-i gk-sensor-1, keep alive 60).
CONNECT_311 = bytes.fromhex("101700044d5154540402003c000b676b2d73656e736f722d31")
#: MQTT 5 CONNECT (-V mqttv5 -i gk-sensor-1), which the test config does not route.
CONNECT_5 = bytes.fromhex("101b00044d5154540502003c03210014000b676b2d73656e736f722d31")
#: PUBLISH QoS 0 to "t" with payload "x", then DISCONNECT.
PUBLISH_DISCONNECT = bytes.fromhex("300400017478") + b"\xe0\x00"
CONNACK = b"\x20\x02\x00\x00"


def base_python() -> str:
    """The interpreter this venv (if any) was made from: venvs are made from it."""
    return getattr(sys, "_base_executable", None) or sys.executable


class Venv:
    """A fresh virtual environment and the commands installed in it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.work = path.parent / f"{path.name}-work"  # cwd of commands: never the checkout
        self.work.mkdir()
        result = subprocess.run([base_python(), "-m", "venv", str(path)],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr

    def bin(self, name: str) -> str:
        return str(self.path / "bin" / name)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env["VIRTUAL_ENV"] = str(self.path)
        env["PATH"] = str(self.path / "bin") + os.pathsep + env.get("PATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def run(self, command: str, *args: str, timeout: float = 120,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.bin(command), *args], cwd=self.work, env=env or self.env(),
                              capture_output=True, text=True, timeout=timeout)

    def pip_install(self, *args: str) -> None:
        with tempfile.TemporaryDirectory(dir=self.work) as build:
            extra = Path(build) / "setuptools.cfg"
            extra.write_text(f"[build]\nbuild_base = {build}/build\n"
                             f"[egg_info]\negg_base = {build}\n")
            env = self.env() | {"DIST_EXTRA_CONFIG": str(extra)}
            result = self.run("pip", "install", "--no-input", "--quiet", *args,
                              timeout=600, env=env)
        assert result.returncode == 0, f"pip install {' '.join(args)}:\n{result.stderr}"

    def python(self, code: str) -> str:
        result = self.run("python", "-c", textwrap.dedent(code))
        assert result.returncode == 0, result.stderr
        return result.stdout


#: The venv of each mode: what is pip installed into it, in order.
MODES: dict[str, tuple[tuple[str, ...], ...]] = {
    "installed": ((str(ROOT),),),
    "editable": (("-e", str(ROOT)),),
    # The plugin with its test extra (pytest, hypothesis), to run its own tests.
    "with_mqtt": ((str(ROOT),), (f"{MQTT_PLUGIN}[test]",)),
    # A third-party access rule kind, with its test extra.
    "with_geoip": ((str(ROOT),), (f"{GEOIP_PLUGIN}[test]",)),
    "with_broken": ((str(ROOT),), (str(BROKEN_PLUGIN),)),
}


def make_venv(where: Path, installs: tuple[tuple[str, ...], ...]) -> Venv:
    venv = Venv(where / "venv")
    for install in installs:
        venv.pip_install(*install)
    return venv


@pytest.fixture(scope="module")
def venvs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Future[Venv]]]:
    """
    Build the venvs that this module's selected tests use, all at once.

    Making a venv and installing into it waits much of the time (on the index, on
    disk), so building them side by side saves most of the wall time of one by one.
    """
    needed = sorted({name for item in request.session.items
                     if getattr(item, "path", None) == request.path
                     for name in getattr(item, "fixturenames", ()) if name in MODES})
    with ThreadPoolExecutor(max_workers=max(1, len(needed))) as pool:
        yield {name: pool.submit(make_venv, tmp_path_factory.mktemp(name), MODES[name])
               for name in needed}


@pytest.fixture(scope="module")
def installed(venvs: dict[str, Future[Venv]]) -> Venv:
    """``pip install /path/to/checkout``"""
    return venvs["installed"].result()


@pytest.fixture(scope="module")
def editable(venvs: dict[str, Future[Venv]]) -> Venv:
    """``pip install -e /path/to/checkout``"""
    return venvs["editable"].result()


@pytest.fixture(scope="module")
def with_mqtt(venvs: dict[str, Future[Venv]]) -> Venv:
    """gatekeep, then ``pip install 'examples/mqtt-detector[test]'``"""
    return venvs["with_mqtt"].result()


@pytest.fixture(scope="module")
def with_geoip(venvs: dict[str, Future[Venv]]) -> Venv:
    """gatekeep, then ``pip install 'examples/geoip-rule[test]'``"""
    return venvs["with_geoip"].result()


@pytest.fixture(scope="module")
def with_broken(venvs: dict[str, Future[Venv]]) -> Venv:
    """gatekeep, then the broken-detector fixture distribution"""
    return venvs["with_broken"].result()


def twistd_lists_gatekeep(venv: Venv) -> None:
    result = venv.run("twistd", "--help")
    assert result.returncode == 0, result.stderr
    assert re.search(r"^\s+gatekeep\s+Protocol-detecting gateway", result.stdout, re.M), \
        result.stdout


# pip install /path/to/checkout


def test_installed_twistd_lists_gatekeep(installed: Venv) -> None:
    twistd_lists_gatekeep(installed)


def test_installed_is_a_copy(installed: Venv) -> None:
    where = installed.python("import gatekeep; print(gatekeep.__file__)").strip()
    assert Path(where).is_relative_to(installed.path), where


def test_installed_twistd_gatekeep_help(installed: Venv) -> None:
    result = installed.run("twistd", "gatekeep", "--help")
    assert result.returncode == 0, result.stderr
    assert "--config=" in result.stdout
    assert "twistd [options] gatekeep" in result.stdout


def test_installed_check_headline_example(installed: Venv) -> None:
    path = EXAMPLES / "website-and-xmpp.toml"
    result = installed.run("gatekeep", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK\n")
    # Every built-in detector module was shipped: none is reported broken.
    assert "warning:" not in result.stdout, result.stdout
    for route in ("xmpp-tls", "https", "xmpp", "http", "ssh"):
        assert re.search(rf"^    \d\. {route} ", result.stdout, re.M), route


def test_installed_files(installed: Venv) -> None:
    """No __init__.py hiding twisted/plugins, no dropin.cache, nothing but our packages."""
    files = json.loads(installed.python("""
        import json
        from importlib.metadata import distribution
        print(json.dumps([str(f) for f in distribution("gatekeep").files]))
    """))
    shipped = {f.replace("\\", "/") for f in files}
    assert "twisted/plugins/gatekeep_plugin.py" in shipped
    assert "twisted/__init__.py" not in shipped
    assert "twisted/plugins/__init__.py" not in shipped
    assert not [f for f in shipped if f.endswith("dropin.cache")]
    assert "gatekeep/py.typed" in shipped
    assert "gatekeep/demo/demo.toml" in shipped
    top = {f.split("/")[0] for f in shipped if not f.startswith("../")}
    assert {t for t in top if not t.endswith(".dist-info")} == {"gatekeep", "twisted"}, top
    # Twisted's own twisted/plugins/__init__.py (which makes plugin dirs on sys.path
    # count) is still the one Twisted installed, untouched by us.
    assert installed.python("""
        from importlib.metadata import distribution
        import hashlib, base64, twisted.plugins as p
        rec = {str(f): f for f in distribution("twisted").files}
        f = rec["twisted/plugins/__init__.py"]
        data = open(p.__file__, "rb").read()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        print(f.hash.value == digest)
    """).strip() == "True"


# pip install -e /path/to/checkout


def test_editable_twistd_lists_gatekeep(editable: Venv) -> None:
    twistd_lists_gatekeep(editable)
    where = editable.python("import gatekeep; print(gatekeep.__file__)").strip()
    assert Path(where).is_relative_to(ROOT), where


# A third-party detector: the example MQTT plugin.


def test_mqtt_plugin_keeps_our_gatekeep(with_mqtt: Venv) -> None:
    """The plugin requires "gatekeep": pip must not replace ours with PyPI's namesake."""
    url = with_mqtt.python("""
        import json
        from importlib.metadata import distribution
        print(json.loads(distribution("gatekeep").read_text("direct_url.json"))["url"])
    """).strip()
    assert url == ROOT.as_uri()


def test_mqtt_plugin_check(with_mqtt: Venv) -> None:
    path = EXAMPLES / "mqtt.toml"
    result = with_mqtt.run("gatekeep", "check", str(path))
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stdout
    lines = result.stdout.splitlines()
    assert any(re.match(r"\s+2\. broker\s+mqtt level=4,5\s+-> forward to tcp:127.0.0.1:11883",
                        line) for line in lines), result.stdout
    assert any(re.match(r"\s+1\. lab-sensors\s+mqtt client_id=sensor-01,sensor-02", line)
               for line in lines), result.stdout


def test_mqtt_plugin_own_tests(with_mqtt: Venv) -> None:
    """The example's own test suite, run against the installed distribution."""
    where = with_mqtt.python("import gatekeep_mqtt; print(gatekeep_mqtt.__file__)").strip()
    assert Path(where).is_relative_to(with_mqtt.path), where
    # -o pythonpath= : import the installed module, not the one beside the tests.
    result = with_mqtt.run("python", "-m", "pytest", "-q", "-o", "pythonpath=",
                           str(MQTT_PLUGIN / "tests"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)


# A third-party access rule: the example GeoIP-style plugin.


def test_geoip_plugin_check(with_geoip: Venv) -> None:
    config = with_geoip.work / "geoip.toml"
    config.write_text((GEOIP_PLUGIN / "geoip.toml").read_text().replace(
        "examples/geoip-rule/countries.csv", str(GEOIP_PLUGIN / "countries.csv")))
    result = with_geoip.run("gatekeep", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert "warning:" not in result.stdout
    assert re.search(r"access europe: countries \(5 networks from .*countries\.csv\): "
                     r"allow DE,FR; otherwise deny", result.stdout), result.stdout
    explained = with_geoip.run("gatekeep", "explain", str(config), "--listener", "public",
                               "--client", "203.0.113.9", "hex:474554202f20")
    assert explained.returncode == 0, explained.stderr
    assert "client 203.0.113.9:0: refused on accept by access rule europe" in explained.stdout


def test_geoip_plugin_own_tests(with_geoip: Venv) -> None:
    where = with_geoip.python("import gatekeep_geoip; print(gatekeep_geoip.__file__)").strip()
    assert Path(where).is_relative_to(with_geoip.path), where
    result = with_geoip.run("python", "-m", "pytest", "-q", "-o", "pythonpath=",
                            str(GEOIP_PLUGIN / "tests"), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\d+ passed", result.stdout)


class Backend:
    """An MQTT-broker stand-in: answers a CONNECT with a CONNACK, records every byte."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.server.getsockname()[1]
        self.received: queue.Queue[bytes] = queue.Queue()
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(20)
                data = b""
                answered = False
                while chunk := conn.recv(65536):
                    data += chunk
                    if not answered and len(data) >= 2 and len(data) >= 2 + data[1]:
                        conn.sendall(CONNACK)  # (remaining length < 128 in these tests)
                        answered = True
                self.received.put(data)

    def close(self) -> None:
        self.server.close()


class Gatekeep:
    """``twistd -n gatekeep`` in a subprocess, its log lines collected as they come."""

    def __init__(self, venv: Venv, config: Path) -> None:
        self.process = subprocess.Popen(
            [venv.bin("twistd"), "-n", "--pidfile=", "gatekeep", "--config", str(config)],
            cwd=venv.work, env=venv.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        for line in self.seen:
            if found := re.search(pattern, line):
                return found
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if found := re.search(pattern, line):
                return found
        raise AssertionError(f"no log line matching {pattern!r}; log:\n" + "\n".join(self.seen))

    def stop(self) -> int:
        """Stop it by its PID; return its exit status once its log is all read."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self.reader.join(timeout=15)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return self.process.returncode


@pytest.fixture
def backend() -> Iterator[Backend]:
    server = Backend()
    yield server
    server.close()


def exchange(port: int, data: Sequence[bytes], reply_size: int) -> bytes:
    """Send ``data[0]``, read ``reply_size`` bytes, send the rest, then read until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as client:
        client.sendall(data[0])
        reply = b""
        while len(reply) < reply_size and (chunk := client.recv(65536)):
            reply += chunk
        for more in data[1:]:
            client.sendall(more)
        client.shutdown(socket.SHUT_WR)
        while chunk := client.recv(65536):
            reply += chunk
    return reply


def test_mqtt_routed_end_to_end(with_mqtt: Venv, backend: Backend) -> None:
    config = with_mqtt.work / "mqtt-e2e.toml"
    config.write_text(textwrap.dedent(f"""
        [[listener]]
        name = "e2e"
        endpoint = "tcp:0:interface=127.0.0.1"
        service = "iot"
        detect_timeout = "10s"

        [service.iot]

        [[service.iot.route]]
        name = "broker"
        match.mqtt = {{ level = [4] }}
        forward = {{ to = "tcp:127.0.0.1:{backend.port}" }}

        [[service.iot.route]]
        name = "other"
        respond = {{ data = "no route for you\\n" }}
    """))
    gatekeep = Gatekeep(with_mqtt, config)
    try:
        port = int(gatekeep.wait_for(r"listener e2e listening on 127\.0\.0\.1:(\d+)").group(1))

        reply = exchange(port, [CONNECT_311, PUBLISH_DISCONNECT], len(CONNACK))
        assert reply == CONNACK
        assert backend.received.get(timeout=20) == CONNECT_311 + PUBLISH_DISCONNECT
        line = gatekeep.wait_for(r"\[gatekeep\.connection#info\] .* e2e mqtt .*route=broker")
        text = line.string
        assert "protocol_name=MQTT level=4 client_id=gk-sensor-1" in text
        assert f"backend=tcp:127.0.0.1:{backend.port}" in text
        assert f"in={len(CONNECT_311 + PUBLISH_DISCONNECT)} out={len(CONNACK)}" in text

        # MQTT 5 is detected as mqtt, but the route wants level 4: the catch-all answers.
        assert exchange(port, [CONNECT_5], 0) == b"no route for you\n"
        line = gatekeep.wait_for(r"\[gatekeep\.connection#info\] .* e2e mqtt .*route=other")
        assert "level=5" in line.string
        assert backend.received.empty()
    finally:
        status = gatekeep.stop()
    # twistd shuts down cleanly on SIGTERM, then exits by that same signal.
    assert status in (0, -signal.SIGTERM), "\n".join(gatekeep.seen)
    assert "Server Shut Down." in gatekeep.seen[-1]


# A broken plugin is named, loudly.

BROKEN_CONFIG = """
[[listener]]
name = "public"
endpoint = "tcp:8443"
service = "edge"

[[service.edge.route]]
name = "first"
match.{detector} = {{}}
forward = {{ to = "tcp:127.0.0.1:8080" }}
"""


def test_broken_plugin_used_is_an_error(with_broken: Venv) -> None:
    config = with_broken.work / "uses-broken.toml"
    config.write_text(BROKEN_CONFIG.format(detector="broken"))
    result = with_broken.run("gatekeep", "check", str(config))
    assert result.returncode == 1
    assert "service.edge.route[0].match.broken: plugin 'broken' (gatekeep.detectors) from " \
           "distribution 'gatekeep-broken-detector' is broken: BrokenImplementation" \
           in result.stderr, result.stderr
    assert "detect" in result.stderr
    # twistd refuses to start on it too, with the same message and no traceback.
    started = with_broken.run("twistd", "-n", "--pidfile=", "gatekeep", "--config", str(config))
    assert started.returncode == 1
    assert "'gatekeep-broken-detector' is broken" in started.stderr
    assert "Traceback" not in started.stderr + started.stdout


def test_broken_plugin_unused_is_a_warning(with_broken: Venv) -> None:
    config = with_broken.work / "uses-tls.toml"
    config.write_text(BROKEN_CONFIG.format(detector="tls"))
    result = with_broken.run("gatekeep", "check", str(config))
    assert result.returncode == 0, result.stderr
    assert re.search(r"^warning: plugin 'broken' \(gatekeep\.detectors\) from distribution "
                     r"'gatekeep-broken-detector' is broken: BrokenImplementation.*detect",
                     result.stdout, re.M), result.stdout
