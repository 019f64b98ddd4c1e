#!/usr/bin/env python3
# Copied unchanged (apart from this note) from shared/peer-bench/probe.py, the project's throwaway
# reference proxy, so that `make bench` works on a clone without ../shared. Not glassmesh code.
"""Throwaway probe: minimal HTTP/1.1 + L4 forwarding proxy (uvloop + httptools), mTLS-capable.

One process per role (outbound / inbound). HTTP mode parses request AND response with
httptools, drops hop-by-hop headers, re-serialises the head, streams the body, and keeps a
keep-alive pool of upstream connections (one in-flight request per upstream connection).
TCP mode is a byte pipe with back-pressure. Not production code: no timeouts, no
pipelining beyond an in-order queue, no 100-continue, no trailers, minimal error paths.
"""
import argparse
import asyncio
import collections
import os
import ssl
import sys

import httptools
import uvloop

HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                 b"te", b"trailer", b"upgrade", b"content-length"))
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def server_ctx(cert, key, ca):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    c.minimum_version = ssl.TLSVersion.TLSv1_3
    c.load_cert_chain(cert, key)
    c.load_verify_locations(ca)
    c.verify_mode = ssl.CERT_REQUIRED          # mutual TLS: client cert must chain to CA
    return c


def client_ctx(cert, key, ca):
    c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname + CERT_REQUIRED by default
    c.minimum_version = ssl.TLSVersion.TLSv1_3
    c.load_cert_chain(cert, key)
    c.load_verify_locations(ca)
    return c


class Pool:
    def __init__(self, host, port, ctx, sni):
        self.host, self.port, self.ctx, self.sni = host, port, ctx, sni
        self.idle = []

    def acquire(self, ds):
        idle = self.idle
        while idle:
            up = idle.pop()
            if not up.closed:
                up.start(ds)
                return
        asyncio.get_event_loop().create_task(self._connect(ds))

    async def _connect(self, ds):
        loop = asyncio.get_running_loop()
        try:
            _, up = await loop.create_connection(
                lambda: Upstream(self), self.host, self.port, ssl=self.ctx,
                server_hostname=self.sni if self.ctx else None)
        except Exception as e:  # noqa
            print("upstream connect failed:", e, file=sys.stderr)
            ds.fail()
            return
        up.start(ds)


class Upstream(asyncio.Protocol):
    __slots__ = ("pool", "t", "closed", "ds", "p", "hdrs", "chunked", "out", "outlen")

    def __init__(self, pool):
        self.pool = pool
        self.t = None
        self.closed = False
        self.ds = None
        self.p = httptools.HttpResponseParser(self)
        self.hdrs = []
        self.chunked = False
        self.out = []
        self.outlen = 0

    def connection_made(self, t):
        self.t = t

    def _emit(self, b):
        # Coalesce head + small body into one transport.write (one syscall / one TLS record).
        self.out.append(b)
        self.outlen += len(b)
        if self.outlen >= 65536:
            self._flush()

    def _flush(self):
        if self.out:
            self.ds.t.write(b"".join(self.out) if len(self.out) > 1 else self.out[0])
            self.out = []
            self.outlen = 0

    def start(self, ds):
        self.ds = ds
        self.t.write(ds.cur)

    def data_received(self, data):
        try:
            self.p.feed_data(data)
        except httptools.HttpParserError:
            self.t.close()

    # httptools callbacks
    def on_message_begin(self):
        self.hdrs = []

    def on_header(self, n, v):
        self.hdrs.append((n, v))

    def on_headers_complete(self):
        p = self.p
        out = [b"HTTP/1.1 %d OK\r\n" % p.get_status_code()]  # reason phrase not preserved
        cl = False
        for n, v in self.hdrs:
            ln = n.lower()
            if ln == b"content-length":
                cl = True
                out.append(b"content-length: " + v + b"\r\n")
            elif ln not in HOP:
                out.append(n + b": " + v + b"\r\n")
        self.chunked = not cl
        if self.chunked:
            out.append(b"transfer-encoding: chunked\r\n")
        out.append(b"\r\n")
        self._emit(b"".join(out))

    def on_body(self, b):
        if self.chunked:
            self._emit(b"%x\r\n%s\r\n" % (len(b), b))
        else:
            self._emit(b)

    def on_message_complete(self):
        if self.chunked:
            self._emit(b"0\r\n\r\n")
        self._flush()
        ds, self.ds = self.ds, None
        if self.p.should_keep_alive():
            self.pool.idle.append(self)
        else:
            self.closed = True
            self.t.close()
        ds.response_done()

    def connection_lost(self, exc):
        self.closed = True
        if self.ds is not None:
            ds, self.ds = self.ds, None
            ds.fail()


