"""The snapshot: the complete, versioned config of one proxy, replaced whole.

This is the contract between the control plane and a proxy: the control
plane streams it (glassmesh.api.wire), and a user may hand one to a proxy as
a file (`--config`). It is decoded, then checked for meaning (names resolve,
addresses parse) so that a proxy either swaps in a snapshot that is whole or
keeps the one it has.

Two decoders, one schema, because the two readers need opposite things:

- A file a user wrote (`load_snapshot`, `parse_snapshot`) is decoded
  strictly: a field this glassmesh does not know is an error naming it
  (`wieght` is a typo, and a typo silently ignored is a setting silently not
  applied).
- A snapshot from the control plane (`decode_snapshot`, and the deltas of
  api/wire.py) is decoded tolerantly: during a rolling upgrade the control
  plane may be one release newer than this proxy, and a field it added is
  ignored here (the proxy logs once, at debug, which ones). Fields a proxy
  must not ignore are made must-understand instead: the snapshot's
  `requires` lists the features it needs, and a proxy missing one of them
  (not in FEATURES) rejects the snapshot with a reason naming the feature,
  keeps the one in force, and acks the reject, which `glassmesh status`
  shows. See the wire versions rule in glassmesh.api.wire.

The last-known-good copy on disk is read tolerantly as well: a proxy rolled
back one release must still start from what the newer one wrote.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from typing import Annotated, Literal

import msgspec

from glassmesh import __version__

NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
Name = Annotated[str, msgspec.Meta(pattern=NAME_RE)]
Protocol = Literal["http", "tcp"]
# "host:port", with IPv6 hosts bracketed: "[::1]:4143".
Address = Annotated[str, msgspec.Meta(pattern=r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$")]

# No forbid_unknown_fields: the schema is shared by the strict decoder (user files; strict_unknown below
# finds unknown fields there) and the tolerant one (the wire), and msgspec cannot do both from one struct.
_STRUCT = {"frozen": True, "kw_only": True}
# Endpoints and services repeat by the thousand in a large mesh's snapshots:
# leaving their default fields out saved a fifth of every push.
_REPEATED = {**_STRUCT, "omit_defaults": True}


# Must-understand features this build implements: a snapshot whose `requires` names one not in here is
# rejected, never half-applied. A control plane that starts using a field an older proxy would ignore
# to its users' harm (a deny rule, a traffic policy) adds the feature's name to the snapshot's
# `requires` when (and only when) the config uses it, and the proxy that implements it adds the name here.
FEATURES: frozenset[str] = frozenset({"policy"})  # policy: services[].policy (routes, splits, retries...)


class SnapshotError(ValueError):
    """A snapshot that cannot be used; the message names the bad field."""


class LocalService(msgspec.Struct, **_STRUCT):
    """A service with instances (or callers) on this host."""

    name: Name  # the service, and the identity its certificate carries
    protocol: Protocol = "http"  # http (requests) or tcp (bytes)
    # Where this host's instances of the service listen (the app processes).
    instances: list[Address] = []
    # The outbound listener that this service's apps use to call the mesh.
    # One listener per local service is how the proxy knows who is calling.
    outbound: Address | None = None
    # A unix socket for the same purpose. Unlike a port, its file permissions
    # decide which local processes may call as this service.
    outbound_socket: str | None = None
    outbound_socket_mode: Annotated[str, msgspec.Meta(pattern=r"^0?[0-7]{3}$")] = "0660"  # the socket file's mode
    outbound_socket_group: str | None = None  # the socket file's group (None: the proxy's)
    # What this service may call (None: every service). A host's `services` lists what any of its
    # local services may call; the outbound side refuses a call outside the caller's own list
    # (403 call_not_allowed), even when another local service may make it.
    calls: list[Name] | None = None
    # Who may call this service (None: any service identity of the trust domain): the inbound side
    # answers any other caller 403 `forbidden`, whatever its own proxy allowed.
    callers: list[Name] | None = None
    # The service's certificate chain and key (PEM files), presented on both
    # sides: as the client cert when it calls, as the server cert when called.
    cert: str
    key: str  # its private key (mode 0600)
    # How this host's proxy checks the instances above before reporting them to
    # the control plane: an HTTP GET of this path expecting 2xx, or (None) a TCP connect.
    health_http: str | None = None
    health_interval_ms: Annotated[int, msgspec.Meta(ge=100, le=600_000)] = 2_000
    health_timeout_ms: Annotated[int, msgspec.Meta(ge=10, le=600_000)] = 1_000


# --------------------------------------------------------------------------- traffic policy
#
# Per destination service, from mesh.yaml. Every field has a default so that a
# snapshot without policy encodes exactly as before (omit_defaults keeps them
# off the wire), and a proxy treats `Service.policy is None` as Policy().

Percent = Annotated[float, msgspec.Meta(ge=0.0, le=100.0)]
Status = Annotated[int, msgspec.Meta(ge=100, le=599)]


class RouteMatch(msgspec.Struct, **_REPEATED):
    """What a request must look like for its route to take it: every condition given must hold."""

    path_prefix: str | None = None
    path_exact: str | None = None
    path_regex: str | None = None  # Python `re` syntax, searched from the path's start (re.match)
    methods: list[str] = []  # upper case; [] means any method
    headers: dict[str, str] = {}  # lowercase names, values matched exactly


class Backend(msgspec.Struct, **_REPEATED):
    """One subset a route splits to, with its share: weight / sum of the route's weights."""

    subset: Name
    weight: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]


