"""Attention probabilities and per-head outputs of a model's blocks, without touching the fast path.

Any attention module that implements the contract
    attention_maps(*forward_args) -> (probs (B, H, N, N) float32, head_out (B, H, N, head_dim))
(our `model.Attention`; the Swin decoder's attention) can be recorded: inside
`attention_hooks(...)` a forward hook calls it with the module's own inputs, so the
probabilities are recomputed from the block's q, k, v and additive mask while the forward
itself runs unchanged (SDPA or the reference path). Outside the context nothing is hooked.

`ModelPart` wraps the encoder or the decoder of a loaded model: its attention modules,
what each head's window is, and how to run it on a batch (the decoder runs the
pre-training forward with masks drawn from (seed, clip index)).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint, build_encoder, build_mwmae
from ..config import MWMAEConfig
from ..model import MWMAE

PARTS = ("encoder", "decoder")
MASK_STREAM = 7  # distinguishes the masking noise stream from other uses of the seed


class AnalysisError(ValueError):
    """A request the analysis cannot serve (e.g. the decoder of an encoder-only checkpoint)."""


Callback = Callable[[int, torch.Tensor, torch.Tensor], None]


def attention_module(block: nn.Module) -> nn.Module:
    """The one submodule of `block` that implements `attention_maps`."""
    found = [m for m in block.modules() if m is not block and callable(getattr(m, "attention_maps", None))]
    if len(found) != 1:
        raise AnalysisError(f"{type(block).__name__}: expected one attention module with `attention_maps`, "
                            f"found {len(found)}")
    return found[0]


@contextlib.contextmanager
def attention_hooks(modules: Sequence[nn.Module], callback: Callback) -> Iterator[None]:
    """While inside, each forward of modules[l] also calls callback(l, probs, head_out) with
    the module's recomputed attention (see the module docstring). Hooks are removed on exit."""

    def hook(layer: int):
        def run(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            with torch.no_grad():
                probs, head_out = module.attention_maps(*args, **kwargs)
            callback(layer, probs, head_out)
        return run

    handles = [m.register_forward_hook(hook(i), with_kwargs=True) for i, m in enumerate(modules)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def collect_attention(modules: Sequence[nn.Module],
                      run: Callable[[], object]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Call `run()` and return (probs, head_out) of every module, in module order (small inputs only)."""
    out: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    with attention_hooks(modules, lambda i, p, o: out.__setitem__(i, (p, o))):
        run()
    missing = [i for i in range(len(modules)) if i not in out]
    if missing:
        raise AnalysisError(f"modules {missing} were not called by the forward pass")
    return [out[i] for i in range(len(modules))]


@dataclass(frozen=True)
class HeadInfo:
    """What bounds a head: `window` = tokens it may attend to (0 = global); `window_shape` =
    (time, freq) for windows on the patch grid (Swin), None for windows of the flattened
    sequence; `shift` = roll of the windows (tokens, or time patches for grid windows)."""

    layer: int
    head: int
    window: int
    window_shape: tuple[int, int] | None
    shift: int

    def label(self) -> str:
        if not self.window:
            return "global"
        return "x".join(map(str, self.window_shape)) if self.window_shape else str(self.window)


def _head_infos(module: nn.Module, layer: int, cfg: MWMAEConfig, part: str) -> list[HeadInfo]:
    windows = getattr(module, "window_sizes", None)
    if windows is not None:  # model.Attention: per-head windows of the flattened sequence
        return [HeadInfo(layer, h, int(w), None, int(module.shift_of(w)) if w else 0) for h, w in enumerate(windows)]
    m = cfg.model
    heads = int(getattr(module, "num_heads", m.decoder_num_heads if part == "decoder" else m.num_heads))
    shape, grid = getattr(module, "window", None), getattr(module, "grid", None)
    if shape is not None and grid is not None and tuple(shape) != tuple(grid):  # swin.WindowAttention
        wt, wf = (int(v) for v in shape)
        shift = int(getattr(module, "shift", (0, 0))[0])
        return [HeadInfo(layer, h, wt * wf, (wt, wf), shift) for h in range(heads)]
    return [HeadInfo(layer, h, 0, None, 0) for h in range(heads)]  # global (incl. a grid-wide window)


@dataclass
class LoadedModel:
    """A model to analyse: the encoder, the full masked autoencoder if there is a decoder."""

    label: str
    config: MWMAEConfig
    encoder: nn.Module
    mae: MWMAE | None
    source: str
    null: bool = False

    @property
    def device(self) -> torch.device:
        return next(self.encoder.parameters()).device

    def to(self, device: str | torch.device) -> "LoadedModel":
        """Move the modules to `device` (in place); returns self."""
        (self.mae if self.mae is not None else self.encoder).to(device)
        return self


def from_checkpoint(ckpt: Checkpoint, label: str, source: str) -> LoadedModel:
    """Build the modules of a checkpoint in eval mode (the decoder only if it has one)."""
    if ckpt.encoder_only:
        return LoadedModel(label, ckpt.config, build_encoder(ckpt), None, source)
    mae = build_mwmae(ckpt).eval()
    return LoadedModel(label, ckpt.config, mae.encoder, mae, source)


def null_model(config: MWMAEConfig, seed: int, label: str) -> LoadedModel:
    """The same architecture freshly initialised (the pre-training init), seeded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mae = MWMAE(config.model).eval()
    return LoadedModel(label, config, mae.encoder, mae, f"fresh init, torch seed {seed}", null=True)


class ModelPart:
    """The encoder or decoder of a model: attention modules, head windows, forward on a batch."""

    def __init__(self, model: LoadedModel, part: str, mask_seed: int = 0):
        if part not in PARTS:
            raise ValueError(f"part must be one of {PARTS}, got {part!r}")
        if part == "decoder" and model.mae is None:
            raise AnalysisError(f"{model.label}: the checkpoint is encoder-only (no decoder weights); "
                                "analyse --part encoder, or use a checkpoint with its decoder")
        self.model, self.name, self.mask_seed = model, part, mask_seed
        cfg = model.config
        blocks = model.encoder.blocks if part == "encoder" else model.mae.decoder.blocks
        self.modules = [attention_module(b) for b in blocks]
        self.heads = [_head_infos(m, i, cfg, part) for i, m in enumerate(self.modules)]
        if len({len(h) for h in self.heads}) != 1:
            raise AnalysisError(f"{model.label} {part}: blocks with different head counts are not supported")
        self.grid = cfg.model.grid_size
        self.patch_size = cfg.model.patch_size
        self.num_patches = cfg.model.num_patches

    @property
    def depth(self) -> int:
        return len(self.modules)

    @property
    def num_heads(self) -> int:
        return len(self.heads[0])

    def mask_noise(self, clip_ids: Sequence[int]) -> torch.Tensor:
        """(B, mask_noise_size) uniform noise, a function of (mask_seed, clip index) only."""
        size = self.model.config.model.mask_noise_size
        rows = [np.random.default_rng([self.mask_seed, MASK_STREAM, int(c)]).random(size, dtype=np.float32)
                for c in clip_ids]
        return torch.from_numpy(np.stack(rows))

    @torch.inference_mode()
    def forward(self, x: torch.Tensor, clip_ids: Sequence[int]) -> None:
        """Run the part on normalised chunks x (B, T, F) (results go to the hooks)."""
        if self.name == "encoder":
            self.model.encoder.forward_features(x)
            return
        mae = self.model.mae
        ids_keep, ids_restore, _ = mae.random_masking(x.shape[0], x.device, noise=self.mask_noise(clip_ids))
        mae.decoder(mae.encoder.forward_masked(x, ids_keep), ids_restore)

    def extra_tokens(self, n: int) -> int:
        """Leading non-patch tokens (CLS) in a sequence of n tokens."""
        extra = n - self.num_patches
        if extra not in (0, 1):
            raise AnalysisError(f"{self.model.label} {self.name}: {n} tokens for {self.num_patches} patches")
        return extra


__all__ = ["AnalysisError", "HeadInfo", "LoadedModel", "ModelPart", "PARTS", "attention_hooks", "attention_module",
           "collect_attention", "from_checkpoint", "null_model"]
