"""`host add` with an address that is not one: refused with a clear error, no token made, the mesh unharmed."""

from __future__ import annotations

import json

import pytest

from tests.e2e.harness import Mesh
from tests.e2e.test_control_join import Control


@pytest.mark.parametrize("address", ["nothing", "10.0.0.4", "10.0.0.4:99999", "10.0.0.4:0", "host name:80",
                                     "example.com:4143"])
def test_host_add_refuses_a_bad_address(mesh: Mesh, address: str) -> None:
    cp = Control(mesh)
    before = cp.cli("host", "list", "--json")
    r = cp.cli("host", "add", "host9", "--services", "a", "--address", address)
    assert r.returncode != 0, r.stdout
    assert f"address {address!r}" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    after = cp.cli("host", "list", "--json")
    assert json.loads(after.stdout) == json.loads(before.stdout), "a token was made for a refused host"
    good = cp.cli("host", "add", "host9", "--services", "a", "--address", "127.0.0.9:4143", "--json")
    assert good.returncode == 0 and json.loads(good.stdout)["token"], good.stderr
