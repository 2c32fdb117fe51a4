"""`hear-mwmae embed`: decoding, parity with the HEAR API, resuming without stale results,
nothing skipped in silence, locking, failures."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import audio as audio_mod
from hear_mwmae import cli as package_cli
from hear_mwmae import embed, embed_store
from hear_mwmae.audio import read_audio, resample
from hear_mwmae.embed_plan import canonical, output_names
from hear_mwmae.checkpoint import save_checkpoint
from hear_mwmae.embed_index import FolderLock
from hear_mwmae.files import sha256_file

SR = 16000


@pytest.fixture(scope="module")
def checkpoint(tiny_checkpoint) -> Path:
    """Our .pt converted from the tiny MW-MAE fixture."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def runtime(checkpoint):
    return hear_mwmae.load_model(str(checkpoint), device="cpu")


@pytest.fixture(scope="module")
def settings(checkpoint) -> dict:
    return {"model": str(checkpoint), "checkpoint_sha256": sha256_file(checkpoint), "precision": "fp32"}


def cli(*argv: str | Path) -> int:
    """Run `hear-mwmae embed ARGV` (exit code)."""
    return package_cli.main(["embed", "--no-progress", *map(str, argv)])


def out_file(out: Path, source: Path, timestamps: bool = False) -> Path:
    """Where `embed` writes the embeddings (or timestamps) of `source`."""
    emb, ts = output_names(canonical(source), "timestamp")
    return out / (ts if timestamps else emb)


def noise(seconds: float, seed: int, channels: int = 1, sr: int = SR) -> np.ndarray:
    """(n,) or (n, channels) float32 test audio: a tone plus noise, different per channel."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n)[:, None] / sr
    x = 0.3 * np.sin(2 * np.pi * (220 + 110 * np.arange(channels)) * t) + 0.05 * rng.standard_normal((n, channels))
    return (x[:, 0] if channels == 1 else x).astype(np.float32)


def write(path: Path, audio: np.ndarray, sr: int = SR, subtype: str | None = None) -> np.ndarray:
    """Write a sound file; returns the samples as stored (float WAV keeps them exactly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype=subtype or ("FLOAT" if path.suffix == ".wav" else None))
    return sf.read(path, dtype="float32")[0]


def read_index(out: Path) -> dict[str, dict]:
    """index.jsonl -> {input file name: record}."""
    lines = (out / "index.jsonl").read_text().splitlines()
    return {Path(r["input"]).name: r for r in map(json.loads, lines)}


def scene(runtime, audio: np.ndarray) -> np.ndarray:
    return hear_mwmae.get_scene_embeddings(torch.from_numpy(audio[None]), runtime)[0].numpy()


def set_mtime(paths, ns: int = 1_000_000_000) -> None:
    for p in paths:
        os.utime(p, ns=(ns, ns))


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


@pytest.mark.parametrize("suffix, keep, message", [
    (".wav", 1000, "truncated: header says 6.9 s, file holds 0.0299 s"),
    (".aiff", 1000, "truncated: header says 6.9 s, file holds 0.0296 s"),
    (".flac", 3000, "truncated or corrupt: header says 6.9 s"),
    (".mp3", 3000, "truncated: header says 6.9 s, file holds"),
])
def test_a_truncated_file_is_an_error_naming_both_durations(tmp_path, suffix, keep, message):
    full = tmp_path / f"full{suffix}"
    write(full, noise(6.9, 1), subtype="PCM_16" if suffix in (".wav", ".aiff") else None)
    assert read_audio(full)[0].shape == (110400,)  # the whole file reads fine
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(full.read_bytes()[:keep])
    with pytest.raises(audio_mod.AudioError, match=message.replace(".", r"\.")):
        read_audio(cut)


def _write_with_pyav(path: Path, audio: np.ndarray, codec: str = "aac") -> None:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=SR)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
        frame.sample_rate = SR
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)


