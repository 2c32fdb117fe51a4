"""Regenerate golden arrays from their seeds instead of storing them (numpy only).

Audio-MAE checkpoints. The fixtures' parameters are the authors' initialisation of
`models_mae.MaskedAutoencoderViT` (torch.manual_seed(seed), then the constructor) plus a
seeded numpy perturbation; both are replayed from the state dict's names and shapes:

1. while the model is built, every nn.Conv2d / nn.Linear resets itself (kaiming_uniform_
   with a = sqrt(5) on the weight, uniform(+-1/sqrt(fan_in)) on the bias), in construction
   order, which for this model is state-dict order; LayerNorms, the zero / one parameters
   (cls_token, pos_embed, mask_token, the Swin decoder's attn.tau) and Dropouts draw nothing;
2. `initialize_weights()`: sin-cos pos embeds (numpy float64, no RNG), xavier_uniform_ on
   the patch conv's weight seen as (out, in*kh*kw), normal_(std .02) on cls_token then
   mask_token, then `apply(_init_weights)`: xavier_uniform_ on every Linear weight in module
   order, Linear biases 0, LayerNorms 1 / 0; the conv bias keeps its reset value;
3. perturbation: parameter names in sorted order, one numpy default_rng(perturb_seed),
   p += float32(standard_normal(shape)) * float32(scale).

torch's CPU generator is MT19937 seeded like the reference `init_genrand`; a float32
`uniform_(lo, hi)` takes one 32-bit draw per element, keeps its low 24 bits as
u = k / 2^24, and returns u * (hi - lo) + lo fused in one rounding (torch's AVX2 / AVX-512
kernels; its plain-C kernel rounds twice). Replaying that here, rather than calling torch,
makes the result the same on every machine. normal_'s values depend on the CPU's kernel:
cls_token and mask_token are replayed for their draws only and their values are stored.

MW-MAE (Flax) checkpoints. Only leaves whose initial value needs no jax.random are
replayed: biases 0, LayerNorm scales 1, the sin-cos position embeddings (XLA float32
arithmetic: x / n as x * (1/n), 10000^-x, sin / cos of a float32 angle), then the same
perturbation over the sorted flattened parameter paths. XLA's float32 sin / cos differ from
correctly rounded ones in ~1% of the elements; the vendoring script stores those bits.

Attention maps of the analyses fixture: logits -(|dt| + 0.5 |df|) / tau + N(0, 1) on the
(time, freq) token grid, one default_rng draw of the whole (B, H, n, n) noise, softmax in
float64, cast to float32.

`scripts/vendor_golden.py` checks every regenerated array against the original bit for bit
and stores what differs; `tests/golden` checks a CRC-32 of every regenerated array.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from typing import Any, Callable

import numpy as np

Shapes = dict[str, tuple[int, ...]]

# normal_'s values differ between torch's CPU kernels (AVX2 vs plain C): stored, not replayed.
AUDIOMAE_STORED = ("cls_token", "mask_token")


def crc32(value: np.ndarray) -> int:
    """CRC-32 of an array's C-order bytes (integrity check of a regenerated array)."""
    return zlib.crc32(np.ascontiguousarray(value).tobytes())


