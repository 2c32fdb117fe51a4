"""Unit tests of evaluation/: registry, task checks, reports, grids, storage, synthetic tasks.

None of these needs heareval; see test_evaluation_compat.py and test_evaluation_e2e.py.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evaluation import grids, report, run, store, synthetic, tasks
from evaluation.predict import lightning_gpus, primary_score

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    synthetic.make_tasks(root, clips_per_split=6, seed=1)
    return root


# ---------------------------------------------------------------- registry and overall score

def test_registry_has_the_papers_ten_hear2021_directories():
    assert {t.dirname for t in tasks.TASKS} == {
        "beijing_opera-v1.0-hear2021-full", "tfds_crema_d-1.0.0-full", "esc50-v2.0.0-full",
        "libricount-v1.0.0-hear2021-full", "mridangam_stroke-v1.5-full", "mridangam_tonic-v1.5-full",
        "nsynth_pitch-v2.2.3-5h", "speech_commands-v0.0.2-5h", "fsd50k-v1.0-full",
        "vox_lingua_top10-hear2021-full",
    }
    assert tasks.BY_KEY["fsd50k"].metric == "mAP"
    assert tasks.BY_KEY["nsynth_pitch_5h"].metric == "pitch_acc"


def test_overall_score_fit_reproduces_the_papers_scores():
    paper = {t.dirname: t.paper[0] for t in tasks.TASKS}
    mae = {t.dirname: t.mae_b for t in tasks.TASKS}
    assert tasks.overall_score(paper) == pytest.approx(89.2, abs=0.05)
    assert tasks.overall_score(mae) == pytest.approx(88.1, abs=0.05)
    del paper["fsd50k-v1.0-full"]
    assert tasks.overall_score(paper) is None


def test_resolve_names(synth_dir):
    assert tasks.resolve_names([], synth_dir) == sorted(synthetic.TASK_NAMES)
    assert tasks.resolve_names(["paper"], synth_dir) == [t.dirname for t in tasks.TASKS]
    assert tasks.resolve_names(["esc50", "esc50-v2.0.0-full", "x"], synth_dir) == ["esc50-v2.0.0-full", "x"]
    with pytest.raises(tasks.TaskDirError, match="no task directories"):
        tasks.resolve_names([], synth_dir / "synth_event" / "16000")


# ---------------------------------------------------------------- task folder checks

def test_check_task_dir_accepts_every_synthetic_task(synth_dir):
    for name in synthetic.TASK_NAMES:
        meta = tasks.check_task_dir(synth_dir / name)
        assert meta["task_name"] == name


def _copy_task(src: Path, dst: Path) -> Path:
    subprocess.run(["cp", "-r", str(src), str(dst)], check=True)
    return dst


@pytest.mark.parametrize("breakage, message", [
    ("remove_dir", "does not exist"),
    ("remove_metadata", "no task_metadata.json"),
    ("bad_json", "not valid JSON"),
    ("no_splits_key", "lacks \\['splits'\\]"),
    ("remove_split_labels", "no valid.json"),
    ("remove_audio", "no 16000/test/ audio folder"),
    ("remove_vocabulary", "no labelvocabulary.csv"),
])
def test_check_task_dir_names_the_problem(synth_dir, tmp_path, breakage, message):
    task = _copy_task(synth_dir / "synth_scene_multiclass", tmp_path / "task")
    meta_path = task / "task_metadata.json"
    if breakage == "remove_dir":
        subprocess.run(["rm", "-r", str(task)], check=True)
    elif breakage == "remove_metadata":
        meta_path.unlink()
    elif breakage == "bad_json":
        meta_path.write_text("{not json")
    elif breakage == "no_splits_key":
        meta = json.loads(meta_path.read_text())
        del meta["splits"]
        meta_path.write_text(json.dumps(meta))
    elif breakage == "remove_split_labels":
        (task / "valid.json").unlink()
    elif breakage == "remove_audio":
        subprocess.run(["rm", "-r", str(task / "16000" / "test")], check=True)
    elif breakage == "remove_vocabulary":
        (task / "labelvocabulary.csv").unlink()
    with pytest.raises(tasks.TaskDirError, match=message):
        tasks.check_task_dir(task)


def test_run_stops_early_on_bad_task_dirs(synth_dir, tmp_path):
    model = tmp_path / "model.pt"
    model.write_bytes(b"x")
    with pytest.raises(SystemExit, match="not a directory"):
        run.main(["--tasks-dir", str(tmp_path / "nope"), "--model", str(model)])
    with pytest.raises(SystemExit, match="esc50-v2.0.0-full does not exist"):
        run.main(["--tasks-dir", str(synth_dir), "--model", str(model), "--tasks", "synth_event,esc50"])
    with pytest.raises(SystemExit, match="is not a file"):
        run.main(["--tasks-dir", str(synth_dir), "--model", str(tmp_path / "missing.pt")])


# ---------------------------------------------------------------- statistics and reports

def test_mean_ci95_is_the_student_t_interval():
    mean, ci = report.mean_ci95([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert ci == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)
    mean, ci = report.mean_ci95([0.5])
    assert mean == 0.5 and math.isnan(ci)


def _results(task: str, scores: list[float], metric: str = "top1_acc") -> list[dict]:
    return [{"task": task, "seed": i, "score": s, "metric": metric} for i, s in enumerate(scores)]


def test_summary_compares_with_the_paper_and_skips_overall_without_all_tasks():
    summary = report.summarize(
        {"esc50-v2.0.0-full": _results("esc50-v2.0.0-full", [0.82, 0.80]), "mine": _results("mine", [0.5])},
        {"grid": "paper", "checkpoint": "c.pt", "checkpoint_sha256": "ab" * 32, "seeds": [0, 1], "device": "cpu"},
    )
    esc = summary["tasks"]["esc50-v2.0.0-full"]
    assert esc["scores"] == pytest.approx([82.0, 80.0])
    assert esc["mean"] == pytest.approx(81.0)
    assert esc["diff_vs_paper"] == pytest.approx(-0.2)
    assert esc["paper"] == {"mean": 81.2, "ci95": 0.4}
    assert summary["tasks"]["mine"]["ci95"] is None and "paper" not in summary["tasks"]["mine"]
    assert summary["overall_score"]["value"] is None
    json.dumps(summary, allow_nan=False)  # strict JSON: no NaN
    md = report.to_markdown(summary)
    assert "| ESC-50 | top1_acc | 2 | 81.0 ± 12.7 | 81.2 ± 0.4 | 81.6 ± 0.4 | -0.2 |" in md
    assert "| mine | top1_acc | 1 | 50.0 | - | - | - |" in md
    assert "not computed" in md


def test_summary_with_all_ten_tasks_has_the_labelled_overall_score(tmp_path):
    per_task = {t.dirname: _results(t.dirname, [t.paper[0] / 100, t.paper[0] / 100]) for t in tasks.TASKS}
    summary = report.summarize(per_task, {"grid": "paper"})
    assert summary["overall_score"]["value"] == pytest.approx(89.21, abs=0.01)
    md = report.to_markdown(summary)
    assert "Overall score s(m): 89.2" in md and "linear fit" in md
    paths = report.write_reports(summary, tmp_path)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths["json"].read_text())["tasks"].keys() == per_task.keys()


# ---------------------------------------------------------------- grids and heareval glue

def test_paper_grid_is_the_authors_protocol():
    g = grids.get_grid("paper")
    assert grids.grid_size(g) == 2
    assert g["dropout"] == [0.1, 0.25] and g["lr"] == [1e-4] and g["hidden_dim"] == [1024]
    assert g["hidden_layers"] == [1] and g["batch_size"] == [1024] and g["max_epochs"] == [500]
    assert g["patience"] == [20]
    import torch

    assert g["hidden_norm"] == [torch.nn.BatchNorm1d] and g["optim"] == [torch.optim.Adam]
    assert grids.grid_size(grids.get_grid("fast")) == 1
    with pytest.raises(ValueError, match="unknown grid"):
        grids.get_grid("huge")


def test_primary_score_reads_heareval_scores():
    kfold = {"fold00": {"test_score": 0.5}, "fold01": {"test_score": 0.7},
             "aggregated_scores": {"test_score_mean": 0.6}, "hparams": {}}
    assert primary_score(kfold) == (0.6, {"fold00": 0.5, "fold01": 0.7})
    assert primary_score({"test": {"test_score": 0.9, "test_mAP": 0.9}, "score_mode": "max"}) == (0.9, {"test": 0.9})
    with pytest.raises(ValueError):
        primary_score({"hparams": {}})


def test_lightning_gpus():
    assert lightning_gpus("cpu") is None
    assert lightning_gpus("cuda") == [0]
    assert lightning_gpus("cuda:2") == [2]
    with pytest.raises(ValueError):
        lightning_gpus("mps")


def test_stored_seed_results_are_reused_only_for_the_same_checkpoint_and_grid(tmp_path):
    path = tmp_path / "seed-00.json"
    store.write_json_atomic(path, {"checkpoint_sha256": "a", "grid": "paper", "seed": 0, "score": 1.0})
    assert run.seed_result(path, {"checkpoint_sha256": "a", "grid": "paper", "seed": 0})["score"] == 1.0
    assert run.seed_result(path, {"checkpoint_sha256": "b", "grid": "paper", "seed": 0}) is None
    assert run.seed_result(tmp_path / "missing.json", {}) is None


# ---------------------------------------------------------------- storage

def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    store.write_json_atomic(path, {"v": 1})

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        store.write_json_atomic(path, {"v": 2})
    assert store.read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


# ---------------------------------------------------------------- synthetic tasks

def test_synthetic_tasks_are_in_hears_format(synth_dir):
    for name in synthetic.TASK_NAMES:
        task = synth_dir / name
        meta = json.loads((task / "task_metadata.json").read_text())
        vocab = [line.split(",")[1] for line in (task / "labelvocabulary.csv").read_text().split()[1:]]
        for split in meta["splits"]:
            labels = json.loads((task / f"{split}.json").read_text())
            wavs = sorted(p.name for p in (task / "16000" / split).iterdir())
            assert wavs == sorted(labels)
            audio, sr = sf.read(task / "16000" / split / wavs[0], dtype="float32")
            assert sr == 16000 and audio.ndim == 1
            assert len(audio) == int(meta["sample_duration"] * sr)
            for entry in labels.values():
                if meta["embedding_type"] == "event":
                    assert all(e["label"] in vocab and 0 <= e["start"] < e["end"] <= 4000 for e in entry)
                else:
                    assert entry and set(entry) <= set(vocab)
                    if meta["prediction_type"] == "multiclass":
                        assert len(entry) == 1
    assert json.loads((synth_dir / "synth_scene_kfold" / "task_metadata.json").read_text())["splits"] == \
        ["fold00", "fold01", "fold02"]


def test_synthetic_classes_differ_in_pitch(synth_dir):
    """The easy task is easy: each class's clips peak at its own tone."""
    task = synth_dir / "synth_scene_multiclass"
    labels = json.loads((task / "train.json").read_text())
    for fname, (label,) in labels.items():
        audio, sr = sf.read(task / "16000" / "train" / fname)
        peak = np.argmax(np.abs(np.fft.rfft(audio))) * sr / len(audio)
        assert peak == pytest.approx(synthetic.TONES[label], rel=0.05)


