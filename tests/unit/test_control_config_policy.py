"""mesh.yaml traffic policy: where labels come from, and every mistake named by line and field."""

from __future__ import annotations

import pytest

from glassmesh.control.config import ConfigError, from_doc, parse_config, to_doc
from tests.unit.test_control_config import problems

CANARY = """\
services:
  - name: a
  - name: b
    port: 8080
    instances:
      - {host: host4, address: 127.0.0.14:8080, labels: {version: v1}}
    subsets:
      - {name: v1, labels: {version: v1}}
      - {name: v2, labels: {version: v2}}
    routes:
      - name: api
        match: {path_prefix: /api, methods: [get], headers: {X-User: beta}}
        split: [{subset: v1, weight: 99}, {subset: v2, weight: 1}]
        timeout_ms: 2000
        retry: {attempts: 3, on_status: [502, 503]}
        mirror: {subset: v2, percent: 5}
      - name: slow
        match: {path_regex: "^/slow/[0-9]+$"}
        fault: {delay_ms: 100, delay_percent: 10, abort_status: 503, abort_percent: 1}
    retry_budget: {percent: 10, min_per_second: 5}
    outlier: {consecutive_failures: 3}
    limits: {max_requests: 100}
hosts:
  - {name: host1, address: 127.0.0.11:4143, services: [a]}
  - name: host2
    address: 127.0.0.12:4143
    services: [{name: b, labels: {version: v1}}]
  - name: host3
    address: 127.0.0.13:4143
    services:
      - name: b
        labels: {version: v2}
  - {name: host4, address: 127.0.0.14:4143}
"""


def test_canary_parses_and_keeps_the_long_form_in_its_document() -> None:
    cfg = parse_config(CANARY)
    host3 = cfg.host("host3")
    assert host3 is not None and host3.services == ["b"] and host3.service_labels == {"b": {"version": "v2"}}
    b = cfg.service("b")
    assert b is not None
    pol = b.policy()
    assert pol is not None and [r.name for r in pol.routes] == ["api", "slow"] and pol.limits.max_requests == 100
    assert cfg.service("a").policy() is None  # type: ignore[union-attr]
    doc = to_doc(cfg)
    assert doc["hosts"][2]["services"] == [{"name": "b", "labels": {"version": "v2"}}]
    assert doc["hosts"][0]["services"] == ["a"] and "service_labels" not in doc["hosts"][2]
    assert from_doc(doc) == cfg


def test_every_policy_mistake_is_named_with_its_line() -> None:
    bad = (CANARY
           .replace("{subset: v2, weight: 1}]", "{subset: v3, weight: 1}]")
           .replace("mirror: {subset: v2", "mirror: {subset: v9")
           .replace("on_status: [502, 503]", "on_status: [404, 503]")
           .replace("^/slow/[0-9]+$", "^/slow/[0-9+$")
           .replace("delay_percent: 10", "delay_percent: 101")
           .replace("- name: slow", "- name: api"))
    assert problems(bad) == [
        "mesh.yaml:13: services[1].routes[0].split[1].subset: 'v3' is not one of this service's subsets (v1, v2)",
        "mesh.yaml:15: services[1].routes[0].retry.on_status[0]: 404 is not a 5xx status: only server errors are "
        "retried (a 4xx would fail again the same way)",
        "mesh.yaml:16: services[1].routes[0].mirror.subset: 'v9' is not one of this service's subsets",
        "mesh.yaml:17: services[1].routes[1].name: duplicate route 'api' (route names are unique per service)",
        "mesh.yaml:18: services[1].routes[1].match.path_regex: not a valid regular expression: "
        "unterminated character set at position 7",
        "mesh.yaml:19: services[1].routes[1].fault.delay_percent: Expected float <= 100.0",
    ]


