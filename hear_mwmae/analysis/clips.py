"""The analysis inputs: clips drawn with a recorded seed, turned into one chunk per model.

A clip is a start time in a sound: a file of the user's audio folder, or a synthetic sound
of `pretrain/synth.py`. Every model compared sees the same clips; each model turns a clip
into exactly one chunk of its own frontend (200 log-mel frames = 2 s for MW-MAE, 1024 fbank
frames = 10.24 s for Audio-MAE): the shortest waveform segment from the start time that
gives that many frames, through the model's frontend as a clip of its own (MW-MAE's
per-clip normalisation sees only the segment). A file shorter than the segment is
padded the frontend's way (reflection / zero fbank rows).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch

from ..audio import AUDIO_SUFFIXES, SAMPLE_RATE, read_audio
from ..config import MWMAEConfig
from ..frontend import build_frontend

log = logging.getLogger(__name__)
CLIP_STREAM = 11  # distinguishes clip drawing from the other uses of the seed


@dataclass(frozen=True)
class Clip:
    """Clip `index`: `source` is a file path, or "synthetic": sound `synth_index` of the stream
    `synth_seed`, generated `synth_duration_s` long (the longest segment of the models compared,
    so that every model sees the same sound)."""

    index: int
    source: str
    start_s: float = 0.0
    synth_seed: int | None = None
    synth_index: int | None = None
    synth_duration_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def segment_samples(config: MWMAEConfig) -> int:
    """Samples of the shortest waveform that gives one chunk (`chunk_frames`) of frames."""
    frontend = build_frontend(config.frontend)
    n = max(1, (config.chunk_frames - 1) * config.frontend.hop_length)
    while frontend.num_frames(n) < config.chunk_frames:
        n += 1
    return n


def synthetic_clips(count: int, seed: int, duration_s: float) -> list[Clip]:
    """Clips 0 .. count-1 of the synthetic stream `seed`, each a sound `duration_s` long."""
    return [Clip(i, "synthetic", 0.0, seed, i, duration_s) for i in range(count)]


def _audio_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"--audio {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise FileNotFoundError(f"--audio {folder}: no audio files (extensions {sorted(AUDIO_SUFFIXES)[:8]}...)")
    return files


def audio_clips(folder: str | Path, count: int, seed: int, segment_s: float) -> list[Clip]:
    """`count` clips from the audio files under `folder`: files in a seeded random order
    (cycled when there are fewer files than clips), a seeded uniform start time in each that
    leaves `segment_s` seconds (0 for shorter files). Unreadable files are skipped (logged)."""
    folder = Path(folder)
    durations: list[tuple[Path, float]] = []
    for path in _audio_files(folder):
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises several types for unreadable files
            log.warning("skipping %s: %s", path, exc)
            continue
        if info.frames > 0:
            durations.append((path, info.frames / info.samplerate))
    if not durations:
        raise FileNotFoundError(f"--audio {folder}: no readable, non-empty audio file")
    rng = np.random.default_rng([seed, CLIP_STREAM])
    order = rng.permutation(len(durations))
    clips = []
    for i in range(count):
        path, duration = durations[order[i % len(order)]]
        start = float(rng.uniform(0.0, max(0.0, duration - segment_s)))
        clips.append(Clip(i, str(path), round(start, 6)))
    return clips


@functools.lru_cache(maxsize=4)
def _decoded(path: str) -> np.ndarray:
    return read_audio(path, SAMPLE_RATE)[0]


def clip_waveform(clip: Clip, samples: int) -> np.ndarray:
    """(<= samples,) float32 16 kHz waveform of the clip's segment."""
    if clip.source == "synthetic":
        from ..pretrain.synth import make_clip

        duration = clip.synth_duration_s or samples / SAMPLE_RATE
        return make_clip(int(clip.synth_seed), int(clip.synth_index), duration=duration).waveform[:samples]
    audio = _decoded(clip.source)
    start = int(round(clip.start_s * SAMPLE_RATE))
    return audio[start:start + samples]


class ChunkMaker:
    """Clips -> normalised chunks (B, chunk_frames, n_mels) float32 for one model's frontend."""

    def __init__(self, config: MWMAEConfig):
        if config.frontend.sample_rate != SAMPLE_RATE:
            raise ValueError(f"analysis inputs are {SAMPLE_RATE} Hz; the model expects {config.frontend.sample_rate}")
        self.config = config
        self.frontend = build_frontend(config.frontend)
        self.samples = segment_samples(config)

    @torch.inference_mode()
    def __call__(self, clips: Sequence[Clip]) -> torch.Tensor:
        chunks = []
        for clip in clips:
            wave = torch.from_numpy(np.ascontiguousarray(clip_waveform(clip, self.samples)))[None]
            if wave.shape[1] == 0:
                raise ValueError(f"clip {clip.index} ({clip.source} at {clip.start_s} s) has no samples")
            spec = self.frontend(wave)  # (1, T, F)
            frames = self.config.chunk_frames
            spec = self.frontend.pad_frames(spec, frames) if spec.shape[1] < frames else spec[:, :frames]
            chunks.append(spec)
        return torch.cat(chunks)


__all__ = ["ChunkMaker", "Clip", "audio_clips", "clip_waveform", "segment_samples", "synthetic_clips"]
