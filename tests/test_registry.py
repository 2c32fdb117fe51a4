"""The registry of released models and `hear-mwmae fetch`: offline, with the download replaced
by a local copy of a fixture run directory; conversion, caching and resolution are real."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import cli, registry
from hear_mwmae.checkpoint import CheckpointError
from hear_mwmae.config import ModelConfig, audiomae_config
from hear_mwmae.files import sha256_file

TINY = "mwmae-tiny-fixture"


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """An empty cache, selected through the environment variable (as a user would)."""
    root = tmp_path / "cache"
    monkeypatch.setenv(registry.CACHE_ENV, str(root))
    return root


@pytest.fixture
def tiny_release(fixture_checkpoint, monkeypatch):
    """Register the mwmae_tiny fixture as a released model; returns (model, copying downloader, calls)."""
    run_dir = fixture_checkpoint("mwmae_tiny")
    release = json.loads((run_dir / "config.json").read_text())
    model = registry.ReleasedModel(name=TINY, title="tiny fixture", run_dir="mwmae_tiny_run1",
                                   release_model=release["model"], hear_config="-")
    monkeypatch.setitem(registry.MODELS, TINY, model)
    calls: list[Path] = []

    def download(m: registry.ReleasedModel, dest: Path) -> Path:
        calls.append(dest)
        shutil.copytree(run_dir, dest / m.run_dir)
        return dest / m.run_dir

    return model, download, calls, run_dir


def test_released_models_match_the_releases_configs():
    mw, mae = registry.MODELS["mwmae-base-4x16-4l"], registry.MODELS["mae-base-4x16"]
    assert registry.DEFAULT == hear_mwmae.DEFAULT_MODEL == "mwmae-base-4x16-4l"
    assert registry.RELEASE_FOLDER == "https://drive.google.com/drive/folders/1tM723MLFJRaWVmLVjE49pJ0Yi3lpMZHV"
    assert mw.run_dir == "mwmae_base_200_4x16_8x128_default_bfloat16_run1"
    assert mae.run_dir == "mae_base_200_4x16_8x128_default_run1"
    a, b = (ModelConfig(**m.expected_fields()) for m in (mw, mae))
    for c in (a, b):  # ViT-B encoder on 200 x 80 log-mel, 4 x 16 patches, 384-d 4-layer 8-head decoder
        assert (c.embed_dim, c.depth, c.num_heads, c.patch_size, c.img_size) == (768, 12, 12, (4, 16), (200, 80))
        assert (c.decoder_embed_dim, c.decoder_depth, c.decoder_num_heads, c.embedding_size) == (384, 4, 8, 3840)
    assert a.decoder_window_sizes == (2, 5, 10, 25, 50, 125, 0, 0) and not a.use_cls_token
    assert not any(b.decoder_window_sizes) and b.use_cls_token


def test_released_audiomae_files_are_the_authors_readme_links():
    pre, ft = registry.MODELS["audiomae-base-as2m"], registry.MODELS["audiomae-base-as2m-ft"]
    assert pre.source_url == "https://drive.google.com/file/d/1ni_DV4dRf7GxM8k-Eirx71WP9Gg89wwu/view"
    assert ft.source_url == "https://drive.google.com/file/d/18EsFOyZYvBYHkJ7_n7JFFWbj6crz01gq/view"
    released = audiomae_config("base", "swin")  # what converting the released pre-training file must give
    assert all(getattr(released, k) == v for k, v in pre.expected_fields().items())
    assert ft.expected_fields()["final_norm"] is False and "decoder_kind" not in ft.expected_fields()


def test_fetch_of_an_audiomae_file(cache, fixture_checkpoint, monkeypatch, capsys):
    """The Audio-MAE kind: one downloaded .pth, converted, recorded, loadable by name."""
    pth = fixture_checkpoint("audiomae_tiny")
    name = "audiomae-tiny-fixture"
    model = registry.ReleasedModel(name=name, title="tiny Audio-MAE fixture", kind="audiomae-file",
                                   drive_file_id="x", file_name="pretrained.pth",
                                   expected={"family": "audiomae", "embed_dim": 192, "decoder_kind": "mwmha"})
    monkeypatch.setitem(registry.MODELS, name, model)

    def download(m: registry.ReleasedModel, dest: Path) -> Path:
        dest.mkdir(parents=True)
        return Path(shutil.copy(pth, dest / m.file_name))

    monkeypatch.setattr(registry, "gdown_download", download)
    assert cli.main(["fetch", name]) == 0
    out = capsys.readouterr().out
    assert f"sha256 {sha256_file(pth)}  pretrained.pth (source)" in out
    record = registry.read_record(name)
    assert record["source_files"] == {"pretrained.pth": sha256_file(pth)} and record["run_dir"] == "pretrained.pth"
    audio = torch.rand(1, 20000) * 2 - 1
    torch.testing.assert_close(hear_mwmae.get_scene_embeddings(audio, hear_mwmae.load_model(name, device="cpu")),
                               hear_mwmae.get_scene_embeddings(audio, hear_mwmae.load_model(str(pth), device="cpu")),
                               rtol=0, atol=0)
    wrong = dataclasses.replace(model, name="audiomae-wrong", expected={"embed_dim": 768})
    monkeypatch.setitem(registry.MODELS, wrong.name, wrong)
    with pytest.raises(registry.FetchError, match=r"pretrained.pth does not hold .*embed_dim: 192 \(expected 768\)"):
        registry.fetch(wrong.name, downloader=download)


def test_fetch_converts_records_hashes_and_load_model_resolves_the_name(cache, tiny_release, capsys):
    model, download, calls, run_dir = tiny_release
    record = registry.fetch(TINY, downloader=download)
    path = cache / f"{TINY}.pt"
    assert record["sha256"] == sha256_file(path)
    assert record["source_files"] == {"config.json": sha256_file(run_dir / "config.json"),
                                      "checkpoint_0": sha256_file(run_dir / "checkpoint_0")}
    assert json.loads((cache / f"{TINY}.json").read_text()) == record
    assert not list(cache.glob(f".{TINY}.partial-*"))  # the staging folder is gone
    by_name = hear_mwmae.load_model(TINY, device="cpu")
    by_dir = hear_mwmae.load_model(str(run_dir), device="cpu")  # converted on the fly, independently
    audio = torch.rand(2, 24000) * 2 - 1
    torch.testing.assert_close(hear_mwmae.get_scene_embeddings(audio, by_name),
                               hear_mwmae.get_scene_embeddings(audio, by_dir), rtol=0, atol=0)
    wav = cache.parent / "a.wav"
    sf.write(wav, 0.1 * np.sin(np.arange(8000) / 9).astype(np.float32), 16000)
    assert cli.main(["embed", "--no-progress", "--model", TINY, str(wav), "--out", str(cache.parent / "emb")]) == 0
    index = json.loads((cache.parent / "emb" / "index.jsonl").read_text())
    assert index["model"] == TINY and index["checkpoint_sha256"] == record["sha256"]
    assert registry.fetch(TINY, downloader=download) == record and len(calls) == 1  # cached: no download
    registry.fetch(TINY, downloader=download, force=True)
    assert len(calls) == 2


def test_cli_fetch_prints_the_sha256s(cache, tiny_release, monkeypatch, capsys):
    model, download, calls, run_dir = tiny_release
    monkeypatch.setattr(registry, "gdown_download", download)
    assert cli.main(["fetch", TINY, "--cache-dir", str(cache / "elsewhere")]) == 0
    out = capsys.readouterr().out
    converted = cache / "elsewhere" / f"{TINY}.pt"
    assert f"sha256 {sha256_file(converted)}  {TINY}.pt (converted)" in out
    assert f"sha256 {sha256_file(run_dir / 'checkpoint_0')}  mwmae_tiny_run1/checkpoint_0 (source)" in out
    with pytest.raises(FileNotFoundError, match=f"not in the cache {cache}"):
        hear_mwmae.load_model(TINY)  # $HEAR_MWMAE_CACHE points elsewhere
    monkeypatch.setenv(registry.CACHE_ENV, str(cache / "elsewhere"))
    hear_mwmae.load_model(TINY, device="cpu")


def test_absent_model_names_the_fetch_command(cache):
    with pytest.raises(FileNotFoundError, match="get it with: hear-mwmae fetch mwmae-base-4x16-4l$"):
        hear_mwmae.load_model()  # the default is the released MW-MAE, from the cache
    with pytest.raises(FileNotFoundError, match="hear-mwmae fetch mae-base-4x16"):
        hear_mwmae.load_model("mae-base-4x16")


def test_unknown_name_lists_the_known_ones(cache, caplog):
    known = "audiomae-base-as2m, audiomae-base-as2m-ft, mae-base-4x16, mwmae-base-4x16-4l"
    with pytest.raises(FileNotFoundError, match=f"not a model name; .* a name: demo-tiny \\(bundled\\), {known} "):
        hear_mwmae.load_model("mwmae-base")
    assert cli.main(["fetch", "mwmae-large"]) == 2
    assert f"unknown model 'mwmae-large'; the released models are: {known}" in caplog.text


def test_a_failed_download_leaves_nothing_that_looks_done(cache, tiny_release):
    model, download, _, _ = tiny_release

    def dies_half_way(m, dest):
        run = download(m, dest)
        (run / "checkpoint_0").write_bytes((run / "checkpoint_0").read_bytes()[:1000])  # a cut download
        return run

    with pytest.raises(Exception, match="checkpoint"):
        registry.fetch(TINY, downloader=dies_half_way)
    assert sorted(p.name for p in cache.iterdir()) == [f".{TINY}.lock"]
    (cache / f".{TINY}.partial-killed").mkdir()  # what a SIGKILLed fetch leaves behind
    (cache / f"{TINY}.pt").write_bytes(b"renamed, but the record was never written")
    with pytest.raises(FileNotFoundError, match="not in the cache"):
        hear_mwmae.load_model(TINY)
    registry.fetch(TINY, downloader=download)
    assert not (cache / f".{TINY}.partial-killed").exists()
    hear_mwmae.load_model(TINY, device="cpu")


def test_a_changed_cached_file_is_refused(cache, tiny_release):
    _, download, _, _ = tiny_release
    registry.fetch(TINY, downloader=download)
    with open(cache / f"{TINY}.pt", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(CheckpointError, match=f"fetch it again with: hear-mwmae fetch --force {TINY}"):
        hear_mwmae.load_model(TINY)


def test_a_run_directory_of_another_model_is_rejected(cache, tiny_release):
    _, download, _, _ = tiny_release  # the tiny fixture where the released MW-MAE-B is expected
    with pytest.raises(registry.FetchError, match=r"default_bfloat16_run1 does not hold MW-MAE-B-4x16-4l: .*embed_dim: 192 "
                                                  r"\(expected 768\)"):
        registry.fetch("mwmae-base-4x16-4l", downloader=download)
    assert not (cache / "mwmae-base-4x16-4l.pt").exists() and not (cache / "mwmae-base-4x16-4l.json").exists()


def test_gdown_download_takes_config_and_the_newest_checkpoint_only(tmp_path, monkeypatch, fixture_checkpoint):
    run_dir = fixture_checkpoint("mwmae_tiny")
    model = registry.MODELS["mwmae-base-4x16-4l"]
    files = {f"{model.run_dir}/config.json": run_dir / "config.json",
             f"{model.run_dir}/checkpoint_99": run_dir / "checkpoint_0",
             f"{model.run_dir}/checkpoint_198400": run_dir / "checkpoint_0",
             "mae_base_200_4x16_8x128_default_run1/config.json": run_dir / "config.json"}
    fetched = []
    entry = types.SimpleNamespace

    def download_folder(url, output, quiet, skip_download):
        assert url == registry.RELEASE_FOLDER and skip_download
        return [entry(id=name, path=name, local_path=str(Path(output) / name)) for name in files]

    def download(id, output, quiet):
        fetched.append(id)
        shutil.copy(files[id], output)
        return output

    monkeypatch.setitem(sys.modules, "gdown", types.SimpleNamespace(download_folder=download_folder,
                                                                    download=download))
    got = registry.gdown_download(model, tmp_path / "dl")
    assert got == tmp_path / "dl" / model.run_dir
    assert sorted(fetched) == [f"{model.run_dir}/checkpoint_198400", f"{model.run_dir}/config.json"]
    # an orbax checkpoint is a directory: all of its files come, inside checkpoint_<step>/
    mae = registry.MODELS["mae-base-4x16"]
    files.update({f"{mae.run_dir}/checkpoint_7/checkpoint": run_dir / "checkpoint_0",
                  f"{mae.run_dir}/checkpoint_7/commit_success.txt": run_dir / "config.json"})
    fetched.clear()
    got = registry.gdown_download(mae, tmp_path / "dl3")
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == \
        ["checkpoint_7/checkpoint", "checkpoint_7/commit_success.txt", "config.json"]
    with pytest.raises(registry.FetchError, match="has no folder mwmae_other_run1"):
        registry.gdown_download(registry.ReleasedModel("x", "x", "mwmae_other_run1", {}, "-"), tmp_path / "dl2")


def test_without_gdown_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gdown", None)  # import fails
    with pytest.raises(registry.FetchError, match=r"pip install 'hear-mwmae\[fetch\]'"):
        registry.gdown_download(registry.MODELS["mwmae-base-4x16-4l"], tmp_path)


def test_fetch_from_a_copy_downloaded_by_hand(cache, tiny_release, tmp_path, capsys):
    """The offline route every fetch failure names: `hear-mwmae fetch NAME --from PATH`."""
    model, _, _, run_dir = tiny_release
    by_hand = tmp_path / "Downloads" / model.run_dir
    shutil.copytree(run_dir, by_hand)
    before = sorted(p.name for p in by_hand.iterdir())
    assert cli.main(["fetch", TINY, "--from", str(by_hand), "--keep-source"]) == 0
    record = registry.read_record(TINY)
    assert record["from_local_copy"] == str(by_hand) and record["sha256"] == sha256_file(cache / f"{TINY}.pt")
    assert sorted(p.name for p in by_hand.iterdir()) == before  # the user's copy stays where it was
    assert (cache / f"{TINY}-source" / "config.json").is_file()
    hear_mwmae.load_model(TINY, device="cpu")
    wrong = tmp_path / "not-the-run"
    wrong.mkdir()
    assert cli.main(["fetch", TINY, "--from", str(wrong)]) == 2
    assert cli.main(["fetch", TINY, "--from", str(tmp_path / "nowhere")]) == 2


def test_the_bundled_demo_needs_no_fetch(cache, capsys):
    assert cli.main(["fetch", "demo-tiny"]) == 0
    assert "bundled with the package, nothing to fetch" in capsys.readouterr().out
    assert cli.main(["fetch", "--list"]) == 0
    assert "demo-tiny" in capsys.readouterr().out
