"""Small file helpers: crash-safe JSON writes, console output to a file (hashing and atomic
writes come from `hear_mwmae.files`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, Iterator

from hear_mwmae.files import atomic_write


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` so that readers see either the old file or the whole new one."""
    with atomic_write(path, "w") as fh:
        fh.write(text)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(Path(path).read_text())


@contextlib.contextmanager
def output_to(path: Path, enabled: bool = True) -> Iterator[None]:
    """Append what is printed to stdout and stderr in the block to `path` (when enabled)."""
    if not enabled:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        yield
