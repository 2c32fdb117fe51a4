"""`hear-mwmae embed`: audio files -> embedding files, resumable, crash-safe, never stale.

    hear-mwmae embed --model mwmae-base-4x16-4l data/ extra.flac --out emb/ [--mode scene|timestamp]
    torchrun --nproc_per_node 4 -m hear_mwmae.cli embed --model ... data/ --out emb/

Inputs are files or folders. Folders are searched recursively for audio: the formats
libsndfile reads (wav, flac, ogg/opus, mp3, aiff, ...) and, decoded with PyAV when `av` is
installed, m4a/mp4, aac, wma, webm, ... Every other entry of a folder is listed in the
summary and the index with the reason it was not embedded (unsupported extension, hidden,
directory named like audio, ...). A file named directly is attempted whatever its
extension. Audio is mixed down to mono (mean of the channels) and resampled to 16 kHz with
`scipy.signal.resample_poly` at the exact rational ratio. Unreadable, empty, truncated
(fewer frames than the header promises) or non-finite files are errors.

Outputs mirror each file's path relative to the folder it was found in (a file named
directly goes to the top of OUT), with the audio extension replaced:
    scene:      OUT/<rel>/<name>.npy     float32 (D,)       mean over time
    timestamp:  OUT/<rel>/<name>.npy     float32 (steps, D) embeddings
                OUT/<rel>/<name>.ts.npy  float32 (steps,)   step centres in ms
    OUT/index.jsonl  one JSON object per input: input, output, timestamps, status ("ok",
                     "error: ...", "skipped: ...", "removed: ..."), reason (why it was
                     embedded: new, input changed, ...), input size / mtime [/ sha256],
                     duration_s, sample_rate, channels, steps, dim, model,
                     checkpoint_sha256, mode, precision.

Resuming: a result is reused only when its record is "ok" for the same checkpoint
(sha256 of its bytes, computed once per run), mode and precision, its outputs exist, and
the input still has the recorded size and modification time (--hash-inputs: the same
sha256 instead of the time). An OUT made with another checkpoint, mode or precision is
refused, naming the difference; --force deletes those outputs and re-embeds with this
run's settings. --overwrite re-embeds everything. Outputs are written to a temporary file
and renamed, so a crash never leaves a half-written array; a lock file (OUT/.embed.lock)
stops a second `embed` on the same OUT.

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
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .audio import AUDIO_SUFFIXES, SAMPLE_RATE, read_audio
from .embed_index import (INDEX_NAME, EmbedFolderError, FolderLock, Index, input_facts, merge_parts, part_name,
                          redo_reason, remove_outputs, settings_conflicts)
from .files import atomic_write
from .pretrain.distributed import DistInfo, barrier, gather_objects, init_from_env, shutdown
from .runtime import LOUD_AUDIO
from .sources import checkpoint_sha256

log = logging.getLogger(__name__)

WINDOW_FILES = 16  # decode at most this many files before embedding them ...
WINDOW_SAMPLES = SAMPLE_RATE * 600  # ... or about 10 min of 16 kHz audio, whichever comes first


class UsageError(ValueError):
    """Arguments that cannot work (e.g. a CUDA device on a machine without one)."""


@dataclass(frozen=True)
class Job:
    """One input file and its outputs (paths relative to the output folder)."""

    source: Path
    output: Path
    timestamps: Path | None

    @property
    def outputs(self) -> list[Path]:
        return [p for p in (self.output, self.timestamps) if p is not None]


@dataclass
class Plan:
    """What `find_jobs` found: jobs, failures (missing inputs, clashes) and entries that are not audio."""

    jobs: list[Job] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (input, "error: ...")
    not_audio: list[tuple[str, str]] = field(default_factory=list)  # (input, "skipped: ...")


@dataclass
class Summary:
    """What a run did: files embedded, reused (already done), failed and not audio (input, reason)."""

    embedded: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    not_audio: list[tuple[str, str]] = field(default_factory=list)

    def merge(self, other: "Summary") -> "Summary":
        return Summary(self.embedded + other.embedded, self.reused + other.reused,
                       self.failed + other.failed, self.not_audio + other.not_audio)


# ----------------------------------------------------------------------------- planning
def _scan(root: Path, exclude: set[Path], plan: Plan) -> list[tuple[Path, Path]]:
    """Audio files under `root` as (path, path relative to root); every other entry goes to `plan`."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            path = here / name
            if path.resolve() in exclude:  # the output folder itself
                continue
            if name.startswith("."):
                plan.not_audio.append((str(path), "skipped: hidden directory (not searched)"))
            elif path.is_symlink():
                plan.not_audio.append((str(path), "skipped: symbolic link to a directory (not followed)"))
            else:
                if Path(name).suffix.lower() in AUDIO_SUFFIXES:
                    plan.not_audio.append((str(path), "skipped: a directory named like an audio file "
                                                      "(its contents are searched)"))
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            suffix = path.suffix.lower()
            if name.startswith("."):
                plan.not_audio.append((str(path), "skipped: hidden file"))
            elif not path.exists():
                plan.failed.append((str(path), "error: unreadable: broken symbolic link"))
            elif not path.is_file():
                plan.not_audio.append((str(path), "skipped: not a regular file"))
            elif suffix in AUDIO_SUFFIXES:
                found.append((path, path.relative_to(root)))
            else:
                what = f"extension {suffix!r}" if suffix else "no extension"
                plan.not_audio.append((str(path), f"skipped: not audio ({what})"))
    return found


