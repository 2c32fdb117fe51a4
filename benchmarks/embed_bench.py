"""Where the time of `hear-mwmae embed` goes: decoding, the model, and the pipeline that overlaps them,
and what a large corpus costs in memory and in files.

    PYTHONPATH=. python benchmarks/embed_bench.py --files 40 --seconds 30 --workers 0,1,2 \
        --precisions fp32,int8 --rounds 2 --count-clips 10000 --json embed_bench.json

Writes `--files` 44.1 kHz stereo FLAC files of `--seconds` each (tones and noise), then measures,
in this one process, rounds interleaved, best round kept (audio seconds per wall second):

  decode   `embed_decode.Decoder(workers).map` over the files, clips dropped: what decoding,
           mixing and resampling to 16 kHz deliver with that many worker processes (0: here)
  model    the files decoded once beforehand, then `embed_batch.plan_batches` + `embed_clips`
           exactly as `embed` batches them: what the model delivers (per precision)
  embed    `embed.embed_files(..., workers=W)` into a fresh folder: end to end (decoding, the
           model, the index and the .npy writes), per precision and worker count

and prints end to end as a fraction of its bound, min(decode capacity at W, model capacity):
the pipeline is perfect at 1.0. Where decoders and the model share the same few cores that
bound counts the cores twice, so a second one is printed: the CPU bound, cores / (CPU seconds
of decoding + of the model per audio second) = cores / (1 / decode at 0 workers + 1 / model at
one thread), what perfect overlap on these cores would give. Decoding processes are fresh
interpreters (numpy, scipy, libsndfile; no torch): their start, timed alone as `worker_start_s`
(one worker decoding one 0.1 s file, less the same decode in this process), is paid once per
run and is part of every workers >= 1 time above, so use a corpus of at least a few minutes of
decoding.

`--count-clips N`: N tiny clips (0.1 s, 16 kHz wav) embedded by `hear-mwmae embed` in a child
process per format (npy, parquet): its peak resident memory (VmHWM), the largest peak of its
decoding workers, and the number of files and folders left in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEAK = """
import atexit, sys
def _peak():
    with open("/proc/self/status") as fh:
        print("PEAK_KIB", next(l.split()[1] for l in fh if l.startswith("VmHWM:")), file=sys.stderr)
