"""Label vocabularies: class names (and machine ids) in the order of a classifier's outputs.

    audioset()            the 527 AudioSet classes, shipped with the package (vocabularies/README.md)
    read_labels(path)     a label file: the authors' `index,mid,display_name` csv (any csv with a
                          `display_name` column, optional `mid` / `index`), or one name per line
    head_config(...)      a `HeadConfig` for a head of n outputs with these names
"""

from __future__ import annotations

import csv
import functools
import io
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .config import HeadConfig

log = logging.getLogger(__name__)

AUDIOSET = "audioset"  # label_source of the shipped AudioSet vocabulary
AUDIOSET_CLASSES = 527


class LabelError(ValueError):
    """A label file that cannot be used; the message says why."""


@dataclass(frozen=True)
class Vocabulary:
    """Class names in output order; `ids` (e.g. AudioSet mids) in the same order, or ()."""

    names: tuple[str, ...]
    ids: tuple[str, ...] = ()
    source: str = ""

    def __len__(self) -> int:
        return len(self.names)


def _parse(text: str, where: str) -> Vocabulary:
    rows = [row for row in csv.reader(io.StringIO(text)) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise LabelError(f"{where}: no labels in the file")
    header = [cell.strip().lower() for cell in rows[0]]
    if "display_name" not in header:  # one name per line (a first cell per row)
        return Vocabulary(tuple(row[0].strip() for row in rows), (), where)
    col = {name: header.index(name) for name in ("index", "mid", "display_name") if name in header}
    body = rows[1:]
    try:
        entries = [(int(row[col["index"]]) if "index" in col else i, row[col["display_name"]].strip(),
                    row[col["mid"]].strip() if "mid" in col else "") for i, row in enumerate(body)]
    except (ValueError, IndexError) as exc:
        raise LabelError(f"{where}: malformed row ({exc}); expected the columns {list(col)}") from None
    entries.sort()
    if [e[0] for e in entries] != list(range(len(entries))):
        raise LabelError(f"{where}: the index column must hold 0 .. {len(entries) - 1} exactly once each")
    ids = tuple(e[2] for e in entries) if "mid" in col else ()
    return Vocabulary(tuple(e[1] for e in entries), ids, where)


def read_labels(path: str | Path) -> Vocabulary:
    """A label file -> Vocabulary (source = the file's name); raises LabelError."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise LabelError(f"{path}: cannot read the label file: {exc}") from None
    return _parse(text, path.name)


@functools.lru_cache(maxsize=1)
def audioset() -> Vocabulary:
    """AudioSet's 527 classes in the authors' head order (index, mid, display name)."""
    text = resources.files("hear_mwmae.vocabularies").joinpath("audioset.csv").read_text(encoding="utf-8")
    vocab = _parse(text, AUDIOSET)
    assert len(vocab) == AUDIOSET_CLASSES, len(vocab)
    return vocab


def head_config(num_classes: int, vocab: Vocabulary | None = None, **options: Any) -> HeadConfig:
    """A HeadConfig of `num_classes` outputs named by `vocab`; without one, `class_i` names and a
    warning. `options`: the other HeadConfig fields (multi_label, pooling, dropout)."""
    if vocab is None:
        log.warning("the classifier's %d classes have no names: calling them class_0 .. class_%d "
                    "(give a label file with --labels FILE.csv)", num_classes, num_classes - 1)
        return HeadConfig.generic(num_classes, **options)
    if len(vocab) != num_classes:
        raise LabelError(f"{vocab.source or 'the labels'}: {len(vocab)} names for a head of {num_classes} classes")
    return HeadConfig(num_classes, vocab.names, vocab.ids, vocab.source, **options)


def relabel(head: HeadConfig, vocab: Vocabulary) -> HeadConfig:
    """The same head with other names (`--labels FILE.csv`)."""
    return head_config(head.num_classes, vocab, multi_label=head.multi_label, pooling=head.pooling,
                       dropout=head.dropout)


__all__ = ["AUDIOSET", "LabelError", "Vocabulary", "audioset", "head_config", "read_labels", "relabel"]
