"""Waveform -> per-clip normalised log-mel, in plain torch.

Reproduces the release's frontend (torchaudio `MelSpectrogram` + `log(x + eps)` +
per-clip normalisation) with `torch.stft` and a mel filterbank computed in float32
the way torchaudio computes it, so results match the release to float32 rounding.

One difference by design: the `center=True` padding uses numpy-style reflection, which
keeps reflecting when the clip is shorter than `n_fft // 2` samples. torchaudio fails
on such clips; we embed any non-empty clip. For longer clips both are identical.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import FrontendConfig


def _hz_to_mel(freq: float) -> float:
    """HTK mel scale."""
    return 2595.0 * math.log10(1.0 + freq / 700.0)


def mel_filterbank(cfg: FrontendConfig) -> torch.Tensor:
    """Triangular HTK mel filterbank without normalisation, float32.

    Returns (n_fft // 2 + 1, n_mels), computed with the same float32 operations as
    torchaudio's `melscale_fbanks(..., norm=None, mel_scale="htk")`.
    """
    n_freqs = cfg.n_fft // 2 + 1
    all_freqs = torch.linspace(0, cfg.sample_rate // 2, n_freqs)
    mel_pts = torch.linspace(_hz_to_mel(cfg.f_min), _hz_to_mel(cfg.f_max), cfg.n_mels + 2)
    f_pts = 700.0 * (10.0 ** (mel_pts / 2595.0) - 1.0)
    f_diff = f_pts[1:] - f_pts[:-1]  # (n_mels + 1,)
    slopes = f_pts.unsqueeze(0) - all_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    down = (-1.0 * slopes[:, :-2]) / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.max(torch.zeros(1), torch.min(down, up))


def reflect_indices(length: int, before: int, after: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices that pad a length-`length` axis by reflection, numpy `mode="reflect"` semantics.

    Unlike `torch.nn.functional.pad`, the pad may exceed `length - 1`: the reflection
    keeps bouncing between the two ends. Returns int64 (before + length + after,).
    """
    if length < 1:
        raise ValueError("cannot reflect-pad an empty axis")
    idx = torch.arange(-before, length + after, device=device)
    if length == 1:
        return torch.zeros_like(idx)
    period = 2 * (length - 1)
    idx = torch.remainder(idx, period)
    return torch.where(idx >= length, period - idx, idx)


class LogMelFrontend(nn.Module):
    """(B, N) waveform at `cfg.sample_rate` -> (B, T, n_mels) log-mel, T = 1 + N // hop.

    The STFT window and filterbank are non-persistent buffers: they follow `.to(device)`
    and are never stored in checkpoints (the config fully determines them).
    """

    def __init__(self, cfg: FrontendConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)
        self.register_buffer("fbank", mel_filterbank(self.cfg), persistent=False)

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.cfg.hop_length

    def log_mel(self, waveform: torch.Tensor, frames_per_block: int | None = None) -> torch.Tensor:
        """(B, N) float -> raw log-mel (B, T, n_mels), float32, before normalisation.

        `frames_per_block` computes the STFT a block of frames at a time (frames are
        independent), bounding the memory of long clips; the result is the same.
        """
        cfg = self.cfg
        waveform = waveform.to(torch.float32)
        pad = cfg.n_fft // 2
        padded = waveform[:, reflect_indices(waveform.shape[-1], pad, pad, waveform.device)]
        num_frames = self.num_frames(waveform.shape[-1])
        block = max(1, frames_per_block or num_frames)
        parts = [self._frames_to_log_mel(padded[:, f0 * cfg.hop_length:(min(num_frames, f0 + block) - 1)
                                                * cfg.hop_length + cfg.n_fft])
                 for f0 in range(0, num_frames, block)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _frames_to_log_mel(self, padded: torch.Tensor) -> torch.Tensor:
        """Already padded (B, L) -> (B, 1 + (L - n_fft) // hop, n_mels)."""
        cfg = self.cfg
        spec = torch.stft(
            padded,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=self.window,
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )  # (B, n_freqs, T)
        power = spec.abs().pow(2.0)
        mel = torch.matmul(power.transpose(-1, -2), self.fbank)  # (B, T, n_mels)
        return torch.log(mel + cfg.log_eps)

    def normalize(self, logmel: torch.Tensor) -> torch.Tensor:
        """Per-clip (x - mean) / (std + eps) over time and mel bins; std unbiased. (B, T, F)."""
        mean = logmel.mean(dim=(1, 2), keepdim=True)
        std = logmel.std(dim=(1, 2), keepdim=True)
        return (logmel - mean) / (std + self.cfg.norm_eps)

    def forward(self, waveform: torch.Tensor, frames_per_block: int | None = None) -> torch.Tensor:
        """(B, N) -> normalised log-mel (B, T, n_mels)."""
        return self.normalize(self.log_mel(waveform, frames_per_block))
