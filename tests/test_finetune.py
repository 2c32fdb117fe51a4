"""Fine-tuning runs: end to end on HEAR tasks (single-label, multi-label, k folds), both model
families, exact resume (after a stop and after kill -9), the command line's errors."""

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
import torch

import hear_mwmae
from evaluation.synthetic import make_tasks
from hear_mwmae.audio import read_audio
from hear_mwmae.checkpoint import load_checkpoint, save_checkpoint
from hear_mwmae.cli import main as cli_main
from hear_mwmae.finetune.recipes import get_recipe
from hear_mwmae.finetune.trainer import finetune
from hear_mwmae.pretrain.metrics import read_metrics
from hear_mwmae.pretrain.state import load_train_state

from conftest import REPO, child_env

DEMO = str(REPO / "weights" / "demo-tiny.pt")
FAST = ["batch_size=4", "epochs=2", "warmup_epochs=0.5", "num_workers=0", "log_every=1", "mixup=0.5",
        "base_lr=0.05"]


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return {p.name: p for p in make_tasks(tmp_path_factory.mktemp("tasks"), clips_per_split=8)}


def run(tasks, out: Path, task: str = "synth_scene_multiclass", extra: tuple = (), **kwargs):
    return finetune(get_recipe("cpu-small", FAST + list(extra)), DEMO, tasks[task], out, device="cpu", **kwargs)


@pytest.fixture(scope="module")
def reference(tasks, tmp_path_factory):
    """An uninterrupted run (4 optimiser steps over 2 epochs), checkpointed every step."""
    out = tmp_path_factory.mktemp("reference")
    return run(tasks, out, extra=("checkpoint_every=1",))


def test_finetune_writes_a_model_that_tags_through_the_public_api(tasks, reference):
    out = reference.run_dir
    results = json.loads((out / "results.json").read_text())
    assert reference.step == reference.total_steps == 4 and reference.results == results
    assert results["labels"] == ["high", "low", "mid", "top"] and results["multi_label"] is False
    assert results["test"]["primary"] == "top1_acc" and results["test"]["n"] == 8
    epochs = [r for r in read_metrics(out / "metrics.jsonl") if "valid_top1_acc" in r]
    assert [r["epoch"] for r in epochs] == [1.0, 2.0]  # validated after every epoch
    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.config.head.labels == ("high", "low", "mid", "top") and ckpt.config.head.pooling == "time"
    assert ckpt.config.model.final_norm and ckpt.config.chunk_frames == 104  # cpu-small: 1.04 s chunks
    assert ckpt.provenance["recipe"] == "cpu-small" and ckpt.provenance["base_model"] == DEMO
    assert ckpt.provenance["epoch"] == results["epoch"] and ckpt.encoder_only
    model = hear_mwmae.load_model(str(out / "model.pt"), device="cpu")
    assert model.labels == ["high", "low", "mid", "top"]
    # results.json's test accuracy is what get_logits gives a user of model.pt
    task = tasks["synth_scene_multiclass"]
    table = json.loads((task / "test.json").read_text())
    audio = torch.from_numpy(np.stack([read_audio(task / "16000" / "test" / f)[0] for f in table]))
    predicted = hear_mwmae.get_logits(audio, model).argmax(1).tolist()
    truth = [model.labels.index(v[0]) for v in table.values()]
    assert np.mean(np.array(predicted) == np.array(truth)) == pytest.approx(results["test"]["top1_acc"])
    tags = hear_mwmae.tag(audio[:2], model, top_k=2)
    assert len(tags) == 2 and len(tags[0]) == 2 and tags[0][0][0] in model.labels
    assert sum(score for _, score in hear_mwmae.tag(audio[:1], model, top_k=4)[0]) == pytest.approx(1.0)  # softmax
    # HEAR embeddings of a fine-tuned model: its encoder, unchanged API
    assert hear_mwmae.get_scene_embeddings(audio[:2], model).shape == (2, model.scene_embedding_size)


def test_resume_after_a_stop_gives_a_bitwise_equal_model(tasks, reference, tmp_path):
    first = run(tasks, tmp_path, extra=("checkpoint_every=1",), stop_at_step=3)
    assert first.step == 3 and first.results is None and load_train_state(tmp_path)["step"] == 3
    with pytest.raises(FileExistsError, match="--resume"):
        run(tasks, tmp_path, extra=("checkpoint_every=1",))
    done = run(tasks, tmp_path, extra=("checkpoint_every=1",), resume=True)
    assert (tmp_path / "model.pt").read_bytes() == (reference.run_dir / "model.pt").read_bytes()
    strip = ("train_seconds",)
    assert {k: v for k, v in done.results.items() if k not in strip} == \
        {k: v for k, v in reference.results.items() if k not in strip}
    with pytest.raises(ValueError, match="different settings .*mixup"):
        run(tasks, tmp_path, extra=("checkpoint_every=1", "mixup=0.1"), resume=True)


