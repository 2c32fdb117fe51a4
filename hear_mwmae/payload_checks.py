"""The parts of a loaded hear-mwmae checkpoint payload, checked before any module is built.

`checked_payload(obj)` takes the payload of a `.pt` (from `torch.load(weights_only=True)`)
or of a `.safetensors` file (its metadata and tensors), already migrated to the current
format, and returns (config, state dict, encoder_only, provenance) or raises ValueError
naming what is wrong: the config's values (`validate`, through the config dataclasses), the
tensors' names, types and storage, their agreement with the config and their finiteness
(`state_checks`), and the provenance (plain JSON-like data of bounded size and depth).
"""

from __future__ import annotations

from typing import Any

from .config import MWMAEConfig
from .state_checks import check_state_dict, stored_parts
from .validate import brief, is_int

MAX_PROVENANCE_DEPTH = 32  # nesting of lists / dicts in a provenance
MAX_PROVENANCE_ITEMS = 100_000  # values in a provenance


def format_version_ok(version: Any) -> bool:
    """An int (a `.pt`) or a string of digits (a `.safetensors` metadata value)."""
    return is_int(version) or (isinstance(version, str) and version.isdigit() and len(version) < 10)


def plain_data(value: Any, name: str) -> Any:
    """`value` if it is JSON-like data (None, bool, int, float, str, and lists / dicts of them with
    string keys) nested at most MAX_PROVENANCE_DEPTH deep, at most MAX_PROVENANCE_ITEMS values;
    else ValueError. Walked with an explicit stack (no recursion)."""
    stack, seen = [(value, 0)], 0
    while stack:
        node, depth = stack.pop()
        seen += 1
        if seen > MAX_PROVENANCE_ITEMS or depth > MAX_PROVENANCE_DEPTH:
            raise ValueError(f"{name} is larger than {MAX_PROVENANCE_ITEMS} values or nested deeper than "
                             f"{MAX_PROVENANCE_DEPTH}")
        if isinstance(node, dict):
            if not all(isinstance(k, str) for k in node):
                raise ValueError(f"{name} has a key that is not a string")
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend((v, depth + 1) for v in node)
        elif not (node is None or isinstance(node, (bool, int, float, str))):
            raise ValueError(f"{name} holds a {type(node).__name__}; only plain data (numbers, strings, lists, "
                             "dicts) is expected")
    return value


def checked_payload(obj: dict[str, Any]) -> tuple[MWMAEConfig, dict[str, Any], bool, dict[str, Any]]:
    """(config, state dict, encoder_only, provenance) of a migrated payload; ValueError if any
    part is malformed or the weights do not fit the config."""
    if "config" not in obj or "state_dict" not in obj:
        raise ValueError(f"malformed checkpoint: no {'config' if 'config' not in obj else 'state_dict'}")
    try:
        config = MWMAEConfig.from_dict(obj["config"])
    except (TypeError, ValueError) as exc:
        raise ValueError(f"invalid config: {exc}") from exc
    encoder_only = obj.get("encoder_only", False)
    if not isinstance(encoder_only, bool):
        raise ValueError(f"encoder_only must be true or false, got {brief(encoder_only)}")
    provenance = plain_data(obj.get("provenance") or {}, "provenance")
    if not isinstance(provenance, dict):
        raise ValueError(f"provenance must be a dict, got {type(provenance).__name__}")
    state = obj["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"state_dict is a {type(state).__name__}, not a dict of tensors")
    check_state_dict(config, state, stored_parts(config, state))
    return config, state, encoder_only, dict(provenance)


__all__ = ["checked_payload", "format_version_ok", "plain_data"]
