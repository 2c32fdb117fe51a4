"""File helpers shared by the package: SHA-256 of a file, crash-safe writes, why a safe load refused a file."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Write `path` so that readers see either the old file or the whole new one.

    Yields a handle on a temporary file beside `path`; when the block ends without error
    the data is flushed and fsynced, given the usual permissions (mkstemp makes 0600) and
    renamed over `path`. On error the temporary file is removed and `path` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def try_lock(path: str | Path) -> Any:
    """Take the file lock `path` (a `filelock.FileLock`) at once; None when another process holds it."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    return lock


def refused_pickle_reason(exc: BaseException) -> str:
    """What `torch.load(weights_only=True)` refused, from its UnpicklingError, without torch's
    advice to reload with weights_only=False (never do that with an untrusted file)."""
    for line in str(exc).splitlines():
        if re.search(r"unsupported global|WeightsUnpickler error|not an allowed global", line, re.IGNORECASE):
            return line.strip()
    return "an object that weights-only loading does not allow"