def test_kill_dash_9_mid_run_then_resume_gives_the_same_model(tasks, reference, tmp_path):
    env = child_env()
    threads = ["--threads", str(torch.get_num_threads())]  # as the reference run: the same float sums
    args = [sys.executable, "-m", "hear_mwmae.cli", "finetune", "--model", DEMO, "--task",
            str(tasks["synth_scene_multiclass"]), "--out", str(tmp_path), "--recipe", "cpu-small", "--device", "cpu",
            *threads, *[a for o in FAST + ["checkpoint_every=1"] for a in ("--set", o)]]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        ckpt = tmp_path / "checkpoint.pt"
        if ckpt.exists():
            try:
                if load_train_state(ckpt)["step"] >= 1:
                    break
            except Exception:  # mid-rename: try again
                pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = load_train_state(tmp_path)["step"]
    assert killed_at < 4 and not (tmp_path / "results.json").exists()
    done = subprocess.run([*args[:4], "--out", str(tmp_path), "--resume", "--device", "cpu", *threads], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "model.pt").read_bytes() == (reference.run_dir / "model.pt").read_bytes()
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["test"] == reference.results["test"] and results["valid"] == reference.results["valid"]


def test_multi_label_task_uses_bce_and_map(tasks, tmp_path):
    result = run(tasks, tmp_path, task="synth_scene_multilabel", extra=("epochs=1",))
    assert result.results["multi_label"] and result.results["test"]["primary"] == "mAP"
    model = hear_mwmae.load_model(str(tmp_path / "model.pt"), device="cpu")
    scores = hear_mwmae.scores(hear_mwmae.get_logits(torch.zeros(1, 16000), model), model)
    assert scores.shape == (1, 4) and float(scores.sum()) != pytest.approx(1.0)  # sigmoid, not softmax


def test_k_fold_task_runs_every_fold_and_reports_mean_and_std(tasks, tmp_path):
    result = run(tasks, tmp_path, task="synth_scene_kfold", extra=("epochs=1",))
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary == result.results and summary["n_folds"] == 3 and summary["metric"] == "top1_acc"
    accs = [f["test"]["top1_acc"] for f in summary["folds"]]
    assert [f["test_fold"] for f in summary["folds"]] == ["fold00", "fold01", "fold02"]
    assert summary["test_mean"] == pytest.approx(np.mean(accs)) and summary["test_std"] == pytest.approx(
        np.std(accs, ddof=1))
    assert all((tmp_path / f"fold{i}" / "model.pt").is_file() for i in range(3))


def test_audiomae_with_the_esc50_chunk_and_statistics(tasks, converted, tmp_path):
    c = converted("audiomae_tiny")
    base = save_checkpoint(tmp_path / "amae.pt", c.config, c.state_dict, provenance=c.provenance, encoder_only=True)
    cfg = get_recipe("audiomae-esc50-ft", ["batch_size=4", "epochs=1", "num_workers=0", "log_every=1",
                                           "warmup_epochs=0.5"])
    result = finetune(cfg, str(base), tasks["synth_scene_multiclass"], tmp_path / "run", device="cpu")
    ckpt = load_checkpoint(tmp_path / "run" / "model.pt")
    assert ckpt.config.model.img_size == (512, 128) and ckpt.config.frontend.mean == -6.6268077
    pos = c.state_dict["encoder.pos_embed"]  # (1, 513, 192), the authors' (freq 8, time 64) layout
    cropped = torch.cat([pos[:, :1], pos[:, 1:].reshape(1, 8, 64, -1)[:, :, :32].reshape(1, 256, -1)], dim=1)
    assert torch.equal(ckpt.state_dict["encoder.pos_embed"], cropped)  # frozen: never trained
    assert result.results["test"]["n"] == 8 and ckpt.config.chunk_frames == 512


def test_command_line_errors_are_one_line(tasks, tmp_path, caplog):
    base = ["finetune", "--model", DEMO, "--task", str(tasks["synth_scene_multiclass"]), "--out", str(tmp_path)]
    assert cli_main(base) == 2 and "choose --recipe" in caplog.text
    caplog.clear()
    assert cli_main([*base[:4], str(tmp_path / "nope"), "--out", str(tmp_path), "--recipe", "cpu-small"]) == 2
    assert "no such file or folder" in caplog.text
    caplog.clear()
    assert cli_main([*base[:4], str(tasks["synth_event"]), "--out", str(tmp_path), "--recipe", "cpu-small"]) == 2
    assert "'event' task" in caplog.text
    caplog.clear()
    assert cli_main([*base, "--recipe", "cpu-small", "--set", "mixup=2"]) == 2 and "mixup must be in" in caplog.text
    assert all("Traceback" not in r.getMessage() for r in caplog.records)
    assert cli_main(["finetune", "--list-recipes"]) == 0
