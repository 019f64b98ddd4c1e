"""The hot path runs compiled (mypyc) in the installs `make` makes, and never from a stale build."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from glassmesh.buildinfo import HOT_MODULES, compiled_modules, hot_path
from glassmesh.proxy.stats import Stats, render

REPO = Path(__file__).resolve().parents[2]


def test_setup_and_makefile_name_the_same_hot_modules() -> None:
    setup = (REPO / "setup.py").read_text()
    make = (REPO / "Makefile").read_text()
    for name in HOT_MODULES:
        path = name.replace(".", "/") + ".py"
        assert f'"{path}"' in setup, path
        assert path in make, path


@pytest.mark.skipif(os.environ.get("GLASSMESH_PURE", "") not in ("", "0"), reason="pure-Python install asked for")
def test_hot_path_is_compiled() -> None:
    assert hot_path() == "mypyc", f"compiled: {compiled_modules()}; run `make venv` (needs gcc)"


def test_no_compiled_module_is_older_than_its_source() -> None:
    for name in compiled_modules():
        mod = importlib.import_module(name)
        built = Path(mod.__file__ or "")
        source = REPO / (name.replace(".", "/") + ".py")
        assert built.stat().st_mtime >= source.stat().st_mtime, (
            f"{built.name} is older than {source.name}: it would run old code; run `make venv`")


def test_metrics_say_which_build_runs() -> None:
    text = render(Stats().dump()).decode()
    assert f'glassmesh_build_info{{hot_path="{hot_path()}",version="0.1.0"}} 1.0' in text
