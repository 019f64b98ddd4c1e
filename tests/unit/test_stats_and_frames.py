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
    s.error("outbound", "no_endpoints")
    text = render(s.dump()).decode()
    assert 'glassmesh_requests_total{destination="b",side="outbound",source="a",status_class="2xx"} 1.0' in text
    assert 'glassmesh_requests_total{destination="b",side="outbound",source="a",status_class="5xx"} 1.0' in text
    assert 'glassmesh_request_duration_seconds_bucket{destination="b",le="0.0025",side="outbound",source="a"} 1.0' in text
    assert 'glassmesh_request_duration_seconds_count{destination="b",side="outbound",source="a"} 2.0' in text
    assert 'glassmesh_tls_handshakes_total{destination="b",side="outbound",source="a"} 1.0' in text
    assert 'glassmesh_link_mtls{destination="b",side="outbound",source="a",tls_version="TLSv1.3"} 1.0' in text
    assert 'glassmesh_mesh_errors_total{reason="no_endpoints",side="outbound"} 1.0' in text


def test_merge_sums_workers():
    a, b = Stats(), Stats()
    a.link("inbound", "a", "b").observe(200, 0.001)
    b.link("inbound", "a", "b").observe(200, 0.001)
    b.link("inbound", "a", "c").observe(404, 0.001)
    a.error("inbound", "forbidden")
    b.error("inbound", "forbidden")
    m = merge([a.dump(), b.dump()])
    by = {(x["source"], x["destination"]): x for x in m["links"]}
    assert by[("a", "b")]["status"][2] == 2
    assert by[("a", "c")]["status"][4] == 1
    assert m["errors"] == [["inbound", "forbidden", 2]]


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
