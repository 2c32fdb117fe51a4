"""The ten HEAR 2021 tasks of the MW-MAE paper, their published numbers, and task checks.

Directory names are those of the HEAR 2021 task archives (16000 Hz versions); `metric` is
the first entry of the task's `evaluation` list, which heareval reports as `test_score`.
Published numbers are MW-MAE-B-4x16-4l with the authors' protocol (percent, mean and 95 %
confidence half-width over 10 seeds), from shared/spec/MWMAE_REFERENCE.md.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

SAMPLE_RATE = 16000
SCORE_FIT_OFFSET = -47.98
SCORE_FIT_LABEL = (
    "overall score s(m), from a linear fit to the paper's appendix tables "
    "(reproduces every published s(m) within 0.04; not the paper's exact normalisation)"
)


@dataclass(frozen=True)
class HearTask:
    """One registered task: where it lives, how it is scored, what was published."""

    key: str  # short name used on the command line
    dirname: str  # HEAR 2021 task directory name
    title: str
    metric: str  # primary heareval score
    paper: tuple[float, float]  # (mean, 95 % half-width), percent
    released: tuple[float, float]  # the released weights, same protocol
    mae_b: float  # MAE-B-4x16 in the same setup (mean)
    fit_weight: float  # weight of the overall-score fit


TASKS: tuple[HearTask, ...] = (
    HearTask("beijing_opera", "beijing_opera-v1.0-hear2021-full", "Beijing Opera", "top1_acc",
             (96.0, 0.5), (96.3, 0.3), 96.2, 0.21585),
    HearTask("crema_d", "tfds_crema_d-1.0.0-full", "CREMA-D", "top1_acc",
             (73.1, 0.3), (73.5, 0.1), 72.2, 0.22146),
    HearTask("esc50", "esc50-v2.0.0-full", "ESC-50", "top1_acc",
             (81.2, 0.4), (81.6, 0.4), 80.9, 0.11205),
    HearTask("libricount", "libricount-v1.0.0-hear2021-full", "LibriCount", "top1_acc",
             (68.8, 0.2), (68.8, 0.4), 67.3, 0.24387),
    HearTask("mridangam_stroke", "mridangam_stroke-v1.5-full", "Mridangam Stroke", "top1_acc",
             (97.4, 0.1), (97.4, 0.1), 97.4, 0.23927),
    HearTask("mridangam_tonic", "mridangam_tonic-v1.5-full", "Mridangam Tonic", "top1_acc",
             (97.9, 0.1), (97.9, 0.1), 98.3, 0.15468),
    HearTask("nsynth_pitch_5h", "nsynth_pitch-v2.2.3-5h", "NSynth Pitch 5h", "pitch_acc",
             (69.3, 0.6), (69.2, 0.5), 68.3, 0.14032),
    HearTask("speech_commands_5h", "speech_commands-v0.0.2-5h", "Speech Commands 5h", "top1_acc",
             (90.9, 0.2), (90.9, 0.3), 89.4, 0.10615),
    HearTask("fsd50k", "fsd50k-v1.0-full", "FSD50K", "mAP",
             (51.2, 0.2), (51.3, 0.1), 50.4, 0.17347),
    HearTask("vox_lingua_top10", "vox_lingua_top10-hear2021-full", "VoxLingua107 top-10", "top1_acc",
             (44.2, 0.9), (43.9, 0.7), 43.1, 0.17423),
)
BY_DIRNAME: dict[str, HearTask] = {t.dirname: t for t in TASKS}
BY_KEY: dict[str, HearTask] = {t.key: t for t in TASKS}

_REQUIRED_METADATA = ("task_name", "embedding_type", "prediction_type", "split_mode", "splits", "evaluation")


class TaskDirError(ValueError):
    """A task directory is missing or not in HEAR's task format."""


def registered(dirname: str) -> HearTask | None:
    """The registered task with this directory name, if any."""
    return BY_DIRNAME.get(dirname)


def resolve_names(names: list[str], tasks_dir: Path) -> list[str]:
    """Map command-line task names (directory names or registry keys) to directory names.

    `paper` stands for the ten registered tasks; an empty list means every task directory
    found under tasks_dir.
    """
    if not names:
        found = sorted(p.parent.name for p in tasks_dir.glob("*/task_metadata.json"))
        if not found:
            raise TaskDirError(f"no task directories (with task_metadata.json) under {tasks_dir}")
        return found
    out: list[str] = []
    for name in names:
        if name == "paper":
            out.extend(t.dirname for t in TASKS)
        else:
            out.append(BY_KEY[name].dirname if name in BY_KEY else name)
    return list(dict.fromkeys(out))


def check_task_dir(path: Path, sample_rate: int = SAMPLE_RATE) -> dict:
    """Check that `path` is a HEAR task at `sample_rate` Hz and return its metadata.

    Raises TaskDirError naming the first problem found.
    """
    hint = "see evaluation/README.md for where to get the HEAR 2021 tasks (16000 Hz versions)"
    if not path.is_dir():
        raise TaskDirError(f"task directory {path} does not exist; {hint}")
    meta_path = path / "task_metadata.json"
    try:
        metadata = json.loads(meta_path.read_text())
    except FileNotFoundError:
        raise TaskDirError(f"{path} has no task_metadata.json: not a HEAR task directory; {hint}") from None
    except json.JSONDecodeError as exc:
        raise TaskDirError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise TaskDirError(f"{meta_path} must hold a JSON object")
    missing = [k for k in _REQUIRED_METADATA if k not in metadata]
    if missing:
        raise TaskDirError(f"{meta_path} lacks {missing}")
    if metadata["embedding_type"] not in ("scene", "event"):
        raise TaskDirError(f"{meta_path}: embedding_type must be scene or event")
    if not metadata["splits"] or not metadata["evaluation"]:
        raise TaskDirError(f"{meta_path}: splits and evaluation must be non-empty lists")
    if not (path / "labelvocabulary.csv").is_file():
        raise TaskDirError(f"{path} has no labelvocabulary.csv")
    for split in metadata["splits"]:
        if not (path / f"{split}.json").is_file():
            raise TaskDirError(f"{path} has no {split}.json (labels of split {split!r})")
        audio = path / str(sample_rate) / str(split)
        if not audio.is_dir():
            raise TaskDirError(f"{path} has no {sample_rate}/{split}/ audio folder; {hint}")
    return metadata


def overall_score(means: Mapping[str, float]) -> float | None:
    """The spec's linear fit of the paper's s(m), from per-task means in percent keyed by
    directory name; None unless all ten registered tasks are present and finite."""
    if not all(t.dirname in means and math.isfinite(means[t.dirname]) for t in TASKS):
        return None
    return sum(t.fit_weight * means[t.dirname] for t in TASKS) + SCORE_FIT_OFFSET