def test_m4a_is_decoded_with_pyav(tmp_path):
    x = noise(2.0, 2)
    _write_with_pyav(tmp_path / "a.m4a", x)
    y, info = read_audio(tmp_path / "a.m4a")
    assert info["decoder"] == "pyav" and info["sample_rate"] == SR
    assert abs(y.shape[0] - x.shape[0]) <= 2048  # AAC adds encoder priming / padding frames
    # the same tone: spectra agree (AAC is lossy, and its priming delay shifts the samples)
    spectrum = lambda s: np.abs(np.fft.rfft(s[4000:28000]))  # noqa: E731
    assert np.corrcoef(spectrum(x), spectrum(y))[0, 1] > 0.95


# ----------------------------------------------------------------------------- parity with the API
def test_timestamp_outputs_match_the_api_and_mirror_paths(tmp_path, checkpoint, runtime):
    clips = {"a.wav": noise(2.0, 1), "sub/b.wav": noise(2.0, 2), "sub/deeper/c.flac": noise(3.37, 3)}
    clips = {rel: write(tmp_path / "in" / rel, audio) for rel, audio in clips.items()}
    (tmp_path / "in" / "notes.txt").write_text("not audio")  # listed in the index, not embedded
    assert cli("--model", checkpoint, tmp_path / "in", "--out", tmp_path / "out", "--mode", "timestamp") == 0
    for rel, audio in clips.items():
        emb, ts = hear_mwmae.get_timestamp_embeddings(torch.from_numpy(audio[None]), runtime)
        source = tmp_path / "in" / rel
        np.testing.assert_allclose(np.load(out_file(tmp_path / "out", source)), emb[0].numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.load(out_file(tmp_path / "out", source, True)), ts[0].numpy())
    index = read_index(tmp_path / "out")
    assert set(index) == {"a.wav", "b.wav", "c.flac", "notes.txt"}
    assert index["notes.txt"]["status"] == "skipped: not audio (extension '.txt')"
    mirrored = (tmp_path / "in").resolve().relative_to("/").as_posix() + "/sub/deeper/c.flac"
    assert index["c.flac"]["output"] == f"{mirrored}.npy" and index["c.flac"]["timestamps"] == f"{mirrored}.ts.npy"
    assert index["c.flac"]["status"] == "ok" and index["c.flac"]["duration_s"] == pytest.approx(3.37)
    assert index["c.flac"]["reason"] == "new" and index["c.flac"]["checkpoint_sha256"] == sha256_file(checkpoint)


def test_scene_outputs_match_the_api_including_resampled_files(tmp_path, checkpoint, runtime):
    at16 = noise(1.5, 4)
    at8 = noise(1.25, 5, sr=8000)
    write(tmp_path / "x16.wav", at16)
    write(tmp_path / "x8.wav", at8, sr=8000)
    assert cli("--model", checkpoint, tmp_path / "x16.wav", tmp_path / "x8.wav", "--out", tmp_path / "out") == 0
    np.testing.assert_allclose(np.load(out_file(tmp_path / "out", tmp_path / "x16.wav")), scene(runtime, at16),
                               rtol=1e-4, atol=1e-5)
    resampled = resample(at8, 8000)
    assert resampled.shape == (20000,)
    np.testing.assert_allclose(np.load(out_file(tmp_path / "out", tmp_path / "x8.wav")), scene(runtime, resampled),
                               rtol=1e-4, atol=1e-5)
    index = read_index(tmp_path / "out")
    assert index["x8.wav"]["sample_rate"] == 8000 and index["x8.wav"]["mode"] == "scene"


def test_stereo_is_mixed_down_to_the_mean_of_its_channels(tmp_path, checkpoint, runtime):
    stereo = noise(2.5, 6, channels=2)
    write(tmp_path / "st.wav", stereo)
    assert cli("--model", checkpoint, tmp_path / "st.wav", "--out", tmp_path / "out") == 0
    expected = scene(runtime, stereo.mean(axis=1))
    np.testing.assert_allclose(np.load(out_file(tmp_path / "out", tmp_path / "st.wav")), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, scene(runtime, stereo[:, 0]), atol=1e-3)  # the channels really differ
    assert read_index(tmp_path / "out")["st.wav"]["channels"] == 2


