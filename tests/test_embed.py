"""`hear-mwmae embed`: resampling, mixdown, parity with the HEAR API, resuming, failures."""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import embed
from hear_mwmae.audio import resample

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
SR = 16000


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Our .pt converted from the tiny MW-MAE fixture (skips when the fixtures are absent)."""
    run_dir = FIXTURES / "mwmae_tiny" / "ckpt"
    if not (run_dir / "config.json").exists():
        pytest.skip(f"golden fixtures absent: {FIXTURES}")
    from hear_mwmae.checkpoint import save_checkpoint
    from hear_mwmae.convert import convert_run_dir

    c = convert_run_dir(run_dir)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", c.config, c.state_dict,
                           provenance=c.provenance)


@pytest.fixture(scope="module")
def runtime(checkpoint):
    return hear_mwmae.load_model(str(checkpoint), device="cpu")


def cli(*argv: str | Path) -> int:
    """Run `hear-mwmae embed ARGV` through `register` as the package CLI would."""
    parser = argparse.ArgumentParser(prog="hear-mwmae")
    embed.register(parser.add_subparsers())
    args = parser.parse_args(["embed", "--no-progress", *map(str, argv)])
    return args.func(args)


def noise(seconds: float, seed: int, channels: int = 1, sr: int = SR) -> np.ndarray:
    """(n,) or (n, channels) float32 test audio: a tone plus noise, different per channel."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n)[:, None] / sr
    x = 0.3 * np.sin(2 * np.pi * (220 + 110 * np.arange(channels)) * t) + 0.05 * rng.standard_normal((n, channels))
    return (x[:, 0] if channels == 1 else x).astype(np.float32)


