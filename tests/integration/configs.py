"""
gatekeep configurations that several integration modules start the same way.

Each is a ``str.format`` template (literal braces doubled); a module adds its own
sections after it where it needs more.
"""

from __future__ import annotations

from tests.integration.conftest import GatekeepRunner
from tests.integration.peers import Gatekeep, Prosody, Web

#: Scenarios 1 and 2: TLS for example.test goes, untouched, to Prosody's direct-TLS
#: port when ALPN is ``xmpp-client``, else (also for its subdomains) to nginx's HTTPS.
TLS_PASSTHROUGH = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"
detect_timeout = "5s"

[service.edge]

[[service.edge.route]]
name = "xmpp-tls"
match.tls = {{ sni = ["example.test"], alpn = ["xmpp-client"] }}
forward = {{ to = "tcp:127.0.0.1:{xmpp}" }}

[[service.edge.route]]
name = "web-https"
match.tls = {{ sni = ["example.test", "*.example.test"] }}
forward = {{ to = "tcp:127.0.0.1:{https}" }}
"""

#: TLS for example.test and its subdomains terminated with the certificates in
#: ``{certs}`` (ALPN h2 or http/1.1), the plaintext handed to the HTTP site ``site``,
#: whose ``[http.site]`` section the module appends.
TLS_TO_HTTP_SITE = """
[[listener]]
name = "edge"
endpoint = "tcp:0:interface=127.0.0.1"
service = "edge"

[service.edge]

[[service.edge.route]]
name = "tls"
match.tls = {{ sni = ["example.test", "*.example.test"] }}
terminate = {{ certificates = "{certs}", alpn = ["h2", "http/1.1"], service = "inner" }}

[service.inner]

[[service.inner.route]]
name = "web"
http = "site"
"""


def start_tls_passthrough(runner: GatekeepRunner, prosody: Prosody, web: Web) -> Gatekeep:
    """gatekeep running :data:`TLS_PASSTHROUGH` in front of ``prosody`` and ``web``."""
    config = TLS_PASSTHROUGH.format(xmpp=prosody.direct_tls_port, https=web.https_port)
    return runner(config, ["edge"])