# ----------------------------------------------------------------------------- resuming, never stale
def test_resume_reuses_valid_results_unless_overwrite(tmp_path, checkpoint, runtime, settings):
    for i in range(3):
        write(tmp_path / "in" / f"f{i}.wav", noise(1.0, 10 + i))
    out = tmp_path / "out"
    plan = embed.find_jobs([tmp_path / "in"], "scene")
    first = embed.embed_files(runtime, plan, out, settings=settings, progress=False)
    assert (first.embedded, first.reused, first.failed) == (3, 0, [])
    set_mtime(out.rglob("*.npy"))  # an old mtime: any rewrite would change it
    again = embed.embed_files(runtime, plan, out, settings=settings, progress=False)
    assert (again.embedded, again.reused) == (0, 3)
    assert all(p.stat().st_mtime_ns == 1_000_000_000 for p in out.rglob("*.npy"))

    out_file(out, tmp_path / "in" / "f1.wav").unlink()  # a lost output is redone, the others are not
    assert embed.embed_files(runtime, plan, out, settings=settings, progress=False).embedded == 1
    assert out_file(out, tmp_path / "in" / "f0.wav").stat().st_mtime_ns == 1_000_000_000
    assert read_index(out)["f1.wav"]["reason"] == "output missing"
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out, "--overwrite") == 0
    assert all(p.stat().st_mtime_ns != 1_000_000_000 for p in out.rglob("*.npy"))
    assert {r["reason"] for r in read_index(out).values()} == {"--overwrite"}
    assert len((out / "index.jsonl").read_text().splitlines()) == 3  # compacted: one line per output


def test_a_changed_input_is_embedded_again_and_the_index_says_why(tmp_path, checkpoint, runtime):
    src, out = tmp_path / "a.wav", tmp_path / "out"
    write(src, noise(0.5, 1))
    assert cli("--model", checkpoint, src, "--out", out) == 0
    new_audio = write(src, noise(1.0, 2))  # other audio at the same path (another size)
    assert cli("--model", checkpoint, src, "--out", out) == 0
    record = read_index(out)["a.wav"]
    assert record["reason"].startswith("input changed: size") and record["duration_s"] == pytest.approx(1.0)
    np.testing.assert_allclose(np.load(out_file(out, src)), scene(runtime, new_audio), rtol=1e-4, atol=1e-5)

    same_size = write(src, noise(1.0, 3))  # same size, other samples: the modification time tells
    set_mtime([src], 2_000_000_000)
    assert cli("--model", checkpoint, src, "--out", out) == 0
    assert read_index(out)["a.wav"]["reason"] == "input changed: modification time differs"
    np.testing.assert_allclose(np.load(out_file(out, src)), scene(runtime, same_size), rtol=1e-4, atol=1e-5)


def test_hash_inputs_reuses_a_touched_file_and_redoes_a_rewritten_one(tmp_path, checkpoint):
    src, out = tmp_path / "a.wav", tmp_path / "out"
    write(src, noise(1.0, 1))
    assert cli("--model", checkpoint, src, "--out", out, "--hash-inputs") == 0
    assert read_index(out)["a.wav"]["input_sha256"] == sha256_file(src)
    set_mtime(out.rglob("*.npy"))
    set_mtime([src], 3_000_000_000)  # touched only
    assert cli("--model", checkpoint, src, "--out", out, "--hash-inputs") == 0
    assert out_file(out, src).stat().st_mtime_ns == 1_000_000_000  # reused
    write(src, noise(1.0, 9))  # same size, other content
    set_mtime([src], 3_000_000_000)  # ... and even the same mtime
    assert cli("--model", checkpoint, src, "--out", out, "--hash-inputs") == 0
    assert read_index(out)["a.wav"]["reason"] == "input changed: sha256 differs"


