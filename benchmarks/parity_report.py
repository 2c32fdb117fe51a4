"""Print the measured max-abs errors against the authors' golden outputs, per fixture.

The tests (tests/test_parity.py) assert the tolerances; this prints the actual numbers.

    python benchmarks/parity_report.py [--fixtures ../shared/fixtures]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hear_mwmae.convert import convert_run_dir
from hear_mwmae.frontend import LogMelFrontend
from hear_mwmae.model import MWMAE, set_fused_attention
from hear_mwmae.runtime import MWMAERuntime

WAVES = ["wav0_chirp_noise_2s", "wav1_tones_noise_3p37s", "wav2_clicks_0p5s", "wav3_edge_200frames_1p99s"]
FIXTURES = ["mwmae_tiny", "mae_cls_tiny", "mwmae_shift_tiny"]


def err(a: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(a.detach().numpy() - ref).max())


@torch.no_grad()
def report(folder: Path) -> str:
    frontend = LogMelFrontend()
    rows = ["| fixture | params | log-mel | features | timestamp emb | scene emb | latent sdpa/ref "
            "| pred sdpa/ref | loss rel sdpa/ref | convert s |", "|" + "---|" * 10]
    for name in FIXTURES:
        f = folder / name
        start = time.perf_counter()
        c = convert_run_dir(f / "ckpt")
        seconds = time.perf_counter() - start
        model = MWMAE(c.config.model).eval()
        model.load_state_dict(c.state_dict)
        runtime = MWMAERuntime(model.encoder, c.config, device="cpu")
        logmel = feats = stamps = scene = 0.0
        for wave in WAVES:
            audio = torch.from_numpy(np.load(f / f"{wave}.npy"))[None]
            ref_mel = np.load(f / f"{wave}.logmel_norm.npy")[..., 0]
            ref_emb = np.load(f / f"{wave}.timestamp_embeddings.npy")
            logmel = max(logmel, err(frontend(audio), ref_mel))
            if ref_mel.shape[1] >= 200:  # the first chunk has no padding: compare the model alone
                feats = max(feats, err(model.encoder.forward_features(torch.from_numpy(ref_mel[:, :200])),
                                       ref_emb[:, :50]))
            stamps = max(stamps, err(runtime.embed(audio)[0], ref_emb))
            scene = max(scene, err(runtime.embed(audio, scene_only=True)[0],
                                   np.load(f / f"{wave}.scene_embeddings.npy")))
        x = torch.from_numpy(np.load(f / "decoder_input_x.npy"))[..., 0]
        keep = torch.from_numpy(np.load(f / "decoder_ids_keep.npy")).long()
        restore = torch.from_numpy(np.load(f / "decoder_ids_restore.npy")).long()
        ref_loss = float(np.load(f / "decoder_loss.npy"))
        paths = []
        for fused in (True, False):
            set_fused_attention(model, fused)
            out = model(x, keep, restore)
            paths.append((err(model.encoder.forward_masked(x, keep), np.load(f / "decoder_latent.npy")),
                          err(out.pred, np.load(f / "decoder_pred.npy")), abs(out.loss.item() - ref_loss) / ref_loss))
        n = sum(v.numel() for v in c.state_dict.values())
        pair = [f"{paths[0][i]:.1e} / {paths[1][i]:.1e}" for i in range(3)]
        rows.append(f"| {name} | {n:,} | {logmel:.1e} | {feats:.1e} | {stamps:.1e} | {scene:.1e} | "
                    f"{' | '.join(pair)} | {seconds:.2f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fixtures", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "fixtures")
    args = p.parse_args(argv)
    print(report(args.fixtures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
