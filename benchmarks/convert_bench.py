"""Time `hear-mwmae convert` on a release-format run directory of a real model size.

The authors' weights cannot be downloaded here, so this writes a run directory in the
release's format (Flax msgpack train state: params + Adam mu/nu + step, and config.json)
with random weights of the chosen size, then converts it and reports the time, the
parameter count and the file sizes (full and encoder-only).

    python benchmarks/convert_bench.py --size base [--workdir /tmp/convert_bench]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import msgpack
import numpy as np
import torch

from hear_mwmae.checkpoint import load_checkpoint, save_checkpoint
from hear_mwmae.config import RELEASED_DECODER_WINDOWS, model_config
from hear_mwmae.convert import convert_run_dir, parameter_table
from hear_mwmae.model import MWMAE

log = logging.getLogger("convert_bench")

# inverse of the converter's transforms, keyed by what the forward transform does to a shape
_INVERSE = {2: lambda a: a.T, 4: lambda a: a.transpose(2, 3, 1, 0)}  # Linear (out,in)->(in,out); OIHW->HWIO


def _pack_array(arr: np.ndarray) -> msgpack.ExtType:
    arr = np.require(arr, requirements="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    return msgpack.ExtType(1, msgpack.packb((list(arr.shape), arr.dtype.name, arr.tobytes())))


def _nest(flat: dict[str, np.ndarray]) -> dict:
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = _pack_array(value)
    return tree


def write_release_run_dir(run_dir: Path, size: str, seed: int = 0) -> int:
    """A release-format run directory (`config.json` + `checkpoint_<step>`) for `mae_<size>`
    with the released decoder windows. Returns the number of parameters."""
    cfg = model_config(size)
    torch.manual_seed(seed)
    state = MWMAE(cfg).state_dict()
    naming = {"encoder": False, "decoder": True}
    flat = {}
    for flax_key, key, _ in parameter_table(cfg, naming):
        value = state[key].numpy()
        if flax_key.endswith("relative_position_bias_table"):
            value = value.reshape(-1, 1)
        elif flax_key.endswith("kernel"):
            value = _INVERSE[value.ndim](value)
        flat[flax_key] = value
    zeros = {k: np.zeros_like(v) for k, v in flat.items()}
    train_state = {
        "step": _pack_array(np.array(1000, dtype=np.int32)), "params": _nest(flat),
        "opt_state": {"0": {"count": _pack_array(np.array(1000, dtype=np.int32)), "mu": _nest(zeros),
                            "nu": _nest(zeros)}, "1": {}, "2": {"count": _pack_array(np.array(1000, np.int32))}},
        "batch_stats": {}, "buffers": {}, "frozen_params": {}, "dynamic_scale": None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoint_1000").write_bytes(msgpack.packb(train_state))
    (run_dir / "config.json").write_text(json.dumps({
        "audio_config": {"sample_rate": 16000, "features": "precomputed", "normalize_spec": True},
        "model": {"arch": f"mae_{size}", "type": "mae",
                  "model_args": {"decoder_window_sizes": list(RELEASED_DECODER_WINDOWS)}},
        "precision": "bfloat16"}))
    return sum(v.size for v in flat.values())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/convert_bench"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_dir = args.workdir / f"mae_{args.size}_run"
    n_params = write_release_run_dir(run_dir, args.size)
    source = next(run_dir.glob("checkpoint_*"))
    start = time.perf_counter()
    converted = convert_run_dir(run_dir)
    convert_s = time.perf_counter() - start
    full = save_checkpoint(args.workdir / "full.pt", converted.config, converted.state_dict,
                           provenance=converted.provenance)
    enc = save_checkpoint(args.workdir / "encoder.pt", converted.config, converted.state_dict,
                          provenance=converted.provenance, encoder_only=True)
    start = time.perf_counter()
    load_checkpoint(enc)
    load_s = time.perf_counter() - start
    n_enc = sum(v.numel() for k, v in converted.state_dict.items() if k.startswith("encoder."))
    print(f"size {args.size}: {n_params:,} parameters ({n_enc:,} encoder)")
    print(f"release checkpoint (params + Adam state): {source.stat().st_size / 1e6:.1f} MB")
    print(f"convert_run_dir: {convert_s:.2f} s   load encoder-only .pt: {load_s:.2f} s")
    print(f"ours: full {full.stat().st_size / 1e6:.1f} MB, encoder-only {enc.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
