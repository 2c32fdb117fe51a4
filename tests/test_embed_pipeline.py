"""`embed` as a pipeline (issue 15): decoding workers give the outputs and index of the in-process
path, Parquet shards read back as the in-memory embeddings (pyarrow, pandas, `datasets`), resume per
clip after kill -9 with workers and Parquet, replaced inputs and checkpoints re-embedded without
an old row left visible, --files-from, a decoder process that dies costs one file."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import cli as package_cli
from hear_mwmae.audio import read_audio
from hear_mwmae.checkpoint import save_checkpoint
from hear_mwmae.embed_decode import CRASHED, Decoder, default_workers
from hear_mwmae.embed_index import Index
from hear_mwmae.embed_plan import canonical, output_names
from hear_mwmae.files import sha256_file

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def cli(*argv) -> int:
    return package_cli.main(["embed", "--no-progress", *map(str, argv)])


def corpus(root: Path, n: int = 9, seconds: float = 1.5, seed: int = 0) -> list[Path]:
    """n files of varied lengths, rates (16 / 22.05 / 44.1 kHz) and channels, in two folders."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        sr = (16000, 22050, 44100)[i % 3]
        channels = 1 + i % 2
        frames = int(sr * seconds * (0.5 + rng.random()))
        path = root / ("a" if i % 2 else "b") / f"clip{i}.{'flac' if i % 3 == 2 else 'wav'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (0.2 * rng.standard_normal((frames, channels))).astype(np.float32), sr)
        files.append(path)
    return files


def records(out: Path) -> dict[str, dict]:
    return dict(Index(out).records)


def rows(out: Path) -> "pa.Table":
    return pq.read_table(out / "embeddings")


def fresh(runtime, path: Path, mode: str = "scene") -> tuple[np.ndarray, np.ndarray]:
    audio = torch.from_numpy(read_audio(path)[0][None])
    if mode == "scene":
        return hear_mwmae.get_scene_embeddings(audio, runtime)[0].numpy(), np.zeros(0, np.float32)
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio, runtime)
    return emb[0].numpy(), ts[0].numpy()


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint):
    return hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")


# ----------------------------------------------------------------------------- workers
@pytest.mark.parametrize("mode", ["scene", "timestamp"])
def test_workers_give_the_outputs_and_the_index_of_the_in_process_path(tmp_path, tiny_checkpoint, mode):
    files = corpus(tmp_path / "in")
    (tmp_path / "in" / "bad.wav").write_bytes(b"RIFF not audio")
    (tmp_path / "in" / "notes.txt").write_text("x")
    runs = {}
    for workers, order in [(0, ["a", "b"]), (1, ["b", "a"]), (2, ["a", "b"])]:
        out = tmp_path / f"out{workers}"
        inputs = [tmp_path / "in" / order[0], tmp_path / "in" / order[1], tmp_path / "in"]
        assert cli("--model", tiny_checkpoint, *inputs, "--out", out, "--mode", mode, "--workers", workers,
                   "--max-chunks-per-batch", "2") == 1  # bad.wav
        runs[workers] = out
    reference = records(runs[0])
    assert len(reference) == len(files) + 2
    for workers in (1, 2):
        assert records(runs[workers]) == reference, workers  # every field of every record
        for record in reference.values():
            for name in filter(None, (record["output"], record["timestamps"])):
                assert np.array_equal(np.load(runs[workers] / name), np.load(runs[0] / name)), name  # bit for bit


@pytest.mark.parametrize("cores,ranks,files,on_cpu,expected", [
    (2, 1, 100, True, 0),     # the model needs both cores more than decoding does
    (16, 1, 100, True, 4),
    (64, 1, 100, True, 8),
    (2, 1, 100, False, 2),    # model on a GPU: one decoder per core
    (16, 2, 100, False, 8),
    (16, 4, 100, False, 4),   # the cores are shared by the ranks on the machine
    (64, 1, 7, False, 0),     # too few files to pay for starting processes
])
def test_default_workers_by_device_cores_and_ranks(monkeypatch, cores, ranks, files, on_cpu, expected):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert default_workers(files, ranks, on_cpu) == expected


