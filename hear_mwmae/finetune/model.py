"""The model being fine-tuned: built from a checkpoint, its optimiser groups, its loss.

    finetuned_config(base, head, cfg)   the fine-tuned model's MWMAEConfig
    build_classifier(ckpt, config, cfg) AudioClassifier with the checkpoint's encoder and a new head
    param_groups(model, ...)            AdamW groups with layer-wise lr decay (the authors' lr_decay.py)
    classification_loss(model, cfg, multi_label)   the loss of a micro-batch

As the Audio-MAE authors fine-tune (`main_finetune_as.py`, `models_vit.py`): the encoder's
final `norm` is dropped and `fc_norm` normalises the pooled vector (mean pooling), the
position embeddings are frozen, a new head gets weights ~ N(0, 2e-5) and zero bias.
A shorter chunk (`chunk_frames`, their ESC-50 length 512) keeps the first time rows of the
position table the way their `interpolate_pos_embed_audio` crops it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F

from ..checkpoint import Checkpoint, CheckpointError
from ..classifier import AudioClassifier
from ..config import HeadConfig, MWMAEConfig
from ..model import Encoder, masking_2d, set_drop_path, set_fused_attention
from ..pretrain.loop import LossFn
from .recipes import FinetuneConfig

NO_WEIGHT_DECAY = ("encoder.cls_token", "encoder.pos_embed")  # the authors' no_weight_decay() (+ every 1-D param)


def finetuned_config(base: MWMAEConfig, head: HeadConfig, cfg: FinetuneConfig) -> MWMAEConfig:
    """The config of the model `cfg` makes from `base`: its head, no final norm under mean
    pooling (the authors' model; "cls" / "time" pooling keep it: "time" then starts from the
    HEAR scene embedding), the chunk length (shorter chunks: rounded up to whole patch rows)
    and fbank statistics of the recipe."""
    model, frontend = base.model, base.frontend
    if head.pooling == "mean":
        model = dataclasses.replace(model, final_norm=False)
    rows = -(-cfg.chunk_frames // model.patch_size[0])  # whole patch rows
    if cfg.chunk_frames and rows * model.patch_size[0] < model.img_size[0]:  # a chunk only shrinks
        # a fine-tuned model has no decoder: a plain one is described, whatever windows fitted the old grid
        model = dataclasses.replace(model, img_size=(rows * model.patch_size[0], model.img_size[1]),
                                    decoder_kind="mwmha", decoder_window_sizes=(), decoder_global_blocks=0)
    if cfg.norm_mean is not None:
        if frontend.kind != "kaldi_fbank":
            raise ValueError("norm_mean / norm_std replace Audio-MAE's fbank statistics; MW-MAE normalises per clip")
        frontend = dataclasses.replace(frontend, mean=cfg.norm_mean, std=cfg.norm_std)
    if cfg.masking and model.window_sizes:
        raise ValueError("token masking needs a global-attention encoder (windows need whole sequences); "
                         "set mask_t_prob=0 and mask_f_prob=0")
    if head.pooling == "time" and cfg.mask_f_prob > 0:
        raise ValueError("pooling 'time' keeps each frequency patch: it takes time masks only (mask_f_prob=0)")
    return MWMAEConfig(model, frontend, head)


def _cropped_pos_embed(pos: torch.Tensor, base: MWMAEConfig, new_time: int) -> torch.Tensor:
    """(1, [1 +] L, D) position table -> the first `new_time` time rows of the grid.

    Audio-MAE's fixed table is laid out on the swapped (freq, time) grid (spec section 2): its
    row f_row * grid_t + t_col; keeping t_col < new_time is the authors' crop. Other models
    store (time, freq) rows: the first new_time * grid_f rows."""
    extra = int(base.model.use_cls_token)
    (gt, gf), d = base.model.grid_size, pos.shape[-1]
    table = pos[:, extra:]
    if base.family == "audiomae":
        table = table.reshape(1, gf, gt, d)[:, :, :new_time].reshape(1, gf * new_time, d)
    else:
        table = table[:, : new_time * gf]
    return torch.cat([pos[:, :extra], table], dim=1)


def build_classifier(ckpt: Checkpoint, config: MWMAEConfig, cfg: FinetuneConfig) -> AudioClassifier:
    """The model fine-tuning starts from: `ckpt`'s encoder (its final norm dropped when
    `config` has none; position table cropped to a shorter chunk) and a fresh head; a head of
    `ckpt` contributes its `fc_norm` (the authors' strict=False load), never its outputs."""
    encoder_state = ckpt.encoder_state_dict()
    if not config.model.final_norm:
        encoder_state = {k: v for k, v in encoder_state.items() if not k.startswith("norm.")}
    if config.model.img_size != ckpt.config.model.img_size:
        encoder_state["pos_embed"] = _cropped_pos_embed(encoder_state["pos_embed"], ckpt.config,
                                                        config.model.grid_size[0])
    torch.manual_seed(cfg.seed)  # the head's initialisation
    model = AudioClassifier(config.model, config.head)
    model.classifier.init_weights()
    try:
        model.encoder.load_state_dict(encoder_state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's encoder does not fit the fine-tuned model: {exc}") from exc
    fc_norm = {k[len("fc_norm."):]: v for k, v in ckpt.classifier_state_dict().items() if k.startswith("fc_norm.")}
    if fc_norm:
        model.classifier.fc_norm.load_state_dict(fc_norm)
    model.encoder.pos_embed.requires_grad_(False)  # frozen in the authors' fine-tuning
    set_drop_path(model.encoder, cfg.drop_path)
    return model


def layer_id(name: str, num_layers: int) -> int:
    """The authors' `get_layer_id_for_vit` on our names: CLS token, position table and patch
    embedding 0, block i i + 1, everything else (classifier) `num_layers` = depth + 1."""
    if name in NO_WEIGHT_DECAY or name.startswith("encoder.patch_embed"):
        return 0
    if name.startswith("encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return num_layers


def param_groups(model: AudioClassifier, weight_decay: float, layer_decay: float) -> list[dict[str, Any]]:
    """AdamW groups with layer-wise lr decay (`util/lr_decay.param_groups_lrd`): one group per
    (layer, decay or not), each with `lr_scale` = layer_decay ** (num_layers - layer) and its
    weight decay (none for 1-D parameters, the CLS token and position table); frozen
    parameters are left out. Each group also lists its parameters' `names`."""
    num_layers = len(model.encoder.blocks) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = p.ndim == 1 or name in NO_WEIGHT_DECAY
        lid = layer_id(name, num_layers)
        group = groups.setdefault((lid, no_decay), {
            "params": [], "names": [], "lr_scale": layer_decay ** (num_layers - lid),
            "weight_decay": 0.0 if no_decay else weight_decay})
        group["params"].append(p)
        group["names"].append(name)
    return list(groups.values())


def build_optimizer(model: AudioClassifier, cfg: FinetuneConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, cfg.layer_decay), lr=cfg.peak_lr,
                             betas=cfg.betas, eps=cfg.adam_eps)


def masking_keep(encoder: Encoder, cfg: FinetuneConfig) -> tuple[int, int]:
    """(time rows, frequency columns) kept by the fine-tuning masks, rounded as the authors do."""
    gt, gf = encoder.cfg.grid_size
    return int(gt * (1 - cfg.mask_t_prob)), int(gf * (1 - cfg.mask_f_prob))


def classification_loss(model: AudioClassifier, cfg: FinetuneConfig, multi_label: bool) -> LossFn:
    """The loss of a micro-batch (x (B, T, F), targets (B, C), mask noise (B, grid_t + grid_f),
    drop-path draws (B, depth, 2), damaged clips): token masking from the noise (when the recipe
    masks), the logits through `net` (the model or its DDP wrapper), then binary
    cross-entropy (multi-label; mean over batch and classes, `BCEWithLogitsLoss`) or
    cross-entropy with probability targets and `label_smoothing` (single-label)."""
    grid, keep = model.encoder.cfg.grid_size, masking_keep(model.encoder, cfg)

    def loss(net: torch.nn.Module, batch: Any, dev: torch.device) -> tuple[torch.Tensor, list[tuple[int, str]]]:
        x, targets, noise, draws, skipped = batch
        x, targets = x.to(dev, non_blocking=True), targets.to(dev, non_blocking=True)
        ids_keep = masking_2d(noise.to(dev), grid, keep)[0] if cfg.masking else None
        logits = net(x, ids_keep, draws.to(dev) if cfg.drop_path > 0 else None).float()
        if multi_label:
            return F.binary_cross_entropy_with_logits(logits, targets), skipped
        return F.cross_entropy(logits, targets, label_smoothing=cfg.label_smoothing), skipped

    return loss


def prepare(model: AudioClassifier, cfg: FinetuneConfig, dev: torch.device) -> AudioClassifier:
    """Attention path (SDPA on GPU, the explicit one on CPU unless the recipe says) and device."""
    set_fused_attention(model, cfg.fused_attention if cfg.fused_attention is not None else dev.type == "cuda")
    return model.to(dev)


__all__ = ["NO_WEIGHT_DECAY", "build_classifier", "build_optimizer", "classification_loss", "finetuned_config",
           "layer_id", "masking_keep", "param_groups", "prepare"]
