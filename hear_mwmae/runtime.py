"""HEAR runtime: waveforms -> timestamp / scene embeddings, all chunks of all clips batched.

One data path for both model families; the config supplies every value (MW-MAE /
Audio-MAE in brackets). Every clip of a call has the same length N, as HEAR requires:
    audio (B, N) -> frontend on the device -> normalised spectrogram (B, T, F) [80 / 128]
    -> each clip extended to whole chunks the frontend's way (reflection / zero fbank)
       -> (B * C, chunk, F) [200 / 1024 frames]; no chunk of padding only
    -> encoder in micro-batches of `max_chunks_per_batch` -> (B * C, steps, grid_f * D)
    -> (B, C * steps, grid_f * D) trimmed to the clip's ceil(T / frames_per_step) real steps
    -> timestamps on one regular grid [15 + 40 i / 87.5 + 160 i ms]; scene = mean of steps.
Chunks are independent once the clip is normalised, so batching them changes nothing.
"""

from __future__ import annotations

import contextlib
import logging
import math
import numbers
import re
import warnings
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from .config import MWMAEConfig
from .frontend import build_frontend, reflect_indices
from .model import Encoder

log = logging.getLogger(__name__)

# precision name -> the dtype of the encoder's matrix products. bf16 / fp16: autocast; int8:
# the blocks' linear layers in int8 (CPU only, `quantize.py`), everything else float32.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.qint8}
AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
LOUD_AUDIO = 2.0  # warn when |audio| exceeds this (HEAR audio lies in [-1, 1])
FRONTEND_SAMPLES_PER_PASS = 16_000 * 60 * 4  # the frontend sees at most ~4 min of audio at a time
DEFAULT_CHUNKS = {"cpu": 16, "cuda": 128}  # chunks per encoder pass when not set


def step_timestamps(num_frames: int, frames_per_step: int, hop_ms: float, first_frame_ms: float = 0.0) -> torch.Tensor:
    """Centre (ms) of the frames each step covers; frame j is centred at first_frame_ms + j * hop_ms.

    Step i covers frames [p*i, p*i + p - 1], so its timestamp is first_frame_ms + (p*i + (p-1)/2) * hop_ms:
    15, 55, 95, ... ms for MW-MAE (p = 4, 10 ms hop, centred frames) and 87.5, 247.5, ... ms
    for Audio-MAE (p = 16, Kaldi frames centred 12.5 ms after their start). Returns (ceil(T / p),) float32.

    This is the centre of the step's real frames for every complete step. A last step that
    holds fewer than p real frames (T % p != 0) stays on the same regular grid, because
    hear-validator requires every interval to be within 1 ms of the mean; its timestamp
    then lies at most (p-1)/2 frames (15 ms / 75 ms) past the centre of the clip's last frame.
    """
    p = frames_per_step
    first = torch.arange(0, num_frames, p, dtype=torch.float64)
    return (first_frame_ms + (first + (p - 1) / 2) * hop_ms).to(torch.float32)


def num_chunks(num_frames: int, chunk_frames: int) -> int:
    """Whole chunks a clip of `num_frames` needs: ceil(T / chunk), at least 1.

    A clip that already fills whole chunks gets no extra chunk (the MW-MAE release's extra
    chunk of padding is always trimmed away again, so skipping it changes no result).
    """
    return max(1, math.ceil(num_frames / chunk_frames))


def chunk_index(num_frames: int, chunk_frames: int) -> torch.Tensor:
    """Frame indices of the clip's reflect-padded chunks (MW-MAE): (C * chunk_frames,)."""
    return reflect_indices(num_frames, 0, num_chunks(num_frames, chunk_frames) * chunk_frames - num_frames)


def _cpu_has_bf16_units() -> bool:
    """Whether oneDNN may use native bf16 units (AVX-512-BF16 / AMX) on this CPU."""
    from .cpu_fused import cpu_flags, native_bf16

    return native_bf16() or not cpu_flags()  # flags unknown (not Linux): do not warn


LOAD_OPTIONS = ("compile", "device", "max_chunks_per_batch", "precision", "sha256")


def check_device(name: str | torch.device | None, what: str | None = None, cpu: str = "device='cpu'") -> None:
    """Raise ValueError, with the fix, when the device `name` cannot be used on this machine.

    `what` names it in the message (default "device 'NAME'"), `cpu` is how to ask for the CPU
    (the CLI passes "--device NAME" and "--device cpu").
    """
    if name is None:
        return
    what = what or f"device {str(name)!r}"
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"{what}: not a device name ({exc}); use cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            raise ValueError(f"{what}: CUDA is not available here (torch {torch.__version__}, {build}, "
                             f"no GPU visible); use {cpu}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{what}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what}: MPS is not available here; use {cpu}")