def test_a_decoder_process_that_dies_costs_only_the_file_it_was_decoding(tmp_path):
    files = corpus(tmp_path / "in", n=6)
    expected = {p: read_audio(p)[0] for p in files}
    with Decoder(workers=1, prefetch=3) as decoder:
        got = []
        for i, (path, clip) in enumerate(decoder.map(files, str)):
            got.append((path, clip))
            if i == 0:
                decoder._pool[0].proc.kill()  # dies with requests in hand
    crashed = [p for p, c in got if c.error == CRASHED]
    assert [p for p, _ in got] == files and len(crashed) <= 3
    for path, clip in got:
        if clip.error is None:
            assert np.array_equal(clip.samples, expected[path])
    assert got[-1][1].error is None  # the replacement decoded what was left


# ----------------------------------------------------------------------------- Parquet
@pytest.mark.parametrize("mode", ["scene", "timestamp"])
def test_parquet_rows_read_back_equal_the_in_memory_embeddings(tmp_path, tiny_checkpoint, runtime, mode):
    files = corpus(tmp_path / "in", n=7)
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, tmp_path / "in", "--out", out, "--format", "parquet", "--shard-rows", "3",
               "--mode", mode, "--workers", "2") == 0
    shards = sorted((out / "embeddings").glob("*.parquet"))
    assert len(shards) == 3 and not list(out.rglob("*.npy"))
    table = rows(out)
    assert table.num_rows == 7 and len(set(table["input"].to_pylist())) == 7
    by_input = {r["input"]: r for r in table.to_pylist()}
    sha = sha256_file(tiny_checkpoint)
    for path in files:
        row = by_input[str(canonical(path))]
        emb, ts = fresh(runtime, path, mode)
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), emb, rtol=1e-5, atol=1e-6)
        if mode == "timestamp":
            np.testing.assert_array_equal(np.asarray(row["timestamps"], np.float32), ts)
        assert row["path"] == path.relative_to(tmp_path / "in").as_posix() and row["checkpoint_sha256"] == sha
        assert row["sample_rate"] == sf.info(path).samplerate and row["duration_s"] == pytest.approx(
            sf.info(path).duration, abs=1e-6)
    dim = runtime.timestamp_embedding_size
    assert table.schema.field("embedding").type == (pa.list_(pa.float32(), dim) if mode == "scene"
                                                    else pa.list_(pa.list_(pa.float32(), dim)))
    # pandas and datasets read the folder as one table
    import pandas as pd

    frame = pd.read_parquet(out / "embeddings")
    assert len(frame) == 7 and set(frame["input"]) == set(by_input)
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset("parquet", data_dir=str(out / "embeddings"), split="train")
    assert loaded.num_rows == 7
    first = loaded[0]
    np.testing.assert_array_equal(np.asarray(first["embedding"], np.float32),
                                  np.asarray(by_input[first["input"]]["embedding"], np.float32))
    # the index names each row's shard
    for key, record in records(out).items():
        assert record["status"] == "ok" and record["format"] == "parquet"
        assert key in pq.read_table(out / record["output"], columns=["input"])["input"].to_pylist()


def test_a_replaced_input_and_a_replaced_checkpoint_leave_no_old_row(tmp_path, converted, tiny_checkpoint):
    c = converted("mwmae_tiny")
    model = save_checkpoint(tmp_path / "model.pt", c.config, c.state_dict)
    files = corpus(tmp_path / "in", n=5)
    out = tmp_path / "out"
    args = ("--model", model, tmp_path / "in", "--out", out, "--format", "parquet", "--workers", "0")
    assert cli(*args) == 0
    first_shards = sorted((out / "embeddings").glob("*.parquet"))
    sf.write(files[1], 0.1 * np.ones(8000, np.float32), 16000)  # another file at the same path
    assert cli(*args) == 0
    table = rows(out)
    assert table.num_rows == 5 and len(set(table["input"].to_pylist())) == 5
    runtime = hear_mwmae.load_model(str(model), device="cpu")
    replaced = {r["input"]: r for r in table.to_pylist()}[str(canonical(files[1]))]
    np.testing.assert_allclose(replaced["embedding"], fresh(runtime, files[1])[0], rtol=1e-5, atol=1e-6)
    assert replaced["sample_rate"] == 16000
    assert records(out)[str(canonical(files[1]))]["reason"].startswith("input changed")
    assert sorted((out / "embeddings").glob("*.parquet")) != first_shards  # the old shard was rewritten
    # a replaced checkpoint: refused, then --force re-embeds every row
    state = {k: v * 1.5 if k.endswith("mlp.fc1.weight") else v for k, v in c.state_dict.items()}
    save_checkpoint(model, c.config, state)
    assert cli(*args) == 2
    assert cli(*args, "--force") == 0
    table = rows(out)
    new = hear_mwmae.load_model(str(model), device="cpu")
    assert table.num_rows == 5 and set(table["checkpoint_sha256"].to_pylist()) == {sha256_file(model)}
    for row in table.to_pylist():
        np.testing.assert_allclose(row["embedding"], fresh(new, Path(row["input"]))[0], rtol=1e-5, atol=1e-6)
    # an input that disappears loses its row; --keep-removed keeps it
    files[0].unlink()
    assert cli(*args, "--keep-removed") == 0
    assert rows(out).num_rows == 5
    assert cli(*args) == 0
    assert rows(out).num_rows == 4 and str(canonical(files[0])) not in rows(out)["input"].to_pylist()
    # switching format is a change of settings: refused, --force replaces the rows by files
    assert cli("--model", model, tmp_path / "in", "--out", out, "--workers", "0") == 2
    assert cli("--model", model, tmp_path / "in", "--out", out, "--workers", "0", "--force") == 0
    assert not list((out / "embeddings").glob("*.parquet")) and len(list(out.rglob("*.npy"))) == 4


