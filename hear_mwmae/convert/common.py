"""What every converter returns, and its error type."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..config import MWMAEConfig

CONVERTER_VERSION = "2"


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