def test_a_replaced_checkpoint_is_refused_then_re_embedded_with_force(tmp_path, converted, caplog):
    c = converted("mwmae_tiny")
    model = save_checkpoint(tmp_path / "model.pt", c.config, c.state_dict, provenance=c.provenance)
    for i in range(2):
        write(tmp_path / "in" / f"f{i}.wav", noise(1.0, 40 + i))
    out = tmp_path / "out"
    assert cli("--model", model, tmp_path / "in", "--out", out) == 0
    old_sha = sha256_file(model)
    state = {k: v * 1.5 if k.endswith("mlp.fc1.weight") else v for k, v in c.state_dict.items()}
    save_checkpoint(model, c.config, state, provenance=c.provenance)  # other weights, same path
    caplog.clear()
    assert cli("--model", model, tmp_path / "in", "--out", out) == 2
    message = caplog.records[-1].getMessage()
    assert f"checkpoint sha256 {old_sha[:12]}" in message and "--force" in message
    assert cli("--model", model, tmp_path / "in", "--out", out, "--force") == 0
    new = hear_mwmae.load_model(str(model), device="cpu")
    for i in range(2):
        audio = sf.read(tmp_path / "in" / f"f{i}.wav", dtype="float32")[0]
        np.testing.assert_allclose(np.load(out_file(out, tmp_path / "in" / f"f{i}.wav")), scene(new, audio),
                                   rtol=1e-4, atol=1e-5)
    record = read_index(out)["f0.wav"]
    assert record["checkpoint_sha256"] == sha256_file(model)
    assert record["reason"].startswith("made with other settings (--force): checkpoint_sha256")


def test_another_mode_is_refused_and_force_leaves_no_stale_files(tmp_path, checkpoint, caplog):
    for i in range(2):
        write(tmp_path / "in" / f"f{i}.wav", noise(1.0, 50 + i))
    out = tmp_path / "out"
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out, "--mode", "timestamp") == 0
    assert len(list(out.rglob("*.ts.npy"))) == 2
    caplog.clear()
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out, "--mode", "scene") == 2
    assert "mode timestamp (this run: scene)" in caplog.records[-1].getMessage()
    assert len(list(out.rglob("*.ts.npy"))) == 2  # refused: nothing touched
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out, "--mode", "scene", "--force") == 0
    assert sorted(p.name for p in out.rglob("*.npy")) == ["f0.wav.npy", "f1.wav.npy"]  # no .ts.npy left behind
    assert np.load(out_file(out, tmp_path / "in" / "f0.wav")).ndim == 1
    assert {r["mode"] for r in read_index(out).values()} == {"scene"}


def test_parts_left_by_a_killed_torchrun_are_merged(tmp_path, checkpoint, runtime, settings):
    for i in range(3):
        write(tmp_path / "in" / f"f{i}.wav", noise(1.0, 60 + i))
    out = tmp_path / "out"
    plan = embed.find_jobs([tmp_path / "in"], "scene")
    embed.embed_files(runtime, plan, out, settings=settings, progress=False)
    lines = (out / "index.jsonl").read_text().splitlines()
    (out / "index.jsonl").write_text(lines[0] + "\n")  # as if ranks 0 and 1 had been killed before merging
    (out / "index.part-00001.jsonl").write_text("\n".join(lines[1:]) + "\n" + '{"input": "half a li')
    again = embed.embed_files(runtime, plan, out, settings=settings, progress=False)
    assert (again.embedded, again.reused) == (0, 3)
    assert not list(out.glob("index.part-*")) and len((out / "index.jsonl").read_text().splitlines()) == 3


