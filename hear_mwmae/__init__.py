"""hear-mwmae: MW-MAE audio embeddings in PyTorch with the HEAR 2021 API.

    model = hear_mwmae.load_model("weights/base.pt")          # or hf://owner/repo/file.pt
    scene = hear_mwmae.get_scene_embeddings(audio, model)     # (n_sounds, D)
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio, model)  # (n, steps, D), (n, steps) ms

`audio` is a float32 tensor (n_sounds, n_samples) at 16 kHz, values in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

__version__ = "0.1.0"

DEFAULT_MODEL = "weights/base.pt"


def load_model(model_file_path: str = DEFAULT_MODEL, **options: Any) -> torch.nn.Module:
    """Load a checkpoint as a HEAR model.

    model_file_path: our `.pt` / `.safetensors`, an authors' run directory (converted on
        the fly), or `hf://owner/repo/path/file.pt[@revision]`.
    options (also via heareval's `--model-options` JSON):
        device: "cpu", "cuda", "cuda:1", ... (default: cuda if available)
        precision: "fp32" (default), "bf16" or "fp16" (autocast)
        max_chunks_per_batch: 2 s chunks per encoder pass (default 16 on CPU, 128 on GPU;
            bounds memory)
        sha256: pin the checkpoint file's hash (checked before loading)
    """
    from .checkpoint import build_encoder, load_checkpoint
    from .runtime import MWMAERuntime

    known = {"device", "precision", "max_chunks_per_batch", "sha256"}
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"unknown load_model options {sorted(unknown)}; known: {sorted(known)}")
    ckpt = load_checkpoint(model_file_path or DEFAULT_MODEL, sha256=options.get("sha256"))
    return MWMAERuntime(
        build_encoder(ckpt), ckpt.config, device=options.get("device"),
        precision=options.get("precision", "fp32"),
        max_chunks_per_batch=options.get("max_chunks_per_batch"),
    )


def _runtime(model: torch.nn.Module):
    from .runtime import MWMAERuntime

    if not isinstance(model, MWMAERuntime):
        raise TypeError(f"model must come from hear_mwmae.load_model, got {type(model).__name__}")
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_steps, D) float32 and timestamps
    (n_sounds, n_steps) float32 in ms (centre of each 40 ms step's real frames)."""
    return _runtime(model).embed(audio)


def get_scene_embeddings(audio: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D) float32: the mean of the timestamp embeddings."""
    return _runtime(model).embed(audio, scene_only=True)[0]


__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings", "__version__"]
