"""SIGHUP (a reload) while a controlled proxy still waits for its first snapshot: said, not fatal."""

from __future__ import annotations

import os
import signal
import time

from tests.e2e.harness import PROXY_CMD, Mesh, dead_address


def test_sighup_before_the_first_snapshot_keeps_the_proxy(mesh: Mesh) -> None:
    data = mesh.root / "h1"
    p = mesh.spawn("proxy waiting", [*PROXY_CMD, "--control", f"http://{dead_address()}", "--host", "host1",
                                     "--data", str(data)])
    deadline = time.monotonic() + 15
    while "waiting for the first snapshot" not in p.log_text():
        assert p.alive() and time.monotonic() < deadline, p.log_text()
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGHUP)
    time.sleep(1.0)
    assert p.alive(), f"SIGHUP killed the proxy (status {p.popen.returncode}):\n{p.log_text()}"
    assert "SIGHUP: no snapshot yet to reload" in p.log_text(), p.log_text()
    # It still stops cleanly (the harness checks: status 0 within seconds of SIGTERM).
