"""Tagging: `get_logits` / `tag` / `model.labels` and `hear-mwmae tag` on the authors' fine-tuned
classifier (`audiomae_ft_tiny`), in our format and in the timm / Hub layout built from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import golden
import hear_mwmae
from hear_mwmae.checkpoint import load_checkpoint, save_checkpoint
from hear_mwmae.classifier import NoClassifierError
from hear_mwmae.cli import main as cli_main

from conftest import load_npy, max_abs

NAME = "audiomae_ft_tiny"


@pytest.fixture(scope="module")
def ft_pt(fixture_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ft") / "ft.pt"
    assert cli_main(["convert", str(fixture_checkpoint(NAME)), str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def ft_timm(fixture_checkpoint, tmp_path_factory) -> Path:
    """The fixture's weights in the timm / Hugging Face layout (config.json + model.safetensors)."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("timm")
    state = torch.load(fixture_checkpoint(NAME), weights_only=False)["model"]  # our own fixture file
    save_file({k: v.contiguous() for k, v in state.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_fixture_ft_tiny_patch16", "num_classes": 7, "global_pool": "avg",
        "model_args": {"embed_dim": 96, "depth": 2, "num_heads": 3, "img_size": [1024, 128], "in_chans": 1},
        "pretrained_cfg": {"input_size": [1, 1024, 128], "fixed_input_size": True}}))
    return folder


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    for wave in ("wav0_chirp_noise_2s", "wav2_bursts_12p7s", "wav3_clicks_0p5s"):
        sf.write(folder / f"{wave}.wav", load_npy("audiomae_tiny", wave), 16000, subtype="FLOAT")
    (folder / "notes.txt").write_text("not audio")
    (folder / "broken.wav").write_bytes(b"RIFF\x00\x00")
    return folder


def test_logits_labels_and_tags_through_the_api(ft_pt):
    model = hear_mwmae.load_model(str(ft_pt), device="cpu")
    assert model.labels == [f"class_{i}" for i in range(7)] and model.config.head.multi_label
    audio = torch.from_numpy(np.stack([load_npy("audiomae_tiny", "wav0_chirp_noise_2s")] * 2))
    logits = hear_mwmae.get_logits(audio, model)
    assert logits.shape == (2, 7) and logits.dtype == torch.float32
    assert torch.equal(logits[0], logits[1])
    # alone or in a batch: the same up to float summation order (GEMM blocking depends on the batch)
    torch.testing.assert_close(hear_mwmae.get_logits(audio[:1], model)[0], logits[0], rtol=0, atol=1e-5)
    tags = hear_mwmae.tag(audio[:1], model, top_k=3)[0]
    probs = logits[0].sigmoid()
    assert [label for label, _ in tags] == [f"class_{i}" for i in probs.argsort(descending=True)[:3].tolist()]
    assert tags[0][1] == pytest.approx(float(probs.max()))
    with pytest.raises(ValueError, match="top_k"):
        hear_mwmae.tag(audio, model, top_k=0)
    assert hear_mwmae.get_logits(audio[:0], model).shape == (0, 7)


def test_a_model_without_a_classifier_says_what_to_do(tiny_model, capsys, caplog, tmp_path):
    assert tiny_model.labels is None
    with pytest.raises(NoClassifierError, match="no classifier head.*finetune"):
        hear_mwmae.get_logits(torch.zeros(1, 16000), tiny_model)
    with pytest.raises(NoClassifierError):
        hear_mwmae.tag(torch.zeros(1, 16000), tiny_model)


