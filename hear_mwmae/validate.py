"""Types and ranges of every config value, checked when a config dataclass is made.

A config comes from files we do not control (our checkpoints, the MW-MAE authors'
`config.json`, the Audio-MAE `.pth` `args`, timm's `config.json`), and every size in it
decides how much memory a module or a frontend allocates. So each value is checked for its
type (an int field takes an int, never a float such as 3.7 nor a bool; a float field takes
a finite int or float; a bool field only a bool) and its range, before anything is built;
the error names the field. The bounds admit every released model with room to spare (ViT-H:
1280 wide, 32 blocks, 16 heads; Audio-MAE: 1024 x 128 inputs, 16 x 16 patches, 512 tokens)
and bound what a config alone can make us allocate (see docs/security.md).

Used by `config.py` (`__post_init__` of every config dataclass) and by the converters.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

# Upper bounds of the architecture (inclusive). Released models: width <= 1280, depth <= 32,
# heads <= 16, decoder depth <= 16, patch grid <= 64 x 8, inputs <= 1024 x 128.
MAX_WIDTH = 8192  # embed_dim, decoder_embed_dim
MAX_DEPTH = 128  # depth, decoder_depth
MAX_HEADS = 64  # num_heads, decoder_num_heads
MAX_MLP_RATIO = 16.0
MAX_INPUT_SIDE = 4096  # img_size (frames, mel bands), patch_size, decoder_window
MAX_TOKENS = 4096  # patches per chunk (the attention's sequence length)
MAX_IN_CHANS = 16
# Frontend bounds: the FFT length and the frame rate decide the memory per second of audio.
SAMPLE_RATES = (1000, 192000)
MAX_N_FFT = 8192
MAX_FRAMES_PER_SECOND = 1000  # hop_length >= 1 ms of audio
MAX_MELS = 512
MAX_STATISTIC = 1e6  # |mean|, std, std_scale of a normalisation
MAX_CLASSES = 100_000  # a classifier head's outputs (AudioSet: 527; ImageNet-21k: 21843)
MAX_LABEL = 200  # characters of a class name or id
MAX_REPR = 40  # characters of a value quoted in an error message


def brief(value: Any) -> str:
    """A value as an error message quotes it: its repr, cut to MAX_REPR characters."""
    text = repr(value)
    return text if len(text) <= MAX_REPR else text[:MAX_REPR - 3] + "..."


def names(keys: Iterable[Any], limit: int = 8) -> list[str]:
    """Up to `limit` of some names (keys read from a file), sorted, each cut to MAX_REPR characters."""
    shown = sorted(k if isinstance(k, str) else brief(k) for k in keys)[:limit]
    return [k if len(k) <= MAX_REPR else k[:MAX_REPR - 3] + "..." for k in shown]


def is_int(value: Any) -> bool:
    """An integer that is not a bool (numpy integers count)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def integer(value: Any, name: str, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi], else ValueError naming `name`."""
    if not is_int(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {brief(value)}")
    return int(value)


def real(value: Any, name: str, lo: float, hi: float, *, above_lo: bool = False) -> float:
    """`value` as a finite float in [lo, hi] (or (lo, hi] with `above_lo`), else ValueError."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"
          and math.isfinite(value) and (lo < value if above_lo else lo <= value) and value <= hi)
    if not ok:
        interval = f"{'(' if above_lo else '['}{lo:g}, {hi:g}]"
        raise ValueError(f"{name} must be a finite number in {interval}, got {brief(value)}")
    return float(value)


def boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {brief(value)}")
    return value


def choice(value: Any, name: str, allowed: Iterable[str]) -> str:
    allowed = list(allowed)
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {brief(value)}")
    return value


def int_sequence(value: Any, name: str, lo: int, hi: int, *, length: int | None = None,
                 max_length: int = MAX_HEADS) -> tuple[int, ...]:
    """A list or tuple of ints in [lo, hi] (exactly `length` of them, if given) -> tuple."""
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{name} must be a list of integers, got {brief(value)}")
    want = length if length is not None else max_length
    if (length is not None and len(value) != length) or len(value) > want:
        size = f"{length}" if length is not None else f"at most {max_length}"
        raise ValueError(f"{name} must hold {size} integers, got {len(value)}")
    return tuple(integer(v, f"{name}[{i}]", lo, hi) for i, v in enumerate(value))