class Retry(msgspec.Struct, **_REPEATED):
    # Total tries, the first included.
    attempts: Annotated[int, msgspec.Meta(ge=1, le=5)] = 2
    # 5xx statuses that may be retried, for idempotent methods only.
    on_status: list[Status] = []
    # A connect failure sent nothing, so it is always safe to retry.
    connect_failures: bool = True


class Fault(msgspec.Struct, **_REPEATED):
    delay_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 0
    delay_percent: Percent = 0.0
    abort_status: Status | None = None
    abort_percent: Percent = 0.0


class Mirror(msgspec.Struct, **_REPEATED):
    """A copy of percent% of a route's requests goes to this subset too; its responses are dropped."""

    subset: Name
    percent: Percent


class Route(msgspec.Struct, **_REPEATED):
    name: Name
    match: RouteMatch = RouteMatch()
    split: list[Backend] = []  # []: every endpoint of the service
    timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] | None = None  # request head in to response end
    idle_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] | None = None  # longest gap in the response
    retry: Retry | None = None
    fault: Fault | None = None
    mirror: Mirror | None = None


class Subset(msgspec.Struct, **_REPEATED):
    """The endpoints whose labels include all of these."""

    name: Name
    labels: dict[str, str]


class RetryBudget(msgspec.Struct, **_REPEATED):
    """Retries may be at most percent% of requests (over ~10 s) plus min_per_second: Linkerd's shape."""

    percent: Percent = 20.0
    min_per_second: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10


class Outlier(msgspec.Struct, **_REPEATED):
    consecutive_failures: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 5
    base_ejection_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 10_000
    max_ejection_ms: Annotated[int, msgspec.Meta(ge=1, le=86_400_000)] = 300_000
    max_ejection_percent: Annotated[int, msgspec.Meta(ge=0, le=100)] = 50


class ServiceLimits(msgspec.Struct, **_REPEATED):
    """Per destination, at each calling proxy; beyond one, a request fails at once with 503."""

    max_connections: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_pending: Annotated[int, msgspec.Meta(ge=0)] | None = None
    max_requests: Annotated[int, msgspec.Meta(ge=1)] | None = None


class Policy(msgspec.Struct, **_REPEATED):
    subsets: list[Subset] = []
    routes: list[Route] = []  # first match wins; no match: every endpoint, no retry/timeout/fault
    balance: Literal["p2c_ewma", "round_robin"] = "p2c_ewma"
    retry_budget: RetryBudget = RetryBudget()
    outlier: Outlier | None = Outlier()
    limits: ServiceLimits = ServiceLimits()


