"""HEAR runtime: waveforms -> timestamp / scene embeddings, all 2 s chunks batched.

Data path (every clip of a call has the same length N, as HEAR requires):
    audio (B, N) -> frontend on the device -> normalised log-mel (B, T, 80)
    -> reflect-pad each clip to whole 200-frame chunks -> (B * C, 200, 80)
    -> encoder in micro-batches of `max_chunks_per_batch` -> (B * C, 50, 5 * D)
    -> (B, C * 50, 5 * D) trimmed to the clip's ceil(T / 4) real steps.
Chunks are independent once the clip is normalised, so batching them changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .config import MWMAEConfig
from .frontend import LogMelFrontend, reflect_indices
from .model import Encoder

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LOUD_AUDIO = 2.0  # warn when |audio| exceeds this (HEAR audio lies in [-1, 1])
FRONTEND_SAMPLES_PER_PASS = 16_000 * 60 * 4  # the frontend sees at most ~4 min of audio at a time
DEFAULT_CHUNKS = {"cpu": 16, "cuda": 128}  # chunks per encoder pass when not set


def step_timestamps(num_frames: int, frames_per_step: int, hop_ms: float) -> torch.Tensor:
    """Centre (ms) of the frames each step covers; frame j is centred at j * hop_ms.

    Step i covers frames [p*i, p*i + p - 1], so its timestamp is (p*i + (p-1)/2) * hop_ms:
    15, 55, 95, ... ms for p = 4 and a 10 ms hop. Returns (ceil(T / p),) float32.

    This is the centre of the step's real frames for every complete step. A last step that
    holds fewer than p real frames (T % p != 0) stays on the same regular grid, because
    hear-validator requires every interval to be within 1 ms of the mean; its timestamp
    then lies at most (p-1)/2 frames (15 ms) past the centre of the clip's last frame.
    """
    p = frames_per_step
    first = torch.arange(0, num_frames, p, dtype=torch.float64)
    return ((first + (p - 1) / 2) * hop_ms).to(torch.float32)


def chunk_index(num_frames: int, chunk_frames: int) -> torch.Tensor:
    """Frame indices of the clip's padded chunks: (C * chunk_frames,), reflect padding.

    The padding follows the release (numpy `reflect`, may exceed the clip), except that
    a clip that already fills whole chunks gets no extra chunk (the release's extra chunk
    is always trimmed away again, so skipping it does not change the result).
    """
    chunks = max(1, math.ceil(num_frames / chunk_frames))
    return reflect_indices(num_frames, 0, chunks * chunk_frames - num_frames)


def _cpu_has_bf16_units() -> bool:
    """Whether oneDNN finds native bf16 matrix support (AVX-512-BF16 / AMX) on this CPU."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else True  # unknown: do not warn


