"""Convert the authors' JAX/Flax run directories into our checkpoint format.

A run directory holds `config.json` and `checkpoint_<step>` files (Flax legacy msgpack of
the whole train state). We decode it with plain `msgpack` + numpy, read only `params`
(optimizer state and buffers are skipped), map every leaf through an explicit name table,
assert every shape, and load the result strictly into our model. No JAX, no Flax.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .config import ENCODER_SIZES, MWMAEConfig, ModelConfig
from .files import sha256_file

CONVERTER_VERSION = "1"

_EXT_NDARRAY = 1  # flax.serialization: ndarray ext type
_EXT_NPSCALAR = 3  # flax.serialization: numpy scalar ext type


class ConversionError(ValueError):
    """The run directory or checkpoint cannot be converted; the message says why."""


# ----------------------------------------------------------------------------- reading
def _ext_hook(code: int, data: bytes) -> Any:
    import msgpack

    if code == _EXT_NDARRAY:
        shape, dtype, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
    if code == _EXT_NPSCALAR:
        dtype, buffer = msgpack.unpackb(data, raw=False)
        return np.frombuffer(buffer, dtype=np.dtype(dtype))[0]
    return msgpack.ExtType(code, data)


def read_flax_msgpack(path: Path) -> dict[str, Any]:
    """Decode a Flax legacy msgpack checkpoint into nested dicts of numpy arrays."""
    import msgpack

    data = Path(path).read_bytes()
    if not data:
        raise ConversionError(f"{path}: file is empty")
    try:
        state = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise ConversionError(
            f"{path}: not a readable Flax msgpack checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(state, dict):
        raise ConversionError(f"{path}: expected a serialized train state (a map), got {type(state).__name__}")
    return state


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    flat: dict[str, np.ndarray] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "/"))
        else:
            flat[name] = np.asarray(value)
    return flat


def find_checkpoint(run_dir: Path) -> Path:
    """Newest `checkpoint_<step>` (by step number) in a run directory."""
    found = []
    for p in Path(run_dir).iterdir():
        m = re.fullmatch(r"checkpoint_(\d+)", p.name)
        if m and p.is_file():
            found.append((int(m.group(1)), p))
    if not found:
        raise ConversionError(f"{run_dir}: no checkpoint_<step> file in this run directory")
    return max(found)[1]


# ----------------------------------------------------------------------------- config
_RELEASE_DEFAULTS: dict[str, Any] = {
    "img_size": (200, 80), "patch_size": (4, 16), "in_chans": 1, "decoder_embed_dim": 384,
    "decoder_depth": 4, "decoder_num_heads": 8, "window_sizes": 0, "decoder_window_sizes": 0,
    "shifting_windows": False, "mask_ratio": 0.8, "mlp_ratio": 4,
}
_WINDOW_ARGS = ("window_sizes", "decoder_window_sizes", "shifting_windows")


def config_from_release(release: dict[str, Any]) -> tuple[ModelConfig, dict[str, bool]]:
    """The release's config.json -> (ModelConfig, which attention naming each stack uses).

    The second value says whether encoder / decoder blocks are `MWMHABlock`s (parameter
    scope `wmha_block`) rather than plain `Block`s (`Attention_0`).
    """
    try:
        arch = release["model"]["arch"]
        args = dict(release["model"].get("model_args") or {})
    except (KeyError, TypeError) as exc:
        raise ConversionError("config.json has no model.arch / model.model_args") from exc
    mode = args.pop("mode", "mae")
    if mode != "mae":
        raise ConversionError(f"model_args.mode={mode!r}: only pre-trained (mode 'mae') checkpoints are supported")
    sizes = {f"mae_{name}": v for name, v in ENCODER_SIZES.items()}
    if arch in sizes:
        for key in ("embed_dim", "depth", "num_heads"):
            if key in args:
                raise ConversionError(f"arch {arch!r} fixes {key}; model_args must not set it")
        dim, depth, heads = sizes[arch]
        windowed = args.get("window_sizes", 0) != 0 or args.get("decoder_window_sizes", 0) != 0
        use_cls = not windowed
    elif arch in ("MWMAE", "MAE"):
        dim, depth, heads = args.pop("embed_dim", 768), args.pop("depth", 12), args.pop("num_heads", 12)
        use_cls = arch == "MAE" or bool(args.get("use_cls_token", False))
        if arch == "MAE" and any(k in args for k in _WINDOW_ARGS):
            raise ConversionError("arch 'MAE' takes no window arguments (the release raises TypeError)")
    else:
        known = sorted(sizes) + ["MAE", "MWMAE"]
        raise ConversionError(f"unknown model.arch {arch!r}; expected one of {known}")
    args.pop("use_cls_token", None)
    unknown = set(args) - set(_RELEASE_DEFAULTS)
    if unknown:
        raise ConversionError(f"unsupported model_args for conversion: {sorted(unknown)}")
    a = {**_RELEASE_DEFAULTS, **args}
    if a["mlp_ratio"] != 4:
        raise ConversionError(f"mlp_ratio {a['mlp_ratio']} unsupported (the release always uses 4)")
    try:
        cfg = ModelConfig(
            img_size=a["img_size"], patch_size=a["patch_size"], in_chans=a["in_chans"],
            embed_dim=dim, depth=depth, num_heads=heads,
            window_sizes=a["window_sizes"], decoder_embed_dim=a["decoder_embed_dim"],
            decoder_depth=a["decoder_depth"], decoder_num_heads=a["decoder_num_heads"],
            decoder_window_sizes=a["decoder_window_sizes"], shifting_windows=bool(a["shifting_windows"]),
            use_cls_token=use_cls, mask_ratio=a["mask_ratio"],
        )
    except ValueError as exc:
        raise ConversionError(f"invalid model configuration in config.json: {exc}") from exc
    naming = {"encoder": a["window_sizes"] != 0, "decoder": a["decoder_window_sizes"] != 0}
    return cfg, naming


# ----------------------------------------------------------------------------- name table
Transform = Callable[[np.ndarray], np.ndarray]
_same: Transform = lambda a: a  # noqa: E731
_dense: Transform = lambda a: a.T  # Flax Dense kernel (in, out) -> Linear.weight (out, in)  # noqa: E731
_conv: Transform = lambda a: a.transpose(3, 2, 0, 1)  # HWIO -> OIHW  # noqa: E731
_table: Transform = lambda a: a.reshape(-1)  # (2w-1, 1) -> (2w-1,)  # noqa: E731


def _block_table(flax: str, ours: str, windowed: bool, windows: tuple[int, ...]) -> list[tuple[str, str, Transform]]:
    rows = [
        (f"{flax}/LayerNorm_0/scale", f"{ours}.norm1.weight", _same),
        (f"{flax}/LayerNorm_0/bias", f"{ours}.norm1.bias", _same),
        (f"{flax}/LayerNorm_1/scale", f"{ours}.norm2.weight", _same),
        (f"{flax}/LayerNorm_1/bias", f"{ours}.norm2.bias", _same),
        (f"{flax}/Mlp_0/Dense_0/kernel", f"{ours}.mlp.fc1.weight", _dense),
        (f"{flax}/Mlp_0/Dense_0/bias", f"{ours}.mlp.fc1.bias", _same),
        (f"{flax}/Mlp_0/Dense_1/kernel", f"{ours}.mlp.fc2.weight", _dense),
        (f"{flax}/Mlp_0/Dense_1/bias", f"{ours}.mlp.fc2.bias", _same),
    ]
    attn = f"{flax}/wmha_block" if windowed else f"{flax}/Attention_0"
    qkv, proj = ("qkv", "proj") if windowed else ("Dense_0", "Dense_1")
    rows += [
        (f"{attn}/{qkv}/kernel", f"{ours}.attn.qkv.weight", _dense),
        (f"{attn}/{qkv}/bias", f"{ours}.attn.qkv.bias", _same),
        (f"{attn}/{proj}/kernel", f"{ours}.attn.proj.weight", _dense),
        (f"{attn}/{proj}/bias", f"{ours}.attn.proj.bias", _same),
    ]
    for h, w in enumerate(windows):
        if w:
            rows.append((f"{attn}/attn_heads_{h}/relative_position_bias_table",
                         f"{ours}.attn.relative_position_bias.{h}", _table))
    return rows


def parameter_table(cfg: ModelConfig, naming: dict[str, bool]) -> list[tuple[str, str, Transform]]:
    """Every (Flax param path, our state-dict key, transform) for this configuration."""
    rows: list[tuple[str, str, Transform]] = [
        ("patch_embed/proj/kernel", "encoder.patch_embed.proj.weight", _conv),
        ("patch_embed/proj/bias", "encoder.patch_embed.proj.bias", _same),
        ("pos_embed", "encoder.pos_embed", _same),
        ("encoder_norm/scale", "encoder.norm.weight", _same),
        ("encoder_norm/bias", "encoder.norm.bias", _same),
        ("decoder_embed/kernel", "decoder.embed.weight", _dense),
        ("decoder_embed/bias", "decoder.embed.bias", _same),
        ("mask_token", "decoder.mask_token", _same),
        ("decoder_pos_embed", "decoder.pos_embed", _same),
        ("decoder_norm/scale", "decoder.norm.weight", _same),
        ("decoder_norm/bias", "decoder.norm.bias", _same),
        ("decoder_pred/kernel", "decoder.pred.weight", _dense),
        ("decoder_pred/bias", "decoder.pred.bias", _same),
    ]
    if cfg.use_cls_token:
        rows.append(("cls_token", "encoder.cls_token", _same))
    for i in range(cfg.depth):
        rows += _block_table(f"encoder_block_{i:02d}", f"encoder.blocks.{i}", naming["encoder"], cfg.window_sizes)
    for i in range(cfg.decoder_depth):
        rows += _block_table(f"decoder_block_{i:02d}", f"decoder.blocks.{i}", naming["decoder"],
                             cfg.decoder_window_sizes)
    return rows


def convert_params(params: dict[str, np.ndarray], cfg: ModelConfig, naming: dict[str, bool]) -> dict[str, torch.Tensor]:
    """Flat Flax params -> our full state dict; every leaf used, every shape checked, strict load."""
    from .model import MWMAE

    with torch.device("meta"):
        expected = MWMAE(cfg).state_dict()
    table = parameter_table(cfg, naming)
    missing = [f for f, _, _ in table if f not in params]
    unused = sorted(set(params) - {f for f, _, _ in table})
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unused:
        problems.append(f"not expected by the config: {unused[:8]}{' ...' if len(unused) > 8 else ''}")
    state: dict[str, torch.Tensor] = {}
    for flax_key, key, transform in table:
        if flax_key not in params:
            continue
        value = np.ascontiguousarray(transform(params[flax_key]))
        if tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{flax_key}: shape {tuple(params[flax_key].shape)} gives {tuple(value.shape)}, "
                            f"config expects {tuple(expected[key].shape)} for {key}")
            continue
        state[key] = torch.from_numpy(value.astype(np.float32, copy=True))
    if problems:
        raise ConversionError("parameters do not match config.json:\n  " + "\n  ".join(problems))
    with torch.device("meta"):
        model = MWMAE(cfg)
    model.load_state_dict(state, strict=True, assign=True)  # raises on any key mismatch
    return state


# ----------------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class Converted:
    config: MWMAEConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any]


def convert_run_dir(run_dir: str | Path, checkpoint: str | Path | None = None,
                    config_path: str | Path | None = None) -> Converted:
    """Convert an authors' run directory (or a checkpoint file with `config_path`).

    `run_dir` may be the directory (config.json + newest checkpoint_<step>) or the
    checkpoint file itself, in which case `config_path` (default: config.json beside it)
    names the config.
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConversionError(f"{run_dir}: no such file or directory")
    if run_dir.is_file():
        ckpt_file = run_dir
        config_file = Path(config_path) if config_path else run_dir.parent / "config.json"
    else:
        ckpt_file = Path(checkpoint) if checkpoint else find_checkpoint(run_dir)
        config_file = Path(config_path) if config_path else run_dir / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file}: config.json not found (pass --config FILE)")
    if not ckpt_file.is_file():
        raise ConversionError(f"{ckpt_file}: checkpoint file not found")
    try:
        release = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise ConversionError(f"{config_file}: not valid JSON: {exc}") from exc
    cfg, naming = config_from_release(release)
    sr = (release.get("audio_config") or {}).get("sample_rate", 16000)
    if sr != 16000:
        raise ConversionError(f"audio_config.sample_rate={sr}: only 16 kHz models are supported")
    state = read_flax_msgpack(ckpt_file)
    if "params" not in state or not isinstance(state["params"], dict):
        raise ConversionError(f"{ckpt_file}: no 'params' tree in the checkpoint (keys: {sorted(state)[:10]})")
    step = state.get("step")
    converted = convert_params(flatten(state["params"]), cfg, naming)
    provenance = {
        "source": "mwmae-jax-official run directory",
        "source_file": ckpt_file.name,
        "source_sha256": sha256_file(ckpt_file),
        "source_config": release,
        "step": int(step) if step is not None else None,
        "converter_version": CONVERTER_VERSION,
    }
    return Converted(MWMAEConfig(model=cfg), converted, provenance)