def find_jobs(inputs: Iterable[str | Path], mode: str, exclude: Iterable[str | Path] = ()) -> Plan:
    """Expand files / folders into jobs; folders under `exclude` (the output folder) are not searched."""
    plan = Plan()
    skip = {Path(p).resolve() for p in exclude}
    seen_sources: set[Path] = set()
    owner: dict[Path, Path] = {}  # output path -> source that claimed it
    for item in map(Path, inputs):
        if item.is_dir():
            before = len(plan.not_audio)
            found = _scan(item, skip, plan)
            if not found:
                log.warning("%s: no audio files found (%d other entries, listed in the index)", item,
                            len(plan.not_audio) - before)
        elif item.is_file():
            found = [(item, Path(item.name))]
        else:
            reason = "broken symbolic link" if item.is_symlink() else "no such file or directory"
            plan.failed.append((str(item), f"error: {reason}"))
            continue
        for source, rel in found:
            source = source.resolve()
            if source in seen_sources:
                continue
            seen_sources.add(source)
            output = rel.with_suffix(".npy")
            stamps = rel.with_suffix(".ts.npy") if mode == "timestamp" else None
            clash = [owner[p] for p in (output, stamps) if p is not None and p in owner]
            if clash:
                plan.failed.append((str(source), f"error: output {output} clashes with that of {clash[0]}"))
                continue
            owner.update({p: source for p in (output, stamps) if p is not None})
            plan.jobs.append(Job(source, output, stamps))
    return plan


# ----------------------------------------------------------------------------- settings
def check_device(name: str | None) -> None:
    """Raise UsageError with the fix when `--device name` cannot be used on this machine."""
    from .runtime import check_device as check

    try:
        check(name, f"--device {name}", "--device cpu")
    except ValueError as exc:
        raise UsageError(str(exc)) from None


# ----------------------------------------------------------------------------- outputs
def atomic_save(path: Path, array: np.ndarray) -> None:
    """`np.save` so that a crash never leaves a half-written file."""
    with atomic_write(path) as fh:
        np.save(fh, np.ascontiguousarray(array))


def _prepare_folder(out_dir: Path, settings: dict[str, Any], force: bool) -> None:
    """Refuse (or, with `force`, clear) results of other settings in `out_dir`. Rank 0 only."""
    index = Index(out_dir)
    message, keys = settings_conflicts(index, settings)
    if not keys:
        return
    if not force:
        raise EmbedFolderError(f"{out_dir} holds embeddings made with other settings: {message}. Use another "
                               f"--out, or --force to delete those outputs and re-embed with this run's settings")
    removed = remove_outputs(index, keys, settings)
    index.compact()
    log.warning("--force: deleted %d output file(s) of %d input(s) made with other settings (%s)",
                removed, len(keys), message)


# ----------------------------------------------------------------------------- embedding
Decoded = tuple[Job, np.ndarray, dict[str, Any]]


def _decoded(jobs: list[tuple[Job, dict[str, Any]]], on_error: Callable[[Job, BaseException, dict[str, Any]], None],
             ) -> Iterator[list[Decoded]]:
    """Yield windows of decoded files (bounded count and samples); report read failures."""
    window: list[Decoded] = []
    samples = 0
    for job, extra in jobs:
        try:
            audio, info = read_audio(job.source)
        except Exception as exc:  # decoders raise several types for unreadable files
            on_error(job, exc, extra)
            continue
        window.append((job, audio, {**extra, **info}))
        samples += audio.shape[0]
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


