"""Benchmark: push a one-endpoint change from a real `glassmesh control` to 200 watching proxies.

    .venv/bin/python bench/control_push.py                 # both shapes (about 1.5 min)
    .venv/bin/python bench/control_push.py --reps 3 --shapes all --change report --no-ack
    .venv/bin/python bench/control_push.py --shapes all --full   # watchers never ask for deltas

(No make target: run it by hand from the repository root; docs/bench.md describes it.)

For each shape (every service may call every service; each service calls 5 others with
`calls:`), it starts a real `glassmesh control --data TMP --listen 127.0.0.1:PORT` (in its own
session, stopped by its PID's process group at the end, also on an error or Ctrl-C), applies the
1,000 services x 10 instances over 200 hosts config of bench/control_compile.py, has every host
report its instances (as a proxy does, `POST /v1/hosts/{host}/instances`), waits for the compile
loop to settle, and then starts 200 simulated watchers in this process (asyncio + aiohttp, one
long-poll loop per host, `GET /v1/hosts/{host}/snapshot?after=V&wait=30&base=V&hash=H`, each
keeping what it got as the real proxy does: a full snapshot decoded and checked, a delta applied to
the snapshot it holds and its digest checked, falling back to a full snapshot on a mismatch; then
acking it). `--full` leaves out `base` and `hash`, so every push is a full snapshot (the protocol
before deltas). It reports how long until all 200 have their first snapshot and how many
bytes that was, then makes one-endpoint changes, each timed from just before the request that
makes it to each watcher's receipt of the new version (body read):

  report  one host reports one of its instances unhealthy, then healthy again ("report down/up"),
          for --reps services (default 5)
  apply   a config without one host's instance of a service (the service dropped from that host's
          `services:`), then the original config again ("apply down/up"), for --apply-reps
          services (default 1: an apply of this mesh takes seconds)

The hosts that should get a new version are computed from the config (hosts whose local services
may call the changed service, plus, for an apply, the instance's own host); the table shows how many got
it (p50/max over every such host in every repetition), how many other hosts got one anyway, and the
push count (more pushes than hosts = a host got more than one version for one change). `cp cpu` is
the control-plane process's CPU seconds per change (from /proc). Loopback only; bounded in time
(`--budget`, default 170 s): what is not done by then is reported as timed out.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from control_compile import build  # noqa: E402

from glassmesh.api.wire import (  # noqa: E402
    HASH_HEADER,
    KIND_DELTA,
    KIND_HEADER,
    VERSION_HEADER,
    DeltaMismatch,
    apply_delta,
    decode_delta,
)
from glassmesh.model.snapshot import DigestCache, Snapshot, decode_snapshot, snapshot_digest  # noqa: E402

WAIT_S = 30
TTL_S = 3600.0  # reported instances must not expire during the run
STOP_S = 3.0  # SIGTERM, then SIGKILL this much later
PING_S = 0.02  # how often the stall probe asks the control plane for a cheap 404
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Timeout(Exception):
    """A bounded wait ran out."""


# --- the control-plane process ----------------------------------------------------------------------
def glassmesh_cmd() -> list[str]:
    env = os.environ.get("GLASSMESH")
    if env:
        return env.split()
    venv = HERE.parent / ".venv" / "bin" / "glassmesh"
    if venv.exists():
        return [str(venv)]
    found = shutil.which("glassmesh")
    if found:
        return [found]
    return [sys.executable, "-m", "glassmesh.cli.main"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


STARTED: list[Control] = []  # stopped again in main's finally, whatever happened


class Control:
    """One `glassmesh control` process, started in its own session and stopped by its process group."""

    def __init__(self, data: str, port: int) -> None:
        self.data, self.port = data, port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(data, "control.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = ""

    def start(self) -> None:
        cmd = [*glassmesh_cmd(), "control", "--data", self.data, "--listen", f"127.0.0.1:{self.port}"]
        with open(self.log_path, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        STARTED.append(self)
        log(f"control plane: pid {self.proc.pid}, {self.url}, data {self.data}")

    def stop(self) -> None:
        p = self.proc
        if p is None or p.poll() is not None:
            return
        t = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(STOP_S)
            self.stopped = f"exited {p.returncode} {time.monotonic() - t:.1f} s after SIGTERM"
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)
            self.stopped = f"still running {STOP_S:.0f} s after SIGTERM: killed (SIGKILL)"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 15) -> str:
        with contextlib.suppress(OSError), open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
        return ""

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far."""
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0


