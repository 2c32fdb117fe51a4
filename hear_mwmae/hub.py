"""Our Hugging Face Hub layout: one model in a folder that is also a Hub repository.

    DIR/model.safetensors   the weights: `encoder.*`, `decoder.*` (unless encoder-only) and
                            `classifier.*` (a model with a head), in our `.safetensors` format,
                            whose metadata holds the format version, config and provenance (so the
                            file alone loads too)
    DIR/config.json         what the Hub and people read first: library and layout markers, format
                            version, the config, label names, licence, and the sha256 of
                            model.safetensors (checked on every load)
    DIR/README.md           the model card (`model_card.py`)

    save_pretrained(model_or_ckpt, DIR)      write it (`hear-mwmae save-pretrained CKPT DIR`)
    load_pretrained_dir(DIR)                 read it; `checkpoint.load_checkpoint` does this for a
                                             folder of this layout, so `load_model(DIR)` and
                                             `load_model("hf://owner/repo[@rev]")` read it
    push_to_hub(CKPT_OR_DIR, "owner/name")   build it when needed and upload it with huggingface_hub

config.json tells this layout from a timm one (whose config.json has `architecture`; read by
`convert/audiomae.py`): ours says `"format": "hear-mwmae"`. JSON and safetensors only, never a
pickle. Compatibility: a reader accepts every `layout_version` up to its own and every
checkpoint `format_version` `checkpoint.migrate` knows (docs/checkpoints.md).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any


from .checkpoint import DECODER_PREFIX, FORMAT, FORMAT_VERSION, Checkpoint, CheckpointError, save_checkpoint
from .files import atomic_write, sha256_file

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)  # everything the layout holds, and all that is uploaded
LIBRARY = "hear-mwmae"
LAYOUT_VERSION = 1
NO_TOKEN = ("no Hugging Face token: log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN "
            "to a token with write access")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


class HubError(RuntimeError):
    """An upload to the Hub could not be done; the message says why and what to do."""


# ----------------------------------------------------------------------------- reading
def read_config(path: Path) -> dict[str, Any] | None:
    """config.json of a folder of our layout, or None for any other folder (a timm one, a run)."""
    try:
        meta = json.loads((Path(path) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("format") == FORMAT else None


def is_pretrained_dir(path: str | Path) -> bool:
    """Whether `path` is a folder of our Hub layout (judged by its config.json)."""
    return Path(path).is_dir() and read_config(Path(path)) is not None


def load_pretrained_dir(path: str | Path) -> Checkpoint:
    """Load a folder of our layout: model.safetensors checked against the sha256 config.json
    records, config.json checked against the config inside model.safetensors."""
    from safetensors import safe_open

    from .checkpoint import load_checkpoint

    path = Path(path)
    meta = read_config(path)
    if meta is None:
        raise CheckpointError(f"{path}: no hear-mwmae {CONFIG_FILE} (not a folder written by save_pretrained)")
    version = meta.get("layout_version")
    if not isinstance(version, int) or not 1 <= version <= LAYOUT_VERSION:
        raise CheckpointError(f"{path / CONFIG_FILE}: layout_version {version!r} unsupported (this hear-mwmae reads 1 "
                              f"to {LAYOUT_VERSION}; a newer hear-mwmae wrote it?)")
    weights = path / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{path}: {CONFIG_FILE} but no {WEIGHTS_FILE} beside it")
    recorded = str((meta.get("weights") or {}).get("sha256", ""))
    actual = sha256_file(weights)
    if actual != recorded:
        raise CheckpointError(f"{weights}: sha256 {actual} does not match the {recorded or 'missing value'} "
                              f"recorded in {CONFIG_FILE}: the file changed after it was saved (damaged or altered); "
                              "download or save the model again")
    ckpt = load_checkpoint(weights)
    with safe_open(str(weights), framework="pt") as fh:
        inner = json.loads((fh.metadata() or {}).get("config", "null"))
    labels = list(ckpt.config.head.labels) if ckpt.config.head is not None else None
    differ = [k for k, ours, theirs in (("config", inner, meta.get("config")),
                                        ("encoder_only", ckpt.encoder_only, meta.get("encoder_only")),
                                        ("labels", labels, meta.get("labels"))) if ours != theirs]
    if differ:
        raise CheckpointError(f"{path / CONFIG_FILE}: {', '.join(differ)} differ(s) from what {WEIGHTS_FILE} was saved "
                              f"with (was {CONFIG_FILE} edited?); save the model again")
    return ckpt


# ----------------------------------------------------------------------------- writing
def save_pretrained(model_or_ckpt: Any, directory: str | Path, *, encoder_only: bool = False,
                    license: str | None = None, base_model: str | None = None, datasets: list[str] | None = None,
                    eval_results: str | Path | None = None, finetune_results: str | Path | None = None,
                    repo_id: str | None = None, overwrite: bool = False) -> Path:
    """Write a model as a folder of our Hub layout (module docstring); returns the folder.

    model_or_ckpt: a model reference (a released name, our `.pt` / `.safetensors`, an authors'
        checkpoint, `hf://...`, a folder of this layout), a `checkpoint.Checkpoint`, or a model
        from `hear_mwmae.load_model` (its encoder and classifier; no decoder, no provenance).
    encoder_only: leave the decoder out (all HEAR and tagging need).
    license: the weights' licence (an SPDX id such as "MIT"); default: the one the provenance
        carries (the source's, for a converted or fine-tuned model).
    base_model: the Hub id ("owner/name") of the model this one was fine-tuned from (card
        metadata); default: derived from an `hf://` base reference.
    datasets: what it was trained on (card metadata); default: what the provenance says.
    eval_results: an `evaluation.run` output folder (results.json) of this very model.
    finetune_results: a fine-tuning run's results.json; default: the one beside a `model.pt`
        fine-tuning wrote, when it belongs to it.
    repo_id: the Hub repository it is meant for ("owner/name"), named in the card's example.
    overwrite: write into a folder that is not empty (replacing only this layout's files).
    """
    if importlib.util.find_spec("huggingface_hub") is None:  # the card's metadata is built with it
        raise ImportError("writing a Hub folder needs huggingface_hub: pip install 'hear-mwmae[hub]'")
    from . import model_card

    ckpt, saved_from = _as_checkpoint(model_or_ckpt)
    if repo_id is not None:
        check_repo_id(repo_id)
    directory = Path(directory).expanduser()
    _check_target(directory, overwrite)
    if not ckpt.encoder_only and not any(k.startswith(DECODER_PREFIX) for k in ckpt.state_dict):
        encoder_only = True  # no decoder weights, whatever the file says (fetches before the fix said False)
    if encoder_only and not ckpt.encoder_only:
        ckpt = Checkpoint(ckpt.config, {k: v for k, v in ckpt.state_dict.items() if not k.startswith(DECODER_PREFIX)},
                          True, ckpt.provenance)
    ckpt = Checkpoint(ckpt.config, ckpt.state_dict, ckpt.encoder_only, _with_license(ckpt.provenance, license))
    _check_weights(ckpt)
    hear = model_card.read_hear_results(eval_results, saved_from) if eval_results is not None else None
    finetuned = model_card.read_finetune_results(finetune_results, model_or_ckpt, ckpt.provenance)
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=directory, prefix=".save-pretrained-"))
    try:  # everything is written aside first, then moved in, config.json last: no half-written folder
        weights = save_checkpoint(staging / WEIGHTS_FILE, ckpt.config, ckpt.state_dict, provenance=ckpt.provenance,
                                  encoder_only=ckpt.encoder_only)
        digest, size = sha256_file(weights), weights.stat().st_size
        inputs = model_card.CardInputs(
            ckpt=ckpt, weights_sha256=digest, weights_bytes=size, repo_id=repo_id,
            name=_model_name(repo_id, ckpt.provenance, directory), saved_from=saved_from, base_model=base_model,
            datasets=datasets, hear_results=hear, finetune_results=finetuned)
        with atomic_write(staging / CARD_FILE, "w") as fh:
            fh.write(model_card.render(inputs))
        meta = _config_json(ckpt, digest, size, saved_from, repo_id)
        with atomic_write(staging / CONFIG_FILE, "w") as fh:
            json.dump(meta, fh, indent=2)
            fh.write("\n")
        (directory / CONFIG_FILE).unlink(missing_ok=True)  # an older model's config.json never meets new weights
        for name in (WEIGHTS_FILE, CARD_FILE, CONFIG_FILE):
            os.replace(staging / name, directory / name)
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("wrote %s (%s, %.1f MB, licence %s)", directory, ", ".join(meta["parts"]), size / 1e6,
             meta["license"] or "not stated")
    return directory


def _config_json(ckpt: Checkpoint, digest: str, size: int, saved_from: dict[str, Any] | None,
                 repo_id: str | None) -> dict[str, Any]:
    from . import __version__
    from .classifier import PREFIX

    cfg, head = ckpt.config, ckpt.config.head
    parts = ["encoder"] + ([] if ckpt.encoder_only else ["decoder"])
    parts += ["classifier"] if any(k.startswith(PREFIX) for k in ckpt.state_dict) else []
    return {
        "library_name": LIBRARY, "format": FORMAT, "format_version": FORMAT_VERSION, "layout_version": LAYOUT_VERSION,
        "hear_mwmae_version": __version__, "family": cfg.model.family, "parts": parts,
        "encoder_only": ckpt.encoder_only, "sample_rate": cfg.frontend.sample_rate,
        "embedding_size": cfg.model.embedding_size,
        "labels": list(head.labels) if head is not None else None,
        "multi_label": head.multi_label if head is not None else None,
        "license": ckpt.provenance.get("license"),
        "weights": {"file": WEIGHTS_FILE, "sha256": digest, "bytes": size},
        "saved_from": saved_from, "repo_id": repo_id,
        "config": json.loads(json.dumps(cfg.to_dict())),
    }


def _as_checkpoint(obj: Any) -> tuple[Checkpoint, dict[str, Any] | None]:
    """(the checkpoint, {"ref", "file", "sha256"} of the reference it came from, or None)."""
    if isinstance(obj, Checkpoint):
        return obj, None
    if isinstance(obj, (str, Path)):
        from .sources import checkpoint_sha256, load_checkpoint

        ref = str(obj)
        ckpt = load_checkpoint(ref)
        shown = ref if ref.startswith("hf://") or not Path(ref).exists() else Path(ref).name
        return ckpt, {"ref": shown, "sha256": checkpoint_sha256(ref)}
    from .runtime import MWMAERuntime

    if isinstance(obj, MWMAERuntime):
        return _from_runtime(obj), None
    raise TypeError(f"save_pretrained takes a model reference (path, name, hf://...), a Checkpoint or a model from "
                    f"hear_mwmae.load_model, got {type(obj).__name__}")


def _from_runtime(runtime: Any) -> Checkpoint:
    """The encoder (and classifier) of a loaded model, as a checkpoint without provenance."""
    from .classifier import PREFIX

    if runtime.precision == "int8":
        raise ValueError("this model was loaded with precision='int8' (its weights are quantised); save the "
                         "checkpoint it was loaded from instead")
    encoder = getattr(runtime.encoder, "_orig_mod", runtime.encoder)  # torch.compile keeps the module here
    state = {"encoder." + k: v for k, v in encoder.state_dict().items()}
    if runtime.classifier is not None:
        state.update({PREFIX + k: v for k, v in runtime.classifier.state_dict().items()})
    log.warning("saving a loaded model: its encoder%s only, without the provenance of its checkpoint (save the "
                "checkpoint itself to keep it)", " and classifier" if runtime.classifier is not None else "")
    return Checkpoint(runtime.config, state, True, {"source": "a model loaded with hear_mwmae.load_model"})


def _check_weights(ckpt: Checkpoint) -> None:
    """The weights are exactly those of the config's model: same keys, same shapes (nothing
    unusable is published), by the check every loader runs (`state_checks.check_against_config`)."""
    from .state_checks import WeightsError, check_against_config

    parts = ("encoder",) + (() if ckpt.encoder_only else ("decoder",)) + (("classifier",) if ckpt.config.head else ())
    try:
        check_against_config(ckpt.config, ckpt.state_dict, parts)
    except WeightsError as exc:
        raise CheckpointError(str(exc)) from None


def _with_license(provenance: dict[str, Any], license: str | None) -> dict[str, Any]:
    """The provenance with its `license`: the one given, else the one its sources carry
    (`model_card.license_of`), else none."""
    from .model_card import license_of

    if license is None:
        known = license_of(provenance)
        return {**provenance, "license": known} if known else dict(provenance)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+-]*", license):
        raise ValueError(f"license {license!r}: give an SPDX id such as MIT, Apache-2.0 or CC-BY-NC-4.0")
    known = provenance.get("license")
    if known and known.lower() != license.lower():
        log.warning("the source's licence is %s; the card will say %s (make sure you may relicense it)",
                    known, license)
    return {**provenance, "license": license}


def _model_name(repo_id: str | None, provenance: dict[str, Any], directory: Path) -> str:
    if repo_id:
        return repo_id.split("/", 1)[1]
    return str(provenance.get("registry_name") or directory.resolve().name)


def _check_target(directory: Path, overwrite: bool) -> None:
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory}: exists and is not a folder")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        what = "an earlier saved model" if is_pretrained_dir(directory) else "files"
        raise FileExistsError(f"{directory}: not empty (holds {what}); choose a new folder, or replace this layout's "
                              f"files ({', '.join(FILES)}) with --force / overwrite=True")


def check_repo_id(repo_id: str) -> str:
    """`repo_id` when it is a Hub model id "owner/name", else ValueError."""
    if not isinstance(repo_id, str) or not _REPO_ID.fullmatch(repo_id) or ".." in repo_id:
        raise ValueError(f"{repo_id!r} is not a Hub repository id; expected owner/name")
    return repo_id


# ----------------------------------------------------------------------------- uploading
def push_to_hub(source: Any, repo_id: str, *, private: bool = False, revision: str | None = None,
                token: str | None = None, commit_message: str | None = None, **save_options: Any) -> str:
    """Upload a model to the Hub repository `repo_id` ("owner/name"); returns the commit's URL.

    source: a folder of our layout (uploaded as it is, after it loads), or anything
        `save_pretrained` takes (the folder is built in a temporary place with
        `save_options`, the card naming `repo_id`). The repository is created when missing
        (`private` then decides its visibility), and the branch `revision` when given.
    token: default the usual login (`hf auth login`) or HF_TOKEN; HubError without one.
    """
    check_repo_id(repo_id)
    try:
        import huggingface_hub as hf
    except ImportError as exc:
        raise HubError("uploading needs huggingface_hub: pip install 'hear-mwmae[hub]'") from exc
    token = token or hf.get_token()
    if not token:
        raise HubError(NO_TOKEN)
    with tempfile.TemporaryDirectory(prefix="hear-mwmae-push-") as tmp:
        if isinstance(source, (str, Path)) and is_pretrained_dir(source):
            if save_options:
                raise ValueError(f"{source} is already built; {sorted(save_options)} apply when building a folder "
                                 "from a checkpoint (or build it again with save-pretrained)")
            folder = Path(source)
            load_pretrained_dir(folder)  # intact and consistent before anything leaves the machine
            named = (read_config(folder) or {}).get("repo_id")
            if named != repo_id:
                log.warning("%s's card was written for %s; its loading example will not name %s (rebuild it with "
                            "save-pretrained --repo-id %s to fix that)", folder, named or "no repository", repo_id,
                            repo_id)
        else:
            folder = save_pretrained(source, Path(tmp) / "model", repo_id=repo_id, **save_options)
        files = [f for f in FILES if (folder / f).is_file()]
        api = hf.HfApi()
        message = commit_message or f"Upload {(read_config(folder) or {}).get('family', 'a')} model with hear-mwmae"
        try:
            api.create_repo(repo_id, private=True if private else None, exist_ok=True, token=token)
            if revision and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=files,
                                     revision=revision, commit_message=message, token=token)
        except Exception as exc:  # network, authorisation, quota: one line
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise HubError(f"upload to {repo_id} failed: {type(exc).__name__}: {first}") from exc
    url = str(getattr(info, "commit_url", None) or info)
    log.info("uploaded %s to https://huggingface.co/%s (%s)", ", ".join(files), repo_id, url)
    return url


__all__ = ["CARD_FILE", "CONFIG_FILE", "FILES", "HubError", "LAYOUT_VERSION", "WEIGHTS_FILE", "check_repo_id",
           "is_pretrained_dir", "load_pretrained_dir", "push_to_hub", "read_config", "save_pretrained"]
