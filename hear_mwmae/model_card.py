"""Model cards (README.md of a Hub folder, `hub.py`) generated from what the package knows.

The YAML header (built with huggingface_hub's `ModelCardData`, so the Hub indexes it):
`library_name: hear-mwmae`, `tags` (audio, self-supervised, hear, masked-autoencoder, the
family), `license` (the one the provenance carries: the authors' for converted weights, the
base model's for a fine-tuned one), `pipeline_tag` (`audio-classification` with a head,
`feature-extraction` without), `datasets`, `base_model` (a fine-tuned model's base, when it
has a Hub id) and `model-index` (fine-tuning and HEAR results). The body: what the model is,
three lines to load and use it, the architecture, the provenance (source file and sha256,
conversion or training recipe), the fine-tuning results and labels of a model with a head,
the HEAR results beside the paper's when an `evaluation.run` output is given, the licence
and the files.

    text = render(CardInputs(ckpt=..., weights_sha256=..., weights_bytes=..., name=...))
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import AUDIOSET_MEAN, AUDIOSET_STD

log = logging.getLogger(__name__)

LIBRARY = "hear-mwmae"
FAMILY_TAGS = {"mwmae": "mw-mae", "audiomae": "audio-mae"}
FAMILY_TITLES = {"mwmae": "MW-MAE", "audiomae": "Audio-MAE"}
REFERENCES = {
    "mwmae": "S. Yadav, S. Theodoridis, L. K. Hansen, Z.-H. Tan: *Masked Autoencoders with Multi-Window Local-Global "
             "Attention Are Better Audio Learners*, ICLR 2024 (github.com/SarthakYadav/mwmae-jax-official)",
    "audiomae": "P.-Y. Huang, H. Xu, J. Li, A. Baevski, M. Auli, W. Galuba, F. Metze, C. Feichtenhofer: *Masked "
                "Autoencoders that Listen*, NeurIPS 2022 (github.com/facebookresearch/AudioMAE)",
}
# licences of the authors' layouts, for files converted before the converters recorded them
CONVERTER_LICENSES = {"mwmae-jax-official run directory": "Apache-2.0",
                      "facebookresearch/AudioMAE checkpoint": "CC-BY-NC-4.0",
                      "timm / Hugging Face Hub Audio-MAE": "CC-BY-NC-4.0"}
FINETUNE_METRICS = {"top1_acc": ("accuracy", "top-1 accuracy"), "mAP": ("map", "mAP"),
                    "mAUC": ("roc_auc", "ROC-AUC (macro)"), "d_prime": ("d_prime", "d′")}
HEAR_METRICS = {"top1_acc": "accuracy", "pitch_acc": "accuracy", "mAP": "map"}
MAX_INLINE_LABELS = 32


@dataclass(frozen=True)
class CardInputs:
    """What a card is made of: the checkpoint as saved, its file, and what else is known."""

    ckpt: Checkpoint
    weights_sha256: str
    weights_bytes: int
    name: str
    repo_id: str | None = None
    saved_from: dict[str, Any] | None = None  # {"ref", "sha256"} of the reference it was saved from
    base_model: str | None = None  # a Hub id; default derived from the provenance
    datasets: list[str] | None = None  # default derived from the provenance
    hear_results: dict[str, Any] | None = None  # an evaluation.run results.json
    finetune_results: dict[str, Any] | None = None  # a fine-tuning run's results.json
    extra_tags: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------- facts from the provenance
def license_of(provenance: dict[str, Any]) -> str | None:
    """The weights' licence (SPDX id) as the provenance tells it: its own `license`, the released
    model's (`registry_name`), the authors' layout it was converted from, or its base model's."""
    from . import registry

    if provenance.get("license"):
        return str(provenance["license"])
    model = registry.MODELS.get(str(provenance.get("registry_name")))
    if model is not None and model.license:
        return model.license
    if provenance.get("source") in CONVERTER_LICENSES:
        return CONVERTER_LICENSES[provenance["source"]]
    base = provenance.get("base_provenance")
    return license_of(base) if isinstance(base, dict) else None


