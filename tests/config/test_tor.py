"""``[listener.tor]`` and ``tor:`` client endpoints as ``gatekeep check`` sees them."""

from __future__ import annotations

import base64
import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatekeep.cli import route_table
from gatekeep.config.endpoints import client_endpoint_problem, split_endpoint
from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config
from gatekeep.config.tor import TorSettings
from gatekeep.registry import Registry, load_registry

KEY = base64.b32encode(bytes(range(32))).decode().rstrip("=")

BASE = """
[[listener]]
name = "public"
endpoint = "tcp:8443"
service = "edge"

[[listener]]
name = "onion"
service = "edge"
{extra}
[listener.tor]
ports = [80, 5222]
key_dir = "/var/lib/gatekeep/onion"
{tor}

[service.edge]

[[service.edge.route]]
name = "web"
forward = {{ to = "{to}" }}
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def config_text(tor: str = "", extra: str = "", to: str = "tcp:127.0.0.1:8080") -> str:
    return textwrap.dedent(BASE.format(tor=tor, extra=extra, to=to))


def errors_of(text: str, registry: Registry) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(text, registry)
    return [str(e) for e in caught.value.errors]


def test_launching_listener_loads(registry: Registry) -> None:
    config = load_config(config_text(), registry)
    onion = config.listeners[1]
    assert onion.endpoint is None
    assert onion.tor == TorSettings(ports=(80, 5222), key_dir="/var/lib/gatekeep/onion")
    assert onion.tor.launches
    assert onion.where == "onion:80,5222"
    assert "  onion   onion:80,5222  -> service edge" in route_table(config)


def test_running_tor_with_password_and_client_auth(registry: Registry) -> None:
    tor = (f'control = "tcp:127.0.0.1:9051"\ncontrol_password = "s3cret"\n'
           f'client_auth = ["descriptor:x25519:{KEY.lower()}"]')
    settings = load_config(config_text(tor), registry).listeners[1].tor
    assert settings is not None and not settings.launches
    assert settings.control_password == "s3cret"
    # Normalised to tor's own spelling: upper-case base32.
    assert settings.client_auth == (f"descriptor:x25519:{KEY}",)


@pytest.mark.parametrize(("tor", "expected"), [
    ("ports = []", "listener[1].tor.ports: list at least one onion port"),
    ('tor_binary = "/nonexistent/tor"',
     "listener[1].tor.tor_binary: cannot find the tor program '/nonexistent/tor'"),
    ('control = "tcp:127.0.0.1:9051"\ndata_dir = "/var/lib/gk-tor"',
     "listener[1].tor.data_dir: only used when gatekeep launches its own tor"),
    ('control_password = "x"', "listener[1].tor.control_password: only used with `control`"),
    ('control = "tcp:127.0.0.1:9051"\ncontrol_password = "x"\ncontrol_cookie = "/c"',
     "listener[1].tor.control_cookie: impossible combination: both a password and a cookie"),
    ('control = "tcpp:127.0.0.1:9051"', "listener[1].tor.control: bad client endpoint string"),
    ('client_auth = ["descriptor:x25519:short"]',
     "listener[1].tor.client_auth: 'descriptor:x25519:short' is not an authorized-client line"),
    ('data_dir = "/var/lib/gatekeep/onion/"', "listener[1].tor.data_dir: is the same directory"),
    ('data_dir = "tor-data"', "listener[1].tor.data_dir: 'tor-data' is not an absolute path"),
    ("porst = [80]", "listener[1].tor.porst: unknown key 'porst'"),
])
def test_bad_tor_settings(registry: Registry, tor: str, expected: str) -> None:
    text = config_text(tor)
    if tor.startswith(("ports", "porst")):
        text = text.replace("ports = [80, 5222]\n", "")
    errors = errors_of(text, registry)
    assert len(errors) == (2 if tor.startswith("porst") else 1), errors  # + missing ports
    assert errors[0].startswith(expected), errors


def test_bad_port_and_relative_key_dir(registry: Registry) -> None:
    text = config_text().replace("[80, 5222]", "[80, 80]").replace(
        '"/var/lib/gatekeep/onion"', '"onion-keys"')
    assert errors_of(text, registry) == [
        "listener[1].tor.ports: port 80 is listed twice",
        "listener[1].tor.key_dir: 'onion-keys' is not an absolute path",
    ]


def test_endpoint_and_tor_are_exclusive(registry: Registry) -> None:
    errors = errors_of(config_text(extra='endpoint = "tcp:9999"'), registry)
    assert errors == ["listener[1]: impossible combination: both `endpoint` and a "
                      "[listener.tor] table\n    fix: keep one: a listener listens on an "
                      "endpoint or is an onion service"]


def test_onion_endpoint_string_is_refused(registry: Registry) -> None:
    text = config_text().replace('endpoint = "tcp:8443"', 'endpoint = "onion:80"')
    (error,) = errors_of(text, registry)
    assert error.startswith("listener[0].endpoint: onion services are declared with a "
                            "[listener.tor] table")


def test_two_onion_listeners_cannot_share_a_key_dir(registry: Registry) -> None:
    text = config_text() + textwrap.dedent("""
        [[listener]]
        name = "onion2"
        service = "edge"
        [listener.tor]
        ports = [443]
        key_dir = "/var/lib/gatekeep//onion"
        """)
    assert errors_of(text, registry) == [
        "listener[2].tor.key_dir: key_dir also used by listener 'onion'"]


@pytest.mark.parametrize(("to", "problem"), [
    ("tor:example.onion:80:socksHostname=127.0.0.1:socksPort=9050", None),
    ("tor:host=example.org:port=443", None),
    ("tor:example.onion:80:socksPort=9050", "socksPort needs socksHostname too"),
    ("tor:example.onion:80:socksHostname=127.0.0.1", "socksHostname needs socksPort too"),
    (r"tor:example.onion:80:socksHostname=\:\:1:socksPort=9050", "IPv4 address or a host name"),
    ("tor:example.onion:80:socksUsername=a:socksPassword=b", "cannot send SOCKS credentials"),
    ("tor:example.onion", "host and port must be specified"),
])
def test_tor_client_endpoints(to: str, problem: str | None) -> None:
    found = client_endpoint_problem(to)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found


def test_tor_backend_error_names_the_route(registry: Registry) -> None:
    (error,) = errors_of(config_text(to="tor:x.onion:80:socksPort=9050"), registry)
    assert error.startswith("service.edge.route[0].forward.to: bad client endpoint string "
                            "'tor:x.onion:80:socksPort=9050': socksPort needs socksHostname")


_PART = st.text(alphabet=st.characters(codec="ascii", exclude_characters="\0"), max_size=8)


def _escape(text: str) -> str:
    return "".join("\\" + c if c in ":=\\" else c for c in text)


@given(st.lists(_PART, min_size=1, max_size=4),
       st.dictionaries(_PART.filter(bool), _PART, max_size=3))
def test_split_endpoint_inverts_escaping(args: list[str], kwargs: dict[str, str]) -> None:
    text = ":".join([_escape(a) for a in args]
                    + [f"{_escape(k)}={_escape(v)}" for k, v in kwargs.items()])
    assert split_endpoint(text) == (args, kwargs)



def test_onion_listeners_read_tors_proxy_line_by_themselves(registry: Registry) -> None:
    (error,) = errors_of(config_text(extra='proxy_protocol = "optional"\n'
                                           'trusted_proxies = ["127.0.0.1/32"]'), registry)
    assert error.startswith("listener[1].proxy_protocol: not used on an onion listener")
    config = load_config(config_text(), registry)
    assert config.listeners[1].proxy_mode == "required"
    assert config.listeners[0].proxy_mode == "off"


def test_explain_consumes_tors_proxy_line_on_an_onion_listener(registry: Registry) -> None:
    from gatekeep.explain import explain

    config = load_config(config_text(), registry)
    data = b"PROXY TCP6 fc00:dead:beef:4dad::0:1d ::1 29 80\r\nGET / HTTP/1.1\r\n\r\n"
    report = explain(config, registry, "onion", data)
    assert "PROXY preamble: v1 header of 48 bytes, client [fc00:dead:beef:4dad::1d]:29;" \
        in report, report
    # Detection starts after the line: HTTP is recognised, and the route is taken.
    assert "  http   match   method=GET path=/ version=1.1" in report, report
    assert "1. web: taken" in report, report
