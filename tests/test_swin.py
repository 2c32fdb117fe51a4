"""Audio-MAE's Swin decoder blocks and 2-D masking, beyond the golden fixtures: both attention
paths agree, attention maps reproduce the output, windows / shifts / penalty behave as the
spec says, the hybrid option, parameter names, initialisation, masking properties."""

from __future__ import annotations

import pytest
import torch

from hear_mwmae.config import audiomae_config, model_config
from hear_mwmae.model import MWMAE, set_fused_attention
from hear_mwmae.swin import (SwinBlock, WindowAttention, block_layout, log_relative_coordinates, swin_blocks,
                             window_tokens)

from conftest import assert_fused_and_reference_agree

GRID = (64, 8)


def tiny_cfg(**kw):
    base = dict(embed_dim=32, depth=1, num_heads=2, decoder_embed_dim=32, decoder_depth=4, decoder_num_heads=4)
    return audiomae_config("base", **{**base, **kw})


def randomised(attn: WindowAttention) -> WindowAttention:
    torch.manual_seed(3)
    with torch.no_grad():
        attn.tau.uniform_(0.1, 1.0)
        for p in attn.meta_mlp.parameters():
            p.normal_(0, 1.0)
    return attn.eval()


@pytest.mark.parametrize("window,shift", [((4, 4), (0, 0)), ((4, 4), (2, 0)), ((4, 4), (2, 2)), (GRID, (0, 0))])
def test_sdpa_and_reference_agree_forward_and_backward(window, shift):
    assert_fused_and_reference_agree(randomised(WindowAttention(32, 4, GRID, window, shift)), torch.randn(2, 512, 32))


@pytest.mark.parametrize("fused", [True, False])
def test_temperature_is_clamped_at_0_01(fused):
    attn = randomised(WindowAttention(16, 2, GRID, (4, 4), (2, 0)))
    attn.fused = fused
    x = torch.randn(1, 512, 16)
    with torch.no_grad():
        attn.tau.fill_(0.01)
        at_clamp = attn(x)
        attn.tau.fill_(0.001)
        assert torch.equal(attn(x), at_clamp)
        attn.tau.fill_(0.02)
        assert not torch.allclose(attn(x), at_clamp)


@pytest.mark.parametrize("window,shift", [((4, 4), (0, 0)), ((4, 4), (2, 0)), (GRID, (0, 0))])
def test_attention_maps_reproduce_the_output(window, shift):
    attn = randomised(WindowAttention(32, 4, GRID, window, shift))
    x = torch.randn(2, 512, 32)
    probs, head_out = attn.attention_maps(x)
    assert probs.shape == (2, 4, 512, 512) and probs.dtype == torch.float32 and head_out.shape == (2, 4, 512, 8)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 512))
    v = attn.qkv(x).view(2, 512, 3, 4, 8)[:, :, 2].transpose(1, 2)  # (B, H, L, hd), natural order
    torch.testing.assert_close(probs @ v, head_out, rtol=1e-5, atol=1e-6)
    merged = attn.proj(head_out.transpose(1, 2).reshape(2, 512, 32))
    for fused in (True, False):
        attn.fused = fused
        torch.testing.assert_close(merged, attn(x), rtol=1e-5, atol=1e-6)


def test_windows_shift_and_penalty_follow_the_spec():
    plain = WindowAttention(16, 2, GRID, (4, 4), (0, 0)).eval()
    shifted = WindowAttention(16, 2, GRID, (4, 4), (2, 0)).eval()
    x = torch.randn(1, 512, 16)
    token = lambda t, f: 8 * t + f  # noqa: E731  (time-major)
    support = lambda attn, t, f: set(  # noqa: E731
        (attn.attention_maps(x)[0][0, 0, token(t, f)] > 1e-12).nonzero().flatten().tolist())
    # unshifted: window (t div 4, f div 4), rows 4..7 x columns 4..7 for token (5, 6)
    assert support(plain, 5, 6) == {token(t, f) for t in range(4, 8) for f in range(4, 8)}
    # shifted by -2 in time: rows 2..5 share a window, frequency never shifts
    assert support(shifted, 3, 1) == {token(t, f) for t in range(2, 6) for f in range(4)}
    # the wrapped window holds rows 62, 63, 0, 1; the -100 penalty separates the two segments
    assert support(shifted, 0, 0) == {token(t, f) for t in (0, 1) for f in range(4)}
    assert support(shifted, 63, 5) == {token(t, f) for t in (62, 63) for f in range(4, 8)}
    assert window_tokens(GRID, (4, 4), (0, 0))[2 * 3 + 1].tolist() == [token(t, f) for t in range(12, 16)
                                                                        for f in range(4, 8)]


