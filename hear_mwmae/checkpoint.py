"""Our checkpoint format: one file holding the config, the state dict and provenance.

`.pt`: a plain dict loadable with `torch.load(weights_only=True)`:
    {"format": "hear-mwmae", "format_version": 3, "config": MWMAEConfig.to_dict(),
     "encoder_only": bool, "provenance": {...}, "state_dict": {key: tensor}}
`.safetensors`: the state dict, with format/config/provenance as JSON strings in the metadata.
State-dict keys: `encoder.*`, `decoder.*` (absent when `encoder_only`) and, for a model with
a classifier (config `head`), `classifier.fc_norm.*` / `classifier.head.*`.
Format 3 adds the optional classifier head; format 2 (both model families) added the
frontend `kind` and the model `family`; older files are migrated on load (`migrate`).

`load_checkpoint` accepts a local file, a folder of our Hub layout (`hub.py`: model.safetensors +
config.json + README.md), or an authors' run directory or Audio-MAE checkpoint (converted on the fly). Names, the Hub (`hf://`) and sha256 pins are resolved to a local path
one level up, in `sources.py` (`sources.load_checkpoint`, which `hear_mwmae.load_model` uses).
Loading never unpickles code (the one class allowed besides tensors and containers is the
`argparse.Namespace` inside the Audio-MAE authors' files).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .config import MWMAEConfig
from .files import atomic_write, describe_magic, safe_reason

log = logging.getLogger(__name__)

FORMAT = "hear-mwmae"
FORMAT_VERSION = 3
ENCODER_PREFIX = "encoder."
DECODER_PREFIX = "decoder."
PRETRAIN_HINT = "export a model from it with `hear-mwmae pretrain-export {run} OUT.pt`"


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
        return _strip(self.state_dict, ENCODER_PREFIX)

    def classifier_state_dict(self) -> dict[str, torch.Tensor]:
        """The classifier's weights (`fc_norm.*`, `head.*`); empty for a model without one."""
        from .classifier import PREFIX

        return _strip(self.state_dict, PREFIX)


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


# ----------------------------------------------------------------------------- saving
def save_checkpoint(path: str | Path, config: MWMAEConfig, state_dict: dict[str, torch.Tensor], *,
                    provenance: dict[str, Any] | None = None, encoder_only: bool = False) -> Path:
    """Write a checkpoint atomically (`.pt` or `.safetensors`, by suffix). Returns the path.

    `state_dict` holds full-model keys (`encoder.*`, `decoder.*`, `classifier.*` when the
    config has a head); with `encoder_only` the decoder weights are left out.
    """
    from .classifier import PREFIX

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()
             if not (encoder_only and k.startswith(DECODER_PREFIX))}
    if not any(k.startswith(ENCODER_PREFIX) for k in state):
        raise ValueError("state_dict has no 'encoder.*' keys: pass the full MWMAE state dict")
    if (config.head is not None) != any(k.startswith(PREFIX) for k in state):
        raise ValueError("the config has a classifier head but the state dict has no 'classifier.*' keys"
                         if config.head is not None else
                         "the state dict has 'classifier.*' keys but the config has no head")
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
def migrate(obj: dict[str, Any], where: str) -> dict[str, Any]:
    """Bring a checkpoint payload of an older format version up to FORMAT_VERSION.

    1 -> 2: format 1 held MW-MAE models only, so its config gets frontend kind "logmel"
    and model family "mwmae" (every other new field's default is MW-MAE's behaviour).
    2 -> 3: format 3 adds an optional classifier head; a format 2 file has none.
    """
    version = int(obj.get("format_version", -1))
    if version == 1:
        config = dict(obj.get("config") or {})
        config["frontend"] = {"kind": "logmel", **dict(config.get("frontend") or {})}
        config["model"] = {"family": "mwmae", **dict(config.get("model") or {})}
        obj = {**obj, "config": config, "format_version": 2,
               "provenance": {**dict(obj.get("provenance") or {}), "migrated_from_format": 1}}
        version = 2
    if version == 2:
        obj = {**obj, "format_version": 3}
        version = 3
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{where}: format_version {version} unsupported (this package reads "
                              f"1 to {FORMAT_VERSION}; a newer hear-mwmae wrote it?)")
    return obj


