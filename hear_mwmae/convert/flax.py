"""Convert the MW-MAE authors' JAX/Flax run directories into our checkpoint format.

A run directory holds `config.json` and `checkpoint_<step>` entries: legacy Flax msgpack
files, or orbax checkpoint directories (flax 0.7.x's default; see `flax_files.py` for both
layouts). We decode only `params` and `step` with plain `msgpack` + numpy (the optimizer
state is skipped undecoded), turn every parameter into float32 (bfloat16 / float16 exactly,
recording the stored dtypes in the provenance), map every leaf through an explicit name
table, assert every shape, and load the result strictly into our model. No JAX, no Flax.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import ENCODER_SIZES, MWMAEConfig, ModelConfig
from ..state_checks import WeightsError, check_finite
from ..validate import brief, is_int, names
from .common import CONVERTER_VERSION, ConversionError, Converted, read_json_config
from .flax_files import (FLAX_GDA_PLACEHOLDER, FLOAT_DTYPES, ORBAX_AGGREGATE_FILE, ORBAX_PLACEHOLDERS, RawArray,
                         find_checkpoint, is_orbax_dir, join_chunks, leaves, materialize, orbax_aggregate_file,
                         read_tree, resave_hint)


# ----------------------------------------------------------------------------- reading
def read_flax_msgpack(path: str | Path) -> dict[str, Any]:
    """Decode a whole Flax msgpack file (legacy checkpoint or orbax aggregate file) into nested
    dicts of numpy arrays (bfloat16 as float32). The converter itself decodes only `params`."""
    return materialize(read_tree(path)[0])


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {'a/b/c': array}."""
    return {k: np.asarray(materialize(v)) for k, v in leaves(tree, prefix).items()}