class Endpoint(msgspec.Struct, **_REPEATED):
    """One instance of a remote service, reached through its host's inbound port.

    With mesh=False the address is the instance itself (found by DNS, no proxy
    in front of it): reached in plain HTTP or TCP, and shown as such.
    """

    address: Address  # its host's inbound port (or, with mesh false, the instance itself)
    host: Name  # the host whose proxy serves it
    mesh: bool = True
    # From mesh.yaml (the static instance's `labels:`, or the host's service entry); subsets select on them.
    labels: dict[str, str] = {}


class Service(msgspec.Struct, **_REPEATED):
    """A service that local services may call."""

    name: Name  # the service, and the identity its instances' proxies must present
    protocol: Protocol = "http"  # http (requests) or tcp (bytes)
    endpoints: list[Endpoint] = []  # where it is served, spread round robin
    # Emptied on purpose by an operator (`glassmesh drain`). A proxy keeps the old
    # endpoints of a service that a snapshot empties unless this is set.
    drained: bool = False
    # Routes, subsets, balancing, retry budget, ejection, limits (None: round robin, no routes).
    policy: Policy | None = None


class TcpLink(msgspec.Struct, **_STRUCT):
    """A local port that carries raw TCP from a local service to a destination service."""

    source: Name  # the local service that connects (the identity the destination sees)
    listen: Address  # where this proxy listens for it
    destination: Name  # the service it reaches


class Timeouts(msgspec.Struct, **_STRUCT):
    """How long the proxy waits, in milliseconds."""

    connect_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 3_000  # to connect (and shake hands) to a peer or an app
    # From the request head being forwarded to the response head arriving.
    response_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 30_000
    # A client connection with nothing in flight is closed after this.
    idle_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 60_000
    # A pooled proxy-to-proxy or proxy-to-app connection unused for this long is closed.
    pool_idle_ms: Annotated[int, msgspec.Meta(ge=1, le=3_600_000)] = 30_000
    # A request head must arrive whole within this (slow-loris guard).
    head_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 10_000


class Limits(msgspec.Struct, **_STRUCT):
    """What one request, and the callers together, may hold at this proxy."""

    max_head_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1 << 20)] = 64 * 1024  # a larger request head: 431
    max_headers: Annotated[int, msgspec.Meta(ge=8, le=1000)] = 100  # more header fields: 431
    max_client_connections: Annotated[int, msgspec.Meta(ge=1)] = 10_000  # local apps, all together
    # What one caller (a peer service identity) may hold open at this proxy's inbound, apart from the
    # local apps' budget above: HTTP connections and mux streams, and multiplexed TLS connections.
    max_peer_streams: Annotated[int, msgspec.Meta(ge=1)] = 4096
    max_peer_connections: Annotated[int, msgspec.Meta(ge=1)] = 64


class Snapshot(msgspec.Struct, **_STRUCT):
    """Everything one host's proxy serves, replaced whole (or by a delta that rebuilds a whole one)."""

    version: Annotated[int, msgspec.Meta(ge=0)]  # the mesh config version it was compiled from
    host: Name  # the host it is for (a proxy refuses another host's)
    trust_domain: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9.-]+$")]  # of every SPIFFE id it names
    # PEM file of the CA certificates that peer certificates must chain to.
    trust_bundle: str
    # How this proxy carries HTTP to peer proxies: "mux" (many requests share one
    # TLS connection, fewer system calls) or "http1" (a TLS connection per
    # request in flight, like most proxies). Inbound ports accept both.
    peer_protocol: Literal["mux", "http1"] = "mux"
    inbound: Address = "127.0.0.1:4143"  # the mTLS port peers call this host's services on
    admin: Address = "127.0.0.1:4191"  # /ready, /metrics and the other admin pages
    local_services: list[LocalService] = []  # services with instances or callers here
    services: list[Service] = []  # services they may call, with their endpoints
    tcp_links: list[TcpLink] = []  # raw TCP ports on this host
    # The mesh's other services, by name only: none of this host's services may call them. A call
    # to one is answered 403 call_not_allowed, not 404 unknown_service.
    withheld_services: list[Name] = []
    timeouts: Timeouts = Timeouts()
    limits: Limits = Limits()
    # The must-understand features this snapshot uses (see FEATURES); empty for almost every snapshot.
    requires: list[Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9.-]*$")]] = []

    def local(self, name: str) -> LocalService | None:
        for s in self.local_services:
            if s.name == name:
                return s
        return None

    def service(self, name: str) -> Service | None:
        for s in self.services:
            if s.name == name:
                return s
        return None

    def spiffe_id(self, service: str) -> str:
        return f"spiffe://{self.trust_domain}/service/{service}"


