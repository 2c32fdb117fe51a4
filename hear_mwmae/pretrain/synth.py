"""Synthetic sounds for the demo model and its probe, deterministic from (seed, index).

Five kinds of clip, each a short scene over faint background noise:
    note     1-4 harmonic notes of one pitch class (random octaves, timbres, envelopes)
    chirp    1-3 exponential or linear sine sweeps, some with harmonics
    noise    1-4 band-passed noise bursts with decaying envelopes
    clicks   a click train (2-30 clicks/s) of short filtered impulses
    mixture  two or three of the above at once
Clip i of seed s depends only on (s, i), so any subset can be regenerated exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
from scipy import signal

SAMPLE_RATE = 16_000
KINDS: tuple[str, ...] = ("note", "chirp", "noise", "clicks", "mixture")
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")


@dataclass(frozen=True)
class SynthClip:
    """waveform (N,) float32 in [-1, 1]; `pitch_class` 0-11 for notes (C = 0), else -1."""

    waveform: np.ndarray
    kind: str
    pitch_class: int


def _envelope(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Attack-decay-sustain-release envelope (n,), peak 1."""
    attack = int(sr * rng.uniform(0.003, 0.08))
    release = int(sr * rng.uniform(0.02, 0.3))
    attack, release = min(attack, n // 3), min(release, n // 3)
    sustain = rng.uniform(0.3, 1.0)
    env = np.full(n, sustain)
    env[:attack] = np.linspace(0.0, 1.0, attack, endpoint=False)
    decay = min(int(sr * rng.uniform(0.02, 0.2)), n - attack - release)
    env[attack : attack + decay] = np.linspace(1.0, sustain, decay, endpoint=False)
    if release:
        env[n - release :] *= np.linspace(1.0, 0.0, release)
    return env


def _place(out: np.ndarray, event: np.ndarray, rng: np.random.Generator) -> None:
    """Add `event` at a random onset, cut at the clip's end."""
    start = int(rng.integers(0, max(1, len(out) - len(event) // 2)))
    seg = event[: len(out) - start]
    out[start : start + len(seg)] += seg


def _note(rng: np.random.Generator, out: np.ndarray, sr: int, pitch_class: int) -> None:
    midi = 12 * int(rng.integers(3, 7)) + pitch_class + 12  # octaves 3..6: C3 (48) .. B6 (95)
    f0 = 440.0 * 2.0 ** ((midi - 69) / 12)
    n = int(sr * rng.uniform(0.25, 1.5))
    t = np.arange(n) / sr
    n_harm = int(rng.integers(1, 9))
    rolloff = rng.uniform(0.5, 2.0)
    vibrato = rng.uniform(0, 0.006) * np.sin(2 * np.pi * rng.uniform(4, 7) * t)
    phase = 2 * np.pi * f0 * np.cumsum(1.0 + vibrato) / sr
    tone = np.zeros(n)
    for k in range(1, n_harm + 1):
        if k * f0 < sr / 2 - 200:
            tone += k**-rolloff * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    _place(out, rng.uniform(0.3, 1.0) * tone * _envelope(rng, n, sr), rng)


def _chirp(rng: np.random.Generator, out: np.ndarray, sr: int) -> None:
    n = int(sr * rng.uniform(0.3, 2.0))
    t = np.arange(n) / sr
    f0, f1 = np.exp(rng.uniform(np.log(100), np.log(6000), size=2))
    method = "logarithmic" if rng.random() < 0.5 else "linear"
    sweep = signal.chirp(t, f0=f0, t1=t[-1], f1=f1, method=method, phi=rng.uniform(0, 360))
    if rng.random() < 0.4 and max(f0, f1) < sr / 4:
        sweep = sweep + 0.4 * signal.chirp(t, f0=2 * f0, t1=t[-1], f1=2 * f1, method=method)
    _place(out, rng.uniform(0.3, 1.0) * sweep * _envelope(rng, n, sr), rng)


def _noise_burst(rng: np.random.Generator, out: np.ndarray, sr: int) -> None:
    n = int(sr * rng.uniform(0.05, 1.0))
    low = np.exp(rng.uniform(np.log(60), np.log(4000)))
    high = min(low * np.exp(rng.uniform(0.3, 2.5)), sr / 2 * 0.95)
    sos = signal.butter(4, [low, high], btype="bandpass", fs=sr, output="sos")
    burst = signal.sosfilt(sos, rng.standard_normal(n))
    burst /= np.abs(burst).max() + 1e-9
    decay = np.exp(-np.arange(n) / (sr * rng.uniform(0.02, 0.5)))
    _place(out, rng.uniform(0.3, 1.0) * burst * decay, rng)


def _clicks(rng: np.random.Generator, out: np.ndarray, sr: int) -> None:
    rate = rng.uniform(2, 30)
    tau = rng.uniform(0.0005, 0.005)
    kernel = np.exp(-np.arange(int(sr * 8 * tau)) / (sr * tau))
    centre = rng.uniform(500, 6000)
    sos = signal.butter(2, [centre / 1.5, min(centre * 1.5, sr / 2 * 0.95)], btype="bandpass", fs=sr, output="sos")
    click = signal.sosfilt(sos, kernel * rng.standard_normal(len(kernel)))
    click /= np.abs(click).max() + 1e-9
    start = int(rng.integers(0, len(out) // 4))
    stop = int(rng.integers(len(out) // 2, len(out)))
    jitter = rng.uniform(0, 0.2)
    t = start
    while t < stop - len(click):
        out[t : t + len(click)] += rng.uniform(0.5, 1.0) * click
        t += max(1, int(sr / rate * (1 + jitter * rng.standard_normal())))


def _add_kind(kind: str, rng: np.random.Generator, out: np.ndarray, sr: int, pitch_class: int) -> None:
    if kind == "note":
        for _ in range(int(rng.integers(1, 5))):
            _note(rng, out, sr, pitch_class)
    elif kind == "chirp":
        for _ in range(int(rng.integers(1, 4))):
            _chirp(rng, out, sr)
    elif kind == "noise":
        for _ in range(int(rng.integers(1, 5))):
            _noise_burst(rng, out, sr)
    elif kind == "clicks":
        _clicks(rng, out, sr)
    else:
        raise ValueError(f"unknown kind {kind!r}")


def make_clip(seed: int, index: int, duration: float = 3.0, sample_rate: int = SAMPLE_RATE,
              kind: str | None = None) -> SynthClip:
    """Clip `index` of the stream `seed`: a function of (seed, index) only. `kind` forces
    the kind of clip (by default it is drawn uniformly)."""
    rng = np.random.default_rng([seed, index])
    n = int(round(duration * sample_rate))
    drawn = KINDS[int(rng.integers(len(KINDS)))]
    kind = kind or drawn
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {KINDS}")
    pitch_class = int(rng.integers(12)) if kind == "note" else -1
    out = np.zeros(n)
    if kind == "mixture":
        parts = rng.choice(len(KINDS) - 1, size=int(rng.integers(2, 4)), replace=False)
        for p in sorted(parts):
            _add_kind(KINDS[p], rng, out, sample_rate, int(rng.integers(12)))
    else:
        _add_kind(kind, rng, out, sample_rate, pitch_class)
    out = out / (np.abs(out).max() + 1e-9) * rng.uniform(0.1, 0.9)
    out += 10 ** (rng.uniform(-60, -35) / 20) * rng.standard_normal(n)  # background noise
    return SynthClip(np.clip(out, -1.0, 1.0).astype(np.float32), kind, pitch_class)


def generate(seed: int, count: int, duration: float = 3.0, sample_rate: int = SAMPLE_RATE) -> Iterator[SynthClip]:
    """Clips 0 .. count-1 of the stream `seed`."""
    for i in range(count):
        yield make_clip(seed, i, duration, sample_rate)


__all__ = ["KINDS", "PITCH_CLASSES", "SAMPLE_RATE", "SynthClip", "generate", "make_clip"]
