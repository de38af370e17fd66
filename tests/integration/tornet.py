"""
Real tor for the integration tests, on 127.0.0.1 only, every port picked free at run
time, all state under a pytest tmp dir, every process stopped by its PID.

- :func:`start_offline_tor`: one tor with ``DisableNetwork 1``: its control port works
  (onion services get keys and addresses) but it never touches a network.
- :func:`start_tornet`: a private Tor network (``TestingTorNetwork 1``): three directory
  authorities, two relays that exit to 127.0.0.0/8 only, and a client tor with SOCKS and
  control ports. It bootstraps in 15-40 s; a tor that joins it (``join_binary``, e.g.
  the one gatekeep launches) bootstraps in about a second.

Built from the verified lab recipe (shared/lab/tor/start-tornet.sh): see its README
for why each option is there. The important ones are repeated in comments below.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from pathlib import Path

import attrs

from tests.integration.process import Peer, PeerError, free_port, wait_until
from tests.integration.torctl import ControlError, TorControlClient

__all__ = ["OfflineTor", "Tornet", "start_offline_tor", "start_tornet", "tor_wrapper"]

PASSWORD = "gatekeep-test"
AUTHORITIES = 3
RELAYS = 2  # 3 + 1 is the minimum for onion services (vanguards need distinct relays)


def _hashed_password() -> str:
    done = subprocess.run(["tor", "--quiet", "--hash-password", PASSWORD], check=True,
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip().splitlines()[-1]


def tor_wrapper(path: Path, *, before: str = "", after: str = "", prelude: str = "") -> Path:
    """A shell script that runs tor with extra options around gatekeep's arguments."""
    path.write_text(f'#!/bin/sh\n{prelude}exec tor {before} "$@" {after}\n')
    path.chmod(0o755)
    return path


def _tor(torrc: Path) -> list[str | Path]:
    """tor's command line: a tor that exits by itself if the test run dies without stopping it."""
    return ["tor", "-f", torrc, "--__OwningControllerProcess", str(os.getpid())]


def _free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


# ---------------------------------------------------------------- one offline tor

@attrs.frozen
class OfflineTor:
    peer: Peer
    control_port: int
    password: str
    cookie: Path
    data_dir: Path

    def client(self) -> TorControlClient:
        return TorControlClient(self.control_port, password=self.password)

    def restart(self) -> OfflineTor:
        """Stop this tor and start it again on the same ports and data (a tor restart)."""
        self.peer.stop()
        peer = Peer("tor (offline)", self.peer.argv, self.peer.log_path, cwd=self.data_dir.parent)
        try:
            peer.wait_port("127.0.0.1", self.control_port)
        except PeerError:
            peer.stop()
            raise
        return attrs.evolve(self, peer=peer)


def start_offline_tor(root: Path) -> OfflineTor:
    root.mkdir(parents=True, exist_ok=True)
    data = root / "data"
    data.mkdir(mode=0o700, exist_ok=True)
    control = free_port()
    torrc = root / "torrc"
    torrc.write_text(f"""\
# Written by tests/integration/tornet.py: control protocol only, no network at all.
DataDirectory {data}
DisableNetwork 1
SocksPort 0
ControlPort 127.0.0.1:{control}
CookieAuthentication 1
CookieAuthFile {root}/control_auth_cookie
HashedControlPassword {_hashed_password()}
Log notice stdout
GeoIPFile {root}/empty-geoip
GeoIPv6File {root}/empty-geoip
""")
    (root / "empty-geoip").write_text("")
    peer = Peer("tor (offline)", _tor(torrc), root / "tor.log", cwd=root)
    try:
        peer.wait_output(r"Opened Control listener connection \(ready\)")
    except PeerError:
        peer.stop()
        raise
    return OfflineTor(peer, control, PASSWORD, root / "control_auth_cookie", data)


# ---------------------------------------------------------------- the private network

@attrs.frozen
class Tornet:
    """A running private network and how to use it."""

    root: Path
    nodes: dict[str, Peer]
    socks_port: int
    control_port: int
    password: str
    join_torrc: Path
    join_binary: Path  # tor with --defaults-torrc join.torrc: joins this network

    def client(self) -> TorControlClient:
        return TorControlClient(self.control_port, password=self.password)

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            self.nodes[name].stop()


