"""`hear-mwmae` command line: thin wrappers around the package's functions.

    hear-mwmae convert SRC OUT.pt [--encoder-only] [--checkpoint FILE] [--config FILE] [--num-heads N]
    hear-mwmae info CKPT
    hear-mwmae fetch NAME [--cache-dir DIR] [--force] [--from PATH]   (the authors' released models; --list)
    hear-mwmae embed ...           (see `hear-mwmae embed --help`)
    hear-mwmae tag ...             (see `hear-mwmae tag --help`: labels from a fine-tuned model)
    hear-mwmae pretrain ...        (see `hear-mwmae pretrain --help`)
    hear-mwmae finetune ...        (see `hear-mwmae finetune --help`)
    hear-mwmae analyze ...         (see `hear-mwmae analyze --help`)
    hear-mwmae export-onnx ...
    hear-mwmae save-pretrained CKPT DIR / push-to-hub CKPT_OR_DIR OWNER/NAME   (the Hugging Face Hub layout)

A subcommand is a module with `register(subparsers)` that sets `func(args) -> exit code`.
It reports a problem of the user's input by raising (see `errors.py`): `main` turns every
such error into one line on stderr and exit code 2 (`-v` adds the traceback), so a new
subcommand needs no error handling of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import sys
import time
from pathlib import Path

log = logging.getLogger("hear_mwmae")


def _convert(args: argparse.Namespace) -> int:
    from .checkpoint import save_checkpoint
    from .convert import convert_source

    start = time.perf_counter()
    source = args.run_dir
    if source.startswith("hf://"):  # a timm-layout Hub repo: fetch (or find in the cache) first
        from .sources import resolve

        source = resolve(source)
    converted = convert_source(source, checkpoint=args.checkpoint, config_path=args.config,
                               num_heads=args.num_heads, decoder_num_heads=args.decoder_num_heads)
    if source != args.run_dir:
        converted.provenance["source_ref"] = args.run_dir
    out = save_checkpoint(args.out, converted.config, converted.state_dict,
                          provenance=converted.provenance, encoder_only=args.encoder_only or converted.encoder_only)
    n_params = sum(v.numel() for k, v in converted.state_dict.items())
    n_encoder = sum(v.numel() for k, v in converted.state_dict.items() if k.startswith("encoder."))
    log.info("converted %s (step %s) -> %s in %.2f s: %d parameters (%d encoder), %.1f MB%s",
             converted.provenance["source_file"], converted.provenance.get("step"), out,
             time.perf_counter() - start, n_params, n_encoder, out.stat().st_size / 1e6,
             " (encoder only)" if args.encoder_only or converted.encoder_only else "")
    return 0


def _info(args: argparse.Namespace) -> int:
    from .checkpoint import CheckpointError
    from .model_card import license_of
    from .registry import describe_license
    from .sources import load_checkpoint
    from .state_checks import WeightsError, check_state_dict, stored_parts

    ckpt = load_checkpoint(args.checkpoint)
    try:  # whatever the source (our file, a converted one, the Hub): the weights against the config
        check_state_dict(ckpt.config, ckpt.state_dict, stored_parts(ckpt.config, ckpt.state_dict))
    except WeightsError as exc:
        raise CheckpointError(f"{args.checkpoint}: {exc}") from exc
    prov = {k: v for k, v in ckpt.provenance.items() if k != "source_config"}
    print(json.dumps({"config": ckpt.config.to_dict(), "encoder_only": ckpt.encoder_only,
                      "parameters": sum(v.numel() for v in ckpt.state_dict.values()),
                      "embedding_size": ckpt.config.model.embedding_size,
                      "weights": "checked: names and shapes match the config, every element stored, all finite",
                      "license": describe_license(license_of(ckpt.provenance)), "provenance": prov}, indent=2))
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from . import registry, sources
    from .errors import UsageError

    if args.list or not args.name:
        for name in sources.BUNDLED:
            print(f"{name:22s} {'toy MW-MAE trained by this package (weights/DEMO.md)':58s} {'MIT':30s} "
                  f"bundled (no fetch needed)")
        for name, m in sorted(registry.MODELS.items()):
            record = registry.read_record(name, args.cache_dir)
            where = registry.cache_dir(args.cache_dir) / m.filename if record else "not fetched"
            print(f"{name:22s} {m.title:58s} {registry.describe_license(m.license):30s} {where}")
        if not args.list:
            raise UsageError(f"name the model to fetch, e.g. hear-mwmae fetch {registry.DEFAULT}")
        return 0
    if args.name in sources.BUNDLED:
        print(f"{args.name}: bundled with the package, nothing to fetch: {sources.bundled_file(args.name)}")
        return 0
    downloader = registry.from_local_copy(args.source) if args.source else None
    record = registry.fetch(args.name, args.cache_dir, force=args.force or bool(args.source),
                            keep_source=args.keep_source, downloader=downloader,
                            from_authors=args.from_authors or bool(args.source))
    print(f"{args.name}: {registry.cache_dir(args.cache_dir) / record['file']}")
    print(f"  licence {registry.describe_license(record.get('license'))}")
    print(f"  sha256 {record['sha256']}  {record['file']} (converted)")
    for file, sha in record["source_files"].items():
        where = file if file == record["run_dir"] else f"{record['run_dir']}/{file}"
        print(f"  sha256 {sha}  {where} (source)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hear-mwmae", description="MW-MAE and Audio-MAE audio embeddings (HEAR API)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("convert", help="convert an authors' checkpoint (MW-MAE JAX, Audio-MAE .pth / timm)")
    p.add_argument("run_dir", help="MW-MAE run directory (config.json + checkpoint_<step>) or checkpoint_<step> "
                   "(Flax msgpack file or orbax directory); Audio-MAE checkpoint-<epoch>.pth / pretrained.pth, a timm / Hub directory or hf://owner/repo")
    p.add_argument("out", type=Path, help="output .pt or .safetensors")
    p.add_argument("--encoder-only", action="store_true", help="leave out the decoder (all HEAR needs)")
    p.add_argument("--checkpoint", type=Path, help="a specific checkpoint_<step> (default: the newest)")
    p.add_argument("--config", type=Path, help="config.json (default: beside the checkpoint)")
    p.add_argument("--num-heads", type=int, help="Audio-MAE: encoder attention heads, when the file cannot tell")
    p.add_argument("--decoder-num-heads", type=int,
                   help="Audio-MAE: heads of a global (mode 0) decoder, when the file cannot tell")
    p.set_defaults(func=_convert)

    p = sub.add_parser("info", help="print a checkpoint's config and provenance")
    p.add_argument("checkpoint", help="our .pt/.safetensors, hf://..., or a run directory")
    p.set_defaults(func=_info)

    p = sub.add_parser("fetch", help="download and convert an authors' released model into the cache",
                       description="Download a released run directory from the authors' Google Drive folder "
                       "(needs gdown: pip install 'hear-mwmae[fetch]'), convert it, and store it with its sha256 "
                       "in the cache (~/.cache/hear-mwmae, or $HEAR_MWMAE_CACHE). Then load it by name: "
                       "hear_mwmae.load_model(NAME).")
    p.add_argument("name", nargs="?", help="model name (see --list)")
    p.add_argument("--cache-dir", type=Path, help="cache folder (default $HEAR_MWMAE_CACHE or ~/.cache/hear-mwmae)")
    p.add_argument("--force", action="store_true", help="download and convert again even if cached")
    p.add_argument("--keep-source", action="store_true", help="keep the downloaded run directory (NAME-source/)")
    p.add_argument("--list", action="store_true", help="list the released models, their licences and whether "
                   "they are cached")
    p.add_argument("--from-authors", action="store_true",
                   help="convert the authors' files even when the model has a Hugging Face Hub copy in our layout")
    p.add_argument("--from", dest="source", type=Path, metavar="PATH",
                   help="no download: convert and cache a copy of the authors' files you downloaded yourself (the "
                        "run directory for MW-MAE, the .pth file for Audio-MAE; a failed fetch says what to get)")
    p.set_defaults(func=_fetch)

    from . import analyze_cli, embed, tag_cli
    from .finetune import cli as finetune_cli
    from .pretrain import cli as pretrain_cli

    embed.register(sub)
    tag_cli.register(sub)
    pretrain_cli.register(sub)
    finetune_cli.register(sub)
    analyze_cli.register(sub)
    __import__("hear_mwmae.onnx_export", fromlist=["register"]).register(sub)  # hear-mwmae export-onnx
    __import__("hear_mwmae.hub_cli", fromlist=["register"]).register(sub)  # save-pretrained, push-to-hub
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input, a missing file or package, or an unusable folder:
    one line and exit code 2, never a traceback (with -v: with it)."""
    from .convert import ConversionError
    from .embed_index import EmbedFolderError
    from .registry import FetchError

    return (ValueError, OSError, ImportError, ConversionError, FetchError, EmbedFolderError, pickle.UnpicklingError)


def one_line(exc: BaseException) -> str:
    """An exception as one line of text, without torch's advice to unpickle code."""
    if isinstance(exc, pickle.UnpicklingError):
        from .files import refused_pickle_reason

        return f"refused to unpickle: {refused_pickle_reason(exc)}"
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None and str(exc).startswith("["):
        text = f"{exc.filename}: {exc.strerror.lower()}"  # not "[Errno 13] Permission denied: '...'"
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `hear-mwmae info CKPT | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except KeyboardInterrupt:
        log.error("interrupted")
        return 130
    except user_errors() as exc:  # one line, no traceback (-v: with)
        log.error("%s", one_line(exc), exc_info=args.verbose)
        return 2
    except Exception as exc:  # a bug of ours: still one line; -v shows where
        log.error("unexpected %s: %s (a bug in hear-mwmae? rerun with -v for the traceback and report it)",
                  type(exc).__name__, one_line(exc), exc_info=args.verbose)
        return 1


if __name__ == "__main__":
    sys.exit(main())
