"""Per-link counters, their merge across workers, and tcp-link framing."""

from hypothesis import given
from hypothesis import strategies as st

from glassmesh.proxy.stats import Stats, merge, render
from glassmesh.proxy.tcp import FIN, FrameDecoder, encode


def test_link_counters_render_as_prometheus():
    s = Stats()
    ls = s.link("outbound", "a", "b")
    ls.observe(200, 0.002)
    ls.observe(503, 0.2)
    ls.handshakes += 1
    ls.tls_version = "TLSv1.3"
    s.host = "host1"
    s.error("outbound", "no_endpoints", "a", "b")
    s.error("outbound", "forbidden", "a", "b", hop="host2/inbound")
    text = render(s.dump()).decode()
    assert ('glassmesh_requests_total{code="200",destination="b",side="outbound",source="a",status_class="2xx"} 1.0'
            in text)
    assert ('glassmesh_requests_total{code="503",destination="b",side="outbound",source="a",status_class="5xx"} 1.0'
            in text)
    assert 'glassmesh_request_duration_seconds_bucket{destination="b",le="0.0025",side="outbound",source="a"} 1.0' in text
    assert 'glassmesh_request_duration_seconds_count{destination="b",side="outbound",source="a"} 2.0' in text
    assert 'glassmesh_tls_handshakes_total{destination="b",side="outbound",source="a"} 1.0' in text
    assert 'glassmesh_link_mtls{destination="b",side="outbound",source="a",tls_version="TLSv1.3"} 1.0' in text
    assert ('glassmesh_mesh_errors_total{destination="b",hop="host1/outbound",reason="no_endpoints",side="outbound",'
            'source="a"} 1.0' in text)
    assert ('glassmesh_mesh_errors_total{destination="b",hop="host2/inbound",reason="forbidden",side="outbound",'
            'source="a"} 1.0' in text)
    assert "process_cpu_seconds_total " in text and "glassmesh_processes 1.0" in text


def test_merge_sums_workers():
    a, b = Stats(), Stats()
    a.link("inbound", "a", "b").observe(200, 0.001)
    b.link("inbound", "a", "b").observe(200, 0.001)
    b.link("inbound", "a", "c").observe(404, 0.001)
    a.host = b.host = "h"
    a.error("inbound", "forbidden", "a", "b")
    b.error("inbound", "forbidden", "a", "b")
    m = merge([a.dump(), b.dump()])
    by = {(x["source"], x["destination"]): x for x in m["links"]}
    assert by[("a", "b")]["status"][2] == 2 and by[("a", "b")]["codes"] == {"200": 2}
    assert by[("a", "c")]["status"][4] == 1 and by[("a", "c")]["codes"] == {"404": 1}
    # Errors made here keep the (side, source, destination, reason) shape control/links.py reads.
    assert m["errors"] == [["inbound", "a", "b", "forbidden", 2]]
    # process_*: the supervisor's own sample and both workers', summed (3 processes).
    assert m["process"]["processes"] == 3 and m["process"]["process_resident_memory_bytes"] > 0


@given(st.lists(st.one_of(st.binary(min_size=1, max_size=3000), st.none()), max_size=20),
       st.integers(min_value=1, max_value=97))
def test_frames_round_trip_in_any_split(messages, step):
    wire = b"".join(FIN if m is None else b"".join(encode(m)) for m in messages)
    dec = FrameDecoder()
    got: list = []
    for i in range(0, len(wire), step):
        got += dec.feed(wire[i:i + step])
    # Payloads may arrive split; join consecutive data between FINs.
    joined: list = []
    for g in got:
        if g is None:
            joined.append(None)
        elif joined and isinstance(joined[-1], bytes):
            joined[-1] += g
        else:
            joined.append(g)
    expect: list = []
    for m in messages:
        if m is None:
            expect.append(None)
        elif expect and isinstance(expect[-1], bytes):
            expect[-1] += m
        else:
            expect.append(m)
    assert joined == expect


def test_oversized_frame_is_an_error():
    dec = FrameDecoder()
    try:
        dec.feed(b"\xff\xff\xff\xff")
    except ValueError as e:
        assert "limit" in str(e)
    else:
        raise AssertionError("oversized frame accepted")


@given(st.lists(st.one_of(st.floats(0, 20, allow_nan=False), st.sampled_from([0.0, 0.0005, 0.001, 0.01, 10.0, 10.5])),
                max_size=50),
       st.lists(st.integers(0, 999), max_size=50))
def test_observe_counts_as_prometheus_buckets_do(seconds, statuses):
    """The compiled observe() puts a duration where bisect_left would (a bound is inclusive: le)."""
    import bisect

    from glassmesh.proxy.linkstats import BUCKETS, LinkStats

    ls = LinkStats("outbound", "a", "b")
    want = [0] * (len(BUCKETS) + 1)
    want_status = [0] * 6
    for i, s in enumerate(seconds):
        status = statuses[i] if i < len(statuses) else 200
        ls.observe(status, s)
        want[bisect.bisect_left(BUCKETS, s)] += 1
        cls = status // 100
        want_status[cls if 0 < cls < 6 else 5] += 1
    assert ls.buckets == want
    assert ls.dump()["status"] == want_status
    assert abs(ls.dur_sum - sum(seconds)) < 1e-9 * max(1.0, sum(seconds))


