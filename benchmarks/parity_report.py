"""Print the measured max-abs errors against the authors' golden outputs, per fixture, for both
model families, from the golden data vendored in tests/golden (runs from a clone).

The tests (tests/test_parity.py, tests/test_audiomae_parity.py) assert the tolerances; this
prints the actual numbers. Every conversion goes through `convert_source`, as the CLI's.

    python benchmarks/parity_report.py [--family all|mwmae|audiomae|finetune]

The golden reader (tests/golden/__init__.py) is loaded from its file, not imported as
`tests.golden`: the HEAR toolchain's dcase_util installs a top-level `tests` package that
would shadow ours.

MW-MAE columns: log-mel (normalised, from audio), encoder features of each clip's unpadded first
chunk from the release's log-mel, timestamp / scene embeddings from audio (public runtime),
decoder latent / prediction / relative loss for the stored masks (SDPA / reference attention).
Audio-MAE columns: fbank from audio (normalised units, padded model input), encoder tokens from
the stored fbank, decoder latent / prediction (every 4th patch, as vendored) / relative loss
for the random and (audiomae_tiny) 2-D masks, HEAR timestamp / scene embeddings from audio
(`load_model` of the converted file), and whether the timestamps are exactly the reference.
Fine-tuned classifier (`audiomae_ft_tiny`): logits / pooled features / last-block tokens from
the stored fbank, logits from audio (`get_logits`; a 12.7 s clip's first chunk against the
authors' first 10.24 s), the 2-D-masked training logits, the BCE loss, every gradient (max abs,
and relative to the gradient's largest entry), every parameter after one AdamW step from the
authors' gradients and from ours.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import hear_mwmae
from hear_mwmae.checkpoint import save_checkpoint
from hear_mwmae.convert import convert_source
from hear_mwmae.config import FbankConfig
from hear_mwmae.frontend import KaldiFbankFrontend, LogMelFrontend, kaldi_mel_banks
from hear_mwmae.model import MWMAE, set_fused_attention

def _load_golden():
    folder = Path(__file__).resolve().parents[1] / "tests" / "golden"
    spec = importlib.util.spec_from_file_location("golden", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["golden"] = module  # a package: its own relative imports resolve
    spec.loader.exec_module(module)
    return module


golden = _load_golden()
AUDIOMAE_FIXTURES, FLAX_FIXTURES = golden.AUDIOMAE_FIXTURES, golden.FLAX_FIXTURES
array, keys, write_checkpoint = golden.array, golden.keys, golden.write_checkpoint

MW_WAVES = ["wav1_tones_noise_3p37s", "wav3_edge_200frames_1p99s"]
AM_WAVE = "wav0_chirp_noise_2s"  # the clip every Audio-MAE fixture has tokens for
AM_FBANK_WAVES = ["wav0_chirp_noise_2s", "wav3_clicks_0p5s"]


def err(a: torch.Tensor, ref: np.ndarray) -> float:
    return float(np.abs(a.detach().cpu().numpy() - np.asarray(ref)).max())


def pair(values: list[float]) -> str:
    return " / ".join(f"{v:.1e}" for v in values)


def _convert(name: str, folder: Path):
    start = time.perf_counter()
    c = convert_source(write_checkpoint(name, folder / name))
    seconds = time.perf_counter() - start
    model = MWMAE(c.config.model).eval()
    model.load_state_dict(c.state_dict, strict=True)
    return c, model, seconds


def _both_paths(model: MWMAE, fn) -> list[tuple[float, ...]]:
    out = []
    for fused in (True, False):
        set_fused_attention(model, fused)
        out.append(fn())
    set_fused_attention(model, True)
    return out


def _decoder(model: MWMAE, name: str, x: torch.Tensor, kind: str, pred_key: str, every: int) -> tuple[float, ...]:
    keep = torch.from_numpy(array(name, f"{kind}_ids_keep")).long()
    restore = torch.from_numpy(array(name, f"{kind}_ids_restore")).long()
    out = model(x, keep, restore)
    ref_loss = float(array(name, f"{kind}_loss"))
    return (err(model.encoder.forward_masked(x, keep), array(name, f"{kind}_latent")),
            err(out.pred[:, ::every], array(name, pred_key)), abs(out.loss.item() - ref_loss) / abs(ref_loss))


@torch.no_grad()
def mwmae_rows(folder: Path) -> list[str]:
    rows = ["| MW-MAE fixture | params | log-mel | features | timestamp emb | scene emb | latent sdpa/ref "
            "| pred sdpa/ref | loss rel sdpa/ref | convert s |", "|" + "---|" * 10]
    frontend = LogMelFrontend()
    x = torch.from_numpy(array("inputs", "decoder_input_x"))[..., 0]
    for name in FLAX_FIXTURES:
        c, model, seconds = _convert(name, folder)
        runtime = hear_mwmae.load_model(str(save_checkpoint(folder / f"{name}.pt", c.config, c.state_dict,
                                                            encoder_only=True)), device="cpu")
        logmel = feats = stamps = scene = 0.0
        for wave in MW_WAVES:
            audio = torch.from_numpy(array("inputs", wave))[None]
            ref_mel = array("mwmae_tiny", f"{wave}.logmel_norm")[..., 0]
            ref_emb = array(name, f"{wave}.timestamp_embeddings")
            logmel = max(logmel, err(frontend(audio), ref_mel))
            if ref_mel.shape[1] >= 200:  # the first chunk has no padding: the model alone
                feats = max(feats, err(model.encoder.forward_features(torch.from_numpy(ref_mel[:, :200])),
                                       ref_emb[:, :50]))
            stamps = max(stamps, err(hear_mwmae.get_timestamp_embeddings(audio, runtime)[0], ref_emb))
            scene = max(scene, err(hear_mwmae.get_scene_embeddings(audio, runtime),
                                   array(name, f"{wave}.scene_embeddings")))
        paths = _both_paths(model, lambda: _decoder(model, name, x, "decoder", "decoder_pred", 1))
        n = sum(v.numel() for v in c.state_dict.values())
        rows.append(f"| {name} | {n:,} | {logmel:.1e} | {feats:.1e} | {stamps:.1e} | {scene:.1e} | "
                    + " | ".join(pair([p[i] for p in paths]) for i in range(3)) + f" | {seconds:.2f} |")
    return rows


@torch.no_grad()
def audiomae_rows(folder: Path) -> list[str]:
    rows = ["| Audio-MAE fixture | params | fbank | tokens sdpa/ref | latent sdpa/ref | pred sdpa/ref "
            "| loss rel sdpa/ref | 2-D latent / pred / loss rel (sdpa) | HEAR timestamp emb | scene emb "
            "| timestamps exact | convert s |", "|" + "---|" * 12]
    frontend = KaldiFbankFrontend()
    x = torch.cat([torch.from_numpy(array("inputs", f"{w}.fbank_norm"))
                   for w in (AM_WAVE, "wav1_tones_dc_10p24s")])  # the decoder references' input
    for name in AUDIOMAE_FIXTURES:
        c, model, seconds = _convert(name, folder)
        fbank = 0.0
        for wave in AM_FBANK_WAVES:
            audio = torch.from_numpy(array("inputs", wave))[None]
            fbank = max(fbank, err(frontend.pad_frames(frontend(audio), 1024),
                                   array("audiomae_tiny", f"{wave}.fbank_norm")))
        chunk = torch.from_numpy(array("inputs", f"{AM_WAVE}.fbank_norm"))
        tokens = _both_paths(model, lambda: (err(model.encoder.forward_masked(chunk, torch.arange(512)[None]),
                                                 array(name, f"{AM_WAVE}.encoder_tokens")),))
        random = _both_paths(model, lambda: _decoder(model, name, x, "decoder", "decoder_pred_every4", 4))
        two_d = "–"
        if "decoder2d_loss" in keys(name):
            model2d = MWMAE(dataclasses.replace(c.config.model, mask_2d=True)).eval()
            model2d.load_state_dict(c.state_dict)
            two_d = pair(list(_decoder(model2d, name, x, "decoder2d", "decoder2d_pred_every4", 4)))
        runtime = hear_mwmae.load_model(str(save_checkpoint(folder / f"{name}.pt", c.config, c.state_dict,
                                                            encoder_only=True)), device="cpu")
        stamps = scene = 0.0
        exact = True
        for wave in sorted({k.split(".")[0] for k in keys(name) if k.endswith(".hear_timestamps")}):
            audio = torch.from_numpy(array("inputs", wave))[None]
            emb, ts = hear_mwmae.get_timestamp_embeddings(audio, runtime)
            stamps = max(stamps, err(emb, array(name, f"{wave}.hear_timestamp_embeddings")))
            scene = max(scene, err(hear_mwmae.get_scene_embeddings(audio, runtime),
                                   array(name, f"{wave}.hear_scene_embeddings")))
            exact &= bool(np.array_equal(ts.numpy(), array(name, f"{wave}.hear_timestamps")))
        n = sum(v.numel() for v in c.state_dict.values())
        rows.append(f"| {name} | {n:,} | {fbank:.1e} | {pair([t[0] for t in tokens])} | "
                    + " | ".join(pair([p[i] for p in random]) for i in range(3))
                    + f" | {two_d} | {stamps:.1e} | {scene:.1e} | {'yes' if exact else 'NO'} | {seconds:.2f} |")
    return rows


FT = "audiomae_ft_tiny"


def theirs(name: str) -> str:
    return name.removeprefix("encoder.").removeprefix("classifier.")


def finetune_rows(folder: Path) -> list[str]:
    """The fine-tuned classifier and one fine-tuning step (`audiomae_ft_tiny`)."""
    from hear_mwmae.checkpoint import Checkpoint, build_classifier, build_encoder
    from hear_mwmae.classifier import AudioClassifier
    from hear_mwmae.finetune.model import build_optimizer, classification_loss, masking_keep
    from hear_mwmae.finetune.recipes import FinetuneConfig
    from hear_mwmae.model import masking_2d
    from hear_mwmae.pretrain.loop import set_lr

    c = convert_source(write_checkpoint(FT, folder / FT))
    ckpt = Checkpoint(c.config, c.state_dict, c.encoder_only, c.provenance)

    def model() -> AudioClassifier:
        m = AudioClassifier(c.config.model, c.config.head, build_encoder(ckpt))
        m.classifier = build_classifier(ckpt)
        return m.eval()

    fb = {w: torch.from_numpy(array(FT if w == "wav3_clicks_0p5s" else "inputs", f"{w}.fbank_norm"))
          for w in ("wav0_chirp_noise_2s", "wav1_tones_dc_10p24s", "wav3_clicks_0p5s")}
    m = model()
    with torch.no_grad():
        logits = _both_paths(m, lambda: (max(err(m(x), array(FT, f"{w}.logits")) for w, x in fb.items()),
                                         max(err(m.pooled(x), array(FT, f"{w}.pooled")) for w, x in fb.items())))
        tokens = err(m.encoder.forward_tokens(fb["wav0_chirp_noise_2s"]), array(FT, "wav0_chirp_noise_2s.encoder_tokens"))
    runtime = hear_mwmae.load_model(str(save_checkpoint(folder / f"{FT}.pt", c.config, c.state_dict,
                                                        encoder_only=True)), device="cpu")
    audio_err = max(err(hear_mwmae.get_logits(torch.from_numpy(array("inputs", w))[None], runtime),
                        array(FT, f"{w}.logits")) for w in ("wav0_chirp_noise_2s", "wav3_clicks_0p5s"))
    per_chunk, _ = hear_mwmae.get_logits(torch.from_numpy(array("inputs", "wav2_bursts_12p7s"))[None], runtime,
                                         per_chunk=True)
    first_chunk = err(per_chunk[:, 0], array(FT, "wav2_bursts_12p7s.logits"))

    cfg = FinetuneConfig(weight_decay=5e-4, layer_decay=0.75, mask_t_prob=0.2, mask_f_prob=0.2, drop_path=0.0)
    m = model().train()
    m.encoder.pos_embed.requires_grad_(False)
    x = torch.cat([fb["wav0_chirp_noise_2s"], fb["wav1_tones_dc_10p24s"]])
    noise = torch.cat([torch.from_numpy(array(FT, "ft_noise_t")), torch.from_numpy(array(FT, "ft_noise_f"))], dim=1)
    batch = (x, torch.from_numpy(array(FT, "ft_targets")), noise, torch.zeros(2, 2, 2), [])
    with torch.no_grad():
        masked = err(m(x, masking_2d(noise, m.encoder.cfg.grid_size, masking_keep(m.encoder, cfg))[0]),
                     array(FT, "ft_logits_masked"))
    loss = classification_loss(m, cfg, True)(m, batch, torch.device("cpu"))[0]
    loss_rel = abs(loss.item() - float(array(FT, "ft_loss"))) / float(array(FT, "ft_loss"))
    loss.backward()
    trained = {n: p for n, p in m.named_parameters() if p.requires_grad}
    grads = [(err(p.grad, array(FT, f"ft_grads/{theirs(n)}")),
              err(p.grad, array(FT, f"ft_grads/{theirs(n)}")) / float(np.abs(array(FT, f"ft_grads/{theirs(n)}")).max()))
             for n, p in trained.items()]

    def stepped(own_grads: bool) -> float:
        mm = model().train() if not own_grads else m
        mm.encoder.pos_embed.requires_grad_(False)
        opt = build_optimizer(mm, cfg)
        if not own_grads:
            for n, p in mm.named_parameters():
                if p.requires_grad:
                    p.grad = torch.from_numpy(array(FT, f"ft_grads/{theirs(n)}"))
        set_lr(opt, 1e-3)
        opt.step()
        return max(err(p, array(FT, f"ft_params_after_step/{theirs(n)}")) for n, p in mm.named_parameters())

    their_step, our_chain = stepped(False), stepped(True)
    return ["| fine-tuned fixture | logits sdpa/ref | pooled sdpa/ref | tokens | logits from audio | 12.7 s chunk 0 "
            "| masked logits | loss rel | grads max abs / rel | step (their grads) | step (ours, whole chain) |",
            "|" + "---|" * 11,
            f"| {FT} | {pair([t[0] for t in logits])} | {pair([t[1] for t in logits])} | {tokens:.1e} | "
            f"{audio_err:.1e} | {first_chunk:.1e} | {masked:.1e} | {loss_rel:.1e} | "
            f"{max(g[0] for g in grads):.1e} / {max(g[1] for g in grads):.1e} | {their_step:.1e} | {our_chain:.1e} |"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["all", "mwmae", "audiomae", "finetune"], default="all")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        if args.family in ("all", "mwmae"):
            print("\n".join(mwmae_rows(Path(tmp))) + "\n")
        if args.family in ("all", "audiomae"):
            print("\n".join(audiomae_rows(Path(tmp))))
            banks = err(kaldi_mel_banks(FbankConfig()).t(), array("audiomae_tiny", "fbank_mel_banks"))
            print(f"\nKaldi mel filterbank vs the fixture's (torchaudio, float32): {banks:.1e}")
        if args.family in ("all", "finetune"):
            print("\n" + "\n".join(finetune_rows(Path(tmp))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
