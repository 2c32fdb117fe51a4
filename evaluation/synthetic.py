"""Small synthetic tasks in HEAR 2021's task format, for tests and smoke runs.

    python -m evaluation.synthetic OUT_DIR [--clips 24] [--seed 0]

Writes four tasks under OUT_DIR, each laid out as heareval expects:
    <task>/task_metadata.json, labelvocabulary.csv (idx,label), <split>.json,
    <task>/16000/<split>/<file>.wav (mono, 16 kHz, PCM 16)
- synth_scene_multiclass: one tone class per clip (4 classes), train/valid/test, top1_acc.
- synth_scene_multilabel: any non-empty set of the tones per clip, train/valid/test, mAP.
- synth_event: tone events with onsets and offsets in 4 s clips, event_onset_200ms_fms.
- synth_scene_kfold: the multiclass task as 3 folds (new_split_kfold), top1_acc.
The classes are tones far apart in pitch under noise: easy for any reasonable embedding.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
TONES = {"low": 250.0, "mid": 700.0, "high": 1900.0, "top": 5000.0}
TASK_NAMES = ("synth_scene_multiclass", "synth_scene_multilabel", "synth_event", "synth_scene_kfold")


def _tone(freq: float, n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / SAMPLE_RATE
    return np.sin(2 * np.pi * freq * (1 + 0.01 * rng.standard_normal()) * t + rng.uniform(0, 2 * np.pi))


def _write_task(root: Path, name: str, metadata: dict, clips: dict[str, dict[str, tuple[np.ndarray, object]]]) -> Path:
    """Write one task: clips maps split -> file name -> (audio, label entry)."""
    task = root / name
    labels = sorted(TONES)
    full = {"task_name": name, "version": "synthetic", "mode": "full", "sample_duration": None,
            "splits": list(clips), **metadata}
    task.mkdir(parents=True, exist_ok=True)
    (task / "task_metadata.json").write_text(json.dumps(full, indent=2))
    with open(task / "labelvocabulary.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["idx", "label"])
        writer.writerows(enumerate(labels))
    for split, files in clips.items():
        audio_dir = task / str(SAMPLE_RATE) / split
        audio_dir.mkdir(parents=True, exist_ok=True)
        for fname, (audio, _) in files.items():
            sf.write(audio_dir / fname, audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
        (task / f"{split}.json").write_text(json.dumps({f: lab for f, (_, lab) in files.items()}, indent=1))
    return task


def _scene_clip(active: list[str], rng: np.random.Generator, seconds: float = 1.0) -> np.ndarray:
    n = int(seconds * SAMPLE_RATE)
    audio = 0.05 * rng.standard_normal(n)
    for label in active:
        audio += rng.uniform(0.2, 0.4) * _tone(TONES[label], n, rng)
    return np.clip(audio, -1, 1)


def _event_clip(rng: np.random.Generator, seconds: float = 4.0) -> tuple[np.ndarray, list[dict]]:
    n = int(seconds * SAMPLE_RATE)
    audio = 0.05 * rng.standard_normal(n)
    events = []
    start = rng.uniform(0.1, 0.6)
    while start < seconds - 0.8:
        label = str(rng.choice(sorted(TONES)))
        length = rng.uniform(0.6, 1.2)
        end = min(start + length, seconds - 0.05)
        a, b = int(start * SAMPLE_RATE), int(end * SAMPLE_RATE)
        audio[a:b] += 0.4 * _tone(TONES[label], b - a, rng)
        events.append({"label": label, "start": round(start * 1000, 1), "end": round(end * 1000, 1)})
        start = end + rng.uniform(0.3, 0.8)
    return np.clip(audio, -1, 1), events


def make_tasks(out_dir: Path, clips_per_split: int = 24, seed: int = 0) -> list[Path]:
    """Write the four synthetic tasks under out_dir and return their folders."""
    rng = np.random.default_rng(seed)
    labels = sorted(TONES)
    tvt = ("train", "valid", "test")
    scene = {"embedding_type": "scene", "sample_duration": 1.0}

    def multiclass(splits: tuple[str, ...]) -> dict:
        return {s: {f"{s}_{i:03d}.wav": (_scene_clip([labels[i % len(labels)]], rng), [labels[i % len(labels)]])
                    for i in range(clips_per_split)} for s in splits}

    def multilabel_clip() -> tuple[np.ndarray, list[str]]:
        active = [lab for lab in labels if rng.random() < 0.5] or [str(rng.choice(labels))]
        return _scene_clip(active, rng), active

    tasks = [
        _write_task(out_dir, TASK_NAMES[0], {**scene, "prediction_type": "multiclass",
                                             "split_mode": "trainvaltest", "evaluation": ["top1_acc"]},
                    multiclass(tvt)),
        _write_task(out_dir, TASK_NAMES[1], {**scene, "prediction_type": "multilabel",
                                             "split_mode": "trainvaltest", "evaluation": ["mAP"]},
                    {s: {f"{s}_{i:03d}.wav": multilabel_clip() for i in range(clips_per_split)} for s in tvt}),
        _write_task(out_dir, TASK_NAMES[2], {"embedding_type": "event", "prediction_type": "multilabel",
                                             "split_mode": "trainvaltest", "sample_duration": 4.0,
                                             "evaluation": ["event_onset_200ms_fms"]},
                    {s: {f"{s}_{i:03d}.wav": _event_clip(rng) for i in range(max(4, clips_per_split // 3))}
                     for s in tvt}),
        _write_task(out_dir, TASK_NAMES[3], {**scene, "prediction_type": "multiclass",
                                             "split_mode": "new_split_kfold", "evaluation": ["top1_acc"]},
                    multiclass(("fold00", "fold01", "fold02"))),
    ]
    return tasks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.synthetic", description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--clips", type=int, default=24, help="clips per split (event task: a third)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for task in make_tasks(args.out_dir, args.clips, args.seed):
        log.info("wrote %s", task)
    return 0


if __name__ == "__main__":
    sys.exit(main())
