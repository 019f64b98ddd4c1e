"""Backup and restore of a control plane's state: the whole config history, hosts, records, and the CA.

`glassmesh control backup FILE --data DIR [--store ...]` reads the store and DIR/ca directly, not
through the operator API. Why: a backup holds the CA key, which mints any identity in the mesh.
Served by the API, it would be in reach of every admin credential (people, CI jobs) over the
network; read from the store and DIR/ca, it needs exactly the access the control plane itself has.
It still runs against a live control plane, with no downtime: SQLite is read in one read
transaction (WAL mode: the replica keeps writing meanwhile), etcd in one range, at one revision.
Leased state (instances, join tokens, replica heartbeats) is left out: it is live and comes back
within seconds of a start, as proxies report and replicas beat.

Restore is an offline step, as etcd's own snapshot restore is: into a stopped control plane's data
dir and store. It refuses a store that holds anything, and a DIR/ca with another CA, unless
--force (then the store is cleared first and the old DIR/ca kept as DIR/ca.replaced-<sha256 prefix>).
Started on the restored state, the control plane serves the same config versions, and hosts that
joined before keep working: their certificates chain to the restored CA.

The file (JSON, written 0600): everything a reader may see in the clear (the history is what
`glassmesh history` shows), and `secret`: AES-256-GCM under a key derived from the operator's
passphrase with scrypt, holding the CA key (and the store's own copy of it, which the CA passphrase
already encrypts). The rest of the file is the cipher's associated data, so a wrong passphrase and
an edited file both fail to open, before anything is written anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from glassmesh import __version__
from glassmesh.ca import CA, CAError, ca_from_pem, ca_key_pem, load_ca, save_ca
from glassmesh.control.identity import CA_KEY, CA_KIND, ca_sha256
from glassmesh.control.store import Store
from glassmesh.files import write_private

FORMAT, FORMAT_VERSION = "glassmesh-backup", 1
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1  # about 0.1 s and 32 MiB: cheap once, dear a billion times
MIN_PASSPHRASE = 12


class BackupError(Exception):
    """A backup that cannot be made, read or restored; the message says why and what to do."""


@dataclass
class Opened:
    """A backup file decrypted and checked: what restore writes."""

    doc: dict[str, Any]  # the file, its secret part decrypted into `secret`
    ca: CA
    secret: dict[str, Any]

    @property
    def state(self) -> dict[str, Any]:
        return self.doc["state"]  # type: ignore[no-any-return]


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _key(passphrase: bytes, salt: bytes, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)


def _aad(doc: dict[str, Any]) -> bytes:
    """What the cipher authenticates besides the secret: the whole file but the ciphertext itself."""
    public = {k: v for k, v in doc.items() if k != "secret"}
    public["secret"] = {k: v for k, v in doc["secret"].items() if k != "ciphertext"}
    return hashlib.sha256(json.dumps(public, sort_keys=True, separators=(",", ":")).encode()).digest()


def check_passphrase(passphrase: bytes) -> None:
    if len(passphrase) < MIN_PASSPHRASE:
        raise BackupError(f"the backup passphrase must be at least {MIN_PASSPHRASE} characters")


async def make_backup(store: Store, ca_dir: str | Path, passphrase: bytes, source: str) -> bytes:
    """The backup file's bytes: the store's durable state and the CA of DIR/ca, its secrets encrypted."""
    check_passphrase(passphrase)
    try:
        ca = load_ca(ca_dir)
    except CAError as e:
        raise BackupError(f"cannot read the CA: {e}") from None
    state = await store.export_state()
    store_ca = dict(state["records"].get(CA_KIND, {}).get(CA_KEY, {}))
    if store_ca:  # its key (encrypted with the CA passphrase, when there) goes into the secret part
        state["records"][CA_KIND][CA_KEY] = {k: v for k, v in store_ca.items() if k != "key_pem"}
    secret = {"ca_key_pem": ca_key_pem(ca).decode(), "store_ca_key_pem": store_ca.get("key_pem")}
    salt, nonce = os.urandom(16), os.urandom(12)
    doc: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "created": time.time(), "glassmesh": __version__,
        "source": source, "trust_domain": ca.trust_domain, "ca_sha256": ca_sha256(ca),
        "ca_cert_pem": ca.cert_pem.decode(),
        "config_version": state["versions"][-1]["version"] if state["versions"] else 0,
        "state": state,
        "secret": {"cipher": "AES-256-GCM", "kdf": "scrypt", "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P,
                   "salt": _b64(salt), "nonce": _b64(nonce)},
    }
    ct = AESGCM(_key(passphrase, salt)).encrypt(nonce, json.dumps(secret).encode(), _aad(doc))
    doc["secret"]["ciphertext"] = _b64(ct)
    return json.dumps(doc, indent=1).encode() + b"\n"


def write_backup(path: str | Path, data: bytes) -> None:
    """0600 from the first byte (written aside, then renamed): it holds the CA key, encrypted or not."""
    try:
        write_private(Path(path), data)
    except OSError as e:
        raise BackupError(f"cannot write {path}: {e.strerror or e}") from None


def open_backup(data: bytes, passphrase: bytes, name: str = "the backup") -> Opened:
    """Read, authenticate and decrypt a backup; BackupError (nothing else done) when it cannot be."""
    try:
        doc = json.loads(data)
        if doc.get("format") != FORMAT:
            raise BackupError(f"{name} is not a glassmesh backup")
        if doc.get("format_version") != FORMAT_VERSION:
            raise BackupError(f"{name} has format version {doc.get('format_version')}; this glassmesh "
                              f"({__version__}) reads version {FORMAT_VERSION}")
        sec = doc["secret"]
        key = _key(passphrase, base64.b64decode(sec["salt"]), int(sec["n"]), int(sec["r"]), int(sec["p"]))
        try:
            clear = AESGCM(key).decrypt(base64.b64decode(sec["nonce"]), base64.b64decode(sec["ciphertext"]),
                                        _aad(doc))
        except InvalidTag:
            raise BackupError(f"{name} cannot be opened with this passphrase (wrong passphrase, or the file "
                              f"was altered); nothing was written") from None
        secret = json.loads(clear)
        ca = ca_from_pem(doc["ca_cert_pem"].encode(), secret["ca_key_pem"].encode(), doc["trust_domain"],
                         cert_name=f"{name}'s CA certificate", key_name=f"{name}'s CA key")
        if ca_sha256(ca) != doc["ca_sha256"]:
            raise BackupError(f"{name}'s CA does not match its recorded sha256")
        for k in ("versions", "hosts", "records"):
            if not isinstance(doc["state"].get(k), list if k != "records" else dict):
                raise BackupError(f"{name}: state.{k} is missing or malformed")
    except (ValueError, KeyError, TypeError, CAError) as e:
        raise BackupError(f"{name} is damaged: {type(e).__name__}: {e}") from None
    return Opened(doc, ca, secret)


async def restore(store: Store, ca_dir: str | Path, opened: Opened, force: bool) -> list[str]:
    """Write a backup into a stopped control plane's store and DIR/ca; the lines to tell the operator."""
    said: list[str] = []
    d = Path(ca_dir)
    here: CA | None = None
    if d.exists():
        try:
            here = load_ca(d)
        except CAError as e:
            if not force:
                raise BackupError(f"{d} holds a CA that cannot be read ({e}); --force replaces it") from None
    other_ca = here is not None and ca_sha256(here) != ca_sha256(opened.ca)
    if not await store.is_empty():
        cur = await store.current()
        if not force:
            raise BackupError(f"the store already holds state (config version {cur.version if cur else 0}, "
                              f"hosts and records): restoring would overwrite it. Give --force to replace it, "
                              f"or restore into an empty store; nothing was written")
        said.append(f"cleared the store (it was at config version {cur.version if cur else 0})")
    if other_ca and not force:
        raise BackupError(f"{d} holds another CA (sha256 {ca_sha256(here)[:16]}...) than the backup's "  # type: ignore[arg-type]
                          f"({opened.doc['ca_sha256'][:16]}...): give --force to replace it; nothing was written")
    state = json.loads(json.dumps(opened.state))
    store_key = opened.secret.get("store_ca_key_pem")
    if store_key and CA_KEY in state["records"].get(CA_KIND, {}):
        state["records"][CA_KIND][CA_KEY]["key_pem"] = store_key
    if d.exists() and (other_ca or here is None):
        aside = d.with_name(f"{d.name}.replaced-{int(time.time())}")
        shutil.move(str(d), str(aside))
        said.append(f"kept the CA that was in {d} as {aside}")
    save_ca(d, opened.ca)
    await store.import_state(state, replace=force)
    n = len(state["versions"])
    said.append(f"restored {n} config version{'s' * (n != 1)} (current: {state['versions'][-1]['version'] if n else 0}), "
                f"{len(state['hosts'])} host(s), CA sha256 {opened.doc['ca_sha256'][:16]}... into {d}")
    return said
