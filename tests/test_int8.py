"""precision="int8": what is quantised, how faithful it is, that it is done once, and its errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import hear_mwmae
from hear_mwmae import quantize
from hear_mwmae.quantize import Int8Linear, Int8Unavailable, quantize_encoder

SR = 16000

try:
    quantize.pick_engine()
    NO_INT8 = ""
except Int8Unavailable as exc:  # e.g. an Arm machine: the error itself is tested below
    NO_INT8 = str(exc)
needs_int8 = pytest.mark.skipif(bool(NO_INT8), reason=NO_INT8)


def audio_batch(n: int, samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    tones = torch.stack([torch.sin(2 * math.pi * (220 + 170 * i) * t) for i in range(n)])
    return (0.3 * tones + 0.05 * torch.randn(n, samples, generator=g)).float()


def worst_step_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double().reshape(-1, a.shape[-1]), b.double().reshape(-1, b.shape[-1]),
                                     dim=-1).min())


@pytest.fixture(scope="module")
def int8_model(tiny_checkpoint):
    if NO_INT8:
        pytest.skip(NO_INT8)
    return hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", precision="int8")


@needs_int8
def test_exactly_the_blocks_linears_are_int8(int8_model):
    enc = int8_model.encoder
    for block in enc.blocks:
        for layer in (block.attn.qkv, block.attn.proj, block.mlp.fc1, block.mlp.fc2):
            assert isinstance(layer, Int8Linear)
        assert block.mlp.fc1.act == "gelu-tanh" and isinstance(block.mlp.act, torch.nn.Identity)  # GELU in fc1
        assert block.attn.proj.out_dtype == block.mlp.fc2.out_dtype == torch.float32  # the residual stream
    assert not any(isinstance(m, torch.nn.Linear) for m in enc.blocks.modules())
    assert isinstance(enc.patch_embed.proj, torch.nn.Conv2d) and enc.patch_embed.proj.weight.dtype == torch.float32
    assert isinstance(enc.norm, torch.nn.LayerNorm)


@needs_int8
def test_int8_embeddings_follow_fp32(int8_model, tiny_model):
    audio = audio_batch(3, 52000)
    e8, t8 = hear_mwmae.get_timestamp_embeddings(audio, int8_model)
    e32, t32 = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)
    assert e8.shape == e32.shape and e8.dtype == torch.float32 and torch.equal(t8, t32)
    assert worst_step_cosine(e8, e32) > 0.995
    assert 1e-6 < (e8 - e32).norm() / e32.norm() < 5e-2  # really quantised, and close
    scene = hear_mwmae.get_scene_embeddings(audio, int8_model)
    assert scene.shape == (3, int8_model.scene_embedding_size)
    torch.testing.assert_close(scene, e8.mean(1), rtol=0, atol=1e-5)


def batch_invariance(model, clips: int = 16) -> None:
    """A clip's int8 embedding alone equals, bit for bit, its embedding in a batch of `clips`:
    activation scales are per chunk and the integer products exact."""
    audio = audio_batch(clips, 20000, seed=3)  # one 200-frame chunk per MW-MAE clip
    batched = hear_mwmae.get_timestamp_embeddings(audio, model)[0]
    for i in (0, clips - 1):
        alone = hear_mwmae.get_timestamp_embeddings(audio[i:i + 1], model)[0]
        assert torch.equal(alone, batched[i:i + 1]), f"clip {i}: max diff {(alone - batched[i:i + 1]).abs().max()}"
    scene = hear_mwmae.get_scene_embeddings(audio[1:2], model)
    torch.testing.assert_close(scene, batched[1:2].mean(1), rtol=0, atol=1e-6)


@needs_int8
def test_a_clips_int8_embedding_does_not_depend_on_its_batch(int8_model):
    batch_invariance(int8_model)


@needs_int8
def test_audiomae_int8_follows_fp32_and_is_batch_invariant(converted):
    from hear_mwmae.checkpoint import Checkpoint, build_encoder
    from hear_mwmae.runtime import MWMAERuntime

    c = converted("audiomae_tiny")
    ckpt = Checkpoint(c.config, c.state_dict)
    ref = MWMAERuntime(build_encoder(ckpt), c.config, device="cpu")
    low = MWMAERuntime(build_encoder(ckpt), c.config, device="cpu", precision="int8")
    assert low.encoder.blocks[0].mlp.fc1.act == "gelu-erf"  # Audio-MAE's exact GELU
    audio = audio_batch(3, 24000, seed=5)
    e8, e32 = low.embed(audio)[0], ref.embed(audio)[0]
    assert worst_step_cosine(e8, e32) > 0.995 and (e8 - e32).norm() / e32.norm() > 1e-6
    assert torch.equal(low.embed(audio[1:2])[0], e8[1:2])


@needs_int8
def test_int8_tagging_does_not_depend_on_the_batch(converted):
    """A fine-tuned classifier in int8: a clip's logits (per chunk and pooled) alone equal, bit
    for bit, its logits in a batch of 16, and they follow fp32."""
    from hear_mwmae.checkpoint import Checkpoint, build_classifier, build_encoder
    from hear_mwmae.runtime import MWMAERuntime

    c = converted("audiomae_ft_tiny")
    ckpt = Checkpoint(c.config, c.state_dict)
    low = MWMAERuntime(build_encoder(ckpt), c.config, device="cpu", precision="int8",
                       classifier=build_classifier(ckpt))
    ref = MWMAERuntime(build_encoder(ckpt), c.config, device="cpu", classifier=build_classifier(ckpt))
    audio = audio_batch(16, 12000, seed=7)  # one 1024-frame chunk per clip
    batched, _ = low.logits(audio, per_chunk=True)
    for i in (0, 9, 15):
        alone, _ = low.logits(audio[i:i + 1], per_chunk=True)
        assert torch.equal(alone, batched[i:i + 1]), f"clip {i}: max diff {(alone - batched[i:i + 1]).abs().max()}"
    assert torch.equal(low.logits(audio[3:4])[0], batched[3:4].mean(1))
    fp32 = ref.logits(audio)[0]
    assert 0 < (batched.mean(1) - fp32).abs().max() < 5e-2 * fp32.abs().max()


@needs_int8
def test_windowed_encoder_quantises_too(converted):
    from hear_mwmae.checkpoint import Checkpoint, build_encoder
    from hear_mwmae.runtime import MWMAERuntime

    c = converted("mwmae_shift_tiny")  # per-head windows and shifts in the encoder
    ckpt = Checkpoint(c.config, c.state_dict)
    ref = MWMAERuntime(build_encoder(ckpt), c.config, device="cpu")
    low = MWMAERuntime(build_encoder(ckpt), c.config, device="cpu", precision="int8")
    audio = audio_batch(2, 36000)
    assert worst_step_cosine(low.embed(audio)[0], ref.embed(audio)[0]) > 0.995


@needs_int8
def test_weights_are_quantised_once_not_per_call(int8_model, monkeypatch):
    packed = [id(m._packed) for m in int8_model.encoder.modules() if isinstance(m, Int8Linear)]

    def forbidden(*args, **kwargs):
        raise AssertionError("weights quantised during a call")

    monkeypatch.setattr(torch, "quantize_per_channel", forbidden)
    monkeypatch.setattr(torch.ops.quantized, "linear_prepack", forbidden)
    monkeypatch.setattr(torch.ops.onednn, "qlinear_prepack", forbidden)
    hear_mwmae.get_timestamp_embeddings(audio_batch(1, 20000), int8_model)
    assert packed == [id(m._packed) for m in int8_model.encoder.modules() if isinstance(m, Int8Linear)]


def available_engines() -> list[str]:
    if NO_INT8:
        return []
    return [e for e in quantize.ENGINES if e in torch.backends.quantized.supported_engines
            and (e != "onednn" or quantize.pick_engine() == "onednn")]


@pytest.mark.parametrize("engine", available_engines())
def test_int8_linear_is_per_output_channel(engine):
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 8)
    with torch.no_grad():
        layer.weight[:4] *= 1000.0  # rows 4..7 are 1000x smaller: per-tensor scales would zero them
    x = torch.randn(32, 64)
    y = Int8Linear(layer, engine)(x)
    ref = layer(x).detach()
    small = (y[:, 4:] - ref[:, 4:]).norm() / ref[:, 4:].norm()
    assert small < 0.05
    assert (y - ref).norm() / ref.norm() < 0.02
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        Int8Linear(layer, engine)(x.double())


@pytest.mark.parametrize("engine", available_engines())
def test_int8_linear_scales_each_sample_alone(engine):
    """One input scale per sample (leading index): a sample's output is the same alone or beside
    a sample 100x louder, and the GELU of fc1 is applied as in float."""
    torch.manual_seed(1)
    layer = torch.nn.Linear(48, 96)
    x = torch.randn(3, 10, 48)
    x[1] *= 100.0
    for act, gelu in (("none", None), ("gelu-tanh", "tanh"), ("gelu-erf", "none")):
        q = Int8Linear(layer, engine, act)
        together = q(x)
        for i in range(3):
            assert torch.equal(q(x[i:i + 1]), together[i:i + 1])
        ref = layer(x).detach()
        ref = ref if gelu is None else F.gelu(ref, approximate=gelu)
        assert (together - ref).norm() / ref.norm() < 0.02
    assert Int8Linear(layer, engine, out_dtype=torch.bfloat16)(x).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="act must be"):
        Int8Linear(layer, engine, "relu")
    with pytest.raises(ValueError, match="engine must be"):
        Int8Linear(layer, "qnnpack")


def test_int8_on_a_gpu_device_is_a_clear_error(tiny_checkpoint):
    from hear_mwmae.checkpoint import build_encoder, load_checkpoint
    from hear_mwmae.runtime import MWMAERuntime

    ckpt = load_checkpoint(tiny_checkpoint)  # the runtime refuses before touching the (absent) GPU
    with pytest.raises(Int8Unavailable, match="CPU only"):
        MWMAERuntime(build_encoder(ckpt), ckpt.config, device="cuda", precision="int8")
    assert issubclass(Int8Unavailable, ValueError)  # `hear-mwmae embed` reports it as a bad option (exit 2)


def test_no_int8_kernels_is_a_clear_error(monkeypatch, tiny_model):
    monkeypatch.setattr(quantize.platform, "machine", lambda: "aarch64")
    with pytest.raises(Int8Unavailable, match="x86-64"):
        quantize.pick_engine()
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    monkeypatch.setattr(quantize.cpu_fused, "cpu_flags", lambda: frozenset())
    with pytest.raises(Int8Unavailable, match="no fast int8 kernels"):
        quantize.pick_engine()
    with pytest.raises(Int8Unavailable, match="CPU only"):
        quantize_encoder(_on_meta(tiny_model))


def _on_meta(runtime):
    """A stand-in encoder whose parameters live on another device."""
    enc = torch.nn.Module()
    enc.pos_embed = torch.nn.Parameter(torch.zeros(1, device="meta"))
    enc.blocks = runtime.encoder.blocks
    return enc


def test_engine_choice_follows_the_cpu(monkeypatch):
    from hear_mwmae import cpu_fused

    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS"):
        monkeypatch.delenv(var, raising=False)
    engines = set(torch.backends.quantized.supported_engines)
    monkeypatch.setattr(cpu_fused, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    if "fbgemm" in engines:
        assert quantize.pick_engine() == "fbgemm"  # no int8 dot products: FBGEMM with 7-bit inputs
        assert quantize.reduce_range_for("fbgemm")
    assert not cpu_fused.native_bf16()
    monkeypatch.setattr(cpu_fused, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni", "avx512_bf16", "amx_int8",
                                                                   "amx_bf16"}))
    if "onednn" in engines:
        assert quantize.pick_engine() == "onednn"  # AMX
        assert cpu_fused.native_bf16()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")  # VNNI and bf16, no AMX: still oneDNN
        assert quantize.pick_engine() == "onednn" and cpu_fused.native_bf16()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_VNNI")  # VNNI without bf16 units
        assert quantize.pick_engine() == "onednn" and not cpu_fused.native_bf16()
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped below VNNI: its int8 would saturate
        assert quantize.pick_engine() == "fbgemm"
        monkeypatch.setattr(cpu_fused, "cpu_flags", lambda: frozenset({"avx2", "avx_vnni"}))  # AVX-VNNI (Alder Lake)
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2_VNNI")
        assert quantize.pick_engine() == "onednn"
    monkeypatch.setattr(cpu_fused, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni"}))
    monkeypatch.delenv("FBGEMM_ENABLE_INSTRUCTIONS", raising=False)
    assert not quantize.reduce_range_for("fbgemm") and not quantize.reduce_range_for("onednn")
    monkeypatch.setenv("FBGEMM_ENABLE_INSTRUCTIONS", "AVX2")  # FBGEMM's pre-VNNI kernels forced
    assert quantize.reduce_range_for("fbgemm")


FORCED = """
import math, sys, torch, hear_mwmae
from hear_mwmae import cpu_fused, quantize
sys.path.insert(0, {tests!r})
from test_int8 import audio_batch, batch_invariance, worst_step_cosine
torch.set_num_threads(1)
int8 = hear_mwmae.load_model({ckpt!r}, device="cpu", precision="int8")
ref = hear_mwmae.load_model({ckpt!r}, device="cpu")
qkv = int8.encoder.blocks[0].attn.qkv
assert (qkv.engine, str(qkv.out_dtype), qkv.reduce_range) == {expect!r}, (qkv.engine, qkv.out_dtype, qkv.reduce_range)
audio = audio_batch(2, 36000)
cos = worst_step_cosine(hear_mwmae.get_timestamp_embeddings(audio, int8)[0],
                        hear_mwmae.get_timestamp_embeddings(audio, ref)[0])
