"""An output folder nothing escapes: every name written, read or deleted below it is checked, and
reached without following a symbolic link.

Names are relative POSIX paths, as the embed index records them. `check_name` refuses anything
else (`OutsideError`): an absolute path or a drive, "..", ".", empty parts, NUL or backslash,
more than 4096 bytes. So no name read from a (possibly hostile) index can point outside.

Inside, links are never followed. Each operation opens the folders on the way one at a time,
relative to the previous one, with O_NOFOLLOW | O_DIRECTORY (`dir_fd`), so a folder replaced by
a link (`OUT/data -> /etc`), even a moment ago, is not entered: writing through it is refused
(`LinkError`, naming the link), reading or deleting through it finds nothing. A link *at* a name
is never followed either: a write replaces the link (a rename replaces the entry, not its
target), a delete removes the link itself, `is_file` says no. Files are created with O_EXCL |
O_NOFOLLOW, appended to with O_NOFOLLOW. Where the OS has no `dir_fd` (Windows) each component
is checked with lstat just before use instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path, PurePosixPath
from typing import IO, Iterator

_FD = all(f in os.supports_dir_fd for f in (os.open, os.stat, os.unlink, os.mkdir, os.rmdir, os.rename))
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_TMP_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789_"
MAX_NAME_BYTES = 4096


class OutsideError(ValueError):
    """A name that is not a plain relative path below the folder."""


class LinkError(OSError):
    """A symbolic link (or a file) where the folder needs a folder of its own."""


def check_name(name: object) -> tuple[str, ...]:
    """The parts of a relative POSIX name below the folder; raises OutsideError for anything else."""
    if not isinstance(name, str) or not name:
        raise OutsideError(f"not a path name: {name!r}"[:120])
    if len(os.fsencode(name)) > MAX_NAME_BYTES or "\0" in name or "\\" in name:
        raise OutsideError(f"not a plain relative path: {name[:80]!r}")
    path = PurePosixPath(name)
    parts = name.split("/")
    if path.is_absolute() or any(p in ("", ".", "..") for p in parts) or (":" in parts[0] and os.name == "nt"):
        raise OutsideError(f"{name[:80]!r} is not a path inside the folder")
    return tuple(parts)


def temporary_name(name: str) -> str:
    """`.NAME.xxxxxxxx.tmp`: the pattern `embed_index.clean_temporary` removes after a crash."""
    return f".{name}.{''.join(secrets.choice(_TMP_CHARS) for _ in range(8))}.tmp"


class OutFolder:
    """The folder `root` (resolved once: the folder itself may be reached through a link)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(os.path.realpath(root))

    def path(self, name: str) -> Path:
        """Where `name` is, for messages (never opened by path)."""
        return self.root.joinpath(*check_name(name))

    # ------------------------------------------------------------------------- folders on the way
    def _open_dir(self, parts: tuple[str, ...], create: bool) -> int:
        """A descriptor of root/parts..., each component entered without following a link.
        Raises FileNotFoundError (missing, `create` False) or LinkError."""
        fd = os.open(self.root, os.O_RDONLY | _DIRECTORY)
        try:
            for i, part in enumerate(parts):
                try:
                    child = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o777, dir_fd=fd)
                    child = self._open_child(fd, parts[:i + 1])
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                        raise self._not_a_folder(parts[:i + 1]) from None
                    raise
                os.close(fd)
                fd = child
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _open_child(self, fd: int, parts: tuple[str, ...]) -> int:
        try:
            return os.open(parts[-1], os.O_RDONLY | _DIRECTORY | _NOFOLLOW, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
                raise self._not_a_folder(parts) from None
            raise

    def _not_a_folder(self, parts: tuple[str, ...]) -> LinkError:
        where = self.root.joinpath(*parts)
        what = "a symbolic link" if where.is_symlink() else "not a folder"
        return LinkError(errno.ELOOP, f"{where} is {what}; embed never writes through links or into files",
                         str(where))

    def _checked_path(self, parts: tuple[str, ...], create: bool) -> Path:
        """Without dir_fd: the folder path after an lstat of every component (created if asked)."""
        here = self.root
        for i, part in enumerate(parts):
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                if not create:
                    raise
                here.mkdir(exist_ok=True)
                st = os.lstat(here)
            if not stat.S_ISDIR(st.st_mode):
                raise self._not_a_folder(parts[:i + 1])
        return here

    @contextlib.contextmanager
    def _folder(self, parts: tuple[str, ...], create: bool) -> Iterator[tuple[int | None, Path]]:
        """(descriptor or None, path) of the folder root/parts."""
        if not _FD:
            yield None, self._checked_path(parts, create)
            return
        fd = self._open_dir(parts, create)
        try:
            yield fd, self.root.joinpath(*parts)
        finally:
            os.close(fd)

    # ------------------------------------------------------------------------- files
    def _lstat(self, fd: int | None, folder: Path, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=fd, follow_symlinks=False) if fd is not None else os.lstat(folder / name)
        except FileNotFoundError:
            return None

    def is_file(self, name: str) -> bool:
        """Whether `name` is a regular file reached without links."""
        *parents, last = check_name(name)
        try:
            with self._folder(tuple(parents), create=False) as (fd, folder):
                st = self._lstat(fd, folder, last)
        except (FileNotFoundError, LinkError, NotADirectoryError):
            return False
        return st is not None and stat.S_ISREG(st.st_mode)

    @contextlib.contextmanager
    def atomic_write(self, name: str, mode: str = "wb") -> Iterator[IO]:
        """Write `name` so that readers see the old file or the whole new one (as `files.atomic_write`):
        a temporary file beside it, flushed, fsynced and renamed over it. Folders on the way are
        created; a link among them raises LinkError."""
        *parents, last = check_name(name)
        with self._folder(tuple(parents), create=True) as (fd, folder):
            tmp = temporary_name(last)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | getattr(os, "O_BINARY", 0)
            handle = os.open(tmp, flags, 0o666, dir_fd=fd) if fd is not None else os.open(folder / tmp, flags, 0o666)
            done = False
            try:
                with os.fdopen(handle, mode) as fh:
                    yield fh
                    fh.flush()
                    os.fsync(fh.fileno())
                if fd is not None:
                    os.rename(tmp, last, src_dir_fd=fd, dst_dir_fd=fd)
                else:
                    os.replace(folder / tmp, folder / last)
                done = True
            finally:
                if not done:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp, dir_fd=fd) if fd is not None else os.unlink(folder / tmp)

    def open_append(self, name: str) -> IO[str]:
        """`name` opened for appending text (created if missing); a link there raises LinkError."""
        parts = check_name(name)
        with self._folder(parts[:-1], create=True) as (fd, folder):
            handle = self._open_last(fd, folder, parts, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        return os.fdopen(handle, "a", encoding="utf-8")

    def open_read(self, name: str) -> IO[bytes] | None:
        """`name` opened for reading, or None when it is missing; a link there raises LinkError."""
        parts = check_name(name)
        try:
            with self._folder(parts[:-1], create=False) as (fd, folder):
                handle = self._open_last(fd, folder, parts, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            return None
        return os.fdopen(handle, "rb")

    def _open_last(self, fd: int | None, folder: Path, parts: tuple[str, ...], flags: int) -> int:
        """Open the last of `parts` inside its folder (`fd`, or `folder` where there are no dir fds)
        without following a link: a link there raises LinkError."""
        flags |= _NOFOLLOW
        try:
            if fd is not None:
                return os.open(parts[-1], flags, 0o666, dir_fd=fd)
            return self._open_plain(folder, parts[-1], flags)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.EMLINK):
                raise self._not_a_folder(parts) from None
            raise

    def _open_plain(self, folder: Path, name: str, flags: int) -> int:
        st = self._lstat(None, folder, name)
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise OSError(errno.ELOOP, "a symbolic link", str(folder / name))
        return os.open(folder / name, flags, 0o666)

    def refuse_link(self, name: str) -> None:
        """Raise LinkError when `name` (or a folder on its way) is a symbolic link."""
        *parents, last = check_name(name)
        try:
            with self._folder(tuple(parents), create=False) as (fd, folder):
                st = self._lstat(fd, folder, last)
        except FileNotFoundError:
            return
        if st is not None and stat.S_ISLNK(st.st_mode):
            raise self._not_a_folder(check_name(name))

    def try_lock(self, name: str) -> "contextlib.AbstractContextManager | None":
        """Take the lock file `name` at once (an exclusive `flock` on a file opened without following
        a link, never truncated); None when another process holds it. Release by closing the
        returned handle (`with`). A link at `name` raises LinkError."""
        try:
            import fcntl
        except ImportError:  # Windows: filelock, after checking that no link is in the way
            from .files import try_lock

            self.refuse_link(name)
            lock = try_lock(self.path(name))
            return None if lock is None else contextlib.closing(_Released(lock))
        parts = check_name(name)
        with self._folder(parts[:-1], create=True) as (fd, folder):
            handle = self._open_last(fd, folder, parts, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            return None
        return os.fdopen(handle, "rb")

    def move(self, name: str, target: str) -> bool:
        """Rename the file `name` to `target` (folders created), neither reached through a link.
        Returns False when `name` is not a regular file."""
        src, dst = check_name(name), check_name(target)
        try:
            with self._folder(src[:-1], create=False) as (sfd, sfolder), \
                    self._folder(dst[:-1], create=True) as (dfd, dfolder):
                st = self._lstat(sfd, sfolder, src[-1])
                if st is None or not stat.S_ISREG(st.st_mode):
                    return False
                if sfd is not None:
                    os.rename(src[-1], dst[-1], src_dir_fd=sfd, dst_dir_fd=dfd)
                else:
                    os.replace(sfolder / src[-1], dfolder / dst[-1])
        except (FileNotFoundError, NotADirectoryError):
            return False
        return True

    def delete(self, name: str) -> bool:
        """Remove `name` (a file, or a link: never its target), then the folders left empty on its
        way. Nothing happens below a link. Returns whether a file was removed."""
        parts = check_name(name)
        removed = False
        try:
            with self._folder(parts[:-1], create=False) as (fd, folder):
                st = self._lstat(fd, folder, parts[-1])
                if st is not None and not stat.S_ISDIR(st.st_mode):
                    os.unlink(parts[-1], dir_fd=fd) if fd is not None else os.unlink(folder / parts[-1])
                    removed = True
        except (FileNotFoundError, LinkError, NotADirectoryError):
            return False
        for depth in range(len(parts) - 1, 0, -1):  # prune folders left empty, deepest first
            try:
                with self._folder(parts[:depth - 1], create=False) as (fd, folder):
                    os.rmdir(parts[depth - 1], dir_fd=fd) if fd is not None else os.rmdir(folder / parts[depth - 1])
            except OSError:  # not empty, a link, gone: stop
                break
        return removed

    def remove_matching(self, match: "callable[[str], bool]") -> int:
        """Remove every file (or link) below the folder whose name matches; links to folders are
        not entered. Returns how many."""
        removed = 0
        if _FD and hasattr(os, "fwalk"):
            for _, _, filenames, dir_fd in os.fwalk(self.root, follow_symlinks=False):
                for name in filenames:
                    if match(name):
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(name, dir_fd=dir_fd)
                            removed += 1
            return removed
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                if match(name):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(dirpath, name))
                        removed += 1
        return removed

    def names(self, folder: str, suffix: str, regular_only: bool = True) -> list[str]:
        """Names (relative to the root) of the regular files (or, not `regular_only`, of any entry
        that is not a folder: links included) ending in `suffix` directly in `folder` ("" = the
        root), sorted; [] when it is missing or a link."""
        parts = check_name(folder) if folder else ()
        try:
            with self._folder(parts, create=False) as (fd, path):
                entries = os.listdir(fd if fd is not None else path)
                found = []
                for entry in sorted(entries):
                    st = self._lstat(fd, path, entry) if entry.endswith(suffix) else None
                    if st is not None and (stat.S_ISREG(st.st_mode) or not (regular_only or stat.S_ISDIR(st.st_mode))):
                        found.append("/".join((*parts, entry)))
                return found
        except (FileNotFoundError, LinkError, NotADirectoryError):
            return []


class _Released:
    """A filelock lock whose `close` releases it (for `contextlib.closing`)."""

    def __init__(self, lock: object) -> None:
        self.lock = lock

    def close(self) -> None:
        self.lock.release()


__all__ = ["LinkError", "OutFolder", "OutsideError", "check_name", "temporary_name"]
