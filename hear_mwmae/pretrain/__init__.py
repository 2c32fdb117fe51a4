"""Pre-training MW-MAE and Audio-MAE in PyTorch (`hear-mwmae pretrain`), on one machine or many.

    recipes.py      TrainConfig (frozen) and the named presets of both families; lr schedule
    data.py         audio / precomputed spectrograms -> random crops + per-sample mask noise
    synth.py        deterministic synthetic sounds (demo data and probe tasks)
    trainer.py      the training loop (DDP under torchrun, accumulation, bf16 on GPU)
    state.py        training checkpoints (atomic) and RNG state
    metrics.py      metrics.jsonl and the loss-curve PNG
    export.py       run -> model checkpoint for `hear_mwmae.load_model`
    cli.py          the `pretrain` / `pretrain-export` subcommands
"""

from .export import export_checkpoint
from .recipes import RECIPES, TrainConfig, get_recipe, lr_at
from .trainer import TrainResult, train

__all__ = ["RECIPES", "TrainConfig", "TrainResult", "export_checkpoint", "get_recipe", "lr_at", "train"]
