"""Device batches for `embed`: clips of any lengths, their chunks in one encoder pass.

`MWMAERuntime.embed` takes clips of one length (HEAR's (B, N)); a corpus has every length. Since
chunks are independent once each clip is normalised, `embed_clips` computes each clip's
normalised chunks (one frontend call per group of equal lengths), concatenates the chunks of
all clips, runs the encoder over them in micro-batches of `max_chunks_per_batch`, and gives
each clip its steps back: nothing is padded to a common length, and a batch of short clips of
different lengths still fills the device. Each clip's result is what `runtime.embed` gives for it
alone, up to float rounding of the batched matrix products.

`plan_batches` groups a stream of clips into such batches in their order (so the batches, and
the results, do not depend on how fast the clips arrive): up to `chunk_budget` chunks or
`max_clips` clips; a clip held in a temporary file (long) makes a batch of its own.

On CUDA the audio goes through pinned memory with a non-blocking copy.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

from .runtime import num_chunks, step_timestamps, validate_audio

T = TypeVar("T")


def plan_batches(items: Iterable[T], chunks_of: Callable[[T], int | None], chunk_budget: int,
                 max_clips: int = 256) -> Iterator[list[T]]:
    """Consecutive items grouped up to `chunk_budget` chunks / `max_clips` items; an item whose
    `chunks_of` is None (a long clip, swept on its own) is a batch of one."""
    batch: list[T] = []
    chunks = 0
    for item in items:
        n = chunks_of(item)
        if n is None:
            if batch:
                yield batch
                batch, chunks = [], 0
            yield [item]
            continue
        if batch and (chunks + n > chunk_budget or len(batch) >= max_clips):
            yield batch
            batch, chunks = [], 0
        batch.append(item)
        chunks += n
    if batch:
        yield batch


def clip_chunks(runtime: torch.nn.Module, num_samples: int) -> int:
    """Encoder chunks a clip of `num_samples` 16 kHz samples needs."""
    return num_chunks(runtime.frontend.num_frames(num_samples), runtime.config.chunk_frames)


def _to_device(audio: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(audio)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


@torch.inference_mode()
def embed_clips(runtime: torch.nn.Module, clips: list[np.ndarray], scene_only: bool,
                ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(n_i,) float32 16 kHz clips -> per clip (scene (D,) | embeddings (steps_i, D), timestamps
    (steps_i,) ms | (0,)), float32 numpy, as `runtime.embed(clip[None])` gives them."""
    if not clips:
        return []
    cfg, fe, device = runtime.config, runtime.frontend, runtime.device
    spc, dim = cfg.model.grid_size[0], runtime.timestamp_embedding_size
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, clip in enumerate(clips):
        by_length[clip.shape[0]].append(i)
    parts: dict[int, torch.Tensor] = {}
    with warnings.catch_warnings():  # the caller names loud files itself; a group is never "transposed"
        warnings.filterwarnings("ignore", message=".*(audio peak|transposed)")
        for length, members in by_length.items():
            audio = validate_audio(_to_device(np.stack([clips[i] for i in members]), device))
            chunks = runtime._chunks(audio)  # (len(members) * C, chunk, F), clip-major
            for j, i in enumerate(chunks.split(chunks.shape[0] // len(members))):
                parts[members[j]] = i
    frames = [fe.num_frames(c.shape[0]) for c in clips]
    steps = torch.tensor([math.ceil(t / cfg.frames_per_step) for t in frames], device=device)
    padded = torch.tensor([parts[i].shape[0] * spc for i in range(len(clips))], device=device)
    first_padded = torch.cumsum(padded, 0) - padded  # where each clip's padded steps start
    first_real = torch.cumsum(steps, 0) - steps  # where its real steps start in `flat_out`
    all_chunks = torch.cat([parts[i] for i in range(len(clips))])  # (sum C_i, chunk, F)
    out = torch.zeros(len(clips), dim, device=device) if scene_only else \
        torch.empty(int(steps.sum()), dim, device=device)
    for first_row, part in runtime._encode_chunks(all_chunks):
        flat = part.reshape(-1, dim)  # consecutive padded steps of consecutive clips
        g = torch.arange(first_row * spc, first_row * spc + flat.shape[0], device=device)
        clip = torch.searchsorted(first_padded, g, right=True) - 1
        step = g - first_padded[clip]
        real = step < steps[clip]  # drop the steps that only cover padding
        if scene_only:
            out.index_add_(0, clip[real], flat[real])
        else:
            out[first_real[clip[real]] + step[real]] = flat[real]
    results = []
    if scene_only:
        scene = (out / steps[:, None]).cpu().numpy()
        return [(scene[i], np.zeros(0, np.float32)) for i in range(len(clips))]
    out = out.cpu().numpy()
    for i, t in enumerate(frames):
        a, s = int(first_real[i]), int(steps[i])
        stamps = step_timestamps(t, cfg.frames_per_step, fe.hop_ms, fe.first_frame_ms).numpy()
        results.append((out[a:a + s], stamps))
    return results


__all__ = ["clip_chunks", "embed_clips", "plan_batches"]
