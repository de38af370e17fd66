"""
Onion listeners against real tor processes that never go online (``DisableNetwork 1``):
everything about the control protocol, keys and processes, nothing about the network
(tests/integration/test_onion_network.py does that through a private Tor network).

- a running tor (password, cookie at a configured path): the service is published
  beside the tor's other onion services, removed at stop, same address after a restart;
- a tor gatekeep launches: same address after a restart, tor stopped by PID and its
  temporary directory removed;
- failures (tor exits, wrong password, nothing on the control port, a client-auth file
  gatekeep did not write) are one clear error line each, and TCP listeners serve
  meanwhile, also while tor takes its time to start.
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.clients import tcp_exchange
from tests.integration.peers import Gatekeep, start_gatekeep
from tests.integration.process import free_port, wait_until
from tests.integration.tornet import OfflineTor, start_offline_tor, tor_wrapper

pytestmark = pytest.mark.slow

CONFIG = """
[[listener]]
name = "public"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[[listener]]
name = "hidden"
service = "edge"
[listener.tor]
ports = [80, 5222]
key_dir = "{key_dir}"
{tor}

[service.edge]
[[service.edge.route]]
name = "hello"
respond = {{ data = "hello from gatekeep\\n" }}
"""

_ADDRESS = re.compile(r"listener hidden: onion address (\S+\.onion) \(ports 80,5222 -> "
                      r"127\.0\.0\.1:(\d+)\)")
_LAUNCHED = re.compile(r"listener hidden: launched tor \(pid (\d+), data in (\S+)\)")
KEY = "descriptor:x25519:" + "A" * 52


def run(workdir: Path, key_dir: Path, tor: str) -> Gatekeep:
    """gatekeep with a TCP listener (waited for) and the onion listener under test."""
    return start_gatekeep(workdir, CONFIG.format(key_dir=key_dir, tor=tor), ["public"])


def address_of(gatekeep: Gatekeep, timeout: float = 30.0) -> tuple[str, int]:
    line = gatekeep.log.wait_for(lambda text: _ADDRESS.search(text) is not None,
                                 timeout=timeout, what="the onion address line")
    found = _ADDRESS.search(line)
    assert found is not None
    return found.group(1), int(found.group(2))


def error_of(gatekeep: Gatekeep, timeout: float = 30.0) -> str:
    return gatekeep.log.wait_for(lambda text: "onion service down:" in text, timeout=timeout,
                                 what="the onion listener's error line")


def assert_public_serves(gatekeep: Gatekeep) -> None:
    reply, _ = tcp_exchange(("127.0.0.1", gatekeep.port("public")), b"hi", b"\n")
    assert reply == b"hello from gatekeep\n"


def hidden_services(tor: OfflineTor) -> list[str]:
    client = tor.client()
    try:
        return client.getconf("HiddenServiceOptions")
    finally:
        client.close()


@pytest.fixture
def other_service(offline_tor: OfflineTor, tmp_path: Path) -> Iterator[list[str]]:
    """Someone else's onion service in the same tor, which gatekeep must leave alone."""
    other = tmp_path / "other-service"
    client = offline_tor.client()
    try:
        client.command(f'SETCONF HiddenServiceDir="{other}" HiddenServicePort="81 '
                       f'127.0.0.1:1" HiddenServiceMaxStreams=7')
        yield hidden_services(offline_tor)
    finally:
        client.command("RESETCONF HiddenServiceDir")
        client.close()


def test_running_tor_publishes_beside_others_and_keeps_its_address(
    offline_tor: OfflineTor, other_service: list[str], tmp_path: Path,
) -> None:
    key_dir = tmp_path / "onion"
    tor = (f'control = "tcp:127.0.0.1:{offline_tor.control_port}"\n'
           f'control_password = "{offline_tor.password}"')
    gatekeep = run(tmp_path / "gk1", key_dir, tor)
    try:
        assert_public_serves(gatekeep)
        address, target = address_of(gatekeep)
        assert (key_dir / "hostname").read_text().strip() == address
        assert hidden_services(offline_tor) == [*other_service, f"HiddenServiceDir={key_dir}",
            f"HiddenServicePort=80 127.0.0.1:{target}",
            f"HiddenServicePort=5222 127.0.0.1:{target}",
            "HiddenServiceVersion=3", "HiddenServiceExportCircuitID=haproxy",
            "HiddenServiceDirGroupReadable=1"]
        assert (key_dir / "hostname").stat().st_mode & 0o777 == 0o640  # the secret key: 0600
        assert (key_dir / "hs_ed25519_secret_key").stat().st_mode & 0o777 == 0o600
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []
    assert hidden_services(offline_tor) == other_service  # ours removed, theirs intact
    again = run(tmp_path / "gk2", key_dir, tor)
    try:
        assert address_of(again)[0] == address
    finally:
        again.stop()
    assert again.problems() == []