def embed_files(runtime: torch.nn.Module, jobs: list[Job], out_dir: str | Path, *, settings: dict[str, Any],
                mode: str = "scene", overwrite: bool = False, force: bool = False, hash_inputs: bool = False,
                problems: Iterable[tuple[str, str]] = (), not_audio: Iterable[tuple[str, str]] = (),
                progress: bool | None = None, dist_info: DistInfo | None = None) -> Summary:
    """Embed `jobs` into `out_dir` with an `MWMAERuntime`; see the module docstring.

    `settings` must give `checkpoint_sha256` (see `checkpoint_sha256`) and `precision`, and may
    give `model`; they are stored in every record. `problems` / `not_audio` come from
    `find_jobs` and are recorded too. `progress`: None shows a tqdm bar only on a terminal.
    Under torchrun pass `dist_info`: each rank embeds its share of `jobs`; the returned
    summary is the whole run's, on every rank.
    """
    missing = {"checkpoint_sha256", "precision"} - set(settings)
    if missing:
        raise TypeError(f"settings must give {sorted(missing)}")
    info = dist_info or DistInfo()
    out_dir = Path(out_dir)
    settings = {**settings, "mode": mode}
    with contextlib.ExitStack() as stack:
        error = None
        if info.is_main:
            try:
                out_dir.mkdir(parents=True, exist_ok=True)
                stack.enter_context(FolderLock(out_dir))
                merge_parts(out_dir)
                _prepare_folder(out_dir, settings, force)
            except (EmbedFolderError, OSError) as exc:
                error = str(exc)
        error = _share(error, info)
        if error:
            raise EmbedFolderError(error)
        barrier(info)
        summary = _embed_share(runtime, jobs[info.rank::info.world_size], out_dir, settings, mode, overwrite,
                               hash_inputs, list(problems) if info.is_main else [],
                               list(not_audio) if info.is_main else [], progress, info)
        barrier(info)
        parts = gather_objects(summary, info)
        if info.is_main:
            Index(out_dir).compact()  # index.jsonl + every rank's part, one line per output
        barrier(info)
    total = Summary()
    for part in parts:
        total = total.merge(part)
    return total


def _embed_share(runtime: torch.nn.Module, jobs: list[Job], out_dir: Path, settings: dict[str, Any], mode: str,
                 overwrite: bool, hash_inputs: bool, problems: list[tuple[str, str]],
                 not_audio: list[tuple[str, str]], progress: bool | None, info: DistInfo) -> Summary:
    """This rank's part of `embed_files`: reuse what is valid, embed the rest, record everything."""
    index = Index(out_dir, writer=part_name(info.rank) if info.enabled else INDEX_NAME)
    summary = Summary(not_audio=not_audio)
    for item, reason in problems:
        log.error("%s: %s", item, reason)
        summary.failed.append((item, reason))
        index.add({"input": item, "output": None, "timestamps": None, "status": reason, **settings})
    for item, reason in not_audio:
        index.add({"input": item, "output": None, "timestamps": None, "status": reason})

    bar = tqdm(total=len(jobs), unit="file", desc="embed", disable=(None if progress is None else not progress)
               if info.is_main else True)

    def record(job: Job, status: str, extra: dict[str, Any], **fields: Any) -> None:
        index.add({"input": str(job.source), "output": job.output.as_posix(),
                   "timestamps": job.timestamps.as_posix() if job.timestamps else None,
                   "status": status, **extra, **fields, **settings})
        bar.update(1)

    def failed(job: Job, exc: BaseException, extra: dict[str, Any]) -> None:
        reason = f"error: {exc}" if isinstance(exc, ValueError) else f"error: {type(exc).__name__}: {exc}"
        reason = reason.replace("\n", " ")
        log.error("%s: %s", job.source, reason)
        summary.failed.append((str(job.source), reason))
        record(job, reason, extra)

    todo: list[tuple[Job, dict[str, Any]]] = []
    redo = Counter()
    for job in jobs:
        try:
            facts = input_facts(job.source, hash_inputs)
        except OSError as exc:
            failed(job, exc, {})
            continue
        reason = "--overwrite" if overwrite else redo_reason(index.records.get(job.output.as_posix()), job.source,
                                                            job.outputs, settings, facts, out_dir)
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

    with logging_redirect_tqdm(), bar:
        for window in _decoded(todo, failed):
            groups: dict[int, list[Decoded]] = defaultdict(list)
            for job, audio, extra in window:
                peak = float(np.abs(audio).max())
                if peak > LOUD_AUDIO:
                    log.warning("%s: peak %.3g is far outside [-1, 1]; embedded as it is (is it scaled as int16?)",
                                job.source, peak)
                    extra = {**extra, "warning": f"peak {peak:.3g} far outside [-1, 1]"}
                groups[audio.shape[0]].append((job, audio, extra))
            for group in groups.values():
                results = None
                try:
                    results = _embed_group(runtime, [audio for _, audio, _ in group], mode)
                except Exception as exc:  # retry one by one so that one bad file cannot sink the others
                    if len(group) == 1:
                        failed(group[0][0], exc, group[0][2])
                        continue
                    log.warning("a batch of %d files failed (%s); embedding them one by one", len(group), exc)
                for i, (job, audio, extra) in enumerate(group):
                    try:
                        emb, stamps = results[i] if results else _embed_group(runtime, [audio], mode)[0]
                        atomic_save(out_dir / job.output, emb)
                        if job.timestamps is not None:
                            atomic_save(out_dir / job.timestamps, stamps)
                    except Exception as exc:
                        failed(job, exc, extra)
                        continue
                    summary.embedded += 1
                    steps = {"steps": int(stamps.shape[0])} if mode == "timestamp" else {}
                    record(job, "ok", extra, dim=int(emb.shape[-1]), **steps)
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
                   help=f"a released model's name (default {DEFAULT_MODEL}; `hear-mwmae fetch --list`), .pt / "
                        ".safetensors, an authors' checkpoint, or hf://owner/repo/file.pt")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--mode", choices=("scene", "timestamp"), default="scene",
                   help="scene: one (D,) vector per file; timestamp: (steps, D) + .ts.npy times in ms")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available; "
                   "under torchrun cuda:LOCAL_RANK)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--max-chunks-per-batch", type=int, default=None, metavar="N",
                   help="2 s chunks per encoder pass (bounds memory; default 16 on CPU, 128 on GPU)")
    p.add_argument("--overwrite", action="store_true", help="re-embed every input, even results still valid")
    p.add_argument("--force", action="store_true",
                   help="use an OUT made with another checkpoint / mode / precision: delete those outputs first")
    p.add_argument("--hash-inputs", action="store_true",
                   help="decide whether an input changed by its sha256 instead of its modification time")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def _model_ref(text: str) -> str:
    from . import registry

    return text if text.startswith("hf://") or registry.is_name(text) else str(Path(text).resolve())


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


