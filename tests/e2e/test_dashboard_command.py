"""`glassmesh dashboard` as a user runs it: it opens the browser where one can be started, never fails where
none can, and says clearly when there is no control plane to ask."""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

from tests.e2e import test_control_plane
from tests.e2e.operator import cli_env
from tests.e2e.test_control_plane import CLI, Control, free_port

control = test_control_plane.control  # the fixture: a control plane with its admin credential, on free ports


def _run(c: Control, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in cli_env(c.url, c.cred).items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER")}
    return subprocess.run([*CLI, "dashboard", *args], env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_it_opens_the_browser_with_the_link(control: Control, tmp_path: Path) -> None:
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(browser.stat().st_mode | stat.S_IXUSR)
    r = _run(control, {"BROWSER": str(browser)})
    assert r.returncode == 0, r.stderr
    url = re.search(r"^dashboard: (\S+)$", r.stdout, re.M)
    assert url and "opened in your browser" in r.stdout, r.stdout
    assert opened.read_text() == url.group(1)  # the browser got the very link printed


def test_no_browser_is_no_failure(control: Control, tmp_path: Path) -> None:
    # No display at all (a server over ssh): the link is printed, nothing is started.
    r = _run(control, {})
    assert r.returncode == 0 and "dashboard: https://" in r.stdout, (r.stdout, r.stderr)
    assert "opened" not in r.stdout
    # A browser that cannot start: said, and still exit 0.
    r = _run(control, {"BROWSER": str(tmp_path / "no-such-browser")})
    assert r.returncode == 0 and "dashboard: https://" in r.stdout, (r.stdout, r.stderr)
    assert "no browser could be opened: open the link yourself" in r.stdout


def test_no_control_plane_is_a_clear_error(control: Control) -> None:
    r = subprocess.run([*CLI, "dashboard", "--no-open"], capture_output=True, text=True, timeout=60,
                       env={**os.environ, **cli_env(f"https://127.0.0.1:{free_port()}", control.cred)})
    assert r.returncode == 5, (r.stdout, r.stderr)
    assert r.stderr.startswith("error: cannot reach the control plane at https://127.0.0.1:"), r.stderr
    assert "dashboard:" not in r.stdout
