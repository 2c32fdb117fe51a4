"""Training checkpoint -> the package's model checkpoint (loads with `hear_mwmae.load_model`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..checkpoint import save_checkpoint
from .recipes import TrainConfig
from .state import load_train_state

log = logging.getLogger(__name__)


def export_checkpoint(run: str | Path, out: str | Path, *, encoder_only: bool = False,
                      note: str | None = None) -> Path:
    """Write the weights of a run (its directory or `checkpoint.pt`) as our model checkpoint.

    The provenance records the recipe, the steps done, the last logged loss and the data size.
    """
    state = load_train_state(run)
    if state.get("objective", "pretrain") != "pretrain":
        raise ValueError(f"{run}: a fine-tuning run; its model is already exported as model.pt in the run directory")
    try:
        cfg = TrainConfig.from_dict(state["train_config"])
        provenance: dict[str, Any] = {
            "source": "hear_mwmae.pretrain",
            "recipe": cfg.name,
            "step": state["step"],
            "total_steps": cfg.total_steps(state["data"]["steps_per_epoch"]),
            "last_loss": state["last_loss"],
            "num_clips": state["data"]["num_clips"],
            "train_seconds": round(state.get("train_seconds", 0.0), 1),
            "train_config": cfg.to_dict(),
        }
        weights = state["model"]
    except (KeyError, TypeError, AttributeError) as exc:  # a damaged or foreign file that passed the format check
        raise ValueError(f"{run}: incomplete training checkpoint (no usable {exc}); export the run's last "
                         f"good checkpoint, or resume the run to write a new one") from exc
    if note:
        provenance["note"] = note
    path = save_checkpoint(out, cfg.mwmae_config(), weights, provenance=provenance,
                           encoder_only=encoder_only)
    log.info("exported %s (step %d, recipe %s) -> %s, %.2f MB", run, state["step"], cfg.name, path,
             path.stat().st_size / 1e6)
    return path


__all__ = ["export_checkpoint"]
