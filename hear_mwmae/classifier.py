"""A classifier on the encoder: the fine-tuned model of either family.

    tokens of the last block (B, [1 CLS +] K, D)
      -> pool: mean of the patch tokens ("mean", the Audio-MAE authors' `global_pool`), the CLS
         token ("cls"), or each frequency patch's mean over time, concatenated ("time": the HEAR
         scene embedding's layout, (B, grid_f * D); ours)
      -> fc_norm (LayerNorm, eps of the model) -> dropout (training only) -> head Linear(width, C)
      -> logits (B, C)

This is `models_vit.VisionTransformer(global_pool=True)` of facebookresearch/AudioMAE: its
constructor deletes the encoder's final `norm` (so a fine-tuned config has
`final_norm=False`) and normalises the pooled vector instead. Parameters `fc_norm.*` and
`head.*` are stored under `classifier.` in our checkpoints (the authors' names otherwise).
The settings (classes, label names, single / multi-label, pooling) are the config's
`HeadConfig`; the HEAR runtime uses only the encoder, `get_logits` both.
"""

from __future__ import annotations

import torch
from torch import nn

from .config import HeadConfig, ModelConfig
from .model import Encoder

PREFIX = "classifier."
HEAD_INIT_STD = 2e-5  # the authors re-initialise a new head with trunc_normal_(std=2e-5)


class NoClassifierError(ValueError):
    """The model has no classifier head (an encoder for embeddings)."""


class Classifier(nn.Module):
    """pool -> fc_norm -> dropout -> head. Input: the encoder's token sequence."""

    def __init__(self, model: ModelConfig, head: HeadConfig):
        super().__init__()
        self.cfg = head
        self.has_cls = model.use_cls_token
        self.grid_f = model.grid_size[1]
        width = model.embed_dim * (self.grid_f if head.pooling == "time" else 1)
        self.fc_norm = nn.LayerNorm(width, eps=model.layer_norm_eps)
        self.drop = nn.Dropout(head.dropout)
        self.head = nn.Linear(width, head.num_classes)

    @torch.no_grad()
    def init_weights(self) -> None:
        """A fresh head for fine-tuning: unit `fc_norm`, head weight truncated-normal(std 2e-5)
        within +-2 (timm's absolute bounds, as the authors call it), zero bias."""
        nn.init.ones_(self.fc_norm.weight)
        nn.init.zeros_(self.fc_norm.bias)
        nn.init.trunc_normal_(self.head.weight, std=HEAD_INIT_STD)
        nn.init.zeros_(self.head.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, [1 +] K, D) -> (B, width) after `fc_norm`: mean of the patch tokens, the CLS token,
        or ("time") the tokens as (B, rows, grid_f, D) (whole time rows, time-major: all patches,
        or masks that remove time rows only) averaged over rows -> (B, grid_f * D)."""
        if self.cfg.pooling == "cls":
            return self.fc_norm(tokens[:, 0])
        patches = tokens[:, 1:] if self.has_cls else tokens
        if self.cfg.pooling == "time":
            b, k, d = patches.shape
            return self.fc_norm(patches.reshape(b, k // self.grid_f, self.grid_f, d).mean(dim=1).reshape(b, -1))
        return self.fc_norm(patches.mean(dim=1))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, [1 +] K, D) -> logits (B, num_classes)."""
        return self.head(self.drop(self.pool(tokens)))


class AudioClassifier(nn.Module):
    """Encoder + classifier on normalised spectrogram chunks (B, T, F) -> logits (B, C).

    `forward(x, ids_keep, draws)`: `ids_keep` (B, K) encodes only those patches (the
    authors' token masking during fine-tuning; pooling then averages the kept ones),
    `draws` (B, depth, 2) drive stochastic depth (`model.set_drop_path`).
    """

    def __init__(self, model: ModelConfig, head: HeadConfig, encoder: Encoder | None = None):
        super().__init__()
        self.encoder = encoder if encoder is not None else Encoder(model)
        self.classifier = Classifier(model, head)

    def pooled(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None,
               draws: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, F) -> (B, D): the pooled, `fc_norm`-ed features (`forward_features` of the authors)."""
        return self.classifier.pool(self.encoder.forward_tokens(x, ids_keep, draws))

    def forward(self, x: torch.Tensor, ids_keep: torch.Tensor | None = None,
                draws: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.encoder.forward_tokens(x, ids_keep, draws))


__all__ = ["AudioClassifier", "Classifier", "HEAD_INIT_STD", "NoClassifierError", "PREFIX"]
