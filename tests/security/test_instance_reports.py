"""Instance reports decide where a host's inbound delivers its callers' authenticated requests.

A report (even from the host itself) naming an address that is not on that host is refused, and never
reaches a snapshot; a host heard over the insecure plain listener is marked so in `glassmesh status`.
"""

from __future__ import annotations

import json
import time

from tests.e2e.test_control_plane import Control


def _local_instances(c: Control, host: str) -> list[str]:
    status, snap = c.poll(host, 0, 0)
    assert status == 200 and snap is not None
    return [a for s in snap["local_services"] for a in s.get("instances", [])]


def test_a_report_naming_another_machine_is_refused(control: Control) -> None:
    doc = control.post("/v1/hosts/host2/instances", {"instances": [
        {"service": "b", "address": "10.9.8.7:8080", "healthy": True},
        {"service": "b", "address": "127.0.0.1:8080", "healthy": True}], "ttl_s": 30})
    assert doc["instances"] == 1, doc
    assert doc["refused"] == [{"service": "b", "address": "10.9.8.7:8080",
                               "reason": "not on this host (loopback or its own address only)"}], doc
    time.sleep(0.5)
    assert not any("10.9.8.7" in a for a in _local_instances(control, "host2"))
    status = json.loads(control.cli("status", "--json").stdout)
    assert "10.9.8.7" not in json.dumps(status)
    assert "host2" in {h["name"] for h in status["hosts"] if h.get("insecure")}, status["hosts"]
