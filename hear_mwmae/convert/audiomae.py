"""Convert Audio-MAE checkpoints (facebookresearch/AudioMAE and its timm / Hub copies).

Three layouts (spec section 10), all converted to our state dict by renaming:

(a) pre-training `checkpoint-<epoch>.pth` / `pretrained.pth`: a dict with `model` (encoder
    + decoder) and optionally `optimizer`, `scaler`, `epoch`, `args` (a pickled
    `argparse.Namespace`); a dict holding only `model` is accepted;
(b) fine-tuned (same container): `fc_norm` + `head` and no final `norm`. HEAR uses the
    last block's tokens un-normed (`final_norm=False`); `fc_norm` / `head` become our
    classifier (`classifier.fc_norm.*`, `classifier.head.*`, config `head`: mean pooling of
    the patch tokens, the authors' `global_pool`);
(c) timm / Hugging Face Hub: a directory with `config.json` (`architecture`,
    `num_classes`, `global_pool`, `model_args`, `pretrained_cfg.input_size`, optionally
    `label_names`) and `model.safetensors` or `pytorch_model.bin` (a plain dict of
    tensors): the encoder, and the classifier when `num_classes` > 0.

A head's class names: `label_names` of a timm config when present, else AudioSet's 527
classes (`hear_mwmae.labels.audioset()`, the authors' head order) for a 527-output head,
else `class_i` with a warning (`labels=` / `--labels FILE.csv` names them). A head is
multi-label (sigmoid) unless the authors' `args.dataset` names a single-label task
(esc50, speechcommands).

Files are read with `torch.load(weights_only=True)` allowing exactly one extra class,
`argparse.Namespace`; a file holding any other pickled object is refused without running
it. Dimensions come from the shapes. Attention heads do not: they come from a
`num_heads` override, else the factory / architecture name (`args.model`,
`architecture`: small / base / large ...), else the constructor arguments the file's
`args` / `model_args` carry (`num_heads`, `decoder_num_heads`), else (a bare `model`
dict) the authors' factory whose width and depth the weights match; otherwise conversion
fails and says to pass `--num-heads`. The Swin decoder's heads are in its shapes (`tau`).
"""

from __future__ import annotations

import argparse
import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from .. import labels
from ..config import ENCODER_SIZES, FbankConfig, HeadConfig, MWMAEConfig, ModelConfig, audiomae_config
from ..files import refuse_compressed_records, refused_pickle_reason, safe_reason, sha256_file
from ..state_checks import WeightsError, check_finite, check_tensors
from ..validate import MAX_CLASSES, MAX_HEADS, brief, integer, is_int, names
from .common import CONVERTER_VERSION, ConversionError, Converted, read_json_config

log = logging.getLogger(__name__)

TIMM_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # preferred first
# The authors' names of our decoder's parameters (everything else is `encoder.` + name).
_DECODER_RENAMES = (("decoder_blocks.", "decoder.blocks."), ("decoder_embed.", "decoder.embed."),
                    ("decoder_norm.", "decoder.norm."), ("decoder_pred.", "decoder.pred."),
                    ("decoder_pos_embed", "decoder.pos_embed"), ("mask_token", "decoder.mask_token"))
_HEAD_RENAMES = (("fc_norm.", "classifier.fc_norm."), ("head.", "classifier.head."))  # the fine-tuned classifier
_HEAD_KEYS = ("fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias")
SINGLE_LABEL_DATASETS = ("esc50", "speechcommands")  # the authors' --dataset values trained with one class per clip
_FACTORY = re.compile(r"^(?P<mae>mae_)?vit_(?P<size>[a-z]+)_patch(?P<patch>\d+)(?:_|$)")
MAE_DECODER_HEADS = 16  # every `mae_vit_*` factory: 512-d decoder with 16 heads
# config.json model_args a conversion understands (sizes, training-only rates, the classifier)
_TIMM_ARGS = {"img_size", "in_chans", "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
              "num_classes", "global_pool", "fc_norm", "class_token", "drop_rate", "drop_path_rate",
              "attn_drop_rate", "proj_drop_rate", "pos_drop_rate", "patch_drop_rate"}


