"""Pre-training: recipes, schedule, data pipeline, training, exact resume, export, demo."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae.checkpoint import load_checkpoint
from hear_mwmae.config import FrontendConfig, ModelConfig, RELEASED_DECODER_WINDOWS
from hear_mwmae.frontend import LogMelFrontend
from hear_mwmae.pretrain import data as pdata
from hear_mwmae.pretrain import state as pstate
from hear_mwmae.pretrain.export import export_checkpoint
from hear_mwmae.pretrain.metrics import read_metrics
from hear_mwmae.pretrain.recipes import RECIPES, TrainConfig, apply_overrides, get_recipe, lr_at
from hear_mwmae.pretrain.synth import KINDS, make_clip
from hear_mwmae.pretrain.trainer import train

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = ModelConfig(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=1,
                         decoder_num_heads=8)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**changes) -> TrainConfig:
    """A model small enough for a step in tens of milliseconds; 4 clips per step."""
    cfg = TrainConfig(name="test", model=TINY_MODEL, batch_size=4, epochs=0, max_steps=4, warmup_epochs=0.5,
                      base_lr=0.05, num_workers=0, log_every=1, checkpoint_every=2, fused_attention=False)
    return dataclasses.replace(cfg, **changes)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """10 synthetic 2.5 s WAV clips at 16 kHz (crops of 200 of their 251 frames)."""
    root = tmp_path_factory.mktemp("corpus")
    for i in range(10):
        sf.write(root / f"c{i}.wav", make_clip(7, i, duration=2.5).waveform, 16000, subtype="FLOAT")
    return root


def params_of(run: Path) -> dict[str, torch.Tensor]:
    return pstate.load_train_state(run)["model"]


def assert_params_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], lr: float) -> None:
    """Equal within float tolerance, except attention key biases: their gradient is exactly
    zero (softmax ignores a per-query constant), so Adam turns rounding noise into steps of
    up to `lr`. Those are compared at that scale."""
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):
            d = len(x) // 3
            torch.testing.assert_close(x[d : 2 * d], y[d : 2 * d], rtol=0, atol=3 * lr, msg=k)
            x, y = torch.cat([x[:d], x[2 * d :]]), torch.cat([y[:d], y[2 * d :]])
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-5, msg=k)


# ----------------------------------------------------------------------------- recipes
def test_lr_schedule_warmup_then_cosine():
    peak, warm, total = 1e-3, 10, 110
    lrs = [lr_at(s, peak, warm, total) for s in range(total)]
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(peak / 2)  # optax linear warm-up starts at 0
    assert lrs[warm] == pytest.approx(peak)
    assert lrs[warm + 50] == pytest.approx(peak / 2)  # cosine half-way
    assert all(a < b for a, b in zip(lrs[:warm], lrs[1 : warm + 1]))
    assert all(a > b for a, b in zip(lrs[warm:], lrs[warm + 1 :]))
    assert lr_at(total, peak, warm, total) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(total, peak, warm, total, min_lr=1e-5) == pytest.approx(1e-5)


def test_released_recipe_is_the_papers():
    cfg = RECIPES["released"]
    m = cfg.model
    assert (m.embed_dim, m.depth, m.num_heads, m.patch_size, m.img_size) == (768, 12, 12, (4, 16), (200, 80))
    assert (m.decoder_embed_dim, m.decoder_depth, m.decoder_num_heads) == (384, 4, 8)
    assert m.decoder_window_sizes == RELEASED_DECODER_WINDOWS == (2, 5, 10, 25, 50, 125, 0, 0)
    assert m.window_sizes == () and not m.use_cls_token and m.mask_ratio == 0.8
    assert (cfg.batch_size, cfg.epochs, cfg.warmup_epochs, cfg.weight_decay, cfg.betas) == (1024, 100, 10, 0.05,
                                                                                         (0.9, 0.999))
    assert cfg.peak_lr == pytest.approx(1.5e-5 * 1024 / 256) and cfg.bf16
    steps = 2_032_320 // 1024  # AudioSet as the release counts it
    assert cfg.total_steps(steps) == 100 * steps and cfg.warmup_steps(steps) == 10 * steps


def test_overrides_and_dict_round_trip():
    cfg = get_recipe("cpu-small", ["model.depth=2", "batch_size=64", "betas=[0.9, 0.95]", "name=mine",
                                   "model.decoder_window_sizes=0"])
    assert (cfg.model.depth, cfg.batch_size, cfg.betas, cfg.name) == (2, 64, (0.9, 0.95), "mine")
    assert cfg.model.decoder_window_sizes == ()
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
    for bad in (["model.nope=1"], ["nope=1"], ["batch_size"], ["model=3"]):
        with pytest.raises(ValueError):
            apply_overrides(cfg, bad)
    with pytest.raises(ValueError, match="divisible"):
        get_recipe("released", ["accum_steps=3"])
    with pytest.raises(ValueError, match="unknown recipe"):
        get_recipe("nope")


# ----------------------------------------------------------------------------- data
def test_scan_reads_folders_and_manifests_and_skips_unreadable(tmp_path):
    good = tmp_path / "a" / "good.wav"
    good.parent.mkdir()
    sf.write(good, np.zeros(16000, np.float32), 16000)
    (tmp_path / "a" / "broken.wav").write_bytes(b"RIFF\x00\x00not really a wav")
    (tmp_path / "a" / "empty.flac").write_bytes(b"")
    np.save(tmp_path / "a" / "mel.npy", np.zeros((300, 80), np.float32))
    np.save(tmp_path / "a" / "wrong.npy", np.zeros((300, 64), np.float32))
    (tmp_path / "a" / "notes.md").write_text("not audio")  # ignored by folder search
    clips, skipped = pdata.scan([tmp_path / "a"], FrontendConfig())
    assert {c.path.name: c.frames for c in clips} == {"good.wav": 101, "mel.npy": 300}
    assert sorted(p.name for p, _ in skipped) == ["broken.wav", "empty.flac", "wrong.npy"]

    (tmp_path / "list.txt").write_text("# comment\na/good.wav\n\na/mel.npy\n")
    (tmp_path / "list.csv").write_text("files,label\na/good.wav,3\n")
    assert [p.name for p in pdata.find_files([tmp_path / "list.txt"])] == ["good.wav", "mel.npy"]
    assert pdata.find_files([tmp_path / "list.csv"]) == [tmp_path / "a" / "good.wav"]
    with pytest.raises(FileNotFoundError):
        pdata.find_files([tmp_path / "missing"])


def test_load_audio_resamples_to_16k_and_mixes_to_mono(tmp_path):
    sr, seconds = 44100, 1.5
    t = np.arange(int(sr * seconds)) / sr
    stereo = np.stack([np.sin(2 * np.pi * 1000 * t), np.sin(2 * np.pi * 1000 * t + 0.3)], axis=1) * 0.5
    sf.write(tmp_path / "x.flac", stereo, sr)
    audio = pdata.load_audio(tmp_path / "x.flac", 16000)
    assert audio.dtype == np.float32 and audio.shape == (24000,)
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    assert np.fft.rfftfreq(len(audio), 1 / 16000)[spectrum.argmax()] == pytest.approx(1000, abs=1)
    clips, _ = pdata.scan([tmp_path / "x.flac"], FrontendConfig())
    assert clips[0].frames == 1 + 24000 // 160


def test_crops_are_deterministic_normalised_windows(tmp_path, corpus):
    clips, _ = pdata.scan([corpus], FrontendConfig())
    ds = pdata.CropDataset(clips, FrontendConfig(), 200, 250, seed=3)
    x, noise, skipped = ds[(0, 4)]
    assert skipped == ()
    assert x.shape == (200, 80) and noise.shape == (250,) and x.dtype == noise.dtype == torch.float32
    x2, noise2, _ = ds[(0, 4)]
    assert torch.equal(x, x2) and torch.equal(noise, noise2)
    x3, noise3, _ = ds[(1, 4)]
    assert not torch.equal(noise, noise3)  # new masks every epoch...
    assert not torch.equal(noise, ds[(0, 5)][1])  # ...and for every sample
    # the crop is a window of the *whole clip's* normalised log-mel (release order)
    full = LogMelFrontend()(torch.from_numpy(pdata.load_audio(clips[4].path, 16000))[None])[0]
    assert full.shape[0] == 251
    offsets = [o for o in range(52) if torch.allclose(full[o : o + 200], x, atol=1e-5)]
    assert len(offsets) == 1
    starts = {next(o for o in range(52) if torch.allclose(full[o : o + 200], ds[(e, 4)][0], atol=1e-5))
              for e in range(12)}
    assert len(starts) > 3  # crops move between epochs

    # exactly 200 frames: the crop is the whole clip, zero-mean, unit (unbiased) std;
    # shorter clips are reflect-padded
    raw = np.random.default_rng(0).normal(3.0, 2.0, size=(200, 80)).astype(np.float32)
    np.save(tmp_path / "m200.npy", raw)
    np.save(tmp_path / "m50.npy", raw[:50])
    small, _ = pdata.scan([tmp_path / "m200.npy", tmp_path / "m50.npy"], FrontendConfig())
    assert [c.path.name for c in small] == ["m200.npy", "m50.npy"]
    ds = pdata.CropDataset(small, FrontendConfig(), 200, 250, seed=0)
    whole = ds[(0, 0)][0]
    assert abs(whole.mean().item()) < 1e-5 and whole.std().item() == pytest.approx(1.0, abs=1e-5)
    short = ds[(0, 1)][0]
    assert short.shape == (200, 80)
    assert torch.allclose(short[75:125], LogMelFrontend().normalize(torch.from_numpy(raw[None, :50]))[0], atol=1e-5)


def test_precomputed_logmels_give_the_same_crops_as_audio(tmp_path, corpus):
    wav = corpus / "c3.wav"
    mel = LogMelFrontend().log_mel(torch.from_numpy(pdata.load_audio(wav, 16000))[None])[0]
    np.save(tmp_path / "c3.npy", mel.numpy())
    clips, _ = pdata.scan([wav, tmp_path / "c3.npy"], FrontendConfig())
    assert clips[0].frames == clips[1].frames == 251
    from_wav, from_npy = (pdata.CropDataset([c], FrontendConfig(), 200, 250, seed=0) for c in clips)
    for epoch in range(3):
        (a, noise_a, _), (b, noise_b, _) = from_wav[(epoch, 0)], from_npy[(epoch, 0)]
        assert torch.equal(noise_a, noise_b)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_step_sampler_shards_each_global_batch_deterministically():
    one = pdata.StepSampler(37, 8, world_size=1, rank=0, accum_steps=1, seed=5, start_step=0, stop_step=9)
    assert one.steps_per_epoch == 4 and len(one) == 9
    batches = list(one)
    assert all(len(b) == 8 for b in batches)
    for epoch in range(2):  # no clip twice within an epoch
        keys = [k for b in batches[4 * epoch : 4 * epoch + 4] for k in b]
        assert all(e == epoch for e, _ in keys) and len({i for _, i in keys}) == 32
    assert one.epoch_order(0).tolist() != one.epoch_order(1).tolist()  # reshuffled every epoch

    shards = [list(pdata.StepSampler(37, 8, 2, r, 2, seed=5, start_step=0, stop_step=9)) for r in range(2)]
    for step, global_batch in enumerate(batches):
        parts = [k for r in range(2) for k in shards[r][2 * step] + shards[r][2 * step + 1]]
        assert parts == global_batch  # the same samples, in the same order, split 2 x 2
    tail = list(pdata.StepSampler(37, 8, 1, 0, 1, seed=5, start_step=6, stop_step=9))
    assert tail == batches[6:]
    with pytest.raises(ValueError):
        pdata.StepSampler(5, 8, 1, 0, 1, seed=0, start_step=0, stop_step=1)


def test_synthetic_clips_depend_only_on_seed_and_index():
    a, b = make_clip(3, 11), make_clip(3, 11)
    assert np.array_equal(a.waveform, b.waveform) and a.kind == b.kind
    assert not np.array_equal(make_clip(4, 11).waveform, a.waveform)
    clips = [make_clip(0, i, duration=1.0) for i in range(40)]
    assert {c.kind for c in clips} == set(KINDS)
    for c in clips:
        assert c.waveform.shape == (16000,) and c.waveform.dtype == np.float32
        assert np.abs(c.waveform).max() <= 1.0 and np.isfinite(c.waveform).all()
        assert (c.pitch_class >= 0) == (c.kind == "note")


# ----------------------------------------------------------------------------- training
def test_cli_pretrain_writes_a_run_that_exports_and_loads(tmp_path, corpus):
    from hear_mwmae.cli import main

    run = tmp_path / "run"
    sets = [f"model.{k}={v}" for k, v in (("embed_dim", 32), ("depth", 1), ("num_heads", 2),
                                          ("decoder_embed_dim", 32), ("decoder_depth", 1))]
    argv = ["pretrain", "--recipe", "cpu-small", "--data", str(corpus), "--out", str(run), "--batch-size", "4",
            "--max-steps", "3", "--log-every", "1", "--workers", "0", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 0
    cfg = TrainConfig.from_dict(json.loads((run / "train_config.json").read_text()))
    assert cfg.model.embed_dim == 32 and cfg.batch_size == 4 and cfg.name == "cpu-small"
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1, 2, 3]
    assert (run / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    state = pstate.load_train_state(run)
    assert state["step"] == 3 and TrainConfig.from_dict(state["train_config"]) == cfg
    with pytest.raises(FileExistsError):  # never silently overwrite or continue a run
        train(cfg, [corpus], run)

    assert main(["pretrain-export", str(run), str(tmp_path / "m.pt")]) == 0
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.config == cfg.mwmae_config() and ckpt.provenance["step"] == 3
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in state["model"].items())
    model = hear_mwmae.load_model(str(tmp_path / "m.pt"), device="cpu")
    emb = hear_mwmae.get_scene_embeddings(torch.zeros(2, 16000), model)
    assert emb.shape == (2, 5 * 32) and torch.isfinite(emb).all()

    small = export_checkpoint(run, tmp_path / "enc.safetensors", encoder_only=True)
    enc = load_checkpoint(small)
    assert enc.encoder_only and set(enc.state_dict) == {k for k in state["model"] if k.startswith("encoder.")}
    torch.testing.assert_close(hear_mwmae.get_scene_embeddings(torch.zeros(2, 16000),
                                                               hear_mwmae.load_model(str(small), device="cpu")), emb)


def test_cli_bad_arguments_are_one_line_errors_with_exit_code_2(tmp_path, corpus, caplog):
    from hear_mwmae.cli import main

    out = ["--data", str(corpus), "--out", str(tmp_path / "r")]
    cases = {("--recipe", "nope"): "unknown recipe", ("--recipe", "cpu-small", "--set", "model.nope=1"): "model.nope",
             ("--recipe", "cpu-small", "--batch-size", "64"): "fewer than one batch", (): "choose --recipe"}
    for argv, message in cases.items():
        caplog.clear()
        assert main(["pretrain", *argv, *out]) == 2
        assert any(message in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR), argv
    assert not (tmp_path / "r").exists()  # nothing written for a run that cannot start


def test_resume_continues_exactly(tmp_path, corpus):
    cfg = tiny_config(max_steps=6, checkpoint_every=5)  # crosses an epoch boundary (2 steps/epoch)
    straight = train(cfg, [corpus], tmp_path / "straight")
    first = train(cfg, [corpus], tmp_path / "split", stop_at_step=3)
    assert first.step == 3 and pstate.load_train_state(tmp_path / "split")["step"] == 3
    torch.manual_seed(1234)  # disturb the global RNGs: resume must restore them
    np.random.seed(99)
    second = train(dataclasses.replace(cfg, log_every=2), [corpus], tmp_path / "split", resume=True)
    assert straight.step == second.step == 6
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    opt_a = pstate.load_train_state(tmp_path / "straight")["optimizer"]["state"]
    opt_b = pstate.load_train_state(tmp_path / "split")["optimizer"]["state"]
    assert all(torch.equal(opt_a[i]["exp_avg_sq"], opt_b[i]["exp_avg_sq"]) for i in opt_a)
    logged = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "straight" / "metrics.jsonl")}
    resumed = read_metrics(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 6]  # one line per window, none repeated
    assert resumed[3]["loss"] == logged[4]  # step 4 is the first after the resume
    # the run really moved: parameters differ from a fresh model
    fresh = hear_mwmae.model.MWMAE(cfg.model).state_dict()
    assert not torch.equal(fresh["encoder.blocks.0.attn.qkv.weight"], a["encoder.blocks.0.attn.qkv.weight"])


def test_resume_refuses_a_different_recipe_or_data(tmp_path, corpus):
    cfg = tiny_config(max_steps=2)
    train(cfg, [corpus], tmp_path / "r", stop_at_step=1)
    with pytest.raises(ValueError, match="base_lr"):
        train(dataclasses.replace(cfg, base_lr=0.1), [corpus], tmp_path / "r", resume=True)
    with pytest.raises(ValueError, match="data changed"):
        train(cfg, [corpus / "c0.wav", corpus / "c1.wav", corpus / "c2.wav", corpus / "c3.wav"],
              tmp_path / "r", resume=True)


def test_damaged_files_are_listed_once_and_warned_once(tmp_path, corpus, caplog):
    """NaN / Inf / truncated files that pass the header scan: replaced by the next clip, each
    listed once in skipped_files.txt and warned about once, across DataLoader workers and resumes."""
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        (data / f"c{i}.wav").write_bytes((corpus / f"c{i}.wav").read_bytes())
    wave = make_clip(7, 0, duration=2.5).waveform.copy()
    wave[1234] = np.nan
    sf.write(data / "nan.wav", wave, 16000, subtype="FLOAT")
    mel = np.zeros((251, 80), np.float32)
    mel[7, 3] = np.inf
    np.save(data / "inf.npy", mel)
    sf.write(tmp_path / "full.wav", make_clip(7, 1, duration=3.0).waveform, 16000, subtype="PCM_16")
    (data / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[:1000])  # header says 3 s
    bad = {"nan.wav": "NaN or Inf", "inf.npy": "NaN or Inf", "cut.wav": "truncated"}

    cfg = tiny_config(batch_size=3, max_steps=12, log_every=4, checkpoint_every=12)  # 3 steps/epoch, 4 epochs
    caplog.set_level(logging.WARNING, logger="hear_mwmae")
    result = train(dataclasses.replace(cfg, num_workers=2), [data], tmp_path / "straight")
    assert result.step == 12 and math.isfinite(result.last_loss)

    def listed(run: Path) -> dict[str, str]:
        lines = (run / "skipped_files.txt").read_text().splitlines()
        names = [Path(line.split("\t")[0]).name for line in lines]
        assert len(names) == len(set(names)), lines  # each file once
        return {Path(p).name: why for p, _, why in (line.partition("\t") for line in lines)}

    def warned(name: str) -> int:
        return sum(name in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)

    found = listed(tmp_path / "straight")
    assert set(found) == set(bad) and all(bad[n] in found[n] for n in bad), found
    assert all(warned(n) == 1 for n in bad), [r.getMessage() for r in caplog.records]

    caplog.clear()  # a run stopped and resumed lists and warns just the same, and trains the same
    train(cfg, [data], tmp_path / "split", stop_at_step=5)
    train(cfg, [data], tmp_path / "split", resume=True)
    assert listed(tmp_path / "split") == found
    assert all(warned(n) == 1 for n in bad)
    a, b = params_of(tmp_path / "straight"), params_of(tmp_path / "split")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gradient_accumulation_matches_the_full_batch(tmp_path, corpus):
    cfg = tiny_config(max_steps=3)
    train(cfg, [corpus], tmp_path / "full")
    train(dataclasses.replace(cfg, accum_steps=2), [corpus], tmp_path / "accum")
    assert_params_close(params_of(tmp_path / "full"), params_of(tmp_path / "accum"), cfg.peak_lr)


def test_loss_goes_down(tmp_path, corpus):
    result = train(tiny_config(max_steps=30, log_every=5, checkpoint_every=30, base_lr=0.2), [corpus], tmp_path)
    losses = [r["loss"] for r in read_metrics(tmp_path / "metrics.jsonl")]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert result.last_loss < 0.8 * losses[0]


def test_atomic_save_leaves_the_old_checkpoint_when_writing_fails(tmp_path, monkeypatch):
    path = pstate.atomic_save({"v": torch.ones(3)}, tmp_path / "checkpoint.pt")

    def torn_save(obj, fh, *args, **kwargs):
        fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        pstate.atomic_save({"v": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["v"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    pstate.atomic_save(pstate.capture_rng(), tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random())
    pstate.restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


# ----------------------------------------------------------------------------- the shipped demo
def test_demo_checkpoint_is_small_and_loads():
    path = REPO / "weights" / "demo-tiny.pt"
    if not path.exists():
        pytest.skip("weights/demo-tiny.pt not built yet (see weights/DEMO.md)")
    assert path.stat().st_size <= 10 * 1024 * 1024
    ckpt = load_checkpoint(path)
    assert ckpt.provenance["recipe"] == "demo-tiny"
    assert ckpt.provenance["step"] == ckpt.provenance["total_steps"]
    assert ckpt.config == RECIPES["demo-tiny"].mwmae_config()
    model = hear_mwmae.load_model(str(path), device="cpu")
    audio = torch.from_numpy(make_clip(1, 0, duration=1.0).waveform)[None]
    emb = hear_mwmae.get_scene_embeddings(audio, model)
    assert emb.shape == (1, model.scene_embedding_size) and torch.isfinite(emb).all()