# --- the watchers ---------------------------------------------------------------------------------------
@dataclass
class Watcher:
    host: str
    version: int = 0
    got: list[tuple[float, int, int, bool]] = field(default_factory=list)  # (perf_counter, version, bytes, delta)
    errors: list[str] = field(default_factory=list)
    backwards: int = 0  # a 200 whose version was not above the one asked after
    fallbacks: int = 0  # deltas that did not fit: asked again for the full snapshot
    base: Snapshot | None = None  # what it holds, as the proxy keeps it: deltas apply to this
    digest: str = ""
    raw: bytes = b""  # a full snapshot not decoded yet (see take)
    digests: DigestCache = field(default_factory=DigestCache)

    def take(self, body: bytes, kind: str, digest: str) -> None:
        """Keep a full snapshot or apply a delta, as glassmesh.proxy.watch does (DeltaMismatch: full next).

        A full snapshot is decoded only when a delta needs it (or by materialize()): 200 watchers share
        this process, and decoding 200 x 475 KiB as they arrive would delay the reads of the others
        (the first-snapshot times), which in a real mesh happen in 200 processes.
        """
        if kind == KIND_DELTA:
            self.materialize()
            if self.base is None:
                raise DeltaMismatch("a delta with no base")
            delta = decode_delta(body)
            self.base = apply_delta(self.base, self.digest, delta, self.digests)
            self.digest = delta.hash
        else:
            self.base, self.raw, self.digest = None, body, digest

    def materialize(self) -> None:
        """Decode a full snapshot kept raw, and check the control plane's digest of it."""
        if not self.raw:
            return
        raw, self.raw = self.raw, b""
        self.base = decode_snapshot(raw)
        own = snapshot_digest(self.base, self.digests)
        if self.digest and own != self.digest:
            raise DeltaMismatch(f"full snapshot digest {own[:12]} is not the control plane's {self.digest[:12]}")
        self.digest = own


class Fleet:
    """200 long-poll loops in this process; wakes whoever waits for a set of hosts to move."""

    def __init__(self, url: str, hosts: list[str], session: aiohttp.ClientSession, ack: bool,
                 deltas: bool = True) -> None:
        self.url, self.session, self.ack, self.deltas = url, session, ack, deltas
        self.w = {h: Watcher(h) for h in hosts}
        self.waiting: set[str] = set()
        self.done = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._loop(w)) for w in self.w.values()]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def expect(self, hosts: set[str]) -> None:
        self.waiting = {h for h in hosts}
        self.done.clear()
        if not self.waiting:
            self.done.set()

    async def _loop(self, w: Watcher) -> None:
        url = f"{self.url}/v1/hosts/{w.host}/snapshot"
        ack_url = f"{self.url}/v1/hosts/{w.host}/ack"
        timeout = aiohttp.ClientTimeout(total=WAIT_S + 15)
        while True:
            try:
                params = {"after": str(w.version), "wait": str(WAIT_S)}
                if self.deltas and (w.base is not None or w.raw) and w.digest:
                    params.update(base=str(w.base.version if w.base is not None else w.version), hash=w.digest)
                async with self.session.get(url, params=params, timeout=timeout) as r:
                    if r.status == 204:
                        continue
                    body = await r.read()
                    now = time.perf_counter()
                    if r.status != 200:
                        w.errors.append(f"{r.status} {body[:200]!r}")
                        await asyncio.sleep(0.5)
                        continue
                    ver = int(r.headers[VERSION_HEADER])
                    kind, digest = r.headers.get(KIND_HEADER, ""), r.headers.get(HASH_HEADER, "")
                try:
                    w.take(body, kind, digest)
                except DeltaMismatch as e:
                    w.fallbacks += 1
                    w.errors.append(f"delta fallback at version {ver}: {e}")
                    w.base, w.digest, w.raw = None, "", b""
                    continue  # as the proxy: ask again at once, without a base
                if ver <= w.version:
                    w.backwards += 1
                w.version = ver
                w.got.append((now, ver, len(body), kind == KIND_DELTA))
                if w.host in self.waiting:
                    self.waiting.discard(w.host)
                    if not self.waiting:
                        self.done.set()
                if self.ack:  # as the proxy does: ack, then poll again
                    async with self.session.post(ack_url, json={"version": ver, "accepted": True},
                                                 timeout=aiohttp.ClientTimeout(total=10)) as a:
                        await a.read()
                        if a.status != 200:
                            w.errors.append(f"ack {a.status}")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - counted and shown, never fatal
                w.errors.append(f"{type(e).__name__}: {e}")
                await asyncio.sleep(0.5)

    async def wait(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.done.wait(), timeout)
        except TimeoutError:
            raise Timeout(f"{len(self.waiting)} hosts still waiting after {timeout:.0f} s "
                          f"(e.g. {sorted(self.waiting)[:5]})") from None


