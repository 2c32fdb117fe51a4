"""What `hear-mwmae embed` will do: inputs -> one entry per input, and each input's output names.

Inputs are files or folders; folders are searched recursively. Every entry seen gets
exactly one place in the plan: a job (audio to embed; any file named directly is
attempted, whatever its extension), a failure (missing, a broken symbolic link, a link
loop, a folder that cannot be listed) or "not audio" (with the reason).

An input is identified by its *canonical path*: absolute, with the folders above it
resolved (so `data/../data/x.wav`, a folder reached through a symbolic link and the real
folder give one input), but the file itself kept as named (a symbolic link to a file is an
input of its own).

Output names are a function of the canonical path alone (`output_names`): the path, less
its root (`/` or a drive), below OUT, with ".npy" appended and the extension kept:

    /data/corpus/spk1/speech.mp3  ->  OUT/data/corpus/spk1/speech.mp3.npy  (+ speech.mp3.ts.npy)

Two inputs never share an output, whatever the command line, the order or the run: the
paths differ, and two rare names get one "_" appended so that no name can stand for
another: a file name ending in ".ts" (plus any "_"s), whose ".npy" would be another
file's ".ts.npy", and a folder name ending in ".npy" (plus any "_"s), which would be
another file's output. (On a case-insensitive OUT, paths that differ only in case share
names; use a case-sensitive file system for such corpora.)
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable

from .audio import AUDIO_SUFFIXES
from .files import describe_missing

log = logging.getLogger(__name__)

_TS_LIKE = re.compile(r"\.ts_*\Z")  # a file name whose ".npy" would be another file's ".ts.npy"
_NPY_LIKE = re.compile(r"\.npy_*\Z")  # a folder name that would be another file's output


@dataclass(frozen=True)
class Job:
    """One input file (canonical path) and its outputs (paths relative to the output folder)."""

    source: Path
    output: PurePosixPath
    timestamps: PurePosixPath | None

    @property
    def outputs(self) -> list[PurePosixPath]:
        return [p for p in (self.output, self.timestamps) if p is not None]


@dataclass
class Plan:
    """What `find_jobs` found. `jobs`, `failed` (input, "error: ...") and `not_audio` (input,
    "skipped: ...") hold each input once. `scope`: the canonical folders searched and the files
    named that exist, which a run accounts for (records of inputs under them that disappeared)."""

    jobs: list[Job] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_audio: list[tuple[str, str]] = field(default_factory=list)
    scope: list[Path] = field(default_factory=list)
    unlisted: list[Path] = field(default_factory=list)  # folders that could not be listed: not accounted

    def inputs(self) -> set[str]:
        return {str(j.source) for j in self.jobs} | {i for i, _ in self.failed} | {i for i, _ in self.not_audio}


def canonical(path: str | Path) -> Path:
    """Absolute path with the folders above resolved, the last component kept as named."""
    path = Path(os.path.abspath(path))
    return Path(os.path.realpath(path.parent)) / path.name if path.name else path


def _relative_parts(source: Path) -> list[str]:
    """The components of an absolute path below its root: '/a/b' -> [a, b]; 'C:\\a' -> [C, a]."""
    drive = source.drive.replace(":", "").strip("\\/").replace("\\", "/")
    return [*(p for p in drive.split("/") if p), *source.parts[1:]]


def output_names(source: Path, mode: str) -> tuple[PurePosixPath, PurePosixPath | None]:
    """(embeddings, timestamps or None) of a canonical input path, relative to the output folder."""
    *folders, name = _relative_parts(source)
    folders = [f + "_" if _NPY_LIKE.search(f) else f for f in folders]
    name = name + "_" if _TS_LIKE.search(name) else name
    base = PurePosixPath(*folders, name)
    return base.with_name(name + ".npy"), (base.with_name(name + ".ts.npy") if mode == "timestamp" else None)


def _scan(root: Path, exclude: set[Path], plan: Plan, add: "_Adder") -> int:
    """Put every entry under `root` into the plan; returns the number of audio files found."""
    found = 0

    def unlistable(exc: OSError) -> None:
        where = canonical(exc.filename) if exc.filename else root
        plan.unlisted.append(where)
        add.failed(where, f"error: cannot list this folder: {(exc.strerror or str(exc)).lower()}")

    for dirpath, dirnames, filenames in os.walk(root, onerror=unlistable):
        here = Path(os.path.realpath(dirpath))
        keep = []
        for name in sorted(dirnames):
            path = here / name
            if Path(os.path.realpath(path)) in exclude:  # the output folder itself
                continue
            if name.startswith("."):
                add.skipped(path, "skipped: hidden directory (not searched)")
            elif path.is_symlink():
                add.skipped(path, "skipped: symbolic link to a directory (not followed)")
            else:
                if Path(name).suffix.lower() in AUDIO_SUFFIXES:
                    add.skipped(path, "skipped: a directory named like an audio file (its contents are searched)")
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            suffix = path.suffix.lower()
            if name.startswith("."):
                add.skipped(path, "skipped: hidden file")
            elif not path.is_file():
                if path.exists():
                    add.skipped(path, "skipped: not a regular file")
                else:
                    add.failed(path, f"error: unreadable: {describe_missing(path)}")
            elif suffix in AUDIO_SUFFIXES:
                add.job(path)
                found += 1
            else:
                what = f"extension {suffix!r}" if suffix else "no extension"
                add.skipped(path, f"skipped: not audio ({what})")
    return found


class _Adder:
    """Collects one entry per canonical input: a job beats a failure, which beats a skip."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.entries: dict[str, tuple[int, object]] = {}

    def _put(self, path: Path, rank: int, entry: object) -> None:
        key = str(path)
        if key not in self.entries or self.entries[key][0] < rank:
            self.entries[key] = (rank, entry)

    def job(self, path: Path) -> None:
        self._put(path, 2, Job(path, *output_names(path, self.mode)))

    def failed(self, path: Path, reason: str) -> None:
        self._put(path, 1, ("failed", reason))

    def skipped(self, path: Path, reason: str) -> None:
        self._put(path, 0, ("skipped", reason))


