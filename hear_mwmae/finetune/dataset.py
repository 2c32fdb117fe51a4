"""Fine-tuning examples: labelled audio -> augmented chunks, masking noise, drop-path draws.

Per training example (the Audio-MAE authors' `dataset.AudiosetDataset` in training mode, in
their order):
  1. the clip's waveform (16 kHz mono), times a gain Beta(10, 10) + 0.5 (`gain_aug`, their
     `roll_mag_aug`);
  2. with probability `mixup`: a partner drawn uniformly from the training clips (its own
     gain), aligned to the clip's length (zero-padded or cut), mixed lambda x clip +
     (1 - lambda) x partner with lambda ~ Beta(10, 10); targets mixed alike;
  3. the frontend's normalised spectrogram, padded to one chunk the frontend's way or (longer
     clips, ours) cropped at a random offset (the authors keep the first chunk; AudioSet's
     10 s clips are shorter than their 10.24 s chunk);
  4. SpecAugment: one frequency and one time mask (torchaudio's rule: width U[0, param)
     truncated, start U over the rest), filled with the value a zero raw log-mel normalises
     to (Audio-MAE; the authors mask before normalising) or 0 (MW-MAE's per-clip normalisation);
  5. uniform masking noise (grid_t + grid_f values) and stochastic-depth draws (depth, 2).
All of it comes from a generator seeded with (seed, epoch, position in the epoch), so an
example never depends on the process, worker or resumed run that draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..audio import read_audio
from ..config import AnyFrontendConfig
from ..frontend import build_frontend
from ..pretrain.data import StepSampler
from .data import Example
from .recipes import FinetuneConfig

GAIN_BETA = 10.0  # roll_mag_aug's Beta(10, 10) + 0.5
_ORDER_STREAM = 0xF1E7  # separates the weighted epoch draws from the per-sample streams


class Sample(NamedTuple):
    """x (chunk, F) float32, target (C,) float32, mask noise (grid_t + grid_f,), drop-path draws
    (depth, 2), and damaged clips met: ((index, reason), ...)."""

    x: torch.Tensor
    target: torch.Tensor
    noise: torch.Tensor
    draws: torch.Tensor
    skipped: tuple[tuple[int, str], ...]


@dataclass(frozen=True)
class Shapes:
    """What an example must match: chunk frames, the patch grid, encoder depth, classes."""

    chunk_frames: int
    grid: tuple[int, int]
    depth: int
    num_classes: int


def spec_mask(x: torch.Tensor, axis: int, param: int, rng: np.random.Generator, fill: float) -> None:
    """torchaudio's `mask_along_axis` in place on (T, F): width = int(U * param), start =
    int(U * (size - width_float)); [start, start + width) along `axis` set to `fill`."""
    if param <= 0:
        return
    value = rng.random() * param
    start = int(rng.random() * (x.shape[axis] - value))
    end = start + int(value)
    if axis == 0:
        x[start:end] = fill
    else:
        x[:, start:end] = fill


class FinetuneDataset(Dataset):
    """Key (epoch, position, clip index) -> `Sample`; see the module docstring.

    `cache`: keep decoded waveforms in memory (per process / worker) after first use.
    """

    def __init__(self, examples: Sequence[Example], num_classes: int, frontend: AnyFrontendConfig, shapes: Shapes,
                 cfg: FinetuneConfig, cache: bool = False) -> None:
        self.examples = list(examples)
        self.num_classes = num_classes
        self.frontend = build_frontend(frontend)
        self.shapes = shapes
        self.cfg = cfg
        self.fill = float(self.frontend.normalize(torch.zeros(1, 1, 1))) if frontend.kind == "kaldi_fbank" else 0.0
        self._bad: dict[int, str] = {}
        self._cache: dict[int, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.examples)

    def target(self, index: int) -> np.ndarray:
        out = np.zeros(self.num_classes, np.float32)
        out[list(self.examples[index].labels)] = 1.0
        return out

    def waveform(self, index: int) -> np.ndarray:
        """Clip `index` as (N,) float32 at the frontend's rate (cached when asked)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        audio = read_audio(self.examples[index].path, self.frontend.cfg.sample_rate)[0]
        if self._cache is not None:
            self._cache[index] = audio
        return audio

    def _readable(self, index: int, skipped: list[tuple[int, str]]) -> tuple[int, np.ndarray]:
        """The first readable clip from `index` on (damaged ones are reported once and replaced)."""
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self._bad:
                continue
            try:
                return i, self.waveform(i)
            except Exception as exc:  # decoders raise many kinds; all mean "cannot use"
                self._bad[i] = f"{type(exc).__name__}: {exc}".splitlines()[0]
                skipped.append((i, self._bad[i]))
        raise RuntimeError("no clip of the training set is readable")

    @torch.no_grad()
    def __getitem__(self, key: tuple[int, int, int]) -> Sample:
        epoch, position, index = key
        cfg, shapes = self.cfg, self.shapes
        rng = np.random.default_rng([cfg.seed, epoch, position])
        skipped: list[tuple[int, str]] = []
        index, audio = self._readable(index, skipped)
        target = self.target(index)
        if cfg.gain_aug:
            audio = audio * np.float32(rng.beta(GAIN_BETA, GAIN_BETA) + 0.5)
        if cfg.mixup > 0 and rng.random() < cfg.mixup:
            partner, other = self._readable(int(rng.integers(len(self))), skipped)
            lam = float(rng.beta(cfg.mixup_beta, cfg.mixup_beta))
            if cfg.gain_aug:
                other = other * np.float32(rng.beta(GAIN_BETA, GAIN_BETA) + 0.5)
            aligned = np.zeros_like(audio)
            aligned[: min(len(audio), len(other))] = other[: len(audio)]
            audio = (lam * audio + (1.0 - lam) * aligned).astype(np.float32)
            target = lam * target + (1.0 - lam) * self.target(partner)
        x = self.frontend(torch.from_numpy(np.ascontiguousarray(audio))[None])[0]  # (T, F) normalised
        chunk = shapes.chunk_frames
        if x.shape[0] < chunk:
            x = self.frontend.pad_frames(x[None], chunk)[0]
        else:
            start = int(rng.integers(0, x.shape[0] - chunk + 1))
            x = x[start:start + chunk].clone()
        spec_mask(x, 1, cfg.freqm, rng, self.fill)
        spec_mask(x, 0, cfg.timem, rng, self.fill)
        noise = torch.from_numpy(rng.random(sum(shapes.grid), dtype=np.float32))
        draws = torch.from_numpy(rng.random((shapes.depth, 2), dtype=np.float32))
        return Sample(x.contiguous(), torch.from_numpy(np.asarray(target, np.float32)), noise, draws, tuple(skipped))


