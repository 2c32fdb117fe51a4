"""Output folders of older `hear-mwmae embed` versions, brought up to today's layout.

Layout 1 (hear-mwmae 0.1, no `OUT/embed.json`) named outputs after the path below the
folder named on the command line (a file named directly: at the top), with the audio
extension replaced: `speech.mp3` and `speech.ogg` both wanted `speech.npy`. Layout 2 (today,
`embed_plan.output_names`) appends ".npy" to the input's whole absolute path.

`ensure_layout` runs first in every run (rank 0, under the folder lock). For a layout-1
folder it renames each result to its layout-2 name, rewrites the index with the new
names, and writes `OUT/embed.json` last; every step can be repeated, so a migration that is
killed simply finishes on the next run. While renaming it also drops what layout 1 could
leave behind: a second copy of one input's result (the same file embedded from two folder
arguments) and the stale output of an input whose re-embedding failed. A record migrated
as "ok" keeps layout 1's test of an unchanged input (size and modification time) once:
its inode and ctime are recorded now, if size and time still match; from then on the
full test applies. A folder of a newer layout is refused.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from .embed_index import (INDEX_NAME, LAYOUT, LAYOUT_NAME, EmbedFolderError, delete_outputs, outputs_of, part_names,
                          read_lines, to_json)
from .embed_plan import output_names
from .out_folder import LinkError, OutFolder

log = logging.getLogger(__name__)


def ensure_layout(out_dir: Path) -> None:
    """Make `out_dir` a folder of today's layout (see the module docstring)."""
    folder = OutFolder(out_dir)
    marker = folder.root / LAYOUT_NAME
    try:
        fh = folder.open_read(LAYOUT_NAME)
    except LinkError:
        raise EmbedFolderError(f"{marker} is a symbolic link or not a file: embed never reads or writes its records "
                               f"through a link; remove it, or use another --out") from None
    if fh is not None:
        with fh:
            text = fh.read(1 << 16)
        try:
            layout = json.loads(text.decode("utf-8")).get("layout")
        except (ValueError, AttributeError, RecursionError):
            layout = None
        if layout == LAYOUT["layout"]:
            return
        if not isinstance(layout, int) or layout < LAYOUT["layout"]:
            raise EmbedFolderError(f"{marker} is not readable as an embed layout record; if {out_dir} holds only "
                                   f"`hear-mwmae embed` outputs, delete {marker} to have it checked and migrated")
        raise EmbedFolderError(f"{out_dir} was written by a newer hear-mwmae (layout {layout}); use that version, "
                               f"or another --out")
    if folder.is_file(INDEX_NAME) or part_names(folder):
        moved = _migrate_from_layout_1(folder)
        log.warning("%s: renamed the results of an older hear-mwmae to today's names (%d moved): "
                    "OUT/<absolute input path>.npy", out_dir, moved)
    with folder.atomic_write(LAYOUT_NAME, "w") as fh:
        json.dump(LAYOUT, fh, indent=1)


def _old_records(folder: OutFolder) -> list[dict[str, Any]]:
    """Layout 1's records: index.jsonl then parts, last line per output (else per input) wins."""
    records: dict[str, dict[str, Any]] = {}
    for name in [INDEX_NAME, *part_names(folder)]:
        fh = folder.open_read(name)
        if fh is not None:
            with fh:
                for r in read_lines(folder.root / name, fh):
                    records[r.get("output") or r["input"]] = r
    return list(records.values())


def _same_file(record: dict[str, Any]) -> dict[str, Any]:
    """inode and ctime of an "ok" record's input, if it still has the recorded size and time."""
    try:
        st = os.stat(record["input"])
    except OSError:
        return {}
    if st.st_size == record.get("input_size") and st.st_mtime_ns == record.get("input_mtime_ns"):
        return {"input_inode": st.st_ino, "input_ctime_ns": st.st_ctime_ns}
    return {}


def _migrate_from_layout_1(folder: OutFolder) -> int:
    out_dir = folder.root
    by_input: dict[str, dict[str, Any]] = {}
    stale: list[str] = []  # outputs that no valid record keeps
    for r in _old_records(folder):
        if r["input"] in by_input:
            stale += outputs_of(by_input[r["input"]])
        by_input[r["input"]] = r
    old_names = {p for r in by_input.values() for p in outputs_of(r)}
    moves: list[tuple[str, str]] = []
    new_records = []
    for source, r in by_input.items():
        has_outputs = bool(outputs_of(r))
        output, stamps = output_names(Path(source), "timestamp" if r.get("timestamps") else "scene")
        new = {**r, "output": output.as_posix() if has_outputs else None,
               "timestamps": stamps.as_posix() if has_outputs and stamps else None}
        if r.get("status") == "ok":
            moves += [(old, nw) for old, nw in zip(outputs_of(r), outputs_of(new)) if old != nw]
            new.update(_same_file(r))
        else:
            stale += outputs_of(r)
        new_records.append(new)
    for old, target in moves:
        if target in old_names:
            raise EmbedFolderError(f"{out_dir}: cannot rename the outputs of an older hear-mwmae to today's names "
                                   f"({old} would replace {target}); embed into a new --out")
    moved = 0
    for old, target in moves:
        try:
            moved += folder.move(old, target)
        except LinkError as exc:
            log.warning("%s: not renamed (%s); it is embedded again", old, exc.strerror)
    delete_outputs(folder, [p for p in stale if p not in {t for _, t in moves}])
    delete_outputs(folder, [old for old, _ in moves])  # nothing left there: prunes emptied folders
    with folder.atomic_write(INDEX_NAME, "wb") as fh:
        fh.writelines((to_json(r) + "\n").encode("utf-8") for r in new_records)
    for part in part_names(folder):
        folder.delete(part)
    return moved


__all__ = ["ensure_layout"]
