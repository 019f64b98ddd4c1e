"""The hot path runs compiled (mypyc) in the installs `make` makes, and never from a stale build."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
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


def _make_venv_plan(*args: str) -> str:
    return subprocess.run(["make", "-n", "--no-print-directory", "venv", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60, check=True).stdout


def test_the_venv_is_made_anew_when_another_python_is_asked_for() -> None:
    """A venv belongs to the interpreter that made it (its compiled hot path, its entry points)."""
    recorded = REPO / ".venv" / ".python"
    assert Path(sys.prefix).resolve() == (REPO / ".venv").resolve() and recorded.exists(), "run from `make`'s venv"
    # The venv runs the interpreter make recorded, and make would keep it as it is for that one.
    assert Path(sys._base_executable).resolve() == Path(recorded.read_text().strip())
    other = shutil.which("env")
    assert other is not None
    plan = _make_venv_plan(f"PYTHON={other}")
    assert f"made anew with {Path(other).resolve()}" in plan and f"{other} -m venv .venv" in plan, plan


def test_make_prefers_the_system_python_when_it_can_build_the_hot_path() -> None:
    """Debian's python3 is the one production hosts run (README: "Install on hosts"), and it is built with PGO
    and LTO; an interpreter built without them made `make bench` measure about 4% more CPU per request."""
    system = Path("/usr/bin/python3")
    usable = system.exists() and subprocess.run(
        [str(system), "-c", "import ensurepip, sys, sysconfig, os; sys.exit(sys.version_info < (3, 11) or not "
         "os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))"],
        capture_output=True, timeout=30).returncode == 0
    plan = _make_venv_plan("-B")  # -B: plan the whole build, whatever is up to date
    picked = "/usr/bin/python3 -m venv .venv" if usable else "\npython3 -m venv .venv"
    assert picked in plan, plan
