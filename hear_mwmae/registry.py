"""The authors' released checkpoints by name: where they are, what they hold, how to fetch them.

    hear-mwmae fetch mwmae-base-4x16-4l            # download, convert, record the sha256s
    hear_mwmae.load_model("mwmae-base-4x16-4l")    # the cached, converted, hash-checked file

Sources:
- MW-MAE (kind "mwmae-run"): the Google Drive folder linked as "Pre-trained weights for the
  default configurations" in the README of github.com/SarthakYadav/mwmae-jax-official. Its
  HEAR configs (`hear_configs/*.py`) load one run directory per model from that folder; a
  run directory holds `config.json` (the training config, `model.arch` +
  `model.model_args`) and `checkpoint_<step>` (Flax msgpack file or orbax directory).
- Audio-MAE (kind "audiomae-file"): the two files the README of
  github.com/facebookresearch/AudioMAE links under "Checkpoints" (Google Drive, one file
  each): the AS-2M pre-trained ViT-B (`pretrained.pth`, with its Swin decoder) and the
  AS-2M fine-tuned one (`finetuned.pth`, encoder and AudioSet classifier: `tag` uses both,
  HEAR the last block).

- A copy in our Hugging Face Hub layout (`hub_repo` set; see docs/checkpoints.md): a model we
  converted and published with `hear-mwmae push-to-hub`, pinned to a commit (`hub_revision`)
  and the sha256 of its `model.safetensors` (`hub_sha256`). When a released name has one,
  `fetch` takes it through `huggingface_hub` (its cache) instead of the authors' files
  (`from_authors=True`, `hear-mwmae fetch --from-authors`, converts the originals instead).
  No released name points at one yet.

Licences (`ReleasedModel.license`, SPDX ids; shown by `fetch --list`, `info` and model cards):
the MW-MAE release (code and weights) is Apache-2.0; the Audio-MAE repository and its weights
are CC-BY-NC-4.0, non-commercial. A fetched model carries its licence in its provenance.

Cache: `cache_dir()` = the argument, else $HEAR_MWMAE_CACHE, else
$XDG_CACHE_HOME/hear-mwmae, else ~/.cache/hear-mwmae. A fetched model is two files:
`NAME.pt` (our checkpoint, encoder and decoder) and `NAME.json` (what was downloaded, with
the sha256 of each source file and of `NAME.pt`). The record is written last, after the
checkpoint has been renamed into place, so a fetch that dies half-way is never "done";
loading checks the checkpoint against the recorded sha256 every time.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .checkpoint import CheckpointError, save_checkpoint
from .config import ModelConfig
from .files import atomic_write, sha256_file

log = logging.getLogger(__name__)

RELEASE_REPO = "https://github.com/SarthakYadav/mwmae-jax-official"
RELEASE_FOLDER = "https://drive.google.com/drive/folders/1tM723MLFJRaWVmLVjE49pJ0Yi3lpMZHV"
AUDIOMAE_REPO = "https://github.com/facebookresearch/AudioMAE"
KINDS = ("mwmae-run", "audiomae-file")
CACHE_ENV = "HEAR_MWMAE_CACHE"
GDOWN_HINT = "pip install 'hear-mwmae[fetch]' (or pip install gdown)"

_ARGS = {"mask_ratio": 0.8, "img_size": [200, 80], "patch_size": [4, 16],
         "decoder_num_heads": 8, "decoder_depth": 4, "decoder_embed_dim": 384}


@dataclass(frozen=True)
class ReleasedModel:
    """One released checkpoint: where it lies and what the converter must make of it.

    kind "mwmae-run": `run_dir` inside RELEASE_FOLDER, whose config.json "model" section is
    `release_model`. kind "audiomae-file": one Google Drive file (`drive_file_id`, saved as
    `file_name`); `expected` lists the model config fields its conversion must have.
    """

    name: str
    title: str  # the paper's name for it
    run_dir: str = ""  # mwmae-run: folder name inside RELEASE_FOLDER (from the release's hear_configs/*.py)
    release_model: dict[str, Any] = dataclasses.field(default_factory=dict)  # mwmae-run: config.json's "model"
    hear_config: str = ""  # mwmae-run: the release's file that loads this run
    notes: str = ""
    kind: str = "mwmae-run"
    drive_file_id: str = ""  # audiomae-file
    file_name: str = ""  # audiomae-file: the name the authors' scripts use
    expected: dict[str, Any] = dataclasses.field(default_factory=dict)  # audiomae-file: ModelConfig fields
    license: str = ""  # SPDX id of the weights' licence ("" = not stated)
    datasets: tuple[str, ...] = ()  # the data it was trained on (model cards)
    hub_repo: str = ""  # "owner/name": a copy in our Hub layout, fetched instead of the authors' files
    hub_revision: str = ""  # the commit of hub_repo to take
    hub_sha256: str = ""  # sha256 of that commit's model.safetensors

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")

    @property
    def filename(self) -> str:
        return f"{self.name}.pt"

    @property
    def source_url(self) -> str:
        if self.hub_repo:
            return f"https://huggingface.co/{self.hub_repo}"
        if self.kind == "audiomae-file":
            return f"https://drive.google.com/file/d/{self.drive_file_id}/view"
        return RELEASE_FOLDER

    @property
    def source_label(self) -> str:
        """What is downloaded, for messages: the run directory or the file."""
        if self.hub_repo:
            return f"{self.hub_repo}@{self.hub_revision or 'main'}"
        return self.file_name if self.kind == "audiomae-file" else self.run_dir

    def authors_only(self) -> "ReleasedModel":
        """This model without its Hub copy: `fetch` converts the authors' files."""
        return dataclasses.replace(self, hub_repo="", hub_revision="", hub_sha256="")

    def expected_fields(self) -> dict[str, Any]:
        """Model config fields (name -> value) the converted checkpoint must have."""
        if self.kind == "audiomae-file":
            return dict(self.expected)
        from .convert import config_from_release

        cfg = config_from_release({"model": self.release_model})[0]
        return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


