"""Hostile audio and output folders (issue 19, the embed side): nothing outside --out is written or
deleted, no link inside it is followed, a damaged index is repaired, audio cannot exhaust memory
(streamed in blocks, bounded rates / channels / duration), non-finite embeddings are errors.

Memory cases run `embed` in a child process under an address-space cap (`capped.run_capped`)
and assert its peak resident memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import cli as package_cli
from hear_mwmae.checkpoint import save_checkpoint
from hear_mwmae.embed_index import INDEX_NAME, Index
from hear_mwmae.embed_plan import canonical, output_names
from hear_mwmae.files import sha256_file

import capped

SR = 16000
TESTS = Path(__file__).resolve().parent
CHILD = "import sys, capped; capped.report_peak_rss(); from hear_mwmae import cli; sys.exit(cli.main(sys.argv[1:]))"


def cli(*argv) -> int:
    return package_cli.main(["embed", "--no-progress", *map(str, argv)])


def tone(seconds: float, seed: int, sr: int = SR, channels: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr))[:, None] / sr
    x = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed + 100 * np.arange(channels)) * t)
    x = x + 0.02 * rng.standard_normal(x.shape)
    return (x[:, 0] if channels == 1 else x).astype(np.float32)


def write(path: Path, audio: np.ndarray, sr: int = SR, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio, sr, subtype=subtype)
    return path


def records(out: Path) -> dict[str, dict]:
    return {r["input"]: r for r in Index(out).records.values()}


def output_of(out: Path, source: Path) -> Path:
    return out / output_names(canonical(source), "scene")[0]


def errors_logged(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# ----------------------------------------------------------------------------- nothing outside --out
def test_force_never_deletes_what_an_index_names_outside_out(tmp_path, tiny_checkpoint, caplog):
    """Before: `--force: deleted 2 output file(s)`, both outside --out."""
    src, out = write(tmp_path / "in" / "a.wav", tone(1.0, 1)), tmp_path / "out"
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    victims = [tmp_path / "victim.txt", tmp_path / "abs_victim.txt", tmp_path / "third.txt"]
    for v in victims:
        v.write_text("precious")
    other = {"status": "ok", "checkpoint_sha256": "0" * 64, "mode": "scene", "precision": "fp32"}
    hostile = [{"input": "/x/one.wav", "output": "../victim.txt", **other},
               {"input": "/x/two.wav", "output": str(victims[1]), "timestamps": None, **other},
               {"input": "/x/three.wav", "output": "sub/../../third.txt", **other},
               {"input": "/x/four.wav", "output": ["../victim.txt"], **other}]
    # and one genuine result of other settings, so that the run is refused, then forced
    record = records(out)[str(canonical(src))]
    genuine = {**record, "checkpoint_sha256": "1" * 64}
    with open(out / INDEX_NAME, "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in [*hostile, genuine])
    caplog.set_level(logging.WARNING)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 2
    refusal = errors_logged(caplog)[-1]
    assert "nothing was changed" in refusal and "deletes only the outputs inside" in refusal, refusal
    assert all(v.read_text() == "precious" for v in victims)
    caplog.clear()
    assert cli("--model", tiny_checkpoint, src, "--out", out, "--force") == 0
    assert all(v.read_text() == "precious" for v in victims)
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert warnings.count("names a path outside the folder") >= 3 and "is not a path" in warnings
    after = records(out)
    assert after[str(canonical(src))]["status"] == "ok" and output_of(out, src).is_file()
    assert after["/x/one.wav"]["status"].startswith("error: damaged index record (repaired): output names a path")


def test_a_link_inside_out_is_never_written_through(tmp_path, tiny_checkpoint):
    """Before: with OUT/<folder> -> elsewhere, the output landed in elsewhere/."""
    src, out, elsewhere = write(tmp_path / "in" / "a.wav", tone(1.0, 2)), tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    first = output_names(canonical(src), "scene")[0].parts[0]
    os.symlink(elsewhere, out / first)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 1
    assert not any(elsewhere.rglob("*")), list(elsewhere.rglob("*"))
    status = records(out)[str(canonical(src))]["status"]
    assert status.startswith("error:") and "is a symbolic link" in status and "never writes through links" in status


def test_a_link_at_an_output_name_is_replaced_not_followed(tmp_path, tiny_checkpoint):
    src, out = write(tmp_path / "in" / "a.wav", tone(1.0, 3)), tmp_path / "out"
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"precious")
    target = output_of(out, src)
    target.unlink()
    os.symlink(victim, target)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and np.load(target).shape == (960,)
    assert records(out)[str(canonical(src))]["reason"] == "output missing"  # a link is not our output


@pytest.mark.parametrize("name", [INDEX_NAME, "index.part-00000.jsonl", ".embed.lock", "embed.json"])
def test_links_at_the_index_the_lock_and_the_layout_are_refused(tmp_path, tiny_checkpoint, caplog, name):
    """Before: OUT/index.jsonl -> file: two JSON lines appended to that file (the lock: truncated)."""
    src, out = write(tmp_path / "in" / "a.wav", tone(1.0, 4)), tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    os.symlink(victim, out / name)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 2
    assert victim.read_text() == "precious\n"
    message = errors_logged(caplog)[-1]
    assert f"{name} is a symbolic link" in message and "\n" not in message
    assert not output_of(out, src).exists()


# ----------------------------------------------------------------------------- a damaged index
def test_a_damaged_index_is_repaired_and_the_run_goes_on(tmp_path, tiny_checkpoint, caplog):
    """Before: a record whose output is a list, or bytes that are not UTF-8: a traceback, and the
    folder stayed unusable until edited by hand."""
    src, out = tmp_path / "in", tmp_path / "out"
    for name in "abcd":
        write(src / f"{name}.wav", tone(0.5, ord(name)))
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    lines = (out / INDEX_NAME).read_bytes().splitlines()
    by_name = {Path(json.loads(line)["input"]).name: json.loads(line) for line in lines}
    damaged = [
        json.dumps({**by_name["a.wav"], "output": [by_name["a.wav"]["output"]]}).encode(),  # a list
        json.dumps(by_name["b.wav"]).encode().replace(b'"status": "ok"', b'"status": "ok\xff\xfe"'),  # not UTF-8
        json.dumps({**by_name["c.wav"], "input_size": "12", "checkpoint_sha256": ["x"]}).encode(),  # types
        b'\x00\xff garbage',
        json.dumps(by_name["d.wav"]).encode()[:25],  # cut short by a kill: no newline
    ]
    (out / INDEX_NAME).write_bytes(b"\n".join(damaged))
    caplog.set_level(logging.WARNING)
    assert cli("--model", tiny_checkpoint, src, "--out", out) == 0
    warnings = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "output is not a path" in warnings and "checkpoint_sha256 is not text" in warnings
    assert "ignoring a malformed line" in warnings
    index = {Path(k).name: r for k, r in records(out).items()}
    assert set(index) == {"a.wav", "b.wav", "c.wav", "d.wav"} and all(r["status"] == "ok" for r in index.values())
    assert index["a.wav"]["reason"] == "its index record was damaged"
    assert index["d.wav"]["reason"] == "new"
    text = (out / INDEX_NAME).read_bytes()
    assert len(text.splitlines()) == 4 and all(json.loads(line) for line in text.splitlines())


def test_a_record_appended_after_a_torn_line_is_kept(tmp_path):
    """Before: the next record was glued onto the torn line and lost when read back."""
    out = tmp_path / "out"
    out.mkdir()
    (out / INDEX_NAME).write_text('{"input": "/a.wav", "output": null, "status": "error: x"}\n{"input": "/half a li')
    index = Index(out)
    index.add({"input": "/c.wav", "output": None, "timestamps": None, "status": "error: y"})  # (flushed)
    assert set(Index(out).records) == {"/a.wav", "/c.wav"}
    # a record an older version glued onto a torn line is recovered
    (out / INDEX_NAME).write_text('{"input": "/half a li{"input": "/d.wav", "output": null, "status": "error: z"}\n')
    assert set(Index(out).records) == {"/d.wav"}


# ----------------------------------------------------------------------------- non-finite results
def test_an_embedding_that_is_not_finite_is_an_error(tmp_path, tiny_checkpoint):
    """Before: audio of 1e30 gave an all-NaN embedding recorded as "ok"."""
    huge, fine = write(tmp_path / "in" / "huge.wav", tone(1.0, 5) * 1e30), write(tmp_path / "in" / "fine.wav", tone(1.0, 6))
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, tmp_path / "in", "--out", out) == 1
    index = records(out)
    assert index[str(canonical(huge))]["status"].startswith("error: the embedding is not finite (NaN or Inf); the "
                                                           "audio peaks at 3.")
    assert not output_of(out, huge).exists()
    assert index[str(canonical(fine))]["status"] == "ok"


# ----------------------------------------------------------------------------- audio bounds
def _wav_header(path: Path, sample_rate: int, channels: int, frames: int, data: bytes | None = None) -> Path:
    """A 16-bit PCM WAV whose header says `sample_rate` and `channels` (libsndfile refuses to write such)."""
    data = bytes(frames * channels * 2) if data is None else data
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, sample_rate * channels * 2, channels * 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return path


def run_child(*argv, cap_mib: int = 3072, timeout_s: float = 300) -> capped.Ended:
    return capped.run_capped([sys.executable, "-c", CHILD, "embed", "--no-progress", *map(str, argv)],
                             address_space_mib=cap_mib, timeout_s=timeout_s, cwd=TESTS)


def test_sample_rates_and_channel_counts_out_of_bounds_are_refused_per_file(tmp_path, tiny_checkpoint):
    """Before: a header claiming 1 Hz was resampled x16000 (gigabytes: the capped child failed)."""
    src = tmp_path / "in"
    src.mkdir()
    _wav_header(src / "one_hz.wav", 1, 1, 20000)
    _wav_header(src / "odd_rate.wav", 767_999, 1, 2000)
    _wav_header(src / "many_channels.wav", 16000, 100, 1600)
    write(src / "fine.wav", tone(0.5, 7))
    ended = run_child("--model", tiny_checkpoint, src, "--out", tmp_path / "out", cap_mib=2048, timeout_s=120)
    assert ended.returncode == 1 and not ended.timed_out, str(ended)
    assert ended.peak_rss_mib < 600, str(ended)
    index = {Path(k).name: r["status"] for k, r in records(tmp_path / "out").items()}
    assert index == {
        "one_hz.wav": "error: sample rate 1 Hz is outside 1000-768000 Hz: refused",
        "odd_rate.wav": "error: sample rate 767999 Hz: the ratio 16000/767999 to 16000 Hz does not reduce (its "
                        "resampling filter would have 15359981 taps): refused",
        "many_channels.wav": "error: 100 channels: refused (at most 64)",
        "fine.wav": "ok"}


def test_max_duration_is_checked_in_the_header_and_while_decoding(tmp_path, tiny_checkpoint):
    src = tmp_path / "in"
    write(src / "long.wav", tone(3.0, 8))
    write(src / "short.wav", tone(1.0, 9))
    unknown = write(src / "unknown.flac", tone(3.0, 10), subtype="PCM_16")
    data = bytearray(unknown.read_bytes())  # STREAMINFO's total samples set to 0: "unknown" (a live stream)
    fields = int.from_bytes(data[18:26], "big") & ~((1 << 36) - 1)
    unknown.write_bytes(bytes(data[:18] + fields.to_bytes(8, "big") + data[26:]))
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, src, "--out", out, "--max-duration", "2") == 1
    index = {Path(k).name: r["status"] for k, r in records(out).items()}
    assert index["long.wav"] == "error: longer than --max-duration 2 s (the header says 3 s)"
    assert index["unknown.flac"] == "error: longer than --max-duration 2 s"  # found while decoding
    assert index["short.wav"] == "ok"
    assert cli("--model", tiny_checkpoint, src / "unknown.flac", "--out", tmp_path / "out2") == 0  # no limit: fine
    with pytest.raises(SystemExit) as stopped:  # argparse: one line, exit code 2
        cli("--model", tiny_checkpoint, src, "--out", out, "--max-duration", "-1")
    assert stopped.value.code == 2


# ----------------------------------------------------------------------------- long files: streamed, bounded
@pytest.fixture(scope="module")
def micro_checkpoint(tmp_path_factory, converted) -> Path:
    """A random MW-MAE encoder of width 32 and one block (random weights): the frontend and the
    decoder dominate, so long files embed in seconds."""
    from hear_mwmae.model import Encoder

    c = converted("mwmae_tiny")
    config = dataclasses.replace(c.config, model=dataclasses.replace(c.config.model, embed_dim=32, num_heads=1, depth=1))
    torch.manual_seed(0)
    state = {"encoder." + k: v for k, v in Encoder(config.model).state_dict().items()}
    return save_checkpoint(tmp_path_factory.mktemp("micro") / "micro.pt", config, state, encoder_only=True)


def test_a_long_file_is_embedded_in_memory_that_does_not_grow_with_its_duration(tmp_path, micro_checkpoint):
    """Before: the whole file, its 16 kHz copy, its spectrogram and its chunks were held at once
    (a 2-hour FLAC took 4 GB); here 16 minutes must peak within 60 MB of 2 minutes."""
    peaks = {}
    for minutes in (2, 16):
        src = write(tmp_path / f"in{minutes}" / "long.wav", tone(minutes * 60, minutes, sr=22050), sr=22050,
                    subtype="PCM_16")
        ended = run_child("--model", micro_checkpoint, src, "--out", tmp_path / f"out{minutes}", "--mode", "timestamp")
        assert ended.returncode == 0 and not ended.timed_out, str(ended)
        peaks[minutes] = ended.peak_rss_mib
        emb = np.load(tmp_path / f"out{minutes}" / output_names(canonical(src), "timestamp")[0])
        assert emb.shape == (minutes * 60 * 25 + 1, 160) and np.isfinite(emb).all()  # 40 ms steps, 5 x 32 wide
    assert peaks[16] - peaks[2] < 60, peaks  # before: 392 and 789 MiB
    assert not list((tmp_path / "out16").rglob("*.tmp"))


@pytest.mark.parametrize("name", ["mwmae_tiny", "audiomae_tiny"])
def test_a_streamed_file_equals_the_whole_clip_path(tmp_path, converted, monkeypatch, name):
    """A file longer than the in-memory limit is swept from its temporary file; the result equals
    the whole-clip runtime within float rounding of the clip statistics."""
    from hear_mwmae import embed_decode

    c = converted(name)
    model = save_checkpoint(tmp_path / f"{name}.pt", c.config, c.state_dict, encoder_only=True)
    runtime = hear_mwmae.load_model(str(model), device="cpu", max_chunks_per_batch=3)
    src = write(tmp_path / "in" / "a.flac", tone(23.3, 11, sr=44100, channels=2), sr=44100, subtype="PCM_16")
    monkeypatch.setattr(embed_decode, "IN_MEMORY_SAMPLES", SR * 5)  # so that 23 s counts as long
    out = tmp_path / "out"
    assert cli("--model", model, src, "--out", out, "--mode", "timestamp", "--max-chunks-per-batch", "3") == 0
    whole, _ = hear_mwmae.audio.read_audio(src)
    emb, ts = hear_mwmae.get_timestamp_embeddings(torch.from_numpy(whole[None]), runtime)
    names = output_names(canonical(src), "timestamp")
    got = np.load(out / names[0])
    np.testing.assert_array_equal(np.load(out / names[1]), ts[0].numpy())
    assert np.abs(got - emb[0].numpy()).max() < 2e-5 * np.abs(emb[0].numpy()).max()
    assert records(out)[str(canonical(src))]["checkpoint_sha256"] == sha256_file(model)
    assert not list(out.rglob("*.tmp"))