def test_cookie_at_a_configured_path(offline_tor: OfflineTor, tmp_path: Path) -> None:
    copy = tmp_path / "cookie"
    copy.write_bytes(offline_tor.cookie.read_bytes())
    control = f'control = "tcp:127.0.0.1:{offline_tor.control_port}"\n'
    gatekeep = run(tmp_path / "good", tmp_path / "onion", control + f'control_cookie = "{copy}"')
    try:
        address_of(gatekeep)
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []
    # A wrong cookie at that path fails, although tor's own cookie file is readable:
    # the configured path is what gatekeep used.
    copy.write_bytes(bytes(32))
    gatekeep = run(tmp_path / "bad", tmp_path / "onion", control + f'control_cookie = "{copy}"')
    try:
        error = error_of(gatekeep)
        assert_public_serves(gatekeep)
    finally:
        gatekeep.stop()
    assert f"tor's control port tcp:127.0.0.1:{offline_tor.control_port} refused " \
           "authentication" in error, error


def test_wrong_password_and_no_tor_are_clear_errors(
    offline_tor: OfflineTor, tmp_path: Path,
) -> None:
    wrong = (f'control = "tcp:127.0.0.1:{offline_tor.control_port}"\n'
             'control_password = "not-the-password"')
    gatekeep = run(tmp_path / "wrong", tmp_path / "onion", wrong)
    try:
        error = error_of(gatekeep)
        assert_public_serves(gatekeep)
    finally:
        gatekeep.stop()
    assert "refused authentication" in error and "Password did not match" in error, error
    port = free_port()
    gatekeep = run(tmp_path / "none", tmp_path / "onion", f'control = "tcp:127.0.0.1:{port}"')
    try:
        error = error_of(gatekeep)
    finally:
        gatekeep.stop()
    assert f"cannot connect to tor's control port tcp:127.0.0.1:{port}: " in error, error
    assert "Connection refused" in error, error


def launched(gatekeep: Gatekeep) -> tuple[int, Path]:
    line = gatekeep.log.wait_for(lambda text: _LAUNCHED.search(text) is not None,
                                 timeout=20, what="the launched tor's line")
    found = _LAUNCHED.search(line)
    assert found is not None
    return int(found.group(1)), Path(found.group(2))


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state == "Z"


def test_launched_tor_keeps_the_address_and_is_stopped(tmp_path: Path) -> None:
    offline = tor_wrapper(tmp_path / "tor-offline", after="--DisableNetwork 1")
    key_dir = tmp_path / "onion"
    tor = f'tor_binary = "{offline}"\nclient_auth = ["{KEY}"]'
    gatekeep = run(tmp_path / "gk1", key_dir, tor)
    try:
        pid, data_dir = launched(gatekeep)
        address, _ = address_of(gatekeep)
        assert data_dir.is_dir() and not gone(pid)
        assert [p.read_text() for p in (key_dir / "authorized_clients").iterdir()] == [KEY + "\n"]
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []
    wait_until(lambda: gone(pid), 10, f"tor (pid {pid}) to exit")
    assert not data_dir.exists()  # the temporary data directory went with it
    # A configured data_dir is kept, and the address survives the restart.
    data = tmp_path / "tor-data"
    gatekeep = run(tmp_path / "gk2", key_dir, f'tor_binary = "{offline}"\ndata_dir = "{data}"')
    try:
        pid, data_dir = launched(gatekeep)
        assert data_dir == data
        assert address_of(gatekeep)[0] == address
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []
    wait_until(lambda: gone(pid), 10, f"tor (pid {pid}) to exit")
    assert (data / "gatekeep-torrc").is_file()
    assert list((key_dir / "authorized_clients").iterdir()) == []  # client_auth removed


def test_tor_that_fails_is_reported_with_its_own_words(tmp_path: Path) -> None:
    broken = tor_wrapper(tmp_path / "tor-broken", after="--NoSuchOption 1")
    gatekeep = run(tmp_path / "gk", tmp_path / "onion", f'tor_binary = "{broken}"')
    try:
        error = error_of(gatekeep)
        assert_public_serves(gatekeep)
    finally:
        gatekeep.stop()
    assert "tor exited before opening its control port (exit status 1)" in error, error
    assert "NoSuchOption" in error, error


def test_tcp_listeners_do_not_wait_for_tor(tmp_path: Path) -> None:
    # A "tor" that never gets anywhere: gatekeep must serve TCP at once, and stop it.
    stuck = tor_wrapper(tmp_path / "tor-stuck", prelude="exec sleep 600\n")
    gatekeep = run(tmp_path / "gk", tmp_path / "onion", f'tor_binary = "{stuck}"')
    try:
        pid, _ = launched(gatekeep)
        assert_public_serves(gatekeep)
        assert not any(_ADDRESS.search(line) for line in gatekeep.log.text().splitlines())
    finally:
        gatekeep.stop()
    assert "Server Shut Down." in gatekeep.log.text()  # a clean stop, not a kill
    wait_until(lambda: gone(pid), 10, f"the stuck tor (pid {pid}) to be stopped")