# ---------------------------------------------------------------- install script

def test_install_script_refuses_an_environment_without_torch(tmp_path):
    script = REPO / "evaluation" / "install.sh"
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    proc = subprocess.run(["bash", str(script)], env={**os.environ, "PYTHON": str(fake)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "torch is not installed" in proc.stderr


def test_constraints_pin_the_toolchain_but_never_torch():
    lines = [ln.split("#")[0].strip() for ln in (REPO / "evaluation" / "constraints.txt").read_text().splitlines()]
    pins = dict(ln.split("==") for ln in lines if "==" in ln)
    assert pins["heareval"] == "2021.1.3" and pins["pytorch-lightning"] == "1.9.5"
    assert "hearvalidator" in pins
    names = {re.split(r"[<>=!~;\[ ]", ln)[0].lower() for ln in lines if ln}
    assert "torch" not in names  # install.sh adds the installed version at run time
    assert "setuptools<81" in lines


def test_compare_puts_runs_of_both_families_side_by_side(tmp_path):
    from evaluation import compare

    esc, opera = "esc50-v2.0.0-full", "beijing_opera-v1.0-hear2021-full"
    mw = report.summarize({esc: _results(esc, [0.80, 0.82]), opera: _results(opera, [0.95, 0.97])},
                          {"grid": "fast", "checkpoint": "mw.pt", "seeds": [0, 1],
                           "model": {"family": "mwmae", "embedding_size": 3840}})
    am = report.summarize({esc: _results(esc, [0.70, 0.72]), "mine": _results("mine", [0.5])},
                          {"grid": "fast", "checkpoint": "am.pt", "seeds": [0, 1],
                           "model": {"family": "audiomae", "embedding_size": 6144}})
    for name, summary in (("mw", mw), ("am", am)):
        report.write_reports(summary, tmp_path / name)
    assert compare.main([str(tmp_path / "am"), str(tmp_path / "mw" / "results.json"), "--out", str(tmp_path)]) == 0
    md = (tmp_path / "comparison.md").read_text()
    assert "| task | audiomae am | mwmae mw | MW-MAE-B (paper) | MAE-B (paper) |" in md
    assert "| ESC-50 | 71.0 ± 12.7 | 81.0 ± 12.7 | 81.2 ± 0.4 | 80.9 |" in md
    assert "| Beijing Opera | - | 96.0 ± 12.7 | 96.0 ± 0.5 | 96.2 |" in md  # a task one run lacks
    assert "| mine | 50.0 | - | - | - |" in md
    assert (tmp_path / "comparison.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((tmp_path / "comparison.json").read_text())
    assert data["runs"]["audiomae am"]["model"]["family"] == "audiomae"
    assert compare.main([str(tmp_path / "am"), str(tmp_path / "nothing-here")]) == 2
    with pytest.raises(ValueError, match="labels must differ"):
        compare.compare([mw, am], ["x", "x"])
    assert "family `audiomae`, 6144-d" in report.to_markdown(am)
