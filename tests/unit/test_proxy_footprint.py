"""A proxy without a control plane does not load the control-plane client (aiohttp, cryptography: ~15 MB RSS)."""

import subprocess
import sys

CHECK = """
import sys
from glassmesh.cli.main import cli
try:
    cli(["proxy", "--config", "/nonexistent/snapshot.json"], standalone_mode=False)
except Exception:
    pass
import glassmesh.proxy.server  # everything a file-configured proxy runs
print(sorted(m for m in ("aiohttp", "cryptography", "yaml", "rich", "glassmesh.control") if m in sys.modules))
"""


def test_file_configured_proxy_imports_only_the_data_plane():
    out = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout


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