def datasets_of(provenance: dict[str, Any]) -> list[str]:
    """What the weights were trained on, as far as the provenance tells: the released model's
    data, a fine-tuning task's name, then the base model's."""
    from . import registry

    model = registry.MODELS.get(str(provenance.get("registry_name")))
    found = list(model.datasets) if model is not None else []
    if provenance.get("source") == "hear_mwmae.finetune" and provenance.get("task"):
        found.append(_task_name(str(provenance["task"])))
    base = provenance.get("base_provenance")
    found += datasets_of(base) if isinstance(base, dict) else []
    return list(dict.fromkeys(found))


def base_model_of(provenance: dict[str, Any]) -> str | None:
    """The Hub id of a fine-tuned model's base: from an `hf://owner/name...` reference, or the
    Hub copy of a released name; None when the base has none (a local file)."""
    from . import registry

    base = str(provenance.get("base_model") or "")
    m = re.match(r"^hf://([^/@]+/[^/@]+)", base)
    if m:
        return m.group(1)
    model = registry.MODELS.get(base)
    return model.hub_repo if model is not None and model.hub_repo else None


def _task_name(task: str) -> str:
    """A fine-tuning task's short name: the folder or file name, without a fold note."""
    return Path(re.sub(r" \(test fold .*\)$", "", task)).name


def _shown(ref: Any) -> str:
    """A reference as a card shows it: names and hf:// as they are, paths by their file name."""
    text = str(ref)
    return text if text.startswith("hf://") or "/" not in text else Path(text).name


# ----------------------------------------------------------------------------- results read from files
def read_hear_results(path: str | Path, saved_from: dict[str, Any] | None) -> dict[str, Any]:
    """An `evaluation.run` output (its folder or results.json), checked to be of this model."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read evaluation results ({exc}); pass the --out folder of "
                         "`python -m evaluation.run`") from exc
    if not isinstance(results, dict) or not isinstance(results.get("tasks"), dict):
        raise ValueError(f"{file}: no 'tasks': not a results.json written by `python -m evaluation.run`")
    evaluated = str(results.get("checkpoint_sha256") or "")
    if saved_from is None:
        log.warning("cannot check that %s evaluated this model (no file to compare with)", file)
    elif evaluated != saved_from["sha256"]:
        raise ValueError(f"{file} evaluated {results.get('checkpoint')} (sha256 {evaluated[:16]}…), not this model "
                         f"(sha256 {saved_from['sha256'][:16]}…): its numbers would describe another model")
    return results


def read_finetune_results(path: str | Path | None, source: Any, provenance: dict[str, Any]) -> dict[str, Any] | None:
    """A fine-tuning run's results.json: `path` (the file or its run folder), else the one beside
    the `model.pt` being saved when it belongs to it (same recipe, epoch and labels)."""
    if path is None:
        if provenance.get("source") != "hear_mwmae.finetune" or not isinstance(source, (str, Path)):
            return None
        beside = Path(source).parent / "results.json"
        if not Path(source).is_file() or not beside.is_file():
            return None
        try:
            results = json.loads(beside.read_text())
        except (OSError, ValueError):
            return None
        if _belongs(results, provenance):
            return results
        log.info("%s is of another model than %s; the card shows the provenance's validation metrics", beside, source)
        return None
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    try:
        results = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{file}: cannot read fine-tuning results ({exc})") from exc
    if not isinstance(results, dict) or not ("test" in results or "folds" in results):
        raise ValueError(f"{file}: not a results.json written by `hear-mwmae finetune`")
    if "test" in results and not _belongs(results, provenance):
        raise ValueError(f"{file}: its recipe / epoch / labels are not this model's (fine-tuned with recipe "
                         f"{provenance.get('recipe')!r}, epoch {provenance.get('epoch')})")
    return results


def _belongs(results: Any, provenance: dict[str, Any]) -> bool:
    """Whether a run's results.json describes this model: same recipe, epoch and validation
    metrics (compared as JSON, so that NaN equals NaN)."""
    def same(key: str) -> bool:
        return json.dumps(results.get(key), sort_keys=True, default=float) == \
            json.dumps(provenance.get(key), sort_keys=True, default=float)

    return isinstance(results, dict) and all(same(k) for k in ("recipe", "epoch", "valid"))


# ----------------------------------------------------------------------------- the YAML header
def metadata(inputs: CardInputs) -> Any:
    """The card's metadata as a `huggingface_hub.ModelCardData`."""
    from huggingface_hub import ModelCardData

    ckpt, cfg = inputs.ckpt, inputs.ckpt.config
    spdx = license_of(ckpt.provenance)
    results = _finetune_eval_results(inputs) + _hear_eval_results(inputs)
    datasets = inputs.datasets if inputs.datasets is not None else datasets_of(ckpt.provenance)
    base = inputs.base_model or base_model_of(ckpt.provenance)
    return ModelCardData(
        library_name=LIBRARY, license=spdx.lower() if spdx else None,
        tags=["audio", "self-supervised", "hear", "masked-autoencoder", FAMILY_TAGS[cfg.model.family],
              *inputs.extra_tags],
        pipeline_tag="audio-classification" if cfg.head is not None else "feature-extraction",
        datasets=list(datasets) or None, base_model=base,
        model_name=inputs.name if results else None, eval_results=results or None)


