"""
Scenario 8: the embedded demo (``twistd -n gatekeep --demo-port P``, no config):
each protocol on the one port gets a report naming its detector and facts.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.clients import curl, require, socat_exchange, tcp_exchange
from tests.integration.peers import Gatekeep, start_demo
from tests.integration.process import free_port, ipv6_loopback

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gatekeep]:
    v6 = ipv6_loopback()
    port = free_port(also=["::1"] if v6 else [])
    listeners = ["demo-ipv4", "demo-ipv6"] if v6 else ["demo-ipv4"]
    gatekeep = start_demo(tmp_path_factory.mktemp("demo"), port, listeners)
    yield gatekeep
    gatekeep.stop()
    assert not gatekeep.problems(), gatekeep.problems()


def _report_lines(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(":")
        if sep and key in {"listener", "client", "detector", "facts", "route"}:
            fields[key] = value.strip()
    return fields


def test_demo_listens_on_the_given_port(demo: Gatekeep) -> None:
    assert demo.address("demo-ipv4").startswith("127.0.0.1:")
    port = demo.port("demo-ipv4")
    if "demo-ipv6" in demo.addresses:
        assert demo.address("demo-ipv6") == f"[::1]:{port}"


def test_http(demo: Gatekeep) -> None:
    port = demo.port("demo-ipv4")
    result = curl(f"http://localhost:{port}/")
    assert result.status == 200, result
    report = _report_lines(result.body)
    assert report["detector"] == "http", result.body
    assert report["route"] == "http"
    facts = report["facts"].split()
    assert "host=localhost" in facts, report
    assert f"port={port}" in facts, report
    assert report["client"] == result.client


def test_tls(demo: Gatekeep) -> None:
    port = demo.port("demo-ipv4")
    result = curl("-k", f"https://localhost:{port}/")
    assert result.status == 200, result
    report = _report_lines(result.body)
    assert report["detector"] == "tls", result.body
    assert report["route"] == "tls"
    facts = report["facts"].split()
    assert "sni=localhost" in facts, report
    assert "alpn=h2,http/1.1" in facts, report
    assert "negotiated ALPN: http/1.1" in result.body


def test_xmpp(demo: Gatekeep) -> None:
    require("socat")
    header = (b"<stream:stream to='localhost' xmlns='jabber:client' "
              b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")
    reply = socat_exchange(f"TCP:localhost:{demo.port('demo-ipv4')}", header, until=None)
    text = reply.decode()
    assert "<stream:error>" in text, text
    report = _report_lines(text)
    assert report["detector"] == "xmpp", text
    assert report["route"] == "xmpp"
    assert "to=localhost" in report["facts"].split(), report


def test_ssh(demo: Gatekeep) -> None:
    reply, _ = tcp_exchange(("127.0.0.1", demo.port("demo-ipv4")), b"SSH-2.0-OpenSSH_9.2\r\n")
    report = _report_lines(reply.decode())
    assert report["detector"] == "ssh", reply
    assert report["route"] == "ssh"
