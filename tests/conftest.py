"""Every test runs as a user with an empty config dir of its own, never the real user's.

The CLI reads (and `glassmesh demo` writes) the operator credential in
$XDG_CONFIG_HOME/glassmesh; a test must neither depend on what is there on
the machine nor leave anything behind in it. Likewise `glassmesh proxy` and
`glassmesh control` read their config files from $GLASSMESH_CONFIG_DIR
(/etc/glassmesh when unset): a host's real proxy.yaml must not change what a
test's proxy does, so it points at an empty directory too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_config_home() -> Iterator[None]:
    d = tempfile.mkdtemp(prefix="gm-config-")
    daemons = os.path.join(d, "daemons")  # never created: no proxy.yaml or control.yaml unless a test writes one
    old = {k: os.environ.get(k) for k in ("XDG_CONFIG_HOME", "GLASSMESH_CONFIG_DIR")}
    os.environ.update({"XDG_CONFIG_HOME": d, "GLASSMESH_CONFIG_DIR": daemons})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def dist_dir() -> Iterator[Path]:
    """`make dist` of this tree (sdist, then the wheel from it), built once per session for every test that
    installs glassmesh as an operator would (tests/e2e/test_package.py, tests/fleet)."""
    from tests.packaging import build, copy_tree

    root = Path(tempfile.mkdtemp(prefix="gm-dist-"))
    try:
        yield build(copy_tree(root / "src"), root / "dist")
    finally:
        shutil.rmtree(root, ignore_errors=True)