def _finetune_eval_results(inputs: CardInputs) -> list[Any]:
    from huggingface_hub import EvalResult

    prov, res = inputs.ckpt.provenance, inputs.finetune_results
    task = _task_name(str((res or {}).get("task") or prov.get("task") or "")) or "fine-tuning task"
    if res is not None and "folds" in res:  # k folds: the mean test score
        kind, label = FINETUNE_METRICS.get(res["metric"], (res["metric"], res["metric"]))
        return [EvalResult(task_type="audio-classification", dataset_type=task, dataset_name=task, metric_type=kind,
                           metric_value=round(float(res["test_mean"]), 4),
                           metric_name=f"test {label}, mean of {res['n_folds']} folds")]
    split, metrics = ("test", (res or {}).get("test")) if res is not None else ("validation", prov.get("valid"))
    if not isinstance(metrics, dict) or inputs.ckpt.config.head is None:
        return []
    return [EvalResult(task_type="audio-classification", dataset_type=task, dataset_name=task, dataset_split=split,
                       metric_type=kind, metric_value=round(float(metrics[key]), 4), metric_name=f"{split} {label}")
            for key, (kind, label) in FINETUNE_METRICS.items() if _finite(metrics.get(key))]


def _hear_eval_results(inputs: CardInputs) -> list[Any]:
    from huggingface_hub import EvalResult

    res = inputs.hear_results
    if res is None:
        return []
    return [EvalResult(task_type="audio-classification",
                       task_name="HEAR 2021 (shallow classifier on frozen embeddings)",
                       dataset_type=dirname, dataset_name=f"{entry.get('title', dirname)} (HEAR 2021)",
                       metric_type=HEAR_METRICS.get(entry.get("metric"), str(entry.get("metric"))),
                       metric_value=round(float(entry["mean"]), 2),
                       metric_name=f"{entry.get('metric')}, % (mean of {entry.get('n_seeds')} seeds)")
            for dirname, entry in res["tasks"].items() if _finite(entry.get("mean"))]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------- the body
