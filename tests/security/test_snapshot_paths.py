"""A snapshot is data: one from the control plane naming a file outside the proxy's data dir is refused.

A wrong or hostile control plane (the http:// path has no way to prove who it is) must not make a proxy
load another service's key, or any file on the host, as its own certificate or trust bundle.
"""

from __future__ import annotations

from typing import Any

from tests.e2e.harness import Mesh, get
from tests.e2e.test_control_watch import APP_PORT, CHost, FakeControl


def test_paths_outside_the_data_dir_are_refused_and_not_retried(mesh: Mesh) -> None:
    fake = FakeControl()
    try:
        h = CHost(mesh, "host1", ["a", "b"])
        app = mesh.start_app("http", f"{h.ip}:{APP_PORT}", "b1")
        other = CHost(mesh, "host2", ["a"])  # another host's data dir, with another key for a
        good: dict[str, Any] = {
            "version": 1, "host": "host1", "trust_domain": "glassmesh.local", "trust_bundle": "certs/ca.pem",
            "inbound": h.inbound, "admin": h.admin,
            "local_services": [
                {"name": "a", "outbound": h.outbound, "cert": "certs/a.pem", "key": "certs/a.key"},
                {"name": "b", "instances": [app.addr], "cert": "certs/b.pem", "key": "certs/b.key"},
            ],
            "services": [{"name": "b", "endpoints": [{"address": h.inbound, "host": "host1"}]}],
        }
        fake.push(1, good)
        h.start(fake.url)
        h.wait_ready()
        a = good["local_services"][0]
        cases = [
            (2, {**good, "version": 2, "trust_bundle": "/etc/ssl/certs/ca-certificates.crt"}, "trust_bundle"),
            (3, {**good, "version": 3, "local_services": [
                {**a, "key": str(other.data / "certs" / "a.key")}, good["local_services"][1]]},
             "local_services[0].key"),
            (4, {**good, "version": 4, "local_services": [
                {**a, "cert": "../host2-data/certs/a.pem"}, good["local_services"][1]]}, "local_services[0].cert"),
        ]
        for version, doc, field in cases:
            fake.push(version, doc)
            ack = fake.ack_for(version)
            assert ack["accepted"] is False and f"{field} names " in ack["reason"] and \
                "outside this proxy's data dir" in ack["reason"], ack
            assert "retrying" not in ack["reason"]
        ready = h.ready()
        assert ready["snapshot_version"] == 1 and ready["pending_retry"] is None, ready
        assert get(h.outbound, "/x", headers={"Host": "b"}).status == 200  # still serving version 1
    finally:
        fake.close()