_AUDIOMAE_B = {"family": "audiomae", "embed_dim": 768, "depth": 12, "num_heads": 12, "img_size": (1024, 128),
               "patch_size": (16, 16), "use_cls_token": True, "gelu": "erf"}

MODELS: dict[str, ReleasedModel] = {m.name: m for m in (
    ReleasedModel(
        name="mwmae-base-4x16-4l", title="MW-MAE-B-4x16-4l",
        run_dir="mwmae_base_200_4x16_8x128_default_bfloat16_run1",
        release_model={"arch": "mae_base", "type": "mae", "num_classes": 1000, "model_args": {
            **_ARGS, "window_sizes": 0, "decoder_window_sizes": [2, 5, 10, 25, 50, 125, 0, 0]}},
        hear_config="hear_configs/mwmae_base_200_4x16_384d-8h-4l.py", license="Apache-2.0", datasets=("AudioSet",),
        notes="the paper's MW-MAE: ViT-B encoder (768-d, 12 blocks), no CLS token, 4-layer 384-d "
              "multi-window decoder; 3840-d embeddings per 40 ms"),
    ReleasedModel(
        name="mae-base-4x16", title="MAE-B-4x16 (standard decoder)",
        run_dir="mae_base_200_4x16_8x128_default_run1",
        release_model={"arch": "mae_base", "type": "mae", "num_classes": 1000, "model_args": dict(_ARGS)},
        hear_config="hear_configs/mae_base_200_4x16_384d-8h-4l.py", license="Apache-2.0", datasets=("AudioSet",),
        notes="the paper's MAE baseline: same encoder with a CLS token (dropped from the embeddings), "
              "4-layer 384-d plain-attention decoder; 3840-d embeddings per 40 ms"),
    ReleasedModel(
        name="audiomae-base-as2m", title="Audio-MAE ViT-B, AudioSet-2M pre-trained", kind="audiomae-file",
        drive_file_id="1ni_DV4dRf7GxM8k-Eirx71WP9Gg89wwu", file_name="pretrained.pth",
        expected={**_AUDIOMAE_B, "final_norm": True, "decoder_kind": "swin", "decoder_embed_dim": 512,
                  "decoder_depth": 16, "decoder_num_heads": 16},
        license="CC-BY-NC-4.0", datasets=("AudioSet",),
        notes="Audio-MAE as released: ViT-B on 1024 x 128 Kaldi fbank, 16 x 16 patches, CLS token, 16-block "
              "Swin decoder; 6144-d embeddings per 160 ms"),
    ReleasedModel(
        name="audiomae-base-as2m-ft", title="Audio-MAE ViT-B, AS-2M pre-trained + fine-tuned on AS-2M",
        kind="audiomae-file", drive_file_id="18EsFOyZYvBYHkJ7_n7JFFWbj6crz01gq", file_name="finetuned.pth",
        expected={**_AUDIOMAE_B, "final_norm": False}, license="CC-BY-NC-4.0", datasets=("AudioSet",),
        notes="the fine-tuned encoder and its classifier of AudioSet's 527 classes (hear-mwmae tag); HEAR "
              "embeddings: the last block's tokens, no final norm, 6144-d per 160 ms"),
)}
DEFAULT = "mwmae-base-4x16-4l"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")  # no dot, no slash: never a file name with a suffix


