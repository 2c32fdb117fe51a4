"""`hear-mwmae finetune`: fine-tune a model of either family on labelled audio.

    hear-mwmae finetune --model weights/demo-tiny.pt --task hear-tasks/my_task --out runs/ft --recipe cpu-small
    hear-mwmae finetune --model audiomae-base-as2m --task train.json --valid eval.json --labels class_labels_indices.csv \\
        --recipe audiomae-as20k-ft --out runs/as20k
    torchrun --nproc_per_node 8 -m hear_mwmae.cli finetune --recipe audiomae-as2m-ft ...
    hear-mwmae finetune --out runs/ft --resume          # continue after a crash (same data and model)
    hear-mwmae finetune --list-recipes

DATA (--task): a HEAR task folder (train / valid / test, or k folds: one run per fold), the
Audio-MAE authors' JSON ({"data": [{"wav", "labels": "mid,mid"}]} with --labels
class_labels_indices.csv), a CSV of `path,label[;label...]`, or a folder of class
sub-folders (optionally under train/ valid/ test/). Without a validation or test split a
tenth of the training clips is held out for each. The run directory gets model.pt (load it
with hear_mwmae.load_model and tag with it), results.json, metrics.jsonl and a resumable
checkpoint.pt. Exit code 0 when done (or stopped at --stop-at-step), 2 for unusable
arguments, data or model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

log = logging.getLogger(__name__)

from ..pretrain.cli_flags import (add_loop_flags, check_resume_overrides, list_recipes, overrides_from, run_on_ranks,
                                 usage_error)


def _saved_run(out: Path | None) -> dict | None:
    """train_config.json of the run in `out` (a fold's, for a k-fold run), or None."""
    if out is None:
        return None
    for path in (out / "train_config.json", out / "fold0" / "train_config.json"):
        if path.is_file():
            return json.loads(path.read_text())
    return None


def _config(args: argparse.Namespace):
    """The FinetuneConfig, model and task the command line asks for (a resumed run's own when
    --resume names no recipe)."""
    from ..pretrain.recipes import apply_overrides
    from .recipes import RUNTIME_FIELDS, FinetuneConfig, get_recipe

    overrides = overrides_from(args)
    saved = _saved_run(args.out) if args.resume else None
    if args.recipe is None and saved is None:
        from .recipes import RECIPES

        raise ValueError(f"choose --recipe ({', '.join(RECIPES)})")
    if args.recipe is not None:
        cfg = get_recipe(args.recipe, overrides)
    else:
        check_resume_overrides(overrides, RUNTIME_FIELDS)
        cfg = apply_overrides(FinetuneConfig.from_dict(saved["finetune"]), overrides)
    saved = saved or {}
    for name in ("model", "task", "valid", "test", "labels"):  # a resumed run's own data and model
        if getattr(args, name) is None and saved.get(name) is not None:
            setattr(args, name, saved[name])
    if not args.show_config and (args.model is None or args.task is None):
        raise ValueError("--model and --task are required")
    return cfg, args.model, args.task


def _finetune(args: argparse.Namespace) -> int:
    if args.list_recipes:
        from .recipes import RECIPES

        return list_recipes(RECIPES, "finetune")
    from ..checkpoint import CheckpointError
    from ..labels import LabelError
    from .data import DataError
    from .trainer import finetune

    if not args.show_config and args.out is None:
        return _usage_error("--out is required", args)
    try:
        cfg, model, task = _config(args)
    except (ValueError, TypeError) as exc:
        return _usage_error(str(exc), args)
    if args.show_config:
        sys.stdout.write(cfg.to_json() + "\n")
        return 0
    code, result, info = run_on_ranks(
        args, "finetune",
        lambda info: finetune(cfg, model, task, args.out, valid=args.valid, test=args.test, labels=args.labels,
                              resume=args.resume, stop_at_step=args.stop_at_step, device=args.device,
                              dist_info=info, sha256=args.sha256),
        (DataError, LabelError, CheckpointError, FileExistsError, FileNotFoundError, ValueError))
    if code:
        return code
    if info.is_main and result.results is not None:
        log.info("done: hear_mwmae.load_model('%s') tags with the fine-tuned model", _model_file(args.out))
    return 0


def _model_file(out: Path) -> Path:
    return out / "model.pt" if (out / "model.pt").exists() else out / "fold0" / "model.pt"


def _usage_error(message: str, args: argparse.Namespace) -> int:
    return usage_error("finetune", message, args)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `finetune` to the `hear-mwmae` command line."""
    from .recipes import RECIPES

    p = subparsers.add_parser("finetune", help="fine-tune a model (either family) on labelled audio: a classifier",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="the model to start from: a released name, .pt / .safetensors, an authors' "
                   "checkpoint or hf://...")
    p.add_argument("--task", help="labelled data: a HEAR task folder, the authors' JSON, a CSV or class folders")
    p.add_argument("--valid", help="validation split of JSON / CSV data (default: a tenth of the training clips)")
    p.add_argument("--test", help="test split of JSON / CSV data (default: a tenth of the training clips)")
    p.add_argument("--labels", type=Path, help="label file: index,mid,display_name csv (required for the authors' "
                   "JSON), or one name per line")
    p.add_argument("--out", type=Path, help="run directory (model.pt, results.json, checkpoint, metrics)")
    p.add_argument("--recipe", help=f"named preset: {', '.join(RECIPES)}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set epochs=20 --set mixup=0 --set multi_label=true")
    add_loop_flags(p, seed_help="seed of the head's initialisation, augmentation and data order (default 0)",
                   lr_help="base lr per 256 samples (the authors' blr)")
    p.add_argument("--sha256", help="pin the starting checkpoint's sha256")
    p.add_argument("--device", help="cpu, cuda (default: cuda when available; under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--show-config", action="store_true", help="print the resolved recipe and exit")
    p.add_argument("--list-recipes", action="store_true", help="print the named recipes and exit")
    p.set_defaults(func=_finetune)


__all__ = ["register"]
