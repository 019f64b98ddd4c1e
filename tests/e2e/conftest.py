"""Fixtures for the end-to-end suite: a fresh `Mesh` per test, torn down even on failure.

When a test fails, the logs of every process its mesh started (proxies and
apps) are attached to the failure report, so a red test says what the proxy
saw without re-running anything.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.harness import App, Host, Mesh


@pytest.fixture
def mesh(request: pytest.FixtureRequest) -> Iterator[Mesh]:
    root = Path(tempfile.mkdtemp(prefix="gm-e2e-"))
    m = Mesh(root)
    request.node._gm_meshes = [*getattr(request.node, "_gm_meshes", []), m]
    try:
        yield m
    finally:
        try:
            m.stop()  # fails the test when a process did not stop cleanly (see harness.Proc)
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call"):
        for m in getattr(item, "_gm_meshes", []):
            for name, text in m.logs():
                rep.sections.append((f"log: {name}", text))


@dataclass
class AB:
    """The basic topology: service a on host1 (a client, no instances) calls b on host2."""

    mesh: Mesh
    h1: Host
    h2: Host
    b: App

    @property
    def outbound(self) -> str:
        return self.h1.outbound("a")


@pytest.fixture(params=["mux", "http1"])
def ab(mesh: Mesh, request: pytest.FixtureRequest) -> AB:
    """Every test on this topology runs with both ways of carrying HTTP between proxies."""
    mesh.peer_protocol = request.param
    h1 = mesh.add_host("host1")
    h2 = mesh.add_host("host2")
    h1.client("a")
    b = h2.http_app("b")
    mesh.start()
    return AB(mesh, h1, h2, b)
