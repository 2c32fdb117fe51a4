"""Hugging Face `datasets` with an Audio column, embedded without torchcodec.

    ds = hear_mwmae.embed_dataset(ds, model, audio_column="audio", mode="scene")
    hear-mwmae embed --model ... --hf-dataset DIR_OR_NAME [--split S] [--audio-column C] --out DIR

Recent `datasets` releases decode (and even encode) Audio values only through torchcodec, which
does not install with every torch. Here the column is read with `Audio(decode=False)` — each
value is the file's stored bytes, or a path to it — and decoded by `hear_mwmae.audio` like any
file: mixed down, resampled to 16 kHz, checked.

`embed_dataset` returns the dataset with `embedding` added (scene: D float32 per row; timestamp
mode: steps x D) and, in timestamp mode, `timestamps` (ms), computed by a batched `map` (the rows
of a batch go through `embed`'s own device batching, `embed_pipeline.embed_decoded`); the Audio
column keeps its own feature.

`dataset_plan` turns a dataset's rows into `embed` jobs (the CLI's --hf-dataset, written as
Parquet): each row's input is "<dataset>[<split>]/<row>", its fingerprint the sha256 of its
stored bytes (or its file's size, times and inode), so resume, staleness and removed rows work
per row as they do per file. A save_to_disk folder, a local folder of Parquet files or a Hub
name load with `datasets.load_from_disk` / `load_dataset`; an audiofolder needs torchcodec in
`datasets` itself (embed its files directly instead: `hear-mwmae embed DIR --format parquet`).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .embed_plan import Plan, canonical
from .errors import UsageError

NO_DATASETS = "Hugging Face datasets are read with the `datasets` package: pip install datasets (or 'hear-mwmae[datasets]')"


def _datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise UsageError(NO_DATASETS) from None
    return datasets


def raw_audio(ds: Any, audio_column: str) -> Any:
    """`ds` with its Audio column read as stored ({"bytes", "path"}), not decoded."""
    datasets = _datasets()
    feature = ds.features.get(audio_column)
    if not isinstance(feature, datasets.Audio):
        columns = ", ".join(f"{k} ({type(v).__name__})" for k, v in ds.features.items())
        raise UsageError(f"the dataset has no Audio column {audio_column!r} (its columns: {columns}); name it with "
                         f"--audio-column / audio_column=")
    return ds.cast_column(audio_column, datasets.Audio(decode=False))


def audio_source(value: Any, row: int) -> Any:
    """What `audio.open_audio` opens for one stored Audio value: (name, bytes), or a path."""
    if not isinstance(value, dict):
        raise ValueError(f"row {row}: not an Audio value")
    data, path = value.get("bytes"), value.get("path")
    if data:
        return (path or f"row-{row}.wav", bytes(data))
    if path:
        return path
    raise ValueError(f"row {row}: the Audio value holds neither bytes nor a path")


def embed_dataset(ds: Any, model: Any, audio_column: str = "audio", mode: str = "scene", batch_size: int = 16,
                  max_duration: float | None = None) -> Any:
    """`ds` (a `datasets.Dataset` with an Audio column) with `embedding` (and, in timestamp mode,
    `timestamps`) added; see the module docstring. `model` comes from `hear_mwmae.load_model`.
    A row that cannot be decoded or embeds to NaN / Inf raises ValueError naming the row."""
    from . import _runtime
    from .embed_decode import decode_clip
    from .embed_pipeline import check_finite, embed_decoded

    datasets = _datasets()
    runtime = _runtime(model)
    if mode not in ("scene", "timestamp"):
        raise ValueError(f"mode must be 'scene' or 'timestamp', got {mode!r}")
    original = ds.features.get(audio_column)
    raw = raw_audio(ds, audio_column)
    dim = runtime.timestamp_embedding_size
    features = raw.features.copy()
    seq = getattr(datasets, "List", None) or datasets.Sequence  # (datasets < 4: Sequence)
    if mode == "scene":
        features["embedding"] = seq(datasets.Value("float32"), length=dim)
    else:
        features["embedding"] = seq(seq(datasets.Value("float32"), length=dim))
        features["timestamps"] = seq(datasets.Value("float32"))

    def embed_batch(batch: dict[str, list], rows: list[int]) -> dict[str, list]:
        with tempfile.TemporaryDirectory(prefix="hear-mwmae-") as spill:
            clips = []
            for value, row in zip(batch[audio_column], rows):
                clip = decode_clip(audio_source(value, row), spill, max_duration)
                if clip.error:
                    raise ValueError(f"row {row}: {clip.error}")
                clips.append(clip)
            results: dict[int, tuple] = {}
            for i, clip, emb, stamps, error in embed_decoded(runtime, enumerate(clips), mode == "scene"):
                if error is not None:
                    raise ValueError(f"row {rows[i]}: {error}")
                try:
                    check_finite(emb, clip.peak)
                except ValueError as exc:
                    raise ValueError(f"row {rows[i]}: {exc}") from None
                results[i] = (emb if isinstance(emb, np.ndarray) else emb.array(), stamps)
        out = {"embedding": [results[i][0] for i in range(len(clips))]}
        if mode == "timestamp":
            out["timestamps"] = [results[i][1] for i in range(len(clips))]
        return out

    done = raw.map(embed_batch, batched=True, batch_size=batch_size, with_indices=True, features=features,
                   load_from_cache_file=False, new_fingerprint=secrets.token_hex(16),  # (no hashing of the model)
                   desc="embed")
    return done.cast_column(audio_column, original)


# ----------------------------------------------------------------------------- --hf-dataset
def load(path_or_name: str, split: str | None) -> tuple[Any, str, str]:
    """(dataset, its name for the index, split) of --hf-dataset."""
    datasets = _datasets()
    path = Path(path_or_name)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            loaded, name = datasets.load_from_disk(str(path)), str(canonical(path))
        else:
            loaded = datasets.load_dataset(str(path) if path.exists() else path_or_name)
            name = str(canonical(path)) if path.exists() else path_or_name
    except Exception as exc:  # noqa: BLE001 - datasets raises many types for a missing / unreadable dataset
        missing = _import_error(exc)
        if missing is not None:  # e.g. the audiofolder builder encodes every file with torchcodec
            raise UsageError(f"--hf-dataset {path_or_name}: `datasets` cannot build it without a package it "
                             f"needs ({' '.join(str(missing).split())[:200]}); a folder of audio files embeds "
                             f"directly: hear-mwmae embed {path_or_name} --format parquet") from None
        raise UsageError(f"--hf-dataset {path_or_name}: cannot load it: {' '.join(str(exc).split())[:300]}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        chosen = split or ("train" if "train" in loaded else splits[0] if len(splits) == 1 else None)
        if chosen not in loaded:
            raise UsageError(f"--hf-dataset {path_or_name}: choose a split with --split ({', '.join(splits)})")
        return loaded[chosen], name, chosen
    if split is not None and str(loaded.split) != split:
        raise UsageError(f"--hf-dataset {path_or_name}: it holds one split ({loaded.split}), not {split!r}")
    return loaded, name, str(loaded.split or "train")


def _import_error(exc: BaseException | None) -> ImportError | None:
    """The ImportError in `exc`'s chain of causes, if any."""
    while exc is not None:
        if isinstance(exc, ImportError):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


