"""Labelled audio for fine-tuning: four layouts -> one `LabelledData`.

    a HEAR task folder        task_metadata.json, labelvocabulary.csv (idx,label), <split>.json
                              ({file: [labels]}), 16000/<split>/<file>; train/valid/test or k folds
    the authors' JSON         {"data": [{"wav": path, "labels": "mid,mid"}]} (facebookresearch/AudioMAE),
                              named by a label csv (`index,mid,display_name`, `--labels`)
    a CSV                     `path,label[;label...]` (a header row `path,label(s)` is optional)
    class sub-folders         FOLDER/<class>/*.wav, or FOLDER/{train,valid,test}/<class>/*.wav

Files named in JSON / CSV are relative to the file naming them. Labels are class indices
in the vocabulary's order. Checks, each one clear error: unknown labels, missing audio
files (counted, the first few named), a validation / test split with classes the training
split never has, an event (not scene) HEAR task, an empty split.

Without a validation (or test) split, a deterministic share of the training clips is held
out for each (`holdout`): every `holdout_every`-th clip of each class in a seeded order.
"""

from __future__ import annotations

import csv
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..audio import AUDIO_SUFFIXES
from ..labels import LabelError, Vocabulary, read_labels

log = logging.getLogger(__name__)

HEAR_RATE = "16000"  # the HEAR task audio folder this package reads
SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Labelled data that cannot be used; the message says why."""


@dataclass(frozen=True)
class Example:
    """One labelled clip: its audio file and its class indices (ascending)."""

    path: Path
    labels: tuple[int, ...]


@dataclass
class LabelledData:
    """A labelled data set: the vocabulary, single- or multi-label, and its splits.

    `splits` maps a split name to its examples: "train" / "valid" / "test", or the folds of
    a k-fold task (then `folds` lists them in order and `fold_splits` gives each run's split).
    """

    vocab: Vocabulary
    multi_label: bool
    splits: dict[str, list[Example]]
    source: str
    folds: list[str] = field(default_factory=list)

    def fold_splits(self, i: int) -> dict[str, list[Example]]:
        """Run i of a k-fold task (heareval's rule): fold i tests, fold i + 1 validates, the rest train."""
        k = len(self.folds)
        test, valid = self.folds[i], self.folds[(i + 1) % k]
        train = [e for f in self.folds if f not in (test, valid) for e in self.splits[f]]
        return {"train": train, "valid": self.splits[valid], "test": self.splits[test]}

    def targets(self, split: Sequence[Example]) -> np.ndarray:
        """(n, num_classes) float32 multi-hot rows of a split's examples."""
        out = np.zeros((len(split), len(self.vocab)), np.float32)
        for i, e in enumerate(split):
            out[i, list(e.labels)] = 1.0
        return out


# ----------------------------------------------------------------------------- readers
def _hear_task(folder: Path) -> LabelledData:
    try:
        meta = json.loads((folder / "task_metadata.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}/task_metadata.json: {exc}") from None
    if meta.get("embedding_type") != "scene":
        raise DataError(f"{folder}: a HEAR {meta.get('embedding_type')!r} task; fine-tuning takes scene tasks "
                        "(one label set per clip)")
    vocab_rows = _csv_rows(folder / "labelvocabulary.csv")
    if not vocab_rows or [h.strip() for h in vocab_rows[0][:2]] != ["idx", "label"]:
        raise DataError(f"{folder}/labelvocabulary.csv: expected the header idx,label")
    pairs = sorted((int(r[0]), r[1]) for r in vocab_rows[1:])
    names = tuple(n for _, n in pairs)
    index = {n: i for i, n in enumerate(names)}
    splits: dict[str, list[Example]] = {}
    for split in meta.get("splits") or []:
        try:
            table = json.loads((folder / f"{split}.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"{folder}/{split}.json: {exc}") from None
        rows = [(folder / HEAR_RATE / split / name, labels) for name, labels in table.items()]
        splits[split] = _examples(rows, index, f"{folder}/{split}.json")
    multi = meta.get("prediction_type") == "multilabel"
    mode = meta.get("split_mode", "trainvaltest")
    data = LabelledData(Vocabulary(names, (), f"{folder.name}/labelvocabulary.csv"), multi, splits,
                        f"HEAR task {meta.get('task_name', folder.name)}")
    if mode != "trainvaltest":  # new_split_kfold / presplit_kfold: every split is a fold
        data.folds = list(splits)
        if len(data.folds) < 3:
            raise DataError(f"{folder}: a k-fold task needs at least 3 folds, has {data.folds}")
    return data


def _authors_json(path: Path, vocab: Vocabulary | None) -> tuple[list[Example], Vocabulary]:
    if vocab is None or not vocab.ids:
        raise DataError(f"{path}: the authors' JSON names classes by their machine ids (mids); give the label csv "
                        "with --labels FILE.csv (columns index,mid,display_name)")
    try:
        data = json.loads(path.read_text())["data"]
        rows = [(_relative(path, d["wav"]), [s.strip() for s in str(d["labels"]).split(",") if s.strip()])
                for d in data]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{path}: not the authors' layout {{\"data\": [{{\"wav\": ..., \"labels\": \"mid,mid\"}}]}} "
                        f"({type(exc).__name__}: {exc})") from None
    return _examples(rows, {mid: i for i, mid in enumerate(vocab.ids)}, str(path)), vocab


def _csv_file(path: Path) -> list[tuple[Path, list[str]]]:
    rows = _csv_rows(path)
    if rows and rows[0] and rows[0][0].strip().lower() in ("path", "file", "filename", "wav"):
        rows = rows[1:]
    out = []
    for i, row in enumerate(rows):
        if len(row) < 2 or not row[0].strip():
            raise DataError(f"{path}: row {i + 1} is not path,label[;label...]: {row!r:.80}")
        out.append((_relative(path, row[0].strip()), [s.strip() for s in row[1].split(";") if s.strip()]))
    return out


def _class_folders(folder: Path) -> list[tuple[Path, list[str]]]:
    rows = []
    for cls in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(f for f in cls.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        rows += [(f, [cls.name]) for f in files]
    if not rows:
        raise DataError(f"{folder}: no class sub-folders with audio files ({folder}/<class>/*.wav)")
    return rows


def _relative(anchor: Path, name: str) -> Path:
    p = Path(name).expanduser()
    return p if p.is_absolute() else anchor.parent / p


def _csv_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [row for row in csv.reader(fh) if row and any(c.strip() for c in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: {exc}") from None


def _examples(rows: list[tuple[Path, Any]], index: dict[str, int], where: str) -> list[Example]:
    """(path, label names) rows -> Examples, checking labels and files."""
    out, unknown, missing, empty = [], {}, [], []
    for path, labels in rows:
        if isinstance(labels, str):
            labels = [labels]
        if not labels:
            empty.append(path)
            continue
        bad = [lab for lab in labels if lab not in index]
        if bad:
            unknown.setdefault(bad[0], path)
            continue
        if not path.is_file():
            missing.append(path)
            continue
        out.append(Example(path, tuple(sorted({index[lab] for lab in labels}))))
    if unknown:
        first = next(iter(unknown.items()))
        raise DataError(f"{where}: {len(unknown)} label(s) not in the vocabulary, e.g. {first[0]!r} (for {first[1]})")
    if missing:
        raise DataError(f"{where}: {len(missing)} audio file(s) missing, e.g. {', '.join(map(str, missing[:3]))}")
    if empty:
        raise DataError(f"{where}: {len(empty)} clip(s) without labels, e.g. {empty[0]}")
    return out


def _from_rows(splits: dict[str, list[tuple[Path, list[str]]]], vocab: Vocabulary | None,
               where: str) -> tuple[dict[str, list[Example]], Vocabulary, bool]:
    """Rows of label names -> examples; without `vocab`, the training split's label names, sorted."""
    if vocab is None:
        names = sorted({lab for _, labels in splits["train"] for lab in labels})
        vocab = Vocabulary(tuple(names), (), f"labels of {where}")
        for name, rows in splits.items():
            unseen = sorted({lab for _, labels in rows for lab in labels} - set(names))
            if unseen:
                raise DataError(f"{where}: the {name} split has {len(unseen)} class(es) the training split never "
                                f"has, e.g. {unseen[:5]}")
    index = {n: i for i, n in enumerate(vocab.names)}
    out = {name: _examples(rows, index, f"{where} ({name})") for name, rows in splits.items()}
    multi = any(len(e.labels) > 1 for rows in out.values() for e in rows)
    return out, vocab, multi


def load(task: str | Path, *, valid: str | Path | None = None, test: str | Path | None = None,
         labels: str | Path | None = None, multi_label: bool | None = None, seed: int = 0,
         holdout_every: int = 10) -> LabelledData:
    """Read labelled data in any of the four layouts (module docstring).

    `valid` / `test`: further files of the same layout (JSON / CSV) for those splits;
    `labels`: a label file (required for the authors' JSON; names the classes otherwise);
    `multi_label`: force the problem type (default: HEAR metadata, the authors' JSON =
    multi-label, else multi-label when any clip has several labels).
    """
    task = Path(task)
    try:
        vocab = read_labels(labels) if labels is not None else None
    except LabelError as exc:
        raise DataError(str(exc)) from None
    if not task.exists():
        raise DataError(f"{task}: no such file or folder")
    if task.is_dir() and (task / "task_metadata.json").is_file():
        if valid or test:
            raise DataError(f"{task}: a HEAR task has its own splits; --valid / --test apply to JSON / CSV data")
        data = _hear_task(task)
    elif task.suffix.lower() == ".json":
        splits = {}
        for name, path in (("train", task), ("valid", valid), ("test", test)):
            if path is not None:
                splits[name], vocab = _authors_json(Path(path), vocab)
        data = LabelledData(vocab, True, splits, f"the authors' JSON {task.name}")
    else:
        if task.is_dir():
            if valid or test:
                raise DataError(f"{task}: --valid / --test apply to JSON / CSV data; give class folders under "
                                f"{task}/train, {task}/valid and {task}/test instead")
            parts = [s for s in SPLITS if (task / s).is_dir()]
            if parts and "train" not in parts:
                raise DataError(f"{task}: has {parts} but no train/ folder")
            rows = {s: _class_folders(task / s) for s in parts} if parts else {"train": _class_folders(task)}
        elif task.suffix.lower() in (".csv", ".tsv", ".txt"):
            rows = {"train": _csv_file(task)}
            rows.update({name: _csv_file(Path(p)) for name, p in (("valid", valid), ("test", test)) if p})
        else:
            raise DataError(f"{task}: not a HEAR task folder, a folder of class sub-folders, the authors' JSON or a "
                            "CSV of path,label[;label...]")
        splits, vocab, multi = _from_rows(rows, vocab, task.name)
        data = LabelledData(vocab, multi, splits, f"{'class folders' if task.is_dir() else 'CSV'} {task.name}")
    if multi_label is not None:
        data.multi_label = multi_label
    _check(data, seed, holdout_every)
    return data


def _check(data: LabelledData, seed: int, holdout_every: int) -> None:
    """Empty splits, single-label clips with several labels, classes unseen in training; hold out
    validation / test clips when the data has none."""
    for name, rows in data.splits.items():
        if not rows:
            raise DataError(f"{data.source}: the {name} split is empty")
    if not data.multi_label:
        several = [e.path for rows in data.splits.values() for e in rows if len(e.labels) > 1]
        if several:
            raise DataError(f"{data.source}: single-label data, but {len(several)} clip(s) have several labels, "
                            f"e.g. {several[0]} (multi-label: --set multi_label=true)")
    if data.folds:
        return
    if "train" not in data.splits:
        raise DataError(f"{data.source}: no training split")
    missing = [name for name in ("valid", "test") if name not in data.splits]
    if missing:
        before = len(data.splits["train"])
        data.splits.update(holdout(data.splits["train"], missing, holdout_every, seed))
        log.warning("%s: no %s split; holding out %s of the %d training clips (every %d-th clip of each class in a "
                    "seeded order, seed %d)", data.source, " / ".join(missing),
                    " / ".join(str(len(data.splits[m])) for m in missing), before, holdout_every, seed)
    seen = {c for e in data.splits["train"] for c in e.labels}
    for name in ("valid", "test"):
        unseen = sorted({c for e in data.splits[name] for c in e.labels} - seen)
        if unseen:
            names = [data.vocab.names[c] for c in unseen[:5]]
            raise DataError(f"{data.source}: the {name} split has {len(unseen)} class(es) the training split never "
                            f"has, e.g. {names}")


def holdout(rows: list[Example], names: list[str], every: int, seed: int) -> dict[str, list[Example]]:
    """Hold out split(s) `names` (one or two) from `rows`: in a seeded order, the clips at positions
    0, every, 2 * every, ... of each (first-label) class go to names[0], those at every / 2 + k * every
    to names[1]. Returns {"train": the rest, name: held out, ...}, each sorted by path."""
    order = np.random.default_rng(seed).permutation(len(rows))
    count: dict[int, int] = {}
    out: dict[str, list[Example]] = {"train": [], **{n: [] for n in names}}
    for i in order:
        cls = rows[i].labels[0]
        k = count.get(cls, 0)
        count[cls] = k + 1
        target = names[0] if k % every == 0 else names[1] if len(names) > 1 and k % every == every // 2 else "train"
        out[target].append(rows[i])
    for name in names:
        if not out[name] or not out["train"]:
            raise DataError(f"too few clips ({len(rows)}) to hold out a {name} split; give it explicitly")
    return {k: sorted(v, key=lambda e: str(e.path)) for k, v in out.items()}


__all__ = ["DataError", "Example", "LabelledData", "holdout", "load"]
