"""The demo's applications: small, real HTTP services that know nothing about the mesh.

    python -m glassmesh.demo.apps b --listen 127.0.0.12:8080 --name b-1
    python -m glassmesh.demo.apps a --listen 127.0.0.11:8080 --name a-1 \
        --proxy 127.0.0.11:4140 --call b --call c

`b` and `c` (any name other than `a` works the same: a "backend") answer JSON
saying which instance answered and which caller identity the mesh told them
about (the `glassmesh-source` header), after a few ms of simulated work.
`a` (or any service given `--call`) is a "frontend": on `GET /` it calls each `--call` service through its
outbound proxy, in HTTP proxy form on keep-alive connections, and answers the
combined result, or 502 naming the call that failed.

SIGTERM stops an app gracefully, as a well-behaved service stops: it closes
its listening socket, answers the requests it is handling (with `connection:
close`), closes its idle keep-alive connections and exits. The proxy in front
sees only answers, or connections closed before it sent anything, which it
retries elsewhere: that is how the demo stops an instance with no failed request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import time
from typing import Any

import uvloop

from glassmesh.demo.httpio import Drain, Pool, Request, Response, serve_connection, split_hostport

JSON = [("content-type", "application/json")]


def _json(status: int, doc: Any, extra: list[tuple[str, str]] | None = None) -> Response:
    return Response(status, JSON + (extra or []), json.dumps(doc).encode() + b"\n")


class Backend:
    """b, c, ...: answer who we are, who called, and a small payload."""

    def __init__(self, service: str, name: str, work_ms: float) -> None:
        self.service, self.name, self.work_ms = service, name, work_ms
        self.served = 0

    async def handle(self, req: Request) -> Response:
        if self.work_ms > 0:  # a few ms of "work", jittered so percentiles differ
            await asyncio.sleep(self.work_ms * random.uniform(0.5, 1.5) / 1000)
        self.served += 1
        path = _origin_path(req.target)
        if path.startswith("/status/"):  # /status/503 answers that status: handy for tests
            code = int(req.target.rsplit("/", 1)[1] or 200)
            return _json(code, {"instance": self.name, "status": code})
        return _json(
            200,
            {
                "service": self.service,
                "instance": self.name,
                "method": req.method,
                "path": req.target,
                "source": req.header("glassmesh-source"),
                "request_id": req.header("x-request-id"),
                "traceparent": req.header("traceparent"),
                "request_bytes": len(req.body),
                "served": self.served,
                "payload": {"items": [random.randint(0, 1000) for _ in range(8)], "ts": time.time()},
            },
        )


class Frontend:
    """a: fan out to the called services through the outbound proxy and combine."""

    def __init__(self, name: str, proxy: str, calls: list[str], path: str, timeout: float) -> None:
        host, port = split_hostport(proxy)
        self.name, self.calls, self.path = name, calls, path
        self.pool = Pool(host, port, timeout=timeout)

    async def _call(self, service: str, req_id: str | None) -> tuple[bool, dict[str, Any]]:
        headers = [("host", service)]
        if req_id:
            headers.append(("x-request-id", req_id))
        t0 = time.perf_counter()
        try:
            resp = await self.pool.request("GET", f"http://{service}{self.path}", headers)
        except Exception as e:  # the proxy itself is unreachable or hung
            return False, {"error": f"{type(e).__name__}: {e}", "ms": _ms(t0)}
        out: dict[str, Any] = {"status": resp.status, "ms": _ms(t0), "trail": resp.header("glassmesh-trail")}
        if resp.header("glassmesh-error"):
            out["glassmesh_error"] = resp.header("glassmesh-error")
        try:
            out["body"] = json.loads(resp.body)
        except ValueError:
            out["body"] = resp.body[:200].decode("utf-8", "replace")
        return resp.status < 400, out

    async def handle(self, req: Request) -> Response:
        if req.target not in ("/", "/?"):
            return _json(404, {"instance": self.name, "error": f"no route for {req.target}"})
        results = await asyncio.gather(*(self._call(s, req.header("x-request-id")) for s in self.calls))
        doc = {"instance": self.name, "calls": {s: r for s, (_, r) in zip(self.calls, results, strict=True)}}
        failed = [s for s, (ok, _) in zip(self.calls, results, strict=True) if not ok]
        if failed:
            doc["failed"] = failed
            return _json(502, doc)
        return _json(200, doc)


def _origin_path(target: str) -> str:
    """'/x' -> '/x'; 'http://b/x' (proxy form, when the app is called without a proxy) -> '/x'."""
    if target.startswith(("http://", "https://")):
        rest = target.split("://", 1)[1]
        return "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    return target


def _ms(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 3)


async def run(args: argparse.Namespace) -> None:
    if args.role == "a" or args.call:
        app: Backend | Frontend = Frontend(args.name, args.proxy, args.call or ["b", "c"], args.path, args.timeout)
    else:
        app = Backend(args.role, args.name, args.work_ms)
    host, port = split_hostport(args.listen)
    drain = Drain()
    server = await asyncio.start_server(
        lambda r, w: serve_connection(r, w, app.handle, drain), host, port, reuse_address=True, backlog=1024
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"{args.role} {args.name} listening on {args.listen} (pid {os.getpid()})", flush=True)
    await stop.wait()
    # A graceful stop: no new connections, requests in progress answered, idle keep-alive
    # connections closed. The proxy in front then retries what never reached us elsewhere.
    server.close()
    open_conns = len(drain.tasks)
    drain.start()
    left = await drain.wait(args.drain_s)
    print(f"{args.name}: stopping ({open_conns} connections drained"
          + (f", {left} cut after {args.drain_s:g} s" if left else "") + ")", flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m glassmesh.demo.apps", description=__doc__.split("\n")[0])
    p.add_argument("role", help="a (frontend) or any other service name (backend), e.g. b, c")
    p.add_argument("--listen", required=True, help="ip:port")
    p.add_argument("--name", help="instance name, shown in responses (default: ROLE-PORT)")
    p.add_argument("--work-ms", type=float, default=3.0, help="backend: simulated work per request")
    p.add_argument("--proxy", default="127.0.0.1:4140", help="frontend: its outbound proxy ip:port")
    p.add_argument("--call", action="append", help="frontend: a service to call (repeatable; default b, c)")
    p.add_argument("--path", default="/work", help="frontend: path requested from each called service")
    p.add_argument("--timeout", type=float, default=5.0, help="frontend: seconds per call")
    p.add_argument("--drain-s", type=float, default=5.0,
                   help="on SIGTERM: seconds to let requests in progress finish before exiting")
    args = p.parse_args(argv)
    if not args.name:
        args.name = f"{args.role}-{split_hostport(args.listen)[1]}"
    return args


def main(argv: list[str] | None = None) -> None:
    uvloop.run(run(parse_args(argv)))


if __name__ == "__main__":
    main()
