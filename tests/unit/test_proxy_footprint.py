"""What a proxy holds in memory at idle: only the data plane, not what rare paths need.

Each module below costs RSS in every proxy on every host (bench/footprint.py measures it): the
control-plane client (aiohttp) is for proxies under a control plane only; cryptography (~11 MB) is
never loaded by a proxy (it reads its certificates with certfacts.py, a child makes its keys);
prometheus_client (~4.5 MB,
with http.server, email, wsgiref) for the first scrape of /metrics; yaml for a config file;
rich for the CLI's error output; tempfile (with shutil, bz2, lzma) and difflib for writing files
and hinting at a mistyped key. They are imported where used, and checked here in a fresh
interpreter that imports what a starting proxy imports.
"""

import subprocess
import sys

HEAVY = ("aiohttp", "cryptography", "prometheus_client", "yaml", "rich", "difflib", "tempfile", "ctypes.util",
         "glassmesh.control", "glassmesh.ca")

CHECK_FILE = """
import sys
from glassmesh.cli.main import cli
try:
    cli(["proxy", "--config", "/nonexistent/snapshot.json"], standalone_mode=False)
except Exception:
    pass
import glassmesh.proxy.server  # everything a file-configured proxy runs
print(sorted(m for m in HEAVY if m in sys.modules))
"""

CHECK_CONTROL = """
import sys
from glassmesh.cli.main import cli
import glassmesh.cli.proxy_cmd, glassmesh.proxy.server, glassmesh.proxy.watch  # a proxy started with --control
from glassmesh.proxy import enroll
enroll.ProxyIdentity.load("/nonexistent")  # certificate files, no host identity
print(sorted(m for m in HEAVY if m in sys.modules and m != "tempfile"))  # aiohttp's urllib.request imports it
"""

CHECK_JOINED = """
import asyncio, sys
from types import SimpleNamespace
import glassmesh.cli.proxy_cmd, glassmesh.proxy.server, glassmesh.proxy.watch
from glassmesh.proxy import enroll, keygen
ident = enroll.ProxyIdentity.load(DATA)  # what a joined proxy does every minute: read its certificates
assert ident._ok(ident.path("host.pem"), ident.spiffe_id, 0) and enroll.der_sha256(open(ident.path("ca.pem")).read())
assert ident.next_due(SimpleNamespace(local_services=[])) > 0
assert asyncio.run(keygen.new_key(ident.spiffe_id)).csr_pem  # and at a renewal: a key, made in a child
print(sorted(m for m in HEAVY if m in sys.modules and m != "tempfile"))
"""

CHECK_SCRAPE = """
import sys
from glassmesh.proxy import stats
before = "prometheus_client" in sys.modules
text = stats.render(stats.merge([]))
print(before, "prometheus_client" in sys.modules, b"# TYPE glassmesh_requests_total counter" in text)
"""


def _run(code: str, **names: str) -> str:
    head = "".join(f"{k} = {v!r}\n" for k, v in {"HEAVY": HEAVY, **names}.items())
    out = subprocess.run([sys.executable, "-c", head + code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_file_configured_proxy_imports_only_the_data_plane():
    assert _run(CHECK_FILE) == "[]"


def test_proxy_under_a_control_plane_holds_its_client_but_not_cryptography():
    """aiohttp is its client; cryptography waits for a join or a renewal (a host provisioned with files has none)."""
    assert _run(CHECK_CONTROL) == "['aiohttp']"


def test_joined_proxy_reads_certificates_and_makes_keys_without_cryptography(tmp_path):
    """A joined host checks its certificates every minute and renews them: certfacts.py and a child (keygen.py)."""
    import json
    import shutil

    from glassmesh.ca import init_ca

    ca = init_ca(tmp_path / "ca", "glassmesh.local")
    ident = tmp_path / "data" / "identity"
    ident.mkdir(parents=True, mode=0o700)
    ca.issue("host", "host1").write(ident / "host")
    shutil.copy(tmp_path / "ca" / "ca.pem", ident / "ca.pem")
    (ident / "identity.json").write_text(json.dumps({"host": "host1", "trust_domain": "glassmesh.local"}))
    assert _run(CHECK_JOINED, DATA=str(tmp_path / "data")) == "['aiohttp']"


def test_metrics_load_prometheus_client_at_the_first_scrape():
    assert _run(CHECK_SCRAPE) == "False True True"


def test_data_plane_never_imports_the_control_plane_or_the_ca():
    """The planes meet only through model/ and api/ (DESIGN.md): checked on every import in the source."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "glassmesh"
    bad = []
    for pkg in ("proxy", "protocols", "model", "api"):
        for path in (root / pkg).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                bad += [f"{path.name}: {n}" for n in names
                        if n.startswith(("glassmesh.control", "glassmesh.ca", "glassmesh.demo", "glassmesh.cli"))]
    assert bad == []
