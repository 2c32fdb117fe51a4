"""Pre-training data: audio files or precomputed features -> random crops + mask noise.

Sources: folders (searched recursively), manifests (`.txt`: one path per line; `.csv`:
a `files` column as in the MW-MAE release, else the first column; relative paths are
relative to the manifest) or single files. Audio is anything soundfile reads, mixed to
mono and resampled to the frontend's rate; `.npy` files hold the frontend's raw
spectrogram (T, n_mels) as `frontend.log_mel` returns it (log-mel 80 for MW-MAE, log
Kaldi fbank 128 for Audio-MAE; `scripts/precompute_logmels.py` writes them).

One path for both families, driven by the config (`hear_mwmae.frontend.build_frontend`):
each clip's whole spectrogram is computed and normalised the frontend's way (per clip
for log-mel, AudioSet statistics for fbank), then a random crop of `crop_frames` frames
(the model's `img_size[0]`: 200 or 1024) is taken. A clip shorter than the crop is
completed by the frontend's `pad_frames` (reflection / zero raw fbank), the clip centred
(`pad="centre"`, MW-MAE's recipes) or at the start (`pad="end"`, as the Audio-MAE authors
pad). Differences from the authors' pipelines:
- MW-MAE: the unbiased std of the frontend; the release's TF pipeline used the biased
  one (a relative difference of 1 / (2 T F), about 6e-6 for a 10 s clip).
- Audio-MAE: clips longer than 1024 frames are cropped at a random offset; the authors
  keep the first 1024 frames (AudioSet's 10 s clips have 998 frames, so for them both are
  "pad to 1024").

Randomness is stateless: the crop offset, the masking noise (`noise_size` uniform values:
one per patch, or per time row + per frequency column for 2-D masking) and the optional
gain of sample `i` in epoch `e` come from a generator seeded with (seed, e, i). Which
process, worker or resumed run draws a sample therefore never changes what it sees.

Damaged files (NaN / Inf samples or features, truncated, undecodable) that pass `scan`
are found when first read: the item then uses the next readable clip (deterministically)
and reports the damaged one, so the trainer lists it once in `skipped_files.txt` and
warns once, however many workers or processes meet it.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset, Sampler

from ..audio import AUDIO_SUFFIXES, read_audio
from ..config import AnyFrontendConfig
from ..frontend import build_frontend

log = logging.getLogger(__name__)

LOGMEL_SUFFIX = ".npy"
DATA_SUFFIXES = AUDIO_SUFFIXES | {LOGMEL_SUFFIX}  # what a data folder is searched for
MANIFEST_SUFFIXES = frozenset({".txt", ".csv"})
SKIPPED_NAME = "skipped_files.txt"
PADS = ("centre", "end")
GAIN_BETA = 10.0  # Audio-MAE's roll_mag_aug gain: Beta(10, 10) + 0.5
_ORDER_STREAM = 0x5EED  # separates the epoch-permutation stream from per-sample streams


@dataclass(frozen=True)
class Clip:
    """One usable training file; `frames` is its spectrogram length as the header promises."""

    path: Path
    frames: int


class Sample(NamedTuple):
    """One training example: crop (crop_frames, n_mels) float32, mask noise (noise_size,)
    float32, and the damaged clips met while reading it: ((clip index, reason), ...)."""

    x: torch.Tensor
    noise: torch.Tensor
    skipped: tuple[tuple[int, str], ...]


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


def resampled_length(num_samples: int, source_rate: int, target_rate: int) -> int:
    """Samples after resampling (`hear_mwmae.audio.resample`: ceil(n * target / source))."""
    return num_samples if source_rate == target_rate else math.ceil(num_samples * target_rate / source_rate)


def _num_frames(path: Path, frontend: torch.nn.Module) -> int:
    """Spectrogram frames the file yields by its header; raises on anything unusable or empty."""
    n_mels = frontend.cfg.n_mels
    if path.suffix.lower() == LOGMEL_SUFFIX:
        arr = np.load(path, mmap_mode="r")
        if arr.ndim != 2 or arr.shape[1] != n_mels or arr.shape[0] < 1:
            raise ValueError(f"precomputed features must be (T, {n_mels}), got {arr.shape}")
        return int(arr.shape[0])
    info = sf.info(str(path))
    samples = resampled_length(int(info.frames), int(info.samplerate), frontend.cfg.sample_rate)
    if samples < 1:
        raise ValueError("no audio samples")
    return frontend.num_frames(samples)


def scan(sources: Sequence[str | Path], frontend: AnyFrontendConfig,
         warn: bool = True) -> tuple[list[Clip], list[tuple[Path, str]]]:
    """Check every file's header once. Returns (usable clips, [(path, reason)] for the skipped ones);
    `warn`: log the skipped ones (the first 20)."""
    fe = build_frontend(frontend)
    clips: list[Clip] = []
    skipped: list[tuple[Path, str]] = []
    for path in find_files(sources):
        try:
            clips.append(Clip(path, _num_frames(path, fe)))
        except Exception as exc:  # soundfile / numpy raise many kinds; all mean "cannot use"
            skipped.append((path, _reason(exc)))
    for path, why in skipped[:20] if warn else ():
        log.warning("skipping unreadable file %s (%s)", path, why)
    if warn and len(skipped) > 20:
        log.warning("... and %d more unreadable files", len(skipped) - 20)
    return clips, skipped


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def load_audio(path: str | Path, sample_rate: int) -> np.ndarray:
    """Any soundfile-readable file -> mono float32 (N,) at `sample_rate` (see `hear_mwmae.audio`)."""
    return read_audio(path, sample_rate)[0]


class CropDataset(Dataset):
    """Item `(epoch, index)` -> `Sample` (crop (crop_frames, n_mels), noise (noise_size,), skipped).

    frontend: the config of the frontend (either family) that turns audio into spectrograms.
    pad: "centre" or "end", where a clip shorter than the crop sits (see the module doc).
    gain_aug: scale each waveform by a random gain Beta(10, 10) + 0.5 (audio files only).
    cache: keep each clip's normalised spectrogram (with `gain_aug`: its decoded waveform)
        in memory after first use (per process / DataLoader worker).
    known_bad: {clip index: reason} of clips already known to be damaged (a resumed run's
        `skipped_files.txt`): replaced without being read again.
    """

    def __init__(self, clips: Sequence[Clip], frontend: AnyFrontendConfig, crop_frames: int, noise_size: int,
                 seed: int, cache: bool = False, *, pad: str = "centre", gain_aug: bool = False,
                 known_bad: dict[int, str] | None = None) -> None:
        if pad not in PADS:
            raise ValueError(f"pad must be one of {list(PADS)}, got {pad!r}")
        self.clips = list(clips)
        if gain_aug and any(c.path.suffix.lower() == LOGMEL_SUFFIX for c in self.clips):
            raise ValueError("gain_aug scales waveforms, so it needs audio files; the data holds precomputed "
                             "features (.npy): train from audio or turn it off (--set gain_aug=false)")
        self.frontend = build_frontend(frontend)
        self.crop_frames = crop_frames
        self.noise_size = noise_size
        self.seed = seed
        self.pad = pad
        self.gain_aug = gain_aug
        self._bad: dict[int, str] = dict(known_bad or {})
        self._cache: dict[int, torch.Tensor] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.clips)

    def _decode(self, index: int) -> torch.Tensor:
        """Clip `index` as a waveform (N,) or precomputed raw features (T, n_mels); checked."""
        clip = self.clips[index]
        if clip.path.suffix.lower() == LOGMEL_SUFFIX:
            feats = np.load(clip.path).astype(np.float32)
            if feats.ndim != 2 or feats.shape[1] != self.frontend.cfg.n_mels:
                raise ValueError(f"precomputed features must be (T, {self.frontend.cfg.n_mels}), got {feats.shape}")
            if not np.isfinite(feats).all():
                raise ValueError("features contain NaN or Inf")
            return torch.from_numpy(feats)
        audio = torch.from_numpy(load_audio(clip.path, self.frontend.cfg.sample_rate))
        frames = self.frontend.num_frames(audio.shape[0])
        if frames < clip.frames:
            rate = self.frontend.cfg.sample_rate
            raise ValueError(f"truncated: header says {clip.frames} frames, file holds {frames} "
                             f"({audio.shape[0] / rate:.3g} s)")
        return audio

    @torch.no_grad()
    def _spectrogram(self, source: torch.Tensor, gain: float | None) -> torch.Tensor:
        """Waveform (N,) or raw features (T, F) -> the clip's normalised spectrogram (T, F)."""
        if source.ndim == 2:
            return self.frontend.normalize(source[None])[0]
        if gain is not None:
            source = source * gain
        return self.frontend(source[None])[0]

    def normalized_logmel(self, index: int) -> torch.Tensor:
        """The whole clip's normalised spectrogram (T, n_mels), without gain."""
        return self._load(index, None)

    def _load(self, index: int, gain: float | None) -> torch.Tensor:
        if self._cache is None:
            return self._spectrogram(self._decode(index), gain)
        if index not in self._cache:  # with gain_aug the decoded source is cached, else the result
            source = self._decode(index)
            self._cache[index] = source if self.gain_aug else self._spectrogram(source, None)
        cached = self._cache[index]
        return self._spectrogram(cached, gain) if self.gain_aug else cached

    def pad_to_crop(self, spec: torch.Tensor) -> torch.Tensor:
        """(T, F) with T < crop_frames -> (crop_frames, F) by the frontend's padding."""
        t = spec.shape[0]
        if self.pad == "centre":  # prepend half: pad the time-reversed clip, reverse back
            spec = self.frontend.pad_frames(spec.flip(0)[None], t + (self.crop_frames - t) // 2)[0].flip(0)
        return self.frontend.pad_frames(spec[None], self.crop_frames)[0]

    def __getitem__(self, key: tuple[int, int]) -> Sample:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        gain = float(rng.beta(GAIN_BETA, GAIN_BETA) + 0.5) if self.gain_aug else None
        skipped: list[tuple[int, str]] = []
        for offset in range(len(self)):
            i = (index + offset) % len(self)
            if i in self._bad:
                continue
            try:
                spec = self._load(i, gain)
                break
            except Exception as exc:  # the file passed `scan` but its data is damaged
                self._bad[i] = _reason(exc)
                skipped.append((i, self._bad[i]))
        else:
            raise RuntimeError("no clip of the dataset is readable")
        if spec.shape[0] < self.crop_frames:
            spec = self.pad_to_crop(spec)
        start = int(rng.integers(0, spec.shape[0] - self.crop_frames + 1))
        noise = torch.from_numpy(rng.random(self.noise_size, dtype=np.float32))
        return Sample(spec[start : start + self.crop_frames].contiguous(), noise, tuple(skipped))


def collate(samples: Sequence[Sample]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Samples -> (x (B, crop_frames, F), noise (B, noise_size), damaged clips met, each once)."""
    skipped = dict(kv for s in samples for kv in s.skipped)
    return torch.stack([s.x for s in samples]), torch.stack([s.noise for s in samples]), sorted(skipped.items())


class SkippedFiles:
    """The run's `skipped_files.txt`: one `path<TAB>reason` line per file not trained on.

    Each file is listed once: `add` returns False for a path already listed. `read`
    gives a resumed run the files an earlier part of it found damaged.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.entries: dict[Path, str] = {}

    def add(self, path: str | Path, reason: str) -> bool:
        path = Path(path)
        if path in self.entries:
            return False
        self.entries[path] = reason.replace("\t", " ").replace("\n", " ")
        return True

    def write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(f"{p}\t{why}\n" for p, why in self.entries.items()))
        tmp.replace(self.path)

    @staticmethod
    def read(path: str | Path) -> dict[Path, str]:
        path = Path(path)
        if not path.is_file():
            return {}
        rows = (line.partition("\t") for line in path.read_text().splitlines() if line.strip())
        return {Path(p): why for p, _, why in rows}


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
            first = pos * self.batch_size + self.rank * share  # position of this rank's share in the epoch
            mine = order[first : first + share]
            for a in range(self.accum_steps):
                yield [self.key(epoch, first + a * micro + j, int(i))
                       for j, i in enumerate(mine[a * micro : (a + 1) * micro])]

    def key(self, epoch: int, position: int, index: int) -> tuple[int, ...]:
        """The dataset key of the clip `index` at `position` of epoch `epoch`: (epoch, index)."""
        return epoch, index


__all__ = ["Clip", "CropDataset", "SKIPPED_NAME", "Sample", "SkippedFiles", "StepSampler", "collate", "find_files",
           "load_audio", "scan"]
