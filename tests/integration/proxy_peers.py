"""
Real PROXY protocol peers for the integration tests, on free loopback ports.

- :func:`start_haproxy`: HAProxy 2.6 in the foreground with a config the test writes
  (``send-proxy``/``send-proxy-v2`` in front of gatekeep, or ``accept-proxy`` behind
  it); its log goes to stderr, kept in the peer's log file.
- :func:`start_nginx`: nginx with a config the test writes (``stream`` with
  ``proxy_protocol on``, or ``http`` with ``listen ... proxy_protocol``).
- :func:`start_prosody_proxy`: Prosody with the vendored ``mod_net_proxy`` on a
  PROXY port mapped to c2s, and ``mod_gk_sessionip``, which logs the address a
  session got (``gk_sessionip bind jid=... ip=... port=...``).
- :func:`connect_from`: a client socket bound to a chosen source address, so the
  client (127.0.0.5) differs from every proxy (127.0.0.1).
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import attrs

from tests.integration.certs import Certificate
from tests.integration.peers import _PROSODY_CFG, Prosody, _lua, start_prosody
from tests.integration.process import Peer, PeerError, free_port

__all__ = [
    "CLIENT_IP",
    "ProsodyProxy",
    "connect_from",
    "start_haproxy",
    "start_nginx",
    "start_prosody_proxy",
]

HERE = Path(__file__).resolve().parent
MODULES = HERE / "prosody_modules"
#: What we ship to users (mod_gk_proxy_secure): tested as shipped, not as a copy.
CONTRIB = HERE.parent.parent / "contrib" / "prosody"
#: The client's own source address: not 127.0.0.1, which every proxy here uses.
CLIENT_IP = "127.0.0.5"


def start_haproxy(root: Path, config: str, ports: list[tuple[str, int]]) -> Peer:
    root.mkdir(parents=True, exist_ok=True)
    path = root / "haproxy.cfg"
    path.write_text(config)
    peer = Peer("haproxy", ["haproxy", "-db", "-f", path], root / "haproxy.log", cwd=root)
    try:
        for host, port in ports:
            peer.wait_port(host, port)
    except PeerError:
        peer.stop()
        raise
    return peer


_NGINX_HEAD = """\
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
pid {root}/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
"""

_NGINX_TEMPS = """\
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
"""


def start_nginx(root: Path, body: str, ports: list[int]) -> Peer:
    """nginx running ``body`` (``stream {...}`` or ``http {...}``; ``{temps}`` expands)."""
    (root / "tmp").mkdir(parents=True, exist_ok=True)
    config = root / "nginx.conf"
    config.write_text(_NGINX_HEAD.format(root=root)
                      + body.replace("{temps}", _NGINX_TEMPS.format(root=root)))
    peer = Peer("nginx", ["nginx", "-p", f"{root}/", "-e", "stderr", "-c", config],
                root / "nginx.log", cwd=root)
    try:
        for port in ports:
            peer.wait_port("127.0.0.1", port)
    except PeerError:
        peer.stop()
        raise
    return peer


@attrs.frozen
class ProsodyProxy:
    """A Prosody whose ``proxy_port`` takes PROXY v1/v2 headers (mod_net_proxy) for c2s."""

    prosody: Prosody
    proxy_port: int
    #: A second PROXY port whose sessions mod_gk_proxy_secure marks encrypted (for
    #: streams gatekeep decrypted), when started with ``secure_port=True``.
    secure_port: int | None = None

    @property
    def jid(self) -> str:
        return self.prosody.jid

    def log_text(self) -> str:
        return self.prosody.log.read_text(encoding="utf-8", errors="replace")


def start_prosody_proxy(root: Path, certificate: Certificate,
                        secure_port: bool = False) -> ProsodyProxy:
    """
    Prosody as :func:`~tests.integration.peers.start_prosody` starts it, plus the
    vendored mod_net_proxy (checked against its sha256) listening on a PROXY port
    that trusts 127.0.0.1 only.
    """
    expected = (MODULES / "mod_net_proxy.sha256").read_text().split()[0]
    actual = hashlib.sha256((MODULES / "mod_net_proxy.lua").read_bytes()).hexdigest()
    if actual != expected:
        raise PeerError(f"mod_net_proxy.lua does not match its sha256 ({actual})")
    proxy_port = free_port()
    secure = free_port() if secure_port else None
    while secure == proxy_port:
        secure = free_port()
    mappings = f"[{proxy_port}] = \"c2s\"" + (f"; [{secure}] = \"c2s\"" if secure else "")
    extra = (
        f"plugin_paths = {{ {_lua(MODULES)}; {_lua(CONTRIB)} }}\n"
        f"proxy_port_mappings = {{ {mappings} }}\n"
        "proxy_trusted_proxies = { \"127.0.0.1\" }\n"
        + (f"gk_proxy_secure_ports = {{ {secure} }}\n" if secure else "")
    )
    modules = '"net_proxy"; "gk_sessionip";' + (' "gk_proxy_secure";' if secure else "")
    # Prosody refuses an option set twice: add the modules to the one list.
    template = _PROSODY_CFG.replace('"posix";\n', f'"posix"; {modules}\n', 1)
    if template == _PROSODY_CFG:
        raise PeerError("peers._PROSODY_CFG changed: cannot add mod_net_proxy to it")
    template = template.replace('\nVirtualHost "{domain}"', "\n" + extra.replace(
        "{", "{{").replace("}", "}}") + 'VirtualHost "{domain}"')
    prosody = start_prosody(root, certificate, template=template)
    try:
        for port in (proxy_port, *([secure] if secure else [])):
            prosody.peer.wait_port("127.0.0.1", port)
    except PeerError:
        prosody.peer.stop()
        raise
    return ProsodyProxy(prosody, proxy_port, secure)


def connect_from(source: str, address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """A TCP connection to ``address`` from ``source`` (any port)."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.bind((source, 0))
        sock.connect(address)
    except OSError:
        sock.close()
        raise
    return sock

