"""`hear-mwmae embed`: audio files -> embedding files, resumable, crash-safe, never stale.

    hear-mwmae embed --model mwmae-base-4x16-4l data/ extra.flac --out emb/ [--mode scene|timestamp]
    hear-mwmae embed --model ... data/ --out emb/ --format parquet --workers 8
    find /data -name '*.flac' | hear-mwmae embed --model ... --files-from - --out emb/
    hear-mwmae embed --model ... --hf-dataset DIR_OR_NAME [--split train] --out emb/   (Parquet)
    torchrun --nproc_per_node 4 -m hear_mwmae.cli embed --model ... data/ --out emb/

Inputs are files or folders (on the command line, and/or one per line in --files-from LIST,
"-" for stdin), or the rows of a Hugging Face `datasets` dataset with an Audio column
(--hf-dataset: a folder of `save_to_disk`, a local Parquet folder, or a Hub name; the stored
bytes or paths are decoded here, torchcodec is not needed; an audiofolder layout needs
torchcodec inside `datasets`: embed its folder directly). Folders are searched recursively for audio: the formats
libsndfile reads (wav, flac, ogg/opus, mp3, aiff, ...) and, decoded with PyAV when `av` is
installed, m4a/mp4, aac, wma, webm, ... Every other entry of a folder is listed in the
summary and the index with the reason it was not embedded (unsupported extension, hidden,
directory named like audio, symbolic link loop, ...). A file named directly is attempted
whatever its extension. Any file name works (unicode, spaces, bytes that are not UTF-8).
Audio is mixed down to mono (mean of the channels) and resampled to 16 kHz with
`scipy.signal.resample_poly` at the exact rational ratio, a block at a time: a file of any
length is embedded in bounded memory (longer than 5 min: through a temporary file in OUT).
Unreadable, empty, truncated (fewer frames than the header promises), non-audio or
non-finite files are errors, as are sample rates outside 1000-768000 Hz, more than 64
channels, files longer than --max-duration, and embeddings that come out NaN or Inf.

Pipeline: --workers N processes decode and resample (default, for 8 files or more: with the
model on a GPU one per core, at most 8; on the CPU a quarter of the cores, since the model
needs them more; 0 = in this process) while the model embeds batches of
consecutive files (chunks of several files in one pass) and a thread writes the results.
Outputs are identical whatever the number of workers. Memory stays bounded: at most 2 x N
decoded files wait, each of at most 5 min of audio (longer ones wait in a temporary file).

--format npy (default): outputs mirror each input's absolute path below OUT, extension kept, ".npy" appended, so
two inputs never share an output (speech.mp3 / speech.ogg, a/x.wav / b/x.wav) and a file
always lands in the same place, whatever else is on the command line:
    scene:      OUT/<input path>.npy     float32 (D,)       mean over time
    timestamp:  OUT/<input path>.npy     float32 (steps, D) embeddings
                OUT/<input path>.ts.npy  float32 (steps,)   step centres in ms
  e.g. /data/corpus/spk1/speech.mp3 -> OUT/data/corpus/spk1/speech.mp3.npy
    OUT/index.jsonl  one JSON object per input: input, output, timestamps, status ("ok",
                     "error: ...", "skipped: ...", "removed: ..."), reason (why it was
                     embedded: new, input changed, ...), input size / mtime / ctime / inode
                     [/ sha256], duration_s, sample_rate, channels, steps, dim, model,
                     checkpoint_sha256, mode, precision. A name that is not UTF-8 is also
                     given exactly as "input_b64" (base64 of its bytes).
An OUT written by an older hear-mwmae (outputs named <stem>.npy) is renamed to these
names on its first run.

--format parquet: one row per input in OUT/embeddings/part-*.parquet, at most --shard-rows
rows a shard: input, input_b64, path (relative to the folder given), duration_s,
sample_rate, channels, embedding (D float32; timestamp mode: steps x D), timestamps
(timestamp mode, ms), model, checkpoint_sha256. Read it with
pandas.read_parquet("OUT/embeddings") or datasets.load_dataset("parquet",
data_dir="OUT/embeddings"). Resuming, --force and staleness work per input as with .npy; a
re-embedded input's old row is dropped (hear_mwmae/embed_parquet.py).

Never stale: a result is reused only when its record is "ok" for the same checkpoint
(sha256 of its bytes, computed once per run), mode, precision and format, its outputs exist, and
the input is the same file: same size, modification time, status-change time (ctime)
and inode. --hash-inputs compares size and sha256 instead (each input is read in full
every run): use it where those attributes cannot be trusted (FAT / exFAT drives, some
network file systems) or to keep results of a corpus restored or copied in place. An OUT
made with another checkpoint, mode, precision or format is refused, naming the difference;
--force deletes those outputs and re-embeds with this run's settings. --overwrite
re-embeds everything. A file whose embedding fails loses its earlier outputs.

Disappeared inputs: a run accounts for the folders and files it is given. The record of
an input under them that no longer exists becomes "removed: input no longer exists" and
its outputs are deleted (--keep-removed: kept, and listed). Records under folders not
given in this run are left as they are (a drive that is not mounted loses nothing).

Crashes: outputs are written to a temporary file and renamed, and a record says
"pending" while they are written, so a killed run never leaves a half-written array or
an output without a record; the next run redoes what was pending and removes temporary
files. A lock file (OUT/.embed.lock) stops a second `embed` on the same OUT.

Nothing in OUT is trusted (docs/security.md): nothing outside it is ever written or deleted
(index records naming other paths are ignored with a warning), no symbolic link inside it is
followed, and a damaged index is repaired with a warning.

Under torchrun the input files are split between the ranks (each on cuda:LOCAL_RANK, or
the CPU); each rank writes its own index part, merged into index.jsonl by rank 0 at the
end (and by the next run, if this one is killed).

Exit code: 0 when every audio file is embedded (or already was), 1 when any failed (the
others are still embedded), 2 when the model, the arguments or OUT cannot be used.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch

from .embed_decode import default_workers
from .embed_index import (INDEX_NAME, EmbedFolderError, FolderLock, Index, clean_temporary, delete_outputs, has_outputs,
                          merge_parts, outputs_of, part_name, remove_outputs, settings_conflicts)
from .embed_migrate import ensure_layout
from .embed_parquet import SHARD_ROWS, ParquetStore, compact_shards
from .embed_pipeline import Summary, embed_share
from .embed_plan import Plan, canonical, find_jobs, in_scope, is_gone
from .embed_store import FORMATS, NpyStore, Store
from .errors import UsageError
from .pretrain.distributed import DistInfo, barrier, gather_objects, init_from_env, shutdown
from .sources import checkpoint_sha256

log = logging.getLogger(__name__)


def check_device(name: str | None) -> None:
    """Raise UsageError with the fix when `--device name` cannot be used on this machine."""
    from .runtime import check_device as check

    try:
        check(name, f"--device {name}", "--device cpu")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ----------------------------------------------------------------------------- the folder, before embedding
def _prepare_folder(out_dir: Path, plan: Plan, settings: dict[str, Any], force: bool,
                    keep_removed: bool) -> tuple[list[tuple[str, str]], set[str]]:
    """Rank 0, under the lock: finish what a killed run left, bring an older layout up to date,
    refuse (or, with `force`, clear) results of other settings, and account for inputs that
    disappeared. Returns (inputs removed by this run with their status, every input in this
    run's scope that no longer exists: a missing file named again is a removal, not an error)."""
    message, keys = settings_conflicts(Index(out_dir), settings)  # refused: before anything is touched
    if keys and not force:
        raise EmbedFolderError(f"{out_dir} holds embeddings made with other settings: {message}; nothing was "
                               f"changed. Check that this is the --out you meant: to keep them, use another --out; "
                               f"--force replaces them (it deletes only the outputs inside {out_dir} that its index "
                               f"names for those inputs, and re-embeds them with this run's settings)")
    if clean_temporary(out_dir):
        log.info("%s: removed temporary files left by an interrupted run", out_dir)
    ensure_layout(out_dir)
    merge_parts(out_dir)
    index = Index(out_dir)
    message, keys = settings_conflicts(index, settings)
    if keys:
        deleted = remove_outputs(index, keys, settings)
        log.warning("--force: deleted %d output file(s) of %d input(s) made with other settings (%s)",
                    deleted, len(keys), message)
    removed, gone = _account_removed(index, plan, keep_removed)
    index.compact()
    compact_shards(index.folder, index.records)  # rows of a killed run's pending records, of removed inputs
    return removed, gone


def _account_removed(index: Index, plan: Plan, keep_removed: bool) -> tuple[list[tuple[str, str]], set[str]]:
    """Records of inputs in this run's scope that are no longer there become "removed" (outputs
    deleted unless `keep_removed`); see `_prepare_folder` for what is returned."""
    seen = plan.inputs()
    named_missing = {i for i, reason in plan.failed if reason == "error: no such file or directory"}
    removed, gone = [], set()
    for key, record in list(index.records.items()):
        if key in named_missing:  # named again, gone: a removal if it ever had outputs, else still an error
            if str(record.get("status")).startswith(("error:", "skipped:")):
                continue
            log.warning("%s: no such file any more; its record says removed", key)
            why = "input no longer exists"
        else:
            why = "" if key in seen or not in_scope(key, plan) else is_gone(key)
            if not why:
                continue
        gone.add(key)
        kept = keep_removed and has_outputs(index.folder, record)
        status = f"removed: {why}" + ("; outputs kept (--keep-removed)" if kept else "")
        if record.get("status") == status:  # accounted for by an earlier run
            continue
        if not kept:
            delete_outputs(index.folder, outputs_of(record))
        index.add({"input": key, "output": record.get("output"), "timestamps": record.get("timestamps"),
                   "status": status, **({"format": record["format"]} if "format" in record else {})})
        removed.append((key, status))
    return removed, gone


# ----------------------------------------------------------------------------- embedding
def _share(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` on every rank."""
    return gather_objects(value, info)[0]


def make_store(format: str, folder: Any, runtime: torch.nn.Module, mode: str, settings: dict[str, Any],
               shard_rows: int, rank: int) -> Store:
    """The output store of `--format`."""
    if format == "npy":
        return NpyStore(folder)
    if format == "parquet":
        try:
            return ParquetStore(folder, runtime.timestamp_embedding_size, mode, settings, shard_rows, rank)
        except ImportError:
            raise UsageError("--format parquet needs pyarrow: pip install pyarrow (or pip install "
                             "'hear-mwmae[parquet]')") from None
    raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")


def embed_files(runtime: torch.nn.Module, plan: Plan, out_dir: str | Path, *, settings: dict[str, Any],
                mode: str = "scene", overwrite: bool = False, force: bool = False, hash_inputs: bool = False,
                keep_removed: bool = False, progress: bool | None = None, dist_info: DistInfo | None = None,
                max_duration: float | None = None, workers: int | None = 0, format: str = "npy",
                shard_rows: int = SHARD_ROWS) -> Summary:
    """Embed the jobs of `plan` (from `find_jobs` with the same `mode`) into `out_dir` with an
    `MWMAERuntime`, and record every entry of the plan; see the module docstring.

    `settings` must give `checkpoint_sha256` (see `sources.checkpoint_sha256`) and `precision`,
    and may give `model`; they are stored in every record. `progress`: None shows a tqdm bar
    only on a terminal. Under torchrun pass `dist_info`: each rank embeds its share of the
    jobs; the returned summary is the whole run's, on every rank. `max_duration`: longer files
    (seconds) are errors. `workers`: decoding processes (None: `embed_decode.default_workers`).
    `format`: "npy" or "parquet" (`shard_rows` rows a shard).
    """
    missing = {"checkpoint_sha256", "precision"} - set(settings)
    if missing:
        raise TypeError(f"settings must give {sorted(missing)}")
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}")
    info = dist_info or DistInfo()
    out_dir = Path(os.path.realpath(out_dir))  # (--out itself may be a link; nothing inside it is followed)
    settings = {**settings, "mode": mode, "format": format}
    with contextlib.ExitStack() as stack:
        error, removed, gone = None, [], set()
        if info.is_main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(FolderLock(out_dir))
                removed, gone = _prepare_folder(out_dir, plan, settings, force, keep_removed)
            except (EmbedFolderError, OSError) as exc:
                error = str(exc)
        error = _share(error, info)
        if error:
            raise EmbedFolderError(error)
        barrier(info)
        index = Index(out_dir, writer=part_name(info.rank) if info.enabled else INDEX_NAME)
        store = make_store(format, index.folder, runtime, mode, settings, shard_rows, info.rank)
        jobs = plan.jobs[info.rank::info.world_size]
        if workers is None:
            on_cpu = runtime.device.type == "cpu"
            workers = default_workers(len(jobs), int(os.environ.get("LOCAL_WORLD_SIZE", "1")), on_cpu)
        summary = embed_share(runtime, jobs, index, store, settings, mode=mode, overwrite=overwrite,
                              hash_inputs=hash_inputs,
                              problems=[(i, r) for i, r in plan.failed if i not in gone] if info.is_main else [],
                              not_audio=plan.not_audio if info.is_main else [], progress=progress,
                              show=info.is_main, workers=workers, max_duration=max_duration)
        summary.removed = removed
        barrier(info)
        parts = gather_objects(summary, info)
        if info.is_main:
            index = Index(out_dir)
            index.compact()  # index.jsonl + every rank's part, one line per input
            compact_shards(index.folder, index.records)  # old rows of re-embedded, failed or removed inputs
        barrier(info)
    total = Summary()
    for part in parts:
        total = total.merge(part)
    return total


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `embed` subcommand (calls `run`) to a CLI's subparsers."""
    from . import DEFAULT_MODEL
    from .runtime import PRECISIONS

    p = subparsers.add_parser(
        "embed", help="embed audio files / folders / a datasets dataset into .npy or Parquet files (resumable)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="audio files or folders (searched recursively)")
    p.add_argument("--files-from", metavar="LIST", default=None,
                   help="also the files / folders named in LIST, one per line ('-': read them from stdin)")
    p.add_argument("--hf-dataset", metavar="PATH_OR_NAME", default=None,
                   help="embed the rows of a Hugging Face datasets dataset instead: a save_to_disk folder, a local "
                        "Parquet folder or a Hub name (writes Parquet; needs pip install datasets)")
    p.add_argument("--split", default=None, help="with --hf-dataset: the split (default: train, or the only one)")
    p.add_argument("--audio-column", default="audio", metavar="C",
                   help="with --hf-dataset: the Audio column (default audio)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="CKPT",
                   help=f"a released model's name (default {DEFAULT_MODEL}; `hear-mwmae fetch --list`), the bundled "
                        "demo-tiny, .pt / .safetensors, an authors' checkpoint, or hf://owner/repo/file.pt")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--mode", choices=("scene", "timestamp"), default="scene",
                   help="scene: one (D,) vector per file; timestamp: (steps, D) + times in ms")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="npy (default): a .npy (+ .ts.npy) per file mirroring its path; parquet: rows in "
                        "OUT/embeddings/*.parquet shards (the default with --hf-dataset)")
    p.add_argument("--shard-rows", type=_positive_int, default=SHARD_ROWS, metavar="N",
                   help=f"--format parquet: at most N rows per shard (default {SHARD_ROWS}; a shard also closes at "
                        "about 1 GiB)")
    p.add_argument("--workers", type=_count, default=None, metavar="N",
                   help="processes that decode and resample while the model runs (default, for 8 files or more: one per "
                        "core up to 8 with the model on a GPU, a quarter of the cores with it on the CPU; 0: in this "
                        "process). Outputs do not depend on it")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; "
                   "under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="fp32 (default); bf16 / fp16: autocast, fast on GPUs and on CPUs with bf16 units (AMX); "
                        "int8: CPU only, the encoder's linear layers quantised at load. Part of an OUT's settings")
    p.add_argument("--max-chunks-per-batch", type=int, default=None, metavar="N",
                   help="encoder chunks per pass (bounds memory; default 16 on CPU, 128 on GPU); a device batch "
                        "holds up to 4 passes' worth of chunks from consecutive files")
    p.add_argument("--overwrite", action="store_true", help="re-embed every input, even results still valid")
    p.add_argument("--force", action="store_true",
                   help="use an OUT made with another checkpoint / mode / precision / format: delete those outputs "
                        "(inside OUT only) and re-embed")
    p.add_argument("--hash-inputs", action="store_true",
                   help="decide whether an input changed by its size and sha256 (read in full every run) instead "
                        "of its size, times and inode; see 'Never stale' above")
    p.add_argument("--max-duration", type=_positive_seconds, default=None, metavar="SECONDS",
                   help="files longer than this are errors (checked in the header, then while decoding); default: "
                        "no limit (long files are embedded in bounded memory)")
    p.add_argument("--keep-removed", action="store_true",
                   help="keep the outputs of inputs that no longer exist (their records say so) instead of deleting")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _whole_number(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [low, high] (no upper bound when high is None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            bound = f"{low} ... {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


_count = _whole_number(0, 256)
_positive_int = _whole_number(1)


def _model_ref(text: str) -> str:
    from . import registry, sources

    if text.startswith("hf://") or text in sources.BUNDLED or registry.is_name(text):
        return text
    return str(canonical(text))


def _device_for(device: str | None, info: DistInfo) -> str | None:
    if not info.enabled:
        return device
    if device is None:
        return f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{info.local_rank}"
    if device.startswith("cuda:"):
        raise UsageError(f"--device {device}: under torchrun pass --device cuda (each rank uses cuda:LOCAL_RANK)")
    return device


def read_files_from(source: str) -> list[str]:
    """The names in a --files-from LIST ('-': stdin): one per line, blank lines and surrounding
    whitespace ignored; bytes that are not UTF-8 kept as the OS gives them."""
    try:
        if source == "-":
            data = sys.stdin.buffer.read()
        else:
            with open(source, "rb") as fh:
                data = fh.read()
    except OSError as exc:
        raise UsageError(f"--files-from {source}: {(exc.strerror or str(exc)).lower()}") from None
    return [os.fsdecode(line.strip()) for line in data.splitlines() if line.strip()]


def _report(summary: Summary, out: Path, keep_removed: bool) -> None:
    if summary.not_audio:
        kinds = Counter(reason.removeprefix("skipped: ").split(" (")[0] for _, reason in summary.not_audio)
        log.info("not embedded: %d entr%s that %s not audio (%s), e.g. %s; each is listed in %s with its reason",
                 len(summary.not_audio), *(("y", "is") if len(summary.not_audio) == 1 else ("ies", "are")),
                 ", ".join(f"{n} {k}" for k, n in kinds.items()), ", ".join(p for p, _ in summary.not_audio[:3]),
                 out / INDEX_NAME)
    if summary.removed:
        log.info("%d input(s) no longer exist, e.g. %s: their outputs were %s", len(summary.removed),
                 ", ".join(p for p, _ in summary.removed[:3]),
                 "kept (--keep-removed), listed in the index" if keep_removed else "deleted")
    log.info("embedded %d, reused %d (already done), failed %d, not audio %d, removed %d; index: %s",
             summary.embedded, summary.reused, len(summary.failed), len(summary.not_audio), len(summary.removed),
             out / INDEX_NAME)


def _plan(args: argparse.Namespace, out: Path) -> Plan:
    """The jobs of the command line: inputs and --files-from, or the rows of --hf-dataset."""
    if args.hf_dataset is not None:
        if args.inputs or args.files_from:
            raise UsageError("--hf-dataset embeds a dataset: give no INPUT files or --files-from with it")
        from .embed_datasets import dataset_plan

        return dataset_plan(args.hf_dataset, args.split, args.audio_column, args.mode)
    inputs = list(args.inputs) + (read_files_from(args.files_from) if args.files_from else [])
    if not inputs:
        raise UsageError("nothing to embed: give INPUT files or folders, --files-from LIST or --hf-dataset")
    return find_jobs(inputs, args.mode, exclude=[out])


def run(args: argparse.Namespace) -> int:
    """Entry point of `hear-mwmae embed` (also under torchrun); see the module docstring for exit codes.
    Problems of the model, the arguments or OUT raise (`cli.main` makes them one line, exit 2)."""
    from . import load_model

    info = DistInfo()
    check_device(args.device)
    fmt = args.format or ("parquet" if args.hf_dataset is not None else "npy")
    if args.hf_dataset is not None and fmt != "parquet":
        raise UsageError("--hf-dataset writes Parquet: leave out --format npy")
    info = init_from_env(args.device)
    try:
        device = _device_for(args.device, info)
        error, runtime, sha = None, None, None
        model = _model_ref(str(args.model))
        try:
            sha = _share(checkpoint_sha256(model) if info.is_main else None, info)
            runtime = load_model(model, device=device, precision=args.precision,
                                 max_chunks_per_batch=args.max_chunks_per_batch)
        except (OSError, ValueError, TypeError, ImportError) as exc:  # missing / invalid checkpoint, bad options
            error = f"cannot load the model {args.model}: {' '.join(str(exc).split())}"
        errors = [e for e in gather_objects(error, info) if e]
        if errors:
            raise UsageError(errors[0])
        out = Path(args.out)
        plan = _plan(args, out)
        summary = embed_files(runtime, plan, out, mode=args.mode, overwrite=args.overwrite, force=args.force,
                              hash_inputs=args.hash_inputs, keep_removed=args.keep_removed,
                              settings={"model": model, "checkpoint_sha256": sha, "precision": args.precision},
                              progress=False if args.no_progress else None, dist_info=info,
                              max_duration=args.max_duration, workers=args.workers, format=fmt,
                              shard_rows=args.shard_rows)
        if info.is_main:
            _report(summary, out, args.keep_removed)
        return 1 if summary.failed else 0
    finally:
        shutdown(info)
