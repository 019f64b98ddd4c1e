"""The wheel build the package and fleet tests share (tests/packaging.py): reused only for the very same tree.

A stale wheel would make those tests pass on code that is no longer there, so any change to what the
build reads (a byte, a file's executable bit, a file added) must give another key, and another build.
The build itself is counted here, not run (it takes minutes; tests/e2e/test_package.py runs it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests import packaging


def _tree(root: Path) -> Path:
    (root / "glassmesh").mkdir(parents=True)
    (root / "glassmesh" / "http.py").write_text("X = 1\n")
    (root / "setup.py").write_text("setup()\n")
    return root


def test_the_digest_changes_with_any_byte_mode_or_file(tmp_path: Path) -> None:
    src = _tree(tmp_path / "src")
    first = packaging.tree_digest(src)
    assert packaging.tree_digest(src) == first
    (src / "glassmesh" / "http.py").write_text("X = 2\n")
    second = packaging.tree_digest(src)
    assert second != first
    os.chmod(src / "setup.py", 0o755)
    third = packaging.tree_digest(src)
    assert third != second
    (src / "glassmesh" / "new.py").write_text("")
    assert packaging.tree_digest(src) != third


def test_a_build_is_reused_for_the_same_tree_and_redone_for_a_changed_one(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    builds: list[Path] = []

    def fake_build(src: Path, out: Path, *flags: str) -> Path:
        builds.append(src)
        out.mkdir(parents=True)
        (out / "glassmesh-0.1.0.tar.gz").write_text((src / "glassmesh" / "http.py").read_text())
        return out

    monkeypatch.setattr(packaging, "build", fake_build)
    cache = tmp_path / "cache"
    src = _tree(tmp_path / "src")
    dist = packaging.cached_build(cache, src)
    assert packaging.cached_build(cache, src) == dist and len(builds) == 1
    (src / "glassmesh" / "http.py").write_text("X = 2\n")
    changed = packaging.cached_build(cache, src)
    assert changed != dist and len(builds) == 2
    assert (changed / "glassmesh-0.1.0.tar.gz").read_text() == "X = 2\n"
    assert packaging.cached_build(cache, src, "--wheel") != changed and len(builds) == 3  # flags are in the key
