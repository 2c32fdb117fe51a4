"""Pre-training recipes: one frozen dataclass holds everything that shapes a run.

Named presets (`RECIPES`), for both model families:

    released            the MW-MAE authors' MW-MAE-B-4x16-4l AudioSet recipe
    cpu-small           a small MW-MAE that trains on a CPU
    demo-tiny           what built `weights/demo-tiny.pt`
    audiomae-base       the Audio-MAE authors' released ViT-B recipe (decoder mode 1, Swin)
    audiomae-cpu-small  a small Audio-MAE (Swin decoder) that trains on a CPU in minutes

A recipe is data only: the model and frontend configs, the optimiser and schedule, and the
data options below; the trainer has no family-specific code. Command-line overrides use
dotted keys:

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

from ..config import AnyFrontendConfig, FbankConfig, FrontendConfig, ModelConfig, MWMAEConfig, audiomae_config, \
    model_config

# Fields that may change between a run and its resumption: they do not change the result.
RUNTIME_FIELDS = frozenset({"num_workers", "log_every", "checkpoint_every", "cache_clips", "fused_attention"})
SHORT_CLIP_PADS = ("centre", "end")


class RecipeBase:
    """What pre-training and fine-tuning recipes share: a global batch of `batch_size` samples
    over all processes and `accum_steps`, `epochs` or `max_steps`, a warm-up of
    `warmup_epochs`, peak lr = base_lr x batch_size / 256; the fields named in `RUNTIME_FIELDS`
    may change on resume; a subclass defines `to_dict`."""

    batch_size: int
    accum_steps: int
    epochs: int
    max_steps: int
    warmup_epochs: float
    base_lr: float

    @property
    def peak_lr(self) -> float:
        return self.base_lr * self.batch_size / 256

    def micro_batch(self, world_size: int) -> int:
        per_step = world_size * self.accum_steps
        if self.batch_size % per_step:
            raise ValueError(f"batch_size {self.batch_size} not divisible by world_size x accum_steps = {per_step}")
        return self.batch_size // per_step

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.max_steps if self.max_steps > 0 else self.epochs * steps_per_epoch

    def warmup_steps(self, steps_per_epoch: int) -> int:
        return min(round(self.warmup_epochs * steps_per_epoch), self.total_steps(steps_per_epoch))

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def result_fields(self) -> dict[str, Any]:
        """Everything except RUNTIME_FIELDS: what must match when a run is resumed."""
        return {k: v for k, v in self.to_dict().items() if k not in RUNTIME_FIELDS}


@dataclass(frozen=True)
class TrainConfig(RecipeBase):
    """A pre-training run. `batch_size` is global: samples per optimiser step over all
    processes and accumulation micro-steps (micro-batch = batch_size / (world * accum_steps)).

    `model` + `frontend` must form a valid `MWMAEConfig` (either family); crops are
    `model.img_size[0]` frames of the frontend's normalised spectrogram.
    `no_weight_decay_1d`: no weight decay on biases and 1-D parameters (norm weights, Swin
    temperatures, bias tables), as the Audio-MAE authors' timm `add_weight_decay` does;
    off = decay on every trained parameter, as optax.adamw in the MW-MAE release.
    Parameters with `requires_grad=False` (fixed position embeddings) are never optimised.
    `gain_aug`: multiply each training waveform by a random gain Beta(10, 10) + 0.5, drawn
    per sample: what the Audio-MAE authors' `roll_mag_aug` does (its roll is by
    `randint(len(waveform))` of a (1, N) array, i.e. always 0 samples). Audio files only.
    `short_clip_pad`: where a clip shorter than the crop sits: "centre" (padding on both
    sides; MW-MAE's recipes) or "end" (padding appended; the Audio-MAE authors). The
    padding itself is the frontend's (`pad_frames`: reflection for log-mel, zero raw fbank
    for Kaldi fbank).
    """

    name: str = "custom"
    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: AnyFrontendConfig = field(default_factory=FrontendConfig)
    batch_size: int = 1024
    accum_steps: int = 1
    epochs: int = 100
    max_steps: int = 0  # > 0: total optimiser steps (the schedule spans them) instead of epochs
    warmup_epochs: float = 10.0
    base_lr: float = 1.5e-5  # per 256 samples: peak lr = base_lr * batch_size / 256
    min_lr: float = 0.0  # where the cosine ends
    weight_decay: float = 0.05  # applied to every parameter, as optax.adamw does in the release
    no_weight_decay_1d: bool = False  # True: no decay on biases and 1-D parameters (Audio-MAE)
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 0.0  # max global grad norm; 0 = off (the release does not clip)
    bf16: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    gain_aug: bool = False  # random waveform gain Beta(10, 10) + 0.5 (Audio-MAE's roll_mag_aug)
    short_clip_pad: str = "centre"  # "centre" | "end": where short clips sit in their crop
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
        if self.short_clip_pad not in SHORT_CLIP_PADS:
            raise ValueError(f"short_clip_pad must be one of {list(SHORT_CLIP_PADS)}, got {self.short_clip_pad!r}")
        self.mwmae_config()  # model and frontend must fit together (raises otherwise)

    @property
    def crop_frames(self) -> int:
        """Spectrogram frames per training example (200 = 2 s for MW-MAE, 1024 for Audio-MAE)."""
        return self.model.img_size[0]

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
        """One line: family, architecture, masking, batch, length, lr and weight decay."""
        m = self.model
        if m.decoder_kind == "swin":
            windows = f"swin {m.decoder_window[0]}x{m.decoder_window[1]}" + (
                f" + {m.decoder_global_blocks} global" if m.decoder_global_blocks else "")
        else:
            windows = f"windows {list(m.decoder_window_sizes)}" if m.decoder_window_sizes else "global"
        masking = (f"2-D mask t{m.mask_t_prob:g}/f{m.mask_f_prob:g}" if m.mask_2d else f"mask {m.mask_ratio:g}")
        length = f"{self.max_steps} steps" if self.max_steps > 0 else f"{self.epochs} epochs"
        decay = f"wd {self.weight_decay:g}" + (" (not bias/1-D)" if self.no_weight_decay_1d else "")
        return (f"{m.family} {m.img_size[0]}x{m.img_size[1]} {self.frontend.kind}, encoder {m.embed_dim}/{m.depth}/"
                f"{m.num_heads}, decoder {m.decoder_embed_dim}/{m.decoder_depth}/{m.decoder_num_heads} {windows}, "
                f"{masking}{', norm_pix' if m.norm_pix_loss else ''}, batch {self.batch_size}, {length} "
                f"(warm-up {self.warmup_epochs:g}), peak lr {self.peak_lr:.3g}, {decay}")



def lr_at(step: int, peak_lr: float, warmup_steps: int, total_steps: int, min_lr: float = 0.0) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up from 0, then cosine.

    Matches optax's `linear_schedule(0, peak, warmup)` joined with
    `cosine_decay_schedule(peak, total - warmup)` (as the MW-MAE release builds it): step 0
    has lr 0. It is also the Audio-MAE authors' `util/lr_sched.adjust_learning_rate`, which
    they call before every optimiser step with the fractional epoch step / steps_per_epoch:
    the same value whenever warm-up and total length are whole numbers of steps.
    """
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- presets
def _audiomae_cpu_model() -> ModelConfig:
    """Audio-MAE on (1024, 128) fbank, 16 x 16 patches, CLS, fixed sin-cos position embeddings:
    encoder 128-d / 4 blocks / 4 heads; Swin decoder 128-d / 4 blocks / 4 heads, (4, 4) windows."""
    return audiomae_config("tiny", "swin", embed_dim=128, depth=4, num_heads=4, decoder_embed_dim=128,
                           decoder_depth=4, decoder_num_heads=4)


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
    # The Audio-MAE authors' released ViT-B (submit_pretrain_audioset2M.sh): decoder mode 1,
    # norm_pix_loss, unstructured mask 0.8, 8 clips x 8 GPUs x 8 nodes = 512, 33 epochs with
    # 3 warm-up, blr 2e-4 (peak lr 4e-4), AdamW (0.9, 0.95), weight decay 1e-4 except on
    # biases and 1-D parameters, roll_mag_aug (here gain_aug), padding appended to short clips.
    "audiomae-base": TrainConfig(
        name="audiomae-base", model=audiomae_config("base", "swin"), frontend=FbankConfig(), batch_size=512,
        epochs=33, warmup_epochs=3, base_lr=2e-4, weight_decay=1e-4, no_weight_decay_1d=True, betas=(0.9, 0.95),
        gain_aug=True, short_clip_pad="end", num_workers=10, log_every=100,
    ),
    # A small Audio-MAE with the released decoder design (Swin blocks), same optimiser rules;
    # a few minutes per epoch on 2 CPU cores for a few hundred synthetic 10 s clips.
    "audiomae-cpu-small": TrainConfig(
        name="audiomae-cpu-small", model=_audiomae_cpu_model(), frontend=FbankConfig(), batch_size=16,
        epochs=20, warmup_epochs=2, base_lr=1.6e-2, weight_decay=1e-4, no_weight_decay_1d=True, betas=(0.9, 0.95),
        short_clip_pad="end", num_workers=2, log_every=10, cache_clips=True,
    ),
}


def _parse_value(text: str) -> Any:
    """JSON when it parses (numbers, true/false/null, lists), else the plain string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(cfg: Any, overrides: list[str]) -> Any:
    """Apply `key=value` overrides to a recipe (a `TrainConfig`, or any frozen config with
    `to_dict` / `from_dict`, e.g. fine-tuning's); `model.x` / `frontend.x` reach nested configs."""
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
    return type(cfg).from_dict(data)


def get_recipe(name: str, overrides: list[str] | None = None) -> TrainConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return apply_overrides(RECIPES[name], overrides or [])


__all__ = ["RECIPES", "RUNTIME_FIELDS", "SHORT_CLIP_PADS", "RecipeBase", "TrainConfig", "apply_overrides", "get_recipe", "lr_at"]