def render(inputs: CardInputs) -> str:
    """The whole README.md: YAML header, then the body (module docstring)."""
    from huggingface_hub import ModelCard

    cfg = inputs.ckpt.config
    sections = [_title(inputs), _usage(inputs), _architecture(inputs), _provenance(inputs)]
    if cfg.head is not None:
        sections += [_finetune_results(inputs), _labels(inputs)]
    if inputs.hear_results is not None:
        sections.append(_hear_table(inputs.hear_results, cfg.model.family))
    sections += [_license(inputs), _files(inputs), _references(inputs)]
    text = f"---\n{metadata(inputs).to_yaml()}\n---\n\n" + "\n\n".join(s for s in sections if s) + "\n"
    ModelCard(text)  # parses back (the YAML header is a mapping), or raises
    return text


def _title(inputs: CardInputs) -> str:
    ckpt, cfg = inputs.ckpt, inputs.ckpt.config
    m, head = cfg.model, cfg.head
    family = FAMILY_TITLES[m.family]
    what = (f"An {family} encoder ({m.embed_dim}-d, {m.depth} blocks) with a classifier of {head.num_classes} classes"
            if head is not None else
            f"An {family} audio encoder ({m.embed_dim}-d, {m.depth} blocks"
            + ("" if ckpt.encoder_only else ", with its decoder") + ")")
    use = ("It tags 16 kHz audio and, like every hear-mwmae model, gives HEAR 2021 embeddings"
           if head is not None else "It turns 16 kHz audio into HEAR 2021 embeddings")
    spdx = license_of(ckpt.provenance)
    warn = (f"\n\n> **Licence {spdx}: non-commercial use only** (inherited from the weights it derives from)."
            if spdx and "-nc" in spdx.lower() else "")
    return (f"# {inputs.name}\n\n{what}, for the `hear-mwmae` library. {use}: "
            f"{m.embedding_size}-d vectors every {cfg.frames_per_step * cfg.hop_ms:g} ms.{warn}")


def _usage(inputs: CardInputs) -> str:
    cfg = inputs.ckpt.config
    ref = f"hf://{inputs.repo_id}" if inputs.repo_id else "hf://OWNER/NAME"
    use = ("tags = hear_mwmae.tag(audio, model, top_k=5)                # audio: (n_clips, n_samples) float32, 16 kHz"
           if cfg.head is not None else
           "emb, ts = hear_mwmae.get_timestamp_embeddings(audio, model)  # audio: (n_clips, n_samples) float32, 16 kHz")
    where = ("" if inputs.repo_id else
             " (`OWNER/NAME`: the repository this folder is uploaded to, or pass the folder's path)")
    return ("## Use\n\nWith `hear-mwmae` and `huggingface_hub` installed" + where
            + ":\n\n```python\nimport hear_mwmae\n"
            f"model = hear_mwmae.load_model(\"{ref}\")  # huggingface_hub's cache; pin with @<commit> and sha256=...\n"
            f"{use}\n```\n\n"
            + ("`hear_mwmae.get_logits` gives the raw logits; " if cfg.head is not None else "")
            + "`hear_mwmae.get_scene_embeddings` gives one vector per clip (the mean over time).")


def _parameters(ckpt: Checkpoint) -> str:
    counts: dict[str, int] = {}
    for key, value in ckpt.state_dict.items():
        part = key.split(".", 1)[0]
        counts[part] = counts.get(part, 0) + value.numel()
    def count(n: int) -> str:
        return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n / 1e3:.1f} k"

    return f"{count(sum(counts.values()))} (" + ", ".join(f"{part} {count(n)}" for part, n in counts.items()) + ")"


