"""File helpers shared by the package: SHA-256 of a file, crash-safe writes, why a path leads to no file,
why a safe load refused a file."""

from __future__ import annotations

import contextlib
import errno
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


def describe_missing(path: str | Path) -> str:
    """Why `path` (which does not lead to a file) cannot be read: a missing entry, a broken or
    looping symbolic link, a permission problem."""
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "a symbolic link loop (the link leads back to itself)"
        if os.path.islink(path) and exc.errno == errno.ENOENT:
            return f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            return "no such file or directory"
        return (exc.strerror or str(exc)).lower()
    return "not a regular file"


def refused_pickle_reason(exc: BaseException) -> str:
    """What `torch.load(weights_only=True)` refused, from its UnpicklingError, without torch's
    advice (to reload with weights_only=False, or to allow-list the class: never do either
    with an untrusted file)."""
    for line in str(exc).splitlines():
        if re.search(r"unsupported global|WeightsUnpickler error|not an allowed global", line, re.IGNORECASE):
            line = re.sub(r"^WeightsUnpickler error:\s*", "", line.strip())
            return re.split(r"\.?\s+(?:Please|Check|Re-running)\b", line)[0]
    return "an object that weights-only loading does not allow"
