"""A unix socket listener never exists with a wider mode than its own, not even between bind and chmod."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

import pytest

from glassmesh.proxy import listeners


def test_the_socket_is_born_with_its_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_chmod = os.chmod

    def chmod(path: str, mode: int) -> None:  # what any local process could have connected to until now
        seen.append(stat.S_IMODE(os.stat(path).st_mode))
        real_chmod(path, mode)

    monkeypatch.setattr(os, "chmod", chmod)
    d = Path(tempfile.mkdtemp())
    try:
        os.umask(old := os.umask(0o022))  # the usual umask, whatever the test runner has
        spec = listeners.Spec(str(d / "a.sock"), "outbound", "a", "0660", None)
        sock = listeners._bind_unix(spec)
        sock.close()
        assert seen and seen[0] == 0o660, [oct(m) for m in seen]
        assert stat.S_IMODE(os.stat(d / "a.sock").st_mode) == 0o660
        assert os.umask(old) == old  # the process umask is left as it was
    finally:
        for p in d.iterdir():
            p.unlink()
        d.rmdir()
