"""Config loading: every error names its TOML path (and a fix where there is one)."""

from __future__ import annotations

import textwrap

import pytest

from gatekeep.config.errors import ConfigErrors
from gatekeep.config.loader import load_config, load_config_file
from gatekeep.registry import Registry, load_registry
from gatekeep.targets.forward import ForwardTarget
from gatekeep.values import Condition

GOOD = """
[[listener]]
name = "public"
endpoint = "tcp:8443"
service = "edge"

[[listener]]
name = "local"
endpoint = 'tcp6:8443:interface=\\:\\:1'
service = "edge"
detect_timeout = "1500ms"

[[listener]]
name = "sock"
endpoint = "unix:/tmp/gatekeep-test.sock"
service = "edge"

[service.edge]
default = "web"

[[service.edge.route]]
name = "xmpp-tls"
match.tls = { sni = ["example.org", "*.example.org"], alpn = ["xmpp-client"] }
forward = { to = "tcp:127.0.0.1:5223" }

[[service.edge.route]]
name = "xmpp"
match.xmpp = { to = "example.org", ns = ["jabber:client"] }
connect_timeout = "3s"
forward = { to = "tcp:127.0.0.1:5222" }

[[service.edge.route]]
name = "web"
forward = { to = "tcp:127.0.0.1:8080" }
"""


@pytest.fixture(scope="module")
def registry() -> Registry:
    return load_registry()


def errors_of(text: str, registry: Registry) -> list[str]:
    with pytest.raises(ConfigErrors) as caught:
        load_config(textwrap.dedent(text), registry)
    return [str(e) for e in caught.value.errors]


def one_error(text: str, registry: Registry) -> str:
    errors = errors_of(text, registry)
    assert len(errors) == 1, errors
    return errors[0]


def test_good_config(registry: Registry) -> None:
    config = load_config(GOOD, registry)
    assert [listener.name for listener in config.listeners] == ["public", "local", "sock"]
    assert config.listeners[1].detect_timeout == 1.5
    assert config.listeners[0].detect_timeout == 5.0
    edge = config.services["edge"]
    assert [r.name for r in edge.routes] == ["xmpp-tls", "xmpp", "web"]
    assert edge.routes[0].conditions == (
        Condition("sni", ("example.org", "*.example.org")), Condition("alpn", ("xmpp-client",)))
    assert edge.routes[1].conditions[0] == Condition("to", ("example.org",))
    assert edge.routes[1].connect_timeout == 3.0
    assert edge.routes[2].detector is None
    assert isinstance(edge.routes[2].target, ForwardTarget)
    assert edge.default == "web"
    assert config.warnings == ()


def test_unknown_top_level_key_suggests(registry: Registry) -> None:
    error = one_error(GOOD + "\n[listeners]\nx = 1\n", registry)
    assert error.startswith("listeners: unknown key 'listeners'")
    assert "did you mean 'listener'?" in error


def test_workers_and_splice(registry: Registry) -> None:
    assert load_config(GOOD, registry).settings.workers is None  # the number of cores
    config = load_config("workers = 3\nsplice = false\n" + GOOD, registry)
    assert (config.settings.workers, config.settings.splice) == (3, False)
    assert one_error("workers = 0\n" + GOOD, registry).startswith(
        "workers: must be between 1 and 256")
    assert one_error('workers = "2"\n' + GOOD, registry).startswith(
        "workers: expected a whole number of worker processes")
    assert one_error("splice = 1\n" + GOOD, registry).startswith("splice: expected true or false")


def test_unknown_listener_key(registry: Registry) -> None:
    text = GOOD.replace('name = "public"', 'name = "public"\nendpont = "tcp:1"', 1)
    error = one_error(text, registry)
    assert error.startswith("listener[0].endpont: unknown key 'endpont'")
    assert "did you mean 'endpoint'?" in error


