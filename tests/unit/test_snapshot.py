"""Snapshot validation: a bad snapshot is refused with the field named."""

import json

import pytest

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
