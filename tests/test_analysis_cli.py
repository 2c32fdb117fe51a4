"""End to end: `hear-mwmae analyze attention|pwcca` on the converted fixture checkpoints, the demo
model and an encoder-only file; inputs from an audio folder; window bounds of every head."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hear_mwmae import cli
from hear_mwmae.analysis.clips import audio_clips
from hear_mwmae.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def ckpts(converted, tmp_path_factory):
    """name -> our .pt of a converted fixture; "<name>-encoder" for an encoder-only file."""
    root = tmp_path_factory.mktemp("analysis_ckpt")
    out = {}
    for name in ("mwmae_tiny", "mae_cls_tiny", "mwmae_shift_tiny", "audiomae_swin_tiny"):
        c = converted(name)
        out[name] = save_checkpoint(root / f"{name}.pt", c.config, c.state_dict, provenance=c.provenance)
    c = converted("mwmae_tiny")
    out["mwmae_tiny-encoder"] = save_checkpoint(root / "enc.pt", c.config, c.state_dict, encoder_only=True)
    return out


def _run(*argv) -> int:
    return cli.main(["analyze", *map(str, argv)])


def _check_bounds(rows):
    """Every windowed head: d_flat <= w - 1 and entropy <= ln w (grid windows: d_time <= wt - 1,
    d_freq <= wf - 1, entropy <= ln(wt wf))."""
    windowed = [r for r in rows if r["window"]]
    for r in windowed:
        assert r["entropy"] <= math.log(r["window"]) + 1e-9, r
        if r["window_shape"]:
            wt, wf = r["window_shape"]
            assert r["d_time"] <= wt - 1 + 1e-9 and r["d_freq"] <= wf - 1 + 1e-9, r
        else:
            assert r["d_flat"] <= r["window"] - 1 + 1e-9, r
    return len(windowed)


def test_attention_two_checkpoints_side_by_side(ckpts, tmp_path):
    out = tmp_path / "a"
    assert _run("attention", ckpts["mwmae_tiny"], ckpts["mae_cls_tiny"], "--out", out, "--synthetic", "--clips", 2,
                "--part", "both", "--bootstrap", 50, "--no-progress") == 0
    result = json.loads((out / "attention.json").read_text())
    assert result["seed"] == 0 and result["n_clips"] == 2
    assert [c["synth_index"] for c in result["clips"]] == [0, 1]
    labels = [m["label"] for m in result["models"]]
    assert labels == ["mwmae_tiny", "mae_cls_tiny", "null (mwmae_tiny arch.)", "null (mae_cls_tiny arch.)"]
    assert result["models"][0]["time_patch_ms"] == 40.0 and result["models"][0]["freq_patch_mel_bins"] == 16
    # 4 models x 2 layers x 3 encoder heads; x 8 decoder heads
    assert len(result["encoder"]) == 4 * 2 * 3 and len(result["decoder"]) == 4 * 2 * 8
    for row in result["encoder"] + result["decoder"]:
        for key in ("layer", "head", "window", "d_grid", "d_time_ms", "d_freq", "d_flat", "entropy"):
            assert key in row
        assert row["d_time_ms"] == pytest.approx(40 * row["d_time"])
        assert row["ci"]["d_grid"][0] <= row["d_grid"] + 1e-12 <= row["ci"]["d_grid"][1] + 2e-12
        assert row["null"] == row["model"].startswith("null")
    assert _check_bounds(result["decoder"]) == 2 * 2 * 6  # mwmae_tiny and its null: windows 2..125 per layer
    with open(out / "attention.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == len(result["encoder"]) + len(result["decoder"])
    for name in ("encoder_layers", "encoder_scatter", "decoder_layers", "decoder_scatter", "decoder_windows"):
        assert (out / f"attention_{name}.png").read_bytes()[:8] == PNG
    assert not (out / "attention_encoder_windows.png").exists()  # no encoder head has a window


def test_attention_shifted_windows_and_audio_folder(ckpts, tmp_path):
    audio = tmp_path / "audio"
    (audio / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(audio / "a.wav", 0.1 * rng.standard_normal(44100 * 3).astype(np.float32), 44100)
    sf.write(audio / "sub" / "b.flac", 0.1 * rng.standard_normal(16000).astype(np.float32), 16000)
    out = tmp_path / "s"
    assert _run("attention", ckpts["mwmae_shift_tiny"], "--out", out, "--audio", audio, "--clips", 3, "--seed", 5,
                "--part", "both", "--bootstrap", 20, "--no-null", "--no-progress", "--no-figures") == 0
    result = json.loads((out / "attention.json").read_text())
    assert result["seed"] == 5 and result["inputs"]["kind"] == "audio"
    assert {Path(c["source"]).name for c in result["clips"]} == {"a.wav", "b.flac"}
    assert all(0 <= c["start_s"] <= 1.0 for c in result["clips"])  # 3 s file, 2 s segment
    # shifted windows in the encoder (10, 0, 2; odd block shifted) and the decoder
    assert any(r["shift"] for r in result["encoder"]) and any(r["shift"] for r in result["decoder"])
    assert _check_bounds(result["encoder"]) > 0 and _check_bounds(result["decoder"]) > 0
    # the same seed draws the same clips; another seed others
    segment_s = 199 * 160 / 16000  # the shortest waveform giving 200 log-mel frames
    assert [c.to_dict() for c in audio_clips(audio, 3, 5, segment_s)] == result["clips"]
    assert [c.to_dict() for c in audio_clips(audio, 3, 6, segment_s)] != result["clips"]


def test_attention_swin_decoder_of_audiomae(ckpts, tmp_path):
    out = tmp_path / "w"
    assert _run("attention", ckpts["audiomae_swin_tiny"], "--out", out, "--synthetic", "--clips", 1, "--part",
                "decoder", "--no-null", "--bootstrap", 10, "--no-progress") == 0
    result = json.loads((out / "attention.json").read_text())
    model = result["models"][0]
    assert model["grid"] == [64, 8] and model["time_patch_ms"] == 160.0 and model["family"] == "audiomae"
    rows = result["decoder"]
    assert len(rows) == 16 * 16 and {tuple(r["window_shape"]) for r in rows} == {(4, 4)}
    assert {r["shift"] for r in rows if r["layer"] % 2} == {2}  # odd blocks shift by half a window in time
    assert {r["shift"] for r in rows if not r["layer"] % 2} == {0}
    assert _check_bounds(rows) == 256
    assert (out / "attention_decoder_windows.png").read_bytes()[:8] == PNG


def test_encoder_only_checkpoint(ckpts, tmp_path, caplog):
    enc = ckpts["mwmae_tiny-encoder"]
    assert _run("attention", enc, "--out", tmp_path / "d", "--synthetic", "--clips", 1, "--part", "decoder",
                "--no-progress") == 2
    assert "encoder-only" in caplog.text and not (tmp_path / "d" / "attention.json").exists()
    assert _run("pwcca", enc, "--out", tmp_path / "p", "--synthetic", "--clips", 1, "--no-progress") == 2
    assert _run("attention", enc, "--out", tmp_path / "e", "--synthetic", "--clips", 1, "--no-null",
                "--no-figures", "--bootstrap", 10, "--no-progress") == 0
    assert len(json.loads((tmp_path / "e" / "attention.json").read_text())["encoder"]) == 2 * 3


def test_pwcca_on_the_demo_model(tmp_path, capsys):
    demo = REPO / "weights" / "demo-tiny.pt"
    out = tmp_path / "p"
    assert _run("pwcca", demo, "--out", out, "--synthetic", "--clips", 2, "--no-progress") == 0
    result = json.loads((out / "pwcca_decoder.json").read_text())
    matrix = np.array(result["matrix"])
    assert matrix.shape == (16, 16) and result["datapoints"] == 2 * 250
    assert [(h["layer"], h["head"]) for h in result["heads"][:9]] == [(0, h) for h in range(8)] + [(1, 0)]
    assert [h["window"] for h in result["heads"][:8]] == [2, 5, 10, 25, 50, 125, 0, 0]
    np.testing.assert_allclose(np.diag(matrix), 1.0, atol=1e-8)
    assert np.all(matrix > 0) and np.all(matrix < 1 + 1e-9)
    s = result["summary"]
    same = np.mean([matrix[h, 8 + h] for h in range(8)] + [matrix[8 + h, h] for h in range(8)])
    assert s["same_head_cross_layer"] == pytest.approx(same) and s["pairs"]["same_head_cross_layer"] == 16
    assert s["pairs"]["other_cross_layer"] == 2 * 8 * 7
    assert result["null"]["summary"]["same_head_cross_layer"] is not None
    assert (out / "pwcca_decoder.png").read_bytes()[:8] == PNG
    assert "same head index across layers" in capsys.readouterr().out


def test_pwcca_encoder_of_cls_model(ckpts, tmp_path):
    out = tmp_path / "c"
    assert _run("pwcca", ckpts["mae_cls_tiny"], "--out", out, "--synthetic", "--clips", 1, "--part", "encoder",
                "--no-null", "--no-figures", "--no-progress") == 0
    result = json.loads((out / "pwcca_encoder.json").read_text())
    assert result["datapoints"] == 250  # CLS dropped
    assert np.array(result["matrix"]).shape == (6, 6)


def test_decoder_masks_do_not_depend_on_the_batch_size(converted):
    from hear_mwmae.analysis.clips import segment_samples, synthetic_clips
    from hear_mwmae.analysis.recording import from_checkpoint
    from hear_mwmae.analysis.study import attention_study
    from hear_mwmae.checkpoint import Checkpoint

    c = converted("mwmae_tiny")
    model = from_checkpoint(Checkpoint(c.config, c.state_dict), "t", "t")
    clips = synthetic_clips(3, 0, segment_samples(c.config) / 16000)
    one = attention_study(model, ["decoder"], clips, mask_seed=4, batch_size=1, progress=False)[0].per_clip
    three = attention_study(model, ["decoder"], clips, mask_seed=4, batch_size=3, progress=False)[0].per_clip
    np.testing.assert_allclose(one, three, rtol=0, atol=1e-9)
    other = attention_study(model, ["decoder"], clips, mask_seed=5, batch_size=3, progress=False)[0].per_clip
    assert np.abs(other - three).max() > 1e-4  # the mask seed matters
