"""mesh.yaml validation: every error names the line and the field; canonical form and hash are stable."""

from __future__ import annotations

import pytest

from glassmesh.control.config import ConfigError, diff_docs, parse_config, sha256_of, to_doc

GOOD = """\
services:
  - name: a
    calls: [b, db]
  - name: b
    port: 8080
    health: {http: /healthz, interval_ms: 1000, timeout_ms: 500}
    instances:
      - {host: host2, address: 127.0.0.12:8080}
  - name: db
    protocol: tcp
    port: 5432
    health: {tcp: true}
    max_endpoint_drop: 0.25
  - name: ext
    dns: {name: b.example, type: SRV}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
  - {name: host2, address: 127.0.0.12:4143, services: [b, db]}
tcp_links:
  - {host: host1, source: a, listen: 127.0.0.11:15432, destination: db}
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "mesh.yaml")
    return str(e.value).splitlines()


def test_good_config_parses_with_defaults() -> None:
    cfg = parse_config(GOOD)
    b = cfg.service("b")
    assert b is not None and b.max_endpoint_drop == 0.5 and b.health is not None and b.health.http == "/healthz"
    assert cfg.service("db").max_endpoint_drop == 0.25  # type: ignore[union-attr]
    assert cfg.service("ext").dns.type == "SRV"  # type: ignore[union-attr]


def test_wrong_type_names_line_and_field() -> None:
    text = GOOD.replace("    port: 8080", '    port: "8080"')
    assert problems(text) == ["mesh.yaml:5: services[1].port: Expected int, got str"]


def test_unknown_field_points_at_the_key() -> None:
    text = GOOD.replace("    port: 5432\n", "    port: 5432\n    weight: 3\n")
    assert problems(text) == ["mesh.yaml:12: services[2].weight: Object contains unknown field weight"]


def test_missing_field_and_bad_address() -> None:
    assert problems("hosts:\n  - name: h1\n")[0].startswith("mesh.yaml:2: hosts[0].address: Object missing required")
    out = problems("hosts:\n  - name: h1\n    address: nowhere\n")
    assert out == ["mesh.yaml:3: hosts[0].address: Expected str in the form host:port"]


def test_yaml_syntax_error_and_duplicate_keys() -> None:
    assert problems("services: [\n")[0].startswith("mesh.yaml:2: (top): not valid YAML")
    assert problems("services:\n  - name: a\n    name: b\n") == ["mesh.yaml:3: services[0].name: duplicate key"]


def test_meaning_errors_are_all_reported_with_lines() -> None:
    text = GOOD.replace("calls: [b, db]", "calls: [b, nope]").replace("services: [b, db]", "services: [b, zz]")
    text = text.replace("destination: db}", "destination: b}")
    out = problems(text)
    assert "mesh.yaml:3: services[0].calls[1]: 'nope' is not a service" in out
    assert "mesh.yaml:18: hosts[1].services[1]: 'zz' is not a service" in out
    assert any(x.startswith("mesh.yaml:20: tcp_links[0].destination: 'b' is an http service") for x in out)


def test_health_needs_exactly_one_kind() -> None:
    out = problems(GOOD.replace("health: {tcp: true}", "health: {tcp: true, http: /x}"))
    assert out == ["mesh.yaml:12: services[2].health: give exactly one of `tcp: true` or `http: /path`"]


def test_static_instance_on_unknown_host() -> None:
    out = problems(GOOD.replace("{host: host2, address", "{host: host9, address"))
    assert out == ["mesh.yaml:8: services[1].instances[0].host: 'host9' is not in hosts"]


def test_two_services_on_one_app_port() -> None:
    out = problems(GOOD.replace("port: 5432", "port: 8080"))
    assert out == ["mesh.yaml:18: hosts[1].services[1]: 'db' and 'b' both listen on 127.0.0.12:8080 (same port)"]


def test_canonical_hash_ignores_key_order_and_defaults() -> None:
    a = to_doc(parse_config(GOOD))
    reordered = GOOD.replace("  - name: db\n    protocol: tcp\n", "  - protocol: tcp\n    name: db\n")
    explicit = GOOD.replace("  - name: a\n", "  - name: a\n    protocol: http\n")
    assert sha256_of(to_doc(parse_config(reordered))) == sha256_of(a)
    assert sha256_of(to_doc(parse_config(explicit))) == sha256_of(a)
    assert diff_docs(a, a) == ""
    d = diff_docs(a, to_doc(parse_config(GOOD.replace("port: 8080", "port: 8090"))))
    assert "-  port: 8080" in d and "+  port: 8090" in d


def test_empty_config_is_valid() -> None:
    assert to_doc(parse_config("")) == {}


def test_every_problem_is_reported_not_only_the_first() -> None:
    """Unknown fields in two places, a bad reference and a clashing address: four lines, in file order."""
    text = """\
services:
  - name: web
    port: 8080
    calls: [api, cahce]
  - name: api
    port: 9000
    helth: {http: /healthz}
hosts:
  - {name: host1, address: "127.0.0.11:4143", services: [web]}
  - name: host2
    address: "127.0.0.11:4143"
    services: [api]
    admn: "127.0.0.12:4191"
"""
    assert problems(text) == [
        "mesh.yaml:4: services[0].calls[1]: 'cahce' is not a service",
        "mesh.yaml:7: services[1].helth: Object contains unknown field helth",
        "mesh.yaml:11: hosts[1].address: 127.0.0.11:4143 is already the inbound of host1",
        "mesh.yaml:13: hosts[1].admn: Object contains unknown field admn",
    ]


def test_schema_problems_in_one_item_are_all_reported() -> None:
    text = "services:\n  - name: a\n    port: x\n    weight: 3\n    health: {tcp: true, timout_ms: 5}\n"
    assert problems(text) == [
        "mesh.yaml:3: services[0].port: Expected int, got str",
        "mesh.yaml:4: services[0].weight: Object contains unknown field weight",
        "mesh.yaml:5: services[0].health.timout_ms: Object contains unknown field timout_ms",
    ]


def test_an_unreadable_item_stops_the_reference_checks() -> None:
    """A service whose name is wrong cannot be referred to; 'not a service' elsewhere would be noise."""
    text = "services:\n  - name: Web\n  - {name: api, calls: [web], prot: 1}\nhosts:\n  - {name: h, address: bad}\n"
    assert problems(text) == [
        "mesh.yaml:2: services[0].name: Expected str that is a lowercase DNS label (a-z, 0-9, -)",
        "mesh.yaml:3: services[1].prot: Object contains unknown field prot",
        "mesh.yaml:5: hosts[0].address: Expected str in the form host:port",
    ]
