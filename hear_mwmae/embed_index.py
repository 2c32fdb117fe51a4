"""The record of an `hear-mwmae embed` output folder: `index.jsonl`, its parts, and its lock.

`OUT/index.jsonl` holds one JSON object per line, appended as each file finishes; the last
line per output (per input, for files without an output) wins, and the file is compacted
(rewritten atomically, one line per output) at the end of a run. Under torchrun each rank
appends to its own `OUT/index.part-<rank>.jsonl`; rank 0 merges the parts into
`index.jsonl` after a barrier, and any run merges parts left by a killed run before it
starts, so merging is idempotent (a part's lines are always newer than index.jsonl's).

A result is reused only when its record says "ok" for the same checkpoint sha256, mode and
precision (`SETTINGS`), its outputs exist, and the input has the size and modification
time recorded (or, with `hash_inputs`, the same sha256). `redo_reason` says why not.
`OUT/.embed.lock` (filelock) keeps a second `embed` out of the folder while one runs.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

from .files import atomic_write, try_lock

log = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
PART_GLOB = "index.part-*.jsonl"
LOCK_NAME = ".embed.lock"
SETTINGS = ("checkpoint_sha256", "mode", "precision")  # a folder holds results of one setting only


class EmbedFolderError(RuntimeError):
    """The output folder cannot be used as asked (locked, or made with other settings)."""


def part_name(rank: int) -> str:
    return f"index.part-{rank:05d}.jsonl"


def key(record: dict[str, Any]) -> str:
    return record.get("output") or record["input"]


def _read_lines(path: Path) -> Iterable[dict[str, Any]]:
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            record = json.loads(line)
            key(record)
            yield record
        except (json.JSONDecodeError, KeyError, AttributeError, TypeError):
            log.warning("%s:%d: ignoring a malformed line (interrupted run?)", path, n)


class Index:
    """The records of an output folder: index.jsonl, then any parts (newer), last line wins."""

    def __init__(self, out_dir: str | Path, writer: str = INDEX_NAME) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / INDEX_NAME
        self.writer = self.out_dir / writer  # where this process appends
        self.records: dict[str, dict[str, Any]] = {}
        for path in [self.path, *sorted(self.out_dir.glob(PART_GLOB))]:
            if path.is_file():
                for record in _read_lines(path):
                    self.records[key(record)] = record

    def add(self, record: dict[str, Any]) -> None:
        self.records[key(record)] = record
        with open(self.writer, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def drop(self, keys: Iterable[str]) -> None:
        for k in keys:
            self.records.pop(k, None)

    def compact(self) -> None:
        """Rewrite index.jsonl atomically with one line per output, then remove the parts."""
        with atomic_write(self.path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in self.records.values())
        for part in self.out_dir.glob(PART_GLOB):
            part.unlink(missing_ok=True)


def merge_parts(out_dir: str | Path) -> int:
    """Fold parts left by an earlier (possibly killed) torchrun into index.jsonl. Returns how many."""
    parts = list(Path(out_dir).glob(PART_GLOB))
    if parts:
        log.info("merging %d index part(s) left by an earlier run into %s", len(parts), INDEX_NAME)
        Index(out_dir).compact()
    return len(parts)


def _short(value: Any) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) > 16 else text


def settings_conflicts(index: Index, settings: dict[str, Any]) -> tuple[str, list[str]]:
    """(message naming each difference, keys of the records made otherwise) for "ok" records whose
    checkpoint / mode / precision differ from `settings`; ("", []) when there are none."""
    other: dict[tuple, list[str]] = {}
    for k, r in index.records.items():
        if r.get("status") == "ok" and r.get("checkpoint_sha256") is not None:
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
        for rel in (r.get("output"), r.get("timestamps")):
            if rel and (index.out_dir / rel).is_file():
                (index.out_dir / rel).unlink()
                removed += 1
        diff = ", ".join(f"{s} {_short(r.get(s))} -> {_short(settings[s])}" for s in SETTINGS
                         if r.get(s) != settings[s])
        index.records[k] = {"input": r.get("input"), "output": r.get("output"), "timestamps": r.get("timestamps"),
                            "status": f"removed: made with other settings (--force): {diff}"}
    return removed


def input_facts(path: Path, hash_inputs: bool) -> dict[str, Any]:
    """What identifies an input's content: size, mtime (ns) and, optionally, sha256."""
    from .files import sha256_file

    st = os.stat(path)
    facts: dict[str, Any] = {"input_size": st.st_size, "input_mtime_ns": st.st_mtime_ns}
    if hash_inputs:
        facts["input_sha256"] = sha256_file(path)
    return facts


def redo_reason(record: dict[str, Any] | None, source: Path, outputs: list[Path], settings: dict[str, Any],
                facts: dict[str, Any], out_dir: Path) -> str | None:
    """Why a file must be (re)embedded, or None when its recorded result is still valid."""
    if record is None:
        return "new"
    status = str(record.get("status"))
    if status.startswith("removed: "):
        return status[len("removed: "):]
    if status != "ok":
        return "previous attempt failed"
    if record.get("input") != str(source):
        return f"output was made from another input ({record.get('input')})"
    if record.get("checkpoint_sha256") is None:
        return "recorded without a checkpoint sha256 (older hear-mwmae)"
    changed = [f"{s} {_short(record.get(s))} -> {_short(settings[s])}"
               for s in SETTINGS if record.get(s) != settings[s]]
    if changed:
        return "settings changed: " + ", ".join(changed)
    if not all((out_dir / p).is_file() for p in outputs):
        return "output missing"
    if record.get("input_size") != facts["input_size"]:
        return f"input changed: size {record.get('input_size')} -> {facts['input_size']} bytes"
    if "input_sha256" in facts:
        if record.get("input_sha256") != facts["input_sha256"]:
            return "input changed: sha256 differs" if record.get("input_sha256") else "no input sha256 recorded"
    elif record.get("input_mtime_ns") != facts["input_mtime_ns"]:
        return "input changed: modification time differs"
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


__all__ = ["INDEX_NAME", "LOCK_NAME", "SETTINGS", "EmbedFolderError", "FolderLock", "Index", "input_facts",
           "merge_parts", "part_name", "redo_reason", "remove_outputs", "settings_conflicts"]
