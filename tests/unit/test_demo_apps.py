"""The demo's process handling and its apps' graceful stop, without a proxy."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from glassmesh.demo.httpio import Connection, Drain, Request, Response, serve_connection
from glassmesh.demo.procs import ProcessGroup
from glassmesh.demo.runner import SnapshotWatch


def test_drain_answers_what_is_in_progress_and_closes_idle_connections():
    async def main() -> None:
        release = asyncio.Event()

        async def handle(req: Request) -> Response:
            if req.target == "/slow":
                await release.wait()
            return Response(200, body=b"ok")

        drain = Drain(idle_grace_s=0.05, fresh_grace_s=0.3)
        srv = await asyncio.start_server(lambda r, w: serve_connection(r, w, handle, drain), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        idle, busy = Connection("127.0.0.1", port), Connection("127.0.0.1", port)
        assert (await idle.request("GET", "/")).status == 200
        assert (await busy.request("GET", "/")).status == 200
        slow = asyncio.create_task(busy.request("GET", "/slow"))
        fresh_r, fresh_w = await asyncio.open_connection("127.0.0.1", port)  # connected, no request yet
        await asyncio.sleep(0.05)
        assert len(drain.tasks) == 3

        srv.close()
        drain.start()
        await asyncio.sleep(0.15)
        assert await idle_reader_closed(idle)  # idle keep-alive: closed once the short grace is over
        # The connection that had not sent its first request yet is still answered within its grace.
        fresh_w.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        head = await asyncio.wait_for(fresh_r.read(), 2)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head
        release.set()
        resp = await slow  # the request in progress is answered, with connection: close
        assert resp.status == 200 and resp.header("connection") == "close"
        assert await drain.wait(2) == 0
        fresh_w.close()
        idle.close()
        busy.close()

    async def idle_reader_closed(conn: Connection) -> bool:
        assert conn._reader is not None
        return await asyncio.wait_for(conn._reader.read(), 1) == b""

    asyncio.run(main())


def test_stop_child_and_restart_keep_one_log_and_are_not_deaths(tmp_path):
    with ProcessGroup(str(tmp_path / "logs")) as g:
        argv = [sys.executable, "-c", "import os, time; print('up', os.getpid(), flush=True); time.sleep(60)"]
        c = g.start("app", argv)
        deadline = time.monotonic() + 10
        while "up" not in c.log_tail() and time.monotonic() < deadline:
            time.sleep(0.02)
        rc = g.stop_child(c, grace=5)
        assert rc == -15 and not c.alive() and g.dead() == []
        c2 = g.restart(c)
        assert c2.pid != c.pid and c2.alive() and c2.log == c.log
        deadline = time.monotonic() + 10
        while c2.log_tail().count("up") < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert c2.log_tail().count("up") == 2  # appended to, not replaced
    assert not c2.alive()


class _FakeAdmin(BaseHTTPRequestHandler):
    """A proxy's /ready and /config, from a dict the test changes."""

    state: dict[str, Any] = {}

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        import json

        snap = self.state["snap"]
        doc = {"ready": True, "snapshot_version": snap["version"]} if self.path == "/ready" else snap
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_snapshot_watch_reports_new_versions_with_what_moved():
    def snap(version: int, b: list[str]) -> dict[str, Any]:
        return {"version": version, "services": [{"name": "b", "endpoints": [
            {"address": f"{h}:4143", "host": h} for h in b]}]}

    _FakeAdmin.state = {"snap": snap(5, ["host2", "host3"])}
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAdmin)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    seen = []
    try:
        w = SnapshotWatch({"host1": f"127.0.0.1:{srv.server_address[1]}"}, seen.append, interval=0.02)
        w.start()
        assert w.versions == {"host1": 5} and seen == []  # what runs at the start is no push
        _FakeAdmin.state["snap"] = snap(9, ["host3"])
        p = w.wait_for(lambda v: v["host1"]["b"] == ["host3"], 5)
        assert p is not None and (p.version, p.endpoints, p.before) == (9, {"b": ["host3"]},
                                                                         {"b": ["host2", "host3"]})
        assert seen == [p]
        assert w.wait_for(lambda v: False, 0.1) is None
        w.stop()
    finally:
        srv.shutdown()


def test_stop_names_the_children_that_had_to_be_killed(tmp_path):
    """A child that ignores SIGTERM is SIGKILLed after the grace period, and stop() says which one it was."""
    g = ProcessGroup(str(tmp_path / "logs"))
    ok = g.start("polite", [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"])
    stuck = g.start("stuck", [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); print('up', flush=True); time.sleep(60)"])
    deadline = time.monotonic() + 10
    while not ("up" in ok.log_tail() and "up" in stuck.log_tail()) and time.monotonic() < deadline:
        time.sleep(0.02)
    forced = g.stop(grace=1.0)
    assert [c.name for c in forced] == ["stuck"] and not ok.alive() and not stuck.alive()
    assert stuck.proc.returncode == -9 and ok.proc.returncode == -15
