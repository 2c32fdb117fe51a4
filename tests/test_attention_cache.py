"""The additive attention mask is built once per (length, device, dtype) without autograd, and
rebuilt whenever the bias tables change or gradients must reach them."""

from __future__ import annotations

import pytest
import torch

from hear_mwmae.model import Attention


def fresh_mask(attn: Attention, n: int, dtype: torch.dtype) -> torch.Tensor:
    """The mask built from scratch (no cache involved)."""
    index, const = attn._mask_layout(n, torch.device("cpu"))
    tables = [attn.relative_position_bias[str(h)] for h, w in enumerate(attn.window_sizes) if w]
    return (torch.cat([tables[0].new_zeros(1), *tables])[index] + const).to(dtype).detach()


@pytest.fixture
def attn() -> Attention:
    torch.manual_seed(0)
    layer = Attention(48, 4, window_sizes=(2, 5, 0, 10), shift=True)
    with torch.no_grad():
        for table in layer.relative_position_bias.values():
            table.normal_()
    return layer


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_mask_is_reused_without_autograd(attn, context):
    with context():
        first = attn.attention_mask(50, torch.device("cpu"), torch.float32)
        assert attn.attention_mask(50, torch.device("cpu"), torch.float32) is first
        other = attn.attention_mask(50, torch.device("cpu"), torch.bfloat16)
        assert other.dtype == torch.bfloat16 and other is not first
        assert attn.attention_mask(100, torch.device("cpu"), torch.float32).shape == (4, 100, 100)
    torch.testing.assert_close(first, fresh_mask(attn, 50, torch.float32), rtol=0, atol=0)


def test_mask_follows_in_place_updates_and_loaded_weights(attn):
    with torch.no_grad():
        before = attn.attention_mask(50, torch.device("cpu"), torch.float32)
        attn.relative_position_bias["1"].add_(1.0)  # what an optimizer step does
        after = attn.attention_mask(50, torch.device("cpu"), torch.float32)
    assert after is not before
    torch.testing.assert_close(after, fresh_mask(attn, 50, torch.float32), rtol=0, atol=0)
    state = {k: v.clone() for k, v in attn.state_dict().items()}
    state["relative_position_bias.3"] = torch.randn_like(state["relative_position_bias.3"])
    attn.load_state_dict(state)
    with torch.no_grad():
        loaded = attn.attention_mask(50, torch.device("cpu"), torch.float32)
    torch.testing.assert_close(loaded, fresh_mask(attn, 50, torch.float32), rtol=0, atol=0)


def test_training_still_backpropagates_into_the_tables(attn):
    with torch.inference_mode():  # a cached mask from inference must not leak into training
        attn.attention_mask(50, torch.device("cpu"), torch.float32)
    x = torch.randn(2, 50, 48)
    attn(x).square().sum().backward()
    for h, w in enumerate(attn.window_sizes):
        if w:
            grad = attn.relative_position_bias[str(h)].grad
            assert grad is not None and grad.abs().sum() > 0
    a = attn.attention_mask(50, torch.device("cpu"), torch.float32)
    assert a.requires_grad and attn.attention_mask(50, torch.device("cpu"), torch.float32) is not a


def test_cached_and_uncached_forward_agree(attn):
    x = torch.randn(3, 50, 48)
    with torch.no_grad():
        cached = [attn(x) for _ in range(2)]
    reference = attn(x).detach()  # autograd on: rebuilt from the tables
    torch.testing.assert_close(cached[0], reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(cached[1], reference, rtol=0, atol=1e-6)