class FetchError(RuntimeError):
    """A fetch could not be completed; the message says why and what to do."""


def names() -> list[str]:
    return sorted(MODELS)


def is_name(ref: str) -> bool:
    """Whether `ref` is meant as a registry name: a registered name, or a bare word (no dot,
    no slash) that is not an existing path."""
    return ref in MODELS or (bool(_NAME.fullmatch(ref)) and not Path(ref).exists())


def get(name: str) -> ReleasedModel:
    if name not in MODELS:
        raise FileNotFoundError(f"{name!r}: no such file, and not a released model name (known: "
                                f"{', '.join(names())}); pass a checkpoint path, hf://owner/repo/file.pt, "
                                f"or one of those names")
    return MODELS[name]


def cache_dir(path: str | Path | None = None) -> Path:
    """Where fetched models live (see the module docstring)."""
    if path is not None:
        return Path(path).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hear-mwmae"


def record_path(name: str, root: str | Path | None = None) -> Path:
    return cache_dir(root) / f"{name}.json"


def read_record(name: str, root: str | Path | None = None) -> dict[str, Any] | None:
    path = record_path(name, root)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def cached_file(name: str, root: str | Path | None = None, *, verify: bool = True) -> Path:
    """The fetched checkpoint of `name`, hash-checked; FileNotFoundError with the fetch command
    when it has not been fetched (or the fetch never finished)."""
    model = get(name)
    root = cache_dir(root)
    path, record = root / model.filename, read_record(name, root)
    if record is None or not path.is_file():
        env = "" if root == cache_dir() else f" --cache-dir {root}"
        raise FileNotFoundError(f"model {name!r} is not in the cache {root}; get it with: "
                                f"hear-mwmae fetch {name}{env}")
    if verify:
        actual = sha256_file(path)
        if actual != record.get("sha256"):
            raise CheckpointError(f"{path}: sha256 {actual} differs from the {record.get('sha256')} recorded when "
                                  f"it was fetched; fetch it again with: hear-mwmae fetch --force {name}")
    return path


def describe_license(spdx: str | None) -> str:
    """A licence id for people: "CC-BY-NC-4.0 (non-commercial)", "Apache-2.0", or "not stated"."""
    if not spdx:
        return "not stated"
    return f"{spdx} (non-commercial)" if "-nc" in spdx.lower() else spdx


# ----------------------------------------------------------------------------- downloading
Downloader = Callable[[ReleasedModel, Path], Path]


_STEP = re.compile(r"checkpoint_(\d+)")


def _gdown() -> Any:
    try:
        import gdown
    except ImportError as exc:
        raise FetchError(f"downloading needs gdown: {GDOWN_HINT}") from exc
    return gdown


def by_hand(model: ReleasedModel) -> str:
    """How to fetch `model` without gdown or without a network here: the manual route, for messages."""
    if model.kind == "audiomae-file":
        what = f"download {model.file_name} from {model.source_url} (in a browser, on any machine)"
        then = f"PATH/{model.file_name}"
    else:
        what = (f"download the folder {model.run_dir} (its config.json and newest checkpoint_<step>) from "
                f"{RELEASE_FOLDER} (in a browser, on any machine)")
        then = f"PATH/{model.run_dir}"
    return f"to fetch it by hand: {what}, then run `hear-mwmae fetch {model.name} --from {then}`"