def _architecture(inputs: CardInputs) -> str:
    ckpt, cfg = inputs.ckpt, inputs.ckpt.config
    m, fe, head = cfg.model, cfg.frontend, cfg.head
    (pt, pf), (gt, gf) = m.patch_size, m.grid_size
    if fe.kind == "logmel":
        frontend = (f"{fe.n_mels}-band log-mel ({fe.win_length / fe.sample_rate * 1000:g} ms window, "
                    f"{cfg.hop_ms:g} ms hop, {fe.f_min:g}–{fe.f_max:g} Hz), normalised per clip")
    else:
        frontend = (f"{fe.n_mels}-band Kaldi fbank ({fe.win_length / fe.sample_rate * 1000:g} ms window, "
                    f"{cfg.hop_ms:g} ms hop), normalised with fixed statistics (mean {fe.mean:g}, std {fe.std:g}"
                    + (", AudioSet's" if (fe.mean, fe.std) == (AUDIOSET_MEAN, AUDIOSET_STD) else "") + ")")
    encoder = (f"ViT, {m.embed_dim}-d, {m.depth} blocks × {m.num_heads} heads"
               + (", CLS token" if m.use_cls_token else "")
               + (f", windows {list(m.window_sizes)}" if m.window_sizes else "")
               + ("" if m.final_norm else ", no final norm (the last block's tokens)"))
    if ckpt.encoder_only:
        decoder = "not included (encoder only)"
    elif m.decoder_kind == "swin":
        decoder = (f"Swin-style, {m.decoder_embed_dim}-d, {m.decoder_depth} blocks × {m.decoder_num_heads} heads, "
                   f"windows {m.decoder_window[0]} × {m.decoder_window[1]} patches"
                   + (f", last {m.decoder_global_blocks} global" if m.decoder_global_blocks else ""))
    else:
        decoder = (f"{m.decoder_embed_dim}-d, {m.decoder_depth} blocks × {m.decoder_num_heads} heads, "
                   + (f"multi-window attention, windows {list(m.decoder_window_sizes)} (0 = global)"
                      if m.decoder_window_sizes else "global attention"))
    rows = [("family", f"{FAMILY_TITLES[m.family]} (`{m.family}`)"),
            ("input", f"16 kHz mono audio → {frontend}" if fe.sample_rate == 16000 else frontend),
            ("chunk", f"{cfg.chunk_frames} frames ({cfg.chunk_frames * cfg.hop_ms / 1000:g} s); "
                      "longer clips in chunks"),
            ("patches", f"{pt} × {pf} (time × frequency): a {gt} × {gf} grid"),
            ("encoder", encoder), ("decoder", decoder)]
    if head is not None:
        rows.append(("classifier", f"{head.num_classes} classes, "
                     + ("multi-label (sigmoid)" if head.multi_label else "single-label (softmax)")
                     + f"; {head.pooling} pooling → LayerNorm → linear"))
    rows += [("embeddings", f"{m.embedding_size}-d per {cfg.frames_per_step * cfg.hop_ms:g} ms step ({gf} frequency "
                            f"patches × {m.embed_dim}); scene: their mean"),
             ("parameters", _parameters(ckpt))]
    return "## Model\n\n| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _provenance_lines(prov: dict[str, Any]) -> list[str]:
    """What made these weights, one line per step back (a fine-tuned model, then its base)."""
    source = str(prov.get("source") or "")
    if source == "hear_mwmae.finetune":
        task = _task_name(str(prov.get("task")))
        lines = [f"Fine-tuned with hear-mwmae (recipe `{prov.get('recipe')}`) on `{task}`: "
                 f"the model after epoch {prov.get('epoch')} (step {prov.get('step')}).",
                 f"Base model: `{_shown(prov.get('base_model'))}` (sha256 `{prov.get('base_sha256')}`)."]
        base = prov.get("base_provenance")
        return lines + ([f"Base model's provenance: {line}" for line in _provenance_lines(base)]
                        if isinstance(base, dict) else [])
    if source == "hear_mwmae.pretrain":
        loss = prov.get("last_loss")
        return [f"Pre-trained with hear-mwmae (masked-autoencoder objective, recipe `{prov.get('recipe')}`): "
                f"{prov.get('step')} of {prov.get('total_steps')} steps on {prov.get('num_clips')} clips"
                + (f", last loss {loss:.4f}" if _finite(loss) else "")
                + (f", {prov['train_seconds']:g} s of training" if _finite(prov.get("train_seconds")) else "") + "."
                + (f" {prov['note']}" if prov.get("note") else "")]
    if source in CONVERTER_LICENSES:
        line = (f"Converted by hear-mwmae (converter version {prov.get('converter_version')}) from the authors' "
                f"`{prov.get('source_file')}` ({source}, layout `{prov.get('layout')}`), sha256 "
                f"`{prov.get('source_sha256')}`"
                + (f", step {prov['step']}" if prov.get("step") is not None else "") + ".")
        if prov.get("registry_name"):
            line += f" Released model `{prov['registry_name']}`, from {prov.get('source_url')}."
        return [line]
    return [f"Source: {source}." if source else "Not recorded."]