class TorchCPUGenerator:
    """The draws of torch's default CPU generator after `torch.manual_seed(seed)`."""

    def __init__(self, seed: int) -> None:
        key = [seed & 0xFFFFFFFF]  # MT19937 init_genrand
        for i in range(1, 624):
            key.append((1812433253 * (key[-1] ^ (key[-1] >> 30)) + i) & 0xFFFFFFFF)
        self._mt = np.random.MT19937()
        self._mt.state = {"bit_generator": "MT19937", "state": {"key": np.array(key, np.uint32), "pos": 624}}

    def skip(self, n: int) -> None:
        """Consume n 32-bit draws (what normal_ on n >= 16 float32 elements, n % 16 == 0, takes)."""
        self._mt.random_raw(n)

    def uniform(self, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
        """float32 `torch.empty(shape).uniform_(lo, hi)`: fma(k / 2^24, hi - lo, lo) in float32."""
        lo32, hi32 = np.float32(lo), np.float32(hi)
        u = (self._mt.random_raw(math.prod(shape)) & 0xFFFFFF).astype(np.float64) * 2.0**-24
        # u * span is exact in float64 (24 + 24 bits) and, for lo = -hi, so is the sum (< 53
        # bits): the cast is the fused multiply-add's single rounding.
        return (u * np.float64(hi32 - lo32) + np.float64(lo32)).astype(np.float32).reshape(shape)

    def kaiming_uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """nn.Linear / nn.Conv2d default weight: kaiming_uniform_(a=sqrt(5)), fan_in mode."""
        fan_in = math.prod(shape[1:])
        gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
        bound = math.sqrt(3.0) * (gain / math.sqrt(fan_in))
        return self.uniform(shape, -bound, bound)

    def xavier_uniform(self, shape: tuple[int, ...]) -> np.ndarray:
        """torch.nn.init.xavier_uniform_ (gain 1) on a 2-D weight (out, in)."""
        bound = math.sqrt(3.0) * math.sqrt(2.0 / float(shape[0] + shape[1]))
        return self.uniform(shape, -bound, bound)


def sincos_audiomae(dim: int, rows: int, cols: int) -> np.ndarray:
    """(1 + rows*cols, dim) float32 as the authors' `get_2d_sincos_pos_embed_flexible(dim,
    (rows, cols), cls_token=True)`: a zero CLS row, then token r*cols + c gets
    [sincos(c) | sincos(r)], frequencies 1 / 10000^(i / (dim/4)), in float64."""

    def one_axis(half: int, pos: np.ndarray) -> np.ndarray:  # (M,) -> (M, half)
        omega = 1.0 / 10000 ** (np.arange(half // 2, dtype=np.float64) / (half / 2.0))
        angle = pos.reshape(-1).astype(np.float64)[:, None] * omega[None, :]
        return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)

    col, row = np.meshgrid(np.arange(cols, dtype=np.float32), np.arange(rows, dtype=np.float32))
    grid = np.concatenate([one_axis(dim // 2, col), one_axis(dim // 2, row)], axis=1)
    return np.concatenate([np.zeros((1, dim)), grid], axis=0).astype(np.float32)


def audiomae_init(shapes: Shapes, seed: int, grid: tuple[int, int]) -> OrderedDict:
    """The authors' initial state dict (float32, order of `shapes`) of a MaskedAutoencoderViT
    (decoder_mode 0 or 1) after torch.manual_seed(seed); `grid` = their
    `patch_embed.patch_hw` (frequency patches, time patches)."""
    gen = TorchCPUGenerator(seed)
    state = OrderedDict((name, np.zeros(shape, np.float32)) for name, shape in shapes.items())
    layers = [name[: -len(".weight")] for name in shapes if name.endswith(".weight")]
    kinds = {prefix: {4: "conv", 2: "linear", 1: "layernorm"}[len(shapes[f"{prefix}.weight"])] for prefix in layers}
    for prefix in layers:  # 1. resets while the modules are constructed
        if kinds[prefix] == "layernorm":
            continue
        shape = shapes[f"{prefix}.weight"]
        state[f"{prefix}.weight"] = gen.kaiming_uniform(shape)
        if f"{prefix}.bias" in state:
            bound = 1 / math.sqrt(math.prod(shape[1:]))
            state[f"{prefix}.bias"] = gen.uniform(shapes[f"{prefix}.bias"], -bound, bound)
    for name in shapes:
        if name.endswith(".attn.tau"):  # Swin decoder temperature: ones
            state[name][:] = 1.0
    for name in ("pos_embed", "decoder_pos_embed"):  # 2. initialize_weights()
        state[name][0] = sincos_audiomae(shapes[name][-1], *grid)
    conv = shapes["patch_embed.proj.weight"]
    state["patch_embed.proj.weight"] = gen.xavier_uniform((conv[0], math.prod(conv[1:]))).reshape(conv)
    for name in AUDIOMAE_STORED:  # normal_(std=.02): draws replayed, values not
        gen.skip(math.prod(shapes[name]))
        state[name] = None
    for prefix in layers:  # self.apply(_init_weights), module order
        if kinds[prefix] == "linear":
            state[f"{prefix}.weight"] = gen.xavier_uniform(shapes[f"{prefix}.weight"])
            if f"{prefix}.bias" in state:
                state[f"{prefix}.bias"] = np.zeros(shapes[f"{prefix}.bias"], np.float32)
        elif kinds[prefix] == "layernorm":
            state[f"{prefix}.weight"] = np.ones(shapes[f"{prefix}.weight"], np.float32)
            state[f"{prefix}.bias"] = np.zeros(shapes[f"{prefix}.bias"], np.float32)
    return state


def perturb(init: dict[str, np.ndarray | None], shapes: Shapes, order: list[str], seed: int,
            scales: dict[str, float]) -> OrderedDict:
    """init[name] + float32(N(0, 1)) * float32(scales[name]) in float32, visiting `order` with
    one numpy default_rng(seed); a None init draws its noise and stays None."""
    rng = np.random.default_rng(seed)
    out = OrderedDict((name, None) for name in shapes)
    for name in order:
        delta = rng.standard_normal(shapes[name]).astype(np.float32) * np.float32(scales[name])
        if init.get(name) is not None:
            out[name] = init[name] + delta
    return out


def audiomae_state_dict(shapes: Shapes, init_seed: int, perturb_seed: int, scales: dict[str, float],
                        grid: tuple[int, int]) -> OrderedDict:
    """An Audio-MAE fixture's state dict (float32 arrays, order of `shapes`; None for
    AUDIOMAE_STORED); the perturbation visits the names sorted as strings."""
    return perturb(audiomae_init(shapes, init_seed, grid), shapes, sorted(shapes), perturb_seed, scales)


def _sincos_xla(dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, dim) [sin | cos], the release's get_1d_sincos_pos_embed_from_grid
    as XLA computes it in float32 (sin / cos rounded from float64: ~1% of them differ)."""
    n = dim // 2
    x = np.arange(n, dtype=np.float32) * np.float32(1.0 / n)  # x / n, rewritten by XLA
    omega = (10000.0 ** -x.astype(np.float64)).astype(np.float32)  # 1 / 10000^x
    angle = (pos.reshape(-1).astype(np.float32)[:, None] * omega[None, :]).astype(np.float64)
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1).astype(np.float32)


def flax_known_init(path: str, shape: tuple[int, ...], grid: tuple[int, int]) -> np.ndarray | None:
    """Initial value of a release parameter leaf that needs no jax.random: biases 0, LayerNorm
    scales 1, sin-cos `pos_embed` ((time, freq) grid, [sincos(f) | sincos(t)]) and
    `decoder_pos_embed` (1-D over the tokens), with a zero CLS row when the leaf has one more
    row than tokens; None for every other leaf (kernels, tokens, relative-position tables)."""
    leaf = path.rsplit("/", 1)[-1]
    if leaf == "bias":
        return np.zeros(shape, np.float32)
    if leaf == "scale":
        return np.ones(shape, np.float32)
    if path not in ("pos_embed", "decoder_pos_embed"):
        return None
    n_t, n_f = grid
    dim = shape[-1]
    if path == "pos_embed":
        f, t = np.meshgrid(np.arange(n_f, dtype=np.float32), np.arange(n_t, dtype=np.float32))
        table = np.concatenate([_sincos_xla(dim // 2, f), _sincos_xla(dim // 2, t)], axis=1)
    else:
        table = _sincos_xla(dim, np.arange(n_t * n_f, dtype=np.float32))
    if shape[1] == n_t * n_f + 1:
        table = np.concatenate([np.zeros((1, dim), np.float32), table])
    return table.reshape(shape)


def flax_params(shapes: Shapes, seed: int, scales: dict[str, float], grid: tuple[int, int]) -> OrderedDict:
    """A Flax fixture's perturbed parameter leaves by '/'-joined path (None where the initial
    value needs jax.random); the perturbation visits the paths sorted as tuples."""
    init = {path: flax_known_init(path, shape, grid) for path, shape in shapes.items()}
    return perturb(init, shapes, sorted(shapes, key=lambda p: p.split("/")), seed, scales)


def random_attention(seed: int, taus: list[float], batch: int, grid: tuple[int, int]) -> np.ndarray:
    """(batch, len(taus), n, n) float32 attention rows, n = grid[0]*grid[1] tokens t*grid[1] + f:
    softmax over keys of -(|dt| + 0.5 |df|) / tau_h + N(0, 1), float64, then float32."""
    n_t, n_f = grid
    token = np.arange(n_t * n_f)
    t, f = token // n_f, token % n_f
    dist = np.abs(t[:, None] - t[None, :]) + 0.5 * np.abs(f[:, None] - f[None, :])
    noise = np.random.default_rng(seed).standard_normal((batch, len(taus), len(token), len(token)))
    logits = np.stack([-dist / tau for tau in taus])[None] + noise
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return (weights / weights.sum(axis=-1, keepdims=True)).astype(np.float32)


def hear_from_tokens(tokens: np.ndarray, grid: tuple[int, int], steps: int) -> np.ndarray:
    """Audio-MAE HEAR timestamp embeddings of a one-chunk clip from its encoder tokens:
    (B, 1 + T*F, D), CLS first, token 1 + t*F + f -> (B, steps, F*D)."""
    n_t, n_f = grid
    return tokens[:, 1:].reshape(tokens.shape[0], n_t, n_f * tokens.shape[-1])[:, :steps]


def patchify(x: np.ndarray, patch: tuple[int, int]) -> np.ndarray:
    """MW-MAE patchify target: (B, T, F, C) -> (B, T/p * F/q, p*q*C), token t*(F/q) + f,
    pixels in (p, q, C) order."""
    (b, t, f, c), (p, q) = x.shape, patch
    return x.reshape(b, t // p, p, f // q, q, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, p * q * c)


def regenerate(entry: dict[str, Any], source: Callable[[str], np.ndarray]) -> np.ndarray:
    """The array of a manifest "derived" entry other than a checkpoint parameter; `source`
    returns another array of the same bundle by key."""
    recipe = entry["recipe"]
    if recipe == "random_attention":
        value = random_attention(entry["seed"], entry["taus"], entry["batch"], tuple(entry["grid"]))
    elif recipe == "hear_from_tokens":
        value = hear_from_tokens(source(entry["tokens"]), tuple(entry["grid"]), entry["steps"])
    elif recipe == "patchify":
        value = patchify(source(entry["input"]), tuple(entry["patch"]))
    elif recipe == "copy":  # another array of the bundle (with an "xor" entry: the bits that differ)
        value = source(entry["source"])
    else:
        raise ValueError(f"unknown golden recipe {recipe!r}")
    return np.ascontiguousarray(value)
