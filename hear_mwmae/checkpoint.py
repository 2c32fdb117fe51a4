"""Our checkpoint format: one file holding the config, the state dict and provenance.

`.pt`: a plain dict loadable with `torch.load(weights_only=True)`:
    {"format": "hear-mwmae", "format_version": 1, "config": MWMAEConfig.to_dict(),
     "encoder_only": bool, "provenance": {...}, "state_dict": {key: tensor}}
`.safetensors`: the state dict, with format/config/provenance as JSON strings in the metadata.

`load_checkpoint` accepts a local file, an authors' run directory (converted on the fly),
or a Hugging Face Hub reference `hf://owner/repo/path/file.pt[@revision]`, with an optional
sha256 pin. Loading never unpickles code.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import MWMAEConfig
from .files import atomic_write, sha256_file

log = logging.getLogger(__name__)

FORMAT = "hear-mwmae"
FORMAT_VERSION = 1
ENCODER_PREFIX = "encoder."
HOW_TO_GET_WEIGHTS = (
    "See weights/README.md: convert the authors' released run directory with "
    "`hear-mwmae convert RUN_DIR weights/base.pt`, or use the bundled demo `weights/demo-tiny.pt`."
)


class CheckpointError(ValueError):
    """The file exists but is not a valid hear-mwmae checkpoint; the message says why."""


@dataclass(frozen=True)
class Checkpoint:
    config: MWMAEConfig
    state_dict: dict[str, torch.Tensor]
    encoder_only: bool = False
    provenance: dict[str, Any] = field(default_factory=dict)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights with the `encoder.` prefix removed."""
        n = len(ENCODER_PREFIX)
        return {k[n:]: v for k, v in self.state_dict.items() if k.startswith(ENCODER_PREFIX)}


# ----------------------------------------------------------------------------- saving
def save_checkpoint(path: str | Path, config: MWMAEConfig, state_dict: dict[str, torch.Tensor], *,
                    provenance: dict[str, Any] | None = None, encoder_only: bool = False) -> Path:
    """Write a checkpoint atomically (`.pt` or `.safetensors`, by suffix). Returns the path.

    `state_dict` holds full-model keys (`encoder.*`, `decoder.*`); with `encoder_only`
    the decoder weights are left out.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()
             if not encoder_only or k.startswith(ENCODER_PREFIX)}
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        raise ValueError("state_dict has no 'encoder.*' keys: pass the full MWMAE state dict")
    provenance = dict(provenance or {})
    if path.suffix == ".safetensors":
        from safetensors.torch import save

        meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION),
                "config": json.dumps(config.to_dict()), "encoder_only": json.dumps(encoder_only),
                "provenance": json.dumps(provenance)}
        payload = save({k: v.clone() for k, v in state.items()}, metadata=meta)
        with atomic_write(path) as fh:
            fh.write(payload)
    else:
        with atomic_write(path) as fh:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
                        "encoder_only": encoder_only, "provenance": provenance, "state_dict": state}, fh)
    return path


# ----------------------------------------------------------------------------- loading
_HF_REF = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)/(?P<file>[^@]+?)(?:@(?P<rev>[^@]+))?$")


def resolve(ref: str | Path, sha256: str | None = None) -> Path:
    """Local path or `hf://owner/repo/path/file[@revision]` -> local file, hash-checked if pinned.

    Hub files come through `huggingface_hub` (its cache; `HF_HUB_OFFLINE=1` is honoured).
    """
    text = str(ref)
    if text.startswith("hf://"):
        m = _HF_REF.match(text)
        if not m:
            raise ValueError(f"bad Hub reference {text!r}; expected hf://owner/repo/path/file.pt[@revision]")
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # optional dependency
            raise ImportError("loading from the Hub needs `pip install huggingface_hub`") from exc
        try:
            path = Path(hf_hub_download(m["repo"], m["file"], revision=m["rev"]))
        except Exception as exc:
            raise FileNotFoundError(
                f"could not get {text} from the Hugging Face Hub or its local cache "
                f"({type(exc).__name__}: {exc}). {HOW_TO_GET_WEIGHTS}") from exc
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} not found. {HOW_TO_GET_WEIGHTS}")
    if sha256 is not None:
        actual = sha256_file(path)
        if actual.lower() != sha256.lower():
            raise CheckpointError(f"{text}: sha256 {actual} does not match the pinned {sha256}")
    return path


def _from_payload(obj: Any, where: str) -> Checkpoint:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a hear-mwmae checkpoint (no format={FORMAT!r} marker)")
    version = int(obj.get("format_version", -1))
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version} unsupported (this package reads {FORMAT_VERSION})")
    try:
        config = MWMAEConfig.from_dict(obj["config"])
        state = obj["state_dict"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: malformed checkpoint: {exc}") from exc
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{where}: state_dict is not a dict of tensors")
    return Checkpoint(config, state, bool(obj.get("encoder_only", False)), dict(obj.get("provenance") or {}))


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
        payload = {"format": meta.get("format"), "format_version": meta.get("format_version", -1),
                   "config": json.loads(meta["config"]), "encoder_only": json.loads(meta.get("encoder_only", "false")),
                   "provenance": json.loads(meta.get("provenance", "{}")), "state_dict": state}
    except (KeyError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: safetensors file without hear-mwmae metadata ({exc})") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file: {exc}") from exc
    return _from_payload(payload, str(path))


def load_checkpoint(ref: str | Path, sha256: str | None = None) -> Checkpoint:
    """Load our checkpoint (.pt / .safetensors), a Hub reference, or an authors' run directory."""
    path = resolve(ref, sha256)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise CheckpointError(f"{path}: a directory, but not an authors' run directory (no config.json)")
        from .convert import convert_run_dir

        log.warning("converting the authors' run directory %s on the fly; convert once with "
                    "`hear-mwmae convert %s OUT.pt` to load faster", path, path)
        converted = convert_run_dir(path)
        return Checkpoint(converted.config, converted.state_dict, False, converted.provenance)
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:1] and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF)):  # a msgpack map, not a zip
        raise CheckpointError(f"{path}: looks like an authors' Flax msgpack checkpoint; convert it with "
                              f"`hear-mwmae convert RUN_DIR OUT.pt` (or pass the run directory)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused: the file contains pickled objects other than tensors and plain "
            f"containers (only weights_only loading is allowed): {str(exc).splitlines()[0]}") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable torch checkpoint (truncated or corrupt?): {exc}") from exc
    return _from_payload(obj, str(path))


def build_encoder(ckpt: Checkpoint) -> torch.nn.Module:
    """The frozen-config encoder with the checkpoint's weights, strictly loaded, in eval mode."""
    from .model import Encoder

    encoder = Encoder(ckpt.config.model)
    try:
        encoder.load_state_dict(ckpt.encoder_state_dict(), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match its config: {exc}") from exc
    return encoder.eval()


def build_mwmae(ckpt: Checkpoint) -> torch.nn.Module:
    """The full masked autoencoder (needs a checkpoint that is not encoder-only)."""
    from .model import MWMAE

    if ckpt.encoder_only:
        raise CheckpointError("this checkpoint is encoder-only; the decoder is needed for pre-training")
    model = MWMAE(ckpt.config.model)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match its config: {exc}") from exc
    return model
