"""Stopping one instance of a real app under load from a real client loses no GET.

gunicorn (gthread workers, keep-alive) serves b on host2 and host3; `hey` calls b
through host1's outbound listener with 16 connections; mid-load host3's gunicorn is
stopped, politely (SIGTERM: it closes its kept-alive connections and stops accepting)
or not (SIGKILL of every gunicorn process). Requests caught on a closing connection are
sent again (host3's inbound on a fresh connection, host1's outbound to host2), so hey
sees only 200s.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.harness import App, Host, Mesh, get, wait_port

WSGI_DIR = Path(__file__).resolve().parent
LOAD_S = 8
STOP_AFTER_S = 3


def gunicorn_app(mesh: Mesh, host: Host, service: str) -> App:
    addr = f"{host.ip}:{host.app_port()}"
    name = f"{service}@{host.name}"
    p = mesh.spawn(f"gunicorn {name}", [
        sys.executable, "-m", "gunicorn", "--bind", addr, "--chdir", str(WSGI_DIR), "--workers", "2",
        "--worker-class", "gthread", "--threads", "4", "--keep-alive", "5", "--graceful-timeout", "5",
        "wsgi_app:app"], env={"APP_NAME": name})
    wait_port(addr, p)
    host.add_instance(service, addr)
    return App(p, addr, name)


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_stopping_one_gunicorn_under_load_fails_no_get(mesh: Mesh, how: str) -> None:
    assert shutil.which("hey"), "hey is not installed: run scripts/install-test-deps.sh (make test does)"
    h1, h2, h3 = mesh.add_host("host1"), mesh.add_host("host2"), mesh.add_host("host3")
    h1.client("a")
    gunicorn_app(mesh, h2, "b")
    g3 = gunicorn_app(mesh, h3, "b")
    mesh.start()
    assert get(h1.outbound("a"), "/", headers={"Host": "b"}).status == 200
    hey = subprocess.Popen(["hey", "-z", f"{LOAD_S}s", "-c", "16", "-t", "10", "-host", "b",
                            f"http://{h1.outbound('a')}/get"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, start_new_session=True)
    try:
        time.sleep(STOP_AFTER_S)
        if how == "SIGTERM":
            os.kill(g3.proc.pid, signal.SIGTERM)  # the master: graceful, as `systemctl stop` does
        else:
            g3.proc.expect_exit()  # killed on purpose: teardown does not count it
            for pid in g3.proc.pids():
                os.kill(pid, signal.SIGKILL)
        out, _ = hey.communicate(timeout=LOAD_S + 30)
    finally:
        if hey.poll() is None:
            os.kill(hey.pid, signal.SIGKILL)
            hey.wait()
    g3.proc.popen.wait(10)
    statuses = {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    assert set(statuses) == {200} and statuses[200] > 100, out
    assert "Error distribution" not in out, out
