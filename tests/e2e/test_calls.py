"""What a service may call, as mesh.yaml's `calls:` says, seen from its apps through a real control plane.

The mesh of the "first hour" report: web (nginx in real life) on host1 may call api;
api runs on host2 and host3; cache is a tcp service (redis) on host3. A call from web
to cache is refused 403 call_not_allowed, saying what web may call (not "unknown"),
also once another service on host1 may call cache; a name outside the mesh stays 404
unknown_service. cache calls nothing (tcp, no `calls:`), so host3 binds no outbound
listener for it.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

from tests.e2e.harness import HttpConn, Mesh, get, mesh_error
from tests.e2e.test_control_watch import CHost, Control

API_PORT, CACHE_PORT, WEB_PORT = 18090, 16379, 18080

MESH = """\
services:
  - name: web
    port: {web}
    calls: [api]
  - name: api
    port: {api}
  - name: cache
    protocol: tcp
    port: {cache}
{extra}hosts:
  - {{name: host1, address: "{ip1}:4143", services: [web{more}]}}
  - {{name: host2, address: "{ip2}:4143", services: [api]}}
  - {{name: host3, address: "{ip3}:4143", services: [api, cache]}}
"""
JOBS = """\
  - name: jobs
    calls: [api, cache]
"""


def until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.1)


def listening(addr: str) -> bool:
    host, _, port = addr.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
        return True
    except OSError:
        return False


def call(outbound: str, service: str) -> tuple[int, dict, tuple[str, str] | None]:  # type: ignore[type-arg]
    with HttpConn(outbound) as c:
        r = c.request("GET", "/get", {"Host": service})
    return r.status, (r.json() if r.status != 200 else {}), (mesh_error(r) if r.status != 200 else None)


def test_calls_decide_what_a_service_may_reach_and_who_gets_a_listener(mesh: Mesh) -> None:
    cp = Control(mesh)
    cp.start()
    h1, h2, h3 = CHost(mesh, "host1", ["web", "jobs"]), CHost(mesh, "host2", ["api"]), CHost(mesh, "host3",
                                                                                              ["api", "cache"])
    mesh.start_app("http", f"{h2.ip}:{API_PORT}", "api@host2")
    mesh.start_app("http", f"{h3.ip}:{API_PORT}", "api@host3")
    mesh.start_app("tcp", f"{h3.ip}:{CACHE_PORT}", "cache@host3")

    def mesh_yaml(extra: str = "", more: str = "") -> str:
        return MESH.format(web=WEB_PORT, api=API_PORT, cache=CACHE_PORT, ip1=h1.ip, ip2=h2.ip, ip3=h3.ip,
                           extra=extra, more=more)

    first = cp.apply(mesh_yaml())
    for h in (h1, h2, h3):
        h.start(cp.url)
    for h in (h1, h2, h3):
        h.wait_ready()
    until(lambda: call(h1.outbound, "api")[0] == 200, 15, "web reaches api")

    status, body, err = call(h1.outbound, "cache")
    assert (status, err) == (403, ("call_not_allowed", "host1/outbound")), body
    assert body["message"] == "'web' may not call 'cache' (calls: [api])"
    status, body, err = call(h1.outbound, "nosuch")
    assert (status, err) == (404, ("unknown_service", "host1/outbound")), body

    # host3: api (calls everything) has its listener; cache (tcp, no calls:) has none, and the
    # port it would have had stays unused, so that listeners after it never move.
    assert listening(f"{h3.ip}:4140")
    assert not listening(f"{h3.ip}:4141")
    snap3 = cp.snapshot("host3")
    assert {s["name"]: s["outbound"] for s in snap3["local_services"]} == {"api": f"{h3.ip}:4140", "cache": None}

    # Another service on host1 may call cache: host1's snapshot now lists it, web still may not.
    second = cp.apply(mesh_yaml(JOBS, ", jobs"))
    assert second["version"] > first["version"]
    # A new listener (jobs') needs a proxy restart, and a restarted proxy that serves its last-known-good
    # snapshot first refuses a newer one with another listener: start it from the control plane's.
    h1.stop()
    (h1.data / "snapshot.json").unlink()
    h1.start(cp.url)
    h1.wait_ready()
    until(lambda: any(s["name"] == "cache" for s in json.loads(get(h1.admin, "/config").body)["services"]), 10,
          "host1's proxy lists cache")
    status, body, err = call(h1.outbound, "cache")
    assert (status, err) == (403, ("call_not_allowed", "host1/outbound")), body
    assert body["message"] == "'web' may not call 'cache' (calls: [api])"
    status, body, err = call(f"{h1.ip}:4141", "cache")  # jobs may: cache is tcp, reached through a tcp link
    assert status == 400 and "tcp service" in body["message"], body
