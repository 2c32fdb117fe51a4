"""`hear-mwmae embed`: audio files -> embedding files, resumable and crash-safe.

    hear-mwmae embed --model weights/base.pt data/ extra.flac --out emb/ [--mode scene|timestamp]

Inputs are files or folders (searched recursively for files whose extension is a format
libsndfile reads: wav, flac, ogg, mp3, aiff, ...; dot-files are ignored). Any file named
directly is attempted whatever its extension. Every file is decoded with `soundfile`,
mixed down to mono by averaging its channels, and resampled to 16 kHz with
`scipy.signal.resample_poly(x, 16000 // g, sr // g)`, g = gcd(sr, 16000) (polyphase FIR,
exact rational ratio; output length ceil(n * 16000 / sr)).

Outputs mirror each file's path relative to the folder it was found in (a file named
directly goes to the top of OUT), with the audio extension replaced:
    scene:      OUT/<rel>/<name>.npy     float32 (D,)       mean over time
    timestamp:  OUT/<rel>/<name>.npy     float32 (steps, D) embeddings
                OUT/<rel>/<name>.ts.npy  float32 (steps,)   step centres in ms
    OUT/index.jsonl  one JSON object per input file: input, output, timestamps, status
                     ("ok" or "error: ..."), duration_s, sample_rate, channels, steps, dim,
                     model, mode, precision.

Resuming: a file is skipped when the index says "ok" for the same model, mode and precision
and its outputs exist (unless --overwrite). Outputs are written to a temporary file and
renamed (`os.replace`), so a crash never leaves a half-written array. An unreadable,
empty or non-finite file is logged, recorded as an error and skipped. Exit code: 0 when
every file is embedded (or already was), 1 when any input failed (the others are still
embedded), 2 when the model cannot be loaded. Files of equal length (after resampling) are
embedded together in one batch; other files one at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from .audio import AUDIO_SUFFIXES, SAMPLE_RATE, AudioError, read_audio
from .files import atomic_write

log = logging.getLogger(__name__)

INDEX_NAME = "index.jsonl"
WINDOW_FILES = 16  # decode at most this many files before embedding them ...
WINDOW_SAMPLES = SAMPLE_RATE * 600  # ... or about 10 min of 16 kHz audio, whichever comes first


@dataclass(frozen=True)
class Job:
    """One input file and its outputs (paths relative to the output folder)."""

    source: Path
    output: Path
    timestamps: Path | None


@dataclass
class Summary:
    """What a run did: files embedded, skipped as already done, and failures (input, reason)."""

    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


# ----------------------------------------------------------------------------- planning
def find_jobs(inputs: Iterable[str | Path], mode: str) -> tuple[list[Job], list[tuple[str, str]]]:
    """Expand files / folders into jobs. Returns (jobs, problems as (input, reason))."""
    jobs: list[Job] = []
    problems: list[tuple[str, str]] = []
    seen_sources: set[Path] = set()
    owner: dict[Path, Path] = {}  # output path -> source that claimed it
    for item in map(Path, inputs):
        if item.is_dir():
            found = [(p, p.relative_to(item)) for p in sorted(item.rglob("*"))
                     if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
                     and not any(part.startswith(".") for part in p.relative_to(item).parts)]
            if not found:
                log.warning("%s: no audio files found", item)
        elif item.is_file():
            found = [(item, Path(item.name))]
        else:
            problems.append((str(item), "error: no such file or directory"))
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
                problems.append((str(source), f"error: output {output} clashes with that of {clash[0]}"))
                continue
            owner.update({p: source for p in (output, stamps) if p is not None})
            jobs.append(Job(source, output, stamps))
    return jobs, problems


# ----------------------------------------------------------------------------- outputs
def atomic_save(path: Path, array: np.ndarray) -> None:
    """`np.save` so that a crash never leaves a half-written file."""
    with atomic_write(path) as fh:
        np.save(fh, np.ascontiguousarray(array))


class Index:
    """`index.jsonl`: appended one line per file as it finishes; the last line per output wins."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.path = out_dir / INDEX_NAME
        self.records: dict[str, dict[str, Any]] = {}
        if self.path.exists():
            for n, line in enumerate(self.path.read_text().splitlines(), 1):
                try:
                    record = json.loads(line)
                    self.records[record.get("output") or record["input"]] = record
                except (json.JSONDecodeError, KeyError, AttributeError):
                    log.warning("%s:%d: ignoring a malformed line (interrupted run?)", self.path, n)

    def is_done(self, job: Job, settings: dict[str, str]) -> bool:
        record = self.records.get(job.output.as_posix())
        return (record is not None and record.get("status") == "ok" and record.get("input") == str(job.source)
                and all(record.get(k) == v for k, v in settings.items())
                and all((self.out_dir / p).is_file() for p in (job.output, job.timestamps) if p is not None))

    def add(self, record: dict[str, Any]) -> None:
        self.records[record.get("output") or record["input"]] = record
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")

    def compact(self) -> None:
        """Rewrite the index atomically with one line per output (drops superseded lines)."""
        with atomic_write(self.path, "w") as fh:
            fh.writelines(json.dumps(r) + "\n" for r in self.records.values())


