"""Steady HTTP load from inside a host's namespace, every answer recorded: `python load.py TARGET HOST RATE OUT STOPFILE`.

Run as its own process (a namespace is entered by `ip netns exec`). Each of
four threads keeps one connection alive and sends GETs at RATE/4 per second
until STOPFILE exists, then writes a JSON summary to OUT: how many requests,
and every one that did not end in a 200 (time, status, glassmesh-error or
the exception).

It behaves as an ordinary HTTP client does (Go's net/http, curl, browsers):
it honours `Connection: close`, and a GET that meets a kept-alive
connection closed by the server before any byte of an answer is sent once
more on a new connection (RFC 9112 9.3.1). That retry is counted in
`reused_conn_retries`, not hidden; a second failure is a failure.
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import threading
import time
from collections.abc import Callable


def keep_alive(connect: Callable[[], http.client.HTTPConnection], host: str, period: float, done: Callable[[], bool],
               out: dict, lock: threading.Lock) -> None:  # type: ignore[type-arg]
    """One client's loop: GETs on a kept-alive connection (from `connect`) every `period` s until `done()`."""
    conn: http.client.HTTPConnection | None = None
    fresh = True
    while not done():
        t = time.time()
        for attempt in (1, 2):
            r: http.client.HTTPResponse | None = None
            try:
                if conn is None:
                    conn = connect()
                    fresh = True
                conn.request("GET", "/fleet", headers={"Host": host})
                r = conn.getresponse()
                r.read()
                ok = r.status == 200
                with lock:
                    out["requests"] += 1
                    if not ok:
                        out["failures"].append([t, r.status, r.getheader("glassmesh-error") or ""])
                    else:
                        app = r.getheader("x-app") or "?"
                        out["by_app"][app] = out["by_app"].get(app, 0) + 1
                if r.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
                else:
                    fresh = False
                break
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                reused = not fresh
                if attempt == 1 and reused and isinstance(e, (http.client.RemoteDisconnected, ConnectionResetError,
                                                              BrokenPipeError)):
                    with lock:
                        out["reused_conn_retries"] += 1
                    continue
                # What the head said, when one came (the body was cut): which hops and which app, to diagnose.
                said = "" if r is None else (f"; head {r.status}, trail {r.getheader('glassmesh-trail')!r}, "
                                             f"app {r.getheader('x-app')!r}")
                with lock:
                    out["requests"] += 1
                    out["failures"].append([t, 0, f"client: {e!r}{said}"])
                break
        time.sleep(max(0.0, period - (time.time() - t)))
    if conn is not None:
        conn.close()


def worker(target: str, host: str, period: float, stop: str, out: dict, lock: threading.Lock) -> None:  # type: ignore[type-arg]
    h, _, p = target.rpartition(":")
    keep_alive(lambda: http.client.HTTPConnection(h, int(p), timeout=10), host, period, lambda: os.path.exists(stop),
               out, lock)


def main() -> None:
    target, host, rate, out_path, stop = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4], sys.argv[5]
    out: dict = {"requests": 0, "failures": [], "reused_conn_retries": 0, "by_app": {},  # type: ignore[type-arg]
                 "started": time.time()}
    lock = threading.Lock()
    threads = [threading.Thread(target=worker, args=(target, host, 4 / rate, stop, out, lock)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out["ended"] = time.time()
    with open(out_path + ".tmp", "w") as f:
        json.dump(out, f)
    os.replace(out_path + ".tmp", out_path)


if __name__ == "__main__":
    main()
