"""Frozen configuration dataclasses, stored inside every checkpoint.

`MWMAEConfig` = `ModelConfig` (architecture) + `FrontendConfig` (log-mel settings).
Both round-trip through plain dicts (`to_dict` / `from_dict`) so a checkpoint can hold
them without pickling code. Unknown keys are an error, never silently dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Encoder sizes of the release: name -> (embed_dim, depth, num_heads).
ENCODER_SIZES: dict[str, tuple[int, int, int]] = {
    "tiny": (192, 12, 3),
    "small": (384, 12, 6),
    "medium": (512, 12, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
    "huge": (1280, 32, 16),
}

# Decoder window sizes of the released MW-MAE (0 = global head).
RELEASED_DECODER_WINDOWS: tuple[int, ...] = (2, 5, 10, 25, 50, 125, 0, 0)

FLOAT32_EPS = 1.1920928955078125e-07  # torch.finfo(torch.float32).eps


@dataclass(frozen=True)
class FrontendConfig:
    """Log-mel frontend of the release (torchaudio MelSpectrogram semantics)."""

    sample_rate: int = 16000
    n_fft: int = 400
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 50.0
    f_max: float = 8000.0
    n_mels: int = 80
    log_eps: float = FLOAT32_EPS
    norm_eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {self.f_min}, {self.f_max}")


def _as_head_windows(value: Any, num_heads: int, what: str) -> tuple[int, ...]:
    """Normalise the release's `window_sizes` argument (0, an int, or a per-head list).

    Returns () for "plain multi-head attention" (the release's `0`), else one int per head.
    """
    if value is None or (isinstance(value, int) and value == 0):
        return ()
    if isinstance(value, int):
        value = [value] * num_heads
    windows = tuple(int(w) for w in value)
    if len(windows) == 0:
        return ()
    if len(windows) != num_heads:
        raise ValueError(f"{what}: {len(windows)} window sizes for {num_heads} heads")
    if any(w < 0 for w in windows):
        raise ValueError(f"{what}: window sizes must be >= 0, got {list(windows)}")
    return windows


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an MW-MAE / MAE (encoder + decoder).

    `window_sizes` / `decoder_window_sizes`: one window length per head (0 = global head),
    or () for plain multi-head attention. `use_cls_token` selects the release's plain
    `MAE` class (CLS token, no windows).
    """

    img_size: tuple[int, int] = (200, 80)
    patch_size: tuple[int, int] = (4, 16)
    in_chans: int = 1
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    window_sizes: tuple[int, ...] = ()
    decoder_embed_dim: int = 384
    decoder_depth: int = 4
    decoder_num_heads: int = 8
    decoder_window_sizes: tuple[int, ...] = RELEASED_DECODER_WINDOWS
    shifting_windows: bool = False
    use_cls_token: bool = False
    mask_ratio: float = 0.8
    norm_pix_loss: bool = False
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        # Accept lists (from JSON) and the release's int shorthand; store tuples.
        object.__setattr__(self, "img_size", tuple(int(v) for v in self.img_size))
        object.__setattr__(self, "patch_size", tuple(int(v) for v in self.patch_size))
        object.__setattr__(
            self, "window_sizes", _as_head_windows(self.window_sizes, self.num_heads, "window_sizes")
        )
        object.__setattr__(
            self,
            "decoder_window_sizes",
            _as_head_windows(self.decoder_window_sizes, self.decoder_num_heads, "decoder_window_sizes"),
        )
        (h, w), (ph, pw) = self.img_size, self.patch_size
        if h % ph or w % pw:
            raise ValueError(f"patch_size {self.patch_size} does not divide img_size {self.img_size}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if self.use_cls_token and (self.window_sizes or self.decoder_window_sizes):
            raise ValueError("the CLS-token MAE variant takes no window sizes (as in the release)")
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (time, freq), e.g. (50, 5)."""
        return (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def patch_dim(self) -> int:
        """Pixels per patch (the decoder's output size)."""
        return self.patch_size[0] * self.patch_size[1] * self.in_chans

    @property
    def embedding_size(self) -> int:
        """Width of one timestamp embedding: freq patches x embed_dim (3840 for base 4x16)."""
        return self.grid_size[1] * self.embed_dim

    @property
    def len_keep(self) -> int:
        """Patches kept by random masking (the release's rounding-safe formula)."""
        return int(self.num_patches * (100 - self.mask_ratio * 100) / 100)


@dataclass(frozen=True)
class MWMAEConfig:
    """Everything needed to rebuild a model and its input pipeline."""

    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: FrontendConfig = field(default_factory=FrontendConfig)

    def to_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if isinstance(obj, tuple):
                return [plain(v) for v in obj]
            return obj

        return {
            "model": {k: plain(v) for k, v in dataclasses.asdict(self.model).items()},
            "frontend": dataclasses.asdict(self.frontend),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MWMAEConfig":
        if not isinstance(data, dict) or set(data) - {"model", "frontend"}:
            raise ValueError(f"config must be a dict with keys 'model' and 'frontend', got {data!r:.200}")
        return cls(
            model=_build(ModelConfig, data.get("model", {})),
            frontend=_build(FrontendConfig, data.get("frontend", {})),
        )


def _build(kind: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {sorted(unknown)}")
    return kind(**values)


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """Preset by encoder size name ('tiny' ... 'huge'); released decoder unless overridden.

    >>> model_config("base").embedding_size
    3840
    """
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(ENCODER_SIZES)}")
    dim, depth, heads = ENCODER_SIZES[size]
    values: dict[str, Any] = {"embed_dim": dim, "depth": depth, "num_heads": heads}
    values.update(overrides)
    return ModelConfig(**values)