def test_bad_endpoint_string(registry: Registry) -> None:
    error = one_error(GOOD.replace('"tcp:8443"', '"tcp:http"'), registry)
    assert error.startswith("listener[0].endpoint: bad server endpoint string 'tcp:http'")
    error = one_error(GOOD.replace('"tcp:127.0.0.1:5223"', '"tpc:127.0.0.1:5223"'), registry)
    assert error.startswith("service.edge.route[0].forward.to: bad client endpoint string")
    assert "Unknown endpoint type: 'tpc'" in error


def test_missing_required_key(registry: Registry) -> None:
    error = one_error(GOOD.replace('endpoint = "tcp:8443"\n', ""), registry)
    assert error.startswith("listener[0].endpoint: missing required key\n    fix: ")
    assert "[listener.tor]" in error


def test_dangling_service_and_route(registry: Registry) -> None:
    errors = errors_of(GOOD.replace('service = "edge"\n\n[[listener]]\nname = "local"',
                                    'service = "egde"\n\n[[listener]]\nname = "local"')
                       .replace('default = "web"', 'default = "site"'), registry)
    assert any(e.startswith("listener[0].service: no service named 'egde'") for e in errors)
    assert any(e.startswith("service.edge.default: no route named 'site'") for e in errors)


def test_duplicates(registry: Registry) -> None:
    text = GOOD.replace('name = "local"', 'name = "public"').replace(
        'name = "xmpp"\n', 'name = "xmpp-tls"\n')
    errors = errors_of(text, registry)
    assert "listener[1].name: duplicate listener name 'public'" in errors
    assert any(e.startswith("service.edge.route[1]: duplicate route name 'xmpp-tls'")
               for e in errors)
    errors = errors_of(GOOD.replace('"unix:/tmp/gatekeep-test.sock"', '"tcp:8443"'), registry)
    assert any(e.startswith("listener[2].endpoint: endpoint also used by listener 'public'")
               for e in errors), errors


def test_impossible_combinations(registry: Registry) -> None:
    two_actions = GOOD.replace('forward = { to = "tcp:127.0.0.1:8080" }',
                               'forward = { to = "tcp:127.0.0.1:8080" }\nreject = {}')
    assert one_error(two_actions, registry).startswith(
        "service.edge.route[2]: impossible combination: several actions (forward, reject)")
    two_protocols = GOOD.replace('match.xmpp = { to = "example.org", ns = ["jabber:client"] }',
                                 'match.xmpp = {}\nmatch.http = {}')
    assert one_error(two_protocols, registry).startswith(
        "service.edge.route[1].match: impossible combination: one route matches several")
    early_catch_all = GOOD.replace('name = "xmpp-tls"\nmatch.tls = { sni = ["example.org", '
                                   '"*.example.org"], alpn = ["xmpp-client"] }\n',
                                   'name = "xmpp-tls"\n')
    error = one_error(early_catch_all, registry)
    assert error.startswith("service.edge.route[0]: impossible combination: catch-all route")
    assert "move the catch-all route last" in error


def test_no_action(registry: Registry) -> None:
    error = one_error(GOOD.replace('forward = { to = "tcp:127.0.0.1:8080" }\n', ""), registry)
    assert error.startswith("service.edge.route[2]: a route needs an action")


def test_match_problems(registry: Registry) -> None:
    error = one_error(GOOD.replace("match.xmpp", "match.xmmp"), registry)
    assert error.startswith("service.edge.route[1].match.xmmp: unknown detector 'xmmp'")
    error = one_error(GOOD.replace("alpn = [", "apln = ["), registry)
    assert error.startswith("service.edge.route[0].match.tls.apln: unknown key 'apln'")
    assert "did you mean 'alpn'?" in error
    error = one_error(GOOD.replace('"*.example.org"', '"www.*.org"'), registry)
    assert error.startswith("service.edge.route[0].match.tls.sni: bad name pattern 'www.*.org'")
    error = one_error(GOOD.replace('alpn = ["xmpp-client"]', "alpn = []"), registry)
    assert error.startswith("service.edge.route[0].match.tls.alpn: expected a value")


