"""`hear-mwmae tag`: label audio files with a fine-tuned model (a checkpoint with a classifier).

    hear-mwmae tag recordings/ --model audiomae-base-as2m-ft --top-k 5
    hear-mwmae tag a.wav b.flac --model runs/ft/model.pt --per-chunk --out tags.jsonl

Files and folders are found and read exactly as `hear-mwmae embed` reads them (formats,
mixing to mono, resampling to 16 kHz; every entry that is not audio or cannot be read is
listed with its reason). Each file's scores come from the mean of its chunks' logits
(sigmoid for a multi-label model such as AudioSet's, softmax for a single-label one);
--per-chunk adds every chunk's top labels with its time span. Output: a table on stdout,
or --out FILE.jsonl (one JSON object per input, with its status) or FILE.csv (one row per
input x label). Exit code: 0 all tagged, 1 some files failed, 2 unusable model or arguments
(a model without a classifier names what to load instead).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

log = logging.getLogger(__name__)
OUT_SUFFIXES = (".jsonl", ".csv")


def _top(scores: np.ndarray, labels: list[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-scores, kind="stable")[:k]
    return [{"label": labels[i], "score": round(float(scores[i]), 6)} for i in order]


def tag_group(runtime: torch.nn.Module, clips: list[np.ndarray], top_k: int, per_chunk: bool) -> list[dict[str, Any]]:
    """Equal-length decoded clips, each (N,) -> per clip {"top": [{label, score}], and with
    per_chunk "chunks": [{start_s, end_s, centre_ms, top}]}."""
    from . import scores

    labels = runtime.labels
    logits, centres = runtime.logits(torch.from_numpy(np.stack(clips)), per_chunk=True)  # (B, C, classes), (B, C)
    clip_scores = scores(logits.mean(dim=1), runtime).cpu().numpy()
    chunk_scores = scores(logits, runtime).cpu().numpy() if per_chunk else None
    seconds = runtime.config.chunk_frames * runtime.frontend.hop_ms / 1000
    duration = len(clips[0]) / runtime.sample_rate
    out = []
    for b in range(len(clips)):
        result: dict[str, Any] = {"top": _top(clip_scores[b], labels, top_k)}
        if per_chunk:
            result["chunks"] = [{"start_s": round(i * seconds, 3), "end_s": round(min((i + 1) * seconds, duration), 3),
                                 "centre_ms": round(float(c), 1), "top": _top(s, labels, top_k)}
                                for i, (c, s) in enumerate(zip(centres[b].tolist(), chunk_scores[b]))]
        out.append(result)
    return out


class Writer:
    """Results to stdout (a readable table), JSONL or CSV, one input at a time."""

    def __init__(self, out: Path | None) -> None:
        self.out = out
        self.fh = open(out, "w", newline="", encoding="utf-8") if out else None
        self.csv = csv.writer(self.fh) if out is not None and out.suffix == ".csv" else None
        if self.csv is not None:
            self.csv.writerow(["input", "status", "chunk", "start_s", "end_s", "rank", "label", "score"])

    def write(self, record: dict[str, Any]) -> None:
        if self.fh is None:
            if record["status"] == "ok":
                sys.stdout.write(f"{record['input']}\n" + "".join(
                    f"  {t['score']:.3f}  {t['label']}\n" for t in record["top"]))
                for c in record.get("chunks", []):
                    best = ", ".join(f"{t['label']} {t['score']:.2f}" for t in c["top"][:3])
                    sys.stdout.write(f"    [{c['start_s']:.2f}-{c['end_s']:.2f} s] {best}\n")
            return
        if self.csv is None:
            self.fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        if record["status"] != "ok":
            self.csv.writerow([record["input"], record["status"], "", "", "", "", "", ""])
            return
        rows = [("", "", "", record["top"])] + [(i, c["start_s"], c["end_s"], c["top"])
                                                 for i, c in enumerate(record.get("chunks", []))]
        for chunk, start, end, top in rows:
            for rank, t in enumerate(top, 1):
                self.csv.writerow([record["input"], "ok", chunk, start, end, rank, t["label"], t["score"]])

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def run(args: argparse.Namespace) -> int:
    from . import load_model
    from .checkpoint import NO_HEAD
    from .embed import _decoded, find_jobs
    from .labels import LabelError, read_labels, relabel

    if args.top_k < 1:
        log.error("--top-k must be >= 1, got %d", args.top_k)
        return 2
    if args.out is not None and args.out.suffix.lower() not in OUT_SUFFIXES:
        log.error("--out %s: give a .jsonl or .csv file", args.out)
        return 2
    try:
        runtime = load_model(str(args.model), device=args.device, precision=args.precision,
                             max_chunks_per_batch=args.max_chunks_per_batch)
    except (OSError, ValueError, TypeError) as exc:
        log.error("cannot load the model %s: %s", args.model, exc)
        return 2
    if runtime.config.head is None:
        log.error("%s: %s", args.model, NO_HEAD)
        return 2
    if args.labels is not None:
        try:
            runtime.config = dataclasses.replace(runtime.config, head=relabel(runtime.config.head,
                                                                               read_labels(args.labels)))
        except LabelError as exc:
            log.error("%s", exc)
            return 2
    elif not runtime.config.head.label_source:
        log.warning("%s has no class names (class_0 ... class_%d); name them with --labels FILE.csv", args.model,
                    runtime.config.head.num_classes - 1)
    plan = find_jobs(args.inputs, "scene")
    writer = Writer(args.out)
    failed = list(plan.failed)
    tagged = 0
    try:
        for item, reason in plan.failed + plan.not_audio:
            writer.write({"input": item, "status": reason})
        bar = tqdm(total=len(plan.jobs), unit="file", desc="tag", disable=args.no_progress or None)

        def on_error(job: Any, exc: BaseException, _extra: dict[str, Any]) -> None:
            reason = f"error: {exc}" if isinstance(exc, ValueError) else f"error: {type(exc).__name__}: {exc}"
            log.error("%s: %s", job.source, reason)
            failed.append((str(job.source), reason))
            writer.write({"input": str(job.source), "status": reason})
            bar.update(1)

        with bar:
            for window in _decoded([(job, {}) for job in plan.jobs], on_error):
                groups: dict[int, list] = defaultdict(list)
                for job, clip, facts in window:  # (no spill folder: every clip is in memory)
                    groups[clip.num_samples].append((job, clip.samples, facts))
                for group in groups.values():
                    try:
                        results = tag_group(runtime, [audio for _, audio, _ in group], args.top_k, args.per_chunk)
                    except Exception:  # one bad file must not sink the others: one by one
                        results = None
                    for i, (job, audio, facts) in enumerate(group):
                        try:
                            result = results[i] if results else tag_group(runtime, [audio], args.top_k,
                                                                           args.per_chunk)[0]
                        except Exception as exc:
                            on_error(job, exc, facts)
                            continue
                        writer.write({"input": str(job.source), "status": "ok", "duration_s": facts["duration_s"],
                                      "sample_rate": facts["sample_rate"], **result})
                        tagged += 1
                        bar.update(1)
    finally:
        writer.close()
    log.info("tagged %d file(s), failed %d, not audio %d%s", tagged, len(failed), len(plan.not_audio),
             f"; results: {args.out}" if args.out else "")
    return 1 if failed else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `tag` subcommand to a CLI's subparsers."""
    from .runtime import PRECISIONS

    p = subparsers.add_parser("tag", help="label audio files with a fine-tuned model (top-k classes)",
                              description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="audio files or folders (searched recursively)")
    p.add_argument("--model", required=True, metavar="CKPT",
                   help="a model with a classifier: audiomae-base-as2m-ft, RUN/model.pt of `hear-mwmae finetune`, ...")
    p.add_argument("--top-k", type=int, default=5, help="labels per file (and per chunk) (default 5)")
    p.add_argument("--per-chunk", action="store_true", help="also the top labels of every chunk, with its time span")
    p.add_argument("--out", type=Path, metavar="FILE", help="write results.jsonl or results.csv instead of a table")
    p.add_argument("--labels", type=Path, metavar="FILE.csv",
                   help="class names for the model's outputs (index,mid,display_name csv, or one name per line)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32",
                   help="fp32 (default); bf16 / fp16 autocast; int8 (CPU)")
    p.add_argument("--max-chunks-per-batch", type=int, default=None, metavar="N", help="chunks per encoder pass")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


__all__ = ["register", "run", "tag_group"]
