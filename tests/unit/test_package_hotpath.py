"""Which build of the hot path runs is never a silent guess: part interpreted, or compiled from an older source.

Each case is a copy of this tree's package with its compiled modules, changed
the way a broken install would be (a compiled module missing, a source edited
after the build), imported by a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from glassmesh.buildinfo import HOT_MODULES, STALE_AFTER_S, hot_path

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(hot_path() != "mypyc", reason="needs the compiled build (make venv)")

N = len(HOT_MODULES)
PROBE = ("import json; from glassmesh.buildinfo import hot_path_doc, hot_path_warning; "
         "print(json.dumps([hot_path_doc(), hot_path_warning()]))")


def _copy(tmp: Path) -> Path:
    shutil.copytree(REPO / "glassmesh", tmp / "glassmesh", ignore=shutil.ignore_patterns("__pycache__"))
    for so in REPO.glob("glassmesh_hot__mypyc.*.so"):
        shutil.copy2(so, tmp / so.name)
    return tmp


def _probe(root: Path) -> tuple[dict[str, object], str | None]:
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, cwd=root,
                       env=dict(os.environ, PYTHONPATH=str(root)))
    assert r.returncode == 0, r.stderr
    doc, warning = json.loads(r.stdout)
    return doc, warning


def _so(root: Path, module: str) -> Path:
    (so,) = (root / Path(*module.split(".")[:-1])).glob(module.rpartition(".")[2] + ".cpython-*.so")
    return so


def test_a_whole_compiled_copy_says_nothing(tmp_path: Path) -> None:
    doc, warning = _probe(_copy(tmp_path))
    assert doc == {"build": "mypyc", "compiled": N, "of": N, "interpreted": [], "stale": []}
    assert warning is None


def test_missing_compiled_modules_are_named_with_the_cost(tmp_path: Path) -> None:
    """The compiled modules gone (a copied tree, an install that lost them): all of it runs from the .py files."""
    root = _copy(tmp_path)
    for so in [*root.rglob("*.so")]:
        so.unlink()
    doc, warning = _probe(root)
    assert doc == {"build": "python", "compiled": 0, "of": N, "interpreted": list(HOT_MODULES), "stale": []}
    assert warning == (
        f"WARNING: glassmesh proxy runs all of the request path interpreted (pure Python, 0 of {N} hot modules "
        "compiled): about 1.7 times the CPU per request of the compiled build. Install the wheel `make dist` "
        "builds (it carries them compiled), or reinstall with gcc and the Python headers.")


def test_a_source_edited_after_the_build_is_stale(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    so = _so(root, "glassmesh.proxy.http")
    src = root / "glassmesh" / "proxy" / "http.py"
    built = so.stat().st_mtime
    os.utime(src, (built + STALE_AFTER_S + 60, built + STALE_AFTER_S + 60))
    doc, warning = _probe(root)
    assert doc["build"] == "stale" and doc["stale"] == ["glassmesh.proxy.http"] and doc["compiled"] == N, doc
    assert warning is not None and "older than their source beside them (glassmesh.proxy.http)" in warning


def test_install_order_within_seconds_is_not_stale(tmp_path: Path) -> None:
    """pip writes a wheel's files in no set order: a source a few seconds newer than its module is fine."""
    root = _copy(tmp_path)
    for mod in HOT_MODULES:
        so = _so(root, mod)
        src = root / Path(*mod.split(".")).with_suffix(".py")
        os.utime(src, (so.stat().st_mtime + 5, so.stat().st_mtime + 5))
    doc, _ = _probe(root)
    assert doc["build"] == "mypyc", doc
