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