def _provenance(inputs: CardInputs) -> str:
    lines = _provenance_lines(inputs.ckpt.provenance)
    if inputs.saved_from:
        lines.append(f"Saved from `{inputs.saved_from['ref']}` (sha256 `{inputs.saved_from['sha256']}`).")
    return "## Provenance\n\n" + "\n".join(f"- {line}" for line in lines) + \
        "\n\nThe full record is in `model.safetensors`' metadata (`hear-mwmae info hf://...`)."


def _finetune_results(inputs: CardInputs) -> str:
    prov, res = inputs.ckpt.provenance, inputs.finetune_results
    cols = [k for k in FINETUNE_METRICS]
    header = ("| split | clips | " + " | ".join(FINETUNE_METRICS[k][1] for k in cols)
              + " |\n|---|---|" + "---|" * len(cols))

    def row(name: str, metrics: Any) -> str:
        if not isinstance(metrics, dict):
            return ""
        cells = [f"{metrics[k]:.4f}" if _finite(metrics.get(k)) else "–" for k in cols]
        return f"| {name} | {metrics.get('n', '–')} | " + " | ".join(cells) + " |"

    if res is not None and "folds" in res:
        rows = [row(f"test fold {f.get('test_fold')}", f.get("test")) for f in res["folds"]]
        note = (f"Mean test {res['metric']} over {res['n_folds']} folds: {res['test_mean']:.4f} ± "
                f"{res['test_std']:.4f} (std).")
    elif res is not None:
        rows = [row("validation", res.get("valid")), row("test", res.get("test"))]
        note = f"The model of epoch {res.get('epoch')} ({res.get('selected', 'best validation epoch')})."
    else:
        rows = [row("validation", prov.get("valid"))]
        note = "Validation metrics from the provenance (no test results were given)."
    if not any(rows):
        who = ("Fine-tuned by the authors before conversion; hear-mwmae recorded no results for it (the authors' "
               "README reports theirs)." if prov.get("source") in CONVERTER_LICENSES else "Not recorded.")
        return f"## Fine-tuning results\n\n{who}"
    return f"## Fine-tuning results\n\n{header}\n" + "\n".join(r for r in rows if r) + f"\n\n{note}"


def _labels(inputs: CardInputs) -> str:
    head = inputs.ckpt.config.head
    kind = "multi-label (sigmoid scores)" if head.multi_label else "single-label (softmax scores)"
    source = f", names from `{head.label_source}`" if head.label_source else ""
    if head.num_classes <= MAX_INLINE_LABELS and not head.label_ids:
        return f"## Labels\n\n{head.num_classes} classes, {kind}{source}, in output order: " + \
            ", ".join(f"`{label}`" for label in head.labels) + "."
    items = "\n".join(f"{i}. {label}" + (f" (`{head.label_ids[i]}`)" if head.label_ids else "")
                      for i, label in enumerate(head.labels))
    return (f"## Labels\n\n{head.num_classes} classes, {kind}{source}, in output order (`model.labels`):\n\n"
            f"<details><summary>all {head.num_classes}</summary>\n\n{items}\n\n</details>")


