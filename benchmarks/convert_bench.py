"""Time `hear-mwmae convert` on a release-format run directory of a real model size.

The authors' weights cannot be downloaded here, so this writes a run directory in the
release's format (Flax train state: params + Adam mu/nu + step, and config.json) with
random weights of the chosen size, then converts it and reports the times, the peak memory
of a fresh `hear-mwmae convert` process, the parameter count and the file sizes.

    python benchmarks/convert_bench.py --size base --released-config [--layout orbax]

`--released-config` stores `params/mask_token` and its two Adam moments as bfloat16, as
the released config (precision "bfloat16") does; `--layout orbax` writes the checkpoint as
the orbax directory flax 0.7.x saves by default (`checkpoint_<step>/checkpoint`). The
baseline is what the converter did before it streamed the file (decode all of it, hash it
in a second pass, convert `params`), timed in the same process and measured in a fresh one.

The writers here (`pack_array`, `bfloat16_bits`, `orbax_tree`) encode exactly as
flax.serialization / orbax 0.3.x do; the tests use them to build fixture variants.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import torch

from hear_mwmae.checkpoint import load_checkpoint
from hear_mwmae.cli import main as cli_main
from hear_mwmae.config import RELEASED_DECODER_WINDOWS, model_config
from hear_mwmae.convert import (config_from_release, convert_params, convert_run_dir, flatten, parameter_table,
                                read_flax_msgpack)
from hear_mwmae.files import sha256_file
from hear_mwmae.model import MWMAE

log = logging.getLogger("convert_bench")

# inverse of the converter's transforms, keyed by what the forward transform does to a shape
_INVERSE = {2: lambda a: a.T, 4: lambda a: a.transpose(2, 3, 1, 0)}  # Linear (out,in)->(in,out); OIHW->HWIO
RELEASED_BF16_LEAVES = ("params/mask_token", "opt_state/0/mu/mask_token", "opt_state/0/nu/mask_token")
# field order of the release's TrainState_v2 (flax struct): the order orbax writes the entries in
TRAIN_STATE_FIELDS = ("step", "batch_stats", "buffers", "dynamic_scale", "params", "frozen_params", "aux_rng_keys",
                      "opt_state")


def bfloat16_bits(a: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest, ties to even, as JAX and
    ml_dtypes cast; NaN stays a (quiet) NaN of the same sign."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    return np.where(np.isnan(a), ((u >> 16) | np.uint32(0x0040)).astype(np.uint16), rounded)


def pack_array(arr: np.ndarray, dtype: str | None = None) -> msgpack.ExtType:
    """An ndarray leaf as flax.serialization writes it (ext 1: shape, dtype name, C-order bytes).
    `dtype="bfloat16"` stores float32 `arr` as JAX's bfloat16 would."""
    arr = np.require(arr, requirements="C")  # (ascontiguousarray would make 0-d arrays 1-d)
    if dtype == "bfloat16":
        payload = (arr.shape, "bfloat16", bfloat16_bits(arr).tobytes("C"))
    else:
        payload = (arr.shape, arr.dtype.name, arr.tobytes("C"))
    return msgpack.ExtType(1, msgpack.packb(payload, use_bin_type=True))


def repack_bfloat16(leaf: msgpack.ExtType) -> msgpack.ExtType:
    """A float32 ndarray ext leaf re-encoded as bfloat16."""
    shape, dtype, data = msgpack.unpackb(leaf.data, raw=False)
    assert dtype == "float32", dtype
    return pack_array(np.frombuffer(data, dtype=np.float32).reshape(shape), "bfloat16")


def get_leaf(tree: dict, path: str) -> Any:
    for part in path.split("/"):
        tree = tree[part]
    return tree


