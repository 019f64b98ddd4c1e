"""Traffic policy through the real control plane and CLI: `glassmesh apply` takes a canary, and names every mistake."""

from __future__ import annotations

import re
from pathlib import Path

from tests.e2e.test_control_plane import Control, control  # noqa: F401 - the fixture
from tests.unit.test_control_config_policy import CANARY


def test_apply_a_canary_then_every_policy_mistake_is_named(control: Control, tmp_path: Path) -> None:  # noqa: F811
    (tmp_path / "mesh.yaml").write_text(CANARY)
    r = control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path)
    assert r.returncode == 0 and "applied: version 1" in r.stdout, r.stderr
    got = control.cli("get").stdout
    # The config in force keeps the labels where the operator wrote them, in the host's services: item.
    assert "- labels:\n      version: v2\n    name: b" in got and "service_labels" not in got, got
    assert "weight: 99" in got and "on_status:\n      - 502" in got, got

    (tmp_path / "mesh.yaml").write_text(CANARY.replace("weight: 99}", "weight: 90}").replace("weight: 1}", "weight: 10}"))
    r = control.cli("apply", "-f", "mesh.yaml", cwd=tmp_path)
    assert r.returncode == 0 and re.search(r"^-\s+weight: 99$", r.stdout, re.M), r.stdout
    assert re.search(r"^\+\s+weight: 10$", r.stdout, re.M) and "applied: version 2" in r.stdout, r.stdout

    bad = (CANARY.replace("{subset: v2, weight: 1}]", "{subset: v3, weight: 1}]")
           .replace("on_status: [502, 503]", "on_status: [404, 503]")
           .replace("- {name: v2, labels: {version: v2}}", "- {name: v2, labels: {verison: v2}}")
           .replace("^/slow/[0-9]+$", "^/slow/[0-9+$"))
    (tmp_path / "bad.yaml").write_text(bad)
    r = control.cli("apply", "-f", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 3, r.stdout  # invalid config (glassmesh/cli/exits.py)
    assert r.stderr.splitlines() == [
        "bad.yaml:9: services[1].subsets[1].labels: subset 'v2' selects no instance of 'b': no host's services: "
        "entry or static instance of it has labels verison=v2",
        "bad.yaml:13: services[1].routes[0].split[1].subset: 'v3' is not one of this service's subsets (v1, v2)",
        "bad.yaml:15: services[1].routes[0].retry.on_status[0]: 404 is not a 5xx status: only server errors are "
        "retried (a 4xx would fail again the same way)",
        "bad.yaml:18: services[1].routes[1].match.path_regex: not a valid regular expression: unterminated "
        "character set at position 7",
        "bad.yaml: 4 problems, nothing applied",
    ], r.stderr
    assert "version 2" in control.cli("get").stdout  # nothing applied
