"""The record of an `hear-mwmae embed` output folder: `index.jsonl`, its parts, its lock.

`OUT/index.jsonl` holds one JSON object per line, appended as each input is decided; the
last line per input wins, and the file is compacted (rewritten atomically, one line per
input) at the end of a run. Under torchrun each rank appends to its own
`OUT/index.part-<rank>.jsonl`; rank 0 merges the parts into `index.jsonl` after a
barrier, and any run merges parts left by a killed run before it starts (a part's lines
are always newer than index.jsonl's). `OUT/embed.json` names the layout (how outputs are
named, `embed_plan.output_names`); `embed_migrate.py` brings older folders up to it.

Statuses: "ok" (outputs valid), "pending: ..." (outputs being written; what a killed run
leaves, redone next time), "error: ...", "skipped: ..." (not audio), "removed: ..." (the
input disappeared, or --force cleared another setting's results; outputs deleted unless
the record says "outputs kept").

File names are recorded losslessly: a path that is valid UTF-8 is a JSON string; one
that is not (bytes the OS allows, e.g. Latin-1 names from old archives) is written as
`"<field>_b64"`: the base64 of its bytes (`os.fsencode`), with `"<field>"` beside it as a
readable stand-in (undecodable bytes as \\xNN). In memory such a path is the `str` Python
uses for it (surrogateescape), so it opens the same file.

A result is reused only when its record says "ok" for the same checkpoint sha256, mode and
precision (`SETTINGS`), its outputs exist, and the input is the same file: same size,
modification time, status-change time (ctime) and inode — or, with `hash_inputs`, the
same size and sha256. `redo_reason` says why not. `OUT/.embed.lock` keeps a second
`embed` out of the folder while one runs.

Nothing in the folder is trusted (docs/security.md). Every file is reached through
`out_folder.OutFolder`: names outside the folder are never acted on, links are never followed
(an index, part, lock or layout file that is a link refuses the run). A damaged index is
repaired as it is read, with a warning, and the run goes on: a line cut short by a kill (the
next append starts on a new line, so it never swallows a record; a record glued to such a
line by an older version is recovered), bytes that are not UTF-8, a record whose output is
not a relative path inside the folder (a list, `../x`, `/etc/x`: its outputs are ignored,
never deleted) or whose fields have the wrong types. A repaired record becomes "error:
damaged index record ..." without outputs, so its input is embedded again.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from pathlib import Path
from typing import IO, Any, Iterable

from .files import sha256_file
from .out_folder import LinkError, OutFolder, OutsideError, check_name

log = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
PART_GLOB = "index.part-*.jsonl"
LOCK_NAME = ".embed.lock"
LAYOUT_NAME = "embed.json"
LAYOUT = {"format": "hear-mwmae-embed", "layout": 2,
          "outputs": "OUT/<the input's absolute path>.npy (+ .ts.npy); see hear_mwmae/embed_plan.py"}
SETTINGS = ("checkpoint_sha256", "mode", "precision")  # a folder holds results of one setting only
PATH_FIELDS = ("input", "output", "timestamps")
PENDING = "pending: outputs being written (a run stopped here; redone next time)"
DAMAGED = "error: damaged index record (repaired): "
_TEMPORARY = re.compile(r"\A\..+\.[a-z0-9_]{8}\.tmp\Z")  # atomic writes' and decoders', left by a killed run
_PART = re.compile(r"\Aindex\.part-\d+\.jsonl\Z")
# fields a record may hold, by type (anything else in them is damage)
_TYPES: dict[str, type] = {"status": str, "reason": str, "model": str, "checkpoint_sha256": str, "mode": str,
                           "precision": str, "format": str, "input_size": int, "input_mtime_ns": int,
                           "input_ctime_ns": int, "input_inode": int, "input_sha256": str, "steps": int, "dim": int}
_MAX_WARNINGS = 5  # damaged lines reported one by one per file; the rest are counted


class EmbedFolderError(RuntimeError):
    """The output folder cannot be used as asked (locked, made with other settings, ...)."""


def part_name(rank: int) -> str:
    return f"index.part-{rank:05d}.jsonl"


# ----------------------------------------------------------------------------- lossless names
def to_json(record: dict[str, Any]) -> str:
    """One index line; paths that are not valid UTF-8 go to `<field>_b64` (see the module docstring)."""
    out = dict(record)
    for name in PATH_FIELDS:
        value = out.get(name)
        if isinstance(value, str):
            raw = os.fsencode(value)
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                out[name] = raw.decode("utf-8", "backslashreplace")
                out[f"{name}_b64"] = base64.b64encode(raw).decode("ascii")
    # other text (a status quoting an OS error) may hold such a name too: as a JSON \udcNN escape
    return json.dumps(out, ensure_ascii=False).encode("utf-8", "backslashreplace").decode("utf-8")


def from_json(line: str) -> dict[str, Any]:
    record = json.loads(line)
    if not isinstance(record, dict) or not isinstance(record.get("input"), str) or not record["input"]:
        raise ValueError("not a record")
    for name in PATH_FIELDS:
        encoded = record.pop(f"{name}_b64", None)
        if encoded is not None:
            if not isinstance(encoded, str):
                raise ValueError(f"{name}_b64 is not base64 text")
            record[name] = os.fsdecode(base64.b64decode(encoded, validate=True))
    return record


def repaired(record: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the record, []) when its fields are usable, else (a damaged-record stand-in without
    outputs, the problems). Output names must be relative paths inside the folder."""
    problems = []
    for name in ("output", "timestamps"):
        value = record.get(name)
        if value is None:
            continue
        try:
            check_name(value)
        except OutsideError:
            problems.append(f"{name} {'names a path outside the folder' if isinstance(value, str) else 'is not a path'}")
    for name, kind in _TYPES.items():
        value = record.get(name)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            problems.append(f"{name} is not {'an int' if kind is int else 'text'}")
    if not problems:
        return record, []
    return {"input": record["input"], "output": None, "timestamps": None,
            "status": DAMAGED + "; ".join(problems)}, problems