def test_log_spaced_relative_coordinates():
    coords, index = log_relative_coordinates((4, 4), distinct=False)
    assert index is None and coords.shape == (256, 2)
    # pair (p, q) = ((0, 0), (3, 1)): offset c_p - c_q = (-3, -1)
    p, q = 0, 4 * 3 + 1
    torch.testing.assert_close(coords[p * 16 + q], -torch.log1p(torch.tensor([3.0, 1.0])))
    distinct, idx = log_relative_coordinates((4, 4), distinct=True)
    assert distinct.shape == (49, 2) and torch.equal(distinct[idx.flatten()], coords)


def test_position_bias_is_the_same_from_distinct_offsets():
    attn = randomised(WindowAttention(16, 2, (8, 8), (8, 8), (0, 0)))  # 64 tokens: one MLP row per pair
    pairs = attn.position_bias()
    attn.relative_coordinates_log, attn.relative_index = log_relative_coordinates((8, 8), distinct=True)
    torch.testing.assert_close(attn.position_bias(), pairs, rtol=1e-5, atol=1e-6)


def test_block_layout_shift_no_shift_and_hybrid():
    assert block_layout(tiny_cfg()) == [((4, 4), (0, 0)), ((4, 4), (2, 0))] * 2
    assert block_layout(tiny_cfg(shifting_windows=False)) == [((4, 4), (0, 0))] * 4
    assert block_layout(tiny_cfg(decoder_global_blocks=2)) == [((4, 4), (0, 0)), ((4, 4), (2, 0)),
                                                                (GRID, (0, 0)), (GRID, (0, 0))]
    assert [len(b) for b in (block_layout(audiomae_config("base")),)] == [16]
    with pytest.raises(ValueError, match="decoder_global_blocks"):
        tiny_cfg(decoder_global_blocks=5)


def test_hybrid_global_blocks_attend_everywhere_and_paths_agree():
    cfg = tiny_cfg(decoder_global_blocks=1)
    torch.manual_seed(0)
    model = MWMAE(cfg).eval()
    last = model.decoder.blocks[-1].attn
    probs, _ = last.attention_maps(torch.randn(1, 512, 32))
    assert bool((probs > 0).all())  # one window = the whole grid
    x = torch.randn(2, 1024, 128)
    ids_keep, ids_restore, _ = model.random_masking(2, generator=torch.Generator().manual_seed(1))
    preds = []
    for fused in (True, False):
        set_fused_attention(model, fused)
        with torch.no_grad():
            preds.append(model(x, ids_keep, ids_restore).pred)
    torch.testing.assert_close(preds[0], preds[1], rtol=1e-5, atol=1e-5)


def test_parameter_names_mirror_the_authors_and_buffers_are_not_saved():
    blocks = swin_blocks(tiny_cfg())
    names = {k.split(".", 1)[1] for k in blocks.state_dict()}
    assert names == {"attn.tau", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                     "attn.meta_mlp.fc1.weight", "attn.meta_mlp.fc1.bias", "attn.meta_mlp.fc2.weight",
                     "attn.meta_mlp.fc2.bias", "norm1.weight", "norm1.bias", "mlp.fc1.weight", "mlp.fc1.bias",
                     "mlp.fc2.weight", "mlp.fc2.bias", "norm2.weight", "norm2.bias"}
    attn = blocks[0].attn
    assert attn.meta_mlp.fc1.weight.shape == (384, 2) and attn.meta_mlp.fc2.weight.shape == (4, 384)
    assert len(list(blocks.buffers())) > 0


