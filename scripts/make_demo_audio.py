"""Write the synthetic demo corpus: WAV clips + labels.csv, deterministic from a seed.

    python scripts/make_demo_audio.py data/demo                  # 1024 clips of 3 s, seed 0
    python scripts/make_demo_audio.py data/probe --seed 1 -n 200

Clip i of seed s is `hear_mwmae.pretrain.synth.make_clip(s, i)`: notes, chirps, noise
bursts, click trains and mixtures (see that module). 16 kHz mono PCM-16 WAV.
"""

from __future__ import annotations

import argparse
import csv
import logging
from pathlib import Path

import soundfile as sf
from tqdm import tqdm

from hear_mwmae.pretrain.synth import SAMPLE_RATE, make_clip

log = logging.getLogger("make_demo_audio")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("-n", "--num-clips", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per clip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in tqdm(range(args.num_clips), desc="clips"):
        clip = make_clip(args.seed, i, args.duration, SAMPLE_RATE)
        name = f"clip_{i:05d}.wav"
        sf.write(args.out / name, clip.waveform, SAMPLE_RATE, subtype="PCM_16")
        rows.append((name, clip.kind, clip.pitch_class))
    with (args.out / "labels.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["files", "kind", "pitch_class"])
        writer.writerows(rows)
    log.info("wrote %d clips (seed %d, %.1f s each) to %s", args.num_clips, args.seed, args.duration, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
