"""Building glassmesh as `make dist` does, and installing it as an operator does: for the package and fleet tests.

A build is a copy of the tree (or of an older commit, from git) run through
`python -m build` with the hot path required compiled; an install is a fresh
venv made by the host's own python3 (Debian's, when there is one) outside the
tree. Building takes minutes on two cores, so a build is shared: `cached_build`
keys it by a digest of the exact tree it builds (every file's path, mode and
bytes, with the interpreter and the build tool's version), keeps it under the
pytest cache dir, and builds under a lock, so the pytest-xdist workers of one
run build each tree once and a later run with the same tree builds nothing. A
changed file is another key: a build is never reused for other sources.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# Debian's own interpreter: the wheel (built by the venv's python) must not need the one that built it.
HOST_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", "*.so",
                              ".pytest_cache", ".ruff_cache", ".hypothesis")


def run(args: list[str], timeout: float, **kw: Any) -> subprocess.CompletedProcess[str]:
    """args, which must exit 0: AssertionError with the end of its output otherwise."""
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def build(src: Path, out: Path, *flags: str) -> Path:
    """`python -m build [flags]` of the source tree `src` into `out` (the hot path must compile)."""
    env = dict(os.environ, GLASSMESH_REQUIRE_COMPILED="1")
    run([sys.executable, "-m", "build", *flags, "--outdir", str(out), str(src)], 1200, env=env, cwd=src.parent)
    return out


def tree_digest(src: Path) -> str:
    """sha256 of every file and link under `src` (relative path, executable bit, bytes): what a build reads."""
    h = hashlib.sha256()
    for p in sorted(src.rglob("*")):
        rel = p.relative_to(src).as_posix().encode()
        if p.is_symlink():
            h.update(b"L\0" + rel + b"\0" + os.readlink(p).encode() + b"\0")
        elif p.is_file():
            data = p.read_bytes()
            h.update(b"F\0" + rel + b"\0" + (b"x" if os.access(p, os.X_OK) else b"-")
                     + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (made 0600 if missing): one holder across processes, freed when they die."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the lock


KEEP_BUILDS = 4  # cached builds kept (the newest): this tree's, the old release's, and a couple of edits back


def cached_build(cache: Path, src: Path, *flags: str) -> Path:
    """`build(src, ..., *flags)` unless a build of exactly this tree (and flags, python, build tool) is in `cache`.

    Holds `cache`/lock while it looks and builds, so concurrent callers (pytest-xdist workers) wait for
    one build rather than each making their own. A build lands under its key only once complete.
    """
    key = hashlib.sha256("\0".join([tree_digest(src), *flags, sys.version, importlib.metadata.version("build")])
                         .encode()).hexdigest()[:32]
    done = cache / key
    with locked(cache / "lock"):
        if not (done / "dist").is_dir():
            partial = cache / f"{key}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            shutil.rmtree(done, ignore_errors=True)
            build(src, partial / "dist", *flags)
            partial.rename(done)
        os.utime(done)  # the newest use: pruning keeps it
        old = sorted((d for d in cache.iterdir() if d.is_dir() and d != done), key=lambda d: d.stat().st_mtime)
        for d in old[:max(0, len(old) - (KEEP_BUILDS - 1))]:
            shutil.rmtree(d, ignore_errors=True)
    return done / "dist"


def build_cache(config: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where builds of the tree are kept (tests/packaging.py, cached_build): the pytest cache dir, shared by
    the run's workers and by later runs; with the cache plugin off, the run's own temp dir (all workers')."""
    cache = getattr(config, "cache", None)
    if cache is not None:
        return Path(cache.mkdir("glassmesh-builds"))
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "glassmesh-builds"


def copy_tree(dest: Path) -> Path:
    """This working tree as it is now (uncommitted edits included), without build products."""
    shutil.copytree(REPO, dest, ignore=SKIP)
    return dest


def export_commit(commit: str, dest: Path) -> Path:
    """The tree of `commit` from this checkout's git history."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], capture_output=True,
                             timeout=120)
    assert archive.returncode == 0, (f"commit {commit} is not in this checkout's history: "
                                     f"{archive.stderr.decode(errors='replace').strip()}")
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, timeout=120)
    return dest


def wheel(dist: Path) -> Path:
    (whl,) = dist.glob("glassmesh-*.whl")
    return whl


def venv(path: Path, *install: str, env: dict[str, str] | None = None) -> Path:
    """A fresh venv at `path` made by the host's python3, with `install` pip-installed into it from outside the tree."""
    run([HOST_PYTHON, "-m", "venv", str(path)], 120, cwd=path.parent)
    env = {**{k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}, **(env or {})}
    run([str(path / "bin" / "pip"), "install", "-q", *install], 900, cwd=path.parent, env=env)
    return path
