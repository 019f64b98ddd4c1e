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
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# A suite started in the background by a non-interactive shell (`make test &`, nohup) inherits SIGINT
# ignored, and Python keeps an inherited SIG_IGN; so would every process a test starts, and a CLI a test
# interrupts the way Ctrl-C does (`glassmesh links --watch`) would never see it. Caught here, SIGINT is
# back to its default in every child after exec, however the suite was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


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
def dist_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """`make dist` of this tree (sdist, then the wheel from it) for every test that installs glassmesh as an
    operator would (tests/e2e/test_package.py, tests/fleet): built once for all workers, and reused by later
    runs only while the tree is byte for byte the same (tests/packaging.py, cached_build)."""
    from tests.packaging import build_cache, cached_build, copy_tree

    root = Path(tempfile.mkdtemp(prefix="gm-dist-"))
    try:
        yield cached_build(build_cache(request.config, tmp_path_factory), copy_tree(root / "src"))
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def demo_addresses() -> Iterator[None]:
    """Held by a test while it runs `glassmesh demo`, whose addresses are fixed (127.0.0.1:4200, 127.0.0.11-14).

    One lock for the whole machine (not only this run: another checkout's suite may run too), so two
    demos never race for the addresses; pytest-xdist keeps them on one worker (xdist_group "demo") as well.
    """
    from tests.packaging import locked

    with locked(Path(tempfile.gettempdir()) / f"glassmesh-demo-addresses-{os.getuid()}.lock"):
        yield


# Under pytest-xdist (`make test` runs two workers, --dist loadgroup), tests that share something only one
# of them can have run on one worker, one after the other, named by the fixture that gives them that thing:
#   wheel: the built wheel and the venvs installed from it (session fixtures: made once, on that worker);
#   demo:  the demo's fixed addresses (the lock in `demo_addresses` guards them across workers too).
# A test that needs both goes with the wheel; the lock still keeps its demo apart.
XDIST_GROUPS = (("dist_dir", "wheel"), ("demo_addresses", "demo"))


def pytest_itemcollected(item: pytest.Item) -> None:
    """Marks as each test is collected: before any pytest_collection_modifyitems (xdist's reads the marks)."""
    names = getattr(item, "fixturenames", ())
    group = next((g for fixture, g in XDIST_GROUPS if fixture in names), None)
    if group is not None and not any(True for _ in item.iter_markers("xdist_group")):
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.hookimpl(trylast=True)  # after xdist's own hook, which should have done it
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Names each grouped test's group in its node id (`ID@group`), which xdist's loadgroup scheduler reads.

    pytest-xdist 3.8 does this by setting `item._nodeid`, which pytest 9 no longer reads (a node's id is
    `item._id`): with these two versions the groups would silently not be kept together. Done here when
    xdist's did not take, and checked, so a later change of either fails the run instead.
    """
    if not getattr(config.option, "loadgroup", False):  # set on xdist's workers under --dist loadgroup
        return
    from _pytest.nodeid import NodeId

    for item in items:
        groups = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                         for m in item.iter_markers("xdist_group")})
        if not groups:
            continue
        suffix = "@" + "_".join(groups)
        if not item.nodeid.endswith(suffix):
            item._id = NodeId.parse(item.nodeid + suffix)  # type: ignore[attr-defined]
        if not item.nodeid.endswith(suffix):
            raise pytest.UsageError(f"cannot put {item.nodeid} in xdist group {groups}: pytest-xdist and pytest "
                                    "disagree on node ids; see tests/conftest.py")
