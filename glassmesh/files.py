"""Writing files that another process reads: atomically, durably, private keys never world-readable.

Every file is written to a temporary name in the same directory, fsync-ed,
renamed into place, and the directory fsync-ed, so that a reader (or a crash)
sees the old file or the new one, whole. A key file is created with mode 0600
from the start, not chmod-ed after its bytes are on disk. Shared by the CA,
the control plane and the proxy (certificates, last-known-good snapshots).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)  # mkstemp made it 0600; widen it only for public files
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # the rename itself must survive a power cut
    finally:
        os.close(dfd)


def write_private(path: str | Path, data: bytes) -> None:
    """A private key: mode 0600, atomically."""
    write_atomic(path, data, mode=0o600)