def from_local_copy(path: str | Path) -> Downloader:
    """A downloader for `fetch` that takes a copy the user downloaded by hand (see `by_hand`):
    the MW-MAE run directory or the Audio-MAE file, used where it is (never moved)."""
    source = Path(path).expanduser().absolute()

    def local(model: ReleasedModel, dest: Path) -> Path:
        if not source.exists():
            raise FetchError(f"--from {source}: no such file or directory")
        return source

    local.local_copy = str(source)  # type: ignore[attr-defined]  (recorded by fetch)
    return local


def gdown_download(model: ReleasedModel, dest: Path) -> Path:
    """Download a released model into `dest` with gdown; returns what convert_source takes.

    mwmae-run: `config.json` and the newest `checkpoint_<step>` (a legacy msgpack file, or an
    orbax directory with its files) of the run directory, from the release's Drive folder,
    into `dest/<run_dir>/` (returned). audiomae-file: the one file, as `dest/<file_name>`.
    """
    try:
        return _gdown_download(model, dest)
    except FetchError as exc:
        raise FetchError(f"{exc}; {by_hand(model)}") from exc


def _failed(what: str, exc: BaseException | None) -> FetchError:
    """A download that did not happen, in one line (requests' errors run over several)."""
    if exc is None:
        return FetchError(f"{what} failed (gdown got nothing: offline, or the file moved?)")
    detail = " ".join(str(exc).split())
    host = re.search(r"host='([^']+)'", detail)
    if host and ("NameResolution" in detail or "Failed to resolve" in detail or "Max retries" in detail):
        return FetchError(f"{what} failed: no network ({type(exc).__name__}: cannot reach {host[1]})")
    return FetchError(f"{what} failed ({type(exc).__name__}: {detail[:300]})")


def _gdown_download(model: ReleasedModel, dest: Path) -> Path:
    gdown = _gdown()
    if model.kind == "audiomae-file":
        path = dest / model.file_name
        dest.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s (%s)", model.file_name, model.source_url)
        try:
            done = gdown.download(id=model.drive_file_id, output=str(path), quiet=False)
        except Exception as exc:  # gdown raises its own types per version, requests' for the network
            raise _failed(f"download of {model.source_url}", exc) from exc
        if not done:
            raise _failed(f"download of {model.source_url}", None)
        return path
    try:  # list the folder only; then fetch what we need (older checkpoints are as large as the newest)
        listing = gdown.download_folder(url=RELEASE_FOLDER, output=str(dest) + os.sep, quiet=True,
                                        skip_download=True)
    except Exception as exc:
        raise _failed(f"listing {RELEASE_FOLDER}", exc) from exc
    if not listing:
        raise _failed(f"listing {RELEASE_FOLDER}", None)
    inside = []  # (path inside the run directory, entry)
    for entry in listing:
        parts = Path(entry.path).parts
        if model.run_dir in parts[:-1]:
            inside.append((Path(*parts[parts.index(model.run_dir) + 1:]), entry))
    steps = [int(m.group(1)) for rel, _ in inside if (m := _STEP.fullmatch(rel.parts[0]))]
    chosen = [(rel, e) for rel, e in inside if rel == Path("config.json")
              or (steps and rel.parts[0] == f"checkpoint_{max(steps)}")]
    if not steps or not any(rel == Path("config.json") for rel, _ in chosen):
        tops = sorted({Path(e.path).parts[0] for e in listing})
        raise FetchError(f"{RELEASE_FOLDER} has no folder {model.run_dir} holding config.json and checkpoint_<step> "
                         f"(its top level: {', '.join(tops[:12])}); see weights/README.md")
    run_dir = dest / model.run_dir
    for rel, entry in chosen:
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        log.info("downloading %s/%s", model.run_dir, rel.as_posix())
        try:
            done = gdown.download(id=entry.id, output=str(run_dir / rel), quiet=False)
        except Exception as exc:
            raise _failed(f"download of {entry.path} from {RELEASE_FOLDER}", exc) from exc
        if not done:
            raise _failed(f"download of {entry.path} from {RELEASE_FOLDER}", None)
    return run_dir