# ----------------------------------------------------------------------------- embedding
def _decoded(jobs: list[Job], on_error: Callable[[Job, BaseException, dict[str, Any]], None],
             ) -> Iterator[list[tuple[Job, np.ndarray, dict[str, Any]]]]:
    """Yield windows of decoded files (bounded count and samples); report read failures."""
    window: list[tuple[Job, np.ndarray, dict[str, Any]]] = []
    samples = 0
    for job in jobs:
        try:
            audio, info = read_audio(job.source)
        except Exception as exc:  # soundfile raises several types for unreadable files
            on_error(job, exc, {})
            continue
        window.append((job, audio, info))
        samples += audio.shape[0]
        if len(window) >= WINDOW_FILES or samples >= WINDOW_SAMPLES:
            yield window
            window, samples = [], 0
    if window:
        yield window


def embed_files(runtime: torch.nn.Module, jobs: list[Job], out_dir: str | Path, *, mode: str = "scene",
                settings: dict[str, str] | None = None, overwrite: bool = False,
                problems: Iterable[tuple[str, str]] = (), progress: bool | None = None) -> Summary:
    """Embed `jobs` into `out_dir` with an `MWMAERuntime`; see the module docstring.

    `settings` (model, precision) are stored in the index and must match to skip a file.
    `problems` (input, reason) from `find_jobs` are recorded in the index and the summary.
    `progress`: None shows a tqdm bar only on a terminal.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = {**(settings or {}), "mode": mode}
    index, summary = Index(out_dir), Summary()
    for item, reason in problems:
        log.error("%s: %s", item, reason)
        summary.failed.append((item, reason))
        index.add({"input": item, "output": None, "timestamps": None, "status": reason, **settings})
    todo = [j for j in jobs if overwrite or not index.is_done(j, settings)]
    summary.skipped = len(jobs) - len(todo)
    if summary.skipped:
        log.info("skipping %d file(s) already embedded (use --overwrite to redo them)", summary.skipped)
    bar = tqdm(total=len(jobs), initial=summary.skipped, unit="file", desc="embed",
               disable=None if progress is None else not progress)

    def record(job: Job, status: str, info: dict[str, Any], **extra: Any) -> None:
        index.add({"input": str(job.source), "output": job.output.as_posix(),
                   "timestamps": job.timestamps.as_posix() if job.timestamps else None,
                   "status": status, **info, **extra, **settings})
        bar.update(1)

    def failed(job: Job, exc: BaseException, info: dict[str, Any]) -> None:
        reason = f"error: {type(exc).__name__}: {exc}".replace("\n", " ")
        log.error("%s: %s", job.source, reason)
        summary.failed.append((str(job.source), reason))
        record(job, reason, info)

    with logging_redirect_tqdm(), bar:
        for window in _decoded(todo, failed):
            groups: dict[int, list[tuple[Job, np.ndarray, dict[str, Any]]]] = defaultdict(list)
            for item in window:
                groups[item[1].shape[0]].append(item)
            for group in groups.values():
                results = None
                try:
                    results = _embed_group(runtime, [audio for _, audio, _ in group], mode)
                except Exception as exc:  # retry one by one so that one bad file cannot sink the others
                    if len(group) == 1:
                        failed(group[0][0], exc, group[0][2])
                        continue
                    log.warning("a batch of %d files failed (%s); embedding them one by one", len(group), exc)
                for i, (job, audio, info) in enumerate(group):
                    try:
                        emb, stamps = results[i] if results else _embed_group(runtime, [audio], mode)[0]
                        atomic_save(out_dir / job.output, emb)
                        if job.timestamps is not None:
                            atomic_save(out_dir / job.timestamps, stamps)
                    except Exception as exc:
                        failed(job, exc, info)
                        continue
                    summary.embedded += 1
                    extra = {"steps": int(stamps.shape[0])} if mode == "timestamp" else {}
                    record(job, "ok", info, dim=int(emb.shape[-1]), **extra)
    index.compact()
    return summary


@torch.inference_mode()
def _embed_group(runtime: torch.nn.Module, clips: list[np.ndarray], mode: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Equal-length (n,) clips -> per clip (scene (D,) | embeddings (steps, D), timestamps (steps,) | (0,))."""
    audio = torch.from_numpy(np.stack(clips))  # (B, n)
    emb, stamps = runtime.embed(audio, scene_only=mode == "scene")  # (B, [steps,] D), (B, steps | 0)
    return list(zip(emb.cpu().numpy(), stamps.cpu().numpy()))


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `embed` subcommand (calls `run`) to a CLI's subparsers."""
    from .runtime import PRECISIONS

    p = subparsers.add_parser(
        "embed", help="embed audio files / folders into .npy files (resumable)",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    p.add_argument("--model", required=True, metavar="CKPT",
                   help="checkpoint: .pt / .safetensors, an authors' run directory, or hf://owner/repo/file.pt")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if needed)")
    p.add_argument("--mode", choices=("scene", "timestamp"), default="scene",
                   help="scene: one (D,) vector per file; timestamp: (steps, D) + .ts.npy times in ms")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    p.add_argument("--max-chunks-per-batch", type=int, default=None, metavar="N",
                   help="2 s chunks per encoder pass (bounds memory; default 16 on CPU, 128 on GPU)")
    p.add_argument("--overwrite", action="store_true", help="re-embed files whose outputs already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point of `hear-mwmae embed`. Returns 0 if all files are embedded (or were already),
    1 if any input failed (the others are still embedded), 2 if the model cannot be loaded."""
    from . import load_model

    model = args.model if str(args.model).startswith("hf://") else str(Path(args.model).resolve())
    try:
        runtime = load_model(model, device=args.device, precision=args.precision,
                             max_chunks_per_batch=args.max_chunks_per_batch)
    except (OSError, ValueError, TypeError) as exc:  # missing / invalid checkpoint, bad options
        log.error("cannot load the model %s: %s", args.model, exc)
        return 2
    jobs, problems = find_jobs(args.inputs, args.mode)
    summary = embed_files(runtime, jobs, args.out, mode=args.mode, overwrite=args.overwrite,
                          settings={"model": model, "precision": args.precision}, problems=problems,
                          progress=False if args.no_progress else None)
    log.info("embedded %d, skipped %d (already done), failed %d; index: %s",
             summary.embedded, summary.skipped, len(summary.failed), Path(args.out) / INDEX_NAME)
    return 1 if summary.failed else 0
