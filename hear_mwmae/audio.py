"""Reading users' audio files: any format libsndfile reads, mixed to mono, resampled.

Resampling uses `scipy.signal.resample_poly` (polyphase FIR) at the exact rational ratio
target / source, reduced by their gcd: (n,) -> (ceil(n * target / source),).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
# Extensions (lower case, with the dot) of the formats this libsndfile reads, plus common aliases.
AUDIO_SUFFIXES = frozenset("." + name.lower() for name in sf.available_formats()) | {
    ".aif", ".aifc", ".oga", ".opus", ".wave", ".snd"}


class AudioError(ValueError):
    """The file was read but holds no usable audio (no samples, NaN / Inf)."""


def resample(audio: np.ndarray, sample_rate: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Resample along axis 0: (n, ...) -> (ceil(n * target / sample_rate), ...) float32."""
    if sample_rate == target:
        return audio.astype(np.float32, copy=False)
    g = math.gcd(int(sample_rate), int(target))
    return resample_poly(audio, int(target) // g, int(sample_rate) // g, axis=0).astype(np.float32, copy=False)


def read_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, dict[str, Any]]:
    """Decode, average the channels, resample. Returns ((n,) float32, facts about the file).

    Raises `AudioError` for files without usable audio and soundfile's errors for
    unreadable ones.
    """
    data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # (n, channels)
    info = {"duration_s": round(data.shape[0] / sr, 6), "sample_rate": int(sr), "channels": int(data.shape[1])}
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError("empty audio (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError("audio contains NaN or Inf")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    return np.ascontiguousarray(resample(mono, sr, sample_rate)), info

