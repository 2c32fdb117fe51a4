"""Two gloo processes under torchrun fine-tune to the model of one process with the same global batch
(examples, masks and drop-path draws are per-sample, so only float sums differ), and score the
same metrics (each process scores half of the validation and test clips)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from evaluation.synthetic import make_tasks
from hear_mwmae.checkpoint import load_checkpoint
from hear_mwmae.finetune.recipes import get_recipe
from hear_mwmae.finetune.trainer import finetune
from hear_mwmae.pretrain.metrics import read_metrics

from conftest import REPO, single_thread, torchrun_cli

OVERRIDES = ["batch_size=8", "epochs=2", "warmup_epochs=0.5", "base_lr=0.05", "num_workers=0", "log_every=1",
             "mixup=0.5"]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process(tmp_path):
    (task,) = [t for t in make_tasks(tmp_path / "tasks", clips_per_split=16) if t.name == "synth_scene_multiclass"]
    demo = str(REPO / "weights" / "demo-tiny.pt")
    done = torchrun_cli("finetune", "--recipe", "cpu-small", "--model", demo, "--task", str(task),
                        "--out", str(tmp_path / "ddp"), "--device", "cpu",
                        *[a for o in OVERRIDES for a in ("--set", o)])
    assert done.returncode == 0, done.stderr[-3000:]
    with single_thread():
        finetune(get_recipe("cpu-small", OVERRIDES), demo, task, tmp_path / "single", device="cpu")

    runs = {name: json.loads((tmp_path / name / "run.json").read_text()) for name in ("ddp", "single")}
    assert runs["ddp"]["world_size"] == 2 and runs["single"]["world_size"] == 1
    ddp, single = (load_checkpoint(tmp_path / name / "model.pt") for name in ("ddp", "single"))
    lr = get_recipe("cpu-small", OVERRIDES).peak_lr
    for k, b in single.state_dict.items():
        a = ddp.state_dict[k]
        if k.endswith("attn.qkv.bias"):  # the key bias: a zero gradient that Adam turns into lr-sized noise
            d = len(b) // 3
            torch.testing.assert_close(a[d:2 * d], b[d:2 * d], rtol=0, atol=3 * lr, msg=k)
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    base = load_checkpoint(REPO / "weights" / "demo-tiny.pt").state_dict["encoder.blocks.0.mlp.fc1.weight"]
    assert (single.state_dict["encoder.blocks.0.mlp.fc1.weight"] - base).abs().max() > 0.2 * lr  # it did train
    losses = [[r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl")] for name in ("ddp", "single")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-4)
    results = [json.loads((tmp_path / name / "results.json").read_text()) for name in ("ddp", "single")]
    assert results[0]["test"]["n"] == results[1]["test"]["n"] == 16
    assert results[0]["test"]["top1_acc"] == results[1]["test"]["top1_acc"]
    assert results[0]["epoch"] == results[1]["epoch"]
