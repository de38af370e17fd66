"""
Prosody's HTTP server (BOSH and mod_websocket) behind gatekeep's HTTP proxy with TLS
terminated: an XMPP-over-WebSocket client logs in, binds and sends itself a
message; a BOSH session is created and authenticates; Prosody learns the client's
address from X-Forwarded-For.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator

import pytest

from tests.integration.certs import DOMAIN, Certificate
from tests.integration.clients import curl, require
from tests.integration.configs import TLS_TO_HTTP_SITE
from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import (
    _PROSODY_CFG,
    XMPP_PASSWORD,
    XMPP_USER,
    Gatekeep,
    Prosody,
    _lua,
    start_prosody,
)
from tests.integration.process import free_port, wait_until
from tests.integration.proxy_peers import MODULES
from tests.integration.xmpp_ws import ws_login

pytestmark = pytest.mark.slow

CLIENT_IP = "127.0.0.6"

CONFIG = TLS_TO_HTTP_SITE + """
[http.site]
response_timeout = "90s"    # BOSH holds requests open for up to `wait` seconds

[[http.site.route]]
name = "prosody"
path = ["/http-bind", "/xmpp-websocket"]
to = "tcp:127.0.0.1:{http}"
"""

_HTTP_SETTINGS = """\
http_ports = {{ {http} }}
http_interfaces = {{ "127.0.0.1" }}
https_ports = {{ }}
consider_bosh_secure = true        -- TLS is terminated by gatekeep in front
consider_websocket_secure = true
trusted_proxies = {{ "127.0.0.1" }} -- X-Forwarded-For from gatekeep names the client
plugin_paths = {{ {modules} }}      -- mod_gk_sessionip logs each session's address
"""


@pytest.fixture(scope="module")
def prosody_http(tmp_path_factory: pytest.TempPathFactory,
                 certificate: Certificate) -> Iterator[tuple[Prosody, int]]:
    require("prosody")
    require("prosodyctl")
    http = free_port()
    settings = _HTTP_SETTINGS.format(http=http, modules=_lua(MODULES))
    template = _PROSODY_CFG.replace(
        'modules_enabled = {{\n    "roster";',
        settings.replace("{", "{{").replace("}", "}}")
        + 'modules_enabled = {{\n    "bosh"; "websocket"; "gk_sessionip"; "roster";')
    assert '"bosh"' in template
    root = tmp_path_factory.mktemp("prosody-http")
    started = start_prosody(root, certificate, template)
    started.peer.wait_port("127.0.0.1", http)
    yield started, http
    started.peer.stop()


@pytest.fixture(scope="module")
def gatekeep(gatekeep_runner: GatekeepRunner, prosody_http: tuple[Prosody, int],
             certificate: Certificate) -> Gatekeep:
    config = CONFIG.format(certs=certificate.directory, http=prosody_http[1])
    return gatekeep_runner(config, ["edge"])


def test_websocket_login(gatekeep: Gatekeep, certificate: Certificate,
                         prosody_http: tuple[Prosody, int]) -> None:
    prosody, _http = prosody_http
    jid = ws_login("127.0.0.1", gatekeep.port("edge"), "xmpp.example.test", DOMAIN, XMPP_USER,
                   XMPP_PASSWORD, certificate.cert, source=CLIENT_IP)
    assert jid.startswith(f"{XMPP_USER}@{DOMAIN}/")
    line = f"gk_sessionip bind jid={jid} ip={CLIENT_IP} "
    wait_until(lambda: line in prosody.log.read_text(errors="replace"), 10,
               f"prosody to see the client as {CLIENT_IP}")


def test_bosh_session_and_auth(gatekeep: Gatekeep, certificate: Certificate) -> None:
    port = gatekeep.port("edge")
    url = f"https://xmpp.example.test:{port}/http-bind"
    common = ["--cacert", str(certificate.cert), "--resolve",
              f"xmpp.example.test:{port}:127.0.0.1", "-H", "Content-Type: text/xml"]
    opened = curl(*common, "--data",
                  f"<body rid='1000' xmlns='http://jabber.org/protocol/httpbind' to='{DOMAIN}' "
                  "xml:lang='en' wait='10' hold='1' ver='1.6' xmpp:version='1.0' "
                  "xmlns:xmpp='urn:xmpp:xbosh'/>", url)
    assert opened.status == 200, opened
    sid = re.search(r"sid=['\"]([^'\"]+)", opened.body)
    assert sid is not None, opened.body
    assert "PLAIN" in opened.body or "mechanisms" in opened.body
    secret = base64.b64encode(f"\0{XMPP_USER}\0{XMPP_PASSWORD}".encode()).decode()
    auth = curl(*common, "--data",
                f"<body rid='1001' sid='{sid.group(1)}' "
                "xmlns='http://jabber.org/protocol/httpbind'>"
                f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{secret}"
                "</auth></body>", url)
    assert auth.status == 200, auth
    assert "<success" in auth.body, auth.body
