"""Model references -> local files: released names, `hf://`, paths.

    resolve("mwmae-base-4x16-4l")              a released model, fetched once into the cache
    resolve("hf://owner/repo/path/file.pt@v1") a file through huggingface_hub's cache
    resolve("hf://owner/repo[@rev]")           a whole repo (config.json + model.safetensors): its folder,
                                               our Hub layout (`hub.py`) or a timm-layout Audio-MAE
    resolve("runs/mine.pt")                    a path (it must exist)
    load_checkpoint(ref, sha256=None)          resolve, then `checkpoint.load_checkpoint`

Layering: `checkpoint.py` (our file format) knows nothing of names or the Hub;
`registry.py` (the released models, `fetch`, the cache) saves through `checkpoint.py`;
this module sits above both, so that every "cannot get this model" path lives here.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from . import registry
from .checkpoint import Checkpoint, CheckpointError
from .checkpoint import load_checkpoint as load_checkpoint_file
from .files import sha256_file

HOW_TO_GET_WEIGHTS = (
    "Get the authors' model with `hear-mwmae fetch mwmae-base-4x16-4l` (then load it by that name), "
    "convert a run directory by hand (weights/README.md), or use the bundled demo `weights/demo-tiny.pt`."
)

_HF_FILE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)/(?P<file>[^@]+?)(?:@(?P<rev>[^@]+))?$")
_HF_REPO = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/@]+))?$")  # a whole (timm-layout) repo


def resolve(ref: str | Path, sha256: str | None = None) -> Path:
    """A model reference (see the module docstring) -> a local file or folder, hash-checked
    against `sha256` when given (for a folder: its weights file, `_weights_file`).

    Hub files come through `huggingface_hub` (its cache; `HF_HUB_OFFLINE=1` is honoured).
    """
    text = str(ref)
    if text.startswith("hf://"):
        path = _from_hub(text)
    elif registry.is_name(text):  # a released model fetched into the cache (`hear-mwmae fetch NAME`)
        path = registry.cached_file(text)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} not found. {HOW_TO_GET_WEIGHTS}")
    if sha256 is not None:
        actual = sha256_file(_weights_file(path))
        if actual.lower() != sha256.lower():
            raise CheckpointError(f"{text}: sha256 {actual} does not match the pinned {sha256}")
    return path


def load_checkpoint(ref: str | Path, sha256: str | None = None) -> Checkpoint:
    """Load any model reference (see the module docstring) as a `Checkpoint`."""
    return load_checkpoint_file(resolve(ref, sha256))


def checkpoint_sha256(ref: str | Path) -> str:
    """The sha256 identifying a model reference's bytes: the file's, the record's for a fetched
    name (its file was just checked against it), or for a run / timm folder the sha256 of its
    config.json's and weights' sha256s."""
    text = str(ref)
    if not text.startswith("hf://") and registry.is_name(text):
        registry.cached_file(text)
        return str((registry.read_record(text) or {})["sha256"])
    path = resolve(ref)
    if path.is_file():
        return sha256_file(path)
    from .convert import ConversionError, find_checkpoint

    try:
        weights = find_checkpoint(path)
    except ConversionError:
        weights = _weights_file(path)
    parts = [path / "config.json", *([weights] if weights.is_file() else sorted(weights.rglob("*")))]
    digests = [f"{p.relative_to(path)}:{sha256_file(p)}" for p in parts if p.is_file()]
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def _weights_file(path: Path) -> Path:
    """What a sha256 pin covers: the file itself, or a folder's weights file (our Hub layout's
    model.safetensors, whose metadata holds the config too; a timm folder's weights)."""
    if not path.is_dir():
        return path
    from .hub import WEIGHTS_FILE, is_pretrained_dir

    if is_pretrained_dir(path):
        return path / WEIGHTS_FILE
    from .convert.audiomae import timm_weights_file

    return timm_weights_file(path)


# ----------------------------------------------------------------------------- the Hub
def _from_hub(text: str) -> Path:
    """`hf://owner/repo/path/file[@rev]` -> the cached file; `hf://owner/repo[@rev]` -> the snapshot folder
    with config.json and model.safetensors (our layout or timm's; timm's may hold pytorch_model.bin)."""
    m = _HF_FILE.match(text) or _HF_REPO.match(text)
    if not m:
        raise ValueError(f"bad Hub reference {text!r}; expected hf://owner/repo/path/file.pt[@revision] "
                         "or hf://owner/repo[@revision]")
    try:
        import huggingface_hub as hub
    except ImportError as exc:  # optional dependency
        raise ImportError("loading from the Hub needs `pip install huggingface_hub`") from exc
    repo, file, rev = m["repo"], m.groupdict().get("file"), m["rev"]
    try:
        if file:
            return Path(hub.hf_hub_download(repo, file, revision=rev))
        folder = Path(hub.snapshot_download(repo, revision=rev, allow_patterns=["config.json", "model.safetensors"]))
        if not (folder / "model.safetensors").is_file():
            folder = Path(hub.snapshot_download(repo, revision=rev, allow_patterns=["config.json", "pytorch_model.bin"]))
        return folder
    except Exception as exc:
        raise FileNotFoundError(
            f"could not get {text} from the Hugging Face Hub or its local cache "
            f"({type(exc).__name__}: {exc}). {HOW_TO_GET_WEIGHTS}") from exc


__all__ = ["checkpoint_sha256", "load_checkpoint", "resolve"]
