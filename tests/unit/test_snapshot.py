"""Snapshot validation: a bad snapshot is refused with the field named."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from glassmesh.model.snapshot import SnapshotError, encode_snapshot, load_snapshot, parse_snapshot

GOOD = {
    "version": 3,
    "host": "host1",
    "trust_domain": "glassmesh.local",
    "trust_bundle": "certs/ca.pem",
    "inbound": "127.0.0.11:4143",
    "admin": "127.0.0.11:4191",
    "local_services": [
        {"name": "a", "instances": ["127.0.0.11:8080"], "outbound": "127.0.0.11:4140",
         "cert": "certs/a.pem", "key": "certs/a.key"}
    ],
    "services": [
        {"name": "b", "endpoints": [{"address": "127.0.0.12:4143", "host": "host2"}]},
        {"name": "db", "protocol": "tcp", "endpoints": [{"address": "127.0.0.13:4143", "host": "host3"}]},
    ],
    "tcp_links": [{"source": "a", "listen": "127.0.0.11:15432", "destination": "db"}],
}


def parse(doc):
    return parse_snapshot(json.dumps(doc).encode(), "/etc/gm")


def test_good_snapshot_resolves_paths():
    s = parse(GOOD)
    assert s.version == 3 and s.local("a").cert == "/etc/gm/certs/a.pem"
    assert s.trust_bundle == "/etc/gm/certs/ca.pem"
    assert s.service("b").endpoints[0].host == "host2"
    assert s.timeouts.connect_ms == 3000
    assert parse_snapshot(encode_snapshot(s)) == s


def mutate(path, value):
    doc = json.loads(json.dumps(GOOD))
    cur = doc
    for k in path[:-1]:
        cur = cur[k]
    cur[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    "doc, words",
    [
        (mutate(["colour"], "blue"), "unknown field `colour`"),
        (mutate(["services", 0, "weight"], 3), "unknown field `weight` - at `$.services[0]`"),
        (mutate(["version"], "3"), "Expected `int`, got `str` - at `$.version`"),
        (mutate(["inbound"], "localhost"), "host:port - at `$.inbound`"),
        (mutate(["services", 0, "name"], "B_x"), "lowercase DNS label (a-z, 0-9, -) - at `$.services[0].name`"),
        (mutate(["tcp_links", 0, "destination"], "nope"), "at `$.tcp_links[0].destination`"),
        (mutate(["tcp_links", 0, "destination"], "b"), "needs a tcp one - at `$.tcp_links[0].destination`"),
        (mutate(["tcp_links", 0, "source"], "zz"), "not a local service - at `$.tcp_links[0].source`"),
        (mutate(["admin"], "127.0.0.11:4143"), "same address - at `$.admin`"),
        (mutate(["inbound"], "127.0.0.1:99999"), "port out of range"),
        (mutate(["local_services", 0, "protocol"], "udp"), "at `$.local_services[0].protocol`"),
        (mutate(["local_services", 0, "outbound_socket"], "a.sock"), "absolute path - at `$.local_services[0].outbound_socket`"),
        (mutate(["local_services", 0, "outbound_socket_mode"], "999"), "at `$.local_services[0].outbound_socket_mode`"),
    ],
)
def test_bad_snapshots_name_the_field(doc, words):
    with pytest.raises(SnapshotError) as e:
        parse(doc)
    assert words in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    with pytest.raises(SnapshotError, match="not valid JSON"):
        parse_snapshot(b"{nope")
    with pytest.raises(SnapshotError, match="cannot read"):
        load_snapshot(str(tmp_path / "missing.json"))
    with pytest.raises(SnapshotError, match="Object missing required field `trust_bundle`"):
        parse({k: v for k, v in GOOD.items() if k != "trust_bundle"})


# --------------------------------------------------------------------------- strict files, tolerant wire

# Where a newer release might add a field: the top level, and each kind of object under it.
PLACES = [[], ["local_services", 0], ["services", 0], ["services", 1, "endpoints", 0], ["tcp_links", 0],
          ["timeouts"], ["limits"]]


@given(st.lists(st.tuples(st.sampled_from(range(len(PLACES))),
                          st.from_regex(r"\Ax_[a-z_]{1,12}\Z"),
                          st.one_of(st.integers(), st.text(max_size=8), st.none(),
                                    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
                                    st.lists(st.integers(), max_size=3))),
                min_size=1, max_size=6))
def test_unknown_fields_are_ignored_on_the_wire_and_errors_in_a_file(added):
    from glassmesh.model.snapshot import decode_snapshot, unknown_fields

    doc = json.loads(json.dumps(GOOD))
    want = []
    for place, name, value in added:
        obj = doc
        for k in PLACES[place]:
            obj = obj.setdefault(k, {}) if isinstance(k, str) and k in ("timeouts", "limits") else obj[k]
        if name not in obj:
            want.append("$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in PLACES[place])
                        + f".{name}")
        obj[name] = value
    data = json.dumps(doc).encode()
    assert decode_snapshot(data) == decode_snapshot(json.dumps(GOOD).encode())  # the wire: ignored, nothing else
    assert sorted(unknown_fields(data)) == sorted(want)
    with pytest.raises(SnapshotError, match="unknown field"):  # a file: an error naming one of them
        parse_snapshot(data, "/etc/gm")


def test_requires_names_the_feature_this_proxy_lacks():
    from glassmesh.model.snapshot import FEATURES

    assert "teleport" not in FEATURES
    with pytest.raises(SnapshotError, match=r"requires feature teleport, which this proxy \(glassmesh .*\) does not "
                                            r"have: upgrade it - at `\$.requires`"):
        parse({**GOOD, "requires": ["teleport"]})
    assert parse({**GOOD, "requires": []}).requires == []
