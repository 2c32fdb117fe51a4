"""The command-line pieces `hear-mwmae pretrain` and `hear-mwmae finetune` share: the
convenience flags that map to recipe fields, recipe listing, and the one-line usage error."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Mapping

log = logging.getLogger(__name__)

# convenience flag -> recipe field (each is also reachable with --set FIELD=VALUE)
FLAG_FIELDS = {"batch_size": "batch_size", "epochs": "epochs", "max_steps": "max_steps", "lr": "base_lr",
               "accum_steps": "accum_steps", "workers": "num_workers", "seed": "seed",
               "checkpoint_every": "checkpoint_every", "log_every": "log_every"}


def add_loop_flags(p: argparse.ArgumentParser, seed_help: str, lr_help: str) -> None:
    """The flags of FLAG_FIELDS, plus --resume / --stop-at-step / --threads."""
    p.add_argument("--batch-size", type=int, help="global batch per optimiser step")
    p.add_argument("--epochs", type=int, help="passes over the data (unless --max-steps is given)")
    p.add_argument("--max-steps", type=int, help="total optimiser steps (overrides epochs)")
    p.add_argument("--lr", type=float, help=lr_help)
    p.add_argument("--accum-steps", type=int, help="gradient accumulation micro-steps")
    p.add_argument("--workers", type=int, help="DataLoader workers per process")
    p.add_argument("--seed", type=int, help=seed_help)
    p.add_argument("--checkpoint-every", type=int, help="optimiser steps between checkpoints (0: each epoch)")
    p.add_argument("--log-every", type=int, help="optimiser steps between metrics lines")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--stop-at-step", type=int, help="stop after this step (the schedule is unchanged)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def overrides_from(args: argparse.Namespace) -> list[str]:
    """--set KEY=VALUE items followed by the convenience flags given, as KEY=VALUE."""
    overrides = list(args.set or [])
    return overrides + [f"{field}={getattr(args, flag)}" for flag, field in FLAG_FIELDS.items()
                        if getattr(args, flag) is not None]


def check_resume_overrides(overrides: list[str], runtime_fields: frozenset[str] | set[str]) -> None:
    """A resumed run keeps its recipe: only fields that do not change the run may be overridden."""
    changed = {o.partition("=")[0].strip() for o in overrides} - set(runtime_fields)
    if changed:
        raise ValueError(f"a resumed run keeps its recipe; cannot change {sorted(changed)}")


def list_recipes(recipes: Mapping[str, Any], command: str) -> int:
    """Print one line per named recipe; exit code 0."""
    width = max(map(len, recipes))
    for name, cfg in recipes.items():
        sys.stdout.write(f"{name:<{width}}  {cfg.summary()}\n")
    sys.stdout.write(f"(full settings: hear-mwmae {command} --recipe NAME --show-config)\n")
    return 0


def usage_error(command: str, message: str, args: argparse.Namespace) -> int:
    """Log one line (the traceback too with -v) and return exit code 2."""
    log.error("hear-mwmae %s: %s", command, message, exc_info=bool(getattr(args, "verbose", False)))
    return 2


def run_on_ranks(args: argparse.Namespace, command: str, job: Callable[[Any], Any],
                 errors: tuple[type[BaseException], ...]) -> tuple[int, Any, Any]:
    """Run `job(dist_info)` in this process (one rank under torchrun): --threads applied, ranks other
    than 0 logging warnings only, the process group shut down afterwards. Returns (exit code,
    job's result or None, the DistInfo); an exception of `errors` becomes one line and exit 2."""
    import torch

    from . import distributed

    if args.threads:
        torch.set_num_threads(args.threads)
    info = distributed.init_from_env(args.device)
    if not info.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        return 0, job(info), info
    except errors as exc:
        return usage_error(command, str(exc), args), None, info
    finally:
        distributed.shutdown(info)
