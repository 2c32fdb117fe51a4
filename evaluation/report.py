"""Aggregate per-seed results into results.json, results.md and results.png.

Per task: mean over seeds and the 95 % Student-t confidence half-width
t(0.975, n-1) * s / sqrt(n) (s with Bessel's correction), in percent, as in the paper.
"""

from __future__ import annotations

import datetime
import math
from pathlib import Path
from typing import Any, Sequence

from scipy import stats

from .store import write_json_atomic, write_text_atomic
from .tasks import SCORE_FIT_LABEL, TASKS, overall_score, registered

PAPER_OVERALL = 89.2  # MW-MAE-B's s(m) in the paper


def model_facts(checkpoint: Path) -> dict[str, Any]:
    """Family and size of a checkpoint, for labelling its results (MW-MAE and Audio-MAE runs
    are reported the same way; `evaluation.compare` puts them side by side)."""
    from hear_mwmae.sources import load_checkpoint

    cfg = load_checkpoint(checkpoint).config
    m = cfg.model
    return {"family": m.family, "embedding_size": m.embedding_size, "embed_dim": m.embed_dim, "depth": m.depth,
            "patch_size": list(m.patch_size), "chunk_frames": cfg.chunk_frames, "frontend": cfg.frontend.kind}


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """(mean, 95 % t-interval half-width); the half-width is NaN for fewer than 2 values."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n < 2:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else value


def summarize(per_task: dict[str, list[dict[str, Any]]], run_info: dict[str, Any]) -> dict[str, Any]:
    """The content of results.json from each task's seed results (task dir name -> list)."""
    tasks: dict[str, Any] = {}
    for name, results in per_task.items():
        results = sorted(results, key=lambda r: r["seed"])
        scores = [100.0 * r["score"] for r in results]
        mean, ci = mean_ci95(scores)
        entry: dict[str, Any] = {
            "title": name, "metric": results[0]["metric"] if results else None,
            "n_seeds": len(scores), "seeds": [r["seed"] for r in results],
            "scores": scores, "mean": _finite(mean), "ci95": _finite(ci),
        }
        task = registered(name)
        if task is not None:
            entry.update(
                title=task.title,
                paper={"mean": task.paper[0], "ci95": task.paper[1]},
                released={"mean": task.released[0], "ci95": task.released[1]},
                diff_vs_paper=_finite(mean - task.paper[0]),
                diff_vs_released=_finite(mean - task.released[0]),
            )
        tasks[name] = entry
    overall = overall_score({k: v["mean"] for k, v in tasks.items() if v["mean"] is not None})
    return {
        **run_info,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "units": "percent; mean and 95 % t-interval half-width over seeds",
        "tasks": tasks,
        "overall_score": {"value": overall, "paper": PAPER_OVERALL, "label": SCORE_FIT_LABEL,
                          "note": None if overall is not None else "needs all ten registered tasks"},
    }


def _pm(mean: float | None, ci: float | None) -> str:
    if mean is None:
        return "-"
    return f"{mean:.1f}" if ci is None else f"{mean:.1f} ± {ci:.1f}"


def to_markdown(summary: dict[str, Any]) -> str:
    """results.md: one row per task, then the overall score when defined."""
    lines = [
        "# HEAR results",
        "",
        f"- checkpoint: `{summary.get('checkpoint')}` (sha256 `{summary.get('checkpoint_sha256', '')[:16]}…`)"
        + (f", family `{summary['model']['family']}`, {summary['model']['embedding_size']}-d"
           if summary.get("model") else ""),
        f"- grid: `{summary.get('grid')}`, seeds: {summary.get('seeds')}, device: `{summary.get('device')}`",
        f"- {summary['units']}; paper = MW-MAE-B-4x16-4l as published, released = the released weights",
        "",
        "| task | metric | seeds | ours | paper | released weights | ours − paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in summary["tasks"].values():
        paper = entry.get("paper")
        released = entry.get("released")
        lines.append("| {} | {} | {} | {} | {} | {} | {} |".format(
            entry["title"], entry["metric"], entry["n_seeds"], _pm(entry["mean"], entry["ci95"]),
            _pm(paper["mean"], paper["ci95"]) if paper else "-",
            _pm(released["mean"], released["ci95"]) if released else "-",
            f"{entry['diff_vs_paper']:+.1f}" if entry.get("diff_vs_paper") is not None else "-",
        ))
    overall = summary["overall_score"]
    lines.append("")
    if overall["value"] is not None:
        lines.append(f"**Overall score s(m): {overall['value']:.1f}** (paper: {overall['paper']:.1f}) — "
                     f"{overall['label']}.")
    else:
        lines.append(f"Overall score s(m): not computed ({overall['note']}; "
                     f"{sum(1 for t in TASKS if t.dirname in summary['tasks'])} of 10 present).")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], path: Path) -> None:
    """Bar chart of ours vs the paper per task, with 95 % interval error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    entries = list(summary["tasks"].values())
    x = np.arange(len(entries))
    width = 0.38
    ours = [e["mean"] or 0.0 for e in entries]
    ours_err = [e["ci95"] or 0.0 for e in entries]
    paper = [e["paper"]["mean"] if e.get("paper") else np.nan for e in entries]  # NaN: no bar
    paper_err = [e["paper"]["ci95"] if e.get("paper") else np.nan for e in entries]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.0 * len(entries) + 4), 4.5))
    ax.bar(x - width / 2, ours, width, yerr=ours_err, capsize=3, label="ours")
    ax.bar(x + width / 2, paper, width, yerr=paper_err, capsize=3, label="paper (MW-MAE-B-4x16-4l)")
    save_score_chart(fig, ax, [e["title"] for e in entries], f"HEAR, {summary.get('grid')} grid, mean ± 95 % CI "
                     "over seeds", path)


def save_score_chart(fig: Any, ax: Any, titles: list[str], title: str, path: Path) -> None:
    """Label a per-task score chart (tasks on x, percent on y), save it as PNG and close it."""
    import numpy as np
    import matplotlib.pyplot as plt

    ax.set_xticks(np.arange(len(titles)), titles, rotation=30, ha="right")
    ax.set_ylabel("test score (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_reports(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write results.json, results.md and results.png into out_dir; return their paths."""
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "png": out_dir / "results.png"}
    write_json_atomic(paths["json"], summary)
    write_text_atomic(paths["md"], to_markdown(summary))
    plot(summary, paths["png"])
    return paths
