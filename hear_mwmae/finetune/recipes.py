"""Fine-tuning recipes: one frozen dataclass holds everything that shapes a fine-tuning run.

    audiomae-as2m-ft    the Audio-MAE authors' AudioSet-2M fine-tuning (their 47.3 mAP model)
    audiomae-as20k-ft   their AudioSet-20K (balanced) fine-tuning (~37.0 mAP)
    audiomae-esc50-ft   their ESC-50 settings (main_finetune_esc.py defaults, 512 frames)
    cpu-small           ours: the demo model on a small task, minutes on 2 CPU cores

Every value of the authors' recipes comes from facebookresearch/AudioMAE @ bd60e29 (README
commands, submit_ft_mask_bal.sh, ft_as.sh, main_finetune_as.py / main_finetune_esc.py,
dataset.py, util/lr_decay.py); docs/finetune.md cites the line of each. The same recipes
apply to an MW-MAE encoder with its own frontend and chunk length (ours: the MW-MAE
authors released no fine-tuning). `--set key=value` overrides a field
(`hear_mwmae.pretrain.recipes.apply_overrides`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..config import POOLINGS
from ..pretrain.recipes import RUNTIME_FIELDS, RecipeBase, apply_overrides

AMP = ("fp32", "bf16", "fp16")  # mixed precision on CUDA (ignored on the CPU)
ESC50_STATS = (-6.6268077, 5.358466)  # the authors' fbank statistics of ESC-50 (main_finetune_as.py L250-251)


@dataclass(frozen=True)
class FinetuneConfig(RecipeBase):
    """A fine-tuning run. `batch_size` is global (all processes and accumulation steps);
    peak lr = base_lr x batch_size / 256 (the authors' `blr`).

    Optimisation: AdamW (`betas`, `adam_eps`) over parameter groups with layer-wise lr decay
    (`layer_decay`: the encoder's block i gets layer_decay ** (depth - i), the patch embedding
    and CLS token layer_decay ** (depth + 1), the classifier 1) and `weight_decay` except on 1-D
    parameters and the CLS token; position embeddings are frozen. Linear warm-up over
    `warmup_epochs`, then a cosine to `min_lr` (both scaled per group).
    Regularisation: stochastic depth `drop_path` (rate of the last block), `head_dropout`,
    2-D token masking (`mask_t_prob` of the time rows and `mask_f_prob` of the frequency
    columns removed in every training forward; 0 / 0 = none), `label_smoothing` (single-label
    cross-entropy only; the authors' AudioSet BCE has none).
    Augmentation, per sample and from its own seed: `mixup` = probability of mixing the
    waveform with a uniformly drawn partner, lambda ~ Beta(`mixup_beta`, `mixup_beta`), labels
    mixed alike; `gain_aug` = waveform gain Beta(10, 10) + 0.5 (the authors' `roll_mag_aug`,
    whose roll is always 0); SpecAugment: one frequency mask of up to `freqm` - 1 bands and one
    time mask of up to `timem` - 1 frames (torchaudio's rule), filled with the value of a
    zero raw log-mel (the authors mask before normalising).
    Sampling: each epoch a permutation of the training clips, or with `weighted_sampler`
    `epoch_len` draws with replacement weighted by the authors' gen_weight.py rule (sum over
    the clip's labels of 1000 / (label count + 0.01)).
    Input: chunks of the model's length, or `chunk_frames` (shorter; rounded up to whole patch
    rows; Audio-MAE's fixed position table cropped as the authors' `interpolate_pos_embed_audio`
    does, others keep their first time rows); `norm_mean` / `norm_std`
    replace the fbank statistics (Audio-MAE). Evaluation: from epoch `first_eval_epoch` on, after
    every epoch; `select_best`: RUN/model.pt is the epoch best on the validation split (else the
    last). `multi_label`: None = from the data. `amp`: autocast on CUDA.
    """

    name: str = "custom"
    batch_size: int = 32
    accum_steps: int = 1
    epochs: int = 60
    max_steps: int = 0
    warmup_epochs: float = 4.0
    base_lr: float = 1e-3
    min_lr: float = 1e-6
    weight_decay: float = 5e-4
    layer_decay: float = 0.75
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float = 0.0
    drop_path: float = 0.1
    head_dropout: float = 0.0
    label_smoothing: float = 0.0
    mixup: float = 0.5
    mixup_beta: float = 10.0
    gain_aug: bool = True
    freqm: int = 48
    timem: int = 192
    mask_t_prob: float = 0.2
    mask_f_prob: float = 0.2
    weighted_sampler: bool = False
    epoch_len: int = 0
    first_eval_epoch: int = 0
    select_best: bool = True
    chunk_frames: int = 0
    norm_mean: float | None = None
    norm_std: float | None = None
    pooling: str = "mean"
    multi_label: bool | None = None
    amp: str = "bf16"
    seed: int = 0
    # runtime (may differ on resume)
    num_workers: int = 2
    log_every: int = 50
    checkpoint_every: int = 0
    cache_clips: bool = False
    fused_attention: bool | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        if self.batch_size < 1 or self.accum_steps < 1 or self.batch_size % self.accum_steps:
            raise ValueError(f"batch_size {self.batch_size} must be >= 1 and divisible by accum_steps "
                             f"{self.accum_steps}")
        if self.epochs < 1 and self.max_steps < 1:
            raise ValueError("need epochs >= 1 or max_steps >= 1")
        for name in ("mixup", "mask_t_prob", "mask_f_prob", "drop_path", "head_dropout", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0 or (name == "mixup" and self.mixup > 1.0):
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 < self.layer_decay <= 1.0:
            raise ValueError(f"layer_decay must be in (0, 1], got {self.layer_decay}")
        if self.freqm < 0 or self.timem < 0 or self.chunk_frames < 0 or self.epoch_len < 0:
            raise ValueError("freqm, timem, chunk_frames and epoch_len must be >= 0")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if self.amp not in AMP:
            raise ValueError(f"amp must be one of {list(AMP)}, got {self.amp!r}")
        if (self.norm_mean is None) != (self.norm_std is None) or (self.norm_std is not None and self.norm_std <= 0):
            raise ValueError("give both norm_mean and norm_std (> 0), or neither")

    @property
    def masking(self) -> bool:
        return self.mask_t_prob > 0 or self.mask_f_prob > 0

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["betas"] = list(self.betas)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown FinetuneConfig keys: {sorted(unknown)}")
        return cls(**data)

    def summary(self) -> str:
        length = f"{self.max_steps} steps" if self.max_steps > 0 else f"{self.epochs} epochs"
        sampler = f"weighted sampler ({self.epoch_len or 'all'} clips/epoch)" if self.weighted_sampler else "shuffle"
        masking = f"token mask t{self.mask_t_prob:g}/f{self.mask_f_prob:g}" if self.masking else "no token mask"
        return (f"batch {self.batch_size}, {length} (warm-up {self.warmup_epochs:g}), peak lr {self.peak_lr:.3g}, "
                f"layer decay {self.layer_decay:g}, wd {self.weight_decay:g}, drop path {self.drop_path:g}, {masking}, "
                f"mixup {self.mixup:g}, SpecAugment {self.freqm}/{self.timem}, {sampler}"
                + (f", {self.chunk_frames} frames" if self.chunk_frames else "")
                + (f", label smoothing {self.label_smoothing:g}" if self.label_smoothing else ""))


RECIPES: dict[str, FinetuneConfig] = {
    # AudioSet-2M: `bash submit_ft_mask_bal.sh 2e-4 0.2 0.2 ckpt` (README) on 8 nodes x 8 GPUs x batch 4.
    "audiomae-as2m-ft": FinetuneConfig(
        name="audiomae-as2m-ft", batch_size=256, epochs=100, warmup_epochs=10, base_lr=2e-4, first_eval_epoch=20,
        mask_t_prob=0.2, mask_f_prob=0.2, weighted_sampler=True, epoch_len=200_000, num_workers=10, log_every=100,
    ),
    # AudioSet-20K: `sbatch ft_as.sh 1e-3 ckpt` (README) on 4 GPUs x batch 8.
    "audiomae-as20k-ft": FinetuneConfig(
        name="audiomae-as20k-ft", batch_size=32, epochs=60, warmup_epochs=4, base_lr=1e-3, first_eval_epoch=15,
        mask_t_prob=0.2, mask_f_prob=0.2, num_workers=10, log_every=100,
    ),
    # ESC-50: the defaults of main_finetune_esc.py (the released script does not run; docs/finetune.md).
    "audiomae-esc50-ft": FinetuneConfig(
        name="audiomae-esc50-ft", batch_size=64, epochs=50, warmup_epochs=5, base_lr=1e-3, weight_decay=0.05,
        label_smoothing=0.1, mixup=0.0, gain_aug=False, freqm=96, timem=24, mask_t_prob=0.0, mask_f_prob=0.0,
        chunk_frames=512, norm_mean=ESC50_STATS[0], norm_std=ESC50_STATS[1], multi_label=False, num_workers=10,
    ),
    # Ours: the demo model (MW-MAE) on a HEAR task of ~700 one-second clips, under 10 minutes on 2 CPU
    # cores: 1.04 s chunks (half the compute of MW-MAE's 2 s ones for such clips), the classifier on the
    # HEAR scene embedding's layout ("time" pooling), time masks only, light SpecAugment, no mixup.
    "cpu-small": FinetuneConfig(
        name="cpu-small", batch_size=32, epochs=12, warmup_epochs=1, base_lr=2e-2, weight_decay=0.05,
        layer_decay=0.75, drop_path=0.1, label_smoothing=0.1, mixup=0.0, freqm=8, timem=20, mask_t_prob=0.2,
        mask_f_prob=0.0, chunk_frames=104, pooling="time", num_workers=0, log_every=10, cache_clips=True,
    ),
}


def get_recipe(name: str, overrides: list[str] | None = None) -> FinetuneConfig:
    if name not in RECIPES:
        raise ValueError(f"unknown fine-tuning recipe {name!r}; choose from {sorted(RECIPES)}")
    return apply_overrides(RECIPES[name], overrides or [])


__all__ = ["AMP", "ESC50_STATS", "FinetuneConfig", "RECIPES", "RUNTIME_FIELDS", "get_recipe"]
