"""The suite's children get Ctrl-C however the suite was started (tests/conftest.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

CHILD = "import signal; print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)"


def _child_sigint(load_conftest: bool) -> str:
    code = ("import signal, subprocess, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "  # as `make test &` does
            + ("import tests.conftest; " if load_conftest else "")
            + f"print(subprocess.run([sys.executable, '-c', {CHILD!r}], capture_output=True, text=True).stdout)")
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


def test_a_suite_started_ignoring_sigint_still_gives_its_children_ctrl_c() -> None:
    # Without the conftest, the child inherits the ignored SIGINT: the failure a background `make test` had.
    assert _child_sigint(load_conftest=False) == "False"
    assert _child_sigint(load_conftest=True) == "True"