assert cos > 0.995, cos
batch_invariance(int8, clips=4)
bf16 = hear_mwmae.load_model({ckpt!r}, device="cpu", precision="bf16")
e = hear_mwmae.get_timestamp_embeddings(audio, bf16)[0]
assert worst_step_cosine(e, hear_mwmae.get_timestamp_embeddings(audio, ref)[0]) > 0.995
print("ok", qkv.engine, cos)
"""


@pytest.mark.parametrize("isa,expect", [
    # an AVX2-only CPU: oneDNN and torch's own kernels capped at AVX2, so FBGEMM with 7-bit inputs
    ({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2"},
     ("fbgemm", "torch.float32", True)),
    # AVX-512 VNNI without bf16 units (Cascade Lake / Ice Lake): oneDNN int8, float32 attention
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}, ("onednn", "torch.float32", False)),
    # AVX-512 VNNI and BF16 without AMX (Zen 4 / Cooper Lake): oneDNN int8, bfloat16 attention
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, ("onednn", "torch.bfloat16", False)),
    # AMX (Sapphire Rapids and later): oneDNN's AMX int8 / bf16 kernels, capped at nothing lower
    ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, ("onednn", "torch.bfloat16", False)),
], ids=["avx2", "avx512-vnni", "avx512-bf16", "amx"])
def test_forced_older_cpu_kinds(tiny_checkpoint, isa, expect):
    """The int8 (and bf16) paths of older CPU kinds, forced on this one: right engine, close to
    fp32, batch-invariant. Needs a CPU that has the capped instruction sets (or more)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hear_mwmae.cpu_fused import cpu_flags

    if NO_INT8 or not {"avx2", "avx512_vnni"} <= cpu_flags():
        pytest.skip("needs an x86-64 CPU with AVX-512 VNNI to force the older kinds")
    if "BF16" in isa["ONEDNN_MAX_CPU_ISA"] and "avx512_bf16" not in cpu_flags():
        pytest.skip("needs AVX-512-BF16")
    if "AMX" in isa["ONEDNN_MAX_CPU_ISA"] and "amx_int8" not in cpu_flags():
        pytest.skip("needs AMX-INT8 / AMX-BF16")
    code = FORCED.format(tests=str(Path(__file__).parent), ckpt=str(tiny_checkpoint), expect=expect)
    env = {**os.environ, **isa, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]),
                                                                os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("ok " + expect[0])


