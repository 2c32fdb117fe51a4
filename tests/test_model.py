"""Model behaviour beyond the golden fixtures: attention paths agree, shapes, masking, config."""

from __future__ import annotations

import pytest
import torch

from hear_mwmae.config import ENCODER_SIZES, MWMAEConfig, ModelConfig, model_config
from hear_mwmae.model import MWMAE, Attention, count_parameters, set_fused_attention, sincos_2d

from conftest import assert_fused_and_reference_agree


def small_config(**kw) -> ModelConfig:
    base = dict(embed_dim=48, depth=2, num_heads=3, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=8)
    base.update(kw)
    return ModelConfig(**base)


@pytest.mark.parametrize("windows,shift", [((2, 5, 10, 25, 50, 125, 0, 0), False),
                                           ((2, 5, 10, 25, 50, 125, 0, 0), True),
                                           ((10, 10, 0, 0, 5, 5, 2, 50), True),
                                           ((), False)])
def test_sdpa_and_reference_attention_agree_forward_and_backward(windows, shift):
    torch.manual_seed(0)
    attn = Attention(32, 8, windows, shift)
    for table in attn.relative_position_bias.values():
        torch.nn.init.normal_(table, std=1.0)
    assert_fused_and_reference_agree(attn, torch.randn(3, 250, 32))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("shift,window_of_7", [(False, range(5, 10)), (True, range(7, 12))])
def test_windowed_head_only_sees_its_window(fused, shift, window_of_7):
    torch.manual_seed(0)
    attn = Attention(16, 1, (5,), shift)  # a single head with window 5 (shift 2 when shifted)
    attn.fused = fused
    x = torch.randn(1, 250, 16)
    x2 = x.clone()
    x2[0, 7] += 10.0
    changed = ((attn(x2) - attn(x)).abs().sum(-1)[0] > 1e-6).nonzero().flatten().tolist()
    assert changed == list(window_of_7)


def test_window_must_divide_sequence():
    attn = Attention(16, 2, (3, 0))
    with pytest.raises(ValueError, match="does not divide"):
        attn(torch.randn(1, 250, 16))


def test_batch_equals_single_and_masked_shapes():
    torch.manual_seed(0)
    cfg = small_config(window_sizes=(10, 0, 2), shifting_windows=True)
    model = MWMAE(cfg).eval()
    x = torch.randn(4, 200, 80)
    with torch.no_grad():
        full = model.encoder.forward_features(x)
        single = torch.cat([model.encoder.forward_features(x[i:i + 1]) for i in range(4)])
    assert full.shape == (4, 50, 5 * 48)
    torch.testing.assert_close(full, single, rtol=1e-5, atol=1e-5)
    gen = torch.Generator().manual_seed(1)
    out = model(x, generator=gen)
    assert out.pred.shape == (4, 250, 64) and out.mask.shape == (4, 250)
    assert torch.all(out.mask.sum(1) == 250 - cfg.len_keep) and cfg.len_keep == 50
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_cls_variant_shapes():
    cfg = small_config(use_cls_token=True, decoder_window_sizes=())
    model = MWMAE(cfg)
    x = torch.randn(2, 200, 80)
    assert model.encoder.forward_features(x).shape == (2, 50, 240)
    ids_keep, ids_restore, _ = model.random_masking(2)
    assert model.encoder.forward_masked(x, ids_keep).shape == (2, 51, 48)
    assert model(x, ids_keep, ids_restore).pred.shape == (2, 250, 64)


@pytest.mark.parametrize("patch", [(4, 16), (2, 16), (8, 8), (10, 20)])
def test_any_dividing_patch_size(patch):
    cfg = small_config(patch_size=patch, decoder_window_sizes=())
    model = MWMAE(cfg)
    x = torch.randn(1, 200, 80)
    gt, gf = 200 // patch[0], 80 // patch[1]
    assert model.encoder.forward_features(x).shape == (1, gt, gf * 48)
    torch.testing.assert_close(model.unpatchify(model.patchify(x)), x)


def test_non_dividing_patch_is_rejected():
    with pytest.raises(ValueError, match="does not divide"):
        ModelConfig(patch_size=(3, 16))


@pytest.mark.parametrize("size", sorted(ENCODER_SIZES))
def test_every_release_size_builds(size):
    with torch.device("meta"):
        model = MWMAE(model_config(size))
    dim, depth, heads = ENCODER_SIZES[size]
    assert len(model.encoder.blocks) == depth and model.encoder.blocks[0].attn.num_heads == heads
    assert model.cfg.embedding_size == 5 * dim


def test_base_parameter_count_and_embedding_size():
    with torch.device("meta"):
        model = MWMAE(model_config("base"))
    assert model.cfg.embedding_size == 3840
    enc = count_parameters(model.encoder)
    assert 85_000_000 < enc < 87_000_000  # ViT-B/16 encoder with 250 patch position rows


def test_sincos_first_half_encodes_frequency():
    pe = sincos_2d(64, (50, 5))
    # tokens 0 and 5 share frequency index 0 but differ in time: first half equal, second not
    assert torch.equal(pe[0, :32], pe[5, :32]) and not torch.equal(pe[0, 32:], pe[5, 32:])
    assert torch.equal(pe[0, 32:], pe[1, 32:]) and not torch.equal(pe[0, :32], pe[1, :32])


def test_fresh_init_position_embeddings_and_masking_determinism():
    model = MWMAE(small_config())
    torch.testing.assert_close(model.encoder.pos_embed[0], sincos_2d(48, (50, 5)))
    a = model.random_masking(3, generator=torch.Generator().manual_seed(5))
    b = model.random_masking(3, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_config_round_trip_and_validation():
    cfg = MWMAEConfig(model=small_config(window_sizes=[10, 0, 2], shifting_windows=True))
    again = MWMAEConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.model.window_sizes == (10, 0, 2)
    with pytest.raises(ValueError, match="unknown ModelConfig keys"):
        MWMAEConfig.from_dict({"model": {"embed_dimm": 3}, "frontend": {}})
    with pytest.raises(ValueError, match="window sizes for"):
        small_config(window_sizes=(2, 2))
    with pytest.raises(ValueError, match="CLS"):
        small_config(use_cls_token=True)
    assert small_config(window_sizes=5).window_sizes == (5, 5, 5)
    with pytest.raises(Exception):
        cfg.model.embed_dim = 3  # frozen


def test_set_fused_attention_switches_every_layer():
    model = MWMAE(small_config())
    set_fused_attention(model, False)
    assert not any(m.fused for m in model.modules() if isinstance(m, Attention))