atexit.register(_peak)
from hear_mwmae import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def write_corpus(folder: Path, files: int, seconds: float, sr: int = 44100) -> list[Path]:
    """`files` stereo FLAC files of tones and noise at `sr`."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr))[:, None] / sr
    paths = []
    for i in range(files):
        f0 = 110.0 * (1 + i % 7)
        x = 0.3 * np.sin(2 * np.pi * np.array([f0, 1.5 * f0]) * t) + 0.05 * rng.standard_normal((t.shape[0], 2))
        path = folder / f"clip{i:05d}.flac"
        sf.write(path, x.astype(np.float32), sr, subtype="PCM_16")
        paths.append(path)
    return paths


def time_decode(jobs: list, workers: int) -> float:
    """Seconds to decode every job with `workers` processes (their start included)."""
    from hear_mwmae.embed_decode import Decoder

    start = time.perf_counter()
    with Decoder(workers) as decoder:
        for _, clip in decoder.map(jobs, lambda job: job.source):
            if clip.error:
                raise SystemExit(f"decoding failed: {clip.error}")
    return time.perf_counter() - start


def time_model(runtime, clips: list[np.ndarray]) -> float:
    """Seconds the model takes on decoded clips, batched as `embed` batches them."""
    from hear_mwmae.embed_batch import clip_chunks, embed_clips, plan_batches
    from hear_mwmae.embed_pipeline import BATCH_CHUNKS

    start = time.perf_counter()
    for batch in plan_batches(clips, lambda c: clip_chunks(runtime, c.shape[0]),
                              BATCH_CHUNKS * runtime.max_chunks_per_batch):
        embed_clips(runtime, batch, True)
    return time.perf_counter() - start


def time_embed(runtime, plan, out: Path, settings: dict, workers: int) -> float:
    """Seconds of `embed_files` into a fresh `out` (npy, scene)."""
    from hear_mwmae.embed import embed_files

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = embed_files(runtime, plan, out, settings=settings, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    if summary.failed or summary.embedded != len(plan.jobs):
        raise SystemExit(f"embed failed: {summary.failed[:3]}")
    return seconds


def speeds(args: argparse.Namespace, tmp: Path) -> dict:
    import torch

    import hear_mwmae
    from hear_mwmae.audio import read_audio
    from hear_mwmae.embed_plan import find_jobs
    from hear_mwmae.sources import checkpoint_sha256

    start = time.perf_counter()
    write_corpus(tmp / "corpus", args.files, args.seconds)
    print(f"wrote {args.files} x {args.seconds:g} s of 44.1 kHz stereo FLAC in {time.perf_counter() - start:.1f} s",
          flush=True)
    plan = find_jobs([tmp / "corpus"], "scene")
    audio_s = args.files * args.seconds
    clips = [read_audio(job.source)[0] for job in plan.jobs]
    runtimes = {p: hear_mwmae.load_model(args.model, device="cpu", precision=p) for p in args.precisions}
    sha = checkpoint_sha256(args.model)
    best: dict[tuple, float] = {}

    def keep(key: tuple, seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds)

    for r in range(args.rounds):  # interleaved, so that a busy moment of a shared machine hits all alike
        for w in args.workers:
            keep(("decode", w), time_decode(plan.jobs, w))
        for p, runtime in runtimes.items():
            keep(("model", p), time_model(runtime, clips))
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                keep(("model1", p), time_model(runtime, clips))
            finally:
                torch.set_num_threads(threads)
            for w in args.workers:
                settings = {"model": args.model, "checkpoint_sha256": sha, "precision": p}
                keep(("embed", p, w), time_embed(runtime, plan, tmp / "out", settings, w))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    rate = {k: audio_s / v for k, v in best.items()}
    start = worker_start(tmp)
    rows, cores = [], len(os.sched_getaffinity(0))
    for p in args.precisions:
        cpu_bound = cores / (1 / rate[("decode", 0)] + 1 / rate[("model1", p)]) if ("decode", 0) in rate else None
        for w in args.workers:
            bound = min(rate[("decode", w)], rate[("model", p)])
            rows.append({"precision": p, "workers": w, "decode_audio_s_per_s": rate[("decode", w)],
                         "model_audio_s_per_s": rate[("model", p)], "embed_audio_s_per_s": rate[("embed", p, w)],
                         "model_1_thread_audio_s_per_s": rate[("model1", p)],
                         "fraction_of_bound": rate[("embed", p, w)] / bound,
                         "cpu_bound_audio_s_per_s": cpu_bound,
                         "fraction_of_cpu_bound": rate[("embed", p, w)] / min(bound, cpu_bound) if cpu_bound else None,
                         "vs_workers_0": rate[("embed", p, w)] / rate[("embed", p, args.workers[0])]})
    return {"files": args.files, "seconds": args.seconds, "audio_s": audio_s, "worker_start_s": start, "rows": rows}


def worker_start(tmp: Path) -> float:
    """Seconds a decoding worker costs to start (best of 3): one worker decoding one 0.1 s file,
    less the same decode in this process."""
    import soundfile as sf

    from hear_mwmae.embed_plan import find_jobs

    sf.write(tmp / "short.wav", np.zeros(1600, np.float32), 16000)
    jobs = find_jobs([tmp / "short.wav"], "scene").jobs
    return min(time_decode(jobs, 1) - time_decode(jobs, 0) for _ in range(3))


def count_files(root: Path) -> tuple[int, int]:
    """(files, folders) below `root`."""
    files = folders = 0
    for _, dirs, names in os.walk(root):
        files += len(names)
        folders += len(dirs)
    return files, folders


def corpus_cost(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Peak memory and files left in OUT for `--count-clips` tiny clips, per format."""
    import soundfile as sf

    folder = tmp / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(args.count_clips):
        sub = folder / f"d{i // 1000:03d}"
        sub.mkdir(exist_ok=True)
        sf.write(sub / f"c{i:06d}.wav", (0.1 * rng.standard_normal(1600)).astype(np.float32), 16000)
    results = []
    for fmt in ("npy", "parquet"):
        out = tmp / f"count-{fmt}"
        workers = max(w for w in args.workers)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", PEAK, "embed", "--no-progress", "--model", args.model,
                               str(folder), "--out", str(out), "--format", fmt, "--workers", str(workers)],
                              capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise SystemExit(f"embed --format {fmt} failed ({done.returncode}): {done.stderr[-3000:]}")
        peak = int([line for line in done.stderr.splitlines() if line.startswith("PEAK_KIB")][-1].split()[1])
        largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest process waited for
        files, folders = count_files(out)
        results.append({"format": fmt, "clips": args.count_clips, "workers": workers, "seconds": seconds,
                        "peak_rss_mib": peak / 1024,
                        "largest_process_mib": largest / 1024 if largest > before else None,
                        "files_in_out": files, "folders_in_out": folders})
        print(f"{args.count_clips} clips, --format {fmt}: {files} files and {folders} folders in OUT, peak RSS "
              f"{peak / 1024:.0f} MiB, {seconds:.0f} s", flush=True)
    return results


