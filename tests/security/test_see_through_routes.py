"""The routes that let an operator see through the mesh (`/v1/check`, ...) are operator routes: against a real
control plane, no credential gets 401, a service's or a host's certificate from the mesh CA gets 403, and the
plain-HTTP proxy listener does not serve them at all. What they show (hosts, certificates, clocks, link counters,
endpoints) maps the mesh for an attacker, so a stolen service key must not be enough to read it.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from glassmesh.ca import load_ca
from tests.e2e.test_control_plane import Control
from tests.security.test_operator_api import _raw

ROUTES = ["/v1/check", "/v1/links", "/v1/explain?from=a&to=b", "/v1/trace/0123456789abcdef01234567"]


def test_no_credential_gets_401(control: Control) -> None:
    for path in ROUTES:
        status, doc = _raw(control, "GET", path)
        assert status == 401 and "no operator credential" in doc["error"], (path, status, doc)


@pytest.mark.parametrize("who", ["service", "host"])
def test_a_mesh_certificate_that_is_not_an_operator_gets_403(control: Control, who: str) -> None:
    ca = load_ca(control.cred.parent / "ca")
    cert = ca.issue(who, "b").write(control.cred.parent / f"stolen-{who}")  # type: ignore[arg-type]
    for path in ROUTES:
        status, doc = _raw(control, "GET", path, cert=cert)
        assert status == 403 and "is not an operator credential" in doc["error"], (path, status, doc)


def test_the_plain_proxy_listener_does_not_serve_them(control: Control) -> None:
    for path in ROUTES:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(control.insecure + path, timeout=10)
        assert e.value.code == 404, path


def test_the_admin_reads_them(control: Control) -> None:
    status, doc = control.api("GET", "/v1/check")
    assert status == 200 and doc["status"]["config_version"] == 1 and doc["ca"]["not_after"] > doc["now"]
