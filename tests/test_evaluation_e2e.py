"""End to end: convert the tiny fixture checkpoint, embed synthetic HEAR tasks with it through
heareval, predict with the fast grid over two seeds, report; then resume after a crash.

Needs heareval (bash evaluation/install.sh); about 2 minutes on 2 cores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("heareval.predictions.task_predictions", reason="heareval absent: bash evaluation/install.sh")

from evaluation import run, synthetic  # noqa: E402

CHANCE = {"synth_scene_multiclass": 0.25, "synth_scene_kfold": 0.25}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fixture_checkpoint) -> dict[str, Path]:
    from hear_mwmae.cli import main as hear_mwmae_cli

    root = tmp_path_factory.mktemp("e2e")
    model = root / "tiny.pt"
    assert hear_mwmae_cli(["convert", str(fixture_checkpoint("mwmae_tiny")), str(model), "--encoder-only"]) == 0
    synthetic.make_tasks(root / "tasks", clips_per_split=16, seed=0)
    argv = ["--tasks-dir", str(root / "tasks"), "--model", str(model), "--grid", "fast", "--seeds", "2",
            "--out", str(root / "out"), "--device", "cpu"]
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert run.main(argv) == 0
    return {"root": root, "out": root / "out", "argv": argv}


def test_easy_tasks_score_far_above_chance(finished_run):
    results = json.loads((finished_run["out"] / "results.json").read_text())
    scores = results["tasks"]
    assert set(scores) == set(synthetic.TASK_NAMES)
    for name, chance in CHANCE.items():
        assert scores[name]["mean"] >= 100 * (chance + 0.5), (name, scores[name])
    assert scores["synth_scene_multilabel"]["mean"] >= 80  # mAP
    assert scores["synth_event"]["mean"] >= 50  # onset F-measure, 200 ms collar
    for entry in scores.values():
        assert entry["n_seeds"] == 2 and entry["ci95"] is not None and len(entry["scores"]) == 2
    assert results["overall_score"]["value"] is None  # only defined for the paper's ten tasks


def test_reports_and_clean_output_folder(finished_run):
    out, root = finished_run["out"], finished_run["root"]
    md = (out / "results.md").read_text()
    for name in synthetic.TASK_NAMES:
        assert f"| {name} |" in md
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "work").exists()  # Lightning logs and checkpoints removed
    assert not (root / "logs").exists()  # nothing under ./logs of the working directory
    [sha_dir] = (out / "embeddings").iterdir()
    model_sha = json.loads((out / "results.json").read_text())["checkpoint_sha256"]
    assert sha_dir.name == model_sha[:16]
    for name in synthetic.TASK_NAMES:
        assert (sha_dir / name / ".done.embeddings").exists()
        assert not (sha_dir / name / "train").exists() and not (sha_dir / name / "fold00").exists()
    kfold = json.loads((out / "predictions" / "synth_scene_kfold" / "seed-01.json").read_text())
    assert kfold["seed"] == 1 and set(kfold["fold_scores"]) == {"fold00", "fold01", "fold02"}


def test_resume_redoes_only_unfinished_work(finished_run):
    out, root = finished_run["out"], finished_run["root"]
    predictions = sorted((out / "predictions").rglob("seed-*.json"))
    embed_info = sorted((out / "embeddings").rglob("embedding-info.json"))
    before = {p: p.stat().st_mtime_ns for p in predictions + embed_info}
    lost = out / "predictions" / "synth_scene_multiclass" / "seed-01.json"
    lost.unlink()  # as if the run had died during this seed ...
    stale = out / "work" / "synth_scene_multiclass" / "seed-01"
    stale.mkdir(parents=True)
    (stale / "half-written.ckpt").write_bytes(b"")  # ... leaving its work folder behind
    shutil.copy(out / "results.json", root / "results-before.json")

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        assert run.main(finished_run["argv"]) == 0

    assert lost.exists() and not (out / "work").exists()
    unchanged = [p for p in before if p != lost and p.stat().st_mtime_ns == before[p]]
    assert len(unchanged) == len(before) - 1  # nothing else was recomputed, embeddings reused
    old = json.loads((root / "results-before.json").read_text())["tasks"]
    new = json.loads((out / "results.json").read_text())["tasks"]
    assert new["synth_scene_multiclass"]["scores"] == pytest.approx(old["synth_scene_multiclass"]["scores"])
    assert new["synth_event"] == old["synth_event"]