def as_dict(value: Any, name: str) -> dict[str, Any]:
    """A mapping with string keys (a JSON object), else ValueError."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must be a mapping of names to values, got {type(value).__name__}")
    return value


# ----------------------------------------------------------------------------- the config dataclasses
_MODEL_INTS = {"in_chans": (1, MAX_IN_CHANS), "embed_dim": (1, MAX_WIDTH), "depth": (1, MAX_DEPTH),
               "num_heads": (1, MAX_HEADS), "decoder_embed_dim": (1, MAX_WIDTH), "decoder_depth": (0, MAX_DEPTH),
               "decoder_num_heads": (1, MAX_HEADS), "decoder_global_blocks": (0, MAX_DEPTH)}
_MODEL_BOOLS = ("shifting_windows", "use_cls_token", "norm_pix_loss", "mask_2d", "fixed_pos_embed", "final_norm")


def model_fields(cfg: Any) -> dict[str, Any]:
    """A `ModelConfig`'s values, type- and range-checked one by one -> normalised values
    (tuples for the pairs; window sizes are normalised by the config itself)."""
    out: dict[str, Any] = {name: integer(getattr(cfg, name), name, lo, hi) for name, (lo, hi) in _MODEL_INTS.items()}
    out.update({name: boolean(getattr(cfg, name), name) for name in _MODEL_BOOLS})
    for name in ("img_size", "patch_size", "decoder_window"):
        out[name] = int_sequence(getattr(cfg, name), name, 1, MAX_INPUT_SIDE, length=2)
    out["mlp_ratio"] = real(cfg.mlp_ratio, "mlp_ratio", 0.0, MAX_MLP_RATIO, above_lo=True)
    out["layer_norm_eps"] = real(cfg.layer_norm_eps, "layer_norm_eps", 0.0, 1.0, above_lo=True)
    for name in ("mask_ratio", "mask_t_prob", "mask_f_prob"):
        out[name] = real(getattr(cfg, name), name, 0.0, 1.0)
    for name in ("window_sizes", "decoder_window_sizes"):
        value = getattr(cfg, name)
        if not (is_int(value) or value is None or isinstance(value, (list, tuple))):
            raise ValueError(f"{name} must be 0, an integer or a list of integers, got {brief(value)}")
    for name in ("family", "gelu", "decoder_kind"):
        if not isinstance(getattr(cfg, name), str):
            raise ValueError(f"{name} must be a string, got {brief(getattr(cfg, name))}")
    return out


def model_consistency(cfg: Any) -> None:
    """What the checked values must satisfy together (grid, tokens, heads, windows)."""
    (h, w), (ph, pw) = cfg.img_size, cfg.patch_size
    if ph > h or pw > w or h % ph or w % pw:
        raise ValueError(f"patch_size {list(cfg.patch_size)} does not divide img_size {list(cfg.img_size)}")
    tokens = (h // ph) * (w // pw)
    if tokens > MAX_TOKENS:
        raise ValueError(f"img_size {list(cfg.img_size)} / patch_size {list(cfg.patch_size)} makes {tokens} patches "
                         f"per chunk; at most {MAX_TOKENS} are supported")
    for name in ("embed_dim", "decoder_embed_dim"):
        if getattr(cfg, name) % 4:  # sin-cos position embeddings: sin and cos of two axes, a quarter each
            raise ValueError(f"{name} must be a multiple of 4 (the sin-cos position embedding), "
                             f"got {getattr(cfg, name)}")
    if int(cfg.embed_dim * cfg.mlp_ratio) < 1 or int(cfg.decoder_embed_dim * cfg.mlp_ratio) < 1:
        raise ValueError(f"mlp_ratio {cfg.mlp_ratio} leaves an MLP without hidden units")
    sequence = tokens + int(cfg.use_cls_token)
    for name, windows in (("window_sizes", cfg.window_sizes), ("decoder_window_sizes", cfg.decoder_window_sizes)):
        for wsize in windows:
            if wsize and (wsize > sequence or sequence % wsize):
                raise ValueError(f"{name}: window {wsize} does not divide the {sequence} tokens of a chunk")


def frontend_fields(cfg: Any) -> dict[str, Any]:
    """A frontend config's values (log-mel or Kaldi fbank), checked -> normalised values."""
    out: dict[str, Any] = {"kind": choice(cfg.kind, "kind", ("logmel", "kaldi_fbank"))}
    out["sample_rate"] = sr = integer(cfg.sample_rate, "sample_rate", *SAMPLE_RATES)
    out["n_fft"] = n_fft = integer(cfg.n_fft, "n_fft", 2, MAX_N_FFT)
    out["win_length"] = integer(cfg.win_length, "win_length", 1, n_fft)
    out["hop_length"] = integer(cfg.hop_length, "hop_length", max(1, math.ceil(sr / MAX_FRAMES_PER_SECOND)), MAX_N_FFT)
    out["n_mels"] = integer(cfg.n_mels, "n_mels", 1, min(MAX_MELS, n_fft // 2))
    out["f_min"] = real(cfg.f_min, "f_min", 0.0, sr / 2)
    out["f_max"] = real(cfg.f_max, "f_max", 0.0, sr / 2)
    out["log_eps"] = real(cfg.log_eps, "log_eps", 0.0, 1.0, above_lo=True)
    if hasattr(cfg, "norm_eps"):
        out["norm_eps"] = real(cfg.norm_eps, "norm_eps", 0.0, 1.0, above_lo=True)
    if hasattr(cfg, "preemphasis"):
        out["preemphasis"] = real(cfg.preemphasis, "preemphasis", 0.0, 1.0)
        out["remove_clip_mean"] = boolean(cfg.remove_clip_mean, "remove_clip_mean")
        out["mean"] = real(cfg.mean, "mean", -MAX_STATISTIC, MAX_STATISTIC)
        out["std"] = real(cfg.std, "std", 0.0, MAX_STATISTIC, above_lo=True)
        out["std_scale"] = real(cfg.std_scale, "std_scale", 0.0, MAX_STATISTIC, above_lo=True)
    return out


def head_fields(cfg: Any) -> dict[str, Any]:
    """A classifier `HeadConfig`'s values, checked -> normalised values (tuples of names)."""
    out: dict[str, Any] = {"num_classes": integer(cfg.num_classes, "head num_classes", 1, MAX_CLASSES)}
    for name in ("labels", "label_ids"):
        value = getattr(cfg, name)
        if not isinstance(value, (list, tuple)) or len(value) > MAX_CLASSES:
            raise ValueError(f"head {name} must be a list of at most {MAX_CLASSES} strings, got {brief(value)}")
        if not all(isinstance(v, str) and len(v) <= MAX_LABEL for v in value):
            raise ValueError(f"head {name} must be strings of at most {MAX_LABEL} characters")
        out[name] = tuple(value)
    if not isinstance(cfg.label_source, str) or len(cfg.label_source) > MAX_LABEL:
        raise ValueError(f"head label_source must be a string of at most {MAX_LABEL} characters")
    out["multi_label"] = boolean(cfg.multi_label, "head multi_label")
    if not isinstance(cfg.pooling, str):
        raise ValueError(f"head pooling must be a string, got {brief(cfg.pooling)}")
    out["dropout"] = real(cfg.dropout, "head dropout", 0.0, 1.0)
    return out


def normalise(cfg: Any, values: dict[str, Any]) -> None:
    """Store checked values on a frozen dataclass (inside its `__post_init__`)."""
    for name, value in values.items():
        object.__setattr__(cfg, name, value)


__all__ = ["MAX_CLASSES", "MAX_DEPTH", "MAX_HEADS", "MAX_INPUT_SIDE", "MAX_MLP_RATIO", "MAX_N_FFT", "MAX_TOKENS",
           "MAX_WIDTH", "as_dict", "boolean", "brief", "choice", "frontend_fields", "head_fields", "int_sequence",
           "integer", "is_int", "model_consistency", "model_fields", "names", "normalise", "real"]