_decoder = msgspec.json.Decoder(Snapshot)


def split_address(addr: str) -> tuple[str, int]:
    """'127.0.0.1:80' -> ('127.0.0.1', 80); '[::1]:80' -> ('::1', 80)."""
    host, _, port = addr.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    return host, int(port)


def check_snapshot(snap: Snapshot, checked: set[int] | None = None) -> None:
    """The meaning checks a proxy runs on a snapshot, for a compiler to run before shipping it.

    checked: ids of Service objects already checked (compiled snapshots share
    them), so 200 hosts do not check the same 10,000 endpoints 200 times.
    """
    _check(snap, checked)


def _check(snap: Snapshot, checked: set[int] | None = None) -> None:
    """Meaning checks that a schema cannot express; each error names its field."""

    def fail(path: str, msg: str) -> None:
        raise SnapshotError(f"{msg} - at `$.{path}`")

    def port_ok(path: str, addr: str) -> None:
        if not 0 < split_address(addr)[1] < 65536:
            fail(path, f"port out of range in {addr!r}")

    missing = [f for f in snap.requires if f not in FEATURES]
    if missing:
        fail("requires", f"this snapshot requires feature{'s' * (len(missing) > 1)} {', '.join(missing)}, "
                         f"which this proxy (glassmesh {__version__}) does not have: upgrade it")
    port_ok("inbound", snap.inbound)
    port_ok("admin", snap.admin)
    seen: dict[str, str] = {}
    listen: dict[str, str] = {snap.inbound: "inbound", snap.admin: "admin"}
    if snap.inbound == snap.admin:
        fail("admin", "admin and inbound listen on the same address")
    for i, ls in enumerate(snap.local_services):
        p = f"local_services[{i}]"
        if ls.name in seen:
            fail(f"{p}.name", f"duplicate local service {ls.name!r}")
        seen[ls.name] = p
        for j, a in enumerate(ls.instances):
            port_ok(f"{p}.instances[{j}]", a)
        if ls.outbound_socket is not None:
            if not os.path.isabs(ls.outbound_socket):
                fail(f"{p}.outbound_socket", "must be an absolute path")
            if ls.outbound_socket in listen:
                fail(f"{p}.outbound_socket", f"{ls.outbound_socket} is already used by {listen[ls.outbound_socket]}")
            listen[ls.outbound_socket] = f"{p}.outbound_socket"
        if ls.outbound is not None:
            port_ok(f"{p}.outbound", ls.outbound)
            if ls.outbound in listen:
                fail(f"{p}.outbound", f"{ls.outbound} is already used by {listen[ls.outbound]}")
            listen[ls.outbound] = f"{p}.outbound"
    names: set[str] = set()
    for i, s in enumerate(snap.services):
        p = f"services[{i}]"
        if s.name in names:
            fail(f"{p}.name", f"duplicate service {s.name!r}")
        names.add(s.name)
        if checked is not None:
            if id(s) in checked:
                continue
            checked.add(id(s))
        for j, e in enumerate(s.endpoints):
            port_ok(f"{p}.endpoints[{j}].address", e.address)
        if s.policy is not None:
            _check_policy(s.policy, f"{p}.policy", fail)
    for i, t in enumerate(snap.tcp_links):
        p = f"tcp_links[{i}]"
        if t.source not in seen:
            fail(f"{p}.source", f"{t.source!r} is not a local service")
        dst = snap.service(t.destination)
        if dst is None:
            fail(f"{p}.destination", f"{t.destination!r} is not in services")
        elif dst.protocol != "tcp":
            fail(f"{p}.destination", f"{t.destination!r} is an http service, a tcp link needs a tcp one")
        port_ok(f"{p}.listen", t.listen)
        if t.listen in listen:
            fail(f"{p}.listen", f"{t.listen} is already used by {listen[t.listen]}")
        listen[t.listen] = f"{p}.listen"