def test_bad_values(registry: Registry) -> None:
    error = one_error(GOOD.replace('detect_timeout = "1500ms"', 'detect_timeout = "soon"'),
                      registry)
    assert error.startswith("listener[1].detect_timeout: 'soon' is not a duration")
    error = one_error(GOOD.replace('detect_timeout = "1500ms"', "detect_timeout = 0"), registry)
    assert error == "listener[1].detect_timeout: must be longer than zero"
    error = one_error(GOOD.replace('name = "public"', 'name = "public listener"'), registry)
    assert error.startswith("listener[0].name: 'public listener' is not a valid name")
    text = GOOD.split("[service.edge]")[0] + "[service.edge]\nroute = 1\n"
    error = one_error(text, registry)
    assert error.startswith("service.edge.route: expected an array of tables")


def test_unknown_target_option(registry: Registry) -> None:
    text = GOOD.replace('forward = { to = "tcp:127.0.0.1:8080" }',
                        'forward = { to = "tcp:127.0.0.1:8080", proxy_protocl = "v2" }')
    error = one_error(text, registry)
    assert error.startswith("service.edge.route[2].forward.proxy_protocl: unknown key "
                            "'proxy_protocl'")
    assert "did you mean 'proxy_protocol'?" in error


def test_app_factory_that_cannot_be_imported(registry: Registry) -> None:
    text = GOOD.replace('forward = { to = "tcp:127.0.0.1:8080" }',
                        'app = { factory = "no.such.module:factory" }')
    error = one_error(text, registry)
    assert error.startswith("service.edge.route[2].app.factory: cannot import 'no.such.module'")


def test_all_errors_at_once(registry: Registry) -> None:
    text = GOOD.replace('"tcp:8443"', '"tcp:x"').replace("match.xmpp", "match.nope").replace(
        'name = "sock"', 'name = "local"')
    assert len(errors_of(text, registry)) == 3


def test_not_toml_and_no_file(registry: Registry, tmp_path: object) -> None:
    error = one_error("[[listener]\nname=", registry)
    assert error.startswith("not valid TOML")
    with pytest.raises(ConfigErrors, match="cannot read config file"):
        load_config_file("/nonexistent/gatekeep.toml", registry)


def test_unused_service_is_a_warning(registry: Registry) -> None:
    text = GOOD + '\n[service.spare]\n[[service.spare.route]]\nname = "x"\nreject = {}\n'
    assert load_config(text, registry).warnings == ("service.spare: not used by any listener",)


def test_name_patterns_are_canonical(registry: Registry) -> None:
    text = GOOD.replace('sni = ["example.org", "*.example.org"]',
                        'sni = ["Example.ORG.", "*.bücher.example"]').replace(
        'match.xmpp = { to = "example.org", ns = ["jabber:client"] }',
        'match.xmpp = { to = ["[::1]", "127.0.0.1"] }')
    routes = load_config(text, registry).services["edge"].routes
    assert routes[0].conditions[0].values == ("example.org", "*.xn--bcher-kva.example")
    assert routes[1].conditions[0].values == ("::1", "127.0.0.1")
    http = GOOD.replace('match.xmpp = { to = "example.org", ns = ["jabber:client"] }',
                        'match.http = { host = ["Fed.Example.org:8448", "[::1]:443", "*.a.b"] }')
    routes = load_config(http, registry).services["edge"].routes
    assert routes[1].conditions[0].values == ("fed.example.org:8448", "[::1]:443", "*.a.b")


@pytest.mark.parametrize("bad", ["www.*.org", "*", "*.", "exa mple.org", "a..b", "*.[::1]"])
def test_bad_name_patterns(registry: Registry, bad: str) -> None:
    error = one_error(GOOD.replace('"*.example.org"', f'"{bad}"'), registry)
    assert error.startswith(f"service.edge.route[0].match.tls.sni: bad name pattern '{bad}'")


def test_proxy_protocol_listener_keys(registry: Registry) -> None:
    text = GOOD.replace('name = "public"', 'name = "public"\nproxy_protocol = "required"\n'
                        'trusted_proxies = ["10.0.0.0/8", "::1", "127.0.0.1", "unix"]', 1)
    config = load_config(text, registry)
    public = config.listeners[0]
    assert public.proxy_protocol == "required"
    assert public.trusted_proxies == ("10.0.0.0/8", "::1/128", "127.0.0.1/32", "unix")
    assert config.listeners[1].proxy_protocol == "off"


