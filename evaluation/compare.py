"""Put several evaluation runs side by side, e.g. an Audio-MAE and an MW-MAE checkpoint.

    python -m evaluation.compare RUN_A RUN_B [...] [--labels "Audio-MAE B,MW-MAE B"] [--out DIR]

Each RUN is an `evaluation.run` output folder (or its results.json). Writes DIR/comparison.md,
comparison.json and comparison.png (default DIR: the current folder): one column per run
(mean ± 95 % interval over its seeds), then the MW-MAE paper's published MW-MAE-B-4x16-4l and
MAE-B-4x16 numbers for the registered tasks, and each run's overall score s(m) where all ten
registered tasks are present. Runs are labelled by model family and checkpoint unless
--labels is given. Runs made with different grids or seed counts are compared as they are;
the table says which grid and how many seeds each used.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from .report import _pm, save_score_chart
from .store import read_json, write_json_atomic, write_text_atomic
from .tasks import BY_DIRNAME, SCORE_FIT_LABEL, TASKS

log = logging.getLogger("evaluation")


def load_run(path: Path) -> dict[str, Any]:
    """The results.json of a run folder (or the file itself)."""
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no results.json (is it an `evaluation.run` --out folder?)")
    summary = read_json(file)
    if not isinstance(summary, dict) or "tasks" not in summary:
        raise ValueError(f"{file}: not an evaluation.run results.json")
    return summary


def default_label(summary: dict[str, Any]) -> str:
    """'<family> <checkpoint file stem>', e.g. 'audiomae vit_b_as2m'."""
    family = (summary.get("model") or {}).get("family", "?")
    return f"{family} {Path(str(summary.get('checkpoint', 'run'))).stem}"


def compare(summaries: Sequence[dict[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """comparison.json: per task, each run's mean / ci95 / seeds, and the published references."""
    if len(labels) != len(summaries):
        raise ValueError(f"{len(labels)} labels for {len(summaries)} runs")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {list(labels)}")
    names = [t.dirname for t in TASKS if any(t.dirname in s["tasks"] for s in summaries)]
    names += sorted({n for s in summaries for n in s["tasks"]} - set(names))
    tasks: dict[str, Any] = {}
    for name in names:
        task = BY_DIRNAME.get(name)
        entry: dict[str, Any] = {"title": task.title if task else name, "runs": {}}
        for label, summary in zip(labels, summaries):
            result = summary["tasks"].get(name)
            if result is not None:
                entry["runs"][label] = {k: result.get(k) for k in ("mean", "ci95", "n_seeds", "metric")}
        if task is not None:
            entry["mwmae_b_paper"] = {"mean": task.paper[0], "ci95": task.paper[1]}
            entry["mae_b_paper"] = {"mean": task.mae_b, "ci95": None}
        tasks[name] = entry
    runs = {label: {"checkpoint": s.get("checkpoint"), "checkpoint_sha256": s.get("checkpoint_sha256"),
                    "model": s.get("model"), "grid": s.get("grid"), "seeds": len(s.get("seeds") or []),
                    "overall_score": (s.get("overall_score") or {}).get("value")}
            for label, s in zip(labels, summaries)}
    return {"runs": runs, "tasks": tasks, "overall_score_label": SCORE_FIT_LABEL}


def to_markdown(comparison: dict[str, Any]) -> str:
    labels = list(comparison["runs"])
    lines = ["# HEAR results side by side", ""]
    for label, run in comparison["runs"].items():
        model = run.get("model") or {}
        lines.append(f"- **{label}**: `{run['checkpoint']}` (family {model.get('family', '?')}, "
                     f"{model.get('embedding_size', '?')}-d), grid `{run['grid']}`, {run['seeds']} seeds")
    lines += ["- MW-MAE-B / MAE-B: the MW-MAE paper's published numbers (its MAE-B is the authors' JAX MAE "
              "baseline, not Audio-MAE)", "",
              "| task | " + " | ".join(labels) + " | MW-MAE-B (paper) | MAE-B (paper) |",
              "|---|" + "---|" * (len(labels) + 2)]
    for entry in comparison["tasks"].values():
        cells = [_pm(entry["runs"][lb]["mean"], entry["runs"][lb]["ci95"]) if lb in entry["runs"] else "-"
                 for lb in labels]
        refs = [_pm(entry[k]["mean"], entry[k]["ci95"]) if k in entry else "-" for k in ("mwmae_b_paper", "mae_b_paper")]
        lines.append(f"| {entry['title']} | " + " | ".join(cells + refs) + " |")
    scores = [comparison["runs"][lb]["overall_score"] for lb in labels]
    lines.append("| **overall s(m)** | " + " | ".join("-" if s is None else f"**{s:.1f}**" for s in scores)
                 + " | 89.2 | 88.1 |")
    lines += ["", f"s(m): {comparison['overall_score_label']}; '-' where not all ten registered tasks ran."]
    return "\n".join(lines) + "\n"


def plot(comparison: dict[str, Any], path: Path) -> None:
    """Grouped bars: one colour per run, per task, with 95 % interval error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels, entries = list(comparison["runs"]), list(comparison["tasks"].values())
    x = np.arange(len(entries))
    width = 0.8 / max(1, len(labels))
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(entries) + 4), 4.5))
    for i, label in enumerate(labels):
        runs = [e["runs"].get(label, {}) for e in entries]
        ax.bar(x - 0.4 + width * (i + 0.5), [r.get("mean") or np.nan for r in runs], width,
               yerr=[r.get("ci95") or 0.0 for r in runs], capsize=3, label=label)
    paper = [e["mwmae_b_paper"]["mean"] if "mwmae_b_paper" in e else np.nan for e in entries]
    ax.scatter(x, paper, marker="_", s=400, color="black", zorder=3, label="MW-MAE-B (paper)")
    save_score_chart(fig, ax, [e["title"] for e in entries], "HEAR, mean ± 95 % CI over seeds", path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m evaluation.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="evaluation.run output folders (or results.json files)")
    p.add_argument("--labels", help="comma-separated column labels, one per run")
    p.add_argument("--out", type=Path, default=Path("."), help="where comparison.{md,json,png} go")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        summaries = [load_run(r) for r in args.runs]
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else [default_label(s) for s in summaries]
        comparison = compare(summaries, labels)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    write_json_atomic(args.out / "comparison.json", comparison)
    write_text_atomic(args.out / "comparison.md", to_markdown(comparison))
    plot(comparison, args.out / "comparison.png")
    sys.stdout.write(to_markdown(comparison))
    return 0


if __name__ == "__main__":
    sys.exit(main())