def _check_policy(pol: Policy, p: str, fail: Callable[[str, str], None]) -> None:
    """What the schema cannot say about a policy (and, for structs built in Python, what it can)."""

    def pct(path: str, v: float) -> None:
        if not 0.0 <= v <= 100.0:
            fail(path, f"percent {v} is not in 0..100")

    def status(path: str, v: int) -> None:
        if not 100 <= v <= 599:
            fail(path, f"status {v} is not in 100..599")

    subsets: set[str] = set()
    for i, sub in enumerate(pol.subsets):
        if sub.name in subsets:
            fail(f"{p}.subsets[{i}].name", f"duplicate subset {sub.name!r}")
        subsets.add(sub.name)
    pct(f"{p}.retry_budget.percent", pol.retry_budget.percent)
    if pol.outlier is not None and not 0 <= pol.outlier.max_ejection_percent <= 100:
        fail(f"{p}.outlier.max_ejection_percent", f"percent {pol.outlier.max_ejection_percent} is not in 0..100")
    routes: set[str] = set()
    for i, r in enumerate(pol.routes):
        rp = f"{p}.routes[{i}]"
        if r.name in routes:
            fail(f"{rp}.name", f"duplicate route {r.name!r}")
        routes.add(r.name)
        if r.match.path_regex is not None:
            try:
                re.compile(r.match.path_regex)
            except re.error as e:
                fail(f"{rp}.match.path_regex", f"bad regex {r.match.path_regex!r}: {e}")
        for name in r.match.headers:
            if name != name.lower():
                fail(f"{rp}.match.headers", f"header name {name!r} must be lowercase")
        for j, b in enumerate(r.split):
            if b.subset not in subsets:
                fail(f"{rp}.split[{j}].subset", f"{b.subset!r} is not in subsets")
            if not 0 <= b.weight <= 1_000_000:
                fail(f"{rp}.split[{j}].weight", f"weight {b.weight} is not in 0..1000000")
        if r.split and not any(b.weight for b in r.split):
            fail(f"{rp}.split", "weights are all zero")
        if r.retry is not None:
            if not 1 <= r.retry.attempts <= 5:
                fail(f"{rp}.retry.attempts", f"attempts {r.retry.attempts} is not in 1..5")
            for j, st in enumerate(r.retry.on_status):
                status(f"{rp}.retry.on_status[{j}]", st)
        if r.fault is not None:
            pct(f"{rp}.fault.delay_percent", r.fault.delay_percent)
            pct(f"{rp}.fault.abort_percent", r.fault.abort_percent)
            if r.fault.abort_status is not None:
                status(f"{rp}.fault.abort_status", r.fault.abort_status)
        if r.mirror is not None:
            if r.mirror.subset not in subsets:
                fail(f"{rp}.mirror.subset", f"{r.mirror.subset!r} is not in subsets")
            pct(f"{rp}.mirror.percent", r.mirror.percent)


def _resolve_paths(snap: Snapshot, base: str) -> Snapshot:
    def r(path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(base, path))

    return msgspec.structs.replace(
        snap,
        trust_bundle=r(snap.trust_bundle),
        local_services=[msgspec.structs.replace(s, cert=r(s.cert), key=r(s.key)) for s in snap.local_services],
    )


