"""Checks of a loaded state dict, before any module is built from it.

A checkpoint's config says how big a module to build; its state dict says what it holds.
Both come from a file we do not control, so before a module with real storage exists:

    check_tensors(state)          names are strings, values are dense floating-point tensors
                                  whose elements are all stored: a stride-0 (expanded) or
                                  overlapping view is refused, and tensors sharing one storage
                                  may not hold more bytes than it has. So the tensors, once
                                  made contiguous (or converted to float32), take at most
                                  twice the bytes the file stores (float16 / bfloat16 -> float32).
    check_against_config(config, state, parts)
                                  the state dict has exactly the names and shapes of the
                                  config's model parts (encoder, decoder, classifier); a
                                  disagreement is reported by config field where one can be
                                  named (depth vs the blocks present, widths, patches, heads of a
                                  Swin decoder, classes, ...). Expected shapes come from modules
                                  built on the meta device (no storage), which the config's
                                  bounds (`validate`) keep small.
    check_finite(state)           every weight is finite (no NaN / inf).
    check_state_dict(...)         all three, in that order.

Each raises `WeightsError` (a ValueError) whose message names the tensor or the field.
"""

from __future__ import annotations

import re
from typing import Any

import torch

from .config import MWMAEConfig
from .validate import brief

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PARTS = ("encoder", "decoder", "classifier")  # a state dict's key prefixes (`encoder.` ...)
MAX_NAME = 200  # characters of a state-dict key
MAX_LISTED = 8  # names listed in one message


class WeightsError(ValueError):
    """A state dict that cannot be used (or does not fit its config); the message says why."""


def _listed(names: list[str]) -> str:
    shown = [brief(n) for n in names[:MAX_LISTED]]
    return f"[{', '.join(shown)}{', ...' if len(names) > MAX_LISTED else ''}] ({len(names)})"


def stored_elements(t: torch.Tensor) -> int:
    """Elements of storage a strided tensor's view spans (0 for an empty tensor)."""
    if t.numel() == 0:
        return 0
    return 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))


def is_dense_view(t: torch.Tensor) -> bool:
    """Whether every element of `t` has its own place in storage (no stride-0 or overlapping
    dimensions): sorted by stride, each dimension steps over the whole extent of the smaller ones."""
    if t.numel() == 0:
        return True
    extent = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride < extent or stride < 0:
            return False
        extent = stride * size
    return True


def check_tensors(state: Any) -> None:
    """Names, types and storage of a state dict (see the module docstring)."""
    if not isinstance(state, dict) or not state:
        raise WeightsError(f"the state dict is not a non-empty dict of tensors (got {type(state).__name__})")
    per_storage: dict[tuple[int, int], int] = {}
    for key, value in state.items():
        if not isinstance(key, str) or not 0 < len(key) <= MAX_NAME:
            raise WeightsError(f"state-dict key {brief(key)} is not a parameter name (a string of 1 to "
                               f"{MAX_NAME} characters)")
        if not isinstance(value, torch.Tensor):
            raise WeightsError(f"{brief(key)} is a {type(value).__name__}, not a tensor")
        if value.layout != torch.strided or value.is_quantized or value.device.type == "meta":
            raise WeightsError(f"{brief(key)}: a {value.layout} / {value.device.type} tensor; weights must be "
                               "plain dense tensors")
        if value.dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{brief(key)}: dtype {value.dtype} is not floating point")
        if not is_dense_view(value):
            raise WeightsError(f"{brief(key)}: a view whose elements overlap in storage (shape {tuple(value.shape)}, "
                               f"stride {tuple(value.stride())}, e.g. an expanded tensor): refused, its "
                               f"{value.numel()} elements are not all stored in the file")
        storage = value.untyped_storage()
        end = (value.storage_offset() + stored_elements(value)) * value.element_size()
        if value.numel() and (value.storage_offset() < 0 or end > storage.nbytes()):
            raise WeightsError(f"{brief(key)}: spans {end} bytes of a storage of {storage.nbytes()}")
        if value.numel():
            where = (storage.data_ptr(), storage.nbytes())
            per_storage[where] = per_storage.get(where, 0) + value.numel() * value.element_size()
    for (_, nbytes), used in per_storage.items():
        if used > nbytes:
            raise WeightsError(f"several tensors are views of one stored block of {nbytes} bytes that hold {used} "
                               "bytes together: refused (their elements are not all stored in the file)")


