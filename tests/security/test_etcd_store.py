"""The etcd store holds everything, the CA key included: it is reached over TLS with a client certificate,
and what it holds of the CA is encrypted with a passphrase kept elsewhere.

A real etcd started with TLS and --client-cert-auth, a real `glassmesh control` on it; the attacks are a
client without a certificate, plain HTTP, and a thief holding a full copy of the store's keys.
"""

from __future__ import annotations

import base64
import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.e2e.test_control_plane import CLI, Control
from tests.etcd_cluster import EtcdCluster

PASSPHRASE = "correct horse battery staple"


@pytest.fixture(scope="module")
def etcd_tls() -> Iterator[EtcdCluster]:
    with EtcdCluster.started(size=1, tls=True) as cluster:
        yield cluster


def _args(c: EtcdCluster, passfile: Path) -> list[str]:
    assert c.tls_files is not None
    t = c.tls_files
    return ["--store", c.url, "--etcd-ca", str(t.ca), "--etcd-cert", str(t.client_cert), "--etcd-key",
            str(t.client_key), "--ca-passphrase-file", str(passfile)]


def _passfile(d: Path, text: str = PASSPHRASE) -> Path:
    p = d / f"ca-passphrase-{len(list(d.glob('ca-passphrase-*')))}"
    p.touch(mode=0o600)
    p.write_text(text + "\n")
    return p


def _range(c: EtcdCluster, ctx: ssl.SSLContext | None, key: bytes, prefix: bool = True) -> dict:
    body = {"key": base64.b64encode(key).decode()}
    if prefix:
        body["range_end"] = base64.b64encode(key[:-1] + bytes([key[-1] + 1])).decode()
    req = urllib.request.Request(c.members[0].client_url + "/v3/kv/range", json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
        return json.loads(r.read())


def test_control_plane_on_etcd_over_tls_keeps_the_ca_key_encrypted(etcd_tls: EtcdCluster, tmp_path: Path) -> None:
    c = Control(tmp_path, extra=_args(etcd_tls, _passfile(tmp_path)))
    try:
        (tmp_path / "mesh.yaml").write_text("services:\n  - {name: a}\nhosts:\n  - {name: h1, address: "
                                            "'127.0.0.1:4143', services: [a]}\n")
        assert c.cli("apply", "-f", str(tmp_path / "mesh.yaml")).returncode == 0
        assert c.cli("get").returncode == 0
        # What a thief with a full copy of the store (the etcd client certificate included) finds.
        assert etcd_tls.tls_files is not None
        found = _range(etcd_tls, etcd_tls.tls_files.client_context(), b"/glassmesh/")
        records = {base64.b64decode(kv["key"]).decode(): base64.b64decode(kv["value"]) for kv in found["kvs"]}
        ca = [json.loads(v) for k, v in records.items() if "/ca" in k and b"key_pem" in v]
        assert ca, sorted(records)
        key_pem = ca[0]["key_pem"].encode()
        assert key_pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----"), key_pem[:60]
        assert b"BEGIN PRIVATE KEY" not in b"".join(records.values()), "an unencrypted key is in the store"
        with pytest.raises(TypeError):  # no passphrase: nothing to sign with
            serialization.load_pem_private_key(key_pem, password=None)
        with pytest.raises(ValueError):
            serialization.load_pem_private_key(key_pem, password=b"a guess at the passphrase")
    finally:
        c.stop()
    # A second replica with the wrong passphrase refuses to start, saying why.
    other = tmp_path / "other"
    other.mkdir()
    p = subprocess.run([*CLI, "control", "--data", str(other / "data"), "--listen", "127.0.0.1:0",
                        *_args(etcd_tls, _passfile(other, "not the passphrase at all"))],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "cannot be decrypted with the passphrase given" in p.stderr, p.stderr


def test_etcd_refuses_a_client_without_a_certificate(etcd_tls: EtcdCluster) -> None:
    assert etcd_tls.tls_files is not None
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)) as e:
        _range(etcd_tls, etcd_tls.tls_files.client_context(with_cert=False), b"/glassmesh/")
    assert "SSL" in repr(e.value).upper() or "EOF" in repr(e.value).upper(), e.value  # etcd (Go) ends it bare
    # Plain HTTP to the TLS port gets no data either.
    with socket.create_connection(("127.0.0.1", etcd_tls.members[0].client_port), timeout=5) as s:
        s.sendall(b'POST /v3/kv/range HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}')
        data = s.recv(65536)
    assert b'"kvs"' not in data and b"200 OK" not in data, data


@pytest.mark.parametrize("case", ["plain_remote", "no_passphrase", "short_passphrase", "cert_without_ca"])
def test_control_plane_refuses_an_unsafe_etcd_store(tmp_path: Path, case: str) -> None:
    args = {
        "plain_remote": ["--store", "etcd://10.9.9.9:2379", "--ca-passphrase-file", str(_passfile(tmp_path))],
        "no_passphrase": ["--store", "etcd://127.0.0.1:2379"],
        "short_passphrase": ["--store", "etcd://127.0.0.1:2379", "--ca-passphrase-file",
                             str(_passfile(tmp_path, "short"))],
        "cert_without_ca": ["--store", "etcds://127.0.0.1:2379", "--etcd-cert", str(_passfile(tmp_path)),
                            "--etcd-key", str(_passfile(tmp_path))],
    }[case]
    want = {"plain_remote": "is not on loopback", "no_passphrase": "--ca-passphrase-file",
            "short_passphrase": "at least 12 characters", "cert_without_ca": "--etcd-cert needs --etcd-ca"}[case]
    p = subprocess.run([*CLI, "control", "--data", str(tmp_path / "data"), "--listen", "127.0.0.1:0", *args],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and want in p.stderr, p.stderr
    assert "Traceback" not in p.stderr
