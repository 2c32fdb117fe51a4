"""What every converter returns, its error type, and the one reader of the authors' JSON configs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import MWMAEConfig

CONVERTER_VERSION = "2"
MAX_CONFIG_BYTES = 1 << 20  # a config.json (the authors' ~2 kB, timm's ~1 kB)


class ConversionError(ValueError):
    """The source cannot be converted; the message says why."""


@dataclass(frozen=True)
class Converted:
    """A converted model: its config, the full state dict (`encoder.*`, `decoder.*` keys;
    `encoder.*` only when the source has no decoder) and where it came from."""

    config: MWMAEConfig
    state_dict: dict[str, torch.Tensor]
    provenance: dict[str, Any]

    @property
    def encoder_only(self) -> bool:
        return not any(k.startswith("decoder.") for k in self.state_dict)


def read_json_config(path: Path) -> dict[str, Any]:
    """A `config.json` (the authors' or timm's) as a dict; ConversionError if it is larger than
    MAX_CONFIG_BYTES, not UTF-8 JSON, nested too deep for the parser, or not a JSON object."""
    path = Path(path)
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConversionError(f"{path}: {path.stat().st_size} bytes; a config.json is at most "
                                  f"{MAX_CONFIG_BYTES} bytes")
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # (bad UTF-8, bad JSON, an int of > 4300 digits)
        from ..files import safe_reason

        raise ConversionError(f"{path}: not a readable JSON config ({type(exc).__name__}: {safe_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: a JSON {type(data).__name__}, not an object")
    return data
