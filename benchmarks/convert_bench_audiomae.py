"""Time `hear-mwmae convert` on an Audio-MAE checkpoint of a real size in the authors' layout.

The authors' weights are not downloadable here, so this writes what their
`util/misc.save_model` writes for `mae_vit_<size>_patch16` with the released decoder (mode 1,
16 Swin blocks): `checkpoint-32.pth` = torch.save({model, optimizer, epoch, scaler, args})
with random weights, AdamW state (step / exp_avg / exp_avg_sq for every trained parameter, the
fixed position embeddings excluded, two parameter groups as theirs: no weight decay on biases
and 1-D parameters) and the training args as an argparse.Namespace. Then it converts the file
(full and encoder-only, through the CLI) and prints times, file sizes and parameter counts.
Baseline, measured in the same process: reading the file the safe way plus hashing it, which
every conversion must do.

    python benchmarks/convert_bench_audiomae.py [--size base] [--workdir /tmp/convert_bench_audiomae]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from hear_mwmae.checkpoint import load_checkpoint
from hear_mwmae.cli import main as cli_main
from hear_mwmae.config import audiomae_config
from hear_mwmae.convert import convert_source
from hear_mwmae.convert.audiomae import load_pickle_safely
from hear_mwmae.files import sha256_file
from hear_mwmae.model import MWMAE, count_parameters

# our key prefix -> the authors' (inverse of convert.audiomae.rename)
_TO_AUTHORS = (("decoder.blocks.", "decoder_blocks."), ("decoder.embed.", "decoder_embed."),
               ("decoder.norm.", "decoder_norm."), ("decoder.pred.", "decoder_pred."),
               ("decoder.pos_embed", "decoder_pos_embed"), ("decoder.mask_token", "mask_token"), ("encoder.", ""))
_FILE_ORDER = ("cls_token", "pos_embed", "mask_token", "decoder_pos_embed", "patch_embed.", "blocks.", "norm.",
               "decoder_embed.", "decoder_blocks.", "decoder_norm.", "decoder_pred.")


def authors_name(key: str) -> str:
    return next(theirs + key[len(ours):] for ours, theirs in _TO_AUTHORS if key.startswith(ours))


def training_args(size: str) -> argparse.Namespace:
    """main_pretrain.py's arguments as the released run used them (paths shortened)."""
    return argparse.Namespace(
        batch_size=8, epochs=33, accum_iter=1, model=f"mae_vit_{size}_patch16", input_size=224, mask_ratio=0.8,
        norm_pix_loss=True, weight_decay=0.0001, lr=0.0004, blr=0.0002, min_lr=0.0, warmup_epochs=3,
        data_path="", output_dir="./output_dir", log_dir="./output_dir", device="cuda", seed=0, resume="",
        start_epoch=0, num_workers=10, pin_mem=True, world_size=64, local_rank=-1, dist_on_itp=False,
        dist_url="env://", audio_exp=True, data_train="train.json", data_eval="eval.json", label_csv="labels.csv",
        freqm=0, timem=0, mixup=0, dataset="audioset", use_fbank=False, fbank_dir="", alpha=0.0, omega=1.0,
        mode=0, save_every_epoch=4, use_custom_patch=False, roll_mag_aug=True, split_pos=False,
        pos_trainable=False, use_nce=False, load_video=False, decoder_mode=1, mask_t_prob=0.7, mask_f_prob=0.3,
        mask_2d=False, init_audio_with_video_mae=False, no_shift=False, distributed=True)


def write_authors_checkpoint(path: Path, size: str, seed: int = 0) -> int:
    """The authors' pre-training checkpoint for `size` (random weights and AdamW state). Returns
    the number of model parameters."""
    torch.manual_seed(seed)
    model = MWMAE(audiomae_config(size))
    ours = model.state_dict()
    order = {prefix: i for i, prefix in enumerate(_FILE_ORDER)}
    names = sorted(ours, key=lambda k: next(order[p] for p in _FILE_ORDER if authors_name(k).startswith(p)))
    state = OrderedDict((authors_name(k), ours[k]) for k in names)
    params = dict(model.named_parameters())
    trained = [params[k] for k in names if params[k].requires_grad]  # the pos embeddings are fixed
    no_decay = [p for p in trained if p.ndim <= 1]
    decay = [p for p in trained if p.ndim > 1]
    opt = torch.optim.AdamW([{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": 1e-4}],
                            lr=4e-4, betas=(0.9, 0.95))
    for p in trained:
        opt.state[p] = {"step": torch.tensor(32.0 * 31250), "exp_avg": torch.randn_like(p) * 1e-3,
                        "exp_avg_sq": torch.rand_like(p) * 1e-6}
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": state, "optimizer": opt.state_dict(), "epoch": 32, "scaler": scaler,
                "args": training_args(size)}, path)
    return sum(v.numel() for v in state.values())