def parse_snapshot(data: bytes, base_dir: str = ".", strict: bool = True) -> Snapshot:
    """Decode and check a snapshot; relative file paths are taken from base_dir.

    strict (a file a user wrote): a field this glassmesh does not know is an error; not strict: ignored.
    """
    snap = decode_snapshot(data)
    if strict:
        unknown = strict_unknown(data)
        if unknown:
            raise SnapshotError(unknown)
    return _resolve_paths(snap, base_dir)


def load_snapshot(path: str, strict: bool = True) -> Snapshot:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise SnapshotError(f"cannot read {path}: {e.strerror}") from None
    try:
        return parse_snapshot(data, os.path.dirname(os.path.abspath(path)), strict)
    except SnapshotError as e:
        raise SnapshotError(f"{path}: {e}") from None


def encode_snapshot(snap: Snapshot) -> bytes:
    return msgspec.json.format(msgspec.json.encode(snap), indent=2)


def _friendly(msg: str) -> str:
    # msgspec says "Expected `str` matching regex '...'"; name the rule instead of the regex.
    if NAME_RE in msg:
        msg = msg.replace(f"matching regex '{NAME_RE}'", "that is a lowercase DNS label (a-z, 0-9, -)")
    return re.sub(r"matching regex '[^']*'", "in the form host:port", msg) if "regex" in msg else msg


# --------------------------------------------------------------------------- content digests
#
# A proxy that long-polls for the next version names the one it holds by
# version and digest, so the control plane can answer with only what changed
# (glassmesh.api.wire.SnapshotDelta), and the proxy can prove that what it
# rebuilt from that delta is, byte for byte, what the control plane compiled.
# The digest is built from per-service digests so that both sides, which keep
# unchanged Service objects across versions, hash only the services that
# changed: 1,000 services x 200 hosts are not re-encoded for every change.


def decode_snapshot(data: bytes) -> Snapshot:
    """Decode (tolerantly: unknown fields are ignored) and check a snapshot without resolving its file paths.

    This is the form it has on the wire. A proxy keeps this form (not the resolved one in force) as the base that
    deltas apply to, because it is the form the control plane hashed.
    """
    try:
        snap = _decoder.decode(data)
    except msgspec.ValidationError as e:
        raise SnapshotError(_friendly(str(e))) from None
    except msgspec.DecodeError as e:
        raise SnapshotError(f"not valid JSON: {e}") from None
    _check(snap)
    return snap


def unknown_fields(data: bytes, typ: type = Snapshot) -> list[str]:
    """The JSON paths of the fields in `data` that the schema `typ` does not have (`$.services[0].weight`).

    For the strict decoder, and for a proxy to say which fields a newer control plane sent that it ignored.
    """
    try:
        doc = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return []
    out: list[str] = []
    _walk(doc, msgspec.inspect.type_info(typ), "$", out)
    return out


def strict_unknown(data: bytes, typ: type = Snapshot) -> str:
    """The error (msgspec's words) for the first field `typ` does not have, or ""."""
    unknown = unknown_fields(data, typ)
    if not unknown:
        return ""
    path, _, name = unknown[0].rpartition(".")
    return f"Object contains unknown field `{name}` - at `{path}`"


def _walk(value: object, t: msgspec.inspect.Type, path: str, out: list[str]) -> None:
    mi = msgspec.inspect
    while isinstance(t, mi.Metadata):
        t = t.type
    if isinstance(t, mi.UnionType):
        for option in t.types:  # the option that fits the value's shape (Struct | None, list | Unset)
            if (isinstance(value, dict) and isinstance(option, mi.StructType | mi.DictType)) or (
                    isinstance(value, list) and isinstance(option, mi.ListType)):
                t = option
                break
        else:
            return
    if isinstance(t, mi.StructType) and isinstance(value, dict):
        fields = {f.encode_name: f for f in t.fields}
        for k, v in value.items():
            f = fields.get(k)
            if f is None:
                out.append(f"{path}.{k}")
            else:
                _walk(v, f.type, f"{path}.{k}", out)
    elif isinstance(t, mi.ListType) and isinstance(value, list):
        for i, v in enumerate(value):
            _walk(v, t.item_type, f"{path}[{i}]", out)
    elif isinstance(t, mi.DictType) and isinstance(value, dict):
        for k, v in value.items():
            _walk(v, t.value_type, f"{path}.{k}", out)