# ----------------------------------------------------------------------------- against the config
def _blocks(state: dict[str, torch.Tensor], prefix: str) -> list[int]:
    pattern = re.compile(rf"^{re.escape(prefix)}(\d{{1,6}})\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _shape(state: dict[str, torch.Tensor], key: str) -> tuple[int, ...] | None:
    return tuple(state[key].shape) if key in state else None


def stored_parts(config: MWMAEConfig, state: dict[str, Any]) -> tuple[str, ...]:
    """The parts a checkpoint of this config holds, each then checked whole: the encoder, the
    decoder when any `decoder.*` weight is there (a file's `encoder_only` flag is not trusted
    for it: an encoder saved without the flag has no decoder), the classifier when the config
    has a head."""
    decoder = any(isinstance(k, str) and k.startswith("decoder.") for k in state)
    return ("encoder",) + (("decoder",) if decoder else ()) + (("classifier",) if config.head else ())


def field_disagreements(config: MWMAEConfig, state: dict[str, torch.Tensor], parts: tuple[str, ...]) -> list[str]:
    """Config fields the weights contradict, one line each (cheap: no module is built)."""
    out = []
    cfg = config.model

    def differ(field: str, value: Any, found: Any, says: str) -> None:
        if found is not None and found != value:
            out.append(f"{field} is {value}, but {says.format(found)}")

    if "encoder" in parts:
        blocks = _blocks(state, "encoder.blocks.")
        if blocks:
            differ("depth", cfg.depth, len(blocks), "the weights hold {} encoder blocks")
        patch = _shape(state, "encoder.patch_embed.proj.weight")
        if patch is not None and len(patch) == 4:
            differ("embed_dim", cfg.embed_dim, patch[0], "encoder.patch_embed.proj.weight is {} wide")
            differ("patch_size", list(cfg.patch_size), list(patch[2:]),
                   "encoder.patch_embed.proj.weight has {} patches")
        pos = _shape(state, "encoder.pos_embed")
        if pos is not None and len(pos) == 3:
            differ("the token count (img_size / patch_size, + CLS)", cfg.num_patches + int(cfg.use_cls_token), pos[1],
                   "encoder.pos_embed holds {} tokens")
        differ("use_cls_token", cfg.use_cls_token, "encoder.cls_token" in state, "encoder.cls_token present: {}")
        differ("final_norm", cfg.final_norm, "encoder.norm.weight" in state, "encoder.norm.weight present: {}")
        fc1 = _shape(state, "encoder.blocks.0.mlp.fc1.weight")
        if fc1 is not None and len(fc1) == 2 and fc1[0] != int(cfg.embed_dim * cfg.mlp_ratio):
            out.append(f"mlp_ratio is {cfg.mlp_ratio}, but encoder.blocks.0.mlp.fc1.weight has {fc1[0]} hidden units "
                       f"for the width {cfg.embed_dim}")
    if "decoder" in parts:
        blocks = _blocks(state, "decoder.blocks.")
        if blocks or "decoder.embed.weight" in state:
            differ("decoder_depth", cfg.decoder_depth, len(blocks), "the weights hold {} decoder blocks")
        embed = _shape(state, "decoder.embed.weight")
        if embed is not None and len(embed) == 2:
            differ("decoder_embed_dim", cfg.decoder_embed_dim, embed[0], "decoder.embed.weight is {} wide")
        tau = _shape(state, "decoder.blocks.0.attn.tau")
        if cfg.decoder_kind == "swin" and tau is not None and len(tau) == 1:
            differ("decoder_num_heads", cfg.decoder_num_heads, tau[0], "decoder.blocks.0.attn.tau holds {} heads")
    head = _shape(state, "classifier.head.weight")
    if "classifier" in parts and head is not None and len(head) == 2:
        differ("head.num_classes", config.head.num_classes, head[0], "classifier.head.weight has {} outputs")
    return out


def expected_shapes(config: MWMAEConfig, parts: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
    """Names (with their part's prefix) and shapes of the config's model parts, from modules
    built on the meta device (no storage is allocated)."""
    from .classifier import Classifier
    from .model import Decoder, Encoder

    builders = {"encoder": lambda: Encoder(config.model), "decoder": lambda: Decoder(config.model),
                "classifier": lambda: Classifier(config.model, config.head)}
    shapes: dict[str, tuple[int, ...]] = {}
    for part in parts:
        if part not in builders or (part == "classifier" and config.head is None):
            raise ValueError(f"no model part {part!r} in this config (parts: {list(PARTS)})")
        with torch.device("meta"):
            module = builders[part]()
        shapes.update({f"{part}.{k}": tuple(v.shape) for k, v in module.state_dict().items()})
    return shapes


def check_against_config(config: MWMAEConfig, state: dict[str, torch.Tensor], parts: tuple[str, ...]) -> None:
    """The state dict (full names: `encoder.*`, `decoder.*`, `classifier.*`) has exactly the
    names and shapes of the config's `parts`, nothing more, nothing less."""
    relevant = state
    fields = field_disagreements(config, relevant, parts)
    if fields:
        raise WeightsError("the config disagrees with its weights: " + "; ".join(fields[:MAX_LISTED]))
    expected = expected_shapes(config, parts)
    problems = []
    missing = sorted(set(expected) - set(relevant))
    unexpected = sorted(set(relevant) - set(expected))
    if missing:
        problems.append(f"missing weights {_listed(missing)}")
    if unexpected:
        problems.append(f"weights a model of this config does not have {_listed(unexpected)}")
    wrong = [f"{brief(k)} {tuple(relevant[k].shape)} (config: {expected[k]})"
             for k in sorted(set(expected) & set(relevant)) if tuple(relevant[k].shape) != expected[k]]
    if wrong:
        problems.append(f"shapes {', '.join(wrong[:MAX_LISTED])}{' ...' if len(wrong) > MAX_LISTED else ''}")
    if problems:
        raise WeightsError("the config disagrees with its weights: " + "; ".join(problems))


def part_of(state: dict[str, Any], parts: tuple[str, ...]) -> dict[str, Any]:
    """The entries of `state` whose names start with one of the parts' prefixes."""
    prefixes = tuple(f"{p}." for p in parts)
    return {k: v for k, v in state.items() if isinstance(k, str) and k.startswith(prefixes)}


def check_finite(state: dict[str, torch.Tensor]) -> None:
    """Every weight is finite; else WeightsError naming the tensors with NaN or inf."""
    def finite(t: torch.Tensor) -> bool:  # min and max carry any NaN / inf (6x faster than isfinite().all())
        return t.numel() == 0 or all(bool(torch.isfinite(x)) for x in torch.aminmax(t.detach()))

    bad = [k for k, v in state.items() if not finite(v)]
    if bad:
        raise WeightsError(f"weights that are not all finite (NaN or inf): {_listed(bad)}; the model would "
                           "produce NaN embeddings")


def check_state_dict(config: MWMAEConfig, state: Any, parts: tuple[str, ...]) -> None:
    """`check_tensors`, `check_against_config`, `check_finite`: all a loader needs before it
    builds a module from `state` (which holds exactly the config's `parts`)."""
    check_tensors(state)
    check_against_config(config, state, parts)
    check_finite(state)


__all__ = ["PARTS", "WeightsError", "check_against_config", "check_finite", "check_state_dict", "check_tensors",
           "expected_shapes", "field_disagreements", "is_dense_view", "part_of", "stored_elements", "stored_parts"]
