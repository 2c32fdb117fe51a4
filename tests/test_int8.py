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


@needs_int8
def test_int8_batch_and_single_agree_closely(int8_model):
    audio = audio_batch(4, 40000)
    batched = hear_mwmae.get_timestamp_embeddings(audio, int8_model)[0]
    single = hear_mwmae.get_timestamp_embeddings(audio[2:3], int8_model)[0]
    # the input scale is per micro-batch, so not bit-equal, but far inside the fidelity target
    assert worst_step_cosine(single, batched[2:3]) > 0.999


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
    hear_mwmae.get_timestamp_embeddings(audio_batch(1, 20000), int8_model)
    assert packed == [id(m._packed) for m in int8_model.encoder.modules() if isinstance(m, Int8Linear)]


@needs_int8
def test_int8_linear_is_per_output_channel():
    torch.manual_seed(0)
    layer = torch.nn.Linear(64, 8)
    with torch.no_grad():
        layer.weight[:4] *= 1000.0  # rows 4..7 are 1000x smaller: per-tensor scales would zero them
    x = torch.randn(32, 64)
    y = Int8Linear(layer, quantize.pick_engine(), False)(x)
    ref = layer(x).detach()
    small = (y[:, 4:] - ref[:, 4:]).norm() / ref[:, 4:].norm()
    assert small < 0.05
    assert (y - ref).norm() / ref.norm() < 0.02
    with pytest.raises(TypeError, match="float32"):
        Int8Linear(layer, quantize.pick_engine(), False)(x.double())


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
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset())
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
    monkeypatch.setattr(quantize.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    engines = set(torch.backends.quantized.supported_engines)
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    if "fbgemm" in engines:
        assert quantize.pick_engine() == "fbgemm"
        assert quantize.reduce_range_for("fbgemm")  # AVX2 without VNNI: 7-bit inputs
    monkeypatch.setattr(quantize, "cpu_flags", lambda: frozenset({"avx2", "avx512_vnni", "amx_int8"}))
    for var in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    if "onednn" in engines:
        assert quantize.pick_engine() == "onednn"
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # oneDNN capped below AMX: its int8 would saturate
        assert quantize.pick_engine() == "fbgemm"
    assert not quantize.reduce_range_for("fbgemm") and not quantize.reduce_range_for("onednn")


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
