"""Waveform -> normalised spectrogram, in plain torch, for both model families.

Every frontend is an `nn.Module` with the same interface, so the runtime and the
pre-training data never ask which one they hold:

    num_frames(n)            frames a clip of n samples gives
    log_mel(wave, block)     (B, N) -> raw log-mel / log-fbank (B, T, F), float32
    normalize(raw)           -> normalised (B, T, F)
    forward(wave, block)     normalize(log_mel(...))
    pad_frames(x, frames)    extend normalised (B, T, F) to `frames` frames the family's way
    hop_ms, first_frame_ms   frame j is centred at first_frame_ms + j * hop_ms
    stream_log_mel(blocks, wave_mean)   the raw frames of a clip given as blocks of samples,
                             a block of frames at a time (equal, frame for frame, to log_mel)
    clip_statistics(raw blocks)   what `normalize(raw, stats)` needs from the whole clip
                             (MW-MAE: mean and std, by a streaming reduction; Audio-MAE: none)

So a clip of any length can be normalised and framed in bounded memory (`embed_stream.py`):
one sweep for the statistics, a second one for the frames.

`LogMelFrontend` (MW-MAE) reproduces torchaudio `MelSpectrogram` + `log(x + eps)` +
per-clip normalisation with `torch.stft` and a mel filterbank computed in float32 the way
torchaudio computes it. One difference by design: the `center=True` padding reflects
numpy-style (it keeps reflecting when the clip is shorter than `n_fft // 2` samples), so any
non-empty clip embeds where torchaudio fails. Chunks are completed by reflection, as in
the release.

`KaldiFbankFrontend` (Audio-MAE) reproduces torchaudio's `compliance.kaldi.fbank` with the
authors' arguments (see `FbankConfig`) and AudioSet normalisation; chunks are completed
with zeros of the raw log fbank, i.e. before normalisation, as the authors' dataset does.
Clips shorter than one window are zero-padded to one window (torchaudio fails on them).
"""

from __future__ import annotations

import math
from typing import Iterable, Iterator

import torch
from torch import nn

from .config import AnyFrontendConfig, FbankConfig, FrontendConfig


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


def _frame_blocks(num_frames: int, block: int | None) -> list[tuple[int, int]]:
    """[first, last) frame ranges of at most `block` frames covering `num_frames`."""
    step = max(1, block or num_frames)
    return [(f0, min(num_frames, f0 + step)) for f0 in range(0, num_frames, step)]


