"""ONNX export of the encoder (both families), checked against torch with ONNX Runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")

import hear_mwmae  # noqa: E402
from hear_mwmae.checkpoint import Checkpoint, build_encoder  # noqa: E402
from hear_mwmae.onnx_export import OnnxEncoder, export_encoder, quantize_onnx, runtime_with_onnx  # noqa: E402


def spectrogram(b: int, shape: tuple[int, int], seed: int) -> torch.Tensor:
    return torch.randn(b, *shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(converted, tmp_path_factory):
    """name -> (torch encoder, config, fp32 .onnx path), exported once per module."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            c = converted(name)
            encoder = build_encoder(Checkpoint(c.config, c.state_dict))
            path = export_encoder(encoder, c.config, tmp_path_factory.mktemp("onnx") / f"{name}.onnx")
            cache[name] = (encoder, c.config, path)
        return cache[name]

    return get


@pytest.mark.parametrize("name", ["mwmae_tiny", "audiomae_tiny"])
def test_fp32_export_matches_torch_at_any_batch(exported, name):
    encoder, config, path = exported(name)
    onnx_encoder = OnnxEncoder(path, threads=1)
    assert onnx_encoder.config == config  # the file says which model (and so which frontend) it is
    assert onnx_encoder.precision == "fp32"
    shape = config.model.img_size  # (200, 80) MW-MAE, (1024, 128) Audio-MAE
    for b, seed in ((1, 0), (3, 1)):  # the batch axis is dynamic
        x = spectrogram(b, shape, seed)
        with torch.no_grad():
            ref = encoder.forward_features(x)
        got = onnx_encoder(x)
        assert got.shape == ref.shape == (b, config.model.grid_size[0], config.model.embedding_size)
        assert float((got - ref).abs().max()) <= 1e-4


def test_int8_export_is_quantised_and_close(exported, tmp_path):
    import onnx

    encoder, config, path = exported("mwmae_tiny")
    out = quantize_onnx(path, tmp_path / "int8.onnx")
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= ops and "ConvInteger" not in ops
    onnx_encoder = OnnxEncoder(out, threads=1)
    assert onnx_encoder.precision == "int8" and onnx_encoder.config == config
    x = spectrogram(2, config.model.img_size, 2)
    with torch.no_grad():
        ref = encoder.forward_features(x)
    got = onnx_encoder(x)
    cos = torch.nn.functional.cosine_similarity(got.double().flatten(0, 1), ref.double().flatten(0, 1), dim=-1)
    assert cos.min() > 0.995
    assert float((got - ref).abs().max()) > 1e-4  # really int8
    assert out.stat().st_size < 0.5 * path.stat().st_size


def test_runtime_through_onnx_gives_the_torch_embeddings(exported, tiny_checkpoint):
    _, config, path = exported("mwmae_tiny")
    torch_rt = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")
    onnx_rt = runtime_with_onnx(hear_mwmae.load_model(str(tiny_checkpoint), device="cpu"), path, threads=1)
    t = torch.arange(45000) / 16000
    audio = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (300.0, 1200.0)]).float()
    a, ta = hear_mwmae.get_timestamp_embeddings(audio, onnx_rt)
    b, tb = hear_mwmae.get_timestamp_embeddings(audio, torch_rt)
    assert torch.equal(ta, tb) and float((a - b).abs().max()) <= 1e-4
    other = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")
    with pytest.raises(ValueError, match="another model config"):
        runtime_with_onnx(other, exported("audiomae_tiny")[2])


def test_cli_export_onnx(tiny_checkpoint, tmp_path):
    from hear_mwmae.cli import main

    out = tmp_path / "sub" / "tiny.onnx"
    assert main(["export-onnx", str(tiny_checkpoint), str(out)]) == 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), (outp,) = session.get_inputs(), session.get_outputs()
    assert inp.name == "spectrogram" and inp.shape[1:] == [200, 80] and isinstance(inp.shape[0], str)
    assert outp.name == "embeddings"
    y = session.run(None, {"spectrogram": np.zeros((2, 200, 80), np.float32)})[0]
    assert y.shape == (2, 50, 960) and np.isfinite(y).all()


def test_a_torch_int8_encoder_is_not_exported(tiny_checkpoint, tmp_path):
    model = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", precision="int8")
    with pytest.raises(ValueError, match="float encoder"):
        export_encoder(model.encoder, model.config, tmp_path / "x.onnx")