def _common(name: str, node_dir: Path, root: Path) -> str:
    return f"""\
# Written by tests/integration/tornet.py.
TestingTorNetwork 1
Nickname {name}
DataDirectory {node_dir}
Log notice file {node_dir}/notice.log
SafeLogging 0
ShutdownWaitLength 0
ClientUseIPv6 0
PathsNeededToBuildCircuits 0.67
AvoidDiskWrites 1
GeoIPFile {root}/empty-geoip
GeoIPv6File {root}/empty-geoip
%include {root}/dirauthorities.conf
"""


def _relay(or_port: int, dir_port: int) -> str:
    return f"""\
Address 127.0.0.1
ORPort 127.0.0.1:{or_port}
DirPort 127.0.0.1:{dir_port}
AssumeReachable 1
DirReqStatistics 0
ConnDirectionStatistics 0
ExtraInfoStatistics 0
SocksPort 0
"""


_AUTHORITY = """\
AuthoritativeDirectory 1
V3AuthoritativeDirectory 1
ContactInfo {name}@example.invalid
ExitRelay 0
# A consensus every 10 s (5 s until the first one); valid for two intervals.
TestingV3AuthInitialVotingInterval 5
TestingV3AuthInitialVoteDelay 2
TestingV3AuthInitialDistDelay 2
V3AuthVotingInterval 10
V3AuthVoteDelay 2
V3AuthDistDelay 2
V3AuthNIntervalsValid 2
# Every flag at once, without hours of uptime.
TestingDirAuthVoteGuard *
TestingDirAuthVoteExit *
TestingDirAuthVoteHSDir *
TestingMinExitFlagThreshold 0
# Fast and Stable for every relay, as for most relays of the real network. Here Fast
# otherwise goes to all but the relay with the lowest measured bandwidth, and Stable
# asks for at least the median uptime, which the relays, started a moment after the
# authorities, often never reach: both flags came and went with each consensus. An
# onion service with a port in tor's LongLivedPorts (5222) builds its rendezvous
# circuits through Fast and Stable middle hops (a layer-2 vanguard and one more),
# which must differ from its guard and from the client's rendezvous point; with 2 or 3
# such relays there was often none, tor gave up on the introduction ("Giving up on
# launching a rendezvous circuit") and the client waited on its rendezvous circuit
# until its SOCKS request timed out.
AuthDirFastGuarantee 1
AuthDirVoteStableGuaranteeMinUptime 0
AuthDirVoteStableGuaranteeMTBF 0
"""

_EXIT = """\
# Exits to loopback only; names are never resolved off the host.
ExitRelay 1
ExitPolicy accept 127.0.0.0/8:*
ExitPolicy reject *:*
ServerDNSResolvConfFile {root}/resolv.conf
ServerDNSDetectHijacking 0
ServerDNSAllowBrokenConfig 1
"""

_CLIENT = """\
SocksPort 127.0.0.1:{socks}
ControlPort 127.0.0.1:{control}
CookieAuthentication 1
HashedControlPassword {hashed}
# Full descriptors: microdescriptors summarise exit policies for public addresses
# only, so a microdescriptor client never picks an exit to 127.0.0.1.
UseMicrodescriptors 0
"""


def _authority_keys(name: str, node_dir: Path, dir_port: int) -> tuple[str, str]:
    """(v3 identity, relay fingerprint) of a new authority."""
    keys = node_dir / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["tor-gencert", "--create-identity-key", "--passphrase-fd", "0", "-m", "12",
         "-a", f"127.0.0.1:{dir_port}", "-i", str(keys / "authority_identity_key"),
         "-s", str(keys / "authority_signing_key"), "-c", str(keys / "authority_certificate")],
        input="\n", check=True, capture_output=True, text=True, timeout=60)
    certificate = (keys / "authority_certificate").read_text()
    found = re.search(r"^fingerprint ([0-9A-F]{40})$", certificate, re.MULTILINE)
    listed = subprocess.run(
        ["tor", "--ignore-missing-torrc", "-f", "/dev/null", "--DataDirectory", str(node_dir),
         "--ORPort", "1", "--Nickname", name, "--list-fingerprint", "--quiet"],
        check=True, capture_output=True, text=True, timeout=60)
    relay = "".join(listed.stdout.strip().splitlines()[-1].split()[1:])
    if found is None or not re.fullmatch(r"[0-9A-F]{40}", relay):
        raise PeerError(f"cannot read the fingerprints of {name}: {listed.stdout!r}")
    return found.group(1), relay