class Pinger:
    """Asks the control plane for a cheap 404 every PING_S: how long its event loop is busy elsewhere."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url, self.session = f"{url}/v1/bench-ping", session
        self.samples: list[tuple[float, float]] = []  # (sent, seconds to answer)
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            t = time.perf_counter()
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.session.get(self.url, timeout=aiohttp.ClientTimeout(total=30)) as r:
                    await r.read()
            self.samples.append((t, time.perf_counter() - t))
            await asyncio.sleep(PING_S)

    def worst_ms(self, t0: float, t1: float) -> float:
        """The slowest answer to a ping that was in flight at some point in [t0, t1]."""
        hits = [d for t, d in self.samples if t <= t1 and t + d >= t0]
        return max(hits, default=0.0) * 1000


# --- the mesh ------------------------------------------------------------------------------------------
@dataclass
class Mesh:
    text: str
    doc: dict[str, Any]
    by_host: dict[str, list[tuple[str, str]]]  # host -> [(service, address)]
    wants: dict[str, set[str]]  # host -> services its snapshot lists (what its local services may call)

    @classmethod
    def make(cls, n_services: int, n_inst: int, n_hosts: int, calls: int | None) -> Mesh:
        text, instances = build(n_services, n_inst, n_hosts, calls)
        doc = yaml.load(text, Loader=Loader)
        by_host: dict[str, list[tuple[str, str]]] = {h["name"]: [] for h in doc["hosts"]}
        for i in instances:
            by_host[i.host].append((i.service, i.address))
        every = {s["name"] for s in doc["services"]}
        calls_of = {s["name"]: s.get("calls") for s in doc["services"]}
        wants: dict[str, set[str]] = {}
        for h in doc["hosts"]:
            want: set[str] = set()
            for name in h["services"]:
                c = calls_of[name]
                want.update(every if c is None else c)
            wants[h["name"]] = want
        return cls(text, doc, by_host, wants)

    def affected(self, service: str, host: str, own: bool) -> set[str]:
        """Hosts whose snapshot lists the service; plus its host when that host's own part changes.

        A health report does not change its own host's snapshot when the instance is the host's only
        one of that service: a local service with no healthy instance keeps delivering to every known
        one (compile's `_local_instances`). Dropping the service from the host's `services:` does.
        """
        return {h for h, want in self.wants.items() if service in want} | ({host} if own else set())

    def report(self, host: str, sick: tuple[str, str] | None = None) -> dict[str, Any]:
        return {"ttl_s": TTL_S, "instances": [
            {"service": s, "address": a, "healthy": (s, a) != sick} for s, a in self.by_host[host]]}

    def without(self, service: str, host: str) -> str:
        doc = {**self.doc, "hosts": [dict(h, services=[s for s in h["services"] if s != service])
                                     if h["name"] == host else h for h in self.doc["hosts"]]}
        return yaml.dump(doc, Dumper=Dumper)


# --- one shape -------------------------------------------------------------------------------------------
@dataclass
class Change:
    kind: str  # "report down", "report up", "apply down", "apply up"
    service: str
    host: str
    expected: int
    request_ms: float
    lat_ms: list[float]  # per expected host that got it
    missing: int
    extra: int
    pushes: int
    bytes: int
    deltas: int
    cpu_s: float
    stall_ms: float
    own_cpu_s: float
    timed_out: str = ""


@dataclass
class ShapeResult:
    shape: str
    apply_ms: float = 0.0
    register_ms: float = 0.0
    settle_ms: float = 0.0
    first_ms: list[float] = field(default_factory=list)
    first_bytes: list[int] = field(default_factory=list)
    first_stall_ms: float = 0.0
    changes: list[Change] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rss_mb: float = 0.0
    ok: bool = False


async def post(session: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, data=msgspec.json.encode(payload), headers={"content-type": "application/json"},
                            timeout=aiohttp.ClientTimeout(total=60)) as r:
        body = await r.read()
        if r.status != 200:
            raise RuntimeError(f"POST {url}: {r.status} {body[:300]!r}")
        return msgspec.json.decode(body)  # type: ignore[no-any-return]


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any] | None]:
    async with session.get(url, timeout=aiohttp.ClientTimeout(total=30)) as r:
        body = await r.read()
        return r.status, (msgspec.json.decode(body) if r.status == 200 and body else None)


async def wait_up(cp: Control, session: aiohttp.ClientSession, deadline: float) -> None:
    while time.monotonic() < deadline:
        if not cp.alive():
            raise RuntimeError(f"glassmesh control exited ({cp.proc.returncode if cp.proc else '?'}):\n{cp.tail()}")
        with contextlib.suppress(aiohttp.ClientError, OSError):
            status, _ = await get_json(session, f"{cp.url}/v1/status")
            if status == 200:
                return
        await asyncio.sleep(0.1)
    raise Timeout(f"glassmesh control did not answer within the budget:\n{cp.tail()}")


async def settle(cp: Control, session: aiohttp.ClientSession, mesh: Mesh, deadline: float) -> None:
    """Until every reported instance is in the snapshots and the store revision stopped moving for 1 s."""
    probe = next(iter(mesh.by_host))
    want_eps = sum(1 for svcs in mesh.by_host.values() for s, _ in svcs if s in mesh.wants[probe])
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        _, st = await get_json(session, f"{cp.url}/v1/status")
        rev = st["revision"] if st else -1
        status, snap = await get_json(session, f"{cp.url}/v1/hosts/{probe}/snapshot?after=0&wait=0")
        eps = sum(len(s.get("endpoints", [])) for s in snap["services"]) if snap else -1
        if rev != last or eps != want_eps:
            last, since = rev, time.monotonic()
        elif time.monotonic() - since >= 1.0:
            return
        await asyncio.sleep(0.2)
    raise Timeout(f"the compile loop did not settle (probe host {probe}: want {want_eps} endpoints)")


async def one_change(cp: Control, session: aiohttp.ClientSession, fleet: Fleet, pinger: Pinger, mesh: Mesh,
                     kind: str, service: str, host: str, address: str, settle_s: float, deadline: float) -> Change:
    expected = mesh.affected(service, host, own=kind.startswith("apply"))
    fleet.expect(expected)
    marks = {h: len(w.got) for h, w in fleet.w.items()}
    cpu0, own0 = cp.cpu_s(), time.process_time()
    t0 = time.perf_counter()
    if kind == "report down":
        await post(session, f"{cp.url}/v1/hosts/{host}/instances", mesh.report(host, (service, address)))
    elif kind == "report up":
        await post(session, f"{cp.url}/v1/hosts/{host}/instances", mesh.report(host))
    elif kind == "apply down":
        await post(session, f"{cp.url}/v1/apply", {"yaml": mesh.without(service, host), "author": "bench"})
    else:
        await post(session, f"{cp.url}/v1/apply", {"yaml": mesh.text, "author": "bench"})
    req_ms = (time.perf_counter() - t0) * 1000
    timed_out = ""
    try:
        await fleet.wait(max(1.0, min(20.0, deadline - time.monotonic())))
    except Timeout as e:
        timed_out = str(e)
    t_all = time.perf_counter()
    await asyncio.sleep(max(0.0, min(settle_s, deadline - time.monotonic())))  # late or extra pushes
    cpu, own = cp.cpu_s() - cpu0, time.process_time() - own0
    lat, missing, extra, pushes, nbytes, deltas = [], 0, 0, 0, 0, 0
    for h, w in fleet.w.items():
        new = w.got[marks[h]:]
        pushes += len(new)
        nbytes += sum(g[2] for g in new)
        deltas += sum(1 for g in new if g[3])
        if h in expected:
            if new:
                lat.append((new[0][0] - t0) * 1000)
            else:
                missing += 1
        elif new:
            extra += 1
    return Change(kind, service, host, len(expected), req_ms, lat, missing, extra, pushes, nbytes, deltas, cpu,
                  pinger.worst_ms(t0, t_all), own, timed_out)


async def run_shape(shape: str, calls: int | None, a: argparse.Namespace, deadline: float) -> ShapeResult:
    res = ShapeResult(shape)
    t = time.perf_counter()
    mesh = Mesh.make(a.services, a.instances, a.hosts, calls)
    log(f"{shape}: config built in {time.perf_counter() - t:.1f} s ({len(mesh.text) / 1e6:.2f} MB of YAML)")
    data = tempfile.mkdtemp(prefix="glassmesh-bench-control-")
    cp = Control(data, a.port or free_port())
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    session = aiohttp.ClientSession(connector=connector)
    fleet: Fleet | None = None
    pinger = Pinger(cp.url, session)
    try:
        cp.start()
        await wait_up(cp, session, deadline)
        pinger.start()
        t = time.perf_counter()
        await post(session, f"{cp.url}/v1/apply", {"yaml": mesh.text, "author": "bench"})
        res.apply_ms = (time.perf_counter() - t) * 1000
        log(f"{shape}: applied in {res.apply_ms:.0f} ms; {len(mesh.by_host)} hosts report their instances")
        t = time.perf_counter()
        await asyncio.gather(*(post(session, f"{cp.url}/v1/hosts/{h}/instances", mesh.report(h))
                               for h in mesh.by_host))
        res.register_ms = (time.perf_counter() - t) * 1000
        t = time.perf_counter()
        await settle(cp, session, mesh, deadline)
        res.settle_ms = (time.perf_counter() - t) * 1000  # includes the 1 s of quiet it waits for
        log(f"{shape}: registered in {res.register_ms:.0f} ms, compile loop settled {res.settle_ms:.0f} ms later")

        fleet = Fleet(cp.url, list(mesh.by_host), session, a.ack, a.deltas)
        fleet.expect(set(mesh.by_host))
        t0 = time.perf_counter()
        fleet.start()
        await fleet.wait(max(1.0, min(60.0, deadline - time.monotonic())))
        res.first_ms = sorted((w.got[0][0] - t0) * 1000 for w in fleet.w.values())
        res.first_bytes = [w.got[0][2] for w in fleet.w.values()]
        res.first_stall_ms = pinger.worst_ms(t0, t0 + res.first_ms[-1] / 1000)
        log(f"{shape}: all {len(fleet.w)} watchers have a first snapshot after {res.first_ms[-1]:.0f} ms")
        if a.deltas:  # decode what the watchers hold now, outside the timed changes (see Watcher.take)
            for w in fleet.w.values():
                try:
                    w.materialize()
                except DeltaMismatch as e:
                    res.errors.append(f"{w.host}: {e}")
        await asyncio.sleep(min(a.settle, max(0.0, deadline - time.monotonic())))  # acks and their recompiles
        if any(len(w.got) > 1 for w in fleet.w.values()):
            n = sum(1 for w in fleet.w.values() if len(w.got) > 1)
            res.notes.append(f"{n} hosts got a second version right after their first, with no change made")

        rnd = random.Random(7)
        picks = rnd.sample(sorted({s["name"] for s in mesh.doc["services"]}), max(a.reps, a.apply_reps))
        for rep, service in enumerate(picks):
            host, address = next((h, ad) for h, svcs in mesh.by_host.items() for s, ad in svcs if s == service)
            kinds = [k for k, n in (("report", a.reps), ("apply", a.apply_reps))
                     if a.change in (k, "both") and rep < n]
            for kind in kinds:
                for step in ("down", "up"):
                    if time.monotonic() >= deadline:
                        raise Timeout("budget spent")
                    c = await one_change(cp, session, fleet, pinger, mesh, f"{kind} {step}", service, host,
                                         address, a.settle, deadline)
                    res.changes.append(c)
                    log(f"{shape}: rep {rep + 1} {c.kind:11} {service}@{host}: "
                        f"{len(c.lat_ms)}/{c.expected} hosts, p50 {_p(c.lat_ms, 50):.0f} ms, "
                        f"max {max(c.lat_ms, default=0):.0f} ms, extra {c.extra}, pushes {c.pushes} "
                        f"({c.deltas} deltas, {c.bytes / 1024:.0f} KiB), "
                        f"request {c.request_ms:.0f} ms, ping max {c.stall_ms:.0f} ms, cp cpu {c.cpu_s:.2f} s"
                        + (f"; TIMED OUT: {c.timed_out}" if c.timed_out else ""))
        res.ok = True
    except (Timeout, RuntimeError, aiohttp.ClientError, OSError) as e:
        res.errors.append(f"{type(e).__name__}: {e}")
        log(f"{shape}: FAILED: {e}")
        if cp.proc is not None and not cp.alive():
            res.errors.append(f"control plane exited {cp.proc.returncode}:\n{cp.tail()}")
    finally:
        await pinger.stop()
        if fleet is not None:
            await fleet.stop()
            falls = sum(w.fallbacks for w in fleet.w.values())
            if falls:
                res.errors.append(f"{falls} deltas did not fit and were followed by a full snapshot")
            errs = [e for w in fleet.w.values() for e in w.errors]
            if errs:
                res.errors.append(f"watcher errors: {len(errs)} (e.g. {errs[:3]})")
            back = sum(w.backwards for w in fleet.w.values())
            if back:
                res.errors.append(f"{back} snapshots answered with a version not above the one asked after")
        if cp.alive():
            with contextlib.suppress(OSError):
                res.rss_mb = cp.rss_mb()
        await session.close()
        cp.stop()
        log(f"{shape}: control plane stopped: {cp.stopped}")
        if a.keep:
            log(f"{shape}: kept {data}")
        else:
            shutil.rmtree(data, ignore_errors=True)
    return res


# --- the table ------------------------------------------------------------------------------------------
def _p(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * len(xs) + 0.5) - 1))]


def table(results: list[ShapeResult], a: argparse.Namespace) -> str:
    out = [f"{a.services} services x {a.instances} instances over {a.hosts} hosts; {a.hosts} watchers in one process, "
           f"{'acking' if a.ack else 'not acking'}, {'asking for deltas' if a.deltas else 'full snapshots only'}; "
           f"{os.cpu_count()} CPUs shared by the control plane and the watchers.",
           "Times are from sending the request that makes the change to each watcher having read the new version.",
           "n = changes; want/got = hosts that should get a new version / that got it (median per change; ! = some "
           "missing); extra = other hosts that got one (sum); pushes = snapshots sent per change (mean); request = "
           "the POST's own latency (median); first = fastest host (median); p50/max over every host of every "
           "change; MiB pushed per change; delta = share of pushes that were deltas; cp cpu = control-plane CPU s per change (mean); ping max = slowest answer "
           "to a cheap request sent every 20 ms during the changes (the control plane's event loop busy); bench cpu = "
           "this process's CPU s per change (the 200 watchers reading what was pushed)",
           ""]
    for r in results:
        out.append(f"{r.shape}: apply {r.apply_ms:.0f} ms, {a.hosts} instance reports {r.register_ms:.0f} ms, "
                   f"control-plane RSS {r.rss_mb:.0f} MB")
        if r.first_ms:
            kib = [b / 1024 for b in r.first_bytes]
            out.append(f"  first snapshot to all {len(r.first_ms)} watchers: p50 {_p(r.first_ms, 50):.0f} ms, "
                       f"all by {r.first_ms[-1]:.0f} ms; {statistics.mean(kib):.1f} KiB mean, {max(kib):.1f} KiB max, "
                       f"{sum(r.first_bytes) / 2**20:.1f} MiB in all; ping max {r.first_stall_ms:.0f} ms")
        if r.changes:
            out.append("  change        n  hosts want/got  extra  pushes  request ms  first ms  p50 ms  max ms"
                       "    MiB  delta  cp cpu s  ping max ms  bench cpu s")
            for kind in dict.fromkeys(c.kind for c in r.changes):
                cs = [c for c in r.changes if c.kind == kind]
                lat = [x for c in cs for x in c.lat_ms]
                firsts = [min(c.lat_ms) for c in cs if c.lat_ms]
                want = statistics.median(c.expected for c in cs)
                got = statistics.median(len(c.lat_ms) for c in cs)
                missing = sum(c.missing for c in cs)
                out.append(
                    f"  {kind:12} {len(cs):2d} {want:6.0f} /{got:4.0f}{'!' if missing else ' '}  {sum(c.extra for c in cs):5d}"
                    f"  {statistics.mean(c.pushes for c in cs):6.0f}  {statistics.median(c.request_ms for c in cs):10.0f}"
                    f"  {statistics.median(firsts) if firsts else float('nan'):8.0f}  {_p(lat, 50):6.0f}"
                    f"  {max(lat, default=float('nan')):6.0f}  {statistics.mean(c.bytes for c in cs) / 2**20:6.2f}"
                    f"  {sum(c.deltas for c in cs) / max(1, sum(c.pushes for c in cs)):5.0%}"
                    f"  {statistics.mean(c.cpu_s for c in cs):8.2f}  {max(c.stall_ms for c in cs):11.0f}"
                    f"  {statistics.mean(c.own_cpu_s for c in cs):11.2f}")
        for n in r.notes:
            out.append(f"  note: {n}")
        for c in r.changes:
            if c.timed_out or c.missing:
                out.append(f"  {c.kind} {c.service}@{c.host}: {c.missing} hosts missing. {c.timed_out}")
        for e in r.errors:
            out.append(f"  ERROR: {e}")
        out.append("")
    return "\n".join(out)


async def amain(a: argparse.Namespace) -> list[ShapeResult]:
    start = time.monotonic()
    shapes = [s for s in ("all", "calls") if s in a.shapes.split(",")]
    results = []
    for i, s in enumerate(shapes):
        # Split what is left of the budget among the shapes still to run.
        deadline = start + a.budget * (i + 1) / len(shapes)
        name = "all-to-all" if s == "all" else f"calls {a.calls} each"
        results.append(await run_shape(name, None if s == "all" else a.calls, a, deadline))
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--instances", type=int, default=10)
    ap.add_argument("--hosts", type=int, default=200)
    ap.add_argument("--calls", type=int, default=5, help="services each service calls in the `calls` shape")
    ap.add_argument("--shapes", default="all,calls", help="all, calls or all,calls")
    ap.add_argument("--change", choices=["report", "apply", "both"], default="both")
    ap.add_argument("--reps", type=int, default=5, help="health-report changes per shape (each: down, then up)")
    ap.add_argument("--apply-reps", type=int, default=1, help="config-apply changes per shape (each: down, then up)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds after each change to catch late pushes")
    ap.add_argument("--no-ack", dest="ack", action="store_false", help="watchers do not ack (less control-plane load)")
    ap.add_argument("--full", dest="deltas", action="store_false",
                    help="watchers never offer a base, so every push is a full snapshot (the protocol before deltas)")
    ap.add_argument("--budget", type=float, default=170.0, help="seconds for the whole run")
    ap.add_argument("--port", type=int, default=0, help="control-plane port (default: a free one)")
    ap.add_argument("--keep", action="store_true", help="keep the control plane's data dir and log")
    a = ap.parse_args()

    def on_term(*_: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        results = asyncio.run(amain(a))
    finally:
        for cp in STARTED:
            cp.stop()
    print(table(results, a))
    sys.exit(0 if all(r.ok for r in results) else 1)


if __name__ == "__main__":
    main()
