"""Pre-training data: audio files or precomputed log-mels -> random 2 s crops + mask noise.

Sources: folders (searched recursively), manifests (`.txt`: one path per line; `.csv`:
a `files` column as in the release, else the first column; relative paths are relative
to the manifest) or single files. Audio is anything soundfile reads, mixed to mono and
resampled to 16 kHz; `.npy` files hold a raw log-mel (T, 80) from `LogMelFrontend.log_mel`.

As in the release, each clip's whole log-mel is normalised per clip, then a random
200-frame crop is taken (clips shorter than the crop are reflect-padded). Normalisation
uses the frontend's unbiased std; the release's TF pipeline used the biased one
(a relative difference of 1 / (2 T F), about 6e-6 for a 10 s clip).

Randomness is stateless: the crop offset and the masking noise of sample `i` in epoch
`e` come from a generator seeded with (seed, e, i). Which process, worker or resumed run
draws a sample therefore never changes what it sees.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler

from ..audio import AUDIO_SUFFIXES, read_audio
from ..config import FrontendConfig
from ..frontend import LogMelFrontend, reflect_indices

log = logging.getLogger(__name__)

LOGMEL_SUFFIX = ".npy"
DATA_SUFFIXES = AUDIO_SUFFIXES | {LOGMEL_SUFFIX}  # what a data folder is searched for
MANIFEST_SUFFIXES = frozenset({".txt", ".csv"})
_ORDER_STREAM = 0x5EED  # separates the epoch-permutation stream from per-sample streams


@dataclass(frozen=True)
class Clip:
    """One usable training file; `frames` is its log-mel length at the frontend's rate."""

    path: Path
    frames: int


def _read_manifest(path: Path) -> list[Path]:
    text = path.read_text().splitlines()
    if path.suffix.lower() == ".csv":
        rows = list(csv.reader(text))
        header = [h.strip() for h in rows[0]] if rows else []
        column = header.index("files") if "files" in header else 0
        entries = [row[column] for row in rows[1:] if row]
    else:
        entries = [line.strip() for line in text if line.strip() and not line.lstrip().startswith("#")]
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def find_files(sources: Sequence[str | Path]) -> list[Path]:
    """Expand folders and manifests into a sorted, de-duplicated list of candidate files."""
    found: list[Path] = []
    for source in map(Path, sources):
        if source.is_dir():
            found += [p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in DATA_SUFFIXES]
        elif source.suffix.lower() in MANIFEST_SUFFIXES and source.is_file():
            found += _read_manifest(source)
        elif source.exists():
            found.append(source)
        else:
            raise FileNotFoundError(f"data source {source} does not exist")
    return sorted(set(found))


def _num_frames(path: Path, frontend: FrontendConfig) -> int:
    """Log-mel frames the file yields; raises on anything unreadable or empty."""
    if path.suffix.lower() == LOGMEL_SUFFIX:
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2 or arr.shape[1] != frontend.n_mels or arr.shape[0] < 1:
            raise ValueError(f"log-mel must be (T, {frontend.n_mels}), got {arr.shape}")
        return int(arr.shape[0])
    info = sf.info(str(path))
    samples = int(info.frames * frontend.sample_rate / info.samplerate)
    if samples < 1:
        raise ValueError("no audio samples")
    return 1 + samples // frontend.hop_length