def set_leaf(tree: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split("/")
    for part in parents:
        tree = tree[part]
    tree[leaf] = value


def orbax_tree(state: dict[str, Any]) -> dict[str, Any]:
    """A legacy flax state dict -> the tree orbax 0.3.x's PyTreeCheckpointHandler aggregates for the
    same TrainState: entries in field order, the optax chain state a list (not {"0": ..}), and
    empty optax states (EmptyState) None."""
    out = {k: state[k] for k in TRAIN_STATE_FIELDS if k in state}
    out.update({k: v for k, v in state.items() if k not in out})
    opt = out.get("opt_state")
    if isinstance(opt, dict) and all(k.isdigit() for k in opt):
        out["opt_state"] = [opt[str(i)] or None for i in range(len(opt))]
    return out


def write_orbax_dir(step_dir: Path, state: dict[str, Any]) -> Path:
    """Write `state` (legacy layout, ext leaves) as the orbax directory flax 0.7.2 saves: the
    aggregate msgpack `checkpoint` inside `checkpoint_<step>/`, written into a temporary
    directory that is renamed when complete."""
    tmp = step_dir.with_name(step_dir.name + ".orbax-checkpoint-tmp-1690000000000000")
    tmp.mkdir(parents=True)
    (tmp / "checkpoint").write_bytes(msgpack.packb(orbax_tree(state), use_bin_type=True))
    tmp.rename(step_dir)
    return step_dir


def _nest(flat: dict[str, np.ndarray], prefix: str, bf16: tuple[str, ...] = ()) -> dict:
    """{'a/b': array} -> nested ext leaves; leaves whose `prefix/a/b` is in `bf16` as bfloat16."""
    tree: dict = {}
    for key, value in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = pack_array(value, "bfloat16" if f"{prefix}/{key}" in bf16 else None)
    return tree


def write_release_run_dir(run_dir: Path, size: str, seed: int = 0, *, released_config: bool = False,
                          layout: str = "msgpack") -> int:
    """A release-format run directory (`config.json` + `checkpoint_1000`) for `mae_<size>` with the
    released decoder windows. `released_config`: mask_token and its Adam moments in bfloat16;
    `layout`: "msgpack" (legacy file) or "orbax" (directory). Returns the number of parameters."""
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
    bf16 = RELEASED_BF16_LEAVES if released_config else ()
    train_state = {
        "step": pack_array(np.array(1000, dtype=np.int32)), "params": _nest(flat, "params", bf16),
        "opt_state": {"0": {"count": pack_array(np.array(1000, dtype=np.int32)),
                            "mu": _nest(zeros, "opt_state/0/mu", bf16),
                            "nu": _nest(zeros, "opt_state/0/nu", bf16)},
                      "1": {}, "2": {"count": pack_array(np.array(1000, np.int32))}},
        "batch_stats": {}, "buffers": {}, "frozen_params": {}, "dynamic_scale": None,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    if layout == "orbax":
        write_orbax_dir(run_dir / "checkpoint_1000", train_state)
    elif layout == "msgpack":
        (run_dir / "checkpoint_1000").write_bytes(msgpack.packb(train_state))
    else:
        raise ValueError(f"layout {layout!r}: choose msgpack or orbax")
    (run_dir / "config.json").write_text(json.dumps({
        "audio_config": {"sample_rate": 16000, "features": "precomputed", "normalize_spec": True},
        "model": {"arch": f"mae_{size}", "type": "mae",
                  "model_args": {"decoder_window_sizes": list(RELEASED_DECODER_WINDOWS)}},
        "precision": "bfloat16" if released_config else "float32"}))
    return sum(v.size for v in flat.values())


def _timed(fn, *args) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


_CONVERT_CHILD = """import sys
from hear_mwmae.cli import main
main(sys.argv[1:])
"""
_BASELINE_CHILD = """import sys
from pathlib import Path
from benchmarks.convert_bench import baseline_convert
baseline_convert(Path(sys.argv[1]), Path(sys.argv[2]))
"""
_PRINT_PEAK = """
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def baseline_convert(run_dir: Path, data_file: Path) -> dict[str, torch.Tensor]:
    """What the converter did before it streamed: decode the whole file, hash it in a second
    pass, then convert `params`."""
    state = read_flax_msgpack(data_file)
    sha256_file(data_file)
    cfg, naming = config_from_release(json.loads((run_dir / "config.json").read_text()))
    return convert_params(flatten(state["params"]), cfg, naming)


def _peak_rss_mb(code: str, args: list[str]) -> float | None:
    """Peak resident memory (VmHWM, Linux) of a fresh Python process running `code` with `args`."""
    if not Path("/proc/self/status").exists():
        return None
    out = subprocess.run([sys.executable, "-c", code + _PRINT_PEAK, *args], check=True, capture_output=True,
                         text=True, cwd=Path(__file__).resolve().parents[1])
    return int(out.stdout.split()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/convert_bench"))
    p.add_argument("--released-config", action="store_true",
                   help="mask_token and its Adam moments in bfloat16, as the released config stores them")
    p.add_argument("--layout", choices=["msgpack", "orbax"], default="msgpack")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory run in a fresh process")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    run_dir = args.workdir / f"mae_{args.size}_{args.layout}{'_released' if args.released_config else ''}"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    n_params, write_s = _timed(lambda: write_release_run_dir(run_dir, args.size, released_config=args.released_config,
                                                             layout=args.layout))
    source = run_dir / "checkpoint_1000"
    data_file = source / "checkpoint" if source.is_dir() else source

    convert_s = baseline_s = float("inf")
    for _ in range(3):  # interleaved, best of 3: the machine is shared
        converted, seconds = _timed(convert_run_dir, run_dir)
        convert_s = min(convert_s, seconds)
        baseline_s = min(baseline_s, _timed(baseline_convert, run_dir, data_file)[1])
    full, enc = args.workdir / "full.pt", args.workdir / "encoder.pt"
    cli_full_s = cli_enc_s = float("inf")
    for _ in range(2):  # what `hear-mwmae convert` does: convert and write the file (fsynced)
        cli_full_s = min(cli_full_s, _timed(cli_main, ["convert", str(run_dir), str(full)])[1])
        cli_enc_s = min(cli_enc_s, _timed(cli_main, ["convert", str(run_dir), str(enc), "--encoder-only"])[1])
    _, load_s = _timed(load_checkpoint, enc)
    rss = None if args.no_rss else (_peak_rss_mb(_CONVERT_CHILD, ["convert", str(run_dir), str(enc), "--encoder-only"]),
                                    _peak_rss_mb(_BASELINE_CHILD, [str(run_dir), str(data_file)]))

    n_enc = sum(v.numel() for k, v in converted.state_dict.items() if k.startswith("encoder."))
    print(f"size {args.size}, layout {args.layout}, released config {args.released_config}: "
          f"{n_params:,} parameters ({n_enc:,} encoder); stored non-float32: {converted.provenance['source_dtypes']}")
    print(f"release checkpoint (params + Adam state): {data_file.stat().st_size / 1e6:.1f} MB "
          f"({converted.provenance['source_file']}), written in {write_s:.1f} s")
    print(f"baseline (decode whole file, sha256 pass, convert params): {baseline_s:.2f} s")
    print(f"convert_run_dir: {convert_s:.2f} s ({baseline_s / convert_s:.2f}x faster than the baseline)")
    print(f"hear-mwmae convert: full {cli_full_s:.2f} s, --encoder-only {cli_enc_s:.2f} s; "
          f"load encoder-only .pt: {load_s:.2f} s")
    if rss is not None and None not in rss:
        print(f"peak RSS of a fresh process: `hear-mwmae convert --encoder-only` {rss[0]:.0f} MB, "
              f"baseline {rss[1]:.0f} MB")
    print(f"ours: full {full.stat().st_size / 1e6:.1f} MB, encoder-only {enc.stat().st_size / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