def test_fresh_init_and_eps():
    torch.manual_seed(0)
    model = MWMAE(tiny_cfg())
    blk = model.decoder.blocks[1]
    assert torch.equal(blk.attn.tau, torch.ones(4))
    assert torch.equal(blk.attn.meta_mlp.fc1.bias, torch.zeros(384))
    assert blk.attn.meta_mlp.fc2.weight.abs().max() <= (6 / (384 + 4)) ** 0.5  # xavier-uniform bound
    assert blk.norm1.eps == 1e-6 and isinstance(blk.mlp.act, torch.nn.GELU) and blk.mlp.act.approximate == "none"
    assert isinstance(blk, SwinBlock)


def test_meta_mlp_dropout_only_in_training():
    attn = randomised(WindowAttention(16, 2, GRID, (4, 4), (0, 0)))
    x = torch.randn(1, 512, 16)
    assert torch.equal(attn(x), attn(x))
    attn.train()
    torch.manual_seed(0)
    assert not torch.allclose(attn(x), attn.eval()(x))


def test_swin_decoder_trains():
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = MWMAE(cfg)
    out = model(torch.randn(1, 1024, 128), generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.decoder.blocks[0].attn.tau.grad is not None
    assert model.decoder.blocks[0].attn.meta_mlp.fc1.weight.grad.abs().sum() > 0


# ----------------------------------------------------------------------------- masking
def test_2d_masking_structure():
    cfg = tiny_cfg(mask_2d=True, mask_t_prob=0.7, mask_f_prob=0.3)
    model = MWMAE(cfg)
    assert cfg.mask_2d_keep == (19, 5) and cfg.len_keep == 95 and cfg.mask_noise_size == 72
    ids_keep, ids_restore, mask = model.random_masking(3, generator=torch.Generator().manual_seed(4))
    assert ids_keep.shape == (3, 95) and ids_restore.shape == (3, 512)
    for b in range(3):
        kept = ids_keep[b]
        assert torch.all(kept[1:] > kept[:-1])  # ascending natural order
        rows, cols = set((kept // 8).tolist()), set((kept % 8).tolist())
        assert len(rows) == 19 and len(cols) == 5 and len(kept) == 19 * 5  # a full product of rows x cols
        assert mask[b, kept].sum() == 0 and mask[b].sum() == 512 - 95
        # ids_restore puts kept tokens (first) and mask tokens back in natural order
        order = torch.cat([kept, (mask[b] == 1).nonzero().flatten()])
        assert torch.equal(order[ids_restore[b]], torch.arange(512))


def test_2d_noise_is_time_then_frequency_as_drawn():
    model = MWMAE(tiny_cfg(mask_2d=True))
    g = torch.Generator().manual_seed(9)
    expected = torch.cat([torch.rand(2, 64, generator=g), torch.rand(2, 8, generator=g)], dim=1)
    drawn = model.random_masking(2, generator=torch.Generator().manual_seed(9))
    given = model.random_masking(2, noise=expected)
    assert all(torch.equal(a, b) for a, b in zip(drawn, given))
    with pytest.raises(ValueError, match=r"\(2, 72\)"):
        model.random_masking(2, noise=torch.rand(2, 512))


def test_len_keep_formulas_per_family():
    for i in range(100):
        ratio = i / 100
        assert audiomae_config("base", mask_ratio=ratio).len_keep == int(512 * (1 - ratio))
    assert model_config("tiny", mask_ratio=0.8).len_keep == 50  # MW-MAE's rounding-safe formula on 250 patches
    assert int(250 * (1 - 0.8)) == 49


def test_set_fused_attention_reaches_window_attention():
    model = MWMAE(tiny_cfg())
    set_fused_attention(model, False)
    assert not any(b.attn.fused for b in model.decoder.blocks)
    set_fused_attention(model, True)
    assert all(b.attn.fused for b in model.decoder.blocks)
