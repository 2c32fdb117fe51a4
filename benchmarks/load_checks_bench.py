"""What the hostile-file checks cost at load: `load_checkpoint` + `build_encoder` with and without them.

    python benchmarks/load_checks_bench.py --size base [--repeats 4] [--threads 1]

Writes a random MW-MAE checkpoint of the chosen size (`hear_mwmae.config.ENCODER_SIZES`,
released decoder) into a temporary folder, then times, alternating in one process (so that
both see the same machine load), the load with every check of `docs/security.md` and the
load with the checks of the state dict switched off (the config's own value checks stay: they
are part of building a config). Prints one line and a JSON record with the medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

import hear_mwmae.checkpoint as checkpoint
import hear_mwmae.payload_checks as payload_checks
from hear_mwmae.config import ENCODER_SIZES, MWMAEConfig, model_config
from hear_mwmae.model import MWMAE


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="base", choices=sorted(ENCODER_SIZES))
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    checks = {"with": (payload_checks.check_state_dict, checkpoint._check_parts),
              "without": (lambda *a, **k: None, lambda *a, **k: None)}
    seconds: dict[str, list[float]] = {"with": [], "without": []}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        config = MWMAEConfig(model_config(args.size))
        path = checkpoint.save_checkpoint(Path(tmp) / f"{args.size}.pt", config, MWMAE(config.model).state_dict())
        size_mb = path.stat().st_size / 1e6
        try:
            for _ in range(args.repeats):
                for mode, (state_dict_check, parts_check) in checks.items():
                    payload_checks.check_state_dict, checkpoint._check_parts = state_dict_check, parts_check
                    start = time.perf_counter()
                    checkpoint.build_encoder(checkpoint.load_checkpoint(path))
                    seconds[mode].append(time.perf_counter() - start)
        finally:
            payload_checks.check_state_dict, checkpoint._check_parts = checks["with"]
    with_s, without_s = (statistics.median(seconds[m]) for m in ("with", "without"))
    record = {"size": args.size, "file_mb": round(size_mb, 1), "threads": args.threads, "repeats": args.repeats,
              "with_checks_s": round(with_s, 4), "without_checks_s": round(without_s, 4),
              "overhead": round(with_s / without_s - 1, 3)}
    print(f"load_checkpoint + build_encoder, MW-MAE {args.size} ({size_mb:.0f} MB), {args.threads} thread(s), "
          f"median of {args.repeats}: {with_s:.3f} s with the checks, {without_s:.3f} s without "
          f"({100 * record['overhead']:+.0f} %)")
    print(json.dumps(record))
    return record


if __name__ == "__main__":
    main()