def _dir_counts(dir_port: int) -> tuple[int, int, int, int, int]:
    """(Running, HSDir, Fast, Stable, descriptors) as one node's DirPort serves them now."""
    base = f"http://127.0.0.1:{dir_port}/tor"
    texts = []
    for path in ("/status-vote/current/consensus", "/server/all"):
        try:
            with urllib.request.urlopen(base + path, timeout=3) as response:
                texts.append(response.read().decode("utf-8", "replace"))
        except OSError:
            texts.append("")
    flags = [line for line in texts[0].splitlines() if line.startswith("s ")]
    running = sum(" Running" in line for line in flags)
    hsdir = sum(" HSDir" in line for line in flags)
    fast = sum(" Fast" in line for line in flags)
    stable = sum(" Stable" in line for line in flags)
    descriptors = sum(line.startswith("router ") for line in texts[1].splitlines())
    return running, hsdir, fast, stable, descriptors


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def start_tornet(root: Path, timeout: float = 180.0) -> Tornet:
    """Build and start a fresh network under ``root``; return once the client is at 100%."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty-geoip").write_text("")
    (root / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    names = [f"auth{i}" for i in range(AUTHORITIES)] + [f"relay{i}" for i in range(RELAYS)]
    ports = _free_ports(2 * len(names) + 2)
    or_ports = dict(zip(names, ports[0::2], strict=False))
    dir_ports = dict(zip(names, ports[1::2], strict=False))
    socks, control = ports[-2], ports[-1]
    lines = []
    for name in names[:AUTHORITIES]:
        node_dir = root / name
        node_dir.mkdir(mode=0o700, exist_ok=True)
        v3, relay = _authority_keys(name, node_dir, dir_ports[name])
        lines.append(f"DirAuthority {name} orport={or_ports[name]} v3ident={v3} "
                     f"127.0.0.1:{dir_ports[name]} {relay}")
    (root / "dirauthorities.conf").write_text("\n".join(lines) + "\n")
    torrcs: dict[str, Path] = {}
    for name in [*names, "client"]:
        node_dir = root / name
        node_dir.mkdir(mode=0o700, exist_ok=True)
        text = _common(name, node_dir, root)
        if name == "client":
            text += _CLIENT.format(socks=socks, control=control, hashed=_hashed_password())
        else:
            text += _relay(or_ports[name], dir_ports[name])
            text += (_AUTHORITY.format(name=name) if name.startswith("auth")
                     else _EXIT.format(root=root))
        torrcs[name] = node_dir / "torrc"
        torrcs[name].write_text(text)
    join = root / "join.torrc"
    join.write_text(f"""\
# How another tor joins this network as a client and onion-service host.
TestingTorNetwork 1
%include {root}/dirauthorities.conf
ClientUseIPv6 0
PathsNeededToBuildCircuits 0.67
UseMicrodescriptors 0
GeoIPFile {root}/empty-geoip
GeoIPv6File {root}/empty-geoip
""")
    join_binary = tor_wrapper(root / "tor-join", before=f"--defaults-torrc {join}")
    nodes: dict[str, Peer] = {}
    network = Tornet(root, nodes, socks, control, PASSWORD, join, join_binary)
    try:
        for name in names:
            nodes[name] = Peer(name, _tor(torrcs[name]), root / name / "stdout.log",
                               cwd=root)
        # The client starts only once every node serves a consensus listing everyone
        # as Running, HSDir, Fast and Stable (and all descriptors): with the first, partial
        # consensus it would wait for the next one for 10 s or more.
        want = len(names)

        def complete() -> bool:
            return all(min(_dir_counts(dir_ports[name])) >= want for name in names)

        wait_until(complete, timeout, "the private Tor network's complete consensus",
                   output=lambda: _tail(root / "auth0" / "notice.log"))
        nodes["client"] = Peer("client", _tor(torrcs["client"]),
                               root / "client" / "stdout.log", cwd=root)
        nodes["client"].wait_port("127.0.0.1", control)
        client = network.client()
        try:
            client.wait_bootstrapped(timeout)
        finally:
            client.close()
    except (PeerError, ControlError, OSError) as error:
        network.stop()
        raise PeerError(f"the private Tor network did not start: {error}\n"
                        + _tail(root / "client" / "notice.log")) from error
    except BaseException:
        network.stop()
        raise
    return network
