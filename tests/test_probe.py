"""The frozen-model linear probe (hear_mwmae.finetune.probe) and the synthetic speech task writer
(scripts/make_speech_task.py): the writer's pure parts run on fake audio, the synthesis itself
only where espeak-ng is installed."""

from __future__ import annotations

import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from evaluation.synthetic import make_tasks
from hear_mwmae.finetune import data as finetune_data
from hear_mwmae.finetune.probe import L2_GRID, accuracy, fit_logreg, linear_probe, main, scene_embeddings

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "weights" / "demo-tiny.pt"
KEYS = {"valid_top1_acc", "test_top1_acc", "l2", "n_train", "n_valid", "n_test", "embedding_size", "seconds"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> dict[str, Path]:
    return {p.name: p for p in make_tasks(tmp_path_factory.mktemp("hear"), clips_per_split=8)}


@pytest.fixture(scope="module")
def demo_model():
    return hear_mwmae.load_model(str(DEMO), device="cpu")


@pytest.fixture(scope="module")
def speech():
    """scripts/make_speech_task.py as a module."""
    spec = importlib.util.spec_from_file_location("make_speech_task", REPO / "scripts" / "make_speech_task.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


# ----------------------------------------------------------------------------- the probe
def test_probe_on_the_tone_task_beats_chance_and_the_cli_prints_the_same(tasks, demo_model, capsys):
    task = tasks["synth_scene_multiclass"]
    result = linear_probe(demo_model, task)
    assert set(result) == KEYS
    assert (result["n_train"], result["n_valid"], result["n_test"]) == (8, 8, 8)
    assert result["embedding_size"] == demo_model.scene_embedding_size
    assert result["l2"] in L2_GRID
    assert result["test_top1_acc"] > 0.5 and result["valid_top1_acc"] > 0.5  # 4 classes: chance is 0.25
    assert main([str(task), "--model", str(DEMO), "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert {k: v for k, v in printed.items() if k != "seconds"} == {k: v for k, v in result.items() if k != "seconds"}


def test_kfold_task_is_probed_one_fold_at_a_time(tasks, demo_model):
    task = tasks["synth_scene_kfold"]
    with pytest.raises(ValueError, match="3-fold task; choose the run with fold=0..2"):
        linear_probe(demo_model, task)
    with pytest.raises(ValueError, match="fold=0..2"):
        linear_probe(demo_model, task, fold=3)
    result = linear_probe(demo_model, task, fold=1)
    assert (result["n_train"], result["n_valid"], result["n_test"]) == (8, 8, 8)  # one fold each
    with pytest.raises(ValueError, match="has no folds"):
        linear_probe(demo_model, tasks["synth_scene_multiclass"], fold=0)


def test_multilabel_and_event_tasks_are_refused(tasks, caplog):
    with pytest.raises(ValueError, match="multi-label task; the linear probe is single-label"):
        linear_probe(DEMO, tasks["synth_scene_multilabel"])
    with pytest.raises(finetune_data.DataError, match="'event' task"):
        linear_probe(DEMO, tasks["synth_event"])
    with caplog.at_level(logging.ERROR):
        assert main([str(tasks["synth_scene_multilabel"]), "--model", str(DEMO)]) == 2
    assert "multi-label" in caplog.text and "Traceback" not in caplog.text


def test_scene_embeddings_of_mixed_lengths_keep_their_order_and_match_one_at_a_time(tmp_path, demo_model):
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([1.0, 1.5, 1.0, 2.2, 1.5]):
        paths.append(tmp_path / f"c{i}.wav")
        sf.write(paths[-1], (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    together = scene_embeddings(demo_model, paths, batch_size=2)
    alone = np.concatenate([scene_embeddings(demo_model, [p]) for p in paths])
    assert together.shape == (5, demo_model.scene_embedding_size) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)


def test_fit_logreg_separates_and_l2_shrinks_the_weights():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    x = torch.randn(60, 5, generator=g, dtype=torch.float64) + 3.0 * torch.nn.functional.one_hot(y, 5).double()
    weak, strong = fit_logreg(x, y, 3, 1e-4), fit_logreg(x, y, 3, 1.0)
    assert weak.shape == (6, 3)
    assert accuracy(weak, x, y) == 1.0
    assert strong[:-1].norm() < 0.5 * weak[:-1].norm()


# ----------------------------------------------------------------------------- the speech task writer
def test_voices_split_by_group_per_engine_and_deterministically(speech):
    voices = speech.make_voices(70, seed=0)
    assert len(voices) == 70 and len({v.name for v in voices}) == 70
    assert sum(v.engine == "flite" for v in voices) == 8
    espeak = [v for v in voices if v.engine == "espeak-ng"]
    assert len({v.group for v in espeak}) == len(espeak)  # each variant once while they last
    splits = speech.split_voices(voices, seed=0)
    assert sorted(v.name for s in splits.values() for v in s) == sorted(v.name for v in voices)
    groups = {name: {v.group for v in vs} for name, vs in splits.items()}
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not groups[a] & groups[b]
    assert [len(splits[s]) for s in ("train", "valid", "test")] == [48, 11, 11]
    for name in ("valid", "test"):
        assert {v.engine for v in splits[name]} == {"espeak-ng", "flite"}
    assert speech.split_voices(speech.make_voices(70, seed=0), seed=0) == splits
    assert speech.split_voices(voices, seed=1) != splits
    only_espeak = speech.make_voices(20, seed=0, engines=["espeak-ng"])
    assert {v.engine for v in only_espeak} == {"espeak-ng"}


def test_render_clip_is_one_second_in_range_and_cuts_long_words(speech):
    t = np.arange(8000) / 16000
    word = np.concatenate([np.zeros(4000), 0.5 * np.sin(2 * np.pi * 300 * t), np.zeros(4000)])
    clip, facts = speech.render_clip(word, np.random.default_rng(3))
    again, _ = speech.render_clip(word, np.random.default_rng(3))
    assert clip.shape == (16000,) and clip.dtype == np.float32 and np.abs(clip).max() <= 1.0
    np.testing.assert_array_equal(clip, again)
    assert facts["word_s"] == pytest.approx(0.5, abs=0.02) and not facts["cut"]  # the silence trimmed
    start = round(facts["offset_s"] * 16000)
    inside = np.sqrt((clip[start : start + 8000] ** 2).mean())
    outside = np.sqrt((np.delete(clip, np.s_[start : start + 8000]) ** 2).mean())
    assert 20 * np.log10(inside / outside) > 9  # SNR >= 10 dB, the word where facts say
    long_clip, long_facts = speech.render_clip(0.3 * np.sin(2 * np.pi * 200 * np.arange(40000) / 16000),
                                               np.random.default_rng(0))
    assert long_clip.shape == (16000,) and long_facts["cut"] and long_facts["offset_s"] == 0


def test_write_task_makes_a_hear_task_the_finetune_reader_loads(speech, tmp_path):
    rng = np.random.default_rng(0)
    clips = {split: [(f"{w}_v{i:02d}.wav", (0.1 * rng.standard_normal(16000)).astype(np.float32), w)
                     for i in range(n) for w in speech.WORDS] for split, n in (("train", 3), ("valid", 1), ("test", 2))}
    task = speech.write_task(tmp_path / speech.TASK_NAME, speech.WORDS, clips, {"generator": {"seed": 0}})
    meta = json.loads((task / "task_metadata.json").read_text())
    assert (meta["embedding_type"], meta["prediction_type"], meta["split_mode"], meta["sample_duration"],
            meta["evaluation"]) == ("scene", "multiclass", "trainvaltest", 1.0, ["top1_acc"])
    loaded = finetune_data.load(task)
    assert loaded.vocab.names == speech.WORDS and not loaded.multi_label
    assert {s: len(rows) for s, rows in loaded.splits.items()} == {"train": 30, "valid": 10, "test": 20}
    for e in loaded.splits["test"]:
        assert speech.WORDS[e.labels[0]] == e.path.name.split("_")[0]
    info = sf.info(task / "16000" / "valid" / "go_v00.wav")
    assert (info.samplerate, info.channels, info.frames, info.subtype) == (16000, 1, 16000, "PCM_16")


def test_missing_espeak_is_one_line_with_the_apt_command_and_removes_nothing(speech, tmp_path, monkeypatch, caplog):
    old = tmp_path / speech.TASK_NAME
    old.mkdir()
    (old / "keep.txt").write_text("an earlier task")
    monkeypatch.setattr(speech.shutil, "which", lambda name: None)
    with caplog.at_level(logging.ERROR):
        assert speech.main([str(tmp_path), "--overwrite"]) == 2
    assert "espeak-ng not found: apt-get install espeak-ng" in caplog.text
    assert (old / "keep.txt").is_file()


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="needs espeak-ng (apt-get install espeak-ng)")
def test_real_synthesis_is_deterministic_and_speaker_independent(speech, tmp_path):
    for out in ("a", "b"):
        assert speech.main([str(tmp_path / out), "--clips-per-word", "10", "--engines", "espeak-ng"]) == 0
    a, b = (tmp_path / out / speech.TASK_NAME for out in ("a", "b"))
    for split in ("train", "valid", "test"):
        assert (a / f"{split}.json").read_text() == (b / f"{split}.json").read_text()
    some = sorted((a / "16000" / "test").iterdir())[:3]
    for path in some:
        assert path.read_bytes() == (b / "16000" / "test" / path.name).read_bytes()
    voices = json.loads((a / "voices.json").read_text())
    loaded = finetune_data.load(a)
    for split, rows in loaded.splits.items():
        assert {voices[e.path.stem.split("_")[1]]["split"] for e in rows} == {split}
    assert sum(len(rows) for rows in loaded.splits.values()) == 100