def test_tag_cli_table_jsonl_csv_and_per_chunk(ft_pt, audio_dir, tmp_path, capsys):
    assert cli_main(["tag", str(audio_dir), "--model", str(ft_pt), "--top-k", "2", "--no-progress"]) == 1  # broken.wav
    table = capsys.readouterr().out
    assert "wav0_chirp_noise_2s.wav" in table and table.count("class_") == 3 * 2

    out = tmp_path / "tags.jsonl"
    assert cli_main(["tag", str(audio_dir), "--model", str(ft_pt), "--per-chunk", "--out", str(out),
                     "--no-progress"]) == 1
    records = {Path(r["input"]).name: r for r in map(json.loads, out.read_text().splitlines())}
    assert records["notes.txt"]["status"].startswith("skipped: not audio")
    assert records["broken.wav"]["status"].startswith("error:")
    long = records["wav2_bursts_12p7s.wav"]
    assert long["status"] == "ok" and long["duration_s"] == pytest.approx(12.7) and len(long["top"]) == 5
    assert [(c["start_s"], c["end_s"]) for c in long["chunks"]] == [(0.0, 10.24), (10.24, 12.7)]
    model = hear_mwmae.load_model(str(ft_pt), device="cpu")
    per_chunk, _ = hear_mwmae.get_logits(torch.from_numpy(load_npy("audiomae_tiny", "wav2_bursts_12p7s"))[None],
                                         model, per_chunk=True)
    first = per_chunk[0, 0].sigmoid()
    assert long["chunks"][0]["top"][0]["score"] == pytest.approx(float(first.max()), abs=1e-6)
    assert max_abs(per_chunk[0, 0], load_npy(NAME, "wav2_bursts_12p7s.logits")) <= 3e-4  # the authors' first 10.24 s

    out_csv = tmp_path / "tags.csv"
    assert cli_main(["tag", str(audio_dir / "wav3_clicks_0p5s.wav"), "--model", str(ft_pt), "--top-k", "3",
                     "--out", str(out_csv), "--no-progress"]) == 0
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["rank"] for r in rows] == ["1", "2", "3"] and all(r["status"] == "ok" for r in rows)


def test_tag_cli_on_the_timm_layout_and_with_a_label_file(ft_timm, ft_pt, audio_dir, tmp_path, caplog):
    converted = load_checkpoint(ft_timm)
    ours = load_checkpoint(ft_pt)
    assert converted.config.head == ours.config.head
    for k, v in ours.state_dict.items():
        assert torch.equal(converted.state_dict[k], v), k
    labels = tmp_path / "names.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f"{i},/m/x{i},Sound {i}\n" for i in range(7)))
    out = tmp_path / "t.jsonl"
    assert cli_main(["tag", str(audio_dir / "wav0_chirp_noise_2s.wav"), "--model", str(ft_timm), "--labels",
                     str(labels), "--out", str(out), "--no-progress"]) == 0
    (record,) = map(json.loads, out.read_text().splitlines())
    assert all(t["label"].startswith("Sound ") for t in record["top"])
    bad = tmp_path / "three.csv"
    bad.write_text("a\nb\nc\n")
    caplog.clear()
    assert cli_main(["tag", str(audio_dir), "--model", str(ft_pt), "--labels", str(bad)]) == 2
    assert "3 names for a head of 7 classes" in caplog.text


def test_tag_cli_refuses_a_model_without_a_classifier(tiny_checkpoint, audio_dir, caplog):
    assert cli_main(["tag", str(audio_dir), "--model", str(tiny_checkpoint)]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "no classifier head" in errors[0] and "hear-mwmae finetune" in errors[0]


def test_info_and_safetensors_keep_the_head(ft_pt, tmp_path, capsys):
    c = load_checkpoint(ft_pt)
    st = save_checkpoint(tmp_path / "ft.safetensors", c.config, c.state_dict, provenance=c.provenance)
    again = load_checkpoint(st)
    assert again.config == c.config and all(torch.equal(again.state_dict[k], v) for k, v in c.state_dict.items())
    assert cli_main(["info", str(ft_pt)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["head"]["num_classes"] == 7 and info["provenance"]["layout"] == "finetuned"
    assert golden.meta(NAME)["checkpoint"]["file"] == "checkpoint-59.pth"