def test_a_second_embed_on_the_same_out_is_refused(tmp_path, checkpoint, caplog):
    write(tmp_path / "a.wav", noise(1.0, 70))
    (tmp_path / "out").mkdir()
    with FolderLock(tmp_path / "out"):
        assert cli("--model", checkpoint, tmp_path / "a.wav", "--out", tmp_path / "out") == 2
    assert "another `hear-mwmae embed` is writing to" in caplog.records[-1].getMessage()
    assert not out_file(tmp_path / "out", tmp_path / "a.wav").exists()
    assert cli("--model", checkpoint, tmp_path / "a.wav", "--out", tmp_path / "out") == 0  # released


# ----------------------------------------------------------------------------- nothing skipped in silence
def test_every_entry_that_is_not_embedded_is_listed_with_its_reason(tmp_path, checkpoint, caplog):
    src, out = tmp_path / "in", tmp_path / "out"
    write(src / "good.wav", noise(1.0, 80))
    (src / "notes.txt").write_text("x")
    (src / "README").write_text("x")
    (src / ".DS_Store").write_bytes(b"\0")
    (src / ".git").mkdir()
    (src / ".git" / "config").write_text("x")
    write(src / "x.wav" / "inner.wav", noise(1.0, 81))  # a directory named like audio
    full = src / "long.wav"
    write(full, noise(6.9, 82), subtype="PCM_16")
    full.write_bytes(full.read_bytes()[:1000])  # truncated
    caplog.set_level(logging.INFO)
    assert cli("--model", checkpoint, src, "--out", out) == 1  # the truncated file failed
    lines = (out / "index.jsonl").read_text().splitlines()
    index = {Path(r["input"]).resolve().relative_to(src.resolve()).as_posix(): r for r in map(json.loads, lines)}
    assert index["good.wav"]["status"] == index["x.wav/inner.wav"]["status"] == "ok"
    assert index["notes.txt"]["status"] == "skipped: not audio (extension '.txt')"
    assert index["README"]["status"] == "skipped: not audio (no extension)"
    assert index[".DS_Store"]["status"] == "skipped: hidden file"
    assert index[".git"]["status"] == "skipped: hidden directory (not searched)"
    assert index["x.wav"]["status"].startswith("skipped: a directory named like an audio file")
    assert index["long.wav"]["status"] == "error: truncated: header says 6.9 s, file holds 0.0299 s"
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("embedded ")][-1]
    assert summary.startswith("embedded 2, reused 0 (already done), failed 1, not audio 5")


def test_containers_libsndfile_cannot_read_need_pyav(tmp_path, checkpoint, runtime, monkeypatch):
    (tmp_path / "in").mkdir()
    _write_with_pyav(tmp_path / "in" / "a.m4a", noise(1.5, 90))
    out = tmp_path / "out"
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out) == 0  # PyAV installed: embedded
    audio, _ = read_audio(tmp_path / "in" / "a.m4a")
    np.testing.assert_allclose(np.load(out_file(out, tmp_path / "in" / "a.m4a")), scene(runtime, audio),
                               rtol=1e-4, atol=1e-5)
    monkeypatch.setattr(audio_mod, "pyav_available", lambda: False)  # as on a machine without `av`
    shutil.rmtree(out)
    assert cli("--model", checkpoint, tmp_path / "in", "--out", out, "--workers", "0") == 1  # (the patch: here)
    status = read_index(out)["a.m4a"]["status"]
    assert status.startswith("error: unsupported format .m4a") and "pip install av" in status


def test_a_folder_of_only_unsupported_files_is_not_a_silent_success(tmp_path, checkpoint, monkeypatch):
    monkeypatch.setattr(audio_mod, "pyav_available", lambda: False)
    (tmp_path / "in").mkdir()
    for name in ("a.m4a", "b.aac"):
        (tmp_path / "in" / name).write_bytes(b"\0\0\0\x18ftypM4A " + bytes(100))
    assert cli("--model", checkpoint, tmp_path / "in", "--out", tmp_path / "out", "--workers", "0") == 1
    assert all("pip install av" in r["status"] for r in read_index(tmp_path / "out").values())