HUB_FILES = ("config.json", "model.safetensors")  # what a Hub copy in our layout is loaded from


def hub_download(model: ReleasedModel, dest: Path) -> Path:
    """The model's Hub copy (`hub_repo` at `hub_revision`: config.json + model.safetensors)
    through huggingface_hub's own cache (`HF_HUB_OFFLINE=1` honoured); `dest` is not used."""
    try:
        import huggingface_hub
    except ImportError as exc:
        raise FetchError("fetching from the Hugging Face Hub needs huggingface_hub: "
                         "pip install 'hear-mwmae[hub]'") from exc
    log.info("downloading %s from the Hugging Face Hub", model.source_label)
    try:
        return Path(huggingface_hub.snapshot_download(model.hub_repo, revision=model.hub_revision or None,
                                                      allow_patterns=list(HUB_FILES)))
    except Exception as exc:  # network, authorisation, missing revision: one line
        raise FetchError(f"could not download {model.source_label} from the Hugging Face Hub "
                         f"({type(exc).__name__}: {exc}); `hear-mwmae fetch --from-authors {model.name}` "
                         "converts the authors' files instead") from exc


def _hub_copy(folder: Path, model: ReleasedModel) -> tuple[Any, dict[str, str]]:
    """A downloaded Hub copy: (its checkpoint, the sha256 of its files), its weights checked
    against the pinned `hub_sha256`."""
    from .checkpoint import load_checkpoint

    sources = {f: sha256_file(folder / f) for f in HUB_FILES if (folder / f).is_file()}
    if len(sources) != len(HUB_FILES):
        raise FetchError(f"{model.source_label}: expected {' and '.join(HUB_FILES)}, found {sorted(sources)}")
    if model.hub_sha256 and sources["model.safetensors"] != model.hub_sha256.lower():
        raise FetchError(f"{model.source_label}: model.safetensors has sha256 {sources['model.safetensors']}, "
                         f"the registry pins {model.hub_sha256}")
    try:
        return load_checkpoint(folder), sources
    except (CheckpointError, OSError) as exc:
        raise FetchError(f"{model.source_label}: {exc}") from exc


def _check_layout(source: Path, model: ReleasedModel) -> tuple[Path | None, Path]:
    """(config.json or None, the checkpoint: newest checkpoint_<step> file / orbax directory of a
    run, or the Audio-MAE file) of a download."""
    if model.kind == "audiomae-file":
        if not source.is_file():
            raise FetchError(f"{source}: expected the downloaded {model.file_name}, found nothing")
        return None, source
    from .convert import ConversionError, find_checkpoint

    config = source / "config.json"
    try:
        ckpt = find_checkpoint(source) if config.is_file() else None
    except ConversionError:
        ckpt = None
    if ckpt is None:
        found = sorted(p.name for p in source.iterdir()) if source.is_dir() else "nothing"
        raise FetchError(f"{source}: expected {model.run_dir}/config.json and checkpoint_<step>, found {found}")
    return config, ckpt


def _source_hashes(config: Path | None, ckpt: Path) -> dict[str, str]:
    """sha256 of every downloaded file, by its path inside the download."""
    files = ([ckpt] if ckpt.is_file() else sorted(p for p in ckpt.rglob("*") if p.is_file()))
    files = ([config] if config is not None else []) + files
    root = (config or ckpt).parent
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in files}


def _config_difference(actual: ModelConfig, model: ReleasedModel) -> list[str]:
    """'field: actual (expected ...)' for every expected model field that differs."""
    return [f"{k}: {getattr(actual, k)!r} (expected {v!r})" for k, v in model.expected_fields().items()
            if getattr(actual, k) != v]


