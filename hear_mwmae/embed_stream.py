"""A clip of any length embedded in bounded memory: sweeps over its 16 kHz samples, a block at a time.

`MWMAERuntime.embed` holds a whole clip, its spectrogram and its chunks; for a 2-hour file
that is gigabytes. `embed_long` takes the clip as a function that yields its samples in blocks
(from a temporary file the decoder wrote, `embed_decode.py`) and sweeps them:

1. the frontend's per-clip statistics (`frontend.clip_statistics`: MW-MAE's log-mel mean and
   std, reduced in float64 a block at a time; Audio-MAE normalises with fixed statistics, so
   it skips this sweep — its clip mean comes from the decoder);
2. raw frames (`frontend.stream_log_mel`) -> normalised -> whole chunks -> the encoder, a
   micro-batch of `max_chunks_per_batch` chunks at a time, cut exactly as `embed` cuts them
   (the same chunks, the same micro-batches, the last chunk completed the frontend's way from
   the frames before it). The scene embedding is accumulated per micro-batch as `embed` does;
   timestamp embeddings go row by row to a temporary file (`Rows`) instead of memory.

Memory: a block of samples, a block of frames, one micro-batch of chunks and the encoder's
activations for it, and one chunk of frames kept for the end: independent of the duration.
The result equals `embed` on the whole clip but for the statistics, reduced in another order
(float rounding: tests/test_embed_stream.py measures it).
"""

from __future__ import annotations

import math
import tempfile
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from .runtime import step_timestamps

FRAMES_PER_BLOCK = 4096  # spectrogram frames computed at a time (40 s of MW-MAE frames)


class Rows:
    """A (steps, D) float32 embedding kept in an anonymous temporary file (gone when closed, or
    when the process dies), written and read a block of rows at a time."""

    def __init__(self, steps: int, dim: int, folder: str | None = None) -> None:
        self.shape = (steps, dim)
        self.dtype = np.dtype(np.float32)
        self.finite = True
        self._fh = tempfile.TemporaryFile(dir=folder)
        self._written = 0

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, np.float32)
        self.finite = self.finite and bool(np.isfinite(rows).all())
        self._fh.write(rows.tobytes())
        self._written += rows.shape[0]

    def blocks(self, rows_per_block: int = 1024) -> Iterator[np.ndarray]:
        if self._written != self.shape[0]:
            raise RuntimeError(f"Rows: {self._written} rows written, {self.shape[0]} expected")
        self._fh.seek(0)
        row_bytes = self.shape[1] * 4
        for first in range(0, self.shape[0], rows_per_block):
            count = min(rows_per_block, self.shape[0] - first)
            yield np.frombuffer(self._fh.read(count * row_bytes), np.float32).reshape(count, self.shape[1])

    def array(self) -> np.ndarray:
        """The whole embedding in memory (for stores that cannot write it in parts)."""
        parts = list(self.blocks())
        return np.concatenate(parts) if parts else np.zeros(self.shape, np.float32)

    def close(self) -> None:
        self._fh.close()


@torch.inference_mode()
def embed_long(runtime: torch.nn.Module, samples: Callable[[], Iterable[np.ndarray]], num_samples: int,
               wave_mean: float, scene_only: bool, rows_folder: str | None = None,
               ) -> tuple[np.ndarray | Rows, np.ndarray]:
    """One clip of `num_samples` 16 kHz samples, yielded in (m,) float32 blocks by each call of
    `samples()`, with mean sample `wave_mean` -> (scene (D,) | Rows (steps, D), timestamps (steps,) ms
    | (0,)), as `runtime.embed(clip[None], scene_only)` gives them (see the module docstring)."""
    fe, cfg, device = runtime.frontend, runtime.config, runtime.device

    def raw_blocks() -> Iterator[torch.Tensor]:
        blocks = (torch.from_numpy(np.ascontiguousarray(b, np.float32)).to(device) for b in samples())
        return fe.stream_log_mel(blocks, wave_mean, FRAMES_PER_BLOCK)

    stats = fe.clip_statistics(raw_blocks())  # sweep 1 (None: fixed statistics, no sweep)
    if stats is not None:
        stats = tuple(t.to(device) for t in stats)
    num_frames = fe.num_frames(num_samples)
    chunk, per_step = cfg.chunk_frames, cfg.frames_per_step
    steps = math.ceil(num_frames / per_step)
    dim = runtime.timestamp_embedding_size
    stamps = step_timestamps(num_frames, per_step, fe.hop_ms, fe.first_frame_ms).numpy()
    scene = torch.zeros(1, dim, device=device)
    rows = None if scene_only else Rows(steps, dim, rows_folder)
    per_pass = runtime.max_chunks_per_batch * chunk  # frames of one micro-batch
    done_steps = 0

    def encode(frames: torch.Tensor) -> None:
        """Normalised (c * chunk, F), c <= max_chunks_per_batch -> one micro-batch, accumulated."""
        nonlocal done_steps
        for _, part in runtime._encode_chunks(frames.reshape(-1, chunk, frames.shape[-1])):
            flat = part.reshape(-1, dim)  # consecutive padded steps
            real = min(flat.shape[0], steps - done_steps)  # the rest only covers padding
            if scene_only:
                scene.index_add_(0, torch.zeros(real, dtype=torch.long, device=device), flat[:real])
            else:
                rows.write(flat[:real].cpu().numpy())
            done_steps += real

    try:
        pending = history = None  # normalised frames not yet encoded; the last chunk encoded
        seen = 0
        for raw in raw_blocks():  # sweep 2
            seen += raw.shape[0]
            norm = fe.normalize(raw[None], stats)[0]
            pending = norm if pending is None else torch.cat([pending, norm])
            while pending.shape[0] >= per_pass:
                encode(pending[:per_pass])
                history, pending = pending[per_pass - chunk:per_pass], pending[per_pass:]
        if seen != num_frames:
            raise RuntimeError(f"embed_long: {seen} frames from {num_samples} samples, expected {num_frames}")
        if pending is not None and pending.shape[0]:
            t = pending.shape[0]
            whole = -(-t // chunk) * chunk
            if whole != t:  # the last chunk completed the frontend's way, from the frames before it
                before = 0 if history is None else history.shape[0]
                frames = pending if history is None else torch.cat([history, pending])
                pending = fe.pad_frames(frames[None], before + whole)[0, before:]
            encode(pending)
    except BaseException:
        if rows is not None:
            rows.close()
        raise
    if scene_only:
        return (scene / steps)[0].cpu().numpy(), stamps[:0]
    return rows, stamps


__all__ = ["FRAMES_PER_BLOCK", "Rows", "embed_long"]