def test_loud_audio_warning_names_the_file(tmp_path, checkpoint, caplog):
    write(tmp_path / "loud.wav", noise(1.0, 91) * 100)
    with _no_warnings():
        assert cli("--model", checkpoint, tmp_path / "loud.wav", "--out", tmp_path / "out") == 0
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(str(tmp_path / "loud.wav") in m and "far outside [-1, 1]" in m for m in messages), messages
    assert read_index(tmp_path / "out")["loud.wav"]["warning"].startswith("peak ")


class _no_warnings:
    """Fail if a Python warning is raised inside (the runtime's own unnamed warning is replaced)."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self.caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        assert not [w for w in self.caught if "outside" in str(w.message)], [str(w.message) for w in self.caught]


# ----------------------------------------------------------------------------- failures
def test_bad_files_are_reported_and_the_rest_still_embedded(tmp_path, checkpoint):
    src = tmp_path / "in"
    write(src / "good1.wav", noise(1.0, 20))
    write(src / "z" / "good2.wav", noise(1.0, 21))
    (src / "garbage.wav").write_bytes(b"RIFF\x00\x00this is not audio" * 10)
    (src / "zero_bytes.wav").write_bytes(b"")
    write(src / "no_frames.wav", np.zeros(0, np.float32))
    write(src / "nan.wav", np.full(1600, np.nan, np.float32))
    out = tmp_path / "out"
    assert cli("--model", checkpoint, src, tmp_path / "missing.wav", "--out", out) == 1
    index = read_index(out)
    assert index["good1.wav"]["status"] == index["good2.wav"]["status"] == "ok"
    assert out_file(out, src / "good1.wav").is_file() and out_file(out, src / "z" / "good2.wav").is_file()
    for name, reason in [("garbage.wav", "error: not audio, or corrupt"),
                         ("zero_bytes.wav", "error: empty file (0 bytes)"),
                         ("no_frames.wav", "empty audio"), ("nan.wav", "NaN"), ("missing.wav", "no such file")]:
        assert index[name]["status"] != "ok" and reason in index[name]["status"], index[name]
        assert not out_file(out, src / name).exists()
    # failed files are retried on the next run; the good ones are reused
    assert cli("--model", checkpoint, src, "--out", out) == 1
    assert read_index(out)["garbage.wav"]["reason"] == "previous attempt failed"
    assert cli("--model", checkpoint, src / "good1.wav", "--out", out) == 0


def test_a_failed_write_leaves_no_partial_output(tmp_path, checkpoint, monkeypatch):
    write(tmp_path / "a.wav", noise(1.0, 30))

    def broken_save(fh, array):
        fh.write(b"\x93NUMPY half a file")
        raise OSError("disk full")

    monkeypatch.setattr(embed_store.np, "save", broken_save)
    assert cli("--model", checkpoint, tmp_path / "a.wav", "--out", tmp_path / "out") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".embed.lock", "embed.json", "index.jsonl"]
    assert "disk full" in read_index(tmp_path / "out")["a.wav"]["status"]


def test_unloadable_model_is_exit_code_2(tmp_path):
    write(tmp_path / "a.wav", noise(0.5, 40))
    assert cli("--model", tmp_path / "nope.pt", tmp_path / "a.wav", "--out", tmp_path / "out") == 2


@pytest.mark.parametrize("channels", [1, 2, 3, 5, 7, 8, 11])
def test_mix_down_is_bit_equal_to_the_mean_of_the_channels(channels):
    from hear_mwmae.audio import mix_down

    rng = np.random.default_rng(channels)
    block = (rng.standard_normal((48_011, channels)) * rng.uniform(1e-4, 1.0, channels)).astype(np.float32)
    block[:5] = [np.float32(1 - 2 ** -24)] * channels  # sums that round
    mixed = mix_down(block)
    assert mixed.dtype == np.float32 and mixed.shape == (48_011,)
    assert np.array_equal(mixed, block.mean(axis=1) if channels > 1 else block[:, 0])
