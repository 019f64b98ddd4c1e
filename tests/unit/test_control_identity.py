"""Join tokens and certificate issuance (glassmesh.control.identity) against a real SqliteStore, no sockets.

What must hold: a token works once and only until it expires, and the store
never holds it; a CSR is signed only for the SPIFFE ID (and kind) the caller
is entitled to; a host gets certificates only for the services it was
admitted for; the host's earliest certificate expiry is recorded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from glassmesh.ca import CAError, ca_key_pem, init_ca, load_ca, spiffe_id_of
from glassmesh.control.identity import (
    CA_KEY,
    CA_KIND,
    CERTS_KIND,
    JOIN_KIND,
    BadRequest,
    Forbidden,
    Identity,
    UnknownHost,
    check_csr,
    open_ca,
    parse_duration,
    shared_ca,
    token_key,
)
from glassmesh.control.store_sqlite import SqliteStore
from glassmesh.files import write_atomic
from glassmesh.proxy.enroll import renew_at
from glassmesh.proxy.keygen import generate_key, make_csr

TD = "glassmesh.local"


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def run(tmp_path: Path, body: Callable[[SqliteStore, Identity, Clock], Awaitable[None]]) -> None:
    clock = Clock()
    ident = Identity(init_ca(tmp_path / "ca", TD))

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"), clock=clock)
        try:
            await body(store, ident, clock)
        finally:
            await store.close()

    asyncio.run(main())


def host_csr(name: str | None) -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = generate_key()
    return key, make_csr(key, f"spiffe://{TD}/host/{name}" if name else None)


def test_token_is_single_use_and_only_its_hash_is_stored(tmp_path: Path) -> None:
    async def body(store: SqliteStore, ident: Identity, clock: Clock) -> None:
        added = await ident.add_host(store, "host1", ["b", "a"], ttl_s=3600)
        token = added["token"]
        assert len(token) >= 43 and added["services"] == ["a", "b"] and added["ca_sha256"] == ident.ca_sha256
        recs = await store.records(JOIN_KIND)
        assert list(recs) == [token_key(token)] and token not in str(recs)

        _, csr = host_csr("host1")
        got = await ident.join(store, token, csr)
        cert = x509.load_pem_x509_certificate(got["cert_pem"].encode())
        assert spiffe_id_of(cert) == f"spiffe://{TD}/host/host1" and got["services"] == ["a", "b"]
        assert got["ca_pem"] == ident.ca_pem
        host = (await store.hosts())[0]
        assert host.name == "host1" and host.services == ("a", "b")
        assert host.cert_not_after == pytest.approx(cert.not_valid_after_utc.timestamp())

        with pytest.raises(Forbidden, match="already used|unknown"):
            await ident.join(store, token, host_csr("host1")[1])
        with pytest.raises(Forbidden):
            await ident.join(store, "not-a-token", host_csr(None)[1])

    run(tmp_path, body)


def test_expired_token_is_refused(tmp_path: Path) -> None:
    async def body(store: SqliteStore, ident: Identity, clock: Clock) -> None:
        token = (await ident.add_host(store, "host1", ["a"], ttl_s=60))["token"]
        clock.now += 61
        with pytest.raises(Forbidden, match="expired"):
            await ident.join(store, token, host_csr("host1")[1])
        assert await store.hosts() == []
        with pytest.raises(BadRequest, match="ttl"):
            await ident.add_host(store, "host1", ["a"], ttl_s=0.1)
        with pytest.raises(BadRequest, match="host name"):
            await ident.add_host(store, "Host_1", ["a"], ttl_s=60)

    run(tmp_path, body)


def test_join_csr_must_name_the_tokens_host_and_a_bad_csr_does_not_burn_the_token(tmp_path: Path) -> None:
    async def body(store: SqliteStore, ident: Identity, clock: Clock) -> None:
        token = (await ident.add_host(store, "host1", ["a"], ttl_s=60))["token"]
        with pytest.raises(BadRequest, match="host/host2"):
            await ident.join(store, token, host_csr("host2")[1])
        key = generate_key()
        with pytest.raises(BadRequest, match="service/host1"):  # right name, wrong kind
            await ident.join(store, token, make_csr(key, f"spiffe://{TD}/service/host1"))
        with pytest.raises(BadRequest, match="not a PEM"):
            await ident.join(store, token, "garbage")
        # Still usable: no name in the CSR means "the token's host".
        got = await ident.join(store, token, host_csr(None)[1])
        assert got["host"] == "host1"

    run(tmp_path, body)


def test_csr_checks_key_type_signature_and_exact_identity(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", TD)
    key = generate_key()
    want = f"spiffe://{TD}/service/a"
    assert check_csr(ca, make_csr(key, want), want).public_numbers() == key.public_key().public_numbers()
    with pytest.raises(BadRequest, match="asks for no SPIFFE ID"):
        check_csr(ca, make_csr(key, None), want)
    with pytest.raises(BadRequest, match="service/b"):
        check_csr(ca, make_csr(key, f"spiffe://{TD}/service/b"), want)
    with pytest.raises(BadRequest, match="other.domain"):
        check_csr(ca, make_csr(key, "spiffe://other.domain/service/a"), want)
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(BadRequest, match="P-256"):
        check_csr(ca, make_csr(p384, want), want)  # type: ignore[arg-type]


def test_service_certs_only_for_admitted_services(tmp_path: Path) -> None:
    async def body(store: SqliteStore, ident: Identity, clock: Clock) -> None:
        token = (await ident.add_host(store, "host1", ["a"], ttl_s=60))["token"]
        with pytest.raises(Forbidden, match="has not joined"):
            await ident.issue_service(store, "host1", "a", make_csr(generate_key(), f"spiffe://{TD}/service/a"))
        await ident.join(store, token, host_csr("host1")[1])

        got = await ident.issue_service(store, "host1", "a", make_csr(generate_key(), f"spiffe://{TD}/service/a"))
        assert spiffe_id_of(x509.load_pem_x509_certificate(got["cert_pem"].encode())) == f"spiffe://{TD}/service/a"
        with pytest.raises(Forbidden, match="may not serve 'b'"):
            await ident.issue_service(store, "host1", "b", make_csr(generate_key(), f"spiffe://{TD}/service/b"))
        with pytest.raises(BadRequest, match="service/b"):  # admitted for a, but the CSR asks for b
            await ident.issue_service(store, "host1", "a", make_csr(generate_key(), f"spiffe://{TD}/service/b"))
        with pytest.raises(BadRequest, match="host/host1"):  # a host CSR is not a service CSR
            await ident.issue_service(store, "host1", "a", make_csr(generate_key(), f"spiffe://{TD}/host/host1"))

        # Removed: no more certificates, renewals included; pending tokens dropped.
        await ident.add_host(store, "host1", ["a"], ttl_s=60)
        out = await ident.remove_host(store, "host1")
        assert out["tokens_dropped"] == 1 and await store.records(JOIN_KIND) == {}
        with pytest.raises(Forbidden, match="removed"):
            await ident.issue_service(store, "host1", "a", make_csr(generate_key(), f"spiffe://{TD}/service/a"))
        with pytest.raises(Forbidden):
            await ident.renew_host(store, "host1", host_csr("host1")[1])
        with pytest.raises(UnknownHost):
            await ident.remove_host(store, "nobody")

    run(tmp_path, body)


def test_a_service_the_config_puts_on_a_joined_host_gets_its_certificate(tmp_path: Path) -> None:
    """host1 joined for web; `glassmesh apply` later runs api there too: no second join needed."""
    from glassmesh.control import ops

    async def body(store: SqliteStore, ident: Identity, clock: Clock) -> None:
        token = (await ident.add_host(store, "host1", ["web"], ttl_s=60))["token"]
        await ident.join(store, token, host_csr("host1")[1])
        mesh = "services: [{name: web}, {name: api}, {name: cache}]\nhosts:\n  - {name: host1, address: " \
               "127.0.0.11:4143, services: [SVCS]}\n"
        await ops.apply(store, mesh.replace("SVCS", "web"), "t@h")
        with pytest.raises(Forbidden, match="may not serve 'api'.*does not put 'api' on it"):
            await ident.issue_service(store, "host1", "api", make_csr(generate_key(), f"spiffe://{TD}/service/api"))
        await ops.apply(store, mesh.replace("SVCS", "web, api"), "t@h")
        got = await ident.issue_service(store, "host1", "api", make_csr(generate_key(), f"spiffe://{TD}/service/api"))
        assert spiffe_id_of(x509.load_pem_x509_certificate(got["cert_pem"].encode())) == f"spiffe://{TD}/service/api"
        assert "service/api" in (await store.get_record(CERTS_KIND, "host1") or {})
        with pytest.raises(Forbidden, match="may not serve 'cache'"):  # in the config, but not on host1
            await ident.issue_service(store, "host1", "cache",
                                      make_csr(generate_key(), f"spiffe://{TD}/service/cache"))

    run(tmp_path, body)


def test_earliest_expiry_is_recorded_and_renewal_moves_it(tmp_path: Path) -> None:
    async def body(store: SqliteStore, ident: Identity, clock: Clock) -> None:
        token = (await ident.add_host(store, "host1", ["a"], ttl_s=60))["token"]
        ident.leaf_hours = 1
        await ident.join(store, token, host_csr("host1")[1])
        ident.leaf_hours = 2
        await ident.issue_service(store, "host1", "a", make_csr(generate_key(), f"spiffe://{TD}/service/a"))
        first = (await store.hosts())[0].cert_not_after
        assert first == pytest.approx(time.time() + 3600, abs=60)  # the 1 h host cert is the earliest
        got = await ident.renew_host(store, "host1", host_csr("host1")[1])
        assert (await store.hosts())[0].cert_not_after == pytest.approx(time.time() + 7200, abs=60)
        assert got["not_after"] > first

    run(tmp_path, body)


def test_renewal_at_half_life_ignores_the_backdating(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "ca", TD)
    leaf = ca.issue("service", "a", hours=2)
    issued = time.time()
    assert renew_at(leaf.cert) == pytest.approx(issued + 3600, abs=5)


def test_open_ca_creates_once_and_refuses_another_trust_domain(tmp_path: Path) -> None:
    ca = open_ca(tmp_path / "data" / "ca", TD)
    assert (tmp_path / "data" / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert open_ca(tmp_path / "data" / "ca", TD).fingerprint == ca.fingerprint
    with pytest.raises(Exception, match="not 'other.td'"):
        open_ca(tmp_path / "data" / "ca", "other.td")
    write_atomic(tmp_path / "data" / "ca" / "ca.pem", b"junk")
    with pytest.raises(Exception, match="not a PEM"):
        open_ca(tmp_path / "data" / "ca", TD)


PASS = b"a passphrase for the shared CA"


def test_without_a_passphrase_the_store_never_holds_the_ca_key(tmp_path: Path) -> None:
    """A copy of the store alone (a backup of control.sqlite) mints nothing: the key stays in DIR/ca."""

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        try:
            ca = open_ca(tmp_path / "r1" / "ca", TD)
            assert (await shared_ca(store, ca, tmp_path / "r1" / "ca")) is ca
            rec = await store.get_record(CA_KIND, CA_KEY)
            assert rec is not None and "key_pem" not in rec
            assert b"PRIVATE KEY" not in (tmp_path / "s.sqlite").read_bytes()
            assert (await shared_ca(store, open_ca(tmp_path / "r1" / "ca", TD), tmp_path / "r1" / "ca")) \
                .fingerprint == ca.fingerprint  # a restart: the same CA from DIR/ca
            with pytest.raises(CAError, match="without its key"):  # another replica has no way to get it
                await shared_ca(store, open_ca(tmp_path / "r2" / "ca", TD), tmp_path / "r2" / "ca")
            # A clear key an older version stored is taken out.
            await store.put_record(CA_KIND, CA_KEY, {**rec, "key_pem": ca_key_pem(ca).decode()})
            await shared_ca(store, ca, tmp_path / "r1" / "ca")
            assert "key_pem" not in (await store.get_record(CA_KIND, CA_KEY) or {})
        finally:
            await store.close()

    asyncio.run(main())


def test_shared_ca_first_replica_stores_its_own_the_others_adopt_it(tmp_path: Path) -> None:
    """What makes several replicas one CA: the store's wins, each DIR/ca becomes a copy of it."""

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        try:
            first = open_ca(tmp_path / "r1" / "ca", TD)
            assert (await shared_ca(store, first, tmp_path / "r1" / "ca", PASS)) is first
            rec = await store.get_record(CA_KIND, CA_KEY)
            assert rec is not None and rec["cert_pem"] == first.cert_pem.decode() and rec["trust_domain"] == TD
            assert rec["key_pem"].startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
            # A second replica's brand-new CA (made by open_ca in this process) is replaced without a copy kept.
            fresh = open_ca(tmp_path / "r2" / "ca", TD)
            got = await shared_ca(store, fresh, tmp_path / "r2" / "ca", PASS)
            assert got.fingerprint == first.fingerprint
            assert load_ca(tmp_path / "r2" / "ca").fingerprint == first.fingerprint
            assert (tmp_path / "r2" / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
            assert not list((tmp_path / "r2" / "ca").glob("replaced-*"))
            # A CA from before (it may have signed certificates) is kept aside, not lost.
            old = init_ca(tmp_path / "r3" / "ca", TD)
            got = await shared_ca(store, old, tmp_path / "r3" / "ca", PASS)
            assert got.fingerprint == first.fingerprint
            kept = list((tmp_path / "r3" / "ca").glob("replaced-*"))
            assert len(kept) == 1 and load_ca(kept[0]).fingerprint == old.fingerprint
            # Restarting with the shared copy on disk changes nothing.
            again = open_ca(tmp_path / "r2" / "ca", TD)
            assert (await shared_ca(store, again, tmp_path / "r2" / "ca", PASS)).fingerprint == first.fingerprint
            # A replica started for another trust domain is refused, not given the mesh's CA.
            with pytest.raises(CAError, match="not 'other.td'"):
                await shared_ca(store, init_ca(tmp_path / "r4" / "ca", "other.td"), tmp_path / "r4" / "ca", PASS)
        finally:
            await store.close()

    asyncio.run(main())


def test_shared_ca_replicas_starting_at_once_agree(tmp_path: Path) -> None:
    """Several replicas offering their own CA at the same moment end with one CA, the store's."""

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "s.sqlite"))
        try:
            cas = [open_ca(tmp_path / f"r{i}" / "ca", TD) for i in range(4)]
            got = await asyncio.gather(*(shared_ca(store, ca, tmp_path / f"r{i}" / "ca", PASS)
                                         for i, ca in enumerate(cas)))
            assert len({ca.fingerprint for ca in got}) == 1
            assert sum(g is ca for g, ca in zip(got, cas, strict=True)) == 1  # exactly one replica's own CA won
            rec = await store.get_record(CA_KIND, CA_KEY)
            assert rec is not None and rec["ca_sha256"] == Identity(got[0]).ca_sha256
        finally:
            await store.close()

    asyncio.run(main())


def test_parse_duration() -> None:
    assert [parse_duration(x) for x in ("90s", "30m", "1h", "2d", "15", "1.5h")] == [90, 1800, 3600, 172800, 15,
                                                                                      5400]
    with pytest.raises(ValueError, match="30m"):
        parse_duration("1 hour")
