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
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterable

from .files import atomic_write, sha256_file, try_lock

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
_TEMPORARY = re.compile(r"\A\..+\.[a-z0-9_]{8}\.tmp\Z")  # files.atomic_write's, left by a killed run


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
    if not isinstance(record, dict) or not isinstance(record.get("input"), str):
        raise ValueError("not a record")
    for name in PATH_FIELDS:
        encoded = record.pop(f"{name}_b64", None)
        if encoded is not None:
            record[name] = os.fsdecode(base64.b64decode(encoded))
    return record


def read_lines(path: Path) -> Iterable[dict[str, Any]]:
    """The records of one index file; a malformed line (a run killed mid-write) is skipped with a warning."""
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for n, line in enumerate(fh, 1):
            try:
                yield from_json(line)
            except (ValueError, TypeError, AttributeError, UnicodeError):
                log.warning("%s:%d: ignoring a malformed line (interrupted run?)", path, n)


class Index:
    """The records of an output folder by input: index.jsonl, then any parts (newer), last line wins."""

    def __init__(self, out_dir: str | Path, writer: str = INDEX_NAME) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / INDEX_NAME
        self.writer = self.out_dir / writer  # where this process appends
        self.records: dict[str, dict[str, Any]] = {}
        for path in [self.path, *sorted(self.out_dir.glob(PART_GLOB))]:
            if path.is_file():
                for record in read_lines(path):
                    self.records[record["input"]] = record

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["input"]] = record
        with open(self.writer, "a", encoding="utf-8") as fh:
            fh.write(to_json(record) + "\n")

    def compact(self) -> None:
        """Rewrite index.jsonl atomically with one line per input, then remove the parts."""
        with atomic_write(self.path, "wb") as fh:
            fh.writelines((to_json(r) + "\n").encode("utf-8") for r in self.records.values())
        for part in self.out_dir.glob(PART_GLOB):
            part.unlink(missing_ok=True)


def merge_parts(out_dir: str | Path) -> int:
    """Fold parts left by an earlier (possibly killed) torchrun into index.jsonl. Returns how many."""
    parts = list(Path(out_dir).glob(PART_GLOB))
    if parts:
        log.info("merging %d index part(s) left by an earlier run into %s", len(parts), INDEX_NAME)
        Index(out_dir).compact()
    return len(parts)


# ----------------------------------------------------------------------------- outputs on disk
def outputs_of(record: dict[str, Any]) -> list[str]:
    return [p for p in (record.get("output"), record.get("timestamps")) if p]


def delete_outputs(out_dir: Path, rels: Iterable[str]) -> int:
    """Delete these outputs (paths relative to `out_dir`) and the folders they leave empty.
    Returns the number of files deleted."""
    deleted = 0
    for rel in rels:
        path = out_dir / rel
        if path.is_file():
            path.unlink()
            deleted += 1
        parent = path.parent
        while parent != out_dir and out_dir in parent.parents:
            try:
                parent.rmdir()  # only when empty
            except OSError:
                break
            parent = parent.parent
    return deleted


def clean_temporary(out_dir: Path) -> int:
    """Remove the temporary files a killed run left (never a finished output). Returns how many."""
    removed = 0
    for dirpath, _, filenames in os.walk(out_dir):
        for name in filenames:
            if _TEMPORARY.match(name):
                os.unlink(os.path.join(dirpath, name))
                removed += 1
    return removed


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
    if not all((out_dir / p).is_file() for p in outputs):
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
    """`OUT/.embed.lock` held for a whole run; a second process fails at once with a clear message."""

    def __init__(self, out_dir: Path) -> None:
        self.path = out_dir / LOCK_NAME
        self.lock: Any = None

    def __enter__(self) -> "FolderLock":
        self.lock = try_lock(self.path)
        if self.lock is None:
            raise EmbedFolderError(f"another `hear-mwmae embed` is writing to {self.path.parent} (lock {self.path} "
                                   f"is held); wait for it to finish, or use another --out")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.lock.release()


__all__ = ["INDEX_NAME", "LAYOUT", "LAYOUT_NAME", "LOCK_NAME", "PENDING", "SETTINGS", "EmbedFolderError", "FolderLock",
           "Index", "clean_temporary", "delete_outputs", "from_json", "input_facts", "merge_parts", "outputs_of",
           "part_name", "read_lines", "redo_reason", "remove_outputs", "settings_conflicts", "to_json"]