def test_cli_offers_int8():
    from hear_mwmae.cli import build_parser
    from hear_mwmae.runtime import PRECISIONS

    assert "int8" in PRECISIONS
    args = build_parser().parse_args(["embed", "x.wav", "--model", "m.pt", "--out", "o", "--precision", "int8"])
    assert args.precision == "int8"


@pytest.mark.parametrize("options,error,match", [
    ({"max_chunks_per_batch": "16"}, TypeError, "max_chunks_per_batch must be an int"),
    ({"max_chunks_per_batch": True}, TypeError, "max_chunks_per_batch must be an int"),
    ({"max_chunks_per_batch": 0}, ValueError, ">= 1"),
    ({"device": 0}, TypeError, "device must be a str"),
    ({"device": "gpu"}, ValueError, "not a device name"),
    ({"precision": "int4"}, ValueError, "one of"),
    ({"precision": 8}, TypeError, "precision must be a str"),
    ({"sha256": "abc"}, ValueError, "64 hex digits"),
    ({"sha256": 123}, TypeError, "sha256 must be a str"),
    ({"compile": "yes"}, TypeError, "compile must be True or False"),
    ({"threads": 2}, TypeError, "unknown load_model options"),
])
def test_bad_options_are_rejected_before_loading(tmp_path, options, error, match):
    missing = tmp_path / "does-not-exist.pt"  # the option check comes first: no FileNotFoundError
    with pytest.raises(error, match=match):
        hear_mwmae.load_model(str(missing), **options)


def test_good_options_pass_the_check():
    from hear_mwmae.runtime import check_load_options

    good = {"device": torch.device("cpu"), "precision": "int8", "max_chunks_per_batch": 4, "sha256": "a" * 64,
            "compile": False}
    assert check_load_options(good) == good