def fetch(name: str, root: str | Path | None = None, *, force: bool = False, keep_source: bool = False,
          downloader: Downloader | None = None, from_authors: bool = False) -> dict[str, Any]:
    """Download, convert and cache a released model (see the module docstring). Returns its record.

    Already fetched (and intact): returns the record without downloading, unless `force`.
    `downloader(model, dest) -> run_dir` replaces the gdown download (tests, mirrors), or the
    Hub download of a model with a Hub copy (then it returns the copy's folder).
    `keep_source` keeps the downloaded run directory as `NAME-source/` in the cache.
    `from_authors`: convert the authors' files even when the model has a Hub copy.
    """
    from filelock import FileLock, Timeout

    from .convert import convert_source

    if name not in MODELS:
        raise FetchError(f"unknown model {name!r}; the released models are: {', '.join(names())}")
    model = MODELS[name].authors_only() if from_authors else MODELS[name]
    root = cache_dir(root)
    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / f".{name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another `hear-mwmae fetch %s` is running; waiting for it", name)
        lock.acquire()
    try:
        for stale in root.glob(f".{name}.partial-*"):  # left by a fetch that was killed
            shutil.rmtree(stale, ignore_errors=True)
        if not force:
            try:
                cached_file(name, root)
                log.info("%s is already fetched: %s", name, root / model.filename)
                return read_record(name, root) or {}
            except FileNotFoundError:
                pass
            except ValueError as exc:  # changed since the fetch: fetch again
                log.warning("%s", exc)
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".{name}.partial-"))
        try:
            start = time.perf_counter()
            downloaded = (downloader or (hub_download if model.hub_repo else gdown_download))(model, work / "download")
            if model.hub_repo:  # our layout, converted before: checked and loaded
                converted, sources = _hub_copy(downloaded, model)
            else:
                config_file, ckpt_file = _check_layout(downloaded, model)
                sources = _source_hashes(config_file, ckpt_file)
                converted = (convert_source(downloaded, checkpoint=ckpt_file) if config_file
                             else convert_source(ckpt_file))
            diff = _config_difference(converted.config.model, model)
            if diff:
                raise FetchError(f"{model.source_label} does not hold {model.title}: " + "; ".join(diff))
            provenance = {**converted.provenance, "registry_name": name, "source_url": model.source_url,
                          "source_run_dir": model.source_label, **({"license": model.license} if model.license else {})}
            staged = save_checkpoint(work / model.filename, converted.config, converted.state_dict,
                                     provenance=provenance, encoder_only=converted.encoder_only)
            record = {"name": name, "title": model.title, "file": model.filename, "sha256": sha256_file(staged),
                      "source_url": model.source_url,
                      "source_repo": AUDIOMAE_REPO if model.kind == "audiomae-file" else RELEASE_REPO,
                      "run_dir": model.source_label,
                      "source_files": sources, "step": converted.provenance.get("step"),
                      "converter_version": converted.provenance.get("converter_version"),
                      "license": model.license or None, "hub_repo": model.hub_repo or None,
                      "fetched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                      "seconds": round(time.perf_counter() - start, 1)}
            if getattr(downloader, "local_copy", None):
                record["from_local_copy"] = downloader.local_copy  # type: ignore[union-attr]
            if keep_source and model.hub_repo:  # the Hub's cache keeps it
                record["source_dir"] = str(downloaded)
            elif keep_source:
                kept = root / f"{name}-source"
                shutil.rmtree(kept, ignore_errors=True)
                if work in downloaded.parents:
                    os.replace(downloaded, kept)
                else:  # a copy the user gave (--from): theirs stays where it is
                    (shutil.copytree if downloaded.is_dir() else shutil.copy2)(downloaded, kept)
                record["source_dir"] = str(kept)
            record_path(name, root).unlink(missing_ok=True)  # not "done" until the new record is in place
            os.replace(staged, root / model.filename)
            with atomic_write(record_path(name, root), "w") as fh:
                json.dump(record, fh, indent=2)
            return record
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        lock.release()


__all__ = ["AUDIOMAE_REPO", "CACHE_ENV", "DEFAULT", "KINDS", "MODELS", "RELEASE_FOLDER", "FetchError", "ReleasedModel",
           "by_hand", "cache_dir", "cached_file", "describe_license", "fetch", "from_local_copy", "gdown_download", "get",
           "hub_download", "is_name", "names", "read_record"]