def test_tls_contexts_hand_uvloop_the_c_read_and_write(tmp_path):
    """DirectSSLObject: TLS records go through _ssl's C methods, with no Python frame in between."""
    import ssl

    from glassmesh.ca import init_ca
    from glassmesh.proxy.tls import DirectSSLObject, client_context, listener_context, service_context

    ca = init_ca(tmp_path / "ca")
    cert, key = ca.issue("service", "a").write(tmp_path / "a")
    bundle = str(tmp_path / "ca" / "ca.pem")
    for made in (client_context(str(cert), str(key), bundle), service_context(str(cert), str(key), bundle),
                 listener_context(bundle, lambda _name: None)):
        assert made.sslobject_class is DirectSSLObject
    ctx = client_context(str(cert), str(key), bundle)
    obj = ctx.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO())
    assert isinstance(obj, ssl.SSLObject)
    assert type(obj.read).__name__ == "builtin_function_or_method" and obj.read.__self__ is obj._sslobj
    assert obj.write.__self__ is obj._sslobj and obj.pending.__self__ is obj._sslobj
    assert obj.pending() == 0
    try:
        obj.read(10)
        raise AssertionError("a read before the handshake must raise")
    except ssl.SSLError:
        pass


def test_tcp_links_render_their_own_series_and_merge():
    a, b = Stats(), Stats()
    for s in (a, b):
        ls = s.tcp_link("inbound", "a", "db")
        ls.tcp_conns += 2
        ls.tls_version = "TLSv1.3"
        s.tcp_opened(("inbound", "a", "db"), 1)
        s.tcp_failure("inbound", "a", "db", "connect_refused")
    text = render(merge([a.dump(), b.dump()])).decode()
    assert 'glassmesh_tcp_connections_total{destination="db",side="inbound",source="a"} 4.0' in text
    assert 'glassmesh_tcp_open_connections{destination="db",side="inbound",source="a"} 2.0' in text
    assert ('glassmesh_tcp_connect_failures_total{destination="db",reason="connect_refused",side="inbound",'
            'source="a"} 2.0') in text
    assert 'glassmesh_link_mtls{destination="db",side="inbound",source="a",tls_version="TLSv1.3"} 1.0' in text
    assert "glassmesh_requests_total{" not in text


def test_bucket_tree_agrees_with_bisect_at_every_bound() -> None:
    """linkstats.bucket is a hand-written comparison tree: each bound, and the float just past it, lands
    where bisect_left over BUCKETS puts it (the tree must be redone if BUCKETS changes)."""
    import bisect
    import math

    from glassmesh.proxy.linkstats import BUCKETS, bucket

    for b in BUCKETS:
        for x in (b, math.nextafter(b, math.inf), math.nextafter(b, 0.0)):
            assert bucket(x) == bisect.bisect_left(BUCKETS, x), x
    assert bucket(0.0) == 0 and bucket(-1.0) == 0
    assert bucket(math.inf) == bucket(math.nan) == len(BUCKETS)


def test_dump_keeps_the_shapes_other_readers_know_and_renders_the_new_labels() -> None:
    """control/links.py reads errors as (side, source, destination, reason) and retries as (side, destination,
    reason): a peer's error passed on, and retries by source, ride in keys of their own; /metrics has all."""
    a, b = Stats(), Stats()
    for s in (a, b):
        s.host = "host1"
        s.error("outbound", "connect_refused", "a", "down", hop="host2/inbound")
        s.error("outbound", "unknown_service", "a", "")
        s.retry("outbound", "a", "b", "status")
        s.retry("outbound", "c", "b", "status")
    m = merge([a.dump(), b.dump()])
    assert m["errors"] == [["outbound", "a", "", "unknown_service", 2]]
    assert m["passed_errors"] == [["outbound", "a", "down", "connect_refused", "host2/inbound", 2]]
    assert m["retries"] == [["outbound", "b", "status", 4]]
    assert sorted(m["link_retries"]) == [["outbound", "a", "b", "status", 2], ["outbound", "c", "b", "status", 2]]
    text = render(m).decode()
    assert ('glassmesh_mesh_errors_total{destination="down",hop="host2/inbound",reason="connect_refused",'
            'side="outbound",source="a"} 2.0') in text
    assert ('glassmesh_mesh_errors_total{destination="",hop="host1/outbound",reason="unknown_service",'
            'side="outbound",source="a"} 2.0') in text
    assert 'glassmesh_retries_total{destination="b",reason="status",side="outbound",source="c"} 2.0' in text


def test_workers_endpoint_histograms_and_ejections_are_summed() -> None:
    def worker(n: int, ejected: bool) -> Stats:
        s = Stats()
        row = {"service": "b", "host": "host2", "address": "10.0.0.2:4143", "ejected": ejected,
               "ejected_for_s": 5.0 if ejected else 0.0, "ejections": 1, "ejections_total": n, "requests": 10 * n,
               "failures": n, "outstanding": 0, "latency_ewma_s": 0.002, "latency_buckets": [n] * 15,
               "latency_sum_s": 0.5 * n}
        s.endpoint_rows = lambda: [row]
        return s

    text = render(merge([worker(1, False).dump(), worker(2, True).dump()])).decode()
    el = 'address="10.0.0.2:4143",destination="b",host="host2"'
    assert f"glassmesh_endpoint_ejections_total{{{el}}} 3.0" in text
    assert f"glassmesh_endpoint_ejected{{{el}}} 1.0" in text
    assert f'glassmesh_endpoint_latency_seconds_bucket{{{el},le="0.0005"}} 3.0' in text
    assert f'glassmesh_endpoint_latency_seconds_bucket{{{el},le="+Inf"}} 45.0' in text
    assert f"glassmesh_endpoint_latency_seconds_sum{{{el}}} 1.5" in text
