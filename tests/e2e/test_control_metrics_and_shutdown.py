"""A real `glassmesh control`: its /metrics count held changes, and SIGTERM ends it at once under long-polls.

- Held changes: every instance of b reported unhealthy at once is a change
  the guard holds; /metrics shows it held now (gauge, per service) and counts
  it (counter, per service); after `release` the gauge drops to 0 and the
  counter stays, and a second hold counts 2.
- SIGTERM: a joined proxy (real mTLS long-poll on the proxy listener, the
  way proxies watch) and plain-HTTP long-polls are open; the control plane
  exits 0 within 3 s, the long-polls are answered 503 "shutting down" rather
  than cut off, and the proxy keeps serving from what it has.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from tests.e2e.harness import Mesh, fresh_ip
from tests.e2e.test_control_join import Control, call_b, join_args, wait_ready

APP_PORT = 18080

MESH = """\
services:
  - name: a
  - name: b
    port: {port}
hosts:
  - {{name: host1, address: "{ip1}:4143", services: [a]}}
  - {{name: host2, address: "{ip2}:4143", services: [b]}}
  - {{name: host3, address: "{ip3}:4143", services: [b]}}
"""


def metric(text: str, name: str, service: str) -> float | None:
    m = re.search(rf'^{re.escape(name)}{{service="{re.escape(service)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def scrape(cp: Control) -> str:
    return cp.metrics()


def report(cp: Control, host: str, address: str, healthy: bool) -> None:
    cp.post(f"/v1/hosts/{host}/instances", {"instances": [
        {"service": "b", "address": address, "healthy": healthy, "detail": "" if healthy else "test: down"}],
        "ttl_s": 60})


def wait_metrics(cp: Control, held: float, holds: float, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = scrape(cp)
        got = (metric(text, "glassmesh_control_held_changes", "b"), metric(text, "glassmesh_control_holds_total", "b"))
        if got == (held, holds):
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"held/holds for b are {got}, not {(held, holds)}:\n{text}")
        time.sleep(0.05)


def test_held_changes_show_in_metrics_as_a_gauge_and_a_counter(mesh: Mesh) -> None:
    cp = Control(mesh)
    ip2, ip3 = fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=fresh_ip(), ip2=ip2, ip3=ip3), "author": "test"})
    b2, b3 = f"{ip2}:{APP_PORT}", f"{ip3}:{APP_PORT}"
    assert metric(scrape(cp), "glassmesh_control_holds_total", "b") is None  # nothing held yet

    def hold_once() -> None:
        report(cp, "host2", b2, True)
        report(cp, "host3", b3, True)
        time.sleep(0.5)  # both pushed before they go
        report(cp, "host2", b2, False)
        report(cp, "host3", b3, False)

    hold_once()
    text = wait_metrics(cp, held=1, holds=1)
    assert "# TYPE glassmesh_control_holds_total counter" in text
    st = cp.status()
    assert [h["service"] for h in st["held"]] == ["b"] and "every endpoint of 'b'" in st["held"][0]["cause"]
    assert st["holds_started"] == {"b": 1}

    assert cp.post("/v1/release", {"service": "b"})["released"] is True
    wait_metrics(cp, held=0, holds=1)  # no longer held; the counter keeps the hold

    hold_once()
    wait_metrics(cp, held=1, holds=2)


def test_sigterm_with_a_watching_proxy_and_open_long_polls_exits_0_within_3s(mesh: Mesh) -> None:
    cp = Control(mesh)
    ip1, ip2 = fresh_ip(), fresh_ip()
    cp.post("/v1/apply", {"yaml": MESH.format(port=APP_PORT, ip1=ip1, ip2=ip2, ip3=fresh_ip()), "author": "test"})
    mesh.start_app("http", f"{ip2}:{APP_PORT}", "b2")
    p1 = mesh.spawn("proxy host1", join_args(cp, cp.add_host("host1", "a"), mesh.root / "h1"))
    p2 = mesh.spawn("proxy host2", join_args(cp, cp.add_host("host2", "b"), mesh.root / "h2"))
    wait_ready(p1, f"{ip1}:4191")
    wait_ready(p2, f"{ip2}:4191")
    deadline = time.monotonic() + 15
    while (resp := call_b(f"{ip1}:4140")).status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert resp.status == 200, resp

    # Plain-HTTP long-polls too, as host3 (which never joined, so it may watch on the insecure listener).
    version = next(int(h["latest"]) for h in cp.status()["hosts"] if h["name"] == "host3")
    answers: list[Any] = []

    def long_poll() -> None:
        url = f"{cp.url}/v1/hosts/host3/snapshot?after={version}&wait=120"
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                answers.append(r.status)
        except urllib.error.HTTPError as e:
            answers.append((e.code, json.loads(e.read())["error"]))
        except OSError as e:
            answers.append(repr(e))

    polls = [threading.Thread(target=long_poll, daemon=True) for _ in range(3)]
    for t in polls:
        t.start()
    time.sleep(1.0)  # the proxies' long-polls and ours are open and waiting

    t0 = time.monotonic()
    cp.proc.popen.terminate()
    cp.proc.popen.wait(10)
    took = time.monotonic() - t0
    print(f"control plane exited {took:.2f}s after SIGTERM, code {cp.proc.popen.returncode}")
    assert cp.proc.popen.returncode == 0, cp.proc.log_text()
    assert took < 3.0, f"SIGTERM took {took:.2f}s with long-polls open"
    for t in polls:
        t.join(5)
    assert answers and all(isinstance(a, tuple) and a[0] == 503 and "shutting down" in a[1] for a in answers), answers
    assert "Traceback" not in cp.proc.log_text(), cp.proc.log_text()
    # The proxies carry on without it.
    for _ in range(10):
        assert call_b(f"{ip1}:4140").status == 200
    assert p1.alive() and p2.alive()
    # The proxy's own mTLS long-poll was answered too, not cut off.
    assert "snapshot watch: HTTP 503" in p1.log_text() and "shutting down" in p1.log_text(), p1.log_text()