def validate_audio(audio: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Check HEAR input: (n_sounds, n_samples) floating, finite, non-empty. Returns a tensor."""
    if isinstance(audio, np.ndarray):
        audio = torch.from_numpy(audio)
    if not isinstance(audio, torch.Tensor):
        raise TypeError(f"audio must be a torch.Tensor of shape (n_sounds, n_samples), got {type(audio).__name__}")
    if audio.ndim != 2:
        raise ValueError(f"audio must be 2-D (n_sounds, n_samples), got shape {tuple(audio.shape)}")
    if not audio.is_floating_point():
        raise TypeError(f"audio must be floating point (float32 in [-1, 1]), got {audio.dtype}")
    if audio.shape[0] and audio.shape[1] == 0:
        raise ValueError("audio has zero samples: cannot embed empty clips")
    if audio.numel():
        bad = ~torch.isfinite(audio)
        if bad.any():
            rows = bad.any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"audio contains NaN or Inf (sounds {rows[:10]})")
        peak = audio.abs().max().item()
        if peak > LOUD_AUDIO:
            warnings.warn(f"audio peak {peak:.3g} is far outside [-1, 1]; is it scaled as int16?", stacklevel=3)
    return audio


class MWMAERuntime(nn.Module):
    """The nn.Module HEAR hands around: frontend + frozen encoder + batching policy."""

    sample_rate: int = 16000

    def __init__(self, encoder: Encoder, config: MWMAEConfig, device: str | torch.device | None = None,
                 precision: str = "fp32", max_chunks_per_batch: int | None = None) -> None:
        super().__init__()
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        if max_chunks_per_batch is not None and int(max_chunks_per_batch) < 1:
            raise ValueError("max_chunks_per_batch must be >= 1")
        if config.frontend.sample_rate != self.sample_rate:
            raise ValueError(f"model expects {config.frontend.sample_rate} Hz; HEAR runtime is 16 kHz only")
        self.config = config
        self.precision = precision
        self.chunks_per_batch_option = None if max_chunks_per_batch is None else int(max_chunks_per_batch)
        self.frontend = LogMelFrontend(config.frontend)
        self.encoder = encoder.eval().requires_grad_(False)
        self.scene_embedding_size = int(config.model.embedding_size)
        self.timestamp_embedding_size = int(config.model.embedding_size)
        device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.to(device)
        if device.type == "cpu" and precision == "bf16" and not _cpu_has_bf16_units():
            warnings.warn("this CPU has no native bfloat16 matrix units (AVX-512-BF16 / AMX): bf16 will be "
                          "slower than fp32 here", stacklevel=2)

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=PRECISIONS[self.precision])

    @property
    def max_chunks_per_batch(self) -> int:
        """Chunks per encoder pass: the option, else 16 on CPU and 128 on GPU."""
        return self.chunks_per_batch_option or DEFAULT_CHUNKS.get(self.device.type, 32)

    def _frontend(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, T, F) normalised log-mel on the device.

        Clips go through in groups, and long clips a block of frames at a time, so the
        STFT never holds more than ~FRONTEND_SAMPLES_PER_PASS samples' worth of frames.
        """
        n = audio.shape[1]
        per_pass = max(1, FRONTEND_SAMPLES_PER_PASS // n)
        frames_per_block = max(1, FRONTEND_SAMPLES_PER_PASS // (self.config.frontend.hop_length * per_pass))
        parts = [self.frontend(audio[i:i + per_pass].to(self.device, torch.float32), frames_per_block)
                 for i in range(0, audio.shape[0], per_pass)]
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _encode_chunks(self, chunks: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(M, 200, F) -> yields (first row, (m, steps_per_chunk, D) float32) per micro-batch."""
        for i in range(0, chunks.shape[0], self.max_chunks_per_batch):
            with self._autocast():
                yield i, self.encoder.forward_features(chunks[i:i + self.max_chunks_per_batch]).float()

    @torch.inference_mode()
    def embed(self, audio: torch.Tensor, scene_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, N) -> (embeddings (B, S, D), timestamps (B, S) ms), float32 on the device.

        With `scene_only`, returns (scene (B, D), empty (B, 0)): the mean over steps,
        accumulated per micro-batch, so long audio never holds all timestamp embeddings.
        """
        audio = validate_audio(audio)
        cfg = self.config.model
        chunk_frames, frames_per_step = cfg.img_size[0], cfg.patch_size[0]
        steps_per_chunk, dim = cfg.grid_size[0], self.timestamp_embedding_size
        b, n = audio.shape
        num_frames = self.frontend.num_frames(n)
        steps = math.ceil(num_frames / frames_per_step)
        hop_ms = 1000.0 * self.config.frontend.hop_length / self.sample_rate
        stamps = step_timestamps(num_frames, frames_per_step, hop_ms).to(self.device).expand(b, -1).clone()
        out = torch.zeros(b, dim, device=self.device) if scene_only else torch.empty(b, steps, dim, device=self.device)
        if b == 0:
            return (out, stamps[:, :0]) if scene_only else (out, stamps)

        mel = self._frontend(audio)  # (B, T, F)
        index = chunk_index(num_frames, chunk_frames).to(self.device)
        chunks = mel[:, index].reshape(-1, chunk_frames, mel.shape[-1])  # (B * C, 200, F), clip-major
        padded_steps = chunks.shape[0] // b * steps_per_chunk  # per clip, before trimming
        for first_row, part in self._encode_chunks(chunks):
            flat = part.reshape(-1, dim)  # consecutive padded steps of consecutive clips
            g = torch.arange(first_row * steps_per_chunk, first_row * steps_per_chunk + flat.shape[0],
                             device=self.device)
            clip, step = g // padded_steps, g % padded_steps
            real = step < steps  # drop the steps that only cover padding
            if scene_only:
                out.index_add_(0, clip[real], flat[real])
            else:
                out[clip[real], step[real]] = flat[real]
        return (out / steps, stamps[:, :0]) if scene_only else (out, stamps)
