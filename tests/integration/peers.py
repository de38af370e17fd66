"""
Real peers on 127.0.0.1 for the integration tests, each started on free ports with all
of its state under a pytest tmp dir, and stopped by PID.

- :func:`start_prosody`: Prosody 0.12, c2s STARTTLS port and direct-TLS port (ALPN
  ``xmpp-client``), user alice@example.test registered with prosodyctl.
- :func:`start_web`: nginx answering one line that names the backend and what it
  saw (``backend=web-https sni=... alpn=...``), over HTTP, a second HTTP port
  (``web-alt``) and HTTPS with http2.
- :func:`start_sshd`: OpenSSH's sshd with its own config and host key.
- :func:`start_banner_server`: a tiny server-speaks-first (SMTP-like) backend.
- :func:`start_gatekeep`: gatekeep itself (``twistd -n gatekeep``), whose log lines
  are kept for assertions (:class:`Gatekeep`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.process import LineReader, Peer, PeerError, free_port, stop_pid

__all__ = [
    "XMPP_PASSWORD",
    "XMPP_USER",
    "BannerServer",
    "ConnectionLine",
    "Gatekeep",
    "Prosody",
    "Sshd",
    "Web",
    "parse_connection_line",
    "start_banner_server",
    "start_demo",
    "start_gatekeep",
    "start_prosody",
    "start_sshd",
    "start_web",
]

HERE = Path(__file__).resolve().parent
XMPP_USER = "alice"
XMPP_PASSWORD = "secret"
BANNER = "220 banner.example.test ESMTP gatekeep-test"


def _lua(text: str | Path) -> str:
    return json.dumps(str(text))  # a JSON string of plain ASCII is a valid Lua string


# ---------------------------------------------------------------- Prosody

_PROSODY_CFG = """\
-- Written by tests/integration/peers.py: Prosody for one test session, loopback only.
run_as_root = true           -- tests run as root; without it mod_posix refuses to start
pidfile = {pidfile}
data_path = {data}
certificates = {certs}       -- <host>.crt/.key: Prosody finds certificates by host name
interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {c2s} }}
c2s_direct_tls_ports = {{ {direct_tls} }}
c2s_direct_tls_ssl = {{
    certificate = {cert};
    key = {key};
    alpn = {{ "xmpp-client" }};  -- without it, direct TLS ignores the client's ALPN
}}
ssl = {{ certificate = {cert}; key = {key}; }}
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "disco"; "ping"; "presence"; "message"; "iq"; "posix";
}}
modules_disabled = {{ "s2s"; "offline"; }}
authentication = "internal_hashed"
c2s_require_encryption = true
allow_registration = false
storage = "internal"
log = {{
    {{ levels = {{ min = "info" }}, to = "file", filename = {log} }};
    {{ levels = {{ min = "debug" }}, to = "file", filename = {debug_log} }};
}}

