"""Pre-training Audio-MAE with the common trainer: the authors' loss through the trainer's path,
their recipe and optimiser rules, the fbank data path, resume, 2-D masking, hybrid decoder, export."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from conftest import load_npy
from hear_mwmae.config import FbankConfig, FrontendConfig, MWMAEConfig, audiomae_config
from hear_mwmae.frontend import KaldiFbankFrontend
from hear_mwmae.model import MWMAE
from hear_mwmae.pretrain import data as pdata
from hear_mwmae.pretrain import state as pstate
from hear_mwmae.pretrain.export import export_checkpoint
from hear_mwmae.pretrain.metrics import read_metrics
from hear_mwmae.pretrain.recipes import RECIPES, TrainConfig, get_recipe, lr_at
from hear_mwmae.pretrain.synth import make_clip
from hear_mwmae.pretrain.trainer import build_model, optimizer_step, train

TINY = audiomae_config("tiny", "swin", embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=2,
                       decoder_num_heads=2)  # one plain and one shifted Swin block


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes) -> TrainConfig:
    """The audiomae-cpu-small recipe shrunk to a model that steps in tens of milliseconds."""
    cfg = dataclasses.replace(RECIPES["audiomae-cpu-small"], name="test", model=TINY, batch_size=4, epochs=0,
                              max_steps=4, warmup_epochs=0.5, base_lr=0.05, num_workers=0, log_every=1,
                              checkpoint_every=2, fused_attention=False)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """8 synthetic WAV clips of 0.6-2.2 s (60-218 fbank frames, padded to 1024)."""
    root = tmp_path_factory.mktemp("amae_corpus")
    for i in range(8):
        sf.write(root / f"c{i}.wav", make_clip(5, i, duration=0.6 + 0.2 * i).waveform, 16000, subtype="FLOAT")
    return root


# ----------------------------------------------------------------------------- the authors' loss
@pytest.mark.parametrize("fixture, masking", [("audiomae_tiny", "random"), ("audiomae_tiny", "2d"),
                                              ("audiomae_swin_tiny", "random")])
def test_trainer_loss_equals_the_authors(converted, fixture, masking):
    """Dataset-shaped inputs and the stored masking noise through `optimizer_step` (the trainer's
    masking, forward and loss) give the authors' `forward_loss`."""
    c = converted(fixture)
    model_cfg = dataclasses.replace(c.config.model, mask_2d=masking == "2d")
    cfg = tiny_config(model=model_cfg, frontend=c.config.frontend, accum_steps=1)
    x = torch.from_numpy(np.concatenate([load_npy("audiomae_tiny", "wav0_chirp_noise_2s.fbank_norm"),
                                         load_npy("audiomae_tiny", "wav1_tones_dc_10p24s.fbank_norm")]))
    assert x.shape == (2, cfg.crop_frames, cfg.frontend.n_mels) == (2, 1024, 128)
    if masking == "2d":
        noise = np.concatenate([load_npy(fixture, "decoder2d_noise_t"), load_npy(fixture, "decoder2d_noise_f")], 1)
        expected = float(load_npy(fixture, "decoder2d_loss"))
    else:
        noise, expected = load_npy(fixture, "decoder_mask_noise"), float(load_npy(fixture, "decoder_loss"))
    assert noise.shape == (2, model_cfg.mask_noise_size)
    model, opt = build_model(cfg, torch.device("cpu"))
    model.load_state_dict(c.state_dict)
    model.eval()  # the references are computed without the Swin position-MLP dropout
    batches = iter([(x, torch.from_numpy(noise), [])])
    loss, damaged = optimizer_step(cfg, model, model, opt, batches, 0.0, torch.device("cpu"), ddp=False)
    assert damaged == []
    assert float(loss) == pytest.approx(expected, rel=1e-5)