def _timed(fn, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


_PEAK_RSS_CHILD = """import sys
from hear_mwmae.cli import main
main(sys.argv[1:])
print(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM:")))
"""


def _peak_rss_mb(args: list[str]) -> float | None:
    """Peak resident memory (VmHWM, Linux) of a fresh `hear-mwmae` process running `args`."""
    if not Path("/proc/self/status").exists():
        return None
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS_CHILD, *args], check=True, capture_output=True, text=True)
    return int(out.stdout.split()[-1]) / 1024


def parameter_counts(size: str) -> dict[str, int]:
    with torch.device("meta"):
        swin, glob = MWMAE(audiomae_config(size)), MWMAE(audiomae_config(size, decoder="global"))
    return {"encoder": count_parameters(swin.encoder), "decoder mode 1 (Swin)": count_parameters(swin.decoder),
            "total mode 1": count_parameters(swin), "decoder mode 0 (global, 8 blocks)": count_parameters(glob.decoder)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="base", choices=["small", "base", "large"])
    p.add_argument("--workdir", type=Path, default=Path("/tmp/convert_bench_audiomae"))
    p.add_argument("--repeats", type=int, default=2, help="best of N (the machine may be shared)")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-memory runs in fresh processes")
    p.add_argument("--keep", action="store_true", help="keep the written files")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    source = args.workdir / "checkpoint-32.pth"
    n_params, write_s = _timed(write_authors_checkpoint, source, args.size)
    full, enc = args.workdir / "full.pt", args.workdir / "encoder.pt"
    baseline_s = convert_s = cli_full_s = cli_enc_s = float("inf")
    for _ in range(max(1, args.repeats)):  # interleaved, best of N
        baseline_s = min(baseline_s, _timed(lambda: (load_pickle_safely(source), sha256_file(source)))[1])
        convert_s = min(convert_s, _timed(convert_source, source)[1])
        cli_full_s = min(cli_full_s, _timed(cli_main, ["convert", str(source), str(full)])[1])
        cli_enc_s = min(cli_enc_s, _timed(cli_main, ["convert", str(source), str(enc), "--encoder-only"])[1])
    _, load_s = _timed(load_checkpoint, enc)
    mb = lambda f: f.stat().st_size / 1e6  # noqa: E731
    print(f"Audio-MAE {args.size} (mae_vit_{args.size}_patch16, decoder mode 1), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    for what, n in parameter_counts(args.size).items():
        print(f"  parameters, {what}: {n:,}")
    print(f"  authors' checkpoint-32.pth (model + AdamW state + args): {mb(source):.1f} MB, {n_params:,} model "
          f"parameters, written in {write_s:.1f} s")
    print(f"  baseline, safe torch.load + sha256 of the file: {baseline_s:.2f} s")
    print(f"  convert_source (in memory): {convert_s:.2f} s ({convert_s / baseline_s:.2f} x baseline)")
    print(f"  hear-mwmae convert, full:         {cli_full_s:.2f} s ({cli_full_s / baseline_s:.2f} x baseline) "
          f"-> {mb(full):.1f} MB")
    print(f"  hear-mwmae convert, encoder-only: {cli_enc_s:.2f} s ({cli_enc_s / baseline_s:.2f} x baseline) "
          f"-> {mb(enc):.1f} MB")
    print(f"  load_checkpoint of the encoder-only file: {load_s:.2f} s")
    if not args.no_rss:
        rss_full = _peak_rss_mb(["convert", str(source), str(full)])
        rss_enc = _peak_rss_mb(["convert", str(source), str(enc), "--encoder-only"])
        if rss_full is not None:
            print(f"  peak RSS of a fresh `hear-mwmae convert`: full {rss_full:.0f} MB, encoder-only {rss_enc:.0f} MB")
    if not args.keep:
        shutil.rmtree(args.workdir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
