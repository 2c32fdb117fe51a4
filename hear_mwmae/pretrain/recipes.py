"""Pre-training recipes: one frozen dataclass holds everything that shapes a run.

Named presets (`RECIPES`): `released` (the authors' MW-MAE-B-4x16-4l AudioSet recipe),
`cpu-small` (a small model that trains on a CPU) and `demo-tiny` (what built
`weights/demo-tiny.pt`). Command-line overrides use dotted keys:

    >>> cfg = get_recipe("released", ["batch_size=512", "model.decoder_depth=2"])
    >>> cfg.batch_size, cfg.model.decoder_depth
    (512, 2)

The whole `TrainConfig` is stored in every training checkpoint and in the run directory
(`train_config.json`); a resumed run must use the same values except `RUNTIME_FIELDS`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..config import FrontendConfig, ModelConfig, MWMAEConfig, model_config

# Fields that may change between a run and its resumption: they do not change the result.
RUNTIME_FIELDS = frozenset({"num_workers", "log_every", "checkpoint_every", "cache_clips", "fused_attention"})


@dataclass(frozen=True)
class TrainConfig:
    """A pre-training run. `batch_size` is global: samples per optimiser step over all
    processes and accumulation micro-steps (micro-batch = batch_size / (world * accum_steps))."""

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)
    batch_size: int = 1024
    accum_steps: int = 1
    epochs: int = 100
    max_steps: int = 0  # > 0: total optimiser steps (the schedule spans them) instead of epochs
    warmup_epochs: float = 10.0
    base_lr: float = 1.5e-5  # per 256 samples: peak lr = base_lr * batch_size / 256
    min_lr: float = 0.0  # where the cosine ends
    weight_decay: float = 0.05  # applied to every parameter, as optax.adamw does in the release
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # max global grad norm; 0 = off (the release does not clip)
    bf16: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    seed: int = 0
    # runtime (may differ on resume)
    num_workers: int = 4
    log_every: int = 50  # optimiser steps between metrics lines
    checkpoint_every: int = 0  # optimiser steps between checkpoints; 0 = once per epoch
    cache_clips: bool = False  # keep each clip's normalised log-mel in memory (small datasets)
    fused_attention: bool | None = None  # None: SDPA on GPU, the (faster) explicit path on CPU

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.batch_size < 1 or self.accum_steps < 1:
            raise ValueError("batch_size and accum_steps must be >= 1")
        if self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} not divisible by accum_steps {self.accum_steps}")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("need epochs >= 1 or max_steps >= 1")
        if self.model.img_size[1] != self.frontend.n_mels:
            raise ValueError(f"model img_size {self.model.img_size} does not match n_mels {self.frontend.n_mels}")

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    @property
    def crop_frames(self) -> int:
        """Spectrogram frames per training example (200 = 2 s)."""
        return self.model.img_size[0]

    def micro_batch(self, world_size: int) -> int:
        per_step = world_size * self.accum_steps
        if self.batch_size % per_step:
            raise ValueError(f"batch_size {self.batch_size} not divisible by world_size x accum_steps = {per_step}")
        return self.batch_size // per_step

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps if self.max_steps > 0 else self.epochs * steps_per_epoch

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return min(round(self.warmup_epochs * steps_per_epoch), self.total_steps(steps_per_epoch))

    def mwmae_config(self) -> MWMAEConfig:
        """The model + frontend config that exported checkpoints carry."""
        return MWMAEConfig(self.model, self.frontend)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.update(self.mwmae_config().to_dict())
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        nested = MWMAEConfig.from_dict({k: data.pop(k) for k in ("model", "frontend") if k in data})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        return cls(model=nested.model, frontend=nested.frontend, **data)

    def summary(self) -> str:
        """One line: architecture, batch, length and lr."""
        m = self.model
        length = f"{self.max_steps} steps" if self.max_steps > 0 else f"{self.epochs} epochs"
        return (f"encoder {m.embed_dim}/{m.depth}/{m.num_heads}, decoder {m.decoder_embed_dim}/{m.decoder_depth}/"
                f"{m.decoder_num_heads} windows {list(m.decoder_window_sizes) or 'global'}, batch {self.batch_size}, "
                f"{length} (warm-up {self.warmup_epochs} epochs), peak lr {self.peak_lr:.3g}")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def result_fields(self) -> dict[str, Any]:
        """Everything except RUNTIME_FIELDS: what must match when a run is resumed."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up from 0, then cosine.

    Matches optax's `linear_schedule(0, peak, warmup)` joined with
    `cosine_decay_schedule(peak, total - warmup)` (as the release builds it): step 0 has lr 0.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- presets
def _demo_model() -> ModelConfig:
    """Encoder 192-d / 4 blocks / 3 heads; decoder 128-d / 2 blocks / 8 heads, released windows."""
    return model_config("tiny", depth=4, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=8)


RECIPES: dict[str, TrainConfig] = {
    # The authors' MW-MAE-B-4x16-4l on AudioSet (≈2.0 M clips; 1984 steps per epoch).
    "released": TrainConfig(
        name="released", model=model_config("base"), batch_size=1024, epochs=100, warmup_epochs=10,
        base_lr=1.5e-5, num_workers=8, log_every=100,
    ),
    # A small model that a few CPU cores train in hours on a few thousand clips.
    "cpu-small": TrainConfig(
        name="cpu-small", model=model_config("tiny", depth=6, decoder_embed_dim=128, decoder_depth=2),
        batch_size=32, epochs=40, warmup_epochs=2, base_lr=8e-3, num_workers=2, log_every=20,
        cache_clips=True,
    ),
    # The recipe of weights/demo-tiny.pt (see weights/DEMO.md): 2000 steps of 16 clips,
    # peak lr 1e-3; about 10-15 minutes on 2 CPU cores with the 1024-clip demo corpus.
    "demo-tiny": TrainConfig(
        name="demo-tiny", model=_demo_model(), batch_size=16, epochs=0, max_steps=2000,
        warmup_epochs=3, base_lr=1.6e-2, num_workers=0, log_every=20, checkpoint_every=250,
        cache_clips=True,
    ),
}


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `key=value` overrides; `model.x` / `frontend.x` reach the nested configs."""
    data = cfg.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        *parents, leaf = key.strip().split(".")
        target = data
        for part in parents:
            if not isinstance(target.get(part), dict):
                raise ValueError(f"unknown override key {key!r}")
            target = target[part]
        if leaf not in target or isinstance(target[leaf], dict):
            raise ValueError(f"unknown override key {key!r} (nested fields are set one by one: model.depth=6)")
        target[leaf] = _parse_value(raw.strip())
    return TrainConfig.from_dict(data)


def get_recipe(name: str, overrides: list[str] | None = None) -> TrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return apply_overrides(RECIPES[name], overrides or [])


__all__ = ["RECIPES", "RUNTIME_FIELDS", "TrainConfig", "apply_overrides", "get_recipe", "lr_at"]