def _from_payload(obj: Any, where: str) -> Checkpoint:
    """A loaded payload -> Checkpoint, every part checked before anything is built from it:
    the config's values (`validate`), then the state dict's tensors, names and shapes against
    the config and their finiteness (`state_checks`)."""
    from .payload_checks import checked_payload, format_version_ok

    if isinstance(obj, dict) and obj.get("format") == "hear-mwmae-train":
        raise CheckpointError(f"{where}: a pre-training state (hear-mwmae pretrain), not a model checkpoint; "
                              + PRETRAIN_HINT.format(run=Path(where).parent))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{where}: not a hear-mwmae checkpoint (no format={FORMAT!r} marker)")
    if not format_version_ok(obj.get("format_version", -1)):
        raise CheckpointError(f"{where}: format_version is not an integer")
    try:
        config, state, encoder_only, provenance = checked_payload(migrate(obj, where))
    except CheckpointError:
        raise
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{where}: {exc}") from exc
    return Checkpoint(config, state, encoder_only, provenance)


def _load_safetensors(path: Path) -> Checkpoint:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            payload = {"format": meta.get("format"), "format_version": meta.get("format_version", -1),
                       "config": json.loads(meta["config"]),
                       "encoder_only": json.loads(meta.get("encoder_only", "false")),
                       "provenance": json.loads(meta.get("provenance", "{}"))}
            payload["state_dict"] = {k: fh.get_tensor(k) for k in fh.keys()}
    except (KeyError, ValueError, RecursionError) as exc:  # (bad JSON, an int of > 4300 digits)
        raise CheckpointError(f"{path}: safetensors file without valid hear-mwmae metadata "
                              f"({type(exc).__name__}: {safe_reason(exc)})") from exc
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable safetensors file: {safe_reason(exc).split(':')[0]}") from exc
    return _from_payload(payload, str(path))


_AUDIO_MAGIC = (b"RIFF", b"RIFX", b"fLaC", b"OggS", b"ID3", b"FORM", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2",
                b"\xff\xf1", b"\xff\xf9", b".snd")


def _head(path: Path, n: int = 16) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(n)


def sniff(path: Path) -> str:
    """What a file looks like from its first bytes: "torch" (zip or legacy pickle), "safetensors",
    "msgpack" (a Flax checkpoint), "audio", or "unknown"."""
    from .convert import is_msgpack_map

    head = _head(path)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    if len(head) > 8 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 1 << 30:
        return "safetensors"
    if head.startswith(_AUDIO_MAGIC) or head[4:8] == b"ftyp":
        return "audio"
    if is_msgpack_map(path):
        return "msgpack"
    return "unknown"


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Load our checkpoint (.pt / .safetensors) or an authors' run directory / file, from a local path
    (`sources.load_checkpoint` also takes names and `hf://` references)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found (names and hf:// references load through "
                                f"hear_mwmae.load_model or hear_mwmae.sources.load_checkpoint)")
    if path.is_dir():
        from .hub import is_pretrained_dir, load_pretrained_dir

        if is_pretrained_dir(path):  # our Hub layout (save_pretrained): config.json + model.safetensors
            return load_pretrained_dir(path)
        if (path / "train_config.json").exists() or (path / "checkpoint.pt").exists():
            raise CheckpointError(f"{path}: a pre-training run directory, not a model checkpoint; "
                                  + PRETRAIN_HINT.format(run=path))
        from .convert import is_orbax_dir

        if not (path / "config.json").exists() and not is_orbax_dir(path):  # orbax checkpoint_<step>/ converts too
            raise CheckpointError(f"{path}: a directory, but not an authors' run directory (no config.json)")
        return from_converted(path)
    kind = sniff(path)
    if path.suffix == ".safetensors" or kind == "safetensors":
        return _load_safetensors(path)
    if kind == "audio":
        raise CheckpointError(f"{path}: an audio file, not a model checkpoint; pass a .pt / .safetensors file, an "
                              f"authors' run directory or a released model's name (`hear-mwmae fetch --list`)")
    if kind == "unknown":
        head = _head(path)
        raise CheckpointError(f"{path}: not a model checkpoint: neither a torch file, a safetensors file nor an "
                              f"authors' Flax msgpack checkpoint ({describe_magic(head)})")
    if kind == "msgpack":
        raise CheckpointError(f"{path}: looks like an authors' Flax msgpack checkpoint; convert it with "
                              f"`hear-mwmae convert RUN_DIR OUT.pt` (or pass the run directory)")
    obj = _load_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") != FORMAT:
        from .convert.audiomae import is_audiomae_payload

        if is_audiomae_payload(obj):
            return _from_authors_payload(obj, path)
    return _from_payload(obj, str(path))