def _report(summary: Summary, out: Path) -> None:
    if summary.not_audio:
        kinds = Counter(reason.removeprefix("skipped: ").split(" (")[0] for _, reason in summary.not_audio)
        log.info("not embedded: %d entr%s that %s not audio (%s), e.g. %s; each is listed in %s with its reason",
                 len(summary.not_audio), *(("y", "is") if len(summary.not_audio) == 1 else ("ies", "are")),
                 ", ".join(f"{n} {k}" for k, n in kinds.items()), ", ".join(p for p, _ in summary.not_audio[:3]),
                 out / INDEX_NAME)
    log.info("embedded %d, reused %d (already done), failed %d, not audio %d; index: %s",
             summary.embedded, summary.reused, len(summary.failed), len(summary.not_audio), out / INDEX_NAME)


def run(args: argparse.Namespace) -> int:
    """Entry point of `hear-mwmae embed` (also under torchrun); see the module docstring for exit codes."""
    from . import load_model

    info = DistInfo()
    try:
        check_device(args.device)
        info = init_from_env(args.device)
        device = _device_for(args.device, info)
    except UsageError as exc:
        log.error("%s", exc)
        return 2
    try:
        error, runtime, sha = None, None, None
        model = _model_ref(str(args.model))
        try:
            sha = _share(checkpoint_sha256(model) if info.is_main else None, info)
            runtime = load_model(model, device=device, precision=args.precision,
                                 max_chunks_per_batch=args.max_chunks_per_batch)
        except (OSError, ValueError, TypeError) as exc:  # missing / invalid checkpoint, bad options
            error = f"cannot load the model {args.model}: {exc}"
        errors = [e for e in gather_objects(error, info) if e]
        if errors:
            log.error("%s", errors[0])
            return 2
        out = Path(args.out)
        plan = find_jobs(args.inputs, args.mode, exclude=[out])
        try:
            summary = embed_files(runtime, plan.jobs, out, mode=args.mode, overwrite=args.overwrite,
                                  force=args.force, hash_inputs=args.hash_inputs,
                                  settings={"model": model, "checkpoint_sha256": sha, "precision": args.precision},
                                  problems=plan.failed, not_audio=plan.not_audio,
                                  progress=False if args.no_progress else None, dist_info=info)
        except EmbedFolderError as exc:
            log.error("%s", exc)
            return 2
        if info.is_main:
            _report(summary, out)
        return 1 if summary.failed else 0
    finally:
        shutdown(info)
