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

from .cli_flags import (add_loop_flags, check_resume_overrides, list_recipes, overrides_from, run_on_ranks,
                        usage_error)


def _config(args: argparse.Namespace):
    """The TrainConfig a command line asks for (a resumed run's own one when no recipe is named)."""
    from .recipes import RUNTIME_FIELDS, TrainConfig, apply_overrides, get_recipe
    from .state import CHECKPOINT_NAME, load_train_state

    overrides = overrides_from(args)
    if args.recipe is not None:
        return get_recipe(args.recipe, overrides)
    ckpt = Path(args.out or ".") / CHECKPOINT_NAME
    if not (args.resume and args.out is not None and ckpt.exists()):
        raise ValueError(f"choose --recipe ({', '.join(_recipe_names())})")
    saved = TrainConfig.from_dict(load_train_state(ckpt)["train_config"])
    check_resume_overrides(overrides, RUNTIME_FIELDS)
    return apply_overrides(saved, overrides)


def _pretrain(args: argparse.Namespace) -> int:
    from .trainer import train

    if args.list_recipes:
        from .recipes import RECIPES

        return list_recipes(RECIPES, "pretrain")
    if not args.show_config and (args.out is None or not args.data):
        return _usage_error("--data and --out are required", args)
    try:
        cfg = _config(args)
    except (ValueError, TypeError) as exc:  # unknown recipe or key, invalid value: one line, exit 2
        return _usage_error(str(exc), args)
    if args.show_config:
        sys.stdout.write(cfg.to_json() + "\n")
        return 0
    # unusable data, a resume with other settings or data: one line, exit 2
    code, result, info = run_on_ranks(
        args, "pretrain",
        lambda info: train(cfg, args.data, args.out, resume=args.resume, stop_at_step=args.stop_at_step,
                           device=args.device, dist_info=info),
        (ValueError,))
    if code:
        return code
    if info.is_main and result.step >= result.total_steps:
        log.info("done; export with: hear-mwmae pretrain-export %s OUT.pt", args.out)
    return 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_checkpoint

    export_checkpoint(args.run, args.out, encoder_only=args.encoder_only, note=args.note)
    return 0


def _usage_error(message: str, args: argparse.Namespace) -> int:
    return usage_error("pretrain", message, args)


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
    add_loop_flags(p, seed_help="seed of initialisation, crops, masks and data order (default 0)",
                   lr_help="base lr per 256 samples")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available)")
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