def _parse(line: str) -> dict[str, Any]:
    """A record from one line; a line that a killed run cut short and an older version then
    appended to ('{"input": "/a/b{"input": ...}') gives the record after the cut."""
    try:
        return from_json(line)
    except (ValueError, TypeError, AttributeError, UnicodeError, RecursionError):
        cut = line.rfind('{"input"', 1)
        if cut < 0:
            raise
        return from_json(line[cut:])


def read_lines(path: Path, fh: IO[bytes] | None = None) -> Iterable[dict[str, Any]]:
    """The records of one index file (repaired: see the module docstring), with warnings."""
    own = fh is None
    fh = fh or open(path, "rb")
    skipped, damaged = 0, 0
    try:
        for n, raw in enumerate(fh, 1):
            line = raw.decode("utf-8", "surrogateescape")  # damage, never our writing: kept as the OS would
            if not line.strip():
                continue
            try:
                record = _parse(line)
            except (ValueError, TypeError, AttributeError, UnicodeError, RecursionError):
                skipped += 1
                if skipped <= _MAX_WARNINGS:
                    log.warning("%s:%d: ignoring a malformed line (an interrupted run, or damage)", path, n)
                continue
            record, problems = repaired(record)
            if problems:
                damaged += 1
                if damaged <= _MAX_WARNINGS:
                    log.warning("%s:%d: damaged record of %s (%s): its outputs are ignored, never deleted, and it "
                                "is embedded again", path, n, record["input"][:200], "; ".join(problems))
            yield record
    finally:
        if own:
            fh.close()
    if skipped > _MAX_WARNINGS or damaged > _MAX_WARNINGS:
        log.warning("%s: %d malformed line(s) and %d damaged record(s) in all", path, skipped, damaged)