def _load_torch_file(path: Path) -> Any:
    """`torch.load(weights_only=True)`, allowing one class besides tensors and plain containers:
    `argparse.Namespace`, which the Audio-MAE authors' files pickle (their training args).
    Anything else is refused, never executed."""
    from .convert import ConversionError
    from .convert.audiomae import load_pickle_safely

    try:
        return load_pickle_safely(path)
    except ConversionError as exc:
        raise CheckpointError(str(exc)) from exc


def _from_authors_payload(obj: Any, path: Path) -> Checkpoint:
    """An Audio-MAE authors' checkpoint (already loaded), converted on the fly."""
    from .convert import ConversionError
    from .convert.audiomae import convert_payload

    log.warning("converting %s on the fly; convert once with `hear-mwmae convert %s OUT.pt` to load faster",
                path, path)
    try:
        c = convert_payload(obj, path)
    except ConversionError as exc:
        raise CheckpointError(str(exc)) from exc
    return Checkpoint(c.config, c.state_dict, c.encoder_only, c.provenance)


def from_converted(source: Path) -> Checkpoint:
    """Convert an authors' checkpoint on the fly (slow for big files: say how to do it once)."""
    from .convert import convert_source

    log.warning("converting %s on the fly; convert once with `hear-mwmae convert %s OUT.pt` to load faster",
                source, source)
    converted = convert_source(source)
    return Checkpoint(converted.config, converted.state_dict, converted.encoder_only, converted.provenance)


def _check_parts(ckpt: Checkpoint, parts: tuple[str, ...]) -> None:
    """The checkpoint's weights of `parts` have the config's names and shapes (before a module
    of those parts is built; `load_checkpoint` checked this already, a hand-made one may not be)."""
    from .state_checks import WeightsError, check_against_config, part_of

    try:
        check_against_config(ckpt.config, part_of(ckpt.state_dict, parts), parts)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from exc


def build_encoder(ckpt: Checkpoint) -> torch.nn.Module:
    """The frozen-config encoder with the checkpoint's weights, strictly loaded, in eval mode.
    The weights' names and shapes are checked against the config before the module is built."""
    from .model import Encoder

    _check_parts(ckpt, ("encoder",))
    encoder = Encoder(ckpt.config.model)
    try:
        encoder.load_state_dict(ckpt.encoder_state_dict(), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match its config: {exc}") from exc
    return encoder.eval()


def build_classifier(ckpt: Checkpoint) -> torch.nn.Module:
    """The checkpoint's classifier head (`classifier.Classifier`), strictly loaded, in eval mode.
    Raises `NoClassifierError` (a ValueError) for a model without one."""
    from .classifier import Classifier, NoClassifierError

    if ckpt.config.head is None:
        raise NoClassifierError(NO_HEAD)
    _check_parts(ckpt, ("classifier",))
    head = Classifier(ckpt.config.model, ckpt.config.head)
    try:
        head.load_state_dict(ckpt.classifier_state_dict(), strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"classifier weights do not match the config's head: {exc}") from exc
    return head.eval()


NO_HEAD = ("this model has no classifier head (it is an encoder for embeddings): load a fine-tuned model, e.g. "
           "`hear-mwmae fetch audiomae-base-as2m-ft` then load_model('audiomae-base-as2m-ft'), or fine-tune one "
           "with `hear-mwmae finetune --model M --task DATA --out RUN` and load RUN/model.pt")


def build_mwmae(ckpt: Checkpoint) -> torch.nn.Module:
    """The full masked autoencoder (needs a checkpoint that is not encoder-only); names and
    shapes are checked against the config before the module is built."""
    from .model import MWMAE

    if ckpt.encoder_only:
        raise CheckpointError("this checkpoint is encoder-only; the decoder is needed for pre-training")
    _check_parts(ckpt, ("encoder", "decoder"))
    model = MWMAE(ckpt.config.model)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not match its config: {exc}") from exc
    return model
