"""`hear-mwmae save-pretrained` and `hear-mwmae push-to-hub`: share a model the Hub's way.

    hear-mwmae save-pretrained runs/ft/model.pt my-model/ [--eval-results results/] [--repo-id owner/name]
    hear-mwmae push-to-hub my-model/ owner/name [--private] [--revision BRANCH]
    hear-mwmae push-to-hub runs/ft/model.pt owner/name        # builds the folder in a temporary place first

The folder (`hub.py`): model.safetensors, config.json and a README.md model card
(`model_card.py`). Exit code 0 done, 2 with a one-line reason (no token, a folder that is not
empty, evaluation results of another model, ...).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def _card_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `save_pretrained` given on the command line (None = left to the provenance)."""
    options = {"encoder_only": args.encoder_only, "license": args.license, "base_model": args.base_model,
               "datasets": args.dataset, "eval_results": args.eval_results, "finetune_results": args.finetune_results}
    return {k: v for k, v in options.items() if v not in (None, False)}


def _errors() -> tuple[type[BaseException], ...]:
    from .checkpoint import CheckpointError
    from .hub import HubError
    from .registry import FetchError

    return (CheckpointError, FetchError, HubError, ValueError, TypeError, OSError, ImportError)


def _run(command: str, args: argparse.Namespace, call: Callable[[], Any]) -> int:
    """Print what `call` returns (the folder, the URL): exit 0; a user error: one line, exit 2."""
    try:
        result = call()
    except _errors() as exc:
        log.error("hear-mwmae %s: %s", command, exc, exc_info=bool(args.verbose))
        return 2
    print(result)
    return 0


def _save(args: argparse.Namespace) -> int:
    from .hub import save_pretrained

    return _run("save-pretrained", args, lambda: save_pretrained(
        args.model, args.out, repo_id=args.repo_id, overwrite=args.force, **_card_options(args)))


def _push(args: argparse.Namespace) -> int:
    from .hub import push_to_hub

    return _run("push-to-hub", args, lambda: push_to_hub(
        args.model, args.repo_id, private=args.private, revision=args.revision, commit_message=args.message,
        **_card_options(args)))


def _add_card_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder-only", action="store_true", help="leave the decoder out (all HEAR and tagging need)")
    p.add_argument("--license", metavar="SPDX_ID",
                   help="the weights' licence (default: the one the source carries: Apache-2.0 for the MW-MAE "
                   "release, CC-BY-NC-4.0 for Audio-MAE and models fine-tuned from it; none for your own pre-training)")
    p.add_argument("--base-model", metavar="OWNER/NAME",
                   help="Hub id of the model this one was fine-tuned from (card metadata; default: from an hf:// base)")
    p.add_argument("--dataset", action="append", metavar="NAME",
                   help="what the model was trained on (repeatable; default: what the provenance says)")
    p.add_argument("--eval-results", type=Path, metavar="DIR",
                   help="the --out folder of `python -m evaluation.run` for this model: its HEAR table goes in "
                   "the card")
    p.add_argument("--finetune-results", type=Path, metavar="FILE",
                   help="a fine-tuning run's results.json (default: the one beside RUN/model.pt)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `save-pretrained` and `push-to-hub` to the `hear-mwmae` command line."""
    p = subparsers.add_parser(
        "save-pretrained", help="write a model as a Hugging Face Hub folder (safetensors, config.json, model card)",
        description="Write model.safetensors (encoder, decoder / classifier where present), config.json and a "
        "README.md model card into OUT; hear_mwmae.load_model(OUT) reads it back, and so does "
        "load_model('hf://owner/name') once it is uploaded (push-to-hub).")
    p.add_argument("model", help="a checkpoint: our .pt / .safetensors, a released name, an authors' checkpoint, "
                   "hf://..., or a folder of this layout")
    p.add_argument("out", type=Path, help="the folder to write (new or empty; --force to replace a model in it)")
    p.add_argument("--repo-id", metavar="OWNER/NAME", help="the Hub repository it is meant for (named in the card)")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    _add_card_arguments(p)
    p.set_defaults(func=_save)

    p = subparsers.add_parser(
        "push-to-hub", help="upload a model to the Hugging Face Hub (builds the folder when needed)",
        description="Upload a save-pretrained folder as it is, or build one from a checkpoint and upload it, to the "
        "Hub repository OWNER/NAME (created when missing). Needs a token with write access: `hf auth login`, or "
        "HF_TOKEN.")
    p.add_argument("model", help="a save-pretrained folder, or anything save-pretrained takes")
    p.add_argument("repo_id", metavar="OWNER/NAME", help="the Hub model repository")
    p.add_argument("--private", action="store_true", help="create the repository private (when it does not exist)")
    p.add_argument("--revision", metavar="BRANCH", help="upload to this branch (created from main when missing)")
    p.add_argument("--message", help="the commit message")
    _add_card_arguments(p)
    p.set_defaults(func=_push)


__all__ = ["register"]