def find_jobs(inputs: Iterable[str | Path], mode: str, exclude: Iterable[str | Path] = ()) -> Plan:
    """Expand files / folders into a plan; folders under `exclude` (the output folder) are not searched."""
    plan, add = Plan(), _Adder(mode)
    skip = {Path(os.path.realpath(p)) for p in exclude}
    for item in map(Path, inputs):
        path = canonical(item)
        if item.is_dir():
            plan.scope.append(Path(os.path.realpath(item)))
            before = len(add.entries)
            if not _scan(item, skip, plan, add):
                log.warning("%s: no audio files found (%d other entries, listed in the index)", item,
                            len(add.entries) - before)
        elif item.is_file():
            plan.scope.append(path)
            add.job(path)
        else:  # not in the scope: a missing folder (an unmounted drive?) must not take its results along
            add.failed(path, f"error: {describe_missing(item)}")
    for key, (_, entry) in add.entries.items():
        if isinstance(entry, Job):
            plan.jobs.append(entry)
        else:
            (plan.failed if entry[0] == "failed" else plan.not_audio).append((key, entry[1]))
    return plan


def in_scope(input_path: str, plan: Plan) -> bool:
    """Whether the record of `input_path` is one this run accounts for: the input lies in a
    folder it searched (and not in one it could not list), or is a file it named."""
    path = Path(input_path)
    if any(path == u or u in path.parents for u in plan.unlisted):
        return False
    return any(path == s or s in path.parents for s in plan.scope)


def is_gone(input_path: str) -> str:
    """Why `input_path` is no longer an input ("input no longer exists", or it is a folder now), or
    "" when it still is one, or cannot be looked at (a permission problem is no deletion)."""
    try:
        st = os.lstat(input_path)
    except (FileNotFoundError, NotADirectoryError):
        return "input no longer exists"
    except OSError:
        return ""
    return "input no longer exists (a folder now)" if stat.S_ISDIR(st.st_mode) else ""


__all__ = ["Job", "Plan", "canonical", "find_jobs", "in_scope", "is_gone", "output_names"]
