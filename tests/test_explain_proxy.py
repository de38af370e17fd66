"""``gatekeep explain`` on a listener that receives the PROXY protocol."""

from __future__ import annotations

from gatekeep.config.loader import load_config
from gatekeep.explain import explain
from gatekeep.registry import load_registry

CONFIG = """
[[listener]]
name = "lb"
endpoint = "tcp:8443"
service = "edge"
proxy_protocol = "required"
trusted_proxies = ["10.0.0.0/8"]

[[listener]]
name = "direct"
endpoint = "tcp:8444"
service = "edge"

[service.edge]
default = "other"

[[service.edge.route]]
name = "by-authority"
match.proxy = { authority = ["chat.example.org"] }
forward = { to = "tcp:127.0.0.1:5222" }

[[service.edge.route]]
name = "xmpp"
match.xmpp = {}
forward = { to = "tcp:127.0.0.1:5223" }

[[service.edge.route]]
name = "other"
forward = { to = "tcp:127.0.0.1:8080" }
"""
STREAM = (b"<stream:stream to='example.test' xmlns='jabber:client' "
          b"xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")


def run(listener: str, data: bytes) -> str:
    registry = load_registry()
    return explain(load_config(CONFIG, registry), registry, listener, data)


def test_header_then_detection() -> None:
    out = run("lb", b"PROXY TCP4 203.0.113.7 192.0.2.1 4242 443\r\n" + STREAM)
    assert "PROXY preamble: v1 header of 43 bytes, client 203.0.113.7:4242; version=1" in out
    assert "1. by-authority: skipped  proxy: authority=None fits none" in out
    assert "result: route xmpp -> forward to tcp:127.0.0.1:5223" in out


def test_tlv_facts_route() -> None:
    from gatekeep.proxyproto import TLV, Command, Family, ProxyHeader, build
    from gatekeep.proxyproto import tlv as t

    header = build(ProxyHeader(2, Command.PROXY, Family.UNSPEC,
                               tlvs=(TLV(t.AUTHORITY, b"chat.example.org"),)))
    out = run("lb", header + STREAM)
    assert "client (the real peer: kept); version=2 command=proxy family=unspec " \
           "authority=chat.example.org" in out
    assert "result: route by-authority -> forward to tcp:127.0.0.1:5222" in out


def test_refusals_and_listeners_without_proxy() -> None:
    out = run("lb", STREAM)
    assert "the connection is closed: no PROXY header (required on this listener)" in out
    assert "result" not in out
    out = run("lb", b"PROXY TCP4 1.2.3.4 1.2.3.4 1 2\n")
    assert "the connection is closed: malformed PROXY header: bare LF" in out
    out = run("direct", STREAM)
    assert "PROXY preamble" not in out
    assert "proxy: no match (the listener does not receive PROXY headers)" in out
    assert "result: route xmpp" in out