# ----------------------------------------------------------------------------- reading
def load_pickle_safely(path: Path) -> Any:
    """`torch.load(weights_only=True)` that also allows `argparse.Namespace` (the authors'
    `args`), and nothing else. Any other pickled object is refused, never executed.

    Zip-format files are memory-mapped, so tensors nobody reads (the optimizer state, two
    thirds of a pre-training checkpoint) are never loaded; `convert_state` copies what it keeps.
    """
    with open(path, "rb") as fh:
        zip_format = fh.read(4) == b"PK\x03\x04"
    try:
        refuse_compressed_records(path)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as exc:
        raise ConversionError(
            f"{path}: refused: the file pickles objects other than tensors, plain containers and "
            f"argparse.Namespace, and is never unpickled with code execution ({refused_pickle_reason(exc)})") from exc
    except Exception as exc:  # torch raises many unrelated types for a corrupt file
        raise ConversionError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): "
                              f"{type(exc).__name__}: {safe_reason(exc)}") from exc


def _load_weights(path: Path) -> dict[str, torch.Tensor]:
    """A timm weights file (safetensors, or a pickled plain dict of tensors)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:
            raise ConversionError(f"{path}: unreadable safetensors file: {safe_reason(exc).split(':')[0]}") from exc
    obj = load_pickle_safely(path)
    if not is_state_dict(obj):
        raise ConversionError(f"{path}: expected a dict of tensors (timm weights), got {type(obj).__name__}")
    return obj


def is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in obj.items())


def is_audiomae_payload(obj: Any) -> bool:
    """Whether a loaded object looks like an Audio-MAE checkpoint (layouts a/b, or a bare state dict)."""
    model = obj.get("model") if isinstance(obj, dict) and "model" in obj else obj
    return is_state_dict(model) and "patch_embed.proj.weight" in model and "blocks.0.attn.qkv.weight" in model


def is_timm_dir(path: Path) -> bool:
    """A directory with a timm `config.json` (with `architecture`) and a weights file."""
    cfg = Path(path) / "config.json"
    if not (Path(path).is_dir() and cfg.is_file() and any((Path(path) / w).is_file() for w in TIMM_WEIGHTS)):
        return False
    try:
        return "architecture" in read_json_config(cfg)
    except ConversionError:
        return False


def timm_weights_file(directory: Path) -> Path:
    """The weights file of a timm / Hub directory (safetensors preferred)."""
    for name in TIMM_WEIGHTS:
        if (Path(directory) / name).is_file():
            return Path(directory) / name
    raise ConversionError(f"{directory}: no {' or '.join(TIMM_WEIGHTS)} in this directory")


# ----------------------------------------------------------------------------- heads and config
def _factory(name: str | None) -> tuple[int, int, int, bool] | None:
    """(dim, depth, heads, is_mae) of a known factory / architecture name, else None."""
    m = _FACTORY.match(name) if isinstance(name, str) else None
    if not m or m["size"] not in ENCODER_SIZES:
        return None
    return (*ENCODER_SIZES[m["size"]], bool(m["mae"]))


def _heads(dim: int, depth: int, name: str | None, stored: Any, override: int | None,
           bare: bool) -> tuple[int, str]:
    """Encoder heads and where they came from (see the module docstring)."""
    if override is not None:
        heads, source = _count_arg(override, "num_heads"), "num_heads override"
    elif (fac := _factory(name)) is not None:
        if fac[:2] != (dim, depth):
            raise ConversionError(f"{brief(name)} is a {fac[0]}-d, {fac[1]}-block model, but the weights are "
                                  f"{dim}-d with {depth} blocks")
        heads, source = fac[2], f"factory name {brief(name)}"
        if stored is not None and _count_arg(stored, "num_heads") != heads:
            raise ConversionError(f"{brief(name)} has {heads} heads but the stored arguments say num_heads={stored}")
    elif stored is not None:
        heads, source = _count_arg(stored, "num_heads"), f"stored constructor argument num_heads (of {brief(name)})"
    elif bare and (dim, depth) in {(d, n) for d, n, _ in ENCODER_SIZES.values()}:
        heads = next(h for d, n, h in ENCODER_SIZES.values() if (d, n) == (dim, depth))
        source = f"the standard ViT of width {dim} and depth {depth} (no args in the file)"
        log.warning("no training args in the checkpoint: assuming %d heads, as every standard ViT of width %d "
                    "and depth %d has (pass --num-heads to override)", heads, dim, depth)
    else:
        raise ConversionError(
            f"the number of attention heads cannot be known: it is not in the weights, {brief(name)} is not a known "
            f"factory name and the file stores no num_heads; pass it with --num-heads N (num_heads=N)")
    if heads < 1 or dim % heads:
        raise ConversionError(f"num_heads {heads} does not divide the width {dim}")
    return heads, source


def _count_arg(value: Any, name: str) -> int:
    """A head count from an override or the file's arguments: an int in [1, MAX_HEADS], never
    a float rounded down (3.7 is an error, not 3)."""
    try:
        return integer(value, name, 1, MAX_HEADS)
    except ValueError as exc:
        raise ConversionError(str(exc)) from exc


def _number(args: dict[str, Any], key: str, default: float) -> float:
    """A real-valued training argument (mask ratios), else ConversionError naming it."""
    value = args.get(key, default)
    if not (is_int(value) or isinstance(value, float)):
        raise ConversionError(f"args.{key} must be a number, got {brief(value)}")
    return float(value)


def _count(state: dict[str, torch.Tensor], prefix: str) -> int:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d{{1,6}})\.")
    indices = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    if indices != set(range(len(indices))):
        shown = f"{sorted(indices)[:8]}{' ...' if len(indices) > 8 else ''}"
        raise ConversionError(f"{prefix}*: block indices {shown} are not 0..n-1")
    return len(indices)


def _shape(state: dict[str, torch.Tensor], key: str, ndim: int) -> tuple[int, ...]:
    if key not in state:
        raise ConversionError(f"the checkpoint has no {key!r}: not an Audio-MAE / ViT checkpoint")
    shape = tuple(state[key].shape)
    if len(shape) != ndim:
        raise ConversionError(f"{key} has shape {shape}, expected {ndim} dimensions")
    return shape


def _truthy(value: Any) -> bool:
    """The authors' `type=bool` options: any non-empty string is True."""
    if isinstance(value, str):
        return value != ""
    if value is None or isinstance(value, (bool, int, float)):
        return bool(value)
    raise ConversionError(f"a stored training option is a {type(value).__name__}, expected a bool or a string")