@dataclass(frozen=True)
class RowJob:
    """One row of a dataset as an `embed` job (written to Parquet: no output names of its own)."""

    source: PurePosixPath  # "<dataset>[<split>]/<row>": the index key
    relative: str  # the stored file name, or the row number
    dataset: Any = field(repr=False, compare=False)
    audio_column: str = "audio"
    row: int = 0
    output: None = None
    timestamps: None = None
    outputs: tuple = ()

    def read(self) -> Any:
        return audio_source(self.dataset[self.row][self.audio_column], self.row)

    def facts(self) -> dict[str, Any]:
        """The row's fingerprint: the sha256 of its stored bytes, or its file's size, times and inode."""
        source = self.read()
        if isinstance(source, tuple):
            return {"input_fingerprint": hashlib.sha256(source[1]).hexdigest()}
        st = os.stat(source)
        return {"input_fingerprint": f"file {st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino}"}


def dataset_plan(path_or_name: str, split: str | None, audio_column: str, mode: str) -> Plan:
    """The rows of --hf-dataset as jobs; the scope is the dataset's split (rows gone from it are "removed")."""
    ds, name, split = load(path_or_name, split)
    raw = raw_audio(ds, audio_column)
    prefix = PurePosixPath(f"{name}[{split}]")
    stored = raw.select_columns([audio_column]).flatten()[f"{audio_column}.path"]  # names only, not the bytes
    plan = Plan(scope=[Path(str(prefix))])
    for row, path in enumerate(stored):
        plan.jobs.append(RowJob(prefix / str(row), os.path.basename(path) if path else str(row), raw, audio_column,
                                row))
    return plan


__all__ = ["NO_DATASETS", "RowJob", "audio_source", "dataset_plan", "embed_dataset", "load", "raw_audio"]
