"""Peak memory of `hear-mwmae embed` on one long file, against the whole-clip path, and how close
their embeddings are (issue 19: audio decoded and embedded in blocks).

    PYTHONPATH=. python benchmarks/long_file_bench.py --minutes 120 --model demo-tiny

Writes a 44.1 kHz stereo FLAC of `--minutes` (a few tones and noise, written a block at a time),
then runs in separate processes, each reporting its own peak resident memory (VmHWM):
  embed   `hear-mwmae embed FILE --out DIR` (streamed: the file goes to a temporary 16 kHz file,
          then is swept twice in blocks)
  whole   `read_audio(FILE)` + `get_scene_embeddings` on the whole clip (the path `embed` took
          before: the file, its 16 kHz copy, its spectrogram and its chunks in memory at once)
and prints both peaks, both times and the difference of the two scene embeddings.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WHOLE = """
import sys, json, numpy as np, torch, hear_mwmae
from hear_mwmae.audio import read_audio
torch.set_num_threads(int(sys.argv[4]))
audio, _ = read_audio(sys.argv[1])
model = hear_mwmae.load_model(sys.argv[2], device="cpu")
np.save(sys.argv[3], hear_mwmae.get_scene_embeddings(torch.from_numpy(audio[None]), model)[0].numpy())
"""
EMBED = """
import sys, torch
from hear_mwmae import cli
torch.set_num_threads(int(sys.argv.pop()))
sys.exit(cli.main(sys.argv[1:]))
"""
PEAK = """
import atexit
def _peak():
    with open("/proc/self/status") as fh:
        print("PEAK_KIB", next(l.split()[1] for l in fh if l.startswith("VmHWM:")), file=__import__("sys").stderr)
atexit.register(_peak)
"""


def write_flac(path: Path, minutes: float, sr: int = 44100, block_s: int = 60) -> None:
    """A stereo FLAC of tones and noise, generated and written one block at a time."""
    import soundfile as sf

    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", sr, 2, subtype="PCM_16", format="FLAC") as f:
        total = int(minutes * 60 * sr)
        for start in range(0, total, block_s * sr):
            n = min(block_s * sr, total - start)
            t = (start + np.arange(n))[:, None] / sr
            f0 = 220 * (1 + (start // (block_s * sr)) % 5)
            x = 0.3 * np.sin(2 * np.pi * np.array([f0, 1.5 * f0]) * t) + 0.05 * rng.standard_normal((n, 2))
            f.write(x.astype(np.float32))


def run(code: str, *args: str) -> tuple[float, float, str]:
    """(peak RSS MiB, seconds, stderr) of `python -c code args`."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", PEAK + code, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {done.stderr[-3000:]}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("PEAK_KIB")][-1]
    return int(peak.split()[1]) / 1024, seconds, done.stderr


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=120)
    p.add_argument("--model", default="demo-tiny")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-whole", action="store_true", help="only the streamed embed")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flac = tmp / "long.flac"
        start = time.perf_counter()
        write_flac(flac, args.minutes)
        print(f"wrote {flac.stat().st_size / 1e6:.0f} MB of FLAC ({args.minutes:g} min, 44.1 kHz stereo) in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        results = {"minutes": args.minutes, "model": args.model, "threads": args.threads}
        peak, seconds, _ = run(EMBED, "embed", "--no-progress", "--model", args.model, str(flac), "--out",
                               str(tmp / "out"), str(args.threads))
        results["embed"] = {"peak_rss_mib": round(peak), "seconds": round(seconds, 1)}
        print(f"embed (streamed): peak RSS {peak:.0f} MiB, {seconds:.0f} s", flush=True)
        if not args.skip_whole:
            peak, seconds, _ = run(WHOLE, str(flac), args.model, str(tmp / "whole.npy"), str(args.threads))
            results["whole"] = {"peak_rss_mib": round(peak), "seconds": round(seconds, 1)}
            print(f"whole clip: peak RSS {peak:.0f} MiB, {seconds:.0f} s", flush=True)
            streamed = np.load(next((tmp / "out").rglob("long.flac.npy")))
            whole = np.load(tmp / "whole.npy")
            diff = float(np.abs(streamed - whole).max())
            rel = float(np.linalg.norm(streamed - whole) / np.linalg.norm(whole))
            cos = float(streamed @ whole / np.linalg.norm(streamed) / np.linalg.norm(whole))
            results["difference"] = {"max_abs": diff, "relative": rel, "cosine": cos,
                                     "max_abs_value": float(np.abs(whole).max())}
            print(f"scene embeddings: max |diff| {diff:.2e} (largest value {np.abs(whole).max():.3g}), "
                  f"relative {rel:.2e}, cosine {cos:.9f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