def check_load_options(options: dict[str, Any]) -> dict[str, Any]:
    """Check `load_model`'s options (also heareval's `--model-options` JSON) before anything loads.

    Returns them unchanged; raises TypeError for an unknown option or a wrong type
    (e.g. max_chunks_per_batch="16"), ValueError for a wrong value.
    """
    unknown = set(options) - set(LOAD_OPTIONS)
    if unknown:
        raise TypeError(f"unknown load_model options {sorted(unknown)}; known: {list(LOAD_OPTIONS)}")
    device = options.get("device")
    if device is not None and not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str such as 'cpu' or 'cuda:1', or a torch.device, got {device!r}")
    check_device(device)
    precision = options.get("precision", "fp32")
    if not isinstance(precision, str):
        raise TypeError(f"precision must be a str, one of {list(PRECISIONS)}, got {precision!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    chunks = options.get("max_chunks_per_batch")
    if chunks is not None and (isinstance(chunks, bool) or not isinstance(chunks, numbers.Integral)):
        raise TypeError(f"max_chunks_per_batch must be an int >= 1 or None, got {chunks!r}")
    if chunks is not None and chunks < 1:
        raise ValueError(f"max_chunks_per_batch must be >= 1, got {chunks}")
    sha = options.get("sha256")
    if sha is not None and not isinstance(sha, str):
        raise TypeError(f"sha256 must be a str of 64 hex digits, got {sha!r}")
    if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", sha):
        raise ValueError(f"sha256 must be 64 hex digits, got {sha!r}")
    if not isinstance(options.get("compile", False), bool):
        raise TypeError(f"compile must be True or False, got {options['compile']!r}")
    return options


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
    if audio.shape[0] > audio.shape[1]:
        warnings.warn(f"audio of shape {tuple(audio.shape)} holds more sounds than samples per sound: HEAR audio is "
                      f"(n_sounds, n_samples); is it transposed (pass audio.T)?", stacklevel=3)
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
    """The nn.Module HEAR hands around: frontend + frozen encoder + batching policy (either family),
    and for a fine-tuned model its classifier (`classifier`, used by `logits` only).

    precision: "fp32"; "bf16" / "fp16" (autocast, except fused bf16 on the CPU); "int8" (CPU
    only: the blocks' linear layers quantised once, here, by `quantize.quantize_encoder`, the
    encoder (and for `logits` the classifier) run one chunk at a time so that embeddings and
    logits do not depend on the micro-batch; raises
    `Int8Unavailable` where no fast int8 kernels exist). compile: run the encoder through
    `torch.compile` (compiled on the first call of each new micro-batch shape family; batch
    size is dynamic). fuse: fp32 / bf16 on the CPU, the blocks' linear layers as oneDNN
    products with bias and GELU fused, bf16 weights converted once (`cpu_fused.py`; None =
    wherever available and not compiling).
    """

    sample_rate: int = 16000

    def __init__(self, encoder: Encoder, config: MWMAEConfig, device: str | torch.device | None = None,
                 precision: str = "fp32", max_chunks_per_batch: int | None = None, compile: bool = False,
                 fuse: bool | None = None, classifier: nn.Module | None = None) -> None:
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
        self.frontend = build_frontend(config.frontend)
        self.encoder = encoder.eval().requires_grad_(False)
        if (classifier is None) != (config.head is None):
            raise ValueError("pass the classifier exactly when the config has a head")
        self.classifier = None if classifier is None else classifier.eval().requires_grad_(False)
        self.scene_embedding_size = int(config.model.embedding_size)
        self.timestamp_embedding_size = int(config.model.embedding_size)
        device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if precision == "int8" and device.type != "cpu":
            from .quantize import Int8Unavailable

            raise Int8Unavailable(f"precision='int8' runs on the CPU only, not {device}; on a GPU use 'bf16' or 'fp16'")
        self.to(device)
        if device.type == "cpu" and precision == "bf16" and not _cpu_has_bf16_units():
            warnings.warn("this CPU has no native bfloat16 matrix units (AVX-512-BF16 / AMX): bf16 will be "
                          "slower than fp32 here", stacklevel=2)
        if precision == "int8":
            from .quantize import quantize_encoder

            quantize_encoder(self.encoder)  # once, here: the float weights of those layers are dropped
        from . import cpu_fused

        can_fuse = (precision in ("fp32", "bf16") and device.type == "cpu"
                    and cpu_fused.available(PRECISIONS[precision]))
        if fuse and not can_fuse:
            raise ValueError("fuse=True needs precision='fp32' or 'bf16' on a CPU with oneDNN")
        self.fused = bool(can_fuse and not compile if fuse is None else fuse)
        if self.fused:
            cpu_fused.fuse_encoder(self.encoder, PRECISIONS[precision])  # once, here
        self.compiled = bool(compile)
        self._features = self.encoder.forward_features
        if self.compiled:
            self._features = torch.compile(self.encoder.forward_features)
        self._logits = self._chunk_logits
        if precision == "int8":  # a chunk's result never depends on the micro-batch
            from .quantize import chunk_by_chunk

            self._features = chunk_by_chunk(self._features)
            self._logits = chunk_by_chunk(self._chunk_logits)

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    @property
    def labels(self) -> list[str] | None:
        """The classifier's class names in output order; None for a model without a classifier."""
        return None if self.config.head is None else list(self.config.head.labels)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision not in AUTOCAST or self.fused:  # fused bf16: the layers hold bf16 weights
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=AUTOCAST[self.precision])

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

    def _chunks(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, N) checked audio -> (B * C, chunk, F) normalised chunks, clip-major: each clip's
        spectrogram extended to whole chunks the frontend's way (no chunk of padding only)."""
        chunk = self.config.chunk_frames
        mel = self._frontend(audio)  # (B, T, F)
        padded = self.frontend.pad_frames(mel, num_chunks(mel.shape[1], chunk) * chunk)
        return padded.reshape(-1, chunk, mel.shape[-1])

    def _encode_chunks(self, chunks: torch.Tensor, fn: Any = None) -> Iterator[tuple[int, torch.Tensor]]:
        """(M, chunk, F) -> yields (first row, fn(micro-batch) as float32) per micro-batch;
        `fn` defaults to the encoder's features, (m, steps_per_chunk, D)."""
        fn = fn or self._features
        for i in range(0, chunks.shape[0], self.max_chunks_per_batch):
            part = chunks[i:i + self.max_chunks_per_batch]
            if self.compiled:
                torch._dynamo.maybe_mark_dynamic(part, 0)  # one graph for every micro-batch size
            with self._autocast():
                yield i, fn(part).float()

    def _chunk_logits(self, chunks: torch.Tensor) -> torch.Tensor:
        """(m, chunk, F) -> (m, num_classes): the classifier (float32) on each chunk's tokens."""
        return self.classifier(self.encoder.forward_tokens(chunks).float())

    @torch.inference_mode()
    def logits(self, audio: torch.Tensor, per_chunk: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, N) -> (logits, chunk centres), float32 on the device.

        Each chunk of a clip (the same chunks as `embed`) gets the classifier's logits; the
        clip's logits are their mean: (B, num_classes). A clip of at most one chunk (10.24 s for
        Audio-MAE) gives exactly the authors' model output. With `per_chunk`: (B, C, num_classes)
        and the centre of each chunk's real frames in ms (B, C); else the centres are (B, 0).
        Raises `classifier.NoClassifierError` for a model without a classifier.
        """
        from .checkpoint import NO_HEAD
        from .classifier import NoClassifierError

        if self.classifier is None:
            raise NoClassifierError(NO_HEAD)
        audio = validate_audio(audio)
        b, classes = audio.shape[0], self.config.head.num_classes
        num_frames = self.frontend.num_frames(audio.shape[1]) if b else 0
        c = num_chunks(num_frames, self.config.chunk_frames)
        start = torch.arange(c, dtype=torch.float64) * self.config.chunk_frames
        end = torch.clamp(start + self.config.chunk_frames, max=max(num_frames, 1))  # real frames of each chunk
        centres = (self.frontend.first_frame_ms + (start + end - 1) / 2 * self.frontend.hop_ms).float()
        centres = centres.to(self.device).expand(b, -1).clone()
        out = torch.empty(b * c, classes, device=self.device)
        if b:
            for first_row, part in self._encode_chunks(self._chunks(audio), self._logits):
                out[first_row:first_row + part.shape[0]] = part
        out = out.view(b, c, classes)
        return (out, centres) if per_chunk else (out.mean(dim=1), centres[:, :0])

    @torch.inference_mode()
    def embed(self, audio: torch.Tensor, scene_only: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """audio (B, N) -> (embeddings (B, S, D), timestamps (B, S) ms), float32 on the device.

        With `scene_only`, returns (scene (B, D), empty (B, 0)): the mean over steps,
        accumulated per micro-batch, so long audio never holds all timestamp embeddings.
        """
        audio = validate_audio(audio)
        cfg = self.config
        frames_per_step = cfg.frames_per_step
        steps_per_chunk, dim = cfg.model.grid_size[0], self.timestamp_embedding_size
        b, n = audio.shape
        num_frames = self.frontend.num_frames(n)
        steps = math.ceil(num_frames / frames_per_step)
        stamps = step_timestamps(num_frames, frames_per_step, self.frontend.hop_ms, self.frontend.first_frame_ms)
        stamps = stamps.to(self.device).expand(b, -1).clone()
        out = torch.zeros(b, dim, device=self.device) if scene_only else torch.empty(b, steps, dim, device=self.device)
        if b == 0:
            return (out, stamps[:, :0]) if scene_only else (out, stamps)

        chunks = self._chunks(audio)  # (B * C, chunk, F), clip-major
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