class Index:
    """The records of an output folder by input: index.jsonl, then any parts (newer), last line wins."""

    def __init__(self, out_dir: str | Path, writer: str = INDEX_NAME) -> None:
        self.folder = OutFolder(out_dir)
        self.out_dir = self.folder.root
        self.path = self.out_dir / INDEX_NAME
        self.writer_name = writer
        self.writer = self.out_dir / writer  # where this process appends
        self._fh: IO[str] | None = None
        self.records: dict[str, dict[str, Any]] = {}
        for name in [INDEX_NAME, *part_names(self.folder)]:
            fh = _open_index_file(self.folder, name)
            if fh is not None:
                for record in read_lines(self.out_dir / name, fh):
                    self.records[record["input"]] = record
                fh.close()

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["input"]] = record
        if self._fh is None:
            self._fh = _open_for_append(self.folder, self.writer_name)
        self._fh.write(to_json(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def compact(self) -> None:
        """Rewrite index.jsonl atomically with one line per input, then remove the parts."""
        self.close()
        with self.folder.atomic_write(INDEX_NAME, "wb") as fh:
            fh.writelines((to_json(r) + "\n").encode("utf-8") for r in self.records.values())
        for part in part_names(self.folder):
            self.folder.delete(part)


def part_names(folder: OutFolder) -> list[str]:
    """The index parts of torchrun ranks in the folder (links too: reading one refuses the run)."""
    return [n for n in folder.names("", ".jsonl", regular_only=False) if _PART.match(n)]


def _link_refused(folder: OutFolder, name: str) -> EmbedFolderError:
    return EmbedFolderError(f"{folder.root / name} is a symbolic link or not a file: embed never reads or writes "
                            f"its records through a link; remove it, or use another --out")


def _open_index_file(folder: OutFolder, name: str) -> IO[bytes] | None:
    try:
        return folder.open_read(name)
    except LinkError:
        raise _link_refused(folder, name) from None


def _open_for_append(folder: OutFolder, name: str) -> IO[str]:
    """`name` for appending records, starting on a new line if the last one was cut short."""
    try:
        reader = folder.open_read(name)
        if reader is not None:
            with reader:
                reader.seek(0, os.SEEK_END)
                cut = reader.tell() > 0 and (reader.seek(-1, os.SEEK_END) or reader.read(1)) != b"\n"
        else:
            cut = False
        fh = folder.open_append(name)
    except LinkError:
        raise _link_refused(folder, name) from None
    if cut:
        fh.write("\n")  # never glue a record onto the torn line a killed run left
    return fh


def merge_parts(out_dir: str | Path) -> int:
    """Fold parts left by an earlier (possibly killed) torchrun into index.jsonl. Returns how many."""
    parts = part_names(OutFolder(out_dir))
    if parts:
        log.info("merging %d index part(s) left by an earlier run into %s", len(parts), INDEX_NAME)
        Index(out_dir).compact()
    return len(parts)


# ----------------------------------------------------------------------------- outputs on disk
def outputs_of(record: dict[str, Any]) -> list[str]:
    return [p for p in (record.get("output"), record.get("timestamps")) if p]


def delete_outputs(out_dir: Path | OutFolder, rels: Iterable[str]) -> int:
    """Delete these outputs (names relative to the folder) and the folders they leave empty; a
    name outside the folder is never acted on (warned), nothing below a link is touched.
    Returns the number of files deleted."""
    folder = out_dir if isinstance(out_dir, OutFolder) else OutFolder(out_dir)
    deleted = 0
    for rel in rels:
        try:
            deleted += folder.delete(rel)
        except OutsideError as exc:
            log.warning("%s: not deleted: %s", folder.root, exc)
    return deleted


def clean_temporary(out_dir: Path) -> int:
    """Remove the temporary files a killed run left (never a finished output). Returns how many."""
    return OutFolder(out_dir).remove_matching(lambda name: bool(_TEMPORARY.match(name)))


# ----------------------------------------------------------------------------- settings
def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


def _holds_outputs(record: dict[str, Any]) -> bool:
    status = str(record.get("status"))
    return status == "ok" or status.startswith("pending:")


def settings_conflicts(index: Index, settings: dict[str, Any]) -> tuple[str, list[str]]:
    """(message naming each difference, inputs of the records made otherwise) for records with
    outputs ("ok", or pending) whose checkpoint / mode / precision differ from `settings`."""
    other: dict[tuple, list[str]] = {}
    for k, r in index.records.items():
        if _holds_outputs(r) and r.get("checkpoint_sha256") is not None:
            made = tuple(r.get(s) for s in SETTINGS)
            if made != tuple(settings[s] for s in SETTINGS):
                other.setdefault(made, []).append(k)
    if not other:
        return "", []
    parts = []
    for made, keys in other.items():
        diff = [f"{name.replace('_', ' ')} {_short(was)} (this run: {_short(settings[name])})"
                for name, was in zip(SETTINGS, made) if was != settings[name]]
        parts.append(f"{len(keys)} file(s) with " + ", ".join(diff))
    return "; ".join(parts), [k for keys in other.values() for k in keys]


def remove_outputs(index: Index, keys: list[str], settings: dict[str, Any]) -> int:
    """Delete the outputs of these records; each record becomes "removed: made with other
    settings (...)", which `redo_reason` reports when its input is embedded again. Returns the
    number of files deleted."""
    removed = 0
    for k in keys:
        r = index.records[k]
        removed += delete_outputs(index.out_dir, outputs_of(r))
        diff = ", ".join(f"{s} {_short(r.get(s))} -> {_short(settings[s])}" for s in SETTINGS
                         if r.get(s) != settings[s])
        index.add({"input": k, "output": r.get("output"), "timestamps": r.get("timestamps"),
                   "status": f"removed: made with other settings (--force): {diff}"})
    return removed


# ----------------------------------------------------------------------------- is a result still valid?
def input_facts(path: Path, hash_inputs: bool) -> dict[str, Any]:
    """What identifies an input's content: size, modification and status-change times (ns),
    inode and, optionally, sha256."""
    st = os.stat(path)
    facts: dict[str, Any] = {"input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns,
                             "input_ctime_ns": st.st_ctime_ns, "input_inode": st.st_ino}
    if hash_inputs:
        facts["input_sha256"] = sha256_file(path)
    return facts


def redo_reason(record: dict[str, Any] | None, outputs: list[str], settings: dict[str, Any],
                facts: dict[str, Any], out_dir: Path) -> str | None:
    """Why a file must be (re)embedded, or None when its recorded result is still valid."""
    if record is None:
        return "new"
    status = str(record.get("status"))
    if status.startswith("removed: "):
        return status[len("removed: "):]
    if status.startswith("pending:"):
        return "an earlier run stopped while writing it"
    if status.startswith(DAMAGED):
        return "its index record was damaged"
    if status != "ok":
        return "previous attempt failed"
    if record.get("checkpoint_sha256") is None:
        return "recorded without a checkpoint sha256 (older hear-mwmae)"
    changed = [f"{s} {_short(record.get(s))} -> {_short(settings[s])}"
               for s in SETTINGS if record.get(s) != settings[s]]
    if changed:
        return "settings changed: " + ", ".join(changed)
    if [record.get("output"), record.get("timestamps")] != (list(outputs) + [None])[:2]:
        return "recorded under other output names"
    folder = OutFolder(out_dir)
    if not all(folder.is_file(p) for p in outputs):
        return "output missing"
    if record.get("input_size") != facts["input_size"]:
        return f"input changed: size {record.get('input_size')} -> {facts['input_size']} bytes"
    if "input_sha256" in facts:
        if record.get("input_sha256") != facts["input_sha256"]:
            return "input changed: sha256 differs" if record.get("input_sha256") else "no input sha256 recorded"
        return None
    if record.get("input_mtime_ns") != facts["input_mtime_ns"]:
        return "input changed: modification time differs"
    if record.get("input_inode") != facts["input_inode"]:
        return "input replaced: another file (inode) at this path"
    if record.get("input_ctime_ns") != facts["input_ctime_ns"]:
        return "input changed: status-change time (ctime) differs"
    return None


class FolderLock:
    """`OUT/.embed.lock` held for a whole run; a second process fails at once with a clear message.
    A link at the lock's name refuses the run (the lock file is never opened through it)."""

    def __init__(self, out_dir: Path) -> None:
        self.folder = OutFolder(out_dir)
        self.path = self.folder.root / LOCK_NAME
        self.lock: Any = None

    def __enter__(self) -> "FolderLock":
        try:
            self.lock = self.folder.try_lock(LOCK_NAME)
        except LinkError:
            raise _link_refused(self.folder, LOCK_NAME) from None
        if self.lock is None:
            raise EmbedFolderError(f"another `hear-mwmae embed` is writing to {self.path.parent} (lock {self.path} "
                                   f"is held); wait for it to finish, or use another --out")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.close()


__all__ = ["DAMAGED", "INDEX_NAME", "LAYOUT", "LAYOUT_NAME", "LOCK_NAME", "PENDING", "SETTINGS", "EmbedFolderError", "FolderLock",
           "Index", "clean_temporary", "delete_outputs", "from_json", "input_facts", "merge_parts", "outputs_of",
           "part_name", "part_names", "read_lines", "repaired", "redo_reason", "remove_outputs", "settings_conflicts", "to_json"]
