"""Small file helpers for the CA: atomic writes, private keys never world-readable.

A key file is created with mode 0600 from the start (not chmod-ed after the
bytes are already on disk), and every file is written to a temporary name in
the same directory and renamed into place, so a crash never leaves half a PEM
where a proxy would read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write `data` to `path` atomically, with permissions `mode`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; widen it only for public files.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a private key: mode 0600, atomically."""
    write_atomic(path, data, mode=0o600)
