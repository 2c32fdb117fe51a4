"""`hear-mwmae` command line: thin wrappers around the package's functions.

    hear-mwmae convert RUN_DIR OUT.pt [--encoder-only] [--checkpoint FILE] [--config FILE]
    hear-mwmae info CKPT
    hear-mwmae embed ...        (see `hear-mwmae embed --help`)
    hear-mwmae pretrain ...     (see `hear-mwmae pretrain --help`)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("hear_mwmae")


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .convert import convert_run_dir

    start = time.perf_counter()
    converted = convert_run_dir(args.run_dir, checkpoint=args.checkpoint, config_path=args.config)
    out = save_checkpoint(args.out, converted.config, converted.state_dict,
                          provenance=converted.provenance, encoder_only=args.encoder_only)
    n_params = sum(v.numel() for k, v in converted.state_dict.items())
    n_encoder = sum(v.numel() for k, v in converted.state_dict.items() if k.startswith("encoder."))
    log.info("converted %s (step %s) -> %s in %.2f s: %d parameters (%d encoder), %.1f MB%s",
             converted.provenance["source_file"], converted.provenance["step"], out,
             time.perf_counter() - start, n_params, n_encoder, out.stat().st_size / 1e6,
             " (encoder only)" if args.encoder_only else "")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    prov = {k: v for k, v in ckpt.provenance.items() if k != "source_config"}
    print(json.dumps({"config": ckpt.config.to_dict(), "encoder_only": ckpt.encoder_only,
                      "parameters": sum(v.numel() for v in ckpt.state_dict.values()),
                      "embedding_size": ckpt.config.model.embedding_size, "provenance": prov}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hear-mwmae", description="MW-MAE audio embeddings (HEAR API)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an authors' JAX run directory to our checkpoint")
    p.add_argument("run_dir", type=Path, help="run directory (config.json + checkpoint_<step>) or a checkpoint file")
    p.add_argument("out", type=Path, help="output .pt or .safetensors")
    p.add_argument("--encoder-only", action="store_true", help="leave out the decoder (all HEAR needs)")
    p.add_argument("--checkpoint", type=Path, help="a specific checkpoint_<step> (default: the newest)")
    p.add_argument("--config", type=Path, help="config.json (default: beside the checkpoint)")
    p.set_defaults(func=_convert)

    p = sub.add_parser("info", help="print a checkpoint's config and provenance")
    p.add_argument("checkpoint", help="our .pt/.safetensors, hf://..., or a run directory")
    p.set_defaults(func=_info)

    from . import embed
    from .pretrain import cli as pretrain_cli

    embed.register(sub)
    pretrain_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError
    from .convert import ConversionError

    try:
        return int(args.func(args) or 0)
    except (ConversionError, CheckpointError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