def collate(samples: Sequence[Sample]) -> tuple[torch.Tensor, ...] | tuple:
    """Samples -> (x (B, T, F), targets (B, C), noise (B, grid_t + grid_f), draws (B, depth, 2),
    damaged clips met, each once)."""
    skipped = dict(kv for s in samples for kv in s.skipped)
    return (torch.stack([s.x for s in samples]), torch.stack([s.target for s in samples]),
            torch.stack([s.noise for s in samples]), torch.stack([s.draws for s in samples]), sorted(skipped.items()))


def sample_weights(examples: Sequence[Example], num_classes: int) -> np.ndarray:
    """The authors' gen_weight.py: label weight 1000 / (label count + 0.01), a clip's weight
    the sum over its labels. (n,) float64."""
    counts = np.zeros(num_classes)
    for e in examples:
        counts[list(e.labels)] += 1
    label_weight = 1000.0 / (counts + 0.01)
    return np.array([label_weight[list(e.labels)].sum() for e in examples])


class EpochSampler(StepSampler):
    """`StepSampler` whose keys carry the position in the epoch, (epoch, position, clip), so that
    a clip drawn twice in an epoch gets two different augmentations; with `weights`, each epoch
    is `epoch_len` weighted draws with replacement (seeded by (seed, epoch)) instead of a
    permutation (the authors' WeightedRandomSampler, replacement on as their scripts run it)."""

    def __init__(self, num_items: int, batch_size: int, world_size: int, rank: int, accum_steps: int, seed: int,
                 start_step: int, stop_step: int, weights: np.ndarray | None = None, epoch_len: int = 0) -> None:
        self.clips = num_items
        self.weights = None if weights is None else weights / weights.sum()
        per_epoch = (epoch_len or num_items) if weights is not None else num_items
        super().__init__(per_epoch, batch_size, world_size, rank, accum_steps, seed, start_step, stop_step)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if self.weights is None:
            return super().epoch_order(epoch)
        rng = np.random.default_rng([self.seed, _ORDER_STREAM, epoch])
        return rng.choice(self.clips, size=self.num_items, replace=True, p=self.weights)

    def key(self, epoch: int, position: int, index: int) -> tuple[int, int, int]:
        return epoch, position, index


__all__ = ["EpochSampler", "FinetuneDataset", "Sample", "Shapes", "collate", "sample_weights", "spec_mask"]