def test_zero_weights_and_a_subset_no_instance_can_join() -> None:
    bad = (CANARY.replace("weight: 99}", "weight: 0}").replace("weight: 1}", "weight: 0}")
           .replace("- {name: v2, labels: {version: v2}}", "- {name: v2, labels: {verison: v2}}"))
    assert problems(bad) == [
        "mesh.yaml:9: services[1].subsets[1].labels: subset 'v2' selects no instance of 'b': no host's services: "
        "entry or static instance of it has labels verison=v2",
        "mesh.yaml:13: services[1].routes[0].split: the weights add up to 0: the route would send its requests "
        "nowhere",
    ]


def test_labels_of_one_host_must_agree_and_be_well_formed() -> None:
    bad = (CANARY.replace("{host: host4, address: 127.0.0.14:8080, labels: {version: v1}}",
                          "{host: host3, address: 127.0.0.13:8080, labels: {version: v1}}"))
    assert problems(bad)[0].startswith(
        "mesh.yaml:6: services[1].instances[0].labels: labels {'version': 'v1'} differ from {'version': 'v2'} at "
        "hosts[2].services[0].labels: the instances of 'b' on host3 share its proxy")
    bad = CANARY.replace("services: [{name: b, labels: {version: v1}}]",
                         "services: [{name: b, labels: {'bad key': v1, version: v1}}, {labels: {}}]")
    assert problems(bad) == [
        "mesh.yaml:27: hosts[1].services[0].labels.bad key: Expected str that is a label name (letters, digits, "
        "- _ . /; at most 63)",
        "mesh.yaml:27: hosts[1].services[1].name: Object missing required field name",
    ]


def test_internal_field_and_tcp_policy_are_refused() -> None:
    bad = CANARY.replace("  - {name: host4, address: 127.0.0.14:4143}",
                         "  - {name: host4, address: 127.0.0.14:4143, service_labels: {b: {version: v1}}}")
    assert problems(bad)[0].startswith("mesh.yaml:33: hosts[3].service_labels: Object contains unknown field")
    bad = CANARY.replace("  - name: a\n", "  - name: a\n  - {name: db, protocol: tcp, port: 5432, "
                                          "limits: {max_connections: 5}}\n")
    assert problems(bad) == ["mesh.yaml:3: services[1]: subsets, routes, balance, retry_budget, outlier and limits "
                             "apply to http services only: a tcp link carries bytes, not requests"]


def test_a_path_to_match_has_no_query_string() -> None:
    bad = CANARY.replace("path_prefix: /api,", "path_prefix: /api?v=2,")
    assert problems(bad) == ["mesh.yaml:12: services[1].routes[0].match.path_prefix: routes match the path without "
                             "its query string: '/api?v=2' has a '?' or '#'"]


def test_fault_needs_its_status_and_outlier_its_order() -> None:
    bad = (CANARY.replace("delay_ms: 100, ", "").replace("abort_status: 503, ", "")
           .replace("outlier: {consecutive_failures: 3}", "outlier: {base_ejection_ms: 60000, max_ejection_ms: 1000}"))
    assert problems(bad) == [
        "mesh.yaml:19: services[1].routes[1].fault.abort_status: abort_percent is set: give the status to answer "
        "with",
        "mesh.yaml:19: services[1].routes[1].fault.delay_ms: delay_percent is set: give the delay",
        "mesh.yaml:21: services[1].outlier.base_ejection_ms: 60000 is more than max_ejection_ms (1000)",
    ]


def test_the_readmes_canary_example_is_valid() -> None:
    import pathlib
    import re

    readme = (pathlib.Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, re.S)
    (canary,) = [b for b in blocks if "name: reads" in b]
    cfg = parse_config(canary, "README.md")
    api = cfg.service("api")
    assert api is not None and [r.name for r in api.routes] == ["reads", "beta-users", "everything-else"]
    with pytest.raises(ConfigError):  # and its mistakes are caught, as the README says
        parse_config(canary.replace("weight: 1}]\n        timeout", "weight: 1}, {subset: v3, weight: 1}]\n"
                                                                   "        timeout"), "README.md")
