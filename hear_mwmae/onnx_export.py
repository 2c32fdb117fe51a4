"""ONNX export of the encoder, and running it with ONNX Runtime.

    hear-mwmae export-onnx CKPT OUT.onnx [--int8] [--opset 20]

The graph is `Encoder.forward_features`: input `spectrogram` (batch, T, F) float32, the
normalised chunk the runtime's frontend produces ((batch, 200, 80) log-mel for MW-MAE,
(batch, 1024, 128) fbank for Audio-MAE); output `embeddings` (batch, grid_t, grid_f * D)
float32, one row per time step (frequency patches concatenated). The batch axis is
dynamic. The frontend (STFT, mel / fbank, per-clip normalisation, chunk padding) and the
stitching of chunks into timestamps stay in torch: `OnnxEncoder` stands in for the
encoder of an `MWMAERuntime`, see `runtime_with_onnx`. The model's config is stored in the
file's metadata (`hear_mwmae_config`, JSON), so the file says which frontend it needs.

`--int8`: the exported graph is then quantised by ONNX Runtime's dynamic quantisation:
the weights of the linear layers' MatMuls int8 per output channel, their inputs uint8
per call (`DynamicQuantizeLinear`); attention's activation-by-activation MatMuls, the patch
embedding, LayerNorm, GELU and softmax stay float32 (as `precision="int8"` does in torch).

Needs the optional extra `pip install hear-mwmae[onnx]` (onnx, onnxscript, onnxruntime).
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import MWMAEConfig

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "spectrogram", "embeddings"
DEFAULT_OPSET = 20
EXTERNAL_DATA_BYTES = 1_500_000_000  # larger weights go to a side file (protobuf's 2 GB limit)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"ONNX export needs {module!r}: pip install 'hear-mwmae[onnx]'") from exc


class _Features(nn.Module):
    """The encoder's forward_features as a module's forward (what gets exported)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, spectrogram: torch.Tensor) -> torch.Tensor:
        return self.encoder.forward_features(spectrogram)


def export_encoder(encoder: nn.Module, config: MWMAEConfig, out: str | Path, *, int8: bool = False,
                   opset: int = DEFAULT_OPSET) -> Path:
    """Write the float32 CPU `encoder` of `config` as ONNX to `out` (int8-quantised with `int8`)."""
    _require("onnx")
    _require("onnxscript")
    from .quantize import Int8Linear

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    encoder = encoder.to("cpu", torch.float32).eval()
    if any(isinstance(m, Int8Linear) for m in encoder.modules()):
        raise ValueError("export the float encoder (not one quantised for torch); int8=True quantises the graph")
    t, f = config.model.img_size
    example = torch.zeros(2, t, f).normal_(generator=torch.Generator().manual_seed(0))
    big = sum(p.numel() * p.element_size() for p in encoder.parameters()) > EXTERNAL_DATA_BYTES
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx" if int8 else out
        with torch.no_grad():
            torch.onnx.export(_Features(encoder).eval(), (example,), str(fp32), dynamo=True, external_data=big,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                              dynamic_shapes=({0: torch.export.Dim("batch")},))
        _set_metadata(fp32, {"hear_mwmae_config": json.dumps(config.to_dict()), "hear_mwmae_precision": "fp32",
                             "hear_mwmae_input": f"normalised {config.frontend.kind} chunk (batch, {t}, {f}) float32"})
        if int8:
            quantize_onnx(fp32, out)
    log.info("exported %s (%s) in %.1f s: %.1f MB", out, "int8" if int8 else "fp32", time.perf_counter() - start,
             out.stat().st_size / 1e6)
    return out


def quantize_onnx(src: str | Path, out: str | Path) -> Path:
    """ONNX Runtime's dynamic int8 quantisation of an exported fp32 encoder `src` into `out`:
    MatMuls with weights only (int8 per output channel; inputs uint8 per call), metadata kept."""
    onnx = _require("onnx")
    quantization = _require("onnxruntime.quantization")
    src, out = Path(src), Path(out)
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    big = src.stat().st_size > EXTERNAL_DATA_BYTES or any(src.parent.glob(src.name + ".data"))
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs a line per skipped tensor at INFO
    try:
        quantization.quantize_dynamic(str(src), str(out), weight_type=quantization.QuantType.QInt8, per_channel=True,
                                      op_types_to_quantize=["MatMul"], use_external_data_format=big)
    finally:
        root.setLevel(level)
    _set_metadata(out, {**meta, "hear_mwmae_precision": "int8"})
    return out


def _set_metadata(path: Path, values: dict[str, str]) -> None:
    onnx = _require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    del model.metadata_props[:]
    for key, value in values.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))


def export_onnx(checkpoint: str | Path, out: str | Path, *, int8: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Export a checkpoint's encoder (anything `sources.load_checkpoint` reads) to `out`."""
    from .checkpoint import build_encoder
    from .sources import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    return export_encoder(build_encoder(ckpt), ckpt.config, out, int8=int8, opset=opset)


class OnnxEncoder:
    """An exported encoder in an ONNX Runtime CPU session, called like `forward_features`.

    `spectrogram` (B, T, F) float32 tensor -> (B, grid_t, grid_f * D) float32 tensor.
    `threads`: intra-op threads (0 = ONNX Runtime's default, all cores).
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config = MWMAEConfig.from_dict(json.loads(meta["hear_mwmae_config"])) if "hear_mwmae_config" in meta \
            else None
        self.precision = meta.get("hear_mwmae_precision", "fp32")

    def __call__(self, spectrogram: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(spectrogram.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0])


def runtime_with_onnx(runtime: nn.Module, path: str | Path, threads: int = 0) -> nn.Module:
    """Make a CPU `MWMAERuntime` run its encoder passes through the ONNX file at `path`
    (frontend, chunking and timestamps stay in torch). Returns `runtime`."""
    encoder = OnnxEncoder(path, threads)
    if encoder.config is not None and encoder.config.model != runtime.config.model:
        raise ValueError(f"{path} was exported from another model config than this runtime's")
    if runtime.device.type != "cpu":
        raise ValueError("ONNX Runtime runs on the CPU here; load the runtime with device='cpu'")
    runtime._features = encoder  # the callable the runtime runs each micro-batch of chunks through
    runtime.onnx_path = str(path)
    return runtime


# ----------------------------------------------------------------------------- command line
def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `export-onnx` subcommand to a CLI's subparsers."""
    p = subparsers.add_parser("export-onnx", help="export a checkpoint's encoder to ONNX (optionally int8)",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="our .pt / .safetensors, a released model's name, or an authors' checkpoint")
    p.add_argument("out", type=Path, help="output .onnx file")
    p.add_argument("--int8", action="store_true", help="dynamically quantise the linear layers' MatMuls to int8")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    try:
        export_onnx(args.checkpoint, args.out, int8=args.int8, opset=args.opset)
    except ImportError as exc:
        log.error("%s", exc)
        return 2
    return 0


__all__ = ["OnnxEncoder", "export_encoder", "export_onnx", "quantize_onnx", "register", "runtime_with_onnx"]
