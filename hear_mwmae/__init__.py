"""hear-mwmae: MW-MAE audio embeddings in PyTorch with the HEAR 2021 API.

    model = hear_mwmae.load_model("demo-tiny")                # the bundled toy model (offline, any install)
    model = hear_mwmae.load_model("mwmae-base-4x16-4l")       # after `hear-mwmae fetch mwmae-base-4x16-4l`
    scene = hear_mwmae.get_scene_embeddings(audio, model)     # (n_sounds, D)
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio, model)  # (n, steps, D), (n, steps) ms

`audio` is a float32 tensor (n_sounds, n_samples) at 16 kHz, values in [-1, 1].
"""

from __future__ import annotations

from typing import Any

import torch

__version__ = "0.1.0"

DEFAULT_MODEL = "mwmae-base-4x16-4l"  # the authors' released MW-MAE, from the cache (`hear-mwmae fetch`)


def load_model(model_file_path: str = DEFAULT_MODEL, **options: Any) -> torch.nn.Module:
    """Load a checkpoint as a HEAR model.

    model_file_path: a released model's name (`hear_mwmae.registry`; default
        "mwmae-base-4x16-4l", fetched once with `hear-mwmae fetch NAME`), "demo-tiny" (the
        toy model shipped inside the package), our `.pt` /
        `.safetensors`, an authors' checkpoint (MW-MAE run directory, Audio-MAE `.pth` or
        timm directory; converted on the fly),
        `hf://owner/repo/path/file.pt[@revision]`, or `hf://owner/repo[@revision]` (a
        timm-layout Audio-MAE repo such as gaunernst/vit_base_patch16_1024_128.audiomae_as2m).
    options (also via heareval's `--model-options` JSON):
        device: "cpu", "cuda", "cuda:1", ... (default: cuda if available)
        precision: "fp32" (default), "bf16" or "fp16" (autocast), or "int8" (CPU only: the
            blocks' linear layers in int8, quantised once at load; see hear_mwmae/quantize.py)
        max_chunks_per_batch: an int >= 1, encoder chunks per pass (default 16 on CPU, 128 on
            GPU; bounds memory)
        sha256: pin the checkpoint file's hash (64 hex digits; checked before loading)
        compile: True to run the encoder through torch.compile (default False)
    Options of the wrong type or value raise TypeError / ValueError; a reference that does not
    resolve raises FileNotFoundError saying how to get the model (`hear_mwmae.sources`).
    """
    from .checkpoint import build_encoder
    from .runtime import MWMAERuntime, check_load_options
    from .sources import load_checkpoint

    options = check_load_options(options)
    ckpt = load_checkpoint(model_file_path or DEFAULT_MODEL, sha256=options.get("sha256"))
    return MWMAERuntime(
        build_encoder(ckpt), ckpt.config, device=options.get("device"),
        precision=options.get("precision", "fp32"),
        max_chunks_per_batch=options.get("max_chunks_per_batch"), compile=options.get("compile", False),
    )


def _runtime(model: torch.nn.Module):
    from .runtime import MWMAERuntime

    if not isinstance(model, MWMAERuntime):
        raise TypeError(f"model must come from hear_mwmae.load_model, got {type(model).__name__}")
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_steps, D) float32 and timestamps
    (n_sounds, n_steps) float32 in ms (centre of each step's real frames: 40 ms steps for MW-MAE,
    160 ms for Audio-MAE)."""
    return _runtime(model).embed(audio)


def get_scene_embeddings(audio: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D) float32: the mean of the timestamp embeddings."""
    return _runtime(model).embed(audio, scene_only=True)[0]


__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings", "__version__"]