def config_from_weights(state: dict[str, torch.Tensor], args: dict[str, Any], name: str | None, *,
                        num_heads: int | None = None, decoder_num_heads: int | None = None, bare: bool = False,
                        n_mels: int = FbankConfig.n_mels) -> tuple[ModelConfig, dict[str, str]]:
    """Our ModelConfig for an Audio-MAE / ViT state dict (the authors' key names).

    `args`: the training arguments (pre-training / fine-tuning Namespace, or timm model_args).
    Returns the config and where the head counts came from.
    """
    if _truthy(args.get("use_custom_patch", False)):
        raise ConversionError("use_custom_patch=True (overlapping stride-10 patches) is not supported: no released "
                              "checkpoint uses it")
    pretrain = "decoder_embed.weight" in state
    if pretrain and "audio_exp" in args and not _truthy(args["audio_exp"]):  # (fine-tuning never sets it)
        raise ConversionError("audio_exp=False: an image model, not Audio-MAE")
    dim, chans, pt, pf = _shape(state, "patch_embed.proj.weight", 4)
    if min(dim, pt, pf) < 1:
        raise ConversionError(f"patch_embed.proj.weight has shape {(dim, chans, pt, pf)}: an empty patch embedding")
    if chans != 1:
        raise ConversionError(f"patch_embed takes {chans} input channels; Audio-MAE spectrograms have 1")
    if n_mels % pf:
        raise ConversionError(f"patch width {pf} does not divide the {n_mels} mel bands")
    if "cls_token" not in state:
        raise ConversionError("no cls_token: every Audio-MAE / timm ViT layout this converter knows has one")
    tokens = _shape(state, "pos_embed", 3)[1] - 1
    gf = n_mels // pf
    if tokens % gf:
        raise ConversionError(f"pos_embed has {tokens} patch rows, not a multiple of the {gf} frequency patches")
    depth = _count(state, "blocks.")
    if depth == 0:
        raise ConversionError("no encoder blocks (blocks.0.*) in the checkpoint")
    mlp_ratio = _shape(state, "blocks.0.mlp.fc1.weight", 2)[0] / dim
    heads, heads_from = _heads(dim, depth, name, args.get("num_heads"), num_heads, bare)
    sources = {"num_heads": heads_from}
    values: dict[str, Any] = {
        "embed_dim": dim, "depth": depth, "num_heads": heads, "img_size": (tokens // gf * pt, n_mels),
        "patch_size": (pt, pf), "mlp_ratio": mlp_ratio, "final_norm": "norm.weight" in state,
    }
    if pretrain:  # the pre-training settings (a fine-tuning run's masking options mean something else)
        values.update({
            "mask_ratio": _number(args, "mask_ratio", 0.8), "norm_pix_loss": _truthy(args.get("norm_pix_loss", True)),
            "mask_2d": _truthy(args.get("mask_2d", False)), "mask_t_prob": _number(args, "mask_t_prob", 0.7),
            "mask_f_prob": _number(args, "mask_f_prob", 0.3)})
    mode = args.get("decoder_mode", 1 if "decoder_blocks.0.attn.tau" in state else 0) if pretrain else 1
    if not is_int(mode) or mode not in (0, 1):
        raise ConversionError(f"decoder_mode {brief(mode)} is not supported (0 = global, 1 = shifted windows)")
    if pretrain:
        swin = "decoder_blocks.0.attn.tau" in state
        if swin != (mode == 1):
            raise ConversionError(f"args.decoder_mode={mode} but the decoder blocks are "
                                  f"{'Swin' if swin else 'global'} blocks")
        values["decoder_embed_dim"] = _shape(state, "decoder_embed.weight", 2)[0]
        values["decoder_depth"] = _count(state, "decoder_blocks.")
        if swin:
            values["decoder_num_heads"] = _shape(state, "decoder_blocks.0.attn.tau", 1)[0]
            values["shifting_windows"] = not _truthy(args.get("no_shift", False))
            sources["decoder_num_heads"] = "decoder_blocks.0.attn.tau"
        else:
            fac = _factory(name)
            if decoder_num_heads is not None:
                dheads = _count_arg(decoder_num_heads, "decoder_num_heads")
                sources["decoder_num_heads"] = "decoder_num_heads override"
            elif fac is not None and fac[3]:
                dheads, sources["decoder_num_heads"] = MAE_DECODER_HEADS, f"factory name {brief(name)}"
            elif args.get("decoder_num_heads") is not None:
                dheads = _count_arg(args["decoder_num_heads"], "decoder_num_heads")
                sources["decoder_num_heads"] = "stored constructor argument decoder_num_heads"
            elif bare:
                dheads, sources["decoder_num_heads"] = MAE_DECODER_HEADS, "the authors' factories (no args in the file)"
            else:
                raise ConversionError("the decoder's number of heads cannot be known; pass decoder_num_heads=N")
            values["decoder_num_heads"] = dheads
    try:
        cfg = audiomae_config("base", decoder="swin" if mode == 1 else "global", **values)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"the checkpoint does not describe a valid Audio-MAE: {exc}") from exc
    return cfg, sources


