"""Analyses (hear_mwmae.analysis): distance / entropy against the hand-made maps, PWCCA against
google/svcca's outputs, and the recomputed attention against the model's own forward."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import golden
from hear_mwmae.analysis import (CovarianceAccumulator, attention_distance, attention_distance_per_query,
                                 attention_entropy, attention_entropy_per_query, attention_hooks, bootstrap_ci,
                                 collect_attention, drop_cls, head_statistics, pwcca, pwcca_from_moments,
                                 pwcca_matrix)
from hear_mwmae.model import Attention, set_fused_attention, window_layout

EXPECTED = golden.meta("analyses")["json"]["attention/expected.json"]
PWCCA = golden.meta("analyses")["json"]["pwcca/results.json"]
GRID, PATCH = (50, 5), (4, 16)
# set -> (array key, tolerance): README.txt asks 1e-9 on the float64 structured maps, 1e-6 on float32 maps
SETS = {"structured": ("attention/maps_structured", 1e-9), "random": ("attention/maps_random", 1e-6)}
KIND_OF = {"d_grid": "grid", "d_time": "time", "d_freq": "freq", "d_flat": "flat", "d_bins": "bins"}


def _maps(name: str) -> np.ndarray:
    return golden.array("analyses", SETS[name][0])


def _expected(name: str, metric: str) -> np.ndarray:
    return np.array([EXPECTED["expected"][name][h][metric]["value"] for h in EXPECTED["maps"][name]["heads"]])


# ----------------------------------------------------------------------------- distance / entropy
@pytest.mark.parametrize("name", list(SETS))
@pytest.mark.parametrize("metric", list(KIND_OF))
def test_distance_per_head_and_per_query_match_fixture(name, metric):
    attn, tol = _maps(name), SETS[name][1]
    got = attention_distance(attn, GRID, KIND_OF[metric], patch_size=PATCH)
    assert got.dtype == np.float64 and got.shape == (attn.shape[1],)
    np.testing.assert_allclose(got, _expected(name, metric), rtol=0, atol=tol)
    per_query = attention_distance_per_query(attn, GRID, KIND_OF[metric], patch_size=PATCH)
    np.testing.assert_allclose(per_query, golden.array("analyses", f"attention/per_query/{name}_{metric}"),
                               rtol=0, atol=tol)


@pytest.mark.parametrize("name", list(SETS))
def test_entropy_per_head_and_per_query_match_fixture(name):
    attn, tol = _maps(name), SETS[name][1]
    got = attention_entropy(attn)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, _expected(name, "entropy_nats"), rtol=0, atol=tol)
    np.testing.assert_allclose(attention_entropy_per_query(attn),
                               golden.array("analyses", f"attention/per_query/{name}_entropy_nats"), rtol=0, atol=tol)


def test_fixture_anchors_and_units():
    heads = EXPECTED["maps"]["structured"]["heads"]
    attn = _maps("structured")
    ent = dict(zip(heads, attention_entropy(attn)))
    flat = dict(zip(heads, attention_distance(attn, GRID, "flat")))
    assert ent["uniform_global"] == pytest.approx(math.log(250), abs=1e-12)
    assert ent["win10"] == pytest.approx(math.log(10), abs=1e-12) and flat["win10"] == pytest.approx(3.3, abs=1e-12)
    # a 3-D map is one sample
    np.testing.assert_array_equal(attention_entropy(attn[0]), attention_entropy(attn))


def test_head_statistics_equal_the_public_functions_and_cls_is_dropped():
    attn = _maps("random").astype(np.float64)
    stats = head_statistics(torch.from_numpy(attn), GRID, PATCH).mean(0).numpy()  # (H, 6)
    for k, metric in enumerate(KIND_OF):
        np.testing.assert_allclose(stats[:, k], attention_distance(attn, GRID, KIND_OF[metric], PATCH), atol=1e-12)
    np.testing.assert_allclose(stats[:, 5], attention_entropy(attn), atol=1e-12)
    # the same maps with a CLS token that takes 30 % of every row: dropped and renormalised
    b, h, n, _ = attn.shape
    with_cls = np.zeros((b, h, n + 1, n + 1))
    with_cls[..., 1:, 1:] = 0.7 * attn
    with_cls[..., 1:, 0] = 0.3
    with_cls[..., 0, :] = 1.0 / (n + 1)
    back = drop_cls(torch.from_numpy(with_cls))
    np.testing.assert_allclose(back.numpy(), attn, atol=1e-15)


def test_bad_maps_are_rejected():
    attn = _maps("structured")
    with pytest.raises(ValueError, match="do not fill the grid"):
        attention_distance(attn, (25, 5))
    with pytest.raises(ValueError, match="drop a CLS"):
        attention_distance(np.ones((1, 1, 251, 251)) / 251, GRID)
    with pytest.raises(ValueError, match="sum to 1"):
        attention_entropy(attn * 2)
    with pytest.raises(ValueError, match="kind must be"):
        attention_distance(attn, GRID, "manhattan")
    with pytest.raises(ValueError, match="patch_size"):
        attention_distance(attn, GRID, "bins")
    with pytest.raises(ValueError, match=r"\(B, H, N, N\)"):
        attention_entropy(np.ones((250, 250)) / 250)


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    values = rng.normal(5.0, 1.0, size=(64, 3))
    low, high = bootstrap_ci(values, resamples=500, seed=1)
    mean = values.mean(0)
    assert np.all(low < mean) and np.all(mean < high) and np.all(high - low < 1.0)
    np.testing.assert_array_equal(bootstrap_ci(values, 500, seed=1)[0], low)  # seeded
    one = bootstrap_ci(values[:1], 100)
    np.testing.assert_array_equal(one[0], values[0]) and np.testing.assert_array_equal(one[1], values[0])


# ----------------------------------------------------------------------------- PWCCA
def _case_inputs(case: dict) -> tuple[np.ndarray, np.ndarray]:
    a1 = golden.array("analyses", "pwcca/" + case["acts1"].removesuffix(".npy")).astype(np.float64)
    a2 = golden.array("analyses", "pwcca/" + case["acts2"].removesuffix(".npy")).astype(np.float64)
    if case["preprocess"].startswith("subtract"):
        a1, a2 = a1 - a1.mean(1, keepdims=True), a2 - a2.mean(1, keepdims=True)
    if case["preprocess"].startswith("transpose"):
        a1, a2 = a1.T, a2.T
    return a1, a2


def _degenerate(coefs) -> bool:
    """All canonical correlations 1: the canonical directions (so the weights) are set by rounding."""
    return bool(np.all(np.abs(np.asarray(coefs) - 1) < 1e-9))


CASES = {c["case"]: c for c in PWCCA["cases"]}


@pytest.mark.parametrize("name", list(CASES))
def test_pwcca_equals_reference(name):
    case = CASES[name]
    a1, a2 = _case_inputs(case)
    ref = case["reference"]["pwcca"]
    if name == "f32_transposed":
        with pytest.raises(ValueError, match="transposed"):
            pwcca(a1, a2, case["epsilon"])
        return
    mean, weights, coefs = pwcca(a1, a2, case["epsilon"])
    if "error" in ref:  # the reference's IndexError (acts1 larger): we answer with the symmetric result
        assert name == "f32_unequal_48_vs_32"
        ref = CASES["f32_unequal_32_vs_48"]["reference"]["pwcca"]
    assert isinstance(mean, float) and weights.dtype == np.float64
    assert abs(mean - ref["mean"]) <= 1e-9
    assert len(coefs) == len(ref["coefs"]) and np.abs(coefs - ref["coefs"]).max() <= 1e-9
    assert abs(weights.sum() - 1) < 1e-12 and weights.min() >= 0
    if _degenerate(ref["coefs"]):
        # identical / linearly related inputs: every direction is canonical, the reference's own
        # weights change by ~1e-2 when the datapoints are merely permuted; PWCCA = 1 regardless
        assert abs(mean - 1) < 1e-12
    else:
        assert np.abs(weights - ref["weights"]).max() <= 1e-8


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if "error" not in c["reference"]["pwcca"]])
def test_pwcca_from_streamed_moments_equals_reference(name):
    a1, a2 = _case_inputs(CASES[name])
    acc = CovarianceAccumulator()
    both = torch.from_numpy(np.concatenate([a1, a2]).T)  # (datapoints, neurons)
    for i in range(0, both.shape[0], 97):  # uneven batches
        acc.add(both[i:i + 97])
    n1 = a1.shape[0]
    mean, _, coefs = pwcca_from_moments(acc.covariance(), acc.mean(), acc.count, slice(0, n1), slice(n1, None),
                                        CASES[name]["epsilon"])
    ref = CASES[name]["reference"]["pwcca"]
    assert abs(mean - ref["mean"]) <= 1e-9 and np.abs(coefs - ref["coefs"]).max() <= 1e-9
    np.testing.assert_allclose(acc.covariance(), np.cov(np.concatenate([a1, a2])), rtol=0, atol=1e-10)


def test_pwcca_matrix_equals_pairwise_calls():
    rng = np.random.default_rng(3)
    latent = rng.normal(size=(6, 400))
    groups_acts = [rng.normal(size=(4, 6)) @ latent + rng.normal(size=(4, 400)) * s + rng.normal(size=(4, 1))
                   for s in (0.1, 1.0, 3.0)]
    acts = np.concatenate(groups_acts)
    groups = [slice(0, 4), slice(4, 8), slice(8, 12)]
    matrix = pwcca_matrix(np.cov(acts), acts.mean(1), acts.shape[1], groups)
    for a, ga in enumerate(groups):
        for b, gb in enumerate(groups):
            assert matrix[a, b] == pytest.approx(pwcca(acts[ga], acts[gb])[0], abs=1e-10)
    assert np.allclose(np.diag(matrix), 1.0, atol=1e-10)
    assert matrix[0, 1] > matrix[0, 2]  # less noise, more similar


def test_pwcca_bad_inputs():
    x = np.random.default_rng(0).normal(size=(4, 50))
    with pytest.raises(ValueError, match="same datapoints"):
        pwcca(x, x[:, :40])
    with pytest.raises(ValueError, match="no variance"):
        pwcca(np.ones((4, 50)), x)
    with pytest.raises(ValueError, match="NaN"):
        pwcca(x, np.where(x > 1, np.nan, x))
    with pytest.raises(ValueError, match="2-D"):
        pwcca(x[0], x[0])


# ----------------------------------------------------------------------------- attention maps of the model
def _zero_logit_attention(windows: tuple[int, ...], shift: bool, dim_per_head: int = 4) -> Attention:
    """q = k = 0 (zero logits), zero bias tables, random v: the maps are softmax(mask) alone."""
    torch.manual_seed(0)
    h = len(windows)
    attn = Attention(h * dim_per_head, h, windows, shift).double()
    with torch.no_grad():
        attn.qkv.weight[: 2 * h * dim_per_head] = 0
        attn.qkv.bias[: 2 * h * dim_per_head] = 0
    return attn


STRUCTURED = dict(zip(golden.meta("analyses")["structured_head_names"],
                      golden.array("analyses", "attention/maps_structured")[0]))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("heads,windows,shift", [
    (("uniform_global", "win2", "win5", "win10", "win25", "win50", "win125"), (0, 2, 5, 10, 25, 50, 125), False),
    (("win10_shifted5",), (10,), True),
])
def test_window_maps_equal_the_models_own_masks(heads, windows, shift, fused):
    attn = _zero_logit_attention(windows, shift)
    attn.fused = fused
    x = torch.randn(2, 250, attn.qkv.in_features, dtype=torch.float64)
    probs, head_out = attn.attention_maps(x)
    expected = torch.from_numpy(np.stack([STRUCTURED[h] for h in heads]))
    assert probs.dtype == torch.float32  # the contract: float32 maps, whatever the module's dtype
    # exact for plain windows; the release's -100 penalty instead of -inf leaves e^-100 ~ 4e-44
    # between shifted segments
    assert (probs - expected.float()).abs().max().item() <= (1e-40 if shift else 0.0)
    # the forward pass (SDPA or reference path) applies exactly these maps
    v = attn.qkv(x).reshape(2, 250, 3, len(windows), -1)[:, :, 2].transpose(1, 2)
    out = attn.proj((expected @ v).transpose(1, 2).reshape(2, 250, -1))
    torch.testing.assert_close(attn(x), out, rtol=0, atol=1e-12)


def _random_attention(windows, shift, dim=32) -> Attention:
    torch.manual_seed(1)
    attn = Attention(dim, len(windows) or 8, windows, shift)
    for table in attn.relative_position_bias.values():
        torch.nn.init.normal_(table, std=1.0)
    return attn


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("windows,shift", [((2, 5, 10, 25, 50, 125, 0, 0), False),
                                           ((2, 5, 10, 25, 50, 125, 0, 0), True), ((), False)])
def test_recomputed_attention_reproduces_the_forward(windows, shift, fused):
    attn = _random_attention(windows, shift)
    attn.fused = fused
    x = torch.randn(2, 250, 32)
    with torch.no_grad():
        probs, head_out = attn.attention_maps(x)
        out = attn(x)
    assert probs.dtype == torch.float32 and probs.shape == (2, 8, 250, 250) and head_out.shape == (2, 8, 250, 4)
    torch.testing.assert_close(attn.proj(head_out.transpose(1, 2).reshape(2, 250, 32)), out, rtol=0, atol=2e-6)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 8, 250), rtol=0, atol=1e-5)
    d_flat = attention_distance(probs, GRID, "flat")
    for h, w in enumerate(attn.window_sizes):  # zero mass outside each head's (shifted) window
        if w:
            win_id = window_layout(250, w, attn.shift_of(w))[0]
            outside = win_id[:, None] != win_id[None, :]
            assert (probs[:, h] * outside).max().item() == 0.0
            assert d_flat[h] <= w - 1


@pytest.mark.parametrize("fused", [True, False])
def test_swin_window_attention_maps(fused):
    from hear_mwmae.swin import WindowAttention

    torch.manual_seed(2)
    attn = WindowAttention(32, 4, (64, 8), (4, 4), (2, 0)).eval()  # eval: no dropout in the position MLP
    torch.nn.init.normal_(attn.meta_mlp.fc2.weight, std=0.5)
    attn.fused = fused
    x = torch.randn(2, 512, 32)
    with torch.no_grad():
        probs, head_out = attn.attention_maps(x)
    torch.testing.assert_close(attn.proj(head_out.transpose(1, 2).reshape(2, 512, 32)), attn(x), rtol=0, atol=2e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 4, 512), rtol=0, atol=1e-5)
    assert attention_distance(probs, (64, 8), "time").max() <= 3  # 4 x 4 windows: wt - 1, wf - 1
    assert attention_distance(probs, (64, 8), "freq").max() <= 3
    assert attention_entropy(probs).max() <= math.log(16) + 1e-9


def test_hooks_record_every_block_and_leave_the_fast_path_alone(converted):
    from hear_mwmae.analysis import attention_module
    from hear_mwmae.checkpoint import Checkpoint, build_mwmae

    c = converted("mwmae_shift_tiny")
    model = build_mwmae(Checkpoint(c.config, c.state_dict)).eval()
    set_fused_attention(model, True)
    x = torch.randn(2, 200, 80)
    with torch.no_grad():
        before = model.encoder.forward_features(x)
        modules = [attention_module(b) for b in model.encoder.blocks]
        maps = collect_attention(modules, lambda: model.encoder.forward_features(x))
        during_calls = []
        with attention_hooks(modules, lambda i, p, o: during_calls.append(i)):
            during = model.encoder.forward_features(x)
        after = model.encoder.forward_features(x)
    assert during_calls == list(range(len(modules)))
    assert all(len(m._forward_hooks) == 0 for m in modules)  # nothing left behind
    torch.testing.assert_close(during, before, rtol=0, atol=0)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    # the last block's recomputed output matches what the block's attention computed
    assert len(maps) == c.config.model.depth and maps[0][0].shape == (2, 3, 250, 250)
