"""Frozen configuration dataclasses, stored inside every checkpoint.

`MWMAEConfig` = `ModelConfig` (architecture) + a frontend config, for both model families,
+ an optional `HeadConfig` (a classifier on the encoder: a fine-tuned model):

| family     | frontend                         | chunk      | patch   | CLS | GELU | decoder          |
|------------|----------------------------------|------------|---------|-----|------|------------------|
| `mwmae`    | `FrontendConfig` (log-mel 80)    | 200 frames | 4 x 16  | no* | tanh | MW-MHA blocks    |
| `audiomae` | `FbankConfig` (Kaldi fbank 128)  | 1024       | 16 x 16 | yes | erf  | global or Swin   |
(* the release's plain `MAE` class has one.)

The runtime, checkpoint format, CLI, embedding, evaluation and pre-training read only the
values held here (frontend kind and parameters, `img_size`, `patch_size`, CLS, step length,
where frame 0 is centred); `family` itself decides only how fresh weights are initialised
(`model.init_weights`). Both round-trip through plain dicts (`to_dict` / `from_dict`) so a
checkpoint can hold them without pickling code. Unknown keys are an error, never dropped.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Union

from . import validate

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


FAMILIES = ("mwmae", "audiomae")
GELUS = ("tanh", "erf")
DECODER_KINDS = ("mwmha", "swin")

# Audio-MAE's AudioSet statistics of the raw log fbank (the release normalises by 2 * std).
AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974


def _check_spectrogram(cfg: Any, kind: str) -> None:
    """What every frontend config must satisfy: each value's type and range (`validate`), its own
    kind, a window no longer than the FFT, band edges inside [0, sample_rate / 2]."""
    validate.normalise(cfg, validate.frontend_fields(cfg))
    if cfg.kind != kind:
        raise ValueError(f"{type(cfg).__name__}.kind must be {kind!r}, got {cfg.kind!r}")
    if cfg.win_length > cfg.n_fft:
        raise ValueError(f"win_length {cfg.win_length} > n_fft {cfg.n_fft}")
    if not 0 <= cfg.f_min < cfg.f_max <= cfg.sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2, got {cfg.f_min}, {cfg.f_max}")


@dataclass(frozen=True)
class FrontendConfig:
    """MW-MAE's log-mel frontend (torchaudio MelSpectrogram semantics, per-clip normalisation).

    Frames are centred (`center=True`): frame j is centred at sample j * hop_length.
    """

    kind: str = "logmel"
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
        _check_spectrogram(self, "logmel")

    @property
    def first_frame_ms(self) -> float:
        """Where frame 0 is centred, in ms (centred STFT: at sample 0)."""
        return 0.0


@dataclass(frozen=True)
class FbankConfig:
    """Audio-MAE's frontend: torchaudio's `compliance.kaldi.fbank` as the authors call it.

    Per clip: subtract the waveform's mean; frames of `win_length` samples every
    `hop_length` (`snip_edges`: T = 1 + (N - win_length) // hop_length; frame j is centred
    at sample j * hop + win_length / 2); per frame DC removal, pre-emphasis, symmetric Hann
    window, zero-padded FFT of `n_fft`, power, `n_mels` triangular mel bands between
    `f_min` and `f_max` (Kaldi's mel scale), log with floor `log_eps`. Normalised with
    fixed dataset statistics: (x - mean) / (std_scale * std). Padding frames are zeros of
    the *raw* log fbank (normalised: -mean / (std_scale * std)).
    """

    kind: str = "kaldi_fbank"
    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    f_min: float = 20.0
    f_max: float = 8000.0
    n_mels: int = 128
    preemphasis: float = 0.97
    log_eps: float = FLOAT32_EPS
    remove_clip_mean: bool = True
    mean: float = AUDIOSET_MEAN
    std: float = AUDIOSET_STD
    std_scale: float = 2.0

    def __post_init__(self) -> None:
        _check_spectrogram(self, "kaldi_fbank")
        if self.std <= 0 or self.std_scale <= 0:
            raise ValueError("std and std_scale must be > 0")

    @property
    def first_frame_ms(self) -> float:
        """Where frame 0 is centred, in ms (`snip_edges`: half a window after sample 0)."""
        return 1000.0 * self.win_length / 2 / self.sample_rate


AnyFrontendConfig = Union[FrontendConfig, FbankConfig]
FRONTEND_CONFIGS: dict[str, type] = {"logmel": FrontendConfig, "kaldi_fbank": FbankConfig}


def _as_head_windows(value: Any, num_heads: int, what: str) -> tuple[int, ...]:
    """Normalise the release's `window_sizes` argument (0, an int, or a per-head list).

    Returns () for "plain multi-head attention" (the release's `0`), else one int per head.
    """
    if value is None or (validate.is_int(value) and value == 0):
        return ()
    if validate.is_int(value):
        value = [value] * num_heads
    windows = validate.int_sequence(value, what, 0, validate.MAX_TOKENS, max_length=validate.MAX_HEADS)
    if len(windows) == 0:
        return ()
    if len(windows) != num_heads:
        raise ValueError(f"{what}: {len(windows)} window sizes for {num_heads} heads")
    return windows


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a masked autoencoder of either family (encoder + decoder).

    `window_sizes` / `decoder_window_sizes`: one window length per head (0 = global head),
    or () for plain multi-head attention (MW-MHA blocks). `use_cls_token`: a CLS token in
    front of the patch tokens (MW-MAE's plain `MAE` class; every Audio-MAE).
    `decoder_kind`: "mwmha" (pre-norm blocks, global or per-head windows: MW-MAE, MAE,
    Audio-MAE decoder mode 0) or "swin" (Audio-MAE decoder mode 1: Swin-V2-style
    post-norm blocks with cosine attention in `decoder_window` windows of the patch grid;
    `decoder_global_blocks` > 0 makes the last k of them global, our "hybrid" option).
    `shifting_windows`: odd-indexed blocks shift their windows (MW-MAE: by w // 2 along
    the token sequence; Swin: by half a window along time).
    `mask_2d`: Audio-MAE's time x frequency masking (`mask_t_prob`, `mask_f_prob`) instead
    of unstructured masking with `mask_ratio`. `fixed_pos_embed`: position embeddings are
    not trained (Audio-MAE); they are stored in checkpoints either way. `final_norm`: the
    encoder ends with a LayerNorm (False for a fine-tuned Audio-MAE, whose features are
    the last block's tokens).
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
    family: str = "mwmae"
    gelu: str = "tanh"
    decoder_kind: str = "mwmha"
    decoder_window: tuple[int, int] = (4, 4)
    decoder_global_blocks: int = 0
    mask_2d: bool = False
    mask_t_prob: float = 0.7
    mask_f_prob: float = 0.3
    fixed_pos_embed: bool = False
    final_norm: bool = True

    def __post_init__(self) -> None:
        # Every value's type and range first (`validate`: bounds in docs/security.md); lists (from
        # JSON) and the release's int shorthand for windows are accepted, tuples stored.
        validate.normalise(self, validate.model_fields(self))
        for name, value, allowed in (("family", self.family, FAMILIES), ("gelu", self.gelu, GELUS),
                                     ("decoder_kind", self.decoder_kind, DECODER_KINDS)):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        object.__setattr__(
            self, "window_sizes", _as_head_windows(self.window_sizes, self.num_heads, "window_sizes")
        )
        object.__setattr__(
            self,
            "decoder_window_sizes",
            _as_head_windows(self.decoder_window_sizes, self.decoder_num_heads, "decoder_window_sizes"),
        )
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} not divisible by num_heads {self.num_heads}")
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise ValueError(
                f"decoder_embed_dim {self.decoder_embed_dim} not divisible by "
                f"decoder_num_heads {self.decoder_num_heads}"
            )
        if self.use_cls_token and (self.window_sizes or self.decoder_window_sizes):
            raise ValueError("the CLS-token MAE variant takes no window sizes (as in the release)")
        validate.model_consistency(self)
        if not 0.0 <= self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {self.mask_ratio}")
        if not (0.0 <= self.mask_t_prob < 1.0 and 0.0 <= self.mask_f_prob < 1.0):
            raise ValueError(f"mask_t_prob / mask_f_prob must be in [0, 1), got {self.mask_t_prob}, {self.mask_f_prob}")
        if self.decoder_kind == "swin":
            gt, gf = self.grid_size
            wt, wf = self.decoder_window
            if self.decoder_window_sizes:
                raise ValueError("a Swin decoder takes decoder_window (time, freq), not decoder_window_sizes")
            if wt < 1 or wf < 1 or gt % wt or gf % wf:
                raise ValueError(f"decoder_window {self.decoder_window} does not tile the patch grid {self.grid_size}")
            if not 0 <= self.decoder_global_blocks <= self.decoder_depth:
                raise ValueError(f"decoder_global_blocks must be in [0, decoder_depth], got {self.decoder_global_blocks}")
        elif self.decoder_global_blocks:
            raise ValueError("decoder_global_blocks applies to the Swin decoder only")

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
        """Patches kept by masking: unstructured (MW-MAE: the release's rounding-safe formula;
        Audio-MAE: its int(L * (1 - ratio)); they differ for some ratios on 250 patches) or
        2-D (kept time rows x kept frequency columns)."""
        if self.mask_2d:
            return self.mask_2d_keep[0] * self.mask_2d_keep[1]
        if self.family == "audiomae":
            return int(self.num_patches * (1 - self.mask_ratio))
        return int(self.num_patches * (100 - self.mask_ratio * 100) / 100)

    @property
    def mask_2d_keep(self) -> tuple[int, int]:
        """2-D masking: (time rows, frequency columns) kept, as Audio-MAE rounds them."""
        gt, gf = self.grid_size
        return int(gt * (1 - self.mask_t_prob)), int(gf * (1 - self.mask_f_prob))

    @property
    def mask_noise_size(self) -> int:
        """Uniform noise values per sample that decide a mask: one per patch, or (2-D)
        one per time row followed by one per frequency column."""
        return sum(self.grid_size) if self.mask_2d else self.num_patches


POOLINGS = ("mean", "cls", "time")


@dataclass(frozen=True)
class HeadConfig:
    """A classifier on the encoder: pool the last block's tokens -> `fc_norm` (LayerNorm) ->
    dropout -> linear layer with `num_classes` outputs (the Audio-MAE authors' fine-tuned
    `models_vit.VisionTransformer`, `global_pool=True`).

    `pooling`: "mean" = mean of the patch tokens (CLS excluded; the authors' `global_pool`),
    "cls" = the CLS token (models with one), "time" = each frequency patch's mean over time,
    concatenated (grid_f x D: the HEAR scene embedding's layout; ours). `labels`: display names in head order;
    `label_ids`: machine ids (AudioSet mids, ...) in the same order, or () when there are none;
    `label_source`: where the names come from (e.g. "audioset" or a file name), "" = generic
    `class_i` names. `multi_label`: sigmoid scores / binary cross-entropy (AudioSet), else
    softmax / cross-entropy (one class per clip). `dropout`: before the linear layer, in
    training only.
    """

    num_classes: int
    labels: tuple[str, ...]
    label_ids: tuple[str, ...] = ()
    label_source: str = ""
    multi_label: bool = True
    pooling: str = "mean"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        validate.normalise(self, validate.head_fields(self))  # types and ranges (docs/security.md)
        if len(self.labels) != self.num_classes:
            raise ValueError(f"head has {self.num_classes} classes but {len(self.labels)} label names")
        if self.label_ids and len(self.label_ids) != self.num_classes:
            raise ValueError(f"head has {self.num_classes} classes but {len(self.label_ids)} label ids")
        for what, values in (("label names", self.labels), ("label ids", self.label_ids)):
            if not all(isinstance(v, str) and v for v in values):
                raise ValueError(f"head {what} must be non-empty strings")
            if len(set(values)) != len(values):
                dup = sorted({v for v in values if values.count(v) > 1})
                raise ValueError(f"head {what} repeat: {dup[:5]}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"head pooling must be one of {list(POOLINGS)}, got {self.pooling!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"head dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def generic(cls, num_classes: int, **options: Any) -> "HeadConfig":
        """A head whose classes have no known names: class_0, class_1, ..."""
        return cls(num_classes, tuple(f"class_{i}" for i in range(num_classes)), **options)


@dataclass(frozen=True)
class MWMAEConfig:
    """Everything needed to rebuild a model (of either family) and its input pipeline;
    `head` is set for a model with a classifier (fine-tuned), None for an encoder."""

    model: ModelConfig = field(default_factory=ModelConfig)
    frontend: AnyFrontendConfig = field(default_factory=FrontendConfig)
    head: HeadConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model must be a ModelConfig, got {type(self.model).__name__}")
        if not isinstance(self.frontend, (FrontendConfig, FbankConfig)):
            raise TypeError(f"frontend must be a FrontendConfig or FbankConfig, got {type(self.frontend).__name__}")
        if self.head is not None and not isinstance(self.head, HeadConfig):
            raise TypeError(f"head must be a HeadConfig or None, got {type(self.head).__name__}")
        if self.head is not None and self.head.pooling == "cls" and not self.model.use_cls_token:
            raise ValueError("head pooling 'cls' needs a model with a CLS token; use pooling 'mean'")
        if self.model.in_chans != 1:
            raise ValueError("spectrogram models take in_chans=1")
        if self.model.img_size[1] != self.frontend.n_mels:
            raise ValueError(f"model img_size {self.model.img_size} (time, freq) does not match the frontend's "
                             f"{self.frontend.n_mels} mel bands")

    @property
    def family(self) -> str:
        return self.model.family

    @property
    def chunk_frames(self) -> int:
        """Spectrogram frames per encoder input (200 = 2 s for MW-MAE, 1024 for Audio-MAE)."""
        return self.model.img_size[0]

    @property
    def frames_per_step(self) -> int:
        """Frames per timestamp step (the patch height: 4 = 40 ms, 16 = 160 ms)."""
        return self.model.patch_size[0]

    @property
    def hop_ms(self) -> float:
        return 1000.0 * self.frontend.hop_length / self.frontend.sample_rate

    def to_dict(self) -> dict[str, Any]:
        def plain(obj: Any) -> Any:
            if isinstance(obj, tuple):
                return [plain(v) for v in obj]
            return obj

        out = {
            "model": {k: plain(v) for k, v in dataclasses.asdict(self.model).items()},
            "frontend": dataclasses.asdict(self.frontend),
        }
        if self.head is not None:
            out["head"] = {k: plain(v) for k, v in dataclasses.asdict(self.head).items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MWMAEConfig":
        """Inverse of `to_dict`. A frontend without `kind` is the log-mel one (format 1)."""
        if not isinstance(data, dict) or set(data) - {"model", "frontend", "head"}:
            found = validate.names(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"config must be a dict with keys 'model', 'frontend' (and 'head'), got {found}")
        frontend = validate.as_dict(data.get("frontend", {}), "config frontend")
        kind = frontend.get("kind", "logmel")
        if not isinstance(kind, str) or kind not in FRONTEND_CONFIGS:
            raise ValueError(f"unknown frontend kind {validate.brief(kind)}; known: {sorted(FRONTEND_CONFIGS)}")
        head = data.get("head")
        if head is not None and not isinstance(head, dict):
            raise ValueError(f"config head must be a dict or null, got {type(head).__name__}")
        return cls(model=_build(ModelConfig, validate.as_dict(data.get("model", {}), "config model")),
                   frontend=_build(FRONTEND_CONFIGS[kind], frontend),
                   head=None if head is None else _build(HeadConfig, validate.as_dict(head, "config head")))


def _build(kind: type, values: dict[str, Any]) -> Any:
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown {kind.__name__} keys: {validate.names(unknown)}")
    return kind(**values)


def _encoder_size(size: str) -> dict[str, Any]:
    if size not in ENCODER_SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(ENCODER_SIZES)}")
    dim, depth, heads = ENCODER_SIZES[size]
    return {"embed_dim": dim, "depth": depth, "num_heads": heads}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """MW-MAE preset by encoder size name ('tiny' ... 'huge'); released decoder unless overridden.

    >>> model_config("base").embedding_size
    3840
    """
    return ModelConfig(**{**_encoder_size(size), **overrides})


# Audio-MAE's released decoders: mode 1 (Swin, always 16 blocks x 16 heads) and mode 0.
AUDIOMAE_DECODERS: dict[str, dict[str, Any]] = {
    "swin": {"decoder_kind": "swin", "decoder_depth": 16, "decoder_num_heads": 16},
    "global": {"decoder_kind": "mwmha", "decoder_depth": 8, "decoder_num_heads": 16},
}


def audiomae_config(size: str = "base", decoder: str = "swin", **overrides: Any) -> ModelConfig:
    """Audio-MAE preset: ViT of `size` on (1024, 128) fbank with 16 x 16 patches and a CLS
    token, exact GELU, fixed position embeddings, 512-d decoder (`decoder`: "swin" = the
    released mode 1, "global" = mode 0), mask ratio 0.8, `norm_pix_loss`.

    >>> audiomae_config("base").embedding_size
    6144
    """
    if decoder not in AUDIOMAE_DECODERS:
        raise ValueError(f"unknown Audio-MAE decoder {decoder!r}; choose from {sorted(AUDIOMAE_DECODERS)}")
    values: dict[str, Any] = {
        **_encoder_size(size), "family": "audiomae", "img_size": (1024, 128), "patch_size": (16, 16),
        "use_cls_token": True, "gelu": "erf", "fixed_pos_embed": True, "decoder_embed_dim": 512,
        "decoder_window_sizes": (), "decoder_window": (4, 4), "shifting_windows": True,
        "norm_pix_loss": True, "mask_ratio": 0.8, **AUDIOMAE_DECODERS[decoder],
    }
    return ModelConfig(**{**values, **overrides})


def default_frontend(model: ModelConfig) -> AnyFrontendConfig:
    """The frontend a family's models are trained with."""
    return FbankConfig() if model.family == "audiomae" else FrontendConfig()