@pytest.mark.parametrize("keys, error", [
    ('proxy_protocol = "on"',
     "listener[0].proxy_protocol: expected \"off\", \"optional\" or \"required\", not 'on'"),
    ('proxy_protocol = "optional"',
     "listener[0].trusted_proxies: impossible combination: proxy_protocol = \"optional\" "
     "honours headers only from trusted_proxies, and none are listed"),
    ('proxy_protocol = "required"\ntrusted_proxies = ["10.0.0.1/8"]',
     "listener[0].trusted_proxies: '10.0.0.1/8' has host bits set: did you mean '10.0.0.0/8'?"),
    ('proxy_protocol = "required"\ntrusted_proxies = ["lb.example.org"]',
     "listener[0].trusted_proxies: 'lb.example.org' is not an IPv4/IPv6 address"),
    ('proxy_protocol = "required"\ntrusted_proxies = "10.0.0.0/8"',
     "listener[0].trusted_proxies: expected a list of CIDR strings"),
])
def test_proxy_protocol_listener_errors(registry: Registry, keys: str, error: str) -> None:
    text = GOOD.replace('name = "public"', 'name = "public"\n' + keys, 1)
    assert one_error(text, registry).startswith(error)


def test_trusted_proxies_without_proxy_protocol_warns(registry: Registry) -> None:
    text = GOOD.replace('name = "public"', 'name = "public"\ntrusted_proxies = ["::1"]', 1)
    assert load_config(text, registry).warnings == (
        'listener[0].trusted_proxies: has no effect while proxy_protocol = "off"',)


def test_match_proxy_facts_are_checked(registry: Registry) -> None:
    text = GOOD.replace('match.xmpp = { to = "example.org", ns = ["jabber:client"] }',
                        'match.proxy = { authority = ["*.example.org"], ssl = true }')
    route = load_config(text, registry).services["edge"].routes[1]
    assert route.detector == "proxy"
    assert route.conditions == (Condition("authority", ("*.example.org",)),
                                Condition("ssl", (True,)))
    error = one_error(text.replace("ssl = true", "sni = ['x']"), registry)
    assert error.startswith("service.edge.route[1].match.proxy.sni: unknown key 'sni'")


def test_forward_proxy_protocol_options(registry: Registry) -> None:
    text = GOOD.replace('forward = { to = "tcp:127.0.0.1:8080" }',
                        'forward = { to = "tcp:127.0.0.1:8080", proxy_protocol = "v2", '
                        'proxy_tlvs = ["alpn", "authority", "crc32c"] }')
    target = load_config(text, registry).services["edge"].routes[2].target
    assert isinstance(target, ForwardTarget)
    assert (target.proxy_protocol, target.proxy_tlvs) == (2, ("alpn", "authority", "crc32c"))


@pytest.mark.parametrize("options, error", [
    ('proxy_protocol = "v3"', 'forward.proxy_protocol: expected "v1" or "v2", not \'v3\''),
    ('proxy_protocol = "v2", proxy_tlvs = ["sni"]',
     "forward.proxy_tlvs: unknown TLV 'sni'; known: alpn, authority, ssl, unique_id, crc32c"),
    ('proxy_protocol = "v1", proxy_tlvs = ["alpn"]',
     'forward: impossible combination: proxy_tlvs needs proxy_protocol = "v2"'),
    ('proxy_tlvs = ["alpn"]',
     'forward: impossible combination: proxy_tlvs needs proxy_protocol = "v2"'),
])
def test_forward_proxy_protocol_errors(registry: Registry, options: str, error: str) -> None:
    text = GOOD.replace('forward = { to = "tcp:127.0.0.1:8080" }',
                        'forward = { to = "tcp:127.0.0.1:8080", ' + options + " }")
    assert one_error(text, registry) == "service.edge.route[2]." + error