def _pm(entry: Any) -> str:
    if not isinstance(entry, dict) or not _finite(entry.get("mean")):
        return "–"
    return f"{entry['mean']:.1f}" + (f" ± {entry['ci95']:.1f}" if _finite(entry.get("ci95")) else "")


def _hear_table(res: dict[str, Any], family: str) -> str:
    lines = ["## HEAR results", "",
             f"HEAR 2021 tasks, a shallow classifier on the frozen embeddings (hear-mwmae `evaluation.run`, grid "
             f"`{res.get('grid')}`, {res.get('seeds')} seed(s)); percent, mean ± 95 % interval over seeds. The paper "
             "columns are MW-MAE-B-4×16-4l as published in the MW-MAE paper and its released weights in the same "
             "protocol" + (" (the MW-MAE paper's numbers, for reference: this is an Audio-MAE model)"
                           if family == "audiomae" else "") + ".", "",
             "| task | metric | seeds | this model | paper | released weights | this − paper |",
             "|---|---|---|---|---|---|---|"]
    for entry in res["tasks"].values():
        diff = entry.get("diff_vs_paper")
        lines.append(f"| {entry.get('title')} | {entry.get('metric')} | {entry.get('n_seeds')} | {_pm(entry)} | "
                     f"{_pm(entry.get('paper'))} | {_pm(entry.get('released'))} | "
                     f"{f'{diff:+.1f}' if _finite(diff) else '–'} |")
    overall = res.get("overall_score") or {}
    if _finite(overall.get("value")):
        lines += ["", f"Overall score s(m): {overall['value']:.1f} (paper: {overall.get('paper')}), "
                      f"{overall.get('label')}."]
    return "\n".join(lines)


def _license(inputs: CardInputs) -> str:
    provenance = inputs.ckpt.provenance
    spdx = license_of(provenance)
    # the authors' release is named only where the licence comes from it, not from the owner's choice
    inherited = license_of({k: v for k, v in provenance.items() if k != "license"})
    from_authors = bool(spdx and inherited and inherited.lower() == spdx.lower())
    if not spdx:
        text = ("Not stated. These weights were made by their owner with hear-mwmae; the licence is the owner's "
                "choice (`hear-mwmae save-pretrained --license SPDX-ID`).")
    else:
        text = f"**{spdx}**"
        if from_authors and "-nc" in spdx.lower():
            text += (": non-commercial use only. The weights derive from the Audio-MAE authors' release "
                     "(github.com/facebookresearch/AudioMAE), which is licensed CC-BY-NC 4.0.")
        elif from_authors and spdx.lower() == "apache-2.0" and inputs.ckpt.config.model.family == "mwmae":
            text += ", the licence of the MW-MAE authors' release (github.com/SarthakYadav/mwmae-jax-official)."
        elif not inherited:
            text += ", chosen by the weights' owner."
        else:
            text += "."
    return f"## Licence\n\n{text} The hear-mwmae library itself is MIT-licensed."


def _files(inputs: CardInputs) -> str:
    ckpt = inputs.ckpt
    parts = "encoder" + ("" if ckpt.encoder_only else ", decoder") + \
        (", classifier" if ckpt.config.head is not None else "")
    return ("## Files\n\n| file | holds |\n|---|---|\n"
            f"| `model.safetensors` | the weights ({parts}; float32, {inputs.weights_bytes / 1e6:.1f} MB, sha256 "
            f"`{inputs.weights_sha256}`); its metadata: format version, config, provenance |\n"
            "| `config.json` | the config, label names, licence and the sha256 above (checked on every load) |\n"
            "| `README.md` | this card |\n\nNo pickled code: JSON and safetensors only. Layout and compatibility: "
            "hear-mwmae's docs/checkpoints.md.")


def _references(inputs: CardInputs) -> str:
    return f"## Reference\n\n{REFERENCES[inputs.ckpt.config.model.family]}."


__all__ = ["CardInputs", "base_model_of", "datasets_of", "license_of", "metadata", "read_finetune_results",
           "read_hear_results", "render"]
