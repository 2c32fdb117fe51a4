"""hear-mwmae: MW-MAE audio embeddings in PyTorch with the HEAR 2021 API.

    model = hear_mwmae.load_model("demo-tiny")                # the bundled toy model (offline, any install)
    model = hear_mwmae.load_model("mwmae-base-4x16-4l")       # after `hear-mwmae fetch mwmae-base-4x16-4l`
    scene = hear_mwmae.get_scene_embeddings(audio, model)     # (n_sounds, D)
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio, model)  # (n, steps, D), (n, steps) ms

`audio` is a float32 tensor (n_sounds, n_samples) at 16 kHz, values in [-1, 1].

A fine-tuned model (one with a classifier head) also tags audio:

    model = hear_mwmae.load_model("audiomae-base-as2m-ft")    # after `hear-mwmae fetch audiomae-base-as2m-ft`
    logits = hear_mwmae.get_logits(audio, model)              # (n_sounds, n_classes)
    hear_mwmae.tag(audio, model, top_k=5)                     # [[("Speech", 0.93), ...], ...]
    model.labels                                              # class names in output order

Sharing a model on the Hugging Face Hub (model.safetensors, config.json, a README.md model card):

    hear_mwmae.save_pretrained("runs/ft/model.pt", "my-model/")   # then load_model("my-model/")
    hear_mwmae.push_to_hub("my-model/", "owner/name")             # then load_model("hf://owner/name")
"""

from __future__ import annotations

from typing import Any

import torch

__version__ = "0.1.0"

DEFAULT_MODEL = "mwmae-base-4x16-4l"  # the authors' released MW-MAE, from the cache (`hear-mwmae fetch`)


def load_model(model_file_path: str = DEFAULT_MODEL, **options: Any) -> torch.nn.Module:
    """Load a checkpoint as a HEAR model.

    model_file_path: a released model's name (`hear_mwmae.registry`; default
        "mwmae-base-4x16-4l", fetched once with `hear-mwmae fetch NAME`), "demo-tiny" (the
        toy model shipped inside the package), our `.pt` /
        `.safetensors`, an authors' checkpoint (MW-MAE run directory, Audio-MAE `.pth` or
        timm directory; converted on the fly),
        a folder written by `save_pretrained`, `hf://owner/repo/path/file.pt[@revision]`, or
        `hf://owner/repo[@revision]` (a repo of that layout, or a timm-layout Audio-MAE repo
        such as gaunernst/vit_base_patch16_1024_128.audiomae_as2m).
    options (also via heareval's `--model-options` JSON):
        device: "cpu", "cuda", "cuda:1", ... (default: cuda if available)
        precision: "fp32" (default), "bf16" or "fp16" (autocast), or "int8" (CPU only: the
            blocks' linear layers in int8, quantised once at load; see hear_mwmae/quantize.py)
        max_chunks_per_batch: an int >= 1, encoder chunks per pass (default 16 on CPU, 128 on
            GPU; bounds memory)
        sha256: pin the checkpoint file's hash (64 hex digits; checked before loading)
        compile: True to run the encoder through torch.compile (default False)
    Options of the wrong type or value raise TypeError / ValueError; a reference that does not
    resolve raises FileNotFoundError saying how to get the model (`hear_mwmae.sources`).
    """
    from .checkpoint import build_classifier, build_encoder
    from .runtime import MWMAERuntime, check_load_options
    from .sources import load_checkpoint

    options = check_load_options(options)
    ckpt = load_checkpoint(model_file_path or DEFAULT_MODEL, sha256=options.get("sha256"))
    return MWMAERuntime(
        build_encoder(ckpt), ckpt.config, device=options.get("device"),
        precision=options.get("precision", "fp32"),
        max_chunks_per_batch=options.get("max_chunks_per_batch"), compile=options.get("compile", False),
        classifier=build_classifier(ckpt) if ckpt.config.head is not None else None,
    )


def save_pretrained(model_or_ckpt: Any, directory: Any, **options: Any) -> Any:
    """Write a model as a Hugging Face Hub folder: model.safetensors, config.json and a README.md
    model card; `load_model(directory)` and, once uploaded, `load_model("hf://owner/name")` read it.

    model_or_ckpt: a model reference (as `load_model` takes), a `checkpoint.Checkpoint`, or a model
    from `load_model`. Options (`hear_mwmae.hub.save_pretrained`): encoder_only, license,
    base_model, datasets, eval_results (an `evaluation.run` folder), finetune_results, repo_id,
    overwrite. Returns the folder's Path.
    """
    from .hub import save_pretrained as save

    return save(model_or_ckpt, directory, **options)


def push_to_hub(model_or_dir: Any, repo_id: str, **options: Any) -> str:
    """Upload a model (a folder from `save_pretrained`, or anything it takes) to the Hub repository
    `repo_id` ("owner/name"); options: private, revision, token, commit_message and those of
    `save_pretrained`. Returns the commit URL (`hear_mwmae.hub.push_to_hub`)."""
    from .hub import push_to_hub as push

    return push(model_or_dir, repo_id, **options)


def _runtime(model: torch.nn.Module):
    from .runtime import MWMAERuntime

    if not isinstance(model, MWMAERuntime):
        raise TypeError(f"model must come from hear_mwmae.load_model, got {type(model).__name__}")
    return model


def get_timestamp_embeddings(audio: torch.Tensor, model: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> embeddings (n_sounds, n_steps, D) float32 and timestamps
    (n_sounds, n_steps) float32 in ms (centre of each step's real frames: 40 ms steps for MW-MAE,
    160 ms for Audio-MAE)."""
    return _runtime(model).embed(audio)


def get_scene_embeddings(audio: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """(n_sounds, n_samples) -> (n_sounds, D) float32: the mean of the timestamp embeddings."""
    return _runtime(model).embed(audio, scene_only=True)[0]


def get_logits(audio: torch.Tensor, model: torch.nn.Module,
               per_chunk: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(n_sounds, n_samples) -> raw logits (n_sounds, n_classes) float32 of a model with a
    classifier: the mean of the logits of the clip's chunks (one chunk = the authors' output).

    per_chunk=True: (logits (n_sounds, n_chunks, n_classes), chunk centres (n_sounds, n_chunks)
    in ms). A model without a classifier raises `hear_mwmae.classifier.NoClassifierError`.
    """
    logits, centres = _runtime(model).logits(audio, per_chunk=per_chunk)
    return (logits, centres) if per_chunk else logits


def scores(logits: torch.Tensor, model: torch.nn.Module) -> torch.Tensor:
    """Logits (..., n_classes) -> scores: sigmoid for a multi-label head, softmax otherwise."""
    head = _runtime(model).config.head
    if head is None:
        from .checkpoint import NO_HEAD
        from .classifier import NoClassifierError

        raise NoClassifierError(NO_HEAD)
    return logits.sigmoid() if head.multi_label else logits.softmax(dim=-1)


def tag(audio: torch.Tensor, model: torch.nn.Module, top_k: int = 5) -> list[list[tuple[str, float]]]:
    """(n_sounds, n_samples) -> for each sound its `top_k` (label, score) pairs, best first.

    Scores are sigmoid probabilities for a multi-label head (AudioSet), softmax for a
    single-label one; computed from the clip's logits (`get_logits`).
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    probs = scores(get_logits(audio, model), model).cpu()
    labels = _runtime(model).labels
    values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
    return [[(labels[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


__all__ = ["get_logits", "get_scene_embeddings", "get_timestamp_embeddings", "load_model", "push_to_hub",
           "save_pretrained", "scores", "tag", "__version__"]