def resolve_paths(snap: Snapshot, base_dir: str) -> Snapshot:
    """Relative file paths taken from base_dir, as parse_snapshot does (the wire form made ready to serve)."""
    return _resolve_paths(snap, base_dir)


def confined_to(snap: Snapshot, base_dir: str) -> None:
    """SnapshotError unless every file the snapshot names (trust bundle, certificates, keys) is in base_dir.

    A snapshot from the control plane is data, not a licence to read any file
    on the host: a wrong or hostile one naming /etc/... or another service's
    key must be refused, not followed. Symlinks are resolved before judging.
    """
    root = os.path.realpath(base_dir)
    named = [("trust_bundle", snap.trust_bundle)]
    for i, ls in enumerate(snap.local_services):
        named += [(f"local_services[{i}].cert", ls.cert), (f"local_services[{i}].key", ls.key)]
    for field, path in named:
        real = os.path.realpath(path if os.path.isabs(path) else os.path.join(base_dir, path))
        if os.path.commonpath([root, real]) != root:
            raise SnapshotError(f"{field} names {path}, outside this proxy's data dir {base_dir}")


class DigestCache:
    """Per-service digests, remembered per name together with the object they were computed from.

    Hit only when it is the very same object (`is`), so a cached digest can
    never describe different content; a miss just hashes that service again.
    """

    def __init__(self) -> None:
        self._by_name: dict[str, tuple[Service, bytes]] = {}
        # Whole services lists, which compiled snapshots share between hosts: id -> (list, digest).
        self._lists: dict[int, tuple[list[Service], bytes]] = {}

    def service(self, svc: Service) -> bytes:
        hit = self._by_name.get(svc.name)
        if hit is not None and hit[0] is svc:
            return hit[1]
        digest = hashlib.sha256(msgspec.json.encode(svc)).digest()
        self._by_name[svc.name] = (svc, digest)
        return digest

    def services(self, svcs: list[Service]) -> bytes:
        """Digest of a whole services list, remembered for the list object (hosts share it)."""
        hit = self._lists.get(id(svcs))
        if hit is not None and hit[0] is svcs:
            return hit[1]
        digest = _services_digest(svcs, self)
        if len(self._lists) > 64:
            self._lists.clear()
        self._lists[id(svcs)] = (svcs, digest)
        return digest

    def forget_except(self, names: set[str]) -> None:
        """Drop services no longer in any snapshot (so removed ones are not kept alive forever)."""
        for name in [n for n in self._by_name if n not in names]:
            del self._by_name[name]


def snapshot_digest(snap: Snapshot, cache: DigestCache | None = None) -> str:
    """SHA-256 (hex) of a snapshot's content, version included: equal digests mean equal snapshots.

    sha256(compact JSON of the snapshot with `services` emptied, then the
    sha256 of every service's own sha256 in order). Two snapshots that encode
    differently (another service order, another field) get different digests.
    """
    h = hashlib.sha256(msgspec.json.encode(msgspec.structs.replace(snap, services=[])))
    h.update(cache.services(snap.services) if cache is not None else _services_digest(snap.services, None))
    return h.hexdigest()


def _services_digest(svcs: list[Service], cache: DigestCache | None) -> bytes:
    h = hashlib.sha256()
    for svc in svcs:
        h.update(cache.service(svc) if cache is not None else hashlib.sha256(msgspec.json.encode(svc)).digest())
    return h.digest()
