"""Hugging Face `datasets` with an Audio column (issue 15), built offline from generated wav files:
`embed_dataset` equals `get_scene_embeddings` on the same audio, resampled to 16 kHz, whether or
not torchcodec is installed; `embed --hf-dataset` writes Parquet from a save_to_disk folder and from
a local Parquet layout, and resumes per row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import cli as package_cli
from hear_mwmae.audio import read_audio
from hear_mwmae.embed_index import Index
from hear_mwmae.errors import UsageError

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")


def cli(*argv) -> int:
    return package_cli.main(["embed", "--no-progress", *map(str, argv)])


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> list[Path]:
    """Four clips at 22.05 kHz (one stereo), so the dataset path has to resample and mix down."""
    root = tmp_path_factory.mktemp("wavs")
    rng = np.random.default_rng(0)
    paths = []
    for i, (seconds, channels) in enumerate([(1.0, 1), (1.7, 2), (0.4, 1), (2.3, 1)]):
        path = root / f"clip{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal((int(22050 * seconds), channels))).astype(np.float32), 22050)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def dataset(wavs):
    return datasets.Dataset.from_dict({"audio": [str(p) for p in wavs], "label": [0, 1, 0, 1]}).cast_column(
        "audio", datasets.Audio())


@pytest.fixture(scope="module")
def runtime(tiny_checkpoint):
    return hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")


def expected(runtime, path: Path) -> np.ndarray:
    audio = read_audio(path)[0]  # mixed down, resampled to 16 kHz
    return hear_mwmae.get_scene_embeddings(torch.from_numpy(audio[None]), runtime)[0].numpy()


@pytest.mark.parametrize("layout", ["in_memory", "save_to_disk", "parquet"])
def test_embed_dataset_equals_get_scene_embeddings(tmp_path, dataset, wavs, runtime, layout):
    if layout == "save_to_disk":  # the bytes are stored in the dataset
        dataset.save_to_disk(str(tmp_path / "saved"))
        ds = datasets.load_from_disk(str(tmp_path / "saved"))
    elif layout == "parquet":  # a local Parquet layout: paths to the files
        (tmp_path / "pq").mkdir()
        dataset.to_parquet(str(tmp_path / "pq" / "train.parquet"))
        ds = datasets.load_dataset("parquet", data_dir=str(tmp_path / "pq"), split="train")
    else:
        ds = dataset
    out = hear_mwmae.embed_dataset(ds, runtime, batch_size=3)
    assert out.column_names == ["audio", "label", "embedding"] and out.features["audio"] == ds.features["audio"]
    got = out.select_columns(["embedding"]).with_format("numpy")["embedding"]
    for i, path in enumerate(wavs):
        np.testing.assert_allclose(np.asarray(got[i], np.float32), expected(runtime, path), rtol=1e-5, atol=1e-6)
    assert out.select_columns(["label"])["label"] == [0, 1, 0, 1]


def test_embed_dataset_timestamp_mode_and_errors(dataset, wavs, runtime):
    out = hear_mwmae.embed_dataset(dataset, runtime, mode="timestamp", batch_size=4).select_columns(
        ["embedding", "timestamps"])
    emb, ts = hear_mwmae.get_timestamp_embeddings(torch.from_numpy(read_audio(wavs[1])[0][None]), runtime)
    row = out[1]
    np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), emb[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(row["timestamps"], np.float32), ts[0].numpy())
    with pytest.raises(UsageError, match="no Audio column 'speech'"):
        hear_mwmae.embed_dataset(dataset, runtime, audio_column="speech")
    with pytest.raises(ValueError, match="row 0: error: longer than --max-duration 0.5 s"):
        hear_mwmae.embed_dataset(dataset, runtime, max_duration=0.5)


def test_hf_dataset_cli_writes_parquet_and_resumes_per_row(tmp_path, dataset, wavs, runtime, tiny_checkpoint):
    datasets.DatasetDict({"train": dataset, "test": dataset.select([2, 3])}).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "out"
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "saved", "--out", out) == 0  # split: train
    table = pq.read_table(out / "embeddings").to_pylist()
    assert [r["path"] for r in sorted(table, key=lambda r: r["input"])] == [p.name for p in wavs]
    for row in table:
        i = int(row["input"].rsplit("/", 1)[1])
        assert row["input"].endswith(f"saved[train]/{i}") and row["sample_rate"] == 22050
        np.testing.assert_allclose(np.asarray(row["embedding"], np.float32), expected(runtime, wavs[i]),
                                   rtol=1e-5, atol=1e-6)
    records = Index(out).records
    assert all(r["status"] == "ok" and len(r["input_fingerprint"]) == 64 for r in records.values())
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "saved", "--out", out) == 0
    assert {r["status"] for r in Index(out).records.values()} == {"ok"} and len(pq.read_table(out / "embeddings")) == 4
    # a dataset that changed: one row other audio, one row fewer -> re-embedded, removed; no old row visible
    changed = dataset.select([0, 1, 2])
    changed = datasets.Dataset.from_dict({"audio": [str(wavs[0]), str(wavs[3]), str(wavs[2])],
                                          "label": [0, 1, 0]}).cast_column("audio", datasets.Audio())
    datasets.DatasetDict({"train": changed}).save_to_disk(str(tmp_path / "saved2"))
    (tmp_path / "saved").rename(tmp_path / "old")
    (tmp_path / "saved2").rename(tmp_path / "saved")
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "saved", "--out", out) == 0
    table = {r["input"].rsplit("/", 1)[1]: r for r in pq.read_table(out / "embeddings").to_pylist()}
    assert sorted(table) == ["0", "1", "2"] and table["1"]["path"] == wavs[3].name
    np.testing.assert_allclose(np.asarray(table["1"]["embedding"], np.float32), expected(runtime, wavs[3]),
                               rtol=1e-5, atol=1e-6)
    reasons = {k.rsplit("/", 1)[1]: r.get("reason") or r["status"] for k, r in Index(out).records.items()}
    assert reasons["1"] == "input changed" and reasons["3"] == "removed: input no longer exists"
    # the other split, and the errors
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "old", "--split", "test", "--out",
               tmp_path / "test") == 0
    assert len(pq.read_table(tmp_path / "test" / "embeddings")) == 2
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "old", "--split", "dev", "--out",
               tmp_path / "x") == 2
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "old", "--format", "npy", "--out",
               tmp_path / "x") == 2
    assert cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "nothing", "--out", tmp_path / "x") == 2


def test_an_audiofolder_layout_embeds_or_names_the_way_that_does(tmp_path, wavs, runtime, tiny_checkpoint, caplog):
    """`datasets` builds an audiofolder only with torchcodec (it encodes each file); without it, --hf-dataset
    fails in one line naming the direct way (embedding the folder), which gives the same rows."""
    import importlib.util
    import shutil

    folder = tmp_path / "af" / "train"
    folder.mkdir(parents=True)
    for path in wavs:
        shutil.copy(path, folder / path.name)
    out = tmp_path / "out"
    code = cli("--model", tiny_checkpoint, "--hf-dataset", tmp_path / "af", "--out", out)
    if importlib.util.find_spec("torchcodec") is None:
        assert code == 2
        err = caplog.records[-1].getMessage()
        assert "\n" not in err and "torchcodec" in err and f"hear-mwmae embed {tmp_path / 'af'} --format parquet" in err
        assert cli("--model", tiny_checkpoint, tmp_path / "af", "--format", "parquet", "--out", out) == 0
    else:
        assert code == 0
    rows = {r["path"].rsplit("/", 1)[-1]: r for r in pq.read_table(out / "embeddings").to_pylist()}
    assert sorted(rows) == [p.name for p in wavs]
    for path in wavs:
        np.testing.assert_allclose(np.asarray(rows[path.name]["embedding"], np.float32), expected(runtime, path),
                                   rtol=1e-5, atol=1e-6)
