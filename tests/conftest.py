"""Every test runs as a user with an empty config dir of its own, never the real user's.

The CLI reads (and `glassmesh demo` writes) the operator credential in
$XDG_CONFIG_HOME/glassmesh; a test must neither depend on what is there on
the machine nor leave anything behind in it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_config_home() -> Iterator[None]:
    d = tempfile.mkdtemp(prefix="gm-config-")
    old = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = d
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XDG_CONFIG_HOME", None)
        else:
            os.environ["XDG_CONFIG_HOME"] = old
        shutil.rmtree(d, ignore_errors=True)