def scan(sources: Sequence[str | Path], frontend: FrontendConfig) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """Check every file once. Returns (usable clips, [(path, reason)] for the skipped ones)."""
    clips: list[Clip] = []
    skipped: list[tuple[Path, str]] = []
    for path in find_files(sources):
        try:
            clips.append(Clip(path, _num_frames(path, frontend)))
        except Exception as exc:  # soundfile / numpy raise many kinds; all mean "cannot use"
            skipped.append((path, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    for path, why in skipped[:20]:
        log.warning("skipping unreadable file %s (%s)", path, why)
    if len(skipped) > 20:
        log.warning("... and %d more unreadable files", len(skipped) - 20)
    return clips, skipped


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any soundfile-readable file -> mono float32 (N,) at `sample_rate` (see `hear_mwmae.audio`)."""
    return read_audio(path, sample_rate)[0]


class CropDataset(Dataset):
    """Item `(epoch, index)` -> (crop (crop_frames, n_mels) float32, mask noise (num_patches,) float32).

    With `cache` the normalised log-mel of each clip is kept in memory after first use
    (per process / DataLoader worker).
    """

    def __init__(self, clips: Sequence[Clip], frontend: FrontendConfig, crop_frames: int, num_patches: int,
                 seed: int, cache: bool = False) -> None:
        self.clips = list(clips)
        self.frontend = LogMelFrontend(frontend)
        self.crop_frames = crop_frames
        self.num_patches = num_patches
        self.seed = seed
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.clips)

    @torch.no_grad()
    def normalized_logmel(self, index: int) -> torch.Tensor:
        """The whole clip's per-clip normalised log-mel (T, n_mels)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        path = self.clips[index].path
        if path.suffix.lower() == LOGMEL_SUFFIX:
            logmel = torch.from_numpy(np.load(path).astype(np.float32))[None]
        else:
            audio = torch.from_numpy(load_audio(path, self.frontend.cfg.sample_rate))
            logmel = self.frontend.log_mel(audio[None])
        out = self.frontend.normalize(logmel)[0]
        if self._cache is not None:
            self._cache[index] = out
        return out

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        for offset in range(len(self)):
            try:
                logmel = self.normalized_logmel((index + offset) % len(self))
                break
            except Exception as exc:  # the file passed `scan` but its data is damaged
                log.warning("cannot read %s (%s); using the next clip instead",
                            self.clips[(index + offset) % len(self)].path, exc)
        else:
            raise RuntimeError("no clip of the dataset is readable")
        frames = logmel.shape[0]
        if frames < self.crop_frames:
            pad = self.crop_frames - frames
            logmel = logmel[reflect_indices(frames, pad // 2, pad - pad // 2)]
            frames = self.crop_frames
        start = int(rng.integers(0, frames - self.crop_frames + 1))
        noise = torch.from_numpy(rng.random(self.num_patches, dtype=np.float32))
        return logmel[start : start + self.crop_frames].contiguous(), noise


class StepSampler(Sampler[list[tuple[int, int]]]):
    """Micro-batches of `(epoch, index)` keys for one process, from optimiser step `start_step`.

    Epoch e visits the dataset in a permutation seeded by (seed, e); optimiser step s of the
    epoch uses positions [s*B, (s+1)*B) of it (the last incomplete batch is dropped). Rank r
    takes the r-th contiguous share of that global batch and splits it into `accum_steps`
    micro-batches, so the samples of a step are the same for any world size.
    """

    def __init__(self, num_items: int, batch_size: int, world_size: int, rank: int, accum_steps: int, seed: int,
                 start_step: int, stop_step: int) -> None:
        if batch_size % (world_size * accum_steps):
            raise ValueError(f"batch_size {batch_size} not divisible by world_size x accum_steps")
        self.steps_per_epoch = num_items // batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{num_items} usable clips are fewer than one batch of {batch_size}")
        self.num_items, self.batch_size, self.seed = num_items, batch_size, seed
        self.world_size, self.rank, self.accum_steps = world_size, rank, accum_steps
        self.start_step, self.stop_step = start_step, stop_step

    def epoch_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, _ORDER_STREAM, epoch]).permutation(self.num_items)

    def __len__(self) -> int:
        return max(0, self.stop_step - self.start_step) * self.accum_steps

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        share = self.batch_size // self.world_size
        micro = share // self.accum_steps
        order, order_epoch = None, -1
        for step in range(self.start_step, self.stop_step):
            epoch, pos = divmod(step, self.steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = self.epoch_order(epoch), epoch
            batch = order[pos * self.batch_size : (pos + 1) * self.batch_size]
            mine = batch[self.rank * share : (self.rank + 1) * share]
            for a in range(self.accum_steps):
                yield [(epoch, int(i)) for i in mine[a * micro : (a + 1) * micro]]


__all__ = ["Clip", "CropDataset", "StepSampler", "find_files", "load_audio", "scan"]
