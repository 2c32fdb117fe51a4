"""Fine-tuning data: the four layouts, their errors, the metrics (against sklearn), the
augmented examples and the samplers."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from evaluation.synthetic import make_tasks
from hear_mwmae.config import FbankConfig, FrontendConfig
from hear_mwmae.finetune import data as fdata
from hear_mwmae.finetune.dataset import EpochSampler, FinetuneDataset, Shapes, collate, sample_weights, spec_mask
from hear_mwmae.finetune.metrics import average_precision, classification_metrics, d_prime, roc_auc
from hear_mwmae.finetune.recipes import RECIPES, FinetuneConfig, get_recipe
from hear_mwmae.labels import audioset


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    return {p.name: p for p in make_tasks(tmp_path_factory.mktemp("tasks"), clips_per_split=8)}


def tone(path, freq: float, seconds: float = 1.0, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


# ----------------------------------------------------------------------------- layouts
def test_hear_task_splits_labels_and_folds(tasks):
    d = fdata.load(tasks["synth_scene_multiclass"])
    assert d.vocab.names == ("high", "low", "mid", "top") and not d.multi_label and not d.folds
    assert {k: len(v) for k, v in d.splits.items()} == {"train": 8, "valid": 8, "test": 8}
    e = d.splits["train"][0]
    assert e.path.is_file() and e.path.parent.name == "train" and len(e.labels) == 1
    assert fdata.load(tasks["synth_scene_multilabel"]).multi_label
    k = fdata.load(tasks["synth_scene_kfold"])
    assert k.folds == ["fold00", "fold01", "fold02"]
    run = k.fold_splits(0)  # fold 0 tests, fold 1 validates, fold 2 trains
    assert run["test"] == k.splits["fold00"] and run["valid"] == k.splits["fold01"] and run["train"] == k.splits["fold02"]
    with pytest.raises(fdata.DataError, match="'event' task"):
        fdata.load(tasks["synth_event"])


def test_authors_json_with_their_label_csv(tmp_path):
    labels = tmp_path / "class_labels_indices.csv"
    with open(labels, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "mid", "display_name"])
        w.writerows([[0, "/m/a", "Alpha"], [1, "/m/b", "Beta"], [2, "/m/c", "Gamma"]])
    rows = []
    for i in range(20):
        tone(tmp_path / "wav" / f"{i}.wav", 300 + 50 * i)
        rows.append({"wav": f"wav/{i}.wav", "labels": "/m/a,/m/c" if i % 2 else "/m/b"})
    (tmp_path / "train.json").write_text(json.dumps({"data": rows[:16]}))
    (tmp_path / "eval.json").write_text(json.dumps({"data": rows[16:]}))
    d = fdata.load(tmp_path / "train.json", valid=tmp_path / "eval.json", test=tmp_path / "eval.json", labels=labels)
    assert d.multi_label and d.vocab.names == ("Alpha", "Beta", "Gamma") and d.vocab.ids == ("/m/a", "/m/b", "/m/c")
    assert d.splits["train"][1].labels == (0, 2) and d.splits["train"][0].labels == (1,)
    assert d.targets(d.splits["valid"][:2]).tolist() == [[0, 1, 0], [1, 0, 1]]
    with pytest.raises(fdata.DataError, match="--labels"):
        fdata.load(tmp_path / "train.json")
    rows[3]["labels"] = "/m/zzz"
    (tmp_path / "bad.json").write_text(json.dumps({"data": rows}))
    with pytest.raises(fdata.DataError, match="1 label.* not in the vocabulary, e.g. '/m/zzz'"):
        fdata.load(tmp_path / "bad.json", labels=labels)


def test_csv_and_class_folders_hold_out_splits_and_check_classes(tmp_path):
    for i in range(30):
        tone(tmp_path / "clips" / ("dog" if i % 3 else "cat") / f"{i}.wav", 200 + 20 * i)
    d = fdata.load(tmp_path / "clips", seed=3)
    assert d.vocab.names == ("cat", "dog") and not d.multi_label
    assert sum(len(v) for v in d.splits.values()) == 30 and d.splits["valid"] and d.splits["test"]
    assert fdata.load(tmp_path / "clips", seed=3).splits == d.splits  # deterministic
    table = tmp_path / "data.csv"
    paths = sorted((tmp_path / "clips").rglob("*.wav"))
    table.write_text("path,labels\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    c = fdata.load(table, seed=3)
    assert c.vocab.names == d.vocab.names and {k: len(v) for k, v in c.splits.items()} == {"train": 24, "valid": 3,
                                                                                          "test": 3}
    table.write_text("".join(f"{p},{p.parent.name};{'loud' if i % 2 else 'soft'}\n" for i, p in enumerate(paths)))
    assert fdata.load(table).multi_label
    # a validation split with a class the training split never has
    valid = tmp_path / "valid.csv"
    valid.write_text(f"{paths[0]},bird\n")
    table.write_text("".join(f"{p},{p.parent.name}\n" for p in paths))
    with pytest.raises(fdata.DataError, match="the valid split has 1 class.* never has, e.g. \\['bird'\\]"):
        fdata.load(table, valid=valid, test=valid)
    table.write_text(f"{tmp_path / 'missing.wav'},cat\n" + "".join(f"{p},{p.parent.name}\n" for p in paths))
    with pytest.raises(fdata.DataError, match="1 audio file.* missing"):
        fdata.load(table)
    (tmp_path / "split" / "train" / "cat").mkdir(parents=True)
    tone(tmp_path / "split" / "train" / "cat" / "a.wav", 300)
    tone(tmp_path / "split" / "valid" / "dog" / "b.wav", 300)
    tone(tmp_path / "split" / "test" / "cat" / "c.wav", 300)
    with pytest.raises(fdata.DataError, match="the valid split has 1 class.* never has, e.g. \\['dog'\\]"):
        fdata.load(tmp_path / "split", labels=None)


# ----------------------------------------------------------------------------- metrics
def test_metrics_match_sklearn_with_ties_and_empty_classes():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    targets = (rng.random((60, 5)) < 0.3).astype(int)
    targets[:, 4] = 0  # a class without positives: left out, counted
    scores = np.round(rng.standard_normal((60, 5)) + targets, 1)  # rounding makes ties
    for c in range(4):
        assert average_precision(targets[:, c], scores[:, c]) == pytest.approx(
            metrics.average_precision_score(targets[:, c], scores[:, c]), abs=1e-12)
        assert roc_auc(targets[:, c], scores[:, c]) == pytest.approx(
            metrics.roc_auc_score(targets[:, c], scores[:, c]), abs=1e-12)
    out = classification_metrics(scores, targets, multi_label=True)
    assert out["classes_without_positives"] == 1 and out["primary"] == "mAP"
    assert out["mAP"] == pytest.approx(np.mean([metrics.average_precision_score(targets[:, c], scores[:, c])
                                                for c in range(4)]))
    assert out["d_prime"] == pytest.approx(math.sqrt(2) * __import__("scipy").stats.norm.ppf(out["mAUC"]))
    single = np.eye(3)[[0, 1, 2, 2]]
    s = classification_metrics(np.array([[2, 1, 0], [0, 1, 0], [1, 0, 0], [0, 0, 3]]), single, multi_label=False)
    assert s["top1_acc"] == 0.75 and s["primary"] == "top1_acc"
    assert d_prime(1.0) == math.inf and classification_metrics(single, single, False)["d_prime"] is None  # JSON-safe


# ----------------------------------------------------------------------------- examples
def test_examples_are_deterministic_mixed_and_masked(tasks):
    d = fdata.load(tasks["synth_scene_multiclass"])
    cfg = FinetuneConfig(mixup=0.9, freqm=16, timem=40)
    shapes = Shapes(200, (50, 5), 4, 4)
    ds = FinetuneDataset(d.splits["train"], 4, FrontendConfig(), shapes, cfg)
    a, b = ds[(0, 3, 3)], ds[(0, 3, 3)]
    assert torch.equal(a.x, b.x) and torch.equal(a.target, b.target) and torch.equal(a.noise, b.noise)
    assert a.x.shape == (200, 80) and a.noise.shape == (55,) and a.draws.shape == (4, 2)
    other = ds[(1, 3, 3)]
    assert not torch.equal(a.x, other.x)  # another epoch, other augmentation
    mixed = [ds[(0, p, 0)].target for p in range(12)]
    assert all(float(t.sum()) == pytest.approx(1.0) for t in mixed)  # lambda + (1 - lambda)
    assert any(0 < float(t.max()) < 1 for t in mixed)  # some were mixed (p = 0.9)
    batch = collate([a, other])
    assert batch[0].shape == (2, 200, 80) and batch[1].shape == (2, 4) and batch[4] == []
    fbank = FinetuneDataset(d.splits["train"], 4, FbankConfig(), Shapes(1024, (64, 8), 2, 4), cfg)
    assert fbank.fill == pytest.approx(4.2677393 / (2 * 4.5689974))  # a zero raw fbank, normalised
    x = torch.zeros(100, 8)
    spec_mask(x, 0, 40, np.random.default_rng(1), 7.0)
    rows = (x == 7.0).all(dim=1)
    assert 0 < int(rows.sum()) < 40 and rows.nonzero().flatten().diff().eq(1).all()  # one contiguous band


def test_weighted_sampler_draws_by_the_authors_weights_with_replacement(tasks):
    d = fdata.load(tasks["synth_scene_multilabel"])
    weights = sample_weights(d.splits["train"], 4)
    counts = np.zeros(4)
    for e in d.splits["train"]:
        counts[list(e.labels)] += 1
    assert weights[0] == pytest.approx(sum(1000 / (counts[c] + 0.01) for c in d.splits["train"][0].labels))
    sampler = EpochSampler(8, 4, 1, 0, 1, 0, 0, 5, weights, epoch_len=20)
    assert sampler.steps_per_epoch == 5
    keys = [k for batch in sampler for k in batch]
    assert [k[1] for k in keys] == list(range(20))  # positions are distinct even when a clip repeats
    assert len({k[2] for k in keys}) < 20  # drawn with replacement
    plain = EpochSampler(8, 4, 2, 1, 1, 0, 0, 2)  # rank 1 of 2: the second half of each global batch
    assert [k[1] for batch in plain for k in batch] == [2, 3, 6, 7]


def test_recipes_hold_the_authors_values():
    as2m, as20k, esc = RECIPES["audiomae-as2m-ft"], RECIPES["audiomae-as20k-ft"], RECIPES["audiomae-esc50-ft"]
    assert (as2m.peak_lr, as2m.epochs, as2m.warmup_epochs, as2m.first_eval_epoch) == (2e-4, 100, 10, 20)
    assert as2m.weighted_sampler and as2m.epoch_len == 200_000 and (as2m.mask_t_prob, as2m.mask_f_prob) == (0.2, 0.2)
    assert (as20k.peak_lr, as20k.epochs, as20k.warmup_epochs, as20k.first_eval_epoch) == (1.25e-4, 60, 4, 15)
    for r in (as2m, as20k):
        assert (r.freqm, r.timem, r.mixup, r.weight_decay, r.layer_decay, r.drop_path, r.min_lr) == \
            (48, 192, 0.5, 5e-4, 0.75, 0.1, 1e-6) and r.gain_aug and r.label_smoothing == 0
    assert (esc.peak_lr, esc.chunk_frames, esc.freqm, esc.timem, esc.label_smoothing, esc.mixup) == \
        (2.5e-4, 512, 96, 24, 0.1, 0.0) and esc.multi_label is False and esc.norm_mean == -6.6268077
    assert get_recipe("cpu-small", ["epochs=3", "mixup=0"]).epochs == 3
    with pytest.raises(ValueError, match="unknown override key"):
        get_recipe("cpu-small", ["nope=1"])
    assert len(audioset()) == 527
