"""HTTP from app a on host1 to service b on host2: outbound -> mTLS -> inbound -> app, as a user sees it."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from tests.e2e.conftest import AB
from tests.e2e.harness import HttpConn, Mesh, app_headers, trail

SOURCE_A = "spiffe://glassmesh.local/service/a"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


@pytest.mark.parametrize("form", ["proxy", "host"])
def test_request_reaches_b_with_callers_identity_and_trail(ab: AB, form: str) -> None:
    with HttpConn(ab.outbound) as c:
        if form == "proxy":
            r = c.request("GET", "http://b/hello?q=1", {"Host": "b", "User-Agent": "e2e"})
        else:
            r = c.request("GET", "/hello?q=1", {"Host": "b", "User-Agent": "e2e"})
    assert r.status == 200, r
    info = r.json()
    assert info["app"] == "b@host2"
    assert info["target"] == "/hello?q=1", "the app gets origin form"
    assert info["method"] == "GET"
    assert app_headers(info, "glassmesh-source") == [SOURCE_A]
    assert app_headers(info, "user-agent") == ["e2e"]
    assert app_headers(info, "host") == ["b"], info["headers"]
    hops = trail(r)
    assert [h for h, _ in hops] == ["host1/outbound", "host2/inbound"], r.all("glassmesh-trail")
    assert all(d >= 0 for _, d in hops)
    assert hops[0][1] >= hops[1][1], "the outer hop includes the inner one's time"
    # Milliseconds with three decimals, as the README shows them.
    assert re.fullmatch(r"host1/outbound;dur=\d+\.\d{3}, host2/inbound;dur=\d+\.\d{3}",
                        ", ".join(r.all("glassmesh-trail"))), r.all("glassmesh-trail")


def test_client_sent_source_header_is_replaced(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/", [
            ("Host", "b"),
            ("glassmesh-source", "spiffe://glassmesh.local/service/admin"),
            ("GlassMesh-Source", "spiffe://evil/service/x"),
        ])
    assert r.status == 200, r
    assert app_headers(r.json(), "glassmesh-source") == [SOURCE_A]


def test_request_id_and_traceparent_created_when_absent(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r1 = c.request("GET", "http://b/1", {"Host": "b"})
        r2 = c.request("GET", "http://b/2", {"Host": "b"})
    ids = []
    for r in (r1, r2):
        info = r.json()
        rid = app_headers(info, "x-request-id")
        tp = app_headers(info, "traceparent")
        assert len(rid) == 1 and rid[0], info["headers"]
        assert len(tp) == 1 and TRACEPARENT.match(tp[0]), tp
        ids.append((rid[0], TRACEPARENT.match(tp[0]).group(1)))
    assert ids[0][0] != ids[1][0] and ids[0][1] != ids[1][1], "each request gets its own ids"


def test_request_id_and_traceparent_passed_on_when_present(ab: AB) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    tp = f"00-{trace_id}-00f067aa0ba902b7-01"
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/", {"Host": "b", "X-Request-Id": "my-req-42", "traceparent": tp})
    info = r.json()
    assert app_headers(info, "x-request-id") == ["my-req-42"]
    got = app_headers(info, "traceparent")
    assert len(got) == 1 and TRACEPARENT.match(got[0]), got
    assert TRACEPARENT.match(got[0]).group(1) == trace_id, "the trace id is kept (the parent id may change)"


def test_end_to_end_headers_kept_and_hop_by_hop_removed(ab: AB) -> None:
    with HttpConn(ab.outbound) as c:
        r = c.request("GET", "http://b/", [
            ("Host", "b"),
            ("X-Multi", "one"),
            ("X-Multi", "two"),
            ("X-Spaces", "a  b, c"),
            ("Connection", "keep-alive, X-Drop-Me"),
            ("X-Drop-Me", "secret"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
        ])
    assert r.status == 200, r
    info = r.json()
    assert app_headers(info, "x-multi") == ["one", "two"]
    assert app_headers(info, "x-spaces") == ["a  b, c"]
    for hop in ("x-drop-me", "keep-alive", "proxy-connection"):
        assert app_headers(info, hop) == [], f"hop-by-hop {hop} reached the app: {info['headers']}"


def test_round_robin_across_two_hosts(mesh: Mesh) -> None:
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    h2.http_app("b")
    h3.http_app("b")
    mesh.policies["b"] = {"balance": "round_robin"}  # the default, P2C, splits by latency instead
    mesh.start()
    seen: Counter[str] = Counter()
    with HttpConn(h1.outbound("a")) as c:
        for i in range(20):
            r = c.request("GET", f"http://b/{i}", {"Host": "b"})
            assert r.status == 200, r
            seen[r.json()["app"]] += 1
    for i in range(10):
        with HttpConn(h1.outbound("a")) as c:
            seen[c.request("GET", f"http://b/new-conn-{i}", {"Host": "b"}).json()["app"]] += 1
    assert set(seen) == {"b@host2", "b@host3"}, seen
    assert abs(seen["b@host2"] - seen["b@host3"]) <= 2, f"round robin should split evenly: {seen}"


def test_inbound_balances_its_local_instances(mesh: Mesh) -> None:
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    h2.http_app("b", name="b1@host2")
    h2.http_app("b", name="b2@host2")
    h3.http_app("b")
    # host1 sends half to each host in turn (P2C, the default, would split by latency); host2's inbound
    # takes its two local instances in turn.
    mesh.policies["b"] = {"balance": "round_robin"}
    mesh.start()
    seen: Counter[str] = Counter()
    with HttpConn(h1.outbound("a")) as c:
        for i in range(30):
            seen[c.request("GET", f"http://b/{i}", {"Host": "b"}).json()["app"]] += 1
    assert set(seen) == {"b1@host2", "b2@host2", "b@host3"}, seen
    assert min(seen.values()) >= 6, f"each of three instances should get about a third: {seen}"


def test_each_local_service_calls_with_its_own_identity(mesh: Mesh) -> None:
    """Two callers on one host: each outbound listener presents its own service's certificate."""
    h1, h2 = mesh.add_host("host1"), mesh.add_host("host2")
    h1.client("a")
    h1.client("c")
    h2.http_app("b")
    mesh.start()
    for caller in ("a", "c"):
        with HttpConn(h1.outbound(caller)) as conn:
            r = conn.request("GET", "http://b/who", {"Host": "b"})
        assert r.status == 200, r
        assert app_headers(r.json(), "glassmesh-source") == [f"spiffe://glassmesh.local/service/{caller}"]
