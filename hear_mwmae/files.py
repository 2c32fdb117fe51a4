"""File helpers shared by the package: SHA-256 of a file, crash-safe writes, why a path leads to
no file, and how to say what was wrong with a file we refused without echoing its contents or
relaying unsafe advice."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import zipfile
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


_MAX_REASON = 160  # characters of a library's error message relayed to the user
# Sentences of torch's load errors that advise weakening the safe load; never relayed.
_UNSAFE_ADVICE = re.compile(r"weights_only|safe_globals|allowlist|trust", re.IGNORECASE)
_REFUSED_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|Trying to load unsupported GLOBAL|global) "
                             r"([A-Za-z_][\w.]{0,99})\b")


def refused_pickle_reason(exc: BaseException) -> str:
    """What `torch.load(weights_only=True)` refused, from its UnpicklingError: the name of the
    refused global when it is a plain dotted Python name, else a generic phrase. torch's advice
    (reload with weights_only=False, or allow-list the global) is never relayed: never do that
    with a file you did not make."""
    m = _REFUSED_GLOBAL.search(str(exc))
    if m:
        return f"it references {m.group(1)}, which a weights-only load does not allow"
    line = next((ln for ln in str(exc).splitlines() if "WeightsUnpickler error" in ln), "")
    detail = safe_reason(ValueError(line.split("WeightsUnpickler error:", 1)[-1])) if line else ""
    return f"an object that a weights-only load does not allow{f' ({detail})' if detail else ''}"


def safe_reason(exc: BaseException) -> str:
    """A library's error message, fit to relay: printable characters only, sentences advising
    to weaken the safe load dropped, at most 160 characters."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    text = "".join(c if c.isprintable() else " " for c in text)
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip() and not _UNSAFE_ADVICE.search(s)]
    text = " ".join(" ".join(sentences).split()) or type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."


def refuse_compressed_records(path: str | Path) -> None:
    """torch.save stores every record of its zip uncompressed; a compressed record could inflate
    far beyond the file's size (a zip bomb: 100 MB of zeros deflate to 100 kB), so a file with
    one is refused (ValueError) before torch reads it. A file that is not a readable zip is left
    for torch to report."""
    try:
        with zipfile.ZipFile(path) as archive:
            packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return
    if packed:
        raise ValueError(f"{path}: {len(packed)} compressed record(s) in the zip; torch.save writes none, and "
                         "a compressed record could inflate without bound: refused")


def describe_magic(head: bytes) -> str:
    """How an unrecognised file starts, without echoing it: at most 8 bytes, in hex."""
    return f"its first bytes are {head[:8].hex(' ')}" if head else "it is empty"
