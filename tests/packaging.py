"""Building glassmesh as `make dist` does, and installing it as an operator does: for the package and fleet tests.

A build is a copy of the tree (or of an older commit, from git) run through
`python -m build` with the hot path required compiled; an install is a fresh
venv made by the host's own python3 (Debian's, when there is one) outside the
tree. Building takes minutes on two cores, so the current tree is built once
per session (the `dist_dir` fixture in tests/conftest.py) and shared.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

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
