"""DNS discovery: services whose instances are whatever a DNS name resolves to (A or SRV records).

Some services are not in the mesh at all (a managed database, a partner API,
a fleet another team runs): their instances are published in DNS and change
on DNS's schedule. A service with `dns: {name, type}` gets its instances from
that name, re-resolved when each answer's TTL runs out (clamped to
[TTL_FLOOR_S, TTL_CEILING_S]: a TTL of 0 must not turn into a query storm, and
a TTL of a day must not hide a change for a day).

A DNS outage must not empty a service: a failed lookup (timeout, SERVFAIL,
REFUSED, NXDOMAIN, an empty answer) keeps the last good answer, is logged and
counted, and is retried sooner than a TTL, with backoff. An authoritative
"no such name" is treated the same way on purpose: emptying a service is what
the blast-radius guard exists to stop, and the way to do it deliberately is to
remove `dns:` from the config or drain the service.

Answers are written to the store as instance records of the pseudo-host
EXTERNAL_HOST (source "dns"), not kept in memory, so that (1) every replica
compiles the same snapshots at the same store revision, which is what makes
snapshot versions comparable across replicas, (2) a DNS change wakes the
compile loop through the store's change feed like any other report, and
(3) a replica restarted while DNS is down still has the last good answer.
A write happens only when the answer changes (or to renew the lease), so a
1 s TTL does not mean a store write per second.

The wire work is dnspython's asyncio resolver: UDP, with a retry over TCP
when an answer comes back truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from glassmesh.control.discovery import EXTERNAL_HOST, SOURCE_DNS
from glassmesh.control.layout import join
from glassmesh.control.store import InstanceRecord, Store, StoreError
from glassmesh.stopping import cancel_and_wait

if TYPE_CHECKING:
    from glassmesh.control.config import MeshConfig

log = logging.getLogger("glassmesh.control.dns")

TTL_FLOOR_S = 1.0
TTL_CEILING_S = 300.0
RETRY_MAX_S = 30.0  # a failing lookup is retried after 1, 2, 4, ... s, at most this
LEASE_S = 900.0  # store lease of the DNS records; renewed every LEASE_S / 3 while a replica runs
QUERY_TIMEOUT_S = 1.0  # per attempt on one server
QUERY_LIFETIME_S = 3.0  # per lookup, across servers and retries


class DnsLookupError(Exception):
    """A lookup gave no usable answer (the message says which name, which type and why)."""


@dataclass(frozen=True)
class Query:
    """What one service asks DNS: the name, the record type, and (for A) the port instances listen on."""

    service: str
    name: str
    type: str  # "A" or "SRV"
    port: int | None  # the service's port; A records carry no port, SRV records do

    @property
    def detail(self) -> str:
        """Stored with each record, so a restarted replica only trusts records made by the same query."""
        return f"dns {self.type} {self.name}" + (f" port {self.port}" if self.type == "A" else "")


@dataclass(frozen=True)
class Answer:
    addresses: tuple[str, ...]  # sorted, "ip:port"
    ttl: float  # the smallest TTL among the records used, in seconds, unclamped


def clamp_ttl(ttl: float) -> float:
    """When to ask again: the answer's TTL, but never sooner than the floor or later than the ceiling."""
    return min(max(float(ttl), TTL_FLOOR_S), TTL_CEILING_S)


def retry_delay(failures: int) -> float:
    """Backoff after `failures` failed lookups in a row (1 s, 2 s, 4 s, ... up to RETRY_MAX_S)."""
    return min(TTL_FLOOR_S * 2 ** max(failures - 1, 0), RETRY_MAX_S)


def parse_server(spec: str) -> tuple[str, int]:
    """'127.0.0.1:5353' -> ('127.0.0.1', 5353); '10.0.0.2' -> ('10.0.0.2', 53); '[::1]:53' -> ('::1', 53).

    Nameservers are IP addresses: a nameserver given by name would need DNS to find DNS.
    """
    s = spec.strip()
    host, port = s, 53
    if s.startswith("["):
        host, _, rest = s[1:].partition("]")
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ValueError(f"expected ip, ip:port or [ipv6]:port, got {spec!r}")
            port = int(rest[1:])
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        if not p.isdigit():
            raise ValueError(f"expected ip, ip:port or [ipv6]:port, got {spec!r}")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"a DNS server must be an IP address (optionally :port), got {spec!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {spec!r}")
    return host, port


