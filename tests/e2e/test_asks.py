"""The ask channel: the control plane asks a joined host's proxy something, and only operators may ask.

Real `glassmesh control`, real proxies that joined with tokens (mTLS host
identities), one with two workers: the `hello` ask reaches every serving
process. The refusals are performed: no operator credential, a host
polling or answering another host's asks, operator routes on the proxy
listener.
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any

from tests.e2e.harness import Mesh, fresh_ip
from tests.e2e.operator import api
from tests.e2e.test_control_join import APP_PORT, MESH, Control, https, join_args, wait_ready


def test_an_operator_asks_a_host_every_worker_answers_and_nobody_else_may_ask_or_answer(mesh: Mesh) -> None:
    cp = Control(mesh)
    ip1, ip2 = fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2), "author": "test"})
    t1, t2 = cp.add_host("host1", "a"), cp.add_host("host2", "b")
    d1, d2 = mesh.root / "h1", mesh.root / "h2"
    p1 = mesh.spawn("proxy host1", [*join_args(cp, t1, d1), "--workers", "2"])
    p2 = mesh.spawn("proxy host2", join_args(cp, t2, d2))
    wait_ready(p1, f"{ip1}:4191")
    wait_ready(p2, f"{ip2}:4191")

    status, doc = api(cp.api_url, "GET", "/v1/hosts/host1/hello", cred=cp.cred)
    assert status == 200, doc
    procs = doc["answers"][0]["processes"]
    assert len(procs) == 2 and len({p["pid"] for p in procs}) == 2, doc
    assert all(p["snapshot_version"] >= 1 for p in procs)
    assert doc["answers"][0]["pid"] not in {p["pid"] for p in procs}  # the supervisor asked its workers
    status, doc = api(cp.api_url, "GET", "/v1/hosts/host2/hello", cred=cp.cred)
    assert status == 200 and len(doc["answers"][0]["processes"]) == 1, doc

    # A host with no proxy running: a clear 503 at once, not a hang.
    cp.add_host("host3", "a")
    status, doc = api(cp.api_url, "GET", "/v1/hosts/host3/hello", cred=cp.cred)
    assert status == 503 and "not connected" in doc["error"], doc

    # No operator credential: refused before anything is asked.
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        urllib.request.urlopen(f"{cp.api_url}/v1/hosts/host1/hello", timeout=10, context=ctx)
        raise AssertionError("an ask without an operator credential was served")
    except urllib.error.HTTPError as e:
        assert e.code == 401, e.read()

    # A host may neither take nor answer another host's asks, and operator routes are not on its listener.
    ca = d1 / "identity" / "ca.pem"
    h2 = (d2 / "identity" / "host.pem", d2 / "identity" / "host.key")
    status, doc = https(cp, "/v1/hosts/host1/asks?wait=0", ca, *h2)
    assert status == 403 and "host/host2" in doc["error"], doc
    status, doc = https(cp, "/v1/hosts/host1/asks/" + "ab" * 12, ca, *h2, body={"events": [{"x": 1}], "done": True})
    assert status == 403, doc
    status, doc = https(cp, "/v1/hosts/host2/asks/" + "ab" * 12, ca, *h2, body={"events": [], "done": True})
    assert status == 404 and "no such ask" in doc["error"], doc
    status, doc = https(cp, "/v1/hosts/host1/hello", ca, *h2)
    assert status == 404, doc
    status, doc = https(cp, "/v1/hosts/host2/asks?wait=0", ca, *h2)
    assert status == 200 and doc == {"asks": []}, doc

    # The per-process routes are not on the proxy's TCP admin port (anyone on the host reaches that).
    try:
        urllib.request.urlopen(f"http://{ip1}:4191/process/hello", timeout=5)
        raise AssertionError("a per-process route was served on the TCP admin port")
    except urllib.error.HTTPError as e:
        assert e.code == 404
        body: Any = json.loads(e.read())
        assert "/process/hello" not in body.get("paths", [])