def float32_params(params: dict[str, Any], where: Path) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The `params` tree -> ({'a/b': float32 array}, {stored dtype: [paths]} for non-float32 leaves).

    bfloat16 and float16 widen to float32 exactly; float64 is rounded to float32. Arrays that
    orbax or flax stored outside this file are refused with how to re-save them.
    """
    flat: dict[str, np.ndarray] = {}
    dtypes: dict[str, list[str]] = {}
    for name, leaf in leaves(params).items():
        if isinstance(leaf, str) and leaf.startswith(ORBAX_PLACEHOLDERS):
            raise ConversionError(resave_hint(where.parent if where.name == ORBAX_AGGREGATE_FILE else where))
        if isinstance(leaf, str) and leaf.startswith(FLAX_GDA_PLACEHOLDER):
            raise ConversionError(f"{where}: params/{name} was saved as a multi-process array in "
                                  f"{where.name}_gda/ (tensorstore), which this converter cannot read; save the "
                                  "train state from one host (jax.device_get) and convert that")
        if not isinstance(leaf, (dict, RawArray)):
            raise ConversionError(f"{where}: params/{name} is not an array ({type(leaf).__name__})")
        try:
            array, dtype = join_chunks(leaf) if isinstance(leaf, dict) else (leaf.decode(), leaf.dtype)
        except ConversionError as exc:  # (a dict leaf is an array chunked because it is over 1 GiB)
            raise ConversionError(f"{where}: params/{name}: {exc}") from exc
        if dtype not in FLOAT_DTYPES:
            raise ConversionError(f"{where}: params/{name} has dtype {dtype}; parameters must be floating point")
        if dtype != "float32":
            dtypes.setdefault(dtype, []).append(name)
        flat[name] = array.astype(np.float32, copy=False)
    return flat, {dtype: sorted(names) for dtype, names in sorted(dtypes.items())}


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
    model = release.get("model") if isinstance(release, dict) else None
    arch = model.get("arch") if isinstance(model, dict) else None
    args = model.get("model_args") or {} if isinstance(model, dict) else None
    if not isinstance(arch, str) or not isinstance(args, dict) or not all(isinstance(k, str) for k in args):
        raise ConversionError("config.json has no model.arch (a name) / model.model_args (a mapping)")
    args = dict(args)
    mode = args.pop("mode", "mae")
    if mode != "mae":
        raise ConversionError(f"model_args.mode={brief(mode)}: only pre-trained (mode 'mae') checkpoints are supported")
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
        use_cls = arch == "MAE" or args.get("use_cls_token", False)
        if arch == "MAE" and any(k in args for k in _WINDOW_ARGS):
            raise ConversionError("arch 'MAE' takes no window arguments (the release raises TypeError)")
    else:
        known = sorted(sizes) + ["MAE", "MWMAE"]
        raise ConversionError(f"unknown model.arch {brief(arch)}; expected one of {known}")
    args.pop("use_cls_token", None)
    unknown = set(args) - set(_RELEASE_DEFAULTS)
    if unknown:
        raise ConversionError(f"unsupported model_args for conversion: {names(unknown)}")
    a = {**_RELEASE_DEFAULTS, **args}
    if not is_int(a["mlp_ratio"]) and not isinstance(a["mlp_ratio"], float) or a["mlp_ratio"] != 4:
        raise ConversionError(f"mlp_ratio {brief(a['mlp_ratio'])} unsupported (the release always uses 4)")
    try:
        cfg = ModelConfig(
            img_size=a["img_size"], patch_size=a["patch_size"], in_chans=a["in_chans"],
            embed_dim=dim, depth=depth, num_heads=heads,
            window_sizes=a["window_sizes"], decoder_embed_dim=a["decoder_embed_dim"],
            decoder_depth=a["decoder_depth"], decoder_num_heads=a["decoder_num_heads"],
            decoder_window_sizes=a["decoder_window_sizes"], shifting_windows=a["shifting_windows"],
            use_cls_token=use_cls, mask_ratio=a["mask_ratio"],
        )
    except (TypeError, ValueError) as exc:
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
    from ..model import MWMAE

    with torch.device("meta"):
        expected = MWMAE(cfg).state_dict()
    table = parameter_table(cfg, naming)
    missing = [f for f, _, _ in table if f not in params]
    unused = sorted(set(params) - {f for f, _, _ in table})
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unused:
        problems.append(f"not expected by the config: {[brief(u) for u in unused[:8]]}"
                        f"{' ...' if len(unused) > 8 else ''}")
    state: dict[str, torch.Tensor] = {}
    for flax_key, key, transform in table:
        if flax_key not in params:
            continue
        try:
            value = transform(params[flax_key])
        except ValueError:  # a kernel with the wrong number of dimensions
            value = params[flax_key]
        if tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{flax_key}: shape {tuple(params[flax_key].shape)} gives {tuple(value.shape)}, "
                            f"config expects {tuple(expected[key].shape)} for {key}")
            continue
        state[key] = torch.from_numpy(np.array(value, dtype=np.float32, order="C"))  # one copy, writable
    if problems:
        raise ConversionError("parameters do not match config.json:\n  " + "\n  ".join(problems))
    try:
        check_finite(state)
    except WeightsError as exc:
        raise ConversionError(f"the checkpoint's parameters: {exc}") from exc
    with torch.device("meta"):
        model = MWMAE(cfg)
    model.load_state_dict(state, strict=True, assign=True)  # raises on any key mismatch
    return state


# ----------------------------------------------------------------------------- entry point
def _default_config(ckpt: Path) -> Path:
    """config.json beside a checkpoint file or directory (beside its directory for orbax's
    aggregate file `checkpoint_<step>/checkpoint`)."""
    beside = ckpt.parent / "config.json"
    if not beside.is_file() and ckpt.name == ORBAX_AGGREGATE_FILE and (ckpt.parent.parent / "config.json").is_file():
        return ckpt.parent.parent / "config.json"
    return beside


def convert_run_dir(run_dir: str | Path, checkpoint: str | Path | None = None,
                    config_path: str | Path | None = None) -> Converted:
    """Convert an authors' run directory, or one checkpoint in it.

    `run_dir` may be the run directory (config.json + the newest `checkpoint_<step>`, a file or
    an orbax directory), or a checkpoint itself (file or orbax directory), in which case
    `config_path` (default: config.json beside it) names the config. `checkpoint` picks one
    inside the run directory (a path, or a name in the run directory).
    """
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise ConversionError(f"{run_dir}: no such file or directory")
    if run_dir.is_file() or is_orbax_dir(run_dir):
        ckpt = run_dir
        config_file = Path(config_path) if config_path else _default_config(ckpt)
    else:
        ckpt = Path(checkpoint) if checkpoint else find_checkpoint(run_dir)
        if checkpoint and not ckpt.exists() and (run_dir / ckpt).exists():
            ckpt = run_dir / ckpt
        config_file = Path(config_path) if config_path else run_dir / "config.json"
    if not config_file.is_file():
        raise ConversionError(f"{config_file}: config.json not found (pass --config FILE)")
    if not ckpt.exists():
        raise ConversionError(f"{ckpt}: checkpoint file not found")
    release = read_json_config(config_file)
    cfg, naming = config_from_release(release)
    audio = release.get("audio_config") or {}
    sr = audio.get("sample_rate", 16000) if isinstance(audio, dict) else None
    if not is_int(sr) or sr != 16000:
        raise ConversionError(f"audio_config.sample_rate={sr}: only 16 kHz models are supported")
    data_file = orbax_aggregate_file(ckpt) if ckpt.is_dir() else ckpt
    state, sha256 = read_tree(data_file, only=("params", "step"))
    if not isinstance(state.get("params"), dict):
        raise ConversionError(f"{data_file}: no 'params' tree in the checkpoint "
                              f"(keys: {names(state)})")
    params, source_dtypes = float32_params(state["params"], data_file)
    step = state.get("step")
    step = int(step.decode().item()) if isinstance(step, RawArray) else step if isinstance(step, int) else None
    converted = convert_params(params, cfg, naming)
    provenance = {
        "source": "mwmae-jax-official run directory",
        "layout": "orbax" if ckpt.is_dir() else "flax-msgpack",  # an orbax checkpoint_<step>/, or one file
        "source_file": str(data_file.relative_to(ckpt.parent)),
        "source_sha256": sha256,
        "source_config": release,
        "source_dtypes": source_dtypes,  # parameters stored other than float32 (converted to float32)
        "step": step,
        "converter_version": CONVERTER_VERSION,
        "license": "Apache-2.0",  # the MW-MAE release's (code and weights)
    }
    return Converted(MWMAEConfig(model=cfg), converted, provenance)