class Resolver:
    """A and SRV lookups against the given nameservers (default: those in /etc/resolv.conf).

    No cache: the point of re-resolving on the TTL is to see the server's current answer.
    """

    def __init__(self, servers: Sequence[str] = ()) -> None:
        if servers:
            r = dns.asyncresolver.Resolver(configure=False)
            r.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in map(parse_server, servers)]
        else:
            try:
                r = dns.asyncresolver.Resolver()
            except dns.resolver.NoResolverConfiguration:
                log.warning("no nameserver in /etc/resolv.conf; DNS discovery asks 127.0.0.1:53")
                r = dns.asyncresolver.Resolver(configure=False)
                r.nameservers = ["127.0.0.1"]
        r.timeout, r.lifetime = QUERY_TIMEOUT_S, QUERY_LIFETIME_S
        self._r = r

    @property
    def servers(self) -> list[str]:
        return [str(ns) for ns in self._r.nameservers]

    async def _ask(self, name: str, rdtype: str) -> dns.resolver.Answer:
        try:
            # search=False: a discovery name means exactly one name, whatever the search domains say.
            # tcp=False: UDP first; dnspython asks again over TCP when the answer has the TC bit.
            return await self._r.resolve(name, rdtype, search=False, tcp=False)
        except dns.resolver.NXDOMAIN:
            raise DnsLookupError(f"{name} {rdtype}: no such name (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise DnsLookupError(f"{name} {rdtype}: no {rdtype} records") from None
        except dns.resolver.NoNameservers as e:
            raise DnsLookupError(f"{name} {rdtype}: every server failed: {_short(e)}") from None
        except dns.exception.Timeout:
            raise DnsLookupError(f"{name} {rdtype}: timed out after {self._r.lifetime:g}s "
                                 f"(servers {', '.join(self.servers)})") from None
        except dns.exception.DNSException as e:
            raise DnsLookupError(f"{name} {rdtype}: {type(e).__name__}: {e}") from None
        except OSError as e:
            raise DnsLookupError(f"{name} {rdtype}: {e.strerror or e}") from None

    async def lookup(self, q: Query) -> Answer:
        """The instances `q` names right now; raises DnsLookupError when there is no usable answer."""
        if q.type == "A":
            if q.port is None:
                raise DnsLookupError(f"{q.name} A: service {q.service!r} has no port (A records carry none)")
            ans = await self._ask(q.name, "A")
            assert ans.rrset is not None
            addrs = {join(r.address, q.port) for r in ans.rrset}
            return Answer(tuple(sorted(addrs)), float(ans.rrset.ttl))
        return await self._srv(q)

    async def _srv(self, q: Query) -> Answer:
        ans = await self._ask(q.name, "SRV")
        assert ans.rrset is not None
        ttl = float(ans.rrset.ttl)
        # RFC 2782: use the lowest priority that has targets; higher ones are fallbacks. A lone "."
        # target means "decidedly not available here".
        recs = [r for r in ans.rrset if r.target.to_text() != "."]
        if not recs:
            raise DnsLookupError(f"{q.name} SRV: the service is declared unavailable (target '.')")
        best = min(r.priority for r in recs)
        recs = [r for r in recs if r.priority == best]
        # Servers usually send the targets' A records along (additional section): use them, ask for the rest.
        glue: dict[str, tuple[list[str], float]] = {}
        for rrset in ans.response.additional:
            if rrset.rdtype == dns.rdatatype.A:
                glue[rrset.name.to_text().lower()] = ([r.address for r in rrset], float(rrset.ttl))
        targets = sorted({r.target.to_text().lower() for r in recs})
        missing = [t for t in targets if t not in glue]
        results = await asyncio.gather(*(self._ask(t, "A") for t in missing), return_exceptions=True)
        errors = []
        for t, res in zip(missing, results, strict=True):
            if isinstance(res, DnsLookupError):
                errors.append(str(res))
            elif isinstance(res, BaseException):
                raise res
            elif res.rrset is not None:
                glue[t] = ([r.address for r in res.rrset], float(res.rrset.ttl))
        addrs: set[str] = set()
        for r in recs:
            ips, t_ttl = glue.get(r.target.to_text().lower(), ([], ttl))
            addrs.update(join(ip, r.port) for ip in ips)
            if ips:
                ttl = min(ttl, t_ttl)
        if not addrs:
            raise DnsLookupError(f"{q.name} SRV: no target resolved ({'; '.join(errors) or 'no A records'})")
        if errors:  # some targets resolved: use them, say which did not
            log.warning("%s SRV: some targets did not resolve: %s", q.name, "; ".join(errors))
        return Answer(tuple(sorted(addrs)), ttl)


def _short(e: Exception) -> str:
    msg = str(e)
    return msg.split(": ", 1)[1] if ": " in msg else msg


def queries(cfg: MeshConfig) -> dict[str, Query]:
    """service -> its DNS query, for every service with `dns:` in the config."""
    return {s.name: Query(s.name, s.dns.name, s.dns.type, s.port) for s in cfg.services if s.dns is not None}


@dataclass
class State:
    """One service's discovery state, for logs and status."""

    query: Query
    addresses: tuple[str, ...] | None = None  # the last good answer (None: never had one)
    ttl: float = 0.0
    resolved_at: float = 0.0  # unix time of the last good answer (0: none yet, or it came from the store)
    failures: int = 0  # failed lookups since the last good one
    error: str = ""
    next_at: float = 0.0  # unix time of the next lookup
    task: asyncio.Task[None] | None = None

    def to_json(self) -> dict[str, Any]:
        return {"service": self.query.service, "name": self.query.name, "type": self.query.type,
                "addresses": list(self.addresses or ()), "ttl": self.ttl, "resolved_at": self.resolved_at,
                "failures": self.failures, "error": self.error, "next_at": self.next_at}


class DnsDiscovery:
    """Keeps every `dns:` service's instances in the store, re-resolved on their TTL.

    configure(cfg) is called with each config the compile loop reads (cheap when
    nothing about DNS changed); start() loads what the store already holds, then
    runs one lookup loop per service and one writer; stop() ends them.
    """

    def __init__(self, store: Store, resolver: Resolver | None = None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.resolver = resolver or Resolver()
        self._clock = clock
        self._states: dict[str, State] = {}
        self._configured = False  # a config has been seen: until then, "no dns services" means "unknown"
        self._seed: dict[str, tuple[str, tuple[str, ...]]] | None = None  # service -> (detail, addresses)
        self._dirty = asyncio.Event()
        self._published: tuple[tuple[str, str], ...] | None = None  # None: unknown, write at the first chance
        self._published_at = 0.0
        self._main: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        self._main = asyncio.create_task(self._run(), name="dns-discovery")

    async def stop(self) -> None:
        tasks = [st.task for st in self._states.values() if st.task is not None]
        if self._main is not None:
            tasks.append(self._main)
        await cancel_and_wait(*tasks)  # a cancellation of the caller goes through
        for st in self._states.values():
            st.task = None
        self._main = None

    def configure(self, cfg: MeshConfig) -> None:
        """Follow the config: start lookups for new `dns:` services, stop them for removed or changed ones."""
        want = queries(cfg)
        for svc in list(self._states):
            if want.get(svc) != self._states[svc].query:
                st = self._states.pop(svc)
                if st.task is not None:
                    st.task.cancel()
                if self._seed is not None:  # the stored answer was for the old query
                    self._seed.pop(svc, None)
                self._dirty.set()
        for svc, q in want.items():
            if svc not in self._states:
                self._states[svc] = st = State(q)
                self._spawn(st)
                self._dirty.set()
        self._configured = True

    def status(self) -> list[dict[str, Any]]:
        """Per DNS service: the name, the last good answer, its TTL, and the last error (for status pages)."""
        return [st.to_json() for _, st in sorted(self._states.items())]

    def records(self, now: float | None = None) -> list[InstanceRecord]:
        """What the store should hold: the last good answer of every DNS service, sorted."""
        at = self._clock() if now is None else now
        return [InstanceRecord(service=svc, host=EXTERNAL_HOST, address=a, healthy=True, source=SOURCE_DNS,
                               checked_at=at, detail=st.query.detail)
                for svc, st in sorted(self._states.items()) for a in st.addresses or ()]

    # --- the loops ---------------------------------------------------------------------
    async def _run(self) -> None:
        while self._seed is None:
            try:
                await self._load_seed()
            except StoreError as e:
                log.warning("dns: cannot read the store yet (%s)", e)
                await asyncio.sleep(TTL_FLOOR_S)
        for st in self._states.values():
            self._spawn(st)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(LEASE_S / 3):  # not wait_for: in 3.11 it can swallow a cancel
                    await self._dirty.wait()
            self._dirty.clear()
            try:
                await self.publish()
            except StoreError as e:  # try again soon; the records in the store stay as they were
                log.warning("dns: cannot write instances to the store: %s", e)
                await asyncio.sleep(TTL_FLOOR_S)
                self._dirty.set()

    async def _load_seed(self) -> None:
        """The answers the store already holds (a previous run's, or another replica's): the last good ones."""
        found: dict[str, list[str]] = {}
        details: dict[str, str] = {}
        for r in await self.store.instances():
            if r.host == EXTERNAL_HOST and r.source == SOURCE_DNS:
                found.setdefault(r.service, []).append(r.address)
                details[r.service] = r.detail
        self._seed = {s: (details[s], tuple(sorted(a))) for s, a in found.items()}
        # Nothing stored: nothing to renew or remove until an answer arrives.
        self._published = None if found else ()

    def _spawn(self, st: State) -> None:
        """Start the service's lookup loop, once the store's answers are known (never before)."""
        if self._seed is None or self._main is None or st.task is not None:
            return
        detail, addrs = self._seed.pop(st.query.service, ("", ()))
        if st.addresses is None and addrs and detail == st.query.detail:
            st.addresses = addrs  # the last good answer survives a restart during a DNS outage
        st.task = asyncio.create_task(self._watch(st), name=f"dns-{st.query.service}")

    async def _watch(self, st: State) -> None:
        q = st.query
        while True:
            try:
                ans = await self.resolver.lookup(q)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # DnsLookupError, or a bug: either way keep the answer and keep asking
                if not isinstance(e, DnsLookupError):
                    log.exception("dns %s: lookup failed unexpectedly", q.service)
                st.failures += 1
                st.error = str(e) or type(e).__name__
                delay = retry_delay(st.failures)
                kept = (f"keeping the last good answer ({len(st.addresses)} instances)" if st.addresses
                        else "no instances yet")
                log.warning("dns %s: %s; %s; retry in %gs", q.service, e, kept, delay)
            else:
                if ans.addresses != st.addresses:
                    log.info("dns %s: %s %s -> %s (ttl %gs)", q.service, q.type, q.name,
                             ", ".join(ans.addresses), ans.ttl)
                    st.addresses = ans.addresses
                    self._dirty.set()
                elif st.failures:
                    log.info("dns %s: %s %s answers again", q.service, q.type, q.name)
                st.ttl, st.resolved_at, st.failures, st.error = ans.ttl, self._clock(), 0, ""
                delay = clamp_ttl(ans.ttl)
            st.next_at = self._clock() + delay
            await asyncio.sleep(delay)

    async def publish(self) -> bool:
        """Write the answers to the store if they changed since the last write, or to renew its lease.

        Nothing is written before the first config and the store's own answers are
        known: an empty list written then would wipe good answers for nothing.
        """
        if not self._configured or self._seed is None:
            return False
        recs = self.records()
        key = tuple((r.service, r.address) for r in recs)
        now = self._clock()
        if key == self._published and (not key or now - self._published_at < LEASE_S / 3):
            return False
        await self.store.put_instances(EXTERNAL_HOST, recs, LEASE_S)
        self._published, self._published_at = key, now
        return True