# ----------------------------------------------------------------------------- state dict
def rename(key: str) -> str:
    """An authors' / timm key -> ours."""
    for theirs, ours in _DECODER_RENAMES + _HEAD_RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return "encoder." + key


def head_from_weights(state: dict[str, torch.Tensor], dataset: str | None = None,
                      label_names: Any = None) -> HeadConfig | None:
    """The classifier of a fine-tuned state dict (`fc_norm` + `head`), or None without a head.

    `dataset`: the authors' `args.dataset` (single-label for esc50 / speechcommands);
    `label_names`: names from a timm config.json. See the module docstring for the names."""
    if "head.weight" not in state:
        return None
    if "fc_norm.weight" not in state:
        raise ConversionError("the checkpoint has a `head` but no `fc_norm`: only the authors' global-pool "
                              "classifier (mean of the patch tokens -> fc_norm -> head) is supported")
    num_classes = _shape(state, "head.weight", 2)[0]
    if not 1 <= num_classes <= MAX_CLASSES:  # (before any class names are made for it)
        raise ConversionError(f"head.weight has {num_classes} outputs; a head has 1 to {MAX_CLASSES}")
    single = isinstance(dataset, str) and dataset.lower() in SINGLE_LABEL_DATASETS
    if label_names is not None:
        if not isinstance(label_names, list) or not all(isinstance(n, str) for n in label_names):
            raise ConversionError("config.json label_names must be a list of strings")
        vocab: labels.Vocabulary | None = labels.Vocabulary(tuple(label_names), (), "config.json label_names")
    elif num_classes == labels.AUDIOSET_CLASSES and not single:
        vocab = labels.audioset()
    else:
        vocab = None
    try:
        return labels.head_config(num_classes, vocab, multi_label=not single)
    except ValueError as exc:
        raise ConversionError(f"the classifier head cannot be described: {exc}") from exc