def write(path: Path, audio: np.ndarray, sr: int = SR) -> np.ndarray:
    """Write a sound file; returns the samples as stored (float WAV keeps them exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype="FLOAT" if path.suffix == ".wav" else None)
    return sf.read(path, dtype="float32")[0]


def read_index(out: Path) -> dict[str, dict]:
    """index.jsonl -> {input file name: record}."""
    lines = (out / "index.jsonl").read_text().splitlines()
    return {Path(r["input"]).name: r for r in map(json.loads, lines)}


def scene(runtime, audio: np.ndarray) -> np.ndarray:
    return hear_mwmae.get_scene_embeddings(torch.from_numpy(audio[None]), runtime)[0].numpy()


# ----------------------------------------------------------------------------- audio
@pytest.mark.parametrize("sr", [44100, 8000])
def test_resample_matches_the_analytic_sine(sr):
    n = sr + 7  # a length that does not map to a whole number of 16 kHz samples
    x = np.sin(2 * np.pi * 1000 * np.arange(n) / sr).astype(np.float32)
    y = resample(x, sr)
    assert y.dtype == np.float32 and y.shape == (math.ceil(n * SR / sr),)
    expected = np.sin(2 * np.pi * 1000 * np.arange(y.size) / SR)
    edge = SR // 20  # the FIR filter's start-up / tail: 50 ms at each end
    assert np.abs(y - expected)[edge:-edge].max() < 5e-3


def test_resample_is_identity_at_16k():
    x = noise(0.1, 0)
    assert np.array_equal(resample(x, SR), x)


# ----------------------------------------------------------------------------- parity with the API
def test_timestamp_outputs_match_the_api_and_mirror_paths(tmp_path, checkpoint, runtime):
    clips = {"a.wav": noise(2.0, 1), "sub/b.wav": noise(2.0, 2), "sub/deeper/c.flac": noise(3.37, 3)}
    clips = {rel: write(tmp_path / "in" / rel, audio) for rel, audio in clips.items()}
    (tmp_path / "in" / "notes.txt").write_text("not audio")  # ignored inside folders
    assert cli("--model", checkpoint, tmp_path / "in", "--out", tmp_path / "out", "--mode", "timestamp") == 0
    for rel, audio in clips.items():
        emb, ts = hear_mwmae.get_timestamp_embeddings(torch.from_numpy(audio[None]), runtime)
        stem = tmp_path / "out" / Path(rel).with_suffix("")
        np.testing.assert_allclose(np.load(f"{stem}.npy"), emb[0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.load(f"{stem}.ts.npy"), ts[0].numpy())
    index = read_index(tmp_path / "out")
    assert set(index) == {"a.wav", "b.wav", "c.flac"}
    assert index["c.flac"]["output"] == "sub/deeper/c.npy" and index["c.flac"]["timestamps"] == "sub/deeper/c.ts.npy"
    assert index["c.flac"]["status"] == "ok" and index["c.flac"]["duration_s"] == pytest.approx(3.37)


def test_scene_outputs_match_the_api_including_resampled_files(tmp_path, checkpoint, runtime):
    at16 = noise(1.5, 4)
    at8 = noise(1.25, 5, sr=8000)
    write(tmp_path / "x16.wav", at16)
    write(tmp_path / "x8.wav", at8, sr=8000)
    assert cli("--model", checkpoint, tmp_path / "x16.wav", tmp_path / "x8.wav", "--out", tmp_path / "out") == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "x16.npy"), scene(runtime, at16), rtol=1e-4, atol=1e-5)
    resampled = resample(at8, 8000)
    assert resampled.shape == (20000,)
    np.testing.assert_allclose(np.load(tmp_path / "out" / "x8.npy"), scene(runtime, resampled), rtol=1e-4, atol=1e-5)
    index = read_index(tmp_path / "out")
    assert index["x8.wav"]["sample_rate"] == 8000 and index["x8.wav"]["mode"] == "scene"


def test_stereo_is_mixed_down_to_the_mean_of_its_channels(tmp_path, checkpoint, runtime):
    stereo = noise(2.5, 6, channels=2)
    write(tmp_path / "st.wav", stereo)
    assert cli("--model", checkpoint, tmp_path / "st.wav", "--out", tmp_path / "out") == 0
    expected = scene(runtime, stereo.mean(axis=1))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "st.npy"), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, scene(runtime, stereo[:, 0]), atol=1e-3)  # the channels really differ
    assert read_index(tmp_path / "out")["st.wav"]["channels"] == 2


# ----------------------------------------------------------------------------- resuming
def test_resume_skips_finished_files_unless_overwrite(tmp_path, checkpoint, runtime):
    for i in range(3):
        write(tmp_path / "in" / f"f{i}.wav", noise(1.0 + i, 10 + i))
    out = tmp_path / "out"
    jobs, _ = embed.find_jobs([tmp_path / "in"], "scene")
    settings = {"model": str(checkpoint), "precision": "fp32"}
    first = embed.embed_files(runtime, jobs, out, settings=settings, progress=False)
    assert (first.embedded, first.skipped, first.failed) == (3, 0, [])
    for p in out.glob("*.npy"):
        os.utime(p, ns=(1_000_000_000, 1_000_000_000))  # an old mtime: any rewrite would change it
    again = embed.embed_files(runtime, jobs, out, settings=settings, progress=False)
    assert (again.embedded, again.skipped) == (0, 3)
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in out.glob("*.npy"))

    (out / "f1.npy").unlink()  # a lost output is redone, the others are not
    assert embed.embed_files(runtime, jobs, out, settings=settings, progress=False).embedded == 1
    assert (out / "f0.npy").stat().st_mtime_ns == 1_000_000_000
    timestamp = embed.find_jobs([tmp_path / "in"], "timestamp")[0]  # another mode is not "done"
    assert embed.embed_files(runtime, timestamp, out, mode="timestamp", settings=settings, progress=False).embedded == 3
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out, "--overwrite") == 0
    assert all(p.stat().st_mtime_ns != 1_000_000_000 for p in out.glob("*.npy"))
    assert len((out / "index.jsonl").read_text().splitlines()) == 3  # compacted: one line per output


# ----------------------------------------------------------------------------- failures
def test_bad_files_are_reported_and_the_rest_still_embedded(tmp_path, checkpoint):
    src = tmp_path / "in"
    write(src / "good1.wav", noise(1.0, 20))
    write(src / "z" / "good2.wav", noise(2.0, 21))
    (src / "garbage.wav").write_bytes(b"RIFF\x00\x00this is not audio" * 10)
    (src / "zero_bytes.wav").write_bytes(b"")
    write(src / "no_frames.wav", np.zeros(0, np.float32))
    write(src / "nan.wav", np.full(1600, np.nan, np.float32))
    out = tmp_path / "out"
    assert cli("--model", checkpoint, src, tmp_path / "missing.wav", "--out", out) == 1
    index = read_index(out)
    assert index["good1.wav"]["status"] == index["good2.wav"]["status"] == "ok"
    assert (out / "good1.npy").is_file() and (out / "z" / "good2.npy").is_file()
    for name, reason in [("garbage.wav", "error: "), ("zero_bytes.wav", "error: "),
                         ("no_frames.wav", "empty audio"), ("nan.wav", "NaN"), ("missing.wav", "no such file")]:
        assert index[name]["status"] != "ok" and reason in index[name]["status"], index[name]
        assert not (out / Path(name).with_suffix(".npy")).exists()
    # failed files are retried on the next run; the good ones are skipped
    assert cli("--model", checkpoint, src, "--out", out) == 1
    assert (out / "good1.npy").is_file()
    assert cli("--model", checkpoint, src / "good1.wav", "--out", out) == 0


def test_a_failed_write_leaves_no_partial_output(tmp_path, checkpoint, monkeypatch):
    write(tmp_path / "a.wav", noise(1.0, 30))

    def broken_save(fh, array):
        fh.write(b"\x93NUMPY half a file")
        raise OSError("disk full")

    monkeypatch.setattr(embed.np, "save", broken_save)
    assert cli("--model", checkpoint, tmp_path / "a.wav", "--out", tmp_path / "out") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["index.jsonl"]  # no .npy, no .tmp
    assert "disk full" in read_index(tmp_path / "out")["a.wav"]["status"]


def test_unloadable_model_is_exit_code_2(tmp_path):
    write(tmp_path / "a.wav", noise(0.5, 40))
    assert cli("--model", tmp_path / "nope.pt", tmp_path / "a.wav", "--out", tmp_path / "out") == 2
