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
import stat
from pathlib import Path


class InsecureFile(Exception):
    """A secret file others can read: refused, as ssh refuses such a key, with the fix in the message."""


def check_private(path: str | Path, what: str = "private key") -> None:
    """Refuse a secret that the group or others may read (or write): it may already have been copied.

    Only the mode is judged, not the owner: a key the service user cannot
    read fails later with its own clear error.
    """
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return  # reading it says that better
    if mode & 0o077:
        raise InsecureFile(f"{what} {path} is accessible by group or others (mode {mode:04o}): anyone who read it "
                           f"can act with it; run `chmod 600 {path}` (and replace the key if others may have "
                           f"copied it)")


def private_dir(path: str | Path) -> None:
    """A directory only its owner may enter (0700): created so, and an existing one narrowed to it.

    Data directories hold keys, snapshots and stores; narrowing our own
    directory is safe, so it is done rather than refused.
    """
    os.makedirs(path, mode=0o700, exist_ok=True)
    if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
        os.chmod(path, 0o700)


def write_atomic(path: str | Path, data: bytes, mode: int = 0o644) -> None:
    import tempfile  # with shutil, bz2, lzma, random: not held by a proxy that never writes a file

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