# ----------------------------------------------------------------------------- recipe and optimiser
def test_audiomae_base_recipe_is_the_authors():
    cfg = RECIPES["audiomae-base"]
    m = cfg.model
    assert m == audiomae_config("base", "swin") and cfg.frontend == FbankConfig()
    assert (m.family, m.img_size, m.patch_size, m.embed_dim, m.depth, m.num_heads) == (
        "audiomae", (1024, 128), (16, 16), 768, 12, 12)
    assert (m.decoder_kind, m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads, m.decoder_window) == (
        "swin", 512, 16, 16, (4, 4))
    assert m.norm_pix_loss and m.mask_ratio == 0.8 and not m.mask_2d and m.len_keep == 102 and m.fixed_pos_embed
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.base_lr, cfg.weight_decay, cfg.betas) == (
        512, 33, 3, 2e-4, 1e-4, (0.9, 0.95))
    assert cfg.no_weight_decay_1d and cfg.gain_aug and cfg.short_clip_pad == "end"
    assert cfg.peak_lr == pytest.approx(4e-4)  # blr * 512 / 256


def test_lr_schedule_is_the_authors_per_iteration_schedule():
    """util/lr_sched.adjust_learning_rate at epoch + i / len(loader), called before every step."""
    cfg, spe = RECIPES["audiomae-base"], 3968  # ~2.03 M clips / 512
    total, warmup = cfg.total_steps(spe), cfg.warmup_steps(spe)
    assert (total, warmup) == (33 * spe, 3 * spe)

    def authors(epoch: float) -> float:
        if epoch < cfg.warmup_epochs:
            return cfg.peak_lr * epoch / cfg.warmup_epochs
        progress = (epoch - cfg.warmup_epochs) / (cfg.epochs - cfg.warmup_epochs)
        return cfg.min_lr + (cfg.peak_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    for step in (0, 1, 17, warmup - 1, warmup, warmup + 1, 5 * spe + 123, total // 2, total - 1):
        assert lr_at(step, cfg.peak_lr, warmup, total, cfg.min_lr) == pytest.approx(authors(step / spe), rel=1e-12,
                                                                                     abs=1e-18)


def test_param_groups_follow_the_recipe():
    cfg = tiny_config()
    model, opt = build_model(cfg, torch.device("cpu"))
    names = {id(p): n for n, p in model.named_parameters()}
    (plain, decayed) = opt.param_groups
    assert (plain["weight_decay"], decayed["weight_decay"]) == (0.0, 1e-4)
    assert opt.defaults["betas"] == (0.9, 0.95) and opt.defaults["lr"] == pytest.approx(cfg.peak_lr)
    plain_names = {names[id(p)] for p in plain["params"]}
    decayed_names = {names[id(p)] for p in decayed["params"]}
    # the authors' rule (timm add_weight_decay): ndim 1 or a bias -> no decay; CLS / mask tokens (3-D) decay
    for n, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert (n in plain_names) == (p.ndim <= 1 or n.endswith(".bias")), n
    assert {"encoder.norm.weight", "decoder.blocks.0.attn.tau", "decoder.blocks.1.norm2.weight",
            "encoder.patch_embed.proj.bias"} <= plain_names
    assert {"encoder.cls_token", "decoder.mask_token", "encoder.blocks.0.attn.qkv.weight",
            "decoder.blocks.0.attn.meta_mlp.fc1.weight"} <= decayed_names
    # fixed position embeddings are not trained and not in the optimiser
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.pos_embed", "decoder.pos_embed"}
    assert not frozen & (plain_names | decayed_names)
    assert len(plain_names) + len(decayed_names) == sum(p.requires_grad for p in model.parameters())

    mw = get_recipe("cpu-small", ["model.depth=1"])  # MW-MAE: one group, decay on everything trained
    mw_model, mw_opt = build_model(mw, torch.device("cpu"))
    assert len(mw_opt.param_groups) == 1 and mw_opt.param_groups[0]["weight_decay"] == 0.05
    assert len(mw_opt.param_groups[0]["params"]) == sum(p.requires_grad for p in mw_model.parameters())


def test_overrides_select_masking_and_decoder_and_validate():
    cfg = get_recipe("audiomae-cpu-small", ["model.mask_2d=true", "model.decoder_global_blocks=1"])
    assert cfg.model.mask_2d and cfg.model.mask_noise_size == 64 + 8 and cfg.model.len_keep == 19 * 5
    assert cfg.model.decoder_global_blocks == 1
    glob = get_recipe("audiomae-cpu-small", ["model.decoder_kind=mwmha"])
    assert glob.model.decoder_kind == "mwmha" and glob.model.decoder_window_sizes == ()
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg and isinstance(cfg.frontend, FbankConfig)
    with pytest.raises(ValueError, match="mel bands"):  # a log-mel frontend cannot feed a 128-band model
        dataclasses.replace(RECIPES["audiomae-cpu-small"], frontend=FrontendConfig())
    with pytest.raises(ValueError, match="short_clip_pad"):
        get_recipe("audiomae-cpu-small", ["short_clip_pad=middle"])
    with pytest.raises(ValueError, match="decoder_global_blocks"):
        get_recipe("audiomae-cpu-small", ["model.decoder_global_blocks=9"])


# ----------------------------------------------------------------------------- data
def test_fbank_crops_reproduce_the_authors_dataset(tmp_path):
    """Short clips: zero raw fbank appended before normalisation (AudiosetDataset), noise per patch."""
    for name in ("wav0_chirp_noise_2s", "wav3_clicks_0p5s"):
        sf.write(tmp_path / f"{name}.wav", load_npy("audiomae_tiny", name), 16000, subtype="FLOAT")
    clips, skipped = pdata.scan([tmp_path], FbankConfig())
    assert skipped == [] and [c.frames for c in clips] == [198, 48]  # 1 + (N - 400) // 160
    ds = pdata.CropDataset(clips, FbankConfig(), 1024, 512, seed=0, pad="end")
    for i, name in enumerate(("wav0_chirp_noise_2s", "wav3_clicks_0p5s")):
        x, noise, _ = ds[(0, i)]
        assert x.shape == (1024, 128) and noise.shape == (512,)
        expected = load_npy("audiomae_tiny", f"{name}.fbank_norm")[0]
        assert np.abs(x.numpy() - expected).max() < 1e-3  # float32 FFT noise on low-energy bins
        pad = x[clips[i].frames:]
        assert pad.shape[0] == 1024 - clips[i].frames
        torch.testing.assert_close(pad, torch.full_like(pad, 4.2677393 / 9.1379948))
    two_d = pdata.CropDataset(clips, FbankConfig(), 1024, 72, seed=0, pad="end")
    assert two_d[(0, 0)].noise.shape == (72,)


def test_long_fbank_clips_are_cropped_at_random_offsets_and_npy_matches_audio(tmp_path):
    wave = load_npy("audiomae_tiny", "wav2_bursts_12p7s")  # 1268 frames
    sf.write(tmp_path / "long.wav", wave, 16000, subtype="FLOAT")
    raw = KaldiFbankFrontend()(torch.from_numpy(wave)[None])[0]  # normalised (1268, 128)
    np.save(tmp_path / "long.npy", KaldiFbankFrontend().log_mel(torch.from_numpy(wave)[None])[0].numpy())
    clips, _ = pdata.scan([tmp_path / "long.wav", tmp_path / "long.npy"], FbankConfig())
    assert [c.frames for c in clips] == [1268, 1268]
    wav_ds, npy_ds = (pdata.CropDataset([c], FbankConfig(), 1024, 512, seed=1, pad="end") for c in clips)
    starts = set()
    for epoch in range(8):
        x = wav_ds[(epoch, 0)].x
        start = next(s for s in range(245) if torch.allclose(raw[s:s + 1024], x, atol=1e-6))
        starts.add(start)
        torch.testing.assert_close(npy_ds[(epoch, 0)].x, x, rtol=0, atol=1e-5)
    assert len(starts) > 3


def test_gain_aug_scales_the_waveform(tmp_path, corpus):
    clips, _ = pdata.scan([corpus / "c7.wav"], FbankConfig())
    plain = pdata.CropDataset(clips, FbankConfig(), 1024, 512, seed=0, pad="end")
    gained = pdata.CropDataset(clips, FbankConfig(), 1024, 512, seed=0, pad="end", gain_aug=True, cache=True)
    frames = clips[0].frames
    for epoch in range(3):
        rng = np.random.default_rng([0, epoch, 0])
        gain = rng.beta(10, 10) + 0.5
        a, b = plain[(epoch, 0)].x, gained[(epoch, 0)].x
        # gain g adds 2 ln g to the raw log fbank: (2 ln g) / (2 std) in normalised units
        shift = (b[:frames] - a[:frames]).median().item()
        assert shift == pytest.approx(2 * math.log(gain) / (2 * 4.5689974), abs=1e-4)
        assert torch.equal(b[frames:], a[frames:])  # padding stays the zero raw fbank
    np.save(tmp_path / "f.npy", np.zeros((10, 128), np.float32))
    with pytest.raises(ValueError, match="gain_aug"):
        pdata.CropDataset(pdata.scan([tmp_path / "f.npy"], FbankConfig())[0], FbankConfig(), 1024, 512, 0,
                          gain_aug=True)


# ----------------------------------------------------------------------------- training
def test_audiomae_resume_continues_exactly(tmp_path, corpus):
    cfg = tiny_config(max_steps=5, checkpoint_every=4)  # 2 steps per epoch: crosses epochs
    train(cfg, [corpus], tmp_path / "straight")
    train(cfg, [corpus], tmp_path / "split", stop_at_step=3)
    torch.manual_seed(77)
    np.random.seed(7)
    train(cfg, [corpus], tmp_path / "split", resume=True)
    a, b = (pstate.load_train_state(tmp_path / r) for r in ("straight", "split"))
    assert a["step"] == b["step"] == 5
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i]["exp_avg_sq"], sb[i]["exp_avg_sq"]) for i in sa)
    la = [r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")]
    assert la == [r["loss"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl")]
    assert TrainConfig.from_dict(b["train_config"]) == cfg and isinstance(cfg.frontend, FbankConfig)
    torch.manual_seed(0)
    fresh = MWMAE(cfg.model).state_dict()
    assert not torch.equal(fresh["decoder.blocks.1.attn.meta_mlp.fc1.weight"],
                           a["model"]["decoder.blocks.1.attn.meta_mlp.fc1.weight"])
    assert torch.equal(fresh["encoder.pos_embed"], a["model"]["encoder.pos_embed"])  # fixed, never trained


def test_2d_masking_hybrid_decoder_run_exports_and_embeds_with_fbank(tmp_path, corpus):
    from hear_mwmae.cli import main

    run = tmp_path / "run"
    sets = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
            "model.decoder_depth=2", "model.decoder_num_heads=2", "model.mask_2d=true",
            "model.decoder_global_blocks=1", "fused_attention=false"]
    argv = ["pretrain", "--recipe", "audiomae-cpu-small", "--data", str(corpus), "--out", str(run),
            "--batch-size", "4", "--max-steps", "2", "--workers", "0", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 0
    state = pstate.load_train_state(run)
    cfg = TrainConfig.from_dict(state["train_config"])
    assert cfg.model.mask_2d and cfg.model.decoder_global_blocks == 1 and cfg.frontend == FbankConfig()
    assert TrainConfig.from_dict(json.loads((run / "train_config.json").read_text())) == cfg
    assert all(math.isfinite(r["loss"]) for r in read_metrics(run / "metrics.jsonl"))

    path = export_checkpoint(run, tmp_path / "amae.pt")
    ckpt = hear_mwmae.checkpoint.load_checkpoint(path)
    assert ckpt.config == MWMAEConfig(cfg.model, FbankConfig())
    model = hear_mwmae.load_model(str(path), device="cpu")
    assert isinstance(model.frontend, KaldiFbankFrontend)
    audio = torch.from_numpy(np.stack([make_clip(9, 0, duration=3.0).waveform,
                                       make_clip(9, 1, duration=3.0).waveform]))
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio, model)
    frames = KaldiFbankFrontend().num_frames(audio.shape[1])  # 298
    assert emb.shape == (2, math.ceil(frames / 16), 8 * 32)
    torch.testing.assert_close(ts[0], 87.5 + 160.0 * torch.arange(emb.shape[1], dtype=torch.float32))
    # the same numbers by hand: fbank, zero raw fbank padding to 1024 frames, trained encoder
    enc = MWMAE(cfg.model)
    enc.load_state_dict(state["model"])
    enc.eval()
    fe = KaldiFbankFrontend()
    with torch.no_grad():
        x = fe.pad_frames(fe(audio), 1024)
        expected = enc.encoder.forward_features(x)[:, : emb.shape[1]]
    torch.testing.assert_close(emb, expected, rtol=1e-5, atol=1e-5)