class Downstream(asyncio.Protocol):
    __slots__ = ("pool", "t", "p", "url", "hdrs", "body", "q", "busy", "cur")

    def __init__(self, pool):
        self.pool = pool
        self.t = None
        self.p = httptools.HttpRequestParser(self)
        self.q = collections.deque()
        self.busy = False
        self.cur = None

    def connection_made(self, t):
        self.t = t

    def data_received(self, data):
        try:
            self.p.feed_data(data)
        except httptools.HttpParserError:
            self.t.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            self.t.close()

    def on_message_begin(self):
        self.url = b""
        self.hdrs = []
        self.body = []

    def on_url(self, u):
        self.url += u

    def on_header(self, n, v):
        self.hdrs.append((n, v))

    def on_body(self, b):
        self.body.append(b)

    def on_message_complete(self):
        method = self.p.get_method()
        out = [method, b" ", self.url, b" HTTP/1.1\r\n"]
        for n, v in self.hdrs:
            if n.lower() not in HOP:
                out.append(n + b": " + v + b"\r\n")
        body = b"".join(self.body)
        if body or method in (b"POST", b"PUT", b"PATCH"):
            out.append(b"content-length: %d\r\n" % len(body))
        out.append(b"\r\n")
        out.append(body)
        self.q.append(b"".join(out))
        if not self.busy:
            self._next()

    def _next(self):
        if self.q:
            self.busy = True
            self.cur = self.q.popleft()
            self.pool.acquire(self)

    def response_done(self):
        self.busy = False
        if not self.p.should_keep_alive() and not self.q:
            self.t.close()
            return
        self._next()

    def fail(self):
        self.busy = False
        self.q.clear()
        if not self.t.is_closing():
            self.t.write(BAD_GATEWAY)
            self.t.close()


# ---------------- L4 mode ----------------
class Pipe(asyncio.Protocol):
    """One side of a TCP relay; `peer` is the other Pipe."""

    def __init__(self, peer=None):
        self.peer = peer
        self.t = None
        self.pending = []

    def connection_made(self, t):
        self.t = t
        t.set_write_buffer_limits(high=1 << 20)

    def data_received(self, d):
        pt = self.peer.t if self.peer else None
        if pt is None:
            self.pending.append(d)
        else:
            pt.write(d)

    def eof_received(self):
        if self.peer and self.peer.t:
            self.peer.t.close()  # close() flushes buffered data first (TLS can't half-close)
        return False

    def connection_lost(self, exc):
        if self.peer and self.peer.t and not self.peer.t.is_closing():
            self.peer.t.close()

    def pause_writing(self):
        if self.peer and self.peer.t:
            self.peer.t.pause_reading()

    def resume_writing(self):
        if self.peer and self.peer.t:
            self.peer.t.resume_reading()


class TcpFront(Pipe):
    def __init__(self, target):
        super().__init__()
        self.target = target

    def connection_made(self, t):
        super().connection_made(t)
        t.pause_reading()
        asyncio.get_event_loop().create_task(self._connect())

    async def _connect(self):
        host, port, ctx, sni = self.target
        loop = asyncio.get_running_loop()
        try:
            _, back = await loop.create_connection(lambda: Pipe(self), host, port, ssl=ctx,
                                                   server_hostname=sni if ctx else None)
        except Exception as e:  # noqa
            print("tcp upstream connect failed:", e, file=sys.stderr)
            self.t.close()
            return
        self.peer = back
        for d in self.pending:
            back.t.write(d)
        self.pending = []
        if self.t.is_closing():
            back.t.close()
        else:
            self.t.resume_reading()


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


async def amain(a):
    lctx = server_ctx(a.cert, a.key, a.ca) if a.listen_tls else None
    uctx = client_ctx(a.cert, a.key, a.ca) if a.upstream_tls else None
    lh, lp = hostport(a.listen)
    uh, up = hostport(a.upstream)
    loop = asyncio.get_running_loop()
    if a.mode == "http":
        pool = Pool(uh, up, uctx, a.sni)
        factory = lambda: Downstream(pool)  # noqa: E731
    else:
        target = (uh, up, uctx, a.sni)
        factory = lambda: TcpFront(target)  # noqa: E731
    srv = await loop.create_server(factory, lh, lp, ssl=lctx, backlog=4096,
                                   reuse_port=a.workers > 1)
    await srv.serve_forever()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["http", "tcp"])
    ap.add_argument("--listen", required=True)
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--listen-tls", action="store_true")
    ap.add_argument("--upstream-tls", action="store_true")
    ap.add_argument("--cert"), ap.add_argument("--key"), ap.add_argument("--ca")
    ap.add_argument("--sni", default="inbound.mesh.local")
    ap.add_argument("--workers", type=int, default=1, help=">1: fork N processes with SO_REUSEPORT")
    a = ap.parse_args()
    for _ in range(a.workers - 1):
        if os.fork() == 0:
            break
    uvloop.install()
    asyncio.run(amain(a))


if __name__ == "__main__":
    main()