def test_client_auth_file_gatekeep_did_not_write(tmp_path: Path) -> None:
    clients = tmp_path / "onion" / "authorized_clients"
    clients.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "onion", 0o700)
    (clients / "mallory.auth").write_text(KEY + "\n")
    offline = tor_wrapper(tmp_path / "tor-offline", after="--DisableNetwork 1")
    gatekeep = run(tmp_path / "gk", tmp_path / "onion", f'tor_binary = "{offline}"')
    try:
        error = error_of(gatekeep)
    finally:
        gatekeep.stop()
    assert "holds mallory.auth, which client_auth does not list" in error, error


def test_a_restarted_tor_gets_the_service_again(tmp_path: Path) -> None:
    tor = start_offline_tor(tmp_path / "tor")
    key_dir = tmp_path / "onion"
    control = f'control = "tcp:127.0.0.1:{tor.control_port}"\ncontrol_password = "{tor.password}"'
    gatekeep = run(tmp_path / "gk", key_dir, control)
    try:
        address, _ = address_of(gatekeep)
        mark = gatekeep.mark()
        tor = tor.restart()  # the service was only in that tor's memory: gone now
        error = gatekeep.log.wait_for(lambda t: "onion service down:" in t, since=mark,
                                      what="the lost-tor line")
        assert "the connection to tor closed; trying again in 1s" in error, error
        again = gatekeep.log.wait_for(lambda t: _ADDRESS.search(t) is not None, since=mark,
                                      timeout=30, what="the address, published again")
        assert address in again
        assert f"HiddenServiceDir={key_dir}" in hidden_services(tor)
    finally:
        gatekeep.stop()
        tor.peer.stop()


def test_a_launched_tor_that_dies_is_launched_again(tmp_path: Path) -> None:
    offline = tor_wrapper(tmp_path / "tor-offline", after="--DisableNetwork 1")
    gatekeep = run(tmp_path / "gk", tmp_path / "onion", f'tor_binary = "{offline}"')
    try:
        pid, _ = launched(gatekeep)
        address, _ = address_of(gatekeep)
        mark = gatekeep.mark()
        os.kill(pid, signal.SIGKILL)
        error = gatekeep.log.wait_for(lambda t: "onion service down:" in t, since=mark,
                                      what="the dead-tor line")
        assert "tor exited" in error, error
        line = gatekeep.log.wait_for(lambda t: _LAUNCHED.search(t) is not None, since=mark,
                                     timeout=20, what="a new tor")
        found = _LAUNCHED.search(line)
        assert found is not None and int(found.group(1)) != pid
        again = gatekeep.log.wait_for(lambda t: _ADDRESS.search(t) is not None, since=mark,
                                      timeout=30, what="the address, published again")
        assert address in again
    finally:
        gatekeep.stop()


def test_reload_keeps_tor_for_new_routes_and_republishes_for_new_settings(
    tmp_path: Path,
) -> None:
    offline = tor_wrapper(tmp_path / "tor-offline", after="--DisableNetwork 1")
    key_dir = tmp_path / "onion"
    tor = f'tor_binary = "{offline}"'
    gatekeep = run(tmp_path / "gk", key_dir, tor)
    path = tmp_path / "gk" / "gatekeep.toml"

    def reload(text: str) -> int:
        mark = gatekeep.mark()
        path.write_text(text)
        os.kill(gatekeep.pid, signal.SIGHUP)
        gatekeep.log.wait_for(lambda t: "reload applied" in t, since=mark, what="the reload")
        return mark

    try:
        pid, _ = launched(gatekeep)
        address, _ = address_of(gatekeep)
        # New routes only: the same tor keeps serving, new connections see the change.
        mark = reload(CONFIG.format(key_dir=key_dir, tor=tor).replace("hello from", "hi from"))
        reply, _ = tcp_exchange(("127.0.0.1", gatekeep.port("public")), b"hi", b"\n")
        assert reply == b"hi from gatekeep\n"
        assert not _LAUNCHED.search(gatekeep.log.text(mark)) and not gone(pid)
        # New tor settings: published again with them, same key, same address.
        mark = reload(CONFIG.format(key_dir=key_dir, tor=tor).replace("[80, 5222]", "[80]"))
        line = gatekeep.log.wait_for(lambda t: "onion address" in t, since=mark, timeout=30,
                                     what="the address, published again")
        assert f"onion address {address} (ports 80 -> " in line, line
        assert "tor settings changed; publishing again" in gatekeep.log.text(mark)
        new_pid = int(_LAUNCHED.findall(gatekeep.log.text(mark))[-1][0])
        wait_until(lambda: gone(pid), 10, f"the previous tor (pid {pid}) to exit")
        # Without the onion listener: its tor is stopped.
        without_onion = CONFIG.format(key_dir=key_dir, tor=tor)
        start = without_onion.index('[[listener]]\nname = "hidden"')
        reload(without_onion[:start] + without_onion[without_onion.index("[service.edge]"):])
        wait_until(lambda: gone(new_pid), 10, f"the onion listener's tor (pid {new_pid}) to exit")
    finally:
        gatekeep.stop()
    assert gatekeep.problems() == []
