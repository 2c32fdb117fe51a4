"""`hear-mwmae embed`: audio files -> embedding files, resumable, crash-safe, never stale.

    hear-mwmae embed --model mwmae-base-4x16-4l data/ extra.flac --out emb/ [--mode scene|timestamp]
    torchrun --nproc_per_node 4 -m hear_mwmae.cli embed --model ... data/ --out emb/

Inputs are files or folders. Folders are searched recursively for audio: the formats
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

Outputs mirror each input's absolute path below OUT, extension kept, ".npy" appended, so
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

Never stale: a result is reused only when its record is "ok" for the same checkpoint
(sha256 of its bytes, computed once per run), mode and precision, its outputs exist, and
the input is the same file: same size, modification time, status-change time (ctime)
and inode. --hash-inputs compares size and sha256 instead (each input is read in full
every run): use it where those attributes cannot be trusted (FAT / exFAT drives, some
network file systems) or to keep results of a corpus restored or copied in place. An OUT
made with another checkpoint, mode or precision is refused, naming the difference;
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
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .audio import SAMPLE_RATE
from .embed_decode import Clip, decode_clip, failure_reason
from .embed_index import (INDEX_NAME, PENDING, EmbedFolderError, FolderLock, Index, clean_temporary, delete_outputs,
                          input_facts, merge_parts, outputs_of, part_name, redo_reason, remove_outputs,
                          settings_conflicts)
from .embed_migrate import ensure_layout
from .embed_plan import Job, Plan, canonical, find_jobs, in_scope, is_gone
from .embed_stream import Rows, embed_long
from .errors import UsageError
from .out_folder import OutFolder
from .pretrain.distributed import DistInfo, barrier, gather_objects, init_from_env, shutdown
from .runtime import LOUD_AUDIO
from .sources import checkpoint_sha256

log = logging.getLogger(__name__)

WINDOW_FILES = 16  # decode at most this many files before embedding them ...
WINDOW_SAMPLES = SAMPLE_RATE * 600  # ... or about 10 min of 16 kHz audio, whichever comes first


@dataclass
class Summary:
    """What a run did: files embedded, reused (already done), failed, not audio and removed (input, reason)."""

    embedded: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_audio: list[tuple[str, str]] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: "Summary") -> "Summary":
        return Summary(self.embedded + other.embedded, self.reused + other.reused, self.failed + other.failed,
                       self.not_audio + other.not_audio, self.removed + other.removed)


def check_device(name: str | None) -> None:
    """Raise UsageError with the fix when `--device name` cannot be used on this machine."""
    from .runtime import check_device as check

    try:
        check(name, f"--device {name}", "--device cpu")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def atomic_save(folder: OutFolder, name: str, array: np.ndarray | Rows) -> None:
    """`np.save` of `array` as `name` inside the folder, so that a crash never leaves a half-written
    file; a `Rows` (a long clip's timestamp embeddings) is copied a block of rows at a time."""
    with folder.atomic_write(name) as fh:
        if isinstance(array, Rows):
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                      "fortran_order": False, "shape": array.shape})
            for block in array.blocks():
                fh.write(block.tobytes())
        else:
            np.save(fh, np.ascontiguousarray(array))


def check_finite(emb: np.ndarray | Rows, peak: float) -> None:
    """Raise ValueError when an embedding holds NaN or Inf (extreme audio overflows the frontend)."""
    finite = emb.finite if isinstance(emb, Rows) else bool(np.isfinite(emb).all())
    if not finite:
        raise ValueError(f"the embedding is not finite (NaN or Inf){f'; the audio peaks at {peak:.3g}' if peak > 1 else ''}")


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
        kept = keep_removed and any(index.folder.is_file(p) for p in outputs_of(record))
        status = f"removed: {why}" + ("; outputs kept (--keep-removed)" if kept else "")
        if record.get("status") == status:  # accounted for by an earlier run
            continue
        if not kept:
            delete_outputs(index.out_dir, outputs_of(record))
        index.add({"input": key, "output": record.get("output"), "timestamps": record.get("timestamps"),
                   "status": status})
        removed.append((key, status))
    return removed, gone


