"""Two gloo processes under torchrun reach the parameters of one process with the same global batch,
for an MW-MAE and an Audio-MAE (Swin decoder, fbank, no decay on 1-D parameters) recipe."""

from __future__ import annotations


import pytest
import soundfile as sf
import torch
import torch.distributed as dist

import hear_mwmae
from hear_mwmae.pretrain.metrics import read_metrics
from hear_mwmae.pretrain.recipes import get_recipe
from hear_mwmae.pretrain.state import load_train_state
from hear_mwmae.pretrain.synth import make_clip
from hear_mwmae.pretrain.trainer import train

from conftest import single_thread, torchrun_cli

COMMON = ["model.embed_dim=32", "model.depth=1", "model.num_heads=2", "model.decoder_embed_dim=32",
          "batch_size=8", "max_steps=3", "warmup_epochs=0.5", "base_lr=0.05", "log_every=1",
          "checkpoint_every=100", "num_workers=0"]
RECIPES = {"cpu-small": COMMON + ["model.decoder_depth=1"],
           "audiomae-cpu-small": COMMON + ["model.decoder_depth=2", "model.decoder_num_heads=2",
                                           "fused_attention=false"]}


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_two_gloo_processes_match_one_process(tmp_path, recipe):
    OVERRIDES = RECIPES[recipe]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(16):  # 2 optimiser steps per epoch: the 3 steps cross an epoch boundary
        sf.write(corpus / f"c{i}.wav", make_clip(11, i, duration=2.3).waveform, 16000, subtype="FLOAT")

    done = torchrun_cli("pretrain", "--recipe", recipe, "--data", str(corpus), "--out", str(tmp_path / "ddp"),
                        "--device", "cpu", *[a for o in OVERRIDES for a in ("--set", o)])
    assert done.returncode == 0, done.stderr[-3000:]
    with single_thread():
        train(get_recipe(recipe, OVERRIDES), [corpus], tmp_path / "single", device="cpu")

    ddp, single = load_train_state(tmp_path / "ddp"), load_train_state(tmp_path / "single")
    assert ddp["world_size"] == 2 and single["world_size"] == 1 and ddp["step"] == single["step"] == 3
    assert ddp["train_config"] == single["train_config"]
    lr = get_recipe(recipe, OVERRIDES).peak_lr
    for k, v in single["model"].items():
        a, b = ddp["model"][k], v
        if k.endswith("attn.qkv.bias"):
            # The key bias has an exactly zero gradient (softmax ignores a per-query constant), so
            # Adam turns float rounding noise into steps of up to lr: compare it at that scale only.
            d = len(b) // 3
            torch.testing.assert_close(a[d : 2 * d], b[d : 2 * d], rtol=0, atol=3 * lr, msg=k)
            a, b = torch.cat([a[:d], a[2 * d :]]), torch.cat([b[:d], b[2 * d :]])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    torch.manual_seed(0)  # the trainer's initialisation
    fresh = hear_mwmae.model.MWMAE(get_recipe(recipe, OVERRIDES).model).state_dict()
    moved = single["model"]["encoder.blocks.0.mlp.fc1.weight"] - fresh["encoder.blocks.0.mlp.fc1.weight"]
    assert moved.abs().max() > 1e-3  # the comparison is not between two untrained models
    losses = [[r["loss"] for r in read_metrics(tmp_path / run / "metrics.jsonl")] for run in ("ddp", "single")]
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)  # logged losses are averaged over ranks
