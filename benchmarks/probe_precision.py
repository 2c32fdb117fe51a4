"""Does a lower precision change what a linear probe can read from the embeddings?

    PYTHONPATH=. nice python benchmarks/probe_precision.py weights/demo-tiny.pt --precisions fp32,int8,bf16

The tasks, clips and probe of `scripts/probe_demo.py` (held-out synthetic sounds of seed 1:
`kind`, 5 classes; `pitch-class`, 12 classes), with scene embeddings of one checkpoint
computed at each precision (`hear_mwmae.load_model(..., precision=...)`, and `onnx-int8` /
`onnx-fp32`: the encoder through ONNX Runtime). Prints test accuracies side by side and the
worst per-clip cosine of each precision's scene embeddings to the first one's.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

import hear_mwmae

REPO = Path(__file__).resolve().parents[1]


def _probe_demo():
    spec = importlib.util.spec_from_file_location("probe_demo", REPO / "scripts" / "probe_demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scene(checkpoint: Path, precision: str, audio: torch.Tensor, tmp: Path) -> np.ndarray:
    if precision.startswith("onnx-"):
        from hear_mwmae.onnx_export import export_onnx, runtime_with_onnx

        path = export_onnx(checkpoint, tmp / f"{precision}.onnx", int8=precision == "onnx-int8")
        model = runtime_with_onnx(hear_mwmae.load_model(str(checkpoint), device="cpu"), path,
                                  threads=torch.get_num_threads())
    else:
        model = hear_mwmae.load_model(str(checkpoint), device="cpu", precision=precision)
    return torch.cat([hear_mwmae.get_scene_embeddings(audio[i:i + 64], model)
                      for i in range(0, len(audio), 64)]).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, nargs="?", default=REPO / "weights" / "demo-tiny.pt")
    p.add_argument("--precisions", default="fp32,int8", help="comma list: fp32, bf16, fp16, int8, onnx-fp32, onnx-int8")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("-n", "--num-clips", type=int, default=1000)
    p.add_argument("--num-notes", type=int, default=600)
    p.add_argument("--duration", type=float, default=1.99)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    demo = _probe_demo()
    clips = [demo.make_clip(args.seed, i, args.duration) for i in range(args.num_clips)]
    notes = [demo.make_clip(args.seed, args.num_clips + i, args.duration, kind="note") for i in range(args.num_notes)]
    audio = torch.from_numpy(np.stack([c.waveform for c in clips + notes]))
    kind = np.array([demo.KINDS.index(c.kind) for c in clips])
    pitch = np.array([c.pitch_class for c in notes])
    precisions = args.precisions.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        feats = {prec: scene(args.checkpoint, prec, audio, Path(tmp)) for prec in precisions}
    ref = feats[precisions[0]]
    for prec, f in feats.items():
        cos = (f * ref).sum(1) / (np.linalg.norm(f, axis=1) * np.linalg.norm(ref, axis=1))
        rows.append((prec, demo.probe(f[:len(clips)], kind, args.seed), demo.probe(f[len(clips):], pitch, args.seed),
                     float(cos.min())))
    out = [f"{'precision':<10} {'kind (5)':>9} {'pitch-class (12)':>17} {'worst scene cos vs ' + precisions[0]:>26}",
           *(f"{n:<10} {a:>9.3f} {b:>17.3f} {c:>26.5f}" for n, a, b, c in rows)]
    sys.stdout.write("\n".join(out) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
