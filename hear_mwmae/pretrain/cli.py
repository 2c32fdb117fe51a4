"""`hear-mwmae pretrain` and `hear-mwmae pretrain-export`.

    hear-mwmae pretrain --recipe demo-tiny --data data/demo --out runs/demo
    hear-mwmae pretrain --out runs/demo --data data/demo --resume         # continue a run
    torchrun --nproc_per_node 8 -m hear_mwmae.cli pretrain --recipe released --data as.csv --out runs/as
    torchrun --nnodes 8 --nproc_per_node 8 ... -m hear_mwmae.cli pretrain --recipe audiomae-base ...
    hear-mwmae pretrain --recipe audiomae-cpu-small --set model.mask_2d=true --data data/demo10 --out runs/a
    hear-mwmae pretrain-export runs/demo demo.pt
    hear-mwmae pretrain --list-recipes
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# convenience flags -> TrainConfig fields (each is also reachable with --set FIELD=VALUE)
_FLAG_FIELDS = {"batch_size": "batch_size", "epochs": "epochs", "max_steps": "max_steps", "lr": "base_lr",
                "accum_steps": "accum_steps", "workers": "num_workers", "seed": "seed",
                "checkpoint_every": "checkpoint_every", "log_every": "log_every"}


def _config(args: argparse.Namespace):
    """The TrainConfig a command line asks for (a resumed run's own one when no recipe is named)."""
    from .recipes import RUNTIME_FIELDS, TrainConfig, apply_overrides, get_recipe
    from .state import CHECKPOINT_NAME, load_train_state

    overrides = list(args.set or [])
    overrides += [f"{field}={getattr(args, flag)}" for flag, field in _FLAG_FIELDS.items()
                  if getattr(args, flag) is not None]
    if args.recipe is not None:
        return get_recipe(args.recipe, overrides)
    ckpt = Path(args.out or ".") / CHECKPOINT_NAME
    if not (args.resume and args.out is not None and ckpt.exists()):
        raise ValueError(f"choose --recipe ({', '.join(_recipe_names())})")
    saved = TrainConfig.from_dict(load_train_state(ckpt)["train_config"])
    changed = {o.partition("=")[0].strip() for o in overrides} - RUNTIME_FIELDS
    if changed:
        raise ValueError(f"a resumed run keeps its recipe; cannot change {sorted(changed)}")
    return apply_overrides(saved, overrides)


def _pretrain(args: argparse.Namespace) -> int:
    import torch

    from . import distributed
    from .trainer import train

    if args.list_recipes:
        from .recipes import RECIPES

        width = max(map(len, RECIPES))
        for name, cfg in RECIPES.items():
            sys.stdout.write(f"{name:<{width}}  {cfg.summary()}\n")
        sys.stdout.write("(full settings: hear-mwmae pretrain --recipe NAME --show-config)\n")
        return 0
    if not args.show_config and (args.out is None or not args.data):
        return _usage_error("--data and --out are required", args)
    try:
        cfg = _config(args)
    except (ValueError, TypeError) as exc:  # unknown recipe or key, invalid value: one line, exit 2
        return _usage_error(str(exc), args)
    if args.show_config:
        sys.stdout.write(cfg.to_json() + "\n")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    info = distributed.init_from_env(args.device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        result = train(cfg, args.data, args.out, resume=args.resume, stop_at_step=args.stop_at_step,
                       device=args.device, dist_info=info)
    except ValueError as exc:  # unusable data, a resume with other settings or data: one line, exit 2
        return _usage_error(str(exc), args)
    finally:
        distributed.shutdown(info)
    if info.is_main and result.step >= result.total_steps:
        log.info("done; export with: hear-mwmae pretrain-export %s OUT.pt", args.out)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    export_checkpoint(args.run, args.out, encoder_only=args.encoder_only, note=args.note)
    return 0


def _usage_error(message: str, args: argparse.Namespace) -> int:
    """Log one line (the traceback too with -v) and return exit code 2."""
    log.error("hear-mwmae pretrain: %s", message, exc_info=bool(getattr(args, "verbose", False)))
    return 2


def _recipe_names() -> list[str]:
    from .recipes import RECIPES

    return list(RECIPES)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `pretrain` and `pretrain-export` to the `hear-mwmae` command line."""
    p = subparsers.add_parser("pretrain", help="pre-train an MW-MAE or Audio-MAE (one process, or many under torchrun)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", help=f"named preset: {', '.join(_recipe_names())}")
    p.add_argument("--data", nargs="+",
                   help="folders, manifests (.txt/.csv) or files: audio or .npy raw spectrograms of the frontend")
    p.add_argument("--out", type=Path, help="run directory (checkpoint, metrics, config)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set model.depth=6 --set warmup_epochs=1 "
                        "--set model.mask_2d=true --set model.decoder_kind=mwmha (repeatable)")
    p.add_argument("--batch-size", type=int, help="global batch per optimiser step")
    p.add_argument("--epochs", type=int, help="passes over the data (unless --max-steps is given)")
    p.add_argument("--max-steps", type=int, help="total optimiser steps (overrides epochs)")
    p.add_argument("--lr", type=float, help="base lr per 256 samples")
    p.add_argument("--accum-steps", type=int, help="gradient accumulation micro-steps")
    p.add_argument("--workers", type=int, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, help="seed of initialisation, crops, masks and data order (default 0)")
    p.add_argument("--checkpoint-every", type=int, help="optimiser steps between checkpoints (0: each epoch)")
    p.add_argument("--log-every", type=int, help="optimiser steps between metrics lines")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-at-step", type=int, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.add_argument("--show-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-recipes", action="store_true", help="print the named presets and exit")
    p.set_defaults(func=_pretrain)

    p = subparsers.add_parser("pretrain-export", help="export a pre-training run as a model checkpoint")
    p.add_argument("run", type=Path, help="run directory or its checkpoint.pt")
    p.add_argument("out", type=Path, help="output .pt or .safetensors")
    p.add_argument("--encoder-only", action="store_true", help="leave out the decoder")
    p.add_argument("--note", help="free text stored in the provenance")
    p.set_defaults(func=_export)


__all__ = ["register"]
