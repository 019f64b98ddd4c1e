"""The security suite performs each attack against real processes; it shares the e2e suite's fixtures."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ab, mesh, pytest_runtest_makereport  # noqa: F401 - fixtures and the log hook
from tests.e2e.test_control_plane import MESH, Control


@pytest.fixture
def control(tmp_path: Path) -> Iterator[Control]:
    """A control plane (operator API with its admin credential, the insecure listener) with MESH applied."""
    c = Control(tmp_path)
    try:
        (tmp_path / "mesh.yaml").write_text(MESH)
        assert c.cli("apply", "-f", str(tmp_path / "mesh.yaml")).returncode == 0
        yield c
    finally:
        c.stop()
