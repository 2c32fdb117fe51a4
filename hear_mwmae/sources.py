"""Model references -> local files: released names, the bundled demo, `hf://`, paths.

    resolve("demo-tiny")                       the demo checkpoint shipped inside the package
    resolve("mwmae-base-4x16-4l")              a released model, fetched once into the cache
    resolve("hf://owner/repo/path/file.pt@v1") a file through huggingface_hub's cache
    resolve("hf://owner/repo[@rev]")           a whole repo (config.json + model.safetensors): its folder,
                                               our Hub layout (`hub.py`) or a timm-layout Audio-MAE
    resolve("runs/mine.pt")                    a path (it must exist)
    load_checkpoint(ref, sha256=None)          resolve, then `checkpoint.load_checkpoint`

Layering: `checkpoint.py` (our file format) knows nothing of names or the Hub;
`registry.py` (the released models, `fetch`, the cache) saves through `checkpoint.py`;
this module sits above both. Every "cannot get this model" message is written here, and
each names the route that works for that kind of reference (fetch a released name, the
Hub's own download command for `hf://`, ...).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from . import registry
from .checkpoint import Checkpoint, CheckpointError
from .checkpoint import load_checkpoint as load_checkpoint_file
from .errors import require
from .files import describe_missing, sha256_file

DATA_DIR = Path(__file__).resolve().parent / "data"  # package data (pyproject: [tool.setuptools.package-data])
BUNDLED = {"demo-tiny": "demo-tiny.pt"}  # name -> file in DATA_DIR (weights/DEMO.md)
HUB_EXTRA = "hub"

_HF_FILE = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)/(?P<file>[^@]+?)(?:@(?P<rev>[^@]+))?$")
_HF_REPO = re.compile(r"^hf://(?P<repo>[^/@]+/[^/@]+)(?:@(?P<rev>[^/@]+))?$")  # a whole (timm-layout) repo


def known_names() -> str:
    """The names `resolve` accepts, for messages."""
    return ", ".join([*(f"{n} (bundled)" for n in BUNDLED), *registry.names()])


def how_to_get_models() -> str:
    """What can be passed as a model, for messages about a reference that did not resolve."""
    return (f"pass a .pt / .safetensors file, an authors' checkpoint (MW-MAE run directory, Audio-MAE .pth, timm "
            f"folder), hf://owner/repo[/file], or a name: {known_names()} (`hear-mwmae fetch --list`)")


def bundled_file(name: str) -> Path:
    """The checkpoint shipped inside the package under `name` (see BUNDLED)."""
    path = DATA_DIR / BUNDLED[name]
    if not path.is_file():
        raise FileNotFoundError(f"the bundled model {name!r} is missing from this installation ({path}); "
                                f"reinstall hear-mwmae")
    return path


def resolve(ref: str | Path, sha256: str | None = None) -> Path:
    """A model reference (see the module docstring) -> a local file or folder, hash-checked
    against `sha256` when given (for a folder: its weights file, `_weights_file`).

    Raises FileNotFoundError (nothing there; the message says how to get it),
    MissingDependency (`hf://` without huggingface_hub), ValueError (a malformed `hf://`),
    CheckpointError (the sha256 pin does not match).
    """
    text = str(ref)
    if text.startswith("hf://"):
        path = _from_hub(text)
    elif text in BUNDLED:
        path = bundled_file(text)
    elif text in registry.MODELS or (registry.is_name(text) and not os.path.lexists(text)):  # `hear-mwmae fetch NAME`
        if text not in registry.MODELS:
            raise FileNotFoundError(f"{text!r}: no such file, and not a model name; {how_to_get_models()}")
        path = registry.cached_file(text)
    else:
        path = Path(ref).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"model {path}: {describe_missing(path)}; {how_to_get_models()}")
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
    if text in registry.MODELS:
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
    hub = require("huggingface_hub", "to load hf:// references", extra=HUB_EXTRA)
    repo, file, rev = m["repo"], m.groupdict().get("file"), m["rev"]
    try:
        if file:
            return Path(hub.hf_hub_download(repo, file, revision=rev))
        folder = Path(hub.snapshot_download(repo, revision=rev, allow_patterns=["config.json", "model.safetensors"]))
        if not (folder / "model.safetensors").is_file():
            folder = Path(hub.snapshot_download(repo, revision=rev,
                                                allow_patterns=["config.json", "pytorch_model.bin"]))
        return folder
    except Exception as exc:  # huggingface_hub's error types differ between its versions: sorted by name
        raise FileNotFoundError(_hub_failure(text, repo, file, rev, exc)) from exc


def _hub_failure(text: str, repo: str, file: str | None, rev: str | None, exc: BaseException) -> str:
    """One line saying why huggingface_hub could not deliver `text`, and what to do."""
    kinds = {c.__name__ for c in type(exc).__mro__}
    what = f"{repo}{'/' + file if file else ''}{'@' + rev if rev else ''}"
    if "LocalEntryNotFoundError" in kinds or "OfflineModeIsEnabled" in kinds:
        download = (f"hf download {repo}{' ' + file if file else ''}{' --revision ' + rev if rev else ''} "
                    f"--local-dir DIR")
        return (f"cannot get {text}: it is not in the local Hugging Face cache and the Hub cannot be reached "
                f"(offline, or HF_HUB_OFFLINE=1). Download it where there is a network (`{download}`, the "
                f"huggingface_hub command line), copy DIR here and pass {'DIR/' + file if file else 'DIR'} instead")
    if "GatedRepoError" in kinds:
        return (f"cannot get {text}: the Hub repository {repo} is gated; accept its terms on huggingface.co and "
                f"log in (`hf auth login`)")
    if "RepositoryNotFoundError" in kinds:
        return f"cannot get {text}: the Hugging Face Hub has no repository {repo} (or it is private: log in first)"
    if "RevisionNotFoundError" in kinds:
        return f"cannot get {text}: the Hub repository {repo} has no revision {rev!r}"
    if "EntryNotFoundError" in kinds:
        return f"cannot get {text}: the Hub repository has no file {what}"
    detail = " ".join(str(exc).split())
    return f"cannot get {text} from the Hugging Face Hub ({type(exc).__name__}: {detail})"


__all__ = ["BUNDLED", "bundled_file", "checkpoint_sha256", "how_to_get_models", "known_names", "load_checkpoint",
           "resolve"]
