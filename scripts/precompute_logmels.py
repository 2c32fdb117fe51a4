"""Decode audio once and store raw spectrograms (T, n_mels) float32 .npy for `hear-mwmae pretrain`.

    python scripts/precompute_logmels.py data/audioset_wavs data/audioset_logmel
    hear-mwmae pretrain --recipe released --data data/audioset_logmel/manifest.txt --out runs/as
    python scripts/precompute_logmels.py --recipe audiomae-base data/audioset_wavs data/audioset_fbank

`--recipe` picks the frontend of that pre-training recipe (default `released`: MW-MAE's
log-mel 80; the Audio-MAE recipes: Kaldi fbank 128). Recipes with `gain_aug` need audio
files (the gain acts on the waveform): turn it off (`--set gain_aug=false`) to train on these.

Reads anything `hear-mwmae pretrain --data` accepts (folders, manifests, files), mirrors
the folder layout of each source, and writes `manifest.txt` listing the .npy files.
Unreadable inputs are reported and skipped. Per-clip normalisation is left to training.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from hear_mwmae.frontend import build_frontend
from hear_mwmae.pretrain.data import find_files, load_audio
from hear_mwmae.pretrain.recipes import RECIPES, get_recipe

log = logging.getLogger("precompute_logmels")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="folder, manifest or file")
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--recipe", default="released", choices=sorted(RECIPES), help="whose frontend to use")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    frontend = build_frontend(get_recipe(args.recipe).frontend)
    base = args.source if args.source.is_dir() else args.source.parent
    written, failed = [], 0
    for path in tqdm(find_files([args.source]), desc="log-mel"):
        rel = path.relative_to(base) if path.is_relative_to(base) else Path(path.name)
        target = (args.out / rel).with_suffix(".npy")
        try:
            audio = torch.from_numpy(load_audio(path, frontend.cfg.sample_rate))
            if audio.numel() == 0:
                raise ValueError("no samples")
            with torch.no_grad():
                mel = frontend.log_mel(audio[None])[0].numpy()  # (T, n_mels), before normalisation
        except Exception as exc:  # any decoding failure: report and go on
            log.warning("skipping %s (%s: %s)", path, type(exc).__name__, exc)
            failed += 1
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, mel.astype(np.float32))
        written.append(target.relative_to(args.out))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "manifest.txt").write_text("".join(f"{p}\n" for p in written))
    log.info("wrote %d log-mels to %s (%d unreadable inputs skipped)", len(written), args.out, failed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