def table(result: dict) -> str:
    lines = ["| precision | workers | decode audio-s/s | model audio-s/s (1 thread) | embed audio-s/s | "
             "embed / min(decode, model) | CPU bound | embed / min(bounds) | embed vs workers 0 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["speeds"]["rows"] if result.get("speeds") else []:
        cpu = "-" if r["cpu_bound_audio_s_per_s"] is None else f"{r['cpu_bound_audio_s_per_s']:.0f}"
        of_cpu = "-" if r["fraction_of_cpu_bound"] is None else f"{r['fraction_of_cpu_bound']:.2f}"
        lines.append(f"| {r['precision']} | {r['workers']} | {r['decode_audio_s_per_s']:.0f} | "
                     f"{r['model_audio_s_per_s']:.0f} ({r['model_1_thread_audio_s_per_s']:.0f}) | "
                     f"{r['embed_audio_s_per_s']:.0f} | {r['fraction_of_bound']:.2f} | "
                     f"{cpu} | {of_cpu} | "
                     f"{r['vs_workers_0']:.2f} |")
    if result.get("corpus"):
        lines += ["", "| format | clips | files in OUT | folders in OUT | peak RSS MiB (embed) | largest process MiB "
                  "| seconds |", "|---|---|---|---|---|---|---|"]
        for c in result["corpus"]:
            largest = f"{c['largest_process_mib']:.0f}" if c["largest_process_mib"] else "-"
            lines.append(f"| {c['format']} | {c['clips']} | {c['files_in_out']} | {c['folders_in_out']} | "
                         f"{c['peak_rss_mib']:.0f} | {largest} | {c['seconds']:.0f} |")
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="demo-tiny", help="what load_model takes (default: the bundled demo-tiny)")
    p.add_argument("--files", type=int, default=40)
    p.add_argument("--seconds", type=float, default=30.0, help="length of each FLAC file")
    p.add_argument("--workers", type=_ints, default=[0, 1, 2], help="worker counts, comma-separated; first = baseline")
    p.add_argument("--precisions", type=lambda s: s.split(","), default=["fp32", "int8"])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--count-clips", type=int, default=0, help="also embed this many tiny clips per format (0: no)")
    p.add_argument("--skip-speeds", action="store_true", help="only --count-clips")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    result: dict = {"model": args.model, "cores": len(os.sched_getaffinity(0)), "load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_speeds:
            result["speeds"] = speeds(args, Path(tmp))
        if args.count_clips:
            result["corpus"] = corpus_cost(args, Path(tmp))
    result["load_after"] = os.getloadavg()
    print(table(result))
    if result.get("speeds"):
        print(f"a decoding worker takes {result['speeds']['worker_start_s']:.2f} s to start (once per run)")
    print(f"load average before {result['load_before'][0]:.2f}, after {result['load_after'][0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