def convert_state(state: dict[str, torch.Tensor], cfg: ModelConfig,
                  head: HeadConfig | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Authors' state dict -> our full (or encoder-only) state dict, with the classifier when
    `head` is given. Every key used or explicitly dropped (an `fc_norm` without a head),
    every shape checked, strict load. Returns (state dict, dropped keys)."""
    from ..classifier import PREFIX, Classifier
    from ..model import MWMAE, Encoder

    try:  # every element stored (no expanded views), all finite: before anything is copied
        check_tensors(state)
        check_finite(state)
    except WeightsError as exc:
        raise ConversionError(f"the checkpoint's weights: {exc}") from exc
    unused = () if head is not None else _HEAD_KEYS
    dropped = sorted(k for k in state if k in unused)
    ours = {rename(k): v for k, v in state.items() if k not in unused}
    encoder_only = not any(k.startswith("decoder.") for k in ours)
    with torch.device("meta"):
        model = Encoder(cfg) if encoder_only else MWMAE(cfg)
        classifier = Classifier(cfg, head) if head is not None else None
    prefix = "encoder." if encoder_only else ""
    expected = {prefix + k: v for k, v in model.state_dict().items()}
    if classifier is not None:
        expected.update({PREFIX + k: v for k, v in classifier.state_dict().items()})
    missing = sorted(set(expected) - set(ours))
    unknown = sorted(k for k in state if k not in unused and rename(k) not in expected)
    problems = []
    if missing:
        problems.append(f"missing from the checkpoint: {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if unknown:
        problems.append(f"not part of an Audio-MAE of this configuration: {unknown[:8]}"
                        f"{' ...' if len(unknown) > 8 else ''}")
    for key, value in ours.items():
        if key in expected and tuple(value.shape) != tuple(expected[key].shape):
            problems.append(f"{key}: shape {tuple(value.shape)}, config expects {tuple(expected[key].shape)}")
        if key in expected and not value.is_floating_point():
            problems.append(f"{key}: dtype {value.dtype} is not floating point")
    if problems:
        raise ConversionError("weights do not match the derived configuration:\n  " + "\n  ".join(problems))
    ours = {k: v.detach().to(torch.float32, copy=True).contiguous() for k, v in ours.items()}  # off the file
    model.load_state_dict({k[len(prefix):]: v for k, v in ours.items() if not k.startswith(PREFIX)},
                          strict=True, assign=True)
    if classifier is not None:
        classifier.load_state_dict({k[len(PREFIX):]: v for k, v in ours.items() if k.startswith(PREFIX)},
                                   strict=True, assign=True)
    return ours, dropped


_PLAIN_DEPTH, _PLAIN_ITEMS = 8, 10_000  # stored arguments kept in a provenance: at most this deep / many


def _plain(value: Any) -> Any:
    """JSON-safe copy of stored arguments (paths and numbers; anything else as its repr, cut
    short), at most _PLAIN_DEPTH deep and _PLAIN_ITEMS values: what is beyond becomes "..."
    (a pickle can share one list many times over, so the copy is bounded, not the input)."""
    budget = [_PLAIN_ITEMS]

    def copy(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > _PLAIN_DEPTH:
            return "..."
        if isinstance(v, str):
            return v if len(v) <= 1000 else v[:997] + "..."
        if isinstance(v, (int, float, bool)) or v is None:
            return v
        if isinstance(v, (list, tuple)):
            return [copy(x, depth + 1) for x in v[:_PLAIN_ITEMS]]
        if isinstance(v, dict):
            return {brief(k) if not isinstance(k, str) else k: copy(x, depth + 1)
                    for k, x in list(v.items())[:_PLAIN_ITEMS]}
        return brief(v)

    return copy(value, 0)


def convert_payload(obj: Any, source: Path, *, num_heads: int | None = None,
                    decoder_num_heads: int | None = None, sha256: str | None = None) -> Converted:
    """Convert a loaded authors' checkpoint (layout a / b, or a bare state dict) read from `source`."""
    if isinstance(obj, dict) and obj.get("format") == "hear-mwmae":
        raise ConversionError(f"{source}: already a hear-mwmae checkpoint; load it directly")
    if not is_audiomae_payload(obj):
        raise ConversionError(f"{source}: not an Audio-MAE checkpoint (no model dict with patch_embed / blocks)")
    bare = "model" not in obj
    state = obj if bare else obj["model"]
    args_obj = None if bare else obj.get("args")
    if args_obj is not None and not isinstance(args_obj, (argparse.Namespace, dict)):
        raise ConversionError(f"{source}: 'args' is a {type(args_obj).__name__}, expected an argparse.Namespace")
    args = vars(args_obj) if isinstance(args_obj, argparse.Namespace) else dict(args_obj or {})
    name = args.get("model")
    cfg, heads_from = config_from_weights(state, args, name, num_heads=num_heads,
                                          decoder_num_heads=decoder_num_heads, bare=not args)
    head = head_from_weights(state, args.get("dataset"))
    converted, dropped = convert_state(state, cfg, head)
    layout = "finetuned" if "head.weight" in state or "fc_norm.weight" in state else "pretrain"
    if not bare and not args:
        log.warning("%s holds no training args: norm_pix_loss / mask settings are the released recipe's", source)
    epoch = None if bare else obj.get("epoch")
    provenance = {
        "source": "facebookresearch/AudioMAE checkpoint", "layout": layout, "source_file": Path(source).name,
        "source_sha256": sha256 or sha256_file(source), "epoch": int(epoch) if isinstance(epoch, int) else None,
        "step": int(epoch) if isinstance(epoch, int) else None, "model_name": name, "heads_from": heads_from,
        "dropped_keys": dropped, "source_args": _plain(args), "converter_version": CONVERTER_VERSION,
        "license": "CC-BY-NC-4.0",  # the Audio-MAE repository's and weights' (non-commercial)
    }
    return Converted(MWMAEConfig(cfg, FbankConfig(), head), converted, provenance)


def convert_file(path: str | Path, *, num_heads: int | None = None,
                 decoder_num_heads: int | None = None) -> Converted:
    """Convert the authors' `checkpoint-<epoch>.pth` / `pretrained.pth` (pre-trained or fine-tuned).
    A timm weights file with its `config.json` beside it is converted as that directory."""
    path = Path(path)
    if path.name in TIMM_WEIGHTS and is_timm_dir(path.parent):
        return convert_timm_dir(path.parent, weights=path, num_heads=num_heads)
    if path.suffix == ".safetensors":
        raise ConversionError(f"{path}: a safetensors weights file converts only inside its timm / Hub directory "
                              f"(named {TIMM_WEIGHTS[0]}, with config.json beside it)")
    return convert_payload(load_pickle_safely(path), path, num_heads=num_heads,
                           decoder_num_heads=decoder_num_heads)


def convert_timm_dir(directory: str | Path, *, weights: Path | None = None,
                     num_heads: int | None = None) -> Converted:
    """Convert a timm / Hugging Face Hub directory (`config.json` + weights), encoder only."""
    directory = Path(directory)
    cfg_file = directory / "config.json"
    timm_cfg = read_json_config(cfg_file)
    arch = timm_cfg.get("architecture")
    model_args = timm_cfg.get("model_args") or {}
    pretrained_cfg = timm_cfg.get("pretrained_cfg") or {}
    if not isinstance(model_args, dict) or not isinstance(pretrained_cfg, dict) or not isinstance(arch, str):
        raise ConversionError(f"{cfg_file}: architecture must be a name, model_args and pretrained_cfg mappings")
    model_args = dict(model_args)
    unknown = names(set(model_args) - _TIMM_ARGS)
    if unknown:
        raise ConversionError(f"{cfg_file}: model_args {unknown} are not supported by this converter")
    if not model_args.get("qkv_bias", True) or not model_args.get("class_token", True):
        raise ConversionError(f"{cfg_file}: qkv_bias / class_token off: not an Audio-MAE ViT")
    input_size = pretrained_cfg.get("input_size")
    if input_size is not None and (not isinstance(input_size, list) or len(input_size) != 3
                                   or not all(is_int(n) for n in input_size)
                                   or input_size[0] != 1 or input_size[2] != FbankConfig.n_mels):
        raise ConversionError(f"{cfg_file}: input_size {brief(input_size)}: expected [1, time, {FbankConfig.n_mels}] "
                              "(a 1-channel 128-band fbank model)")
    weights = Path(weights) if weights else timm_weights_file(directory)
    state = _load_weights(weights)
    if any(k.startswith(("decoder", "mask_token")) for k in state):
        raise ConversionError(f"{weights}: holds decoder weights; a timm layout is encoder-only")
    # timm builds the architecture's sizes updated by model_args
    fac = _factory(arch)
    sizes = dict(zip(("embed_dim", "depth", "num_heads"), fac[:3])) if fac else {}
    sizes.update({k: model_args[k] for k in ("embed_dim", "depth", "num_heads") if k in model_args})
    heads = num_heads if num_heads is not None else sizes.get("num_heads")
    cfg, heads_from = config_from_weights(state, {}, None if heads is not None else arch, num_heads=heads)
    if num_heads is None and heads is not None:
        heads_from = {"num_heads": f"architecture {brief(arch)}" + (" and model_args" if model_args else "")}
    for key in ("embed_dim", "depth"):
        if key in sizes and sizes[key] != getattr(cfg, key):
            raise ConversionError(f"{cfg_file}: {brief(arch)} with model_args has {key} {brief(sizes[key])}, "
                                  f"the weights {getattr(cfg, key)}")
    if input_size is not None and tuple(input_size[1:]) != cfg.img_size:
        raise ConversionError(f"{cfg_file}: input_size {input_size} but the weights cover {cfg.img_size}")
    pool = model_args.get("global_pool", timm_cfg.get("global_pool", "avg"))
    if "head.weight" in state and pool != "avg":
        raise ConversionError(f"{cfg_file}: global_pool {pool!r}: only the authors' "
                              "'avg' classifier (mean of the patch tokens -> fc_norm -> head) is supported")
    head = head_from_weights(state, None, timm_cfg.get("label_names"))
    converted, dropped = convert_state(state, cfg, head)
    provenance = {
        "source": "timm / Hugging Face Hub Audio-MAE", "layout": "timm", "source_file": weights.name,
        "source_dir": str(directory), "source_sha256": sha256_file(weights), "epoch": None, "step": None,
        "model_name": arch, "heads_from": heads_from, "dropped_keys": dropped,
        "source_config": _plain(timm_cfg), "converter_version": CONVERTER_VERSION,
        "license": "CC-BY-NC-4.0",  # the timm copies carry the Audio-MAE weights' licence (non-commercial)
    }
    return Converted(MWMAEConfig(cfg, FbankConfig(), head), converted, provenance)


__all__ = ["config_from_weights", "convert_file", "convert_payload", "convert_state", "convert_timm_dir",
           "head_from_weights",
           "is_audiomae_payload", "is_state_dict", "is_timm_dir", "load_pickle_safely", "rename",
           "timm_weights_file"]
