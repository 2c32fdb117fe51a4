"""Files -> decoded 16 kHz mono clips for `embed` and `tag`, in bounded memory.

`decode_clip(source)` reads a file a block at a time (`audio.open_audio`, mixed down and
resampled as it goes) and returns a `Clip`: its samples in memory when it is short (at most
`IN_MEMORY_SAMPLES`: 5 minutes, 19 MB), else written to a temporary file in `spill_dir` (4 bytes a
sample; the embedding then sweeps it, `embed_stream.py`). Nothing longer than a block of the
file and the in-memory limit is ever held, whatever the file claims or holds. A file that
cannot be used gives a Clip whose `error` is the reason ("error: truncated: ..."), so a
decoder running in another process never has to send an exception back.

Temporary files are named `.decoded.xxxxxxxx.tmp` (the pattern `embed_index.clean_temporary`
removes after a crash) and removed by `Clip.discard`.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .audio import mono_blocks, open_audio
from .out_folder import temporary_name

IN_MEMORY_SAMPLES = 16000 * 300  # a clip longer than 5 min of 16 kHz audio goes to a temporary file
READ_BLOCK = 1 << 18  # samples read back from a temporary file at a time


def failure_reason(exc: BaseException) -> str:
    """The index status of a file that could not be decoded or embedded: one line."""
    reason = f"error: {exc}" if isinstance(exc, ValueError) else f"error: {type(exc).__name__}: {exc}"
    return " ".join(reason.split())


@dataclass
class Clip:
    """One decoded file: (n,) float32 at 16 kHz in `samples`, or in the file `spill`; `info` the
    decoder's facts (duration_s, sample_rate, channels, decoder); `error` instead when unusable."""

    samples: np.ndarray | None = None
    spill: str | None = None
    num_samples: int = 0
    wave_sum: float = 0.0  # float64 sum of the samples (a frontend that removes the clip mean needs it)
    peak: float = 0.0
    info: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    @property
    def wave_mean(self) -> float:
        return self.wave_sum / max(self.num_samples, 1)

    def blocks(self, size: int = READ_BLOCK) -> Iterator[np.ndarray]:
        """The samples, (m,) float32 blocks, from memory or read back from the temporary file."""
        if self.samples is not None:
            yield self.samples
            return
        with open(self.spill, "rb") as fh:
            while True:
                block = np.empty(size, np.float32)
                got = fh.readinto(block)
                if not got:
                    return
                yield block[:got // 4]

    def discard(self) -> None:
        """Remove the temporary file, if any."""
        if self.spill is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spill)
            self.spill = None


def decode_clip(source: str | Path, spill_dir: str | Path | None = None, max_duration: float | None = None,
                in_memory: int | None = None) -> Clip:
    """Decode `source` (see the module docstring). Without `spill_dir` every clip stays in memory."""
    limit = IN_MEMORY_SAMPLES if in_memory is None else in_memory
    clip, blocks, spill = Clip(), [], None
    try:
        with open_audio(source, max_duration) as stream:
            for block in mono_blocks(stream):
                clip.num_samples += block.shape[0]
                clip.wave_sum += float(block.sum(dtype=np.float64))
                clip.peak = max(clip.peak, float(np.abs(block).max()))
                if spill is None and spill_dir is not None and clip.num_samples > limit:
                    clip.spill, spill = _open_spill(spill_dir)
                    for held in blocks:
                        spill.write(held.tobytes())
                    blocks = []
                if spill is not None:
                    spill.write(np.ascontiguousarray(block, np.float32).tobytes())
                else:
                    blocks.append(block)
            clip.info = stream.facts()
        if spill is not None:
            spill.close()
        else:
            clip.samples = np.ascontiguousarray(np.concatenate(blocks) if len(blocks) > 1 else blocks[0], np.float32)
    except Exception as exc:  # decoders raise several types for unusable files
        if spill is not None:
            spill.close()
        clip.discard()
        return Clip(error=failure_reason(exc), info=clip.info)
    return clip


def _open_spill(folder: str | Path) -> tuple[str, Any]:
    """(path, binary handle) of a new temporary file in `folder` (created exclusively, never through a link)."""
    for _ in range(100):
        path = os.path.join(os.fspath(folder), temporary_name("decoded"))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except FileExistsError:
            continue
        return path, os.fdopen(fd, "wb")
    raise FileExistsError(f"no free temporary file name in {folder}")


__all__ = ["IN_MEMORY_SAMPLES", "Clip", "decode_clip", "failure_reason"]