# ----------------------------------------------------------------------------- embedding
Decoded = tuple[Job, Clip, dict[str, Any]]


def _decoded(jobs: list[tuple[Job, dict[str, Any]]], on_error: Callable[[Job, BaseException, dict[str, Any]], None],
             spill_dir: Path | None = None, max_duration: float | None = None) -> Iterator[list[Decoded]]:
    """Yield windows of decoded files (bounded count and samples); report read failures. A clip
    too long to hold (only with `spill_dir`) comes alone, its samples in a temporary file."""
    window: list[Decoded] = []
    samples = 0
    for job, extra in jobs:
        clip = decode_clip(job.source, spill_dir, max_duration)
        if clip.error:
            on_error(job, ValueError(clip.error.removeprefix("error: ")), extra)
            continue
        if clip.spill is not None:
            yield [(job, clip, {**extra, **clip.info})]
            continue
        window.append((job, clip, {**extra, **clip.info}))
        samples += clip.num_samples
        if len(window) >= WINDOW_FILES or samples >= WINDOW_SAMPLES:
            yield window
            window, samples = [], 0
    if window:
        yield window


@torch.inference_mode()
def _embed_group(runtime: torch.nn.Module, clips: list[np.ndarray], mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Equal-length (n,) clips -> per clip (scene (D,) | embeddings (steps, D), timestamps (steps,) | (0,))."""
    audio = torch.from_numpy(np.stack(clips))  # (B, n)
    with warnings.catch_warnings():  # embed names the file itself (loud audio); a batch is never "transposed"
        warnings.filterwarnings("ignore", message=".*(audio peak|transposed)")
        emb, stamps = runtime.embed(audio, scene_only=mode == "scene")  # (B, [steps,] D), (B, steps | 0)
    return list(zip(emb.cpu().numpy(), stamps.cpu().numpy()))


def _share(value: Any, info: DistInfo) -> Any:
    """Rank 0's `value` on every rank."""
    return gather_objects(value, info)[0]


def embed_files(runtime: torch.nn.Module, plan: Plan, out_dir: str | Path, *, settings: dict[str, Any],
                mode: str = "scene", overwrite: bool = False, force: bool = False, hash_inputs: bool = False,
                keep_removed: bool = False, progress: bool | None = None, dist_info: DistInfo | None = None,
                max_duration: float | None = None) -> Summary:
    """Embed the jobs of `plan` (from `find_jobs` with the same `mode`) into `out_dir` with an
    `MWMAERuntime`, and record every entry of the plan; see the module docstring.

    `settings` must give `checkpoint_sha256` (see `sources.checkpoint_sha256`) and `precision`,
    and may give `model`; they are stored in every record. `progress`: None shows a tqdm bar
    only on a terminal. Under torchrun pass `dist_info`: each rank embeds its share of the
    jobs; the returned summary is the whole run's, on every rank. `max_duration`: longer files
    (seconds) are errors.
    """
    missing = {"checkpoint_sha256", "precision"} - set(settings)
    if missing:
        raise TypeError(f"settings must give {sorted(missing)}")
    info = dist_info or DistInfo()
    out_dir = Path(os.path.realpath(out_dir))  # (--out itself may be a link; nothing inside it is followed)
    settings = {**settings, "mode": mode}
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
        summary = _embed_share(runtime, plan.jobs[info.rank::info.world_size], out_dir, settings, mode, overwrite,
                               hash_inputs, [(i, r) for i, r in plan.failed if i not in gone] if info.is_main else [],
                               plan.not_audio if info.is_main else [], progress, info, max_duration)
        summary.removed = removed
        barrier(info)
        parts = gather_objects(summary, info)
        if info.is_main:
            Index(out_dir).compact()  # index.jsonl + every rank's part, one line per input
        barrier(info)
    total = Summary()
    for part in parts:
        total = total.merge(part)
    return total


def _embed_share(runtime: torch.nn.Module, jobs: list[Job], out_dir: Path, settings: dict[str, Any], mode: str,
                 overwrite: bool, hash_inputs: bool, problems: list[tuple[str, str]],
                 not_audio: list[tuple[str, str]], progress: bool | None, info: DistInfo,
                 max_duration: float | None = None) -> Summary:
    """This rank's part of `embed_files`: reuse what is valid, embed the rest, record everything."""
    index = Index(out_dir, writer=part_name(info.rank) if info.enabled else INDEX_NAME)
    folder = index.folder
    summary = Summary(not_audio=list(not_audio))

    def unusable(item: str, reason: str, record: dict[str, Any]) -> None:
        """An input that yields no embedding: earlier outputs of it would be stale, so they go."""
        previous = index.records.get(item)
        if previous:
            delete_outputs(out_dir, outputs_of(previous))
        index.add(record)

    for item, reason in problems:
        log.error("%s: %s", item, reason)
        summary.failed.append((item, reason))
        unusable(item, reason, {"input": item, "output": None, "timestamps": None, "status": reason, **settings})
    for item, reason in not_audio:
        unusable(item, reason, {"input": item, "output": None, "timestamps": None, "status": reason})

    bar = tqdm(total=len(jobs), unit="file", desc="embed", disable=(None if progress is None else not progress)
               if info.is_main else True)

    def record(job: Job, status: str, extra: dict[str, Any], **fields: Any) -> None:
        index.add({"input": str(job.source), "output": job.output.as_posix(),
                   "timestamps": job.timestamps.as_posix() if job.timestamps else None,
                   "status": status, **extra, **fields, **settings})

    def failed(job: Job, exc: BaseException, extra: dict[str, Any]) -> None:
        reason = failure_reason(exc)
        log.error("%s: %s", job.source, reason)
        summary.failed.append((str(job.source), reason))
        delete_outputs(out_dir, [p.as_posix() for p in job.outputs])  # stale, or half of a pair
        record(job, reason, extra)
        bar.update(1)

    todo: list[tuple[Job, dict[str, Any]]] = []
    redo = Counter()
    for job in jobs:
        try:
            facts = input_facts(job.source, hash_inputs)
        except OSError as exc:
            failed(job, exc, {})
            continue
        outputs = [p.as_posix() for p in job.outputs]
        reason = "--overwrite" if overwrite else redo_reason(index.records.get(str(job.source)), outputs, settings,
                                                            facts, out_dir)
        if reason is None:
            summary.reused += 1
            bar.update(1)
        else:
            todo.append((job, {"reason": reason, **facts}))
            redo[reason.split(":")[0]] += 1
    if summary.reused:
        log.info("reusing %d file(s) already embedded with these settings (--overwrite redoes them)", summary.reused)
    if set(redo) - {"new"}:
        log.info("re-embedding: %s", ", ".join(f"{n} {why}" for why, n in redo.items() if why != "new"))

    def write(job: Job, clip: Clip, extra: dict[str, Any], emb: np.ndarray | Rows, stamps: np.ndarray) -> None:
        try:
            check_finite(emb, clip.peak)
            record(job, PENDING, {})  # from here on, an output on disk always has a record
            atomic_save(folder, job.output.as_posix(), emb)
            if job.timestamps is not None:
                atomic_save(folder, job.timestamps.as_posix(), stamps)
        except Exception as exc:
            failed(job, exc, extra)
            return
        finally:
            if isinstance(emb, Rows):
                emb.close()
        summary.embedded += 1
        steps = {"steps": int(stamps.shape[0])} if mode == "timestamp" else {}
        record(job, "ok", extra, dim=int(emb.shape[-1]), **steps)
        bar.update(1)

    def loud(job: Job, clip: Clip, extra: dict[str, Any]) -> dict[str, Any]:
        if clip.peak > LOUD_AUDIO:
            log.warning("%s: peak %.3g is far outside [-1, 1]; embedded as it is (is it scaled as int16?)",
                        job.source, clip.peak)
            return {**extra, "warning": f"peak {clip.peak:.3g} far outside [-1, 1]"}
        return extra

    with logging_redirect_tqdm(), bar:
        for window in _decoded(todo, failed, out_dir, max_duration):
            groups: dict[int, list[Decoded]] = defaultdict(list)
            for job, clip, extra in window:
                extra = loud(job, clip, extra)
                if clip.spill is not None:  # a long clip: swept from its temporary file in bounded memory
                    try:
                        emb, stamps = embed_long(runtime, clip.blocks, clip.num_samples, clip.wave_mean,
                                                 mode == "scene")
                    except Exception as exc:
                        failed(job, exc, extra)
                        continue
                    finally:
                        clip.discard()
                    write(job, clip, extra, emb, stamps)
                    continue
                groups[clip.num_samples].append((job, clip, extra))
            for group in groups.values():
                results = None
                try:
                    results = _embed_group(runtime, [clip.samples for _, clip, _ in group], mode)
                except Exception as exc:  # retry one by one so that one bad file cannot sink the others
                    if len(group) == 1:
                        failed(group[0][0], exc, group[0][2])
                        continue
                    log.warning("a batch of %d files failed (%s); embedding them one by one", len(group), exc)
                for i, (job, clip, extra) in enumerate(group):
                    try:
                        emb, stamps = results[i] if results else _embed_group(runtime, [clip.samples], mode)[0]
                    except Exception as exc:
                        failed(job, exc, extra)
                        continue
                    write(job, clip, extra, emb, stamps)
    index.close()
    return summary


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `embed` subcommand (calls `run`) to a CLI's subparsers."""
    from . import DEFAULT_MODEL
    from .runtime import PRECISIONS

    p = subparsers.add_parser(
        "embed", help="embed audio files / folders into .npy files (resumable)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="CKPT",
                   help=f"a released model's name (default {DEFAULT_MODEL}; `hear-mwmae fetch --list`), the bundled "
                        "demo-tiny, .pt / .safetensors, an authors' checkpoint, or hf://owner/repo/file.pt")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--mode", choices=("scene", "timestamp"), default="scene",
                   help="scene: one (D,) vector per file; timestamp: (steps, D) + .ts.npy times in ms")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; "
                   "under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="fp32 (default); bf16 / fp16: autocast, fast on GPUs and on CPUs with bf16 units (AMX); "
                        "int8: CPU only, the encoder's linear layers quantised at load. Part of an OUT's settings")
    p.add_argument("--max-chunks-per-batch", type=int, default=None, metavar="N",
                   help="encoder chunks per pass (bounds memory; default 16 on CPU, 128 on GPU)")
    p.add_argument("--overwrite", action="store_true", help="re-embed every input, even results still valid")
    p.add_argument("--force", action="store_true",
                   help="use an OUT made with another checkpoint / mode / precision: delete those outputs first")
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


def run(args: argparse.Namespace) -> int:
    """Entry point of `hear-mwmae embed` (also under torchrun); see the module docstring for exit codes.
    Problems of the model, the arguments or OUT raise (`cli.main` makes them one line, exit 2)."""
    from . import load_model

    info = DistInfo()
    check_device(args.device)
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
        plan = find_jobs(args.inputs, args.mode, exclude=[out])
        summary = embed_files(runtime, plan, out, mode=args.mode, overwrite=args.overwrite, force=args.force,
                              hash_inputs=args.hash_inputs, keep_removed=args.keep_removed,
                              settings={"model": model, "checkpoint_sha256": sha, "precision": args.precision},
                              progress=False if args.no_progress else None, dist_info=info,
                              max_duration=args.max_duration)
        if info.is_main:
            _report(summary, out, args.keep_removed)
        return 1 if summary.failed else 0
    finally:
        shutdown(info)