VirtualHost "{domain}"
"""


@attrs.frozen
class Prosody:
    peer: Peer
    c2s_port: int
    direct_tls_port: int
    log: Path
    domain: str = DOMAIN

    @property
    def jid(self) -> str:
        return f"{XMPP_USER}@{self.domain}"


def start_prosody(root: Path, certificate: Certificate, template: str = _PROSODY_CFG) -> Prosody:
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    c2s = free_port()
    direct_tls = free_port()
    log = root / "prosody.log"
    config = root / "prosody.cfg.lua"
    config.write_text(template.format(
        pidfile=_lua(root / "prosody.pid"), data=_lua(root / "data"),
        certs=_lua(certificate.directory), cert=_lua(certificate.cert),
        key=_lua(certificate.key), c2s=c2s, direct_tls=direct_tls, log=_lua(log),
        debug_log=_lua(root / "prosody-debug.log"), domain=DOMAIN,
    ))
    registered = subprocess.run(
        ["prosodyctl", "--config", str(config), "register", XMPP_USER, DOMAIN, XMPP_PASSWORD],
        capture_output=True, timeout=30, check=False, stdin=subprocess.DEVNULL)
    if registered.returncode != 0:
        raise PeerError("prosodyctl register failed: "
                        + registered.stdout.decode(errors="replace")
                        + registered.stderr.decode(errors="replace"))
    peer = Peer("prosody", ["prosody", "--config", config, "-F"], root / "stdout.log",
                cwd=root, extra_logs=[log])
    try:
        peer.wait_port("127.0.0.1", c2s)
        peer.wait_port("127.0.0.1", direct_tls)
    except PeerError:
        peer.stop()
        raise
    return Prosody(peer, c2s, direct_tls, log)


# ---------------------------------------------------------------- nginx

_NGINX_CONF = """\
# Written by tests/integration/peers.py: the web backend, one echo line per request.
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 256; }}
http {{
    access_log {root}/access.log combined;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    default_type text/plain;
    server {{
        listen 127.0.0.1:{http};
        server_name _;
        location / {{
            return 200 "backend=web-http {plain_echo}";
        }}
    }}
    server {{
        listen 127.0.0.1:{alt};
        server_name _;
        location / {{
            return 200 "backend=web-alt {plain_echo}";
        }}
    }}
    server {{
        listen 127.0.0.1:{https} ssl http2;
        server_name _;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {{
            return 200 "backend=web-https {tls_echo}";
        }}
    }}
}}
"""


# What each web backend answers: one line naming what it saw.
_PLAIN_ECHO = "host=$host remote=$remote_addr uri=$request_uri proto=$server_protocol\\n"
_TLS_ECHO = "sni=$ssl_server_name alpn=$ssl_alpn_protocol " + _PLAIN_ECHO


@attrs.frozen
class Web:
    peer: Peer
    http_port: int
    alt_port: int
    https_port: int
    access_log: Path


def start_web(root: Path, certificate: Certificate) -> Web:
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    http, alt, https = free_port(), free_port(), free_port()
    while len({http, alt, https}) < 3:
        alt, https = free_port(), free_port()
    config = root / "nginx.conf"
    config.write_text(_NGINX_CONF.format(
        root=root, http=http, alt=alt, https=https, cert=certificate.cert, key=certificate.key,
        plain_echo=_PLAIN_ECHO, tls_echo=_TLS_ECHO))
    # -e: startup errors to stderr, not /var/log/nginx; -p: relative paths under root.
    peer = Peer("nginx", ["nginx", "-p", f"{root}/", "-e", "stderr", "-c", config],
                root / "nginx.log", cwd=root)
    try:
        for port in (http, alt, https):
            peer.wait_port("127.0.0.1", port)
    except PeerError:
        peer.stop()
        raise
    return Web(peer, http, alt, https, root / "access.log")


# ---------------------------------------------------------------- sshd

_SSHD_CONFIG = """\
# Written by tests/integration/peers.py (port and host key come from -p and -h).
ListenAddress 127.0.0.1
PidFile none
LogLevel VERBOSE
UsePAM no
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysFile none
X11Forwarding no
PrintMotd no
"""


@attrs.frozen
class Sshd:
    peer: Peer
    port: int
    host_key_pub: Path

    def public_key(self) -> tuple[str, str]:
        """(key type, base64 blob) of the host key, as ssh-keyscan prints them."""
        kind, blob = self.host_key_pub.read_text().split()[:2]
        return kind, blob


def start_sshd(root: Path) -> Sshd:
    root.mkdir(parents=True, exist_ok=True)
    # sshd insists on its privilege-separation directory (compiled in; not configurable).
    # Debian's init scripts create it; a container without them may not have it.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    key = root / "ssh_host_ed25519_key"
    for old in (key, key.with_suffix(".pub")):
        old.unlink(missing_ok=True)  # ssh-keygen would ask before overwriting
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gatekeep-test",
                    "-f", str(key)], check=True, capture_output=True, timeout=30,
                   stdin=subprocess.DEVNULL)
    config = root / "sshd_config"
    config.write_text(_SSHD_CONFIG)
    port = free_port()
    peer = Peer("sshd", ["/usr/sbin/sshd", "-D", "-e", "-f", config, "-p", str(port), "-h", key],
                root / "sshd.log", cwd=root)
    try:
        peer.wait_output(rf"Server listening on 127\.0\.0\.1 port {port}\b")
    except PeerError:
        peer.stop()
        raise
    return Sshd(peer, port, key.with_suffix(".pub"))


# ---------------------------------------------------------------- banner server

@attrs.frozen
class BannerServer:
    peer: Peer
    port: int
    banner: str


def start_banner_server(root: Path) -> BannerServer:
    root.mkdir(parents=True, exist_ok=True)
    peer = Peer("banner-server",
                [sys.executable, HERE / "banner_server.py", "--banner", BANNER],
                root / "banner.log", cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        match = peer.wait_output(r"^listening on 127\.0\.0\.1:(\d+)$")
    except PeerError:
        peer.stop()
        raise
    return BannerServer(peer, int(match.group(1)), BANNER)


# ---------------------------------------------------------------- HTTP echo backend

@attrs.frozen
class HTTPEcho:
    peer: Peer
    port: int


def start_http_echo(root: Path) -> HTTPEcho:
    """tests/integration/http_echo.py: echoes raw request heads, serves /page and /ws."""
    root.mkdir(parents=True, exist_ok=True)
    peer = Peer("http-echo", [sys.executable, HERE / "http_echo.py"], root / "echo.log",
                cwd=root, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        match = peer.wait_output(r"^listening on 127\.0\.0\.1:(\d+)$")
    except PeerError:
        peer.stop()
        raise
    return HTTPEcho(peer, int(match.group(1)))


# ---------------------------------------------------------------- gatekeep

_CONNECTION = re.compile(
    r"\[gatekeep\.connection#info(?: worker-\d+)?\] (?P<client>\S+) (?P<listener>\S+) "
    r"(?P<protocol>\S+)"
    r"(?P<facts>.*?) route=(?P<route>\S+) backend=(?P<backend>\S+) in=(?P<bytes_in>\d+) "
    r"out=(?P<bytes_out>\d+) time=(?P<time>[0-9.]+)s close=(?P<close>.*)$")
_FACT = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
_LISTENING = re.compile(r"\blistener (?P<name>\S+) listening on (?P<address>\S+)")


@attrs.frozen
class ConnectionLine:
    """One parsed per-connection log line of gatekeep."""

    client: str
    listener: str
    protocol: str
    facts: dict[str, str]
    route: str
    backend: str
    bytes_in: int
    bytes_out: int
    time: float
    close: str
    raw: str


def parse_connection_line(line: str) -> ConnectionLine | None:
    match = _CONNECTION.search(line)
    if match is None:
        return None
    facts = {k: json.loads(v) if v.startswith('"') else v
             for k, v in _FACT.findall(match["facts"])}
    return ConnectionLine(
        match["client"], match["listener"], match["protocol"], facts, match["route"],
        match["backend"], int(match["bytes_in"]), int(match["bytes_out"]),
        float(match["time"]), match["close"], line)


class Gatekeep:
    """A running ``twistd -n gatekeep``, its listeners' addresses and its log lines."""

    def __init__(self, argv: Sequence[str | Path], workdir: Path, listeners: Sequence[str],
                 timeout: float = 30.0, env: dict[str, str] | None = None,
                 pass_fds: Sequence[int] = ()) -> None:
        self.argv = [str(a) for a in argv]
        self.workdir = workdir
        environ = {**os.environ, "PYTHONUNBUFFERED": "1"}
        environ.pop("NOTIFY_SOCKET", None)  # never tell a real systemd that we are ready
        environ.update(env or {})
        self.proc: subprocess.Popen[bytes] = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, cwd=workdir, env=environ, start_new_session=True,
            pass_fds=tuple(pass_fds))
        self.log = LineReader(self.proc, workdir / "gatekeep.log")
        self.addresses: dict[str, str] = {}
        try:
            for name in listeners:
                self.addresses[name] = self._wait_listening(name, timeout)
        except PeerError:
            self.stop()
            raise

    def _wait_listening(self, name: str, timeout: float) -> str:
        def listening(text: str) -> bool:
            found = _LISTENING.search(text)
            return found is not None and found["name"] == name

        line = self.log.wait_for(listening, timeout=timeout,
                                 what=f"gatekeep listener {name} to listen")
        found = _LISTENING.search(line)
        assert found is not None
        return found["address"]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def address(self, listener: str) -> str:
        """``127.0.0.1:PORT``, ``[::1]:PORT`` or ``unix:/path``, from the log."""
        return self.addresses[listener]

    def port(self, listener: str) -> int:
        return int(self.addresses[listener].rpartition(":")[2])

    def mark(self) -> int:
        return self.log.mark()

    def connection(self, since: int, timeout: float = 10.0, **want: str) -> ConnectionLine:
        """The first connection line after ``since`` whose fields equal ``want``."""

        def fits(text: str) -> bool:
            parsed = parse_connection_line(text)
            return parsed is not None and all(
                getattr(parsed, key) == value for key, value in want.items())

        shown = " ".join(f"{k}={v}" for k, v in want.items()) or "any"
        line = self.log.wait_for(fits, since, timeout, what=f"a connection line with {shown}")
        parsed = parse_connection_line(line)
        assert parsed is not None
        return parsed

    def connections(self, since: int = 0) -> list[ConnectionLine]:
        lines = [parse_connection_line(t) for t in self.log.text(since).splitlines()]
        return [line for line in lines if line is not None]

    def problems(self) -> list[str]:
        """Log lines that show a bug: tracebacks, unhandled errors, critical/error events."""
        bad = re.compile(r"Traceback|Unhandled|#critical\]|#error\]")
        return [line for line in self.log.text().splitlines() if bad.search(line)]

    def stop(self) -> None:
        stop_pid(self.proc)
        self.log.join()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def twistd() -> Path:
    """The twistd of the interpreter running the tests (the project venv in CI)."""
    return Path(sys.executable).parent / "twistd"


def start_gatekeep(workdir: Path, config: str, listeners: Sequence[str]) -> Gatekeep:
    """Write ``config`` to ``workdir`` and run gatekeep until each listener listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "gatekeep.toml"
    path.write_text(config)
    return Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--config", path], workdir,
                    listeners)


def start_demo(workdir: Path, port: int, listeners: Sequence[str]) -> Gatekeep:
    workdir.mkdir(parents=True, exist_ok=True)
    return Gatekeep([twistd(), "-n", "--pidfile=", "gatekeep", "--demo-port", str(port)],
                    workdir, listeners)
