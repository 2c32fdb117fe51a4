"""Scoring a split during and after fine-tuning, through the same path as `get_logits`.

Each clip is read as `embed` / `tag` read it (decoded, mixed to mono, resampled to 16 kHz),
cut into the runtime's chunks, and its logits are the mean over chunks: evaluation measures
exactly what a user of the fine-tuned model gets. The model is copied into an
`MWMAERuntime` (so the training model is never changed); under torchrun each process
scores every world_size-th clip and rank 0 gathers them.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from typing import Any, Sequence

import numpy as np
import torch

from ..audio import read_audio
from ..classifier import AudioClassifier
from ..config import MWMAEConfig
from ..pretrain import distributed
from ..runtime import MWMAERuntime
from .data import Example
from .metrics import classification_metrics

log = logging.getLogger(__name__)
CLIPS_PER_CALL = 16  # equal-length clips scored together


def runtime_of(model: AudioClassifier, config: MWMAEConfig, device: torch.device,
               max_chunks_per_batch: int | None = None) -> MWMAERuntime:
    """A frozen copy of `model` as the HEAR runtime with its classifier (what `load_model` builds)."""
    return MWMAERuntime(copy.deepcopy(model.encoder), config, device=device, max_chunks_per_batch=max_chunks_per_batch,
                        classifier=copy.deepcopy(model.classifier))


def predict(runtime: MWMAERuntime, examples: Sequence[Example], info: distributed.DistInfo,
            cache: dict[int, np.ndarray] | None = None) -> tuple[np.ndarray, dict[int, str]]:
    """Logits (n, C) float32 of every example (rows of unreadable clips are NaN) and
    {index: reason} of the unreadable ones; the same on every process (a collective)."""
    mine: dict[int, np.ndarray] = {}
    failed: dict[int, str] = {}
    by_length: dict[int, list[tuple[int, np.ndarray]]] = defaultdict(list)
    for i in range(info.rank, len(examples), info.world_size):
        try:
            audio = cache[i] if cache is not None and i in cache else read_audio(examples[i].path)[0]
        except Exception as exc:  # decoders raise many kinds; all mean "cannot score"
            failed[i] = f"{type(exc).__name__}: {exc}".splitlines()[0]
            continue
        if cache is not None:
            cache[i] = audio
        by_length[len(audio)].append((i, audio))
    for group in by_length.values():
        for k in range(0, len(group), CLIPS_PER_CALL):
            part = group[k:k + CLIPS_PER_CALL]
            logits, _ = runtime.logits(torch.from_numpy(np.stack([a for _, a in part])))
            mine.update(zip((i for i, _ in part), logits.cpu().numpy()))
    out = np.full((len(examples), runtime.config.head.num_classes), np.nan, np.float32)
    for part_rows, part_failed in distributed.gather_objects((mine, failed), info):
        for i, row in part_rows.items():
            out[i] = row
        failed.update(part_failed)
    return out, failed


def score_split(runtime: MWMAERuntime, examples: Sequence[Example], targets: np.ndarray, multi_label: bool,
                info: distributed.DistInfo, cache: dict[int, np.ndarray] | None = None,
                split: str = "valid") -> dict[str, Any]:
    """Metrics of a split (`metrics.classification_metrics`) over its readable clips, with the
    number left out ("unreadable") and a warning naming the first of them."""
    logits, failed = predict(runtime, examples, info, cache)
    if failed:
        first = min(failed)
        log.warning("%s split: %d clip(s) unreadable and left out of the metrics, e.g. %s (%s)", split, len(failed),
                    examples[first].path, failed[first])
    keep = np.array([i not in failed for i in range(len(examples))])
    if not keep.any():
        raise ValueError(f"no clip of the {split} split is readable")
    result = classification_metrics(logits[keep], targets[keep], multi_label)
    result["unreadable"] = len(failed)
    return result


__all__ = ["CLIPS_PER_CALL", "predict", "runtime_of", "score_split"]
