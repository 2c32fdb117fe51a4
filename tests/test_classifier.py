"""The classifier head: its poolings, its config's checks, checkpoints with and without one."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import hear_mwmae
from hear_mwmae.checkpoint import load_checkpoint, save_checkpoint
from hear_mwmae.classifier import AudioClassifier
from hear_mwmae.config import FbankConfig, HeadConfig, MWMAEConfig, audiomae_config, model_config
from hear_mwmae.finetune.model import finetuned_config
from hear_mwmae.finetune.recipes import FinetuneConfig
from hear_mwmae.model import masking_2d

from conftest import REPO


def test_time_pooling_is_the_scene_embedding_and_masks_drop_time_rows():
    demo = load_checkpoint(REPO / "weights" / "demo-tiny.pt")
    config = finetuned_config(demo.config, HeadConfig.generic(3, pooling="time"), FinetuneConfig(mask_f_prob=0))
    assert config.model.final_norm  # "time" keeps the encoder's norm: it starts from the HEAR scene embedding
    model = AudioClassifier(config.model, config.head).eval()
    model.encoder.load_state_dict(demo.encoder_state_dict())
    runtime = hear_mwmae.load_model(str(REPO / "weights" / "demo-tiny.pt"), device="cpu")
    audio = torch.randn(2, 31840) * 0.1  # 1 + 31840 / 160 = 200 frames: exactly one chunk
    x = runtime.frontend.pad_frames(runtime.frontend(audio), 200)
    with torch.no_grad():
        tokens = model.encoder.forward_tokens(x)  # (2, 250, 192)
        scene = hear_mwmae.get_scene_embeddings(audio, runtime)  # (2, 5 * 192)
        pooled = tokens.reshape(2, 50, 5, 192).mean(dim=1).reshape(2, -1)
        torch.testing.assert_close(pooled, scene, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.pooled(x), model.classifier.fc_norm(pooled), rtol=1e-4, atol=1e-5)
        noise = torch.rand(2, 55, generator=torch.Generator().manual_seed(0))
        ids = masking_2d(noise, (50, 5), (40, 5))[0]  # 40 time rows, every frequency patch
        kept = model.encoder.forward_tokens(x, ids)
        expected = model.classifier.fc_norm(kept.reshape(2, 40, 5, 192).mean(dim=1).reshape(2, -1))
        torch.testing.assert_close(model.pooled(x, ids), expected)
    with pytest.raises(ValueError, match="time masks only"):
        finetuned_config(demo.config, HeadConfig.generic(3, pooling="time"), FinetuneConfig(mask_f_prob=0.2))


def test_mean_pooling_leaves_out_the_cls_token_and_drops_the_final_norm():
    base = MWMAEConfig(audiomae_config("tiny", depth=1, img_size=(64, 128)), FbankConfig())
    config = finetuned_config(base, HeadConfig.generic(4), FinetuneConfig())
    assert not config.model.final_norm and config.head.pooling == "mean"
    model = AudioClassifier(config.model, config.head).eval()
    x = torch.randn(1, 64, 128)
    with torch.no_grad():
        tokens = model.encoder.forward_tokens(x)  # (1, 1 + 32, 192), CLS first
        torch.testing.assert_close(model.pooled(x), model.classifier.fc_norm(tokens[:, 1:].mean(dim=1)))
    cls = AudioClassifier(config.model, dataclasses.replace(config.head, pooling="cls")).eval()
    with torch.no_grad():
        torch.testing.assert_close(cls.pooled(x), cls.classifier.fc_norm(cls.encoder.forward_tokens(x)[:, 0]))


@pytest.mark.parametrize("change,message", [
    (dict(labels=("a", "b")), "3 classes but 2 label names"),
    (dict(labels=("a", "b", "a")), "label names repeat: \\['a'\\]"),
    (dict(label_ids=("/m/1",)), "3 classes but 1 label ids"),
    (dict(num_classes=0, labels=()), "num_classes must be an integer in \\[1, 100000\\], got 0"),
    (dict(pooling="max"), "pooling must be one of"),
    (dict(dropout=1.0), "dropout must be in"),
])
def test_head_config_checks(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(HeadConfig.generic(3), **change)


def test_cls_pooling_needs_a_cls_token_and_checkpoints_need_matching_weights(tmp_path):
    with pytest.raises(ValueError, match="needs a model with a CLS token"):
        MWMAEConfig(model_config("tiny", depth=1), head=HeadConfig.generic(2, pooling="cls"))
    config = MWMAEConfig(model_config("tiny", depth=1, final_norm=False), head=HeadConfig.generic(2))
    model = AudioClassifier(config.model, config.head)
    encoder = {"encoder." + k: v for k, v in model.encoder.state_dict().items()}
    with pytest.raises(ValueError, match="no 'classifier.\\*' keys"):
        save_checkpoint(tmp_path / "a.pt", config, encoder)
    with pytest.raises(ValueError, match="the config has no head"):
        save_checkpoint(tmp_path / "b.pt", dataclasses.replace(config, head=None),
                        {**encoder, **{"classifier." + k: v for k, v in model.classifier.state_dict().items()}})