def test_kill_9_mid_run_with_workers_and_parquet_then_resume(tmp_path, tiny_checkpoint, runtime):
    files = corpus(tmp_path / "in", n=24, seconds=6.0, seed=3)
    out = tmp_path / "out"
    args = [sys.executable, "-m", "hear_mwmae.cli", "embed", "--no-progress", "--model", str(tiny_checkpoint),
            str(tmp_path / "in"), "--out", str(out), "--format", "parquet", "--shard-rows", "2", "--workers", "2",
            "--max-chunks-per-batch", "1"]
    from conftest import child_env

    proc = subprocess.Popen(args, env=child_env(OMP_NUM_THREADS="1"), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((out / "embeddings").glob("*.parquet")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-2000:]
    before = records(out)
    assert 0 < sum(r["status"] == "ok" for r in before.values()) < len(files)  # killed mid-run
    sf.write(files[5], 0.05 * np.ones(12000, np.float32), 16000)  # and an input replaced meanwhile
    assert cli("--model", tiny_checkpoint, tmp_path / "in", "--out", out, "--format", "parquet", "--shard-rows", "2",
               "--workers", "2") == 0
    table = rows(out)
    inputs = table["input"].to_pylist()
    assert sorted(inputs) == sorted(str(canonical(p)) for p in files)  # none missing, none twice
    for row in table.to_pylist():  # none stale
        np.testing.assert_allclose(row["embedding"], fresh(runtime, Path(row["input"]))[0], rtol=1e-5, atol=1e-6)
    after = records(out)
    assert all(r["status"] == "ok" for r in after.values()) and len(after) == len(files)
    assert not list(out.rglob("*.tmp"))


def test_files_from_a_list_or_stdin(tmp_path, tiny_checkpoint, monkeypatch):
    files = corpus(tmp_path / "in", n=4)
    listing = tmp_path / "list.txt"
    listing.write_text(f"{files[0]}\n\n  {tmp_path / 'in' / 'a'}  \n{tmp_path / 'missing.wav'}\n")
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, "--files-from", listing, "--out", out) == 1  # missing.wav
    embedded = {Path(k).name for k, r in records(out).items() if r["status"] == "ok"}
    assert embedded == {files[0].name, *(p.name for p in files if p.parent.name == "a")}
    assert records(out)[str(canonical(tmp_path / "missing.wav"))]["status"] == "error: no such file or directory"
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(f"{files[2]}\n".encode())))
    assert cli("--model", tiny_checkpoint, files[3], "--files-from", "-", "--out", tmp_path / "out2") == 0
    assert {Path(k).name for k in records(tmp_path / "out2")} == {files[2].name, files[3].name}
    assert cli("--model", tiny_checkpoint, "--out", tmp_path / "out3") == 2  # nothing to embed: one line


def test_the_output_names_do_not_depend_on_the_format(tmp_path, tiny_checkpoint):
    """npy outputs keep their names; Parquet records name their shard (a sanity check of the store split)."""
    files = corpus(tmp_path / "in", n=2)
    assert cli("--model", tiny_checkpoint, files[0], "--out", tmp_path / "o") == 0
    assert records(tmp_path / "o")[str(canonical(files[0]))]["output"] == \
        output_names(canonical(files[0]), "scene")[0].as_posix()
    assert json.loads((tmp_path / "o" / "index.jsonl").read_text())["format"] == "npy"