class _Frontend(nn.Module):
    """What both frontends share: timing and the normalised forward pass."""

    cfg: AnyFrontendConfig

    @property
    def hop_ms(self) -> float:
        return 1000.0 * self.cfg.hop_length / self.cfg.sample_rate

    @property
    def first_frame_ms(self) -> float:
        return self.cfg.first_frame_ms

    frame_length: int  # samples per frame (after the edge padding)
    edge_pad: int  # samples reflected before the first and after the last sample (0: none)

    def num_frames(self, num_samples: int) -> int:
        raise NotImplementedError

    def log_mel(self, waveform: torch.Tensor, frames_per_block: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def frames_to_raw(self, padded: torch.Tensor) -> torch.Tensor:
        """Samples already padded / centred, starting at a frame, (B, L) -> the raw log-mel of every
        whole frame in them, (B, 1 + (L - frame_length) // hop, F)."""
        raise NotImplementedError

    def normalize(self, logmel: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def clip_statistics(self, raw_blocks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """What `normalize` needs from the whole clip, from its raw frames given in blocks (t, F);
        None when the normalisation is fixed."""
        return None

    def _prepare(self, samples: torch.Tensor, wave_mean: float) -> torch.Tensor:
        """A clip's samples before framing (Audio-MAE: the clip mean removed)."""
        return samples

    def stream_log_mel(self, blocks: Iterable[torch.Tensor], wave_mean: float = 0.0,
                       frames_per_block: int = 4096) -> Iterator[torch.Tensor]:
        """The raw log-mel of one clip given as consecutive (n_i,) blocks of its samples: (t, F)
        blocks of at most `frames_per_block` frames that join into `log_mel(clip[None])[0]`.
        `wave_mean` is the clip's mean sample (used by a frontend that removes it). Holds at most
        one block of samples and one of frames."""
        hop, length, pad = self.cfg.hop_length, self.frame_length, self.edge_pad
        buf = torch.zeros(0)
        received, started = 0, False
        for block in blocks:
            block = self._prepare(block.to(torch.float32), wave_mean)
            received += block.shape[0]
            buf = torch.cat([buf, block])
            if not started:
                if buf.shape[0] < max(length, pad + 1):  # a start to reflect, and one whole frame
                    continue
                buf = torch.cat([buf[1:pad + 1].flip(0), buf])
                started = True
            while buf.shape[0] - (pad + 1) >= length + hop * (frames_per_block - 1):  # keep pad + 1 for the end
                yield self.frames_to_raw(buf[None, :length + hop * (frames_per_block - 1)])[0]
                buf = buf[hop * frames_per_block:]
        if not started:  # shorter than a frame and its padding: the whole-clip path
            if received:
                yield self.log_mel(buf[None])[0]
            return
        if pad:
            buf = torch.cat([buf, buf[-pad - 1:-1].flip(0)])
        while buf.shape[0] >= length:
            frames = min(frames_per_block, 1 + (buf.shape[0] - length) // hop)
            yield self.frames_to_raw(buf[None, :length + hop * (frames - 1)])[0]
            buf = buf[hop * frames:]

    def pad_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, waveform: torch.Tensor, frames_per_block: int | None = None) -> torch.Tensor:
        """(B, N) -> normalised (B, T, n_mels)."""
        return self.normalize(self.log_mel(waveform, frames_per_block))


class LogMelFrontend(_Frontend):
    """(B, N) waveform at `cfg.sample_rate` -> (B, T, n_mels) log-mel, T = 1 + N // hop.

    The STFT window and filterbank are non-persistent buffers: they follow `.to(device)`
    and are never stored in checkpoints (the config fully determines them).
    """

    def __init__(self, cfg: FrontendConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        self.register_buffer("window", torch.hann_window(self.cfg.win_length), persistent=False)
        self.register_buffer("fbank", mel_filterbank(self.cfg), persistent=False)

    @property
    def frame_length(self) -> int:
        return self.cfg.n_fft

    @property
    def edge_pad(self) -> int:
        return self.cfg.n_fft // 2

    def num_frames(self, num_samples: int) -> int:
        return 1 + num_samples // self.cfg.hop_length

    def frames_to_raw(self, padded: torch.Tensor) -> torch.Tensor:
        return self._frames_to_log_mel(padded)

    def log_mel(self, waveform: torch.Tensor, frames_per_block: int | None = None) -> torch.Tensor:
        """(B, N) float -> raw log-mel (B, T, n_mels), float32, before normalisation.

        `frames_per_block` computes the STFT a block of frames at a time (frames are
        independent), bounding the memory of long clips; the result is the same.
        """
        cfg = self.cfg
        waveform = waveform.to(torch.float32)
        pad = cfg.n_fft // 2
        padded = waveform[:, reflect_indices(waveform.shape[-1], pad, pad, waveform.device)]
        parts = [self._frames_to_log_mel(padded[:, f0 * cfg.hop_length:(f1 - 1) * cfg.hop_length + cfg.n_fft])
                 for f0, f1 in _frame_blocks(self.num_frames(waveform.shape[-1]), frames_per_block)]
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

    def normalize(self, logmel: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Per-clip (x - mean) / (std + eps) over time and mel bins; std unbiased. (B, T, F).
        `stats`: the clip's (mean, std) from `clip_statistics` (B = 1), else computed here."""
        if stats is None:
            mean = logmel.mean(dim=(1, 2), keepdim=True)
            std = logmel.std(dim=(1, 2), keepdim=True)
        else:
            mean, std = stats
        return (logmel - mean) / (std + self.cfg.norm_eps)

    def clip_statistics(self, raw_blocks: Iterable[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, unbiased std) of all values of the raw blocks, float32 scalars: per block in
        float64, merged by Chan et al.'s pairwise update (no cancellation however long the clip)."""
        count, mean, m2 = 0, 0.0, 0.0
        for block in raw_blocks:
            x = block.detach().to(torch.float64).flatten()
            n = x.numel()
            if not n:
                continue
            block_mean = float(x.mean())
            block_m2 = float(((x - block_mean) ** 2).sum())
            delta = block_mean - mean
            total = count + n
            mean += delta * n / total
            m2 += block_m2 + delta * delta * count * n / total
            count = total
        std = math.sqrt(m2 / (count - 1)) if count > 1 else float("nan")  # torch.std of one value: nan
        return torch.tensor(mean, dtype=torch.float32), torch.tensor(std, dtype=torch.float32)

    def pad_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, T, F) -> (B, frames, F), extended by numpy-style reflection (the release's
        chunk padding; it keeps bouncing when the pad exceeds the clip)."""
        t = x.shape[1]
        return x if frames == t else x[:, reflect_indices(t, 0, frames - t, x.device)]


# ----------------------------------------------------------------------------- Audio-MAE
def _kaldi_mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    """Kaldi's mel scale 1127 ln(1 + f / 700), for a tensor or a Python float."""
    if isinstance(freq, torch.Tensor):
        return 1127.0 * (1.0 + freq / 700.0).log()
    return 1127.0 * math.log(1.0 + freq / 700.0)


def kaldi_mel_banks(cfg: FbankConfig) -> torch.Tensor:
    """Kaldi's triangular mel filters on the FFT bins, float32 as torchaudio computes them.

    Returns (n_fft // 2 + 1, n_mels): bins 0 .. n_fft/2 - 1 weighted in mel space between
    band edges equally spaced from mel(f_min) to mel(f_max); the Nyquist bin gets weight 0.
    """
    num_fft_bins = cfg.n_fft // 2
    mel_low, mel_high = _kaldi_mel(float(cfg.f_min)), _kaldi_mel(float(cfg.f_max))
    delta = (mel_high - mel_low) / (cfg.n_mels + 1)
    band = torch.arange(cfg.n_mels).unsqueeze(1)  # int64 * float -> float32, as torchaudio
    left = mel_low + band * delta
    centre = mel_low + (band + 1.0) * delta
    right = mel_low + (band + 2.0) * delta
    mel = _kaldi_mel(cfg.sample_rate / cfg.n_fft * torch.arange(num_fft_bins)).unsqueeze(0)
    up = (mel - left) / (centre - left)
    down = (right - mel) / (right - centre)
    banks = torch.max(torch.zeros(1), torch.min(up, down))  # (n_mels, num_fft_bins)
    return torch.nn.functional.pad(banks, (0, 1)).t().contiguous()


class KaldiFbankFrontend(_Frontend):
    """(B, N) waveform -> (B, T, n_mels) Kaldi log fbank, T = 1 + (max(N, win) - win) // hop.

    Window and filterbank are non-persistent buffers (the config determines them).
    """

    def __init__(self, cfg: FbankConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or FbankConfig()
        self.register_buffer("window", torch.hann_window(self.cfg.win_length, periodic=False), persistent=False)
        self.register_buffer("fbank", kaldi_mel_banks(self.cfg), persistent=False)

    edge_pad = 0

    @property
    def frame_length(self) -> int:
        return self.cfg.win_length

    def num_frames(self, num_samples: int) -> int:
        cfg = self.cfg
        return 1 + (max(num_samples, cfg.win_length) - cfg.win_length) // cfg.hop_length

    def _prepare(self, samples: torch.Tensor, wave_mean: float) -> torch.Tensor:
        return samples - torch.tensor(wave_mean, dtype=samples.dtype) if self.cfg.remove_clip_mean else samples

    def frames_to_raw(self, padded: torch.Tensor) -> torch.Tensor:
        return self._frames_to_log_fbank(padded)

    def log_mel(self, waveform: torch.Tensor, frames_per_block: int | None = None) -> torch.Tensor:
        """(B, N) float -> raw log fbank (B, T, n_mels), float32, before normalisation.

        The clip mean is taken over the whole clip; frames are then independent, so
        `frames_per_block` bounds memory without changing the result.
        """
        cfg = self.cfg
        waveform = waveform.to(torch.float32)
        if cfg.remove_clip_mean:
            waveform = waveform - waveform.mean(dim=-1, keepdim=True)
        if waveform.shape[-1] < cfg.win_length:  # shorter than one frame: zero-pad to one
            waveform = torch.nn.functional.pad(waveform, (0, cfg.win_length - waveform.shape[-1]))
        parts = [self._frames_to_log_fbank(waveform[:, f0 * cfg.hop_length:(f1 - 1) * cfg.hop_length + cfg.win_length])
                 for f0, f1 in _frame_blocks(self.num_frames(waveform.shape[-1]), frames_per_block)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _frames_to_log_fbank(self, samples: torch.Tensor) -> torch.Tensor:
        """(B, L) samples -> (B, 1 + (L - win) // hop, n_mels), frames snipped at the edges."""
        cfg = self.cfg
        frames = samples.unfold(-1, cfg.win_length, cfg.hop_length)  # (B, T, win)
        frames = frames - frames.mean(dim=-1, keepdim=True)  # per-frame DC removal
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)  # x[-1] := x[0]
        frames = (frames - cfg.preemphasis * previous) * self.window
        spectrum = torch.fft.rfft(frames, n=cfg.n_fft)  # zero-padded to n_fft
        power = spectrum.abs().pow(2.0)  # (B, T, n_fft // 2 + 1)
        return torch.matmul(power, self.fbank).clamp_min(cfg.log_eps).log()

    def normalize(self, logmel: torch.Tensor, stats: None = None) -> torch.Tensor:
        """Fixed dataset statistics: (x - mean) / (std_scale * std). (B, T, F)."""
        return (logmel - self.cfg.mean) / (self.cfg.std * self.cfg.std_scale)

    def pad_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """(B, T, F) normalised -> (B, frames, F): appended frames are zeros of the raw log
        fbank, normalised (the authors pad before normalising)."""
        t = x.shape[1]
        if frames == t:
            return x
        fill = self.normalize(torch.zeros((), dtype=x.dtype, device=x.device))
        return torch.cat([x, fill.expand(x.shape[0], frames - t, x.shape[2])], dim=1)


def build_frontend(cfg: AnyFrontendConfig) -> _Frontend:
    """The frontend module a config describes."""
    if isinstance(cfg, FbankConfig):
        return KaldiFbankFrontend(cfg)
    if isinstance(cfg, FrontendConfig):
        return LogMelFrontend(cfg)
    raise TypeError(f"unknown frontend config {type(cfg).__name__}")
