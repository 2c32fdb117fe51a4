"""The paper's scaling tables as plots: s(m) against encoder size, patch count, decoder depth and
pre-training data, MAE vs MW-MAE, with your own results added as points.

    python -m evaluation.scaling [--results RUN[@key=value,...] ...] [--lo ... --hi ... | --paper-fit]
                                 [--out DIR]

s(m) = 100 / 10 * sum_t (x_t - lo_t) / (hi_t - lo_t) over the ten tasks (per-task min-max
normalisation; it reproduces every printed s(m) of the appendix to the rounding floor).
The paper does not give lo_t / hi_t (only hi - lo is recoverable), so the bounds are an
explicit input and printed beside every s(m):
  --lo / --hi   ten values in task order (BO CD ESC-50 LC Mri-S Mri-T NS-5h SC-5h F50K VL) or
                TASK=VALUE pairs; every point, the paper's rows included, is scored with them;
  --paper-fit   the least-squares fit to the printed rows (evaluation/overall_score_fit.json:
                s = sum_t slope_t x_t + offset), which reproduces them within 0.043;
  neither       the paper's rows at their printed s(m) (the authors' unknown bounds); your
                results then cannot be scored (an error).
RUN: an `evaluation.run` output folder or results.json (per-task means), or a JSON
{"tasks": {"BO": 95.1, ...}} keyed by the short names above (or task directory names).
Its place on each axis comes from its checkpoint when results.json names one that exists
(encoder size, patch count, decoder depth), else from @encoder_params=<M>,patches=<n>,
decoder_depth=<k>,data_percent=<p>; also @label=<text>,model=<MAE|MW-MAE|...>. Writes
DIR/scaling.png and DIR/scaling.json (default DIR: the current folder); prints every point.
Data: evaluation/paper_tables.json (Tables 4-7 of the NeurIPS 2023 submission's appendix).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from hear_mwmae.config import ENCODER_SIZES

from .store import read_json, write_json_atomic
from .tasks import TASKS

log = logging.getLogger("evaluation")
HERE = Path(__file__).resolve().parent
PAPER_TABLES = HERE / "paper_tables.json"
SCORE_FIT = HERE / "overall_score_fit.json"
TASK_KEYS = ("BO", "CD", "ESC-50", "LC", "Mri-S", "Mri-T", "NS-5h", "SC-5h", "F50K", "VL")
# the registry lists the same ten tasks in the same order
DIRNAMES = dict(zip(TASK_KEYS, (t.dirname for t in TASKS)))
ALIASES = {**{t.dirname: k for k, t in zip(TASK_KEYS, TASKS)}, **{t.key: k for k, t in zip(TASK_KEYS, TASKS)}}
VIT_NAMES = {"ViT-T": "tiny", "ViT-S": "small", "ViT-M": "medium", "ViT-B": "base", "ViT-L": "large",
             "ViT-H": "huge"}
# axis -> (paper table, x label, log scale)
AXES: dict[str, tuple[str, str, bool]] = {
    "encoder_params": ("table5_encoder_size", "encoder parameters in blocks (M)", True),
    "patches": ("table4_patch_size", "patches per chunk, n", True),
    "decoder_depth": ("table6_decoder_depth", "decoder blocks", True),
    "data_percent": ("table7_pretraining_data", "pre-training data (% of AudioSet-5k)", False),
}


def block_params(embed_dim: int, depth: int) -> float:
    """Parameters of `depth` ViT blocks of width d (qkv, proj, MLP x4, two LayerNorms), in millions."""
    return depth * (12 * embed_dim**2 + 13 * embed_dim) / 1e6


@dataclass(frozen=True)
class Bounds:
    """How per-task scores become s(m): min-max bounds (lo, hi), or the paper fit."""

    lo: dict[str, float] | None = None
    hi: dict[str, float] | None = None
    slopes: dict[str, float] | None = None
    offset: float | None = None

    def score(self, scores: dict[str, float]) -> float:
        missing = [k for k in TASK_KEYS if k not in scores or not math.isfinite(scores[k])]
        if missing:
            raise ValueError(f"s(m) needs all ten tasks; missing {missing}")
        if self.slopes is not None:
            return sum(self.slopes[k] * scores[k] for k in TASK_KEYS) + self.offset
        return 10.0 * sum((scores[k] - self.lo[k]) / (self.hi[k] - self.lo[k]) for k in TASK_KEYS)

    def describe(self) -> str:
        if self.slopes is not None:
            ranges = ", ".join(f"{k} {10 / self.slopes[k]:.2f}" for k in TASK_KEYS)
            return f"paper fit: hi-lo = {ranges}; offset {self.offset:.3f}"
        return "lo/hi = " + ", ".join(f"{k} {self.lo[k]:g}/{self.hi[k]:g}" for k in TASK_KEYS)


def parse_task_values(values: Sequence[str], what: str) -> dict[str, float]:
    """Ten numbers in task order, or TASK=VALUE pairs naming all ten tasks."""
    if all("=" not in v for v in values):
        if len(values) != len(TASK_KEYS):
            raise ValueError(f"{what}: give {len(TASK_KEYS)} values in task order {' '.join(TASK_KEYS)}, "
                             f"got {len(values)}")
        return dict(zip(TASK_KEYS, map(float, values)))
    out: dict[str, float] = {}
    for item in values:
        key, _, value = item.partition("=")
        key = ALIASES.get(key, key)
        if key not in TASK_KEYS:
            raise ValueError(f"{what}: unknown task {key!r}; tasks: {' '.join(TASK_KEYS)}")
        out[key] = float(value)
    missing = [k for k in TASK_KEYS if k not in out]
    if missing:
        raise ValueError(f"{what}: missing tasks {missing}")
    return out


def make_bounds(lo: Sequence[str] | None, hi: Sequence[str] | None, paper_fit: bool) -> Bounds | None:
    if paper_fit and (lo or hi):
        raise ValueError("choose either --lo/--hi or --paper-fit")
    if paper_fit:
        fit = read_json(SCORE_FIT)["minmax"]
        return Bounds(slopes={k: float(fit["slopes"][k]) for k in TASK_KEYS}, offset=float(fit["intercept"]))
    if not lo and not hi:
        return None
    if not (lo and hi):
        raise ValueError("--lo and --hi go together")
    low, high = parse_task_values(lo, "--lo"), parse_task_values(hi, "--hi")
    bad = [k for k in TASK_KEYS if not high[k] > low[k]]
    if bad:
        raise ValueError(f"need hi > lo for every task; not for {bad}")
    return Bounds(lo=low, hi=high)


def _axis_value(axis: str, condition: str) -> tuple[float, str]:
    """(x, tick text) of a paper row's condition string."""
    if axis == "encoder_params":
        name = condition.split("=", 1)[1].strip()
        dim, depth, _ = ENCODER_SIZES[VIT_NAMES[name]]
        return block_params(dim, depth), name
    if axis == "patches":
        m = re.search(r"\((\d+x\d+)\), n=(\d+)", condition)
        return float(m.group(2)), m.group(1)
    if axis == "decoder_depth":
        return float(condition.split("=", 1)[1]), condition.split("=", 1)[1]
    m = re.match(r"(\d+)%", condition)
    return float(m.group(1)), f"{m.group(1)}%"


def paper_points(bounds: Bounds | None) -> list[dict[str, Any]]:
    """Every row of the four scaling tables with its axis position and s(m)."""
    tables = read_json(PAPER_TABLES)["tables"]
    points = []
    for axis, (table, _, _) in AXES.items():
        for row in tables[table]["rows"]:
            x, tick = _axis_value(axis, row["condition"])
            scores = {k: float(v[0]) for k, v in row["tasks"].items()}
            printed, pm = row["s_m"]
            points.append({"source": "paper", "table": table, "axis": axis, "x": x, "tick": tick,
                           "condition": row["condition"], "model": row["model"], "tasks": scores,
                           "s_m_printed": printed, "s_m_printed_pm": pm,
                           "s_m": bounds.score(scores) if bounds else printed})
    return points


def _task_scores(results: dict[str, Any]) -> dict[str, float]:
    scores = {}
    for name, value in results.get("tasks", {}).items():
        key = ALIASES.get(name, name)
        if key in TASK_KEYS:
            mean = value.get("mean") if isinstance(value, dict) else value
            if mean is not None:
                scores[key] = float(mean)
    return scores


def _from_checkpoint(path: str) -> dict[str, Any]:
    from hear_mwmae.sources import load_checkpoint

    m = load_checkpoint(path).config.model
    model = "Audio-MAE" if m.family == "audiomae" else ("MW-MAE" if any(m.decoder_window_sizes) else "MAE")
    return {"encoder_params": block_params(m.embed_dim, m.depth), "patches": float(m.num_patches),
            "decoder_depth": float(m.decoder_depth), "model": model}


def user_point(spec: str) -> dict[str, Any]:
    """A --results argument: PATH[@key=value,...] -> point with its tasks and axis positions."""
    path, _, extra = spec.partition("@")
    file = Path(path) / "results.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--results {path}: no such file (an evaluation.run folder or a JSON file)")
    results = read_json(file)
    point: dict[str, Any] = {"source": "user", "file": str(file), "label": Path(path).stem, "model": "yours",
                             "tasks": _task_scores(results)}
    ckpt = results.get("checkpoint")
    if ckpt and Path(ckpt).is_file():
        point.update(_from_checkpoint(ckpt))
    elif results.get("model", {}).get("embed_dim"):
        facts = results["model"]
        point["encoder_params"] = block_params(int(facts["embed_dim"]), int(facts["depth"]))
    for item in filter(None, extra.split(",")):
        key, _, value = item.partition("=")
        if key in AXES:
            point[key] = float(value)
        elif key in ("label", "model"):
            point[key] = value
        else:
            raise ValueError(f"--results {spec}: unknown key {key!r} (use {', '.join([*AXES, 'label', 'model'])})")
    return point


def plot(points: list[dict[str, Any]], users: list[dict[str, Any]], bounds: Bounds | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
    colours = {"MAE": "C1", "MW-MAE": "C0"}
    for ax, (axis, (table, xlabel, log_x)) in zip(axes.flat, AXES.items()):
        for model in ("MAE", "MW-MAE"):
            rows = sorted((p for p in points if p["axis"] == axis and p["model"] == model), key=lambda p: p["x"])
            err = [p["s_m_printed_pm"] for p in rows] if bounds is None else None
            ax.errorbar([p["x"] for p in rows], [p["s_m"] for p in rows], yerr=err, marker="o", ms=4, capsize=2,
                        color=colours[model], label=f"{model} (paper)")
            for p in rows:
                ax.annotate(p["tick"], (p["x"], p["s_m"]), fontsize=6, xytext=(3, -9 if model == "MAE" else 4),
                            textcoords="offset points", color=colours[model])
        for u in users:
            if axis in u and "s_m" in u:
                ax.plot(u[axis], u["s_m"], marker="*", ms=12, ls="none", color="C3")
                ax.annotate(u["label"], (u[axis], u["s_m"]), fontsize=7, xytext=(4, 4), textcoords="offset points")
        if log_x:
            ax.set_xscale("log")
        if axis in ("patches", "decoder_depth"):  # the paper's values as plain ticks
            ticks = sorted({p["x"] for p in points if p["axis"] == axis})
            ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("s(m)")
        ax.set_title(table.replace("_", " "), fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    note = ("s(m) as printed (the authors' bounds, not published)" if bounds is None
            else "s(m) with " + bounds.describe())
    fig.text(0.01, 0.005, note, fontsize=6.5, wrap=True)
    fig.suptitle("MW-MAE paper, appendix Tables 4-7: overall score s(m)", fontsize=11)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m evaluation.scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", action="append", default=[], metavar="RUN[@key=value,...]",
                        help="your results (repeatable)")
    parser.add_argument("--lo", nargs="+", metavar="V", help="per-task lower bounds (10 values or TASK=V)")
    parser.add_argument("--hi", nargs="+", metavar="V", help="per-task upper bounds (10 values or TASK=V)")
    parser.add_argument("--paper-fit", action="store_true", help="score with the fit to the paper's printed rows")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for scaling.png / scaling.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        bounds = make_bounds(args.lo, args.hi, args.paper_fit)
        users = [user_point(s) for s in args.results]
        if users and bounds is None:
            raise ValueError("scoring your results needs normalisation bounds: give --lo/--hi or --paper-fit")
        for u in users:
            u["s_m"] = bounds.score(u["tasks"])
        points = paper_points(bounds)
    except (ValueError, FileNotFoundError) as exc:
        log.error("%s", exc)
        return 2
    described = "printed (authors' bounds, not published)" if bounds is None else bounds.describe()
    for p in points:
        printed = "" if bounds is None else f" (printed {p['s_m_printed']:.1f})"
        print(f"{p['table']:<24} {p['condition']:<32} {p['model']:<7} s(m) = {p['s_m']:6.2f}{printed}  [{described}]")
    for u in users:
        print(f"{'yours':<24} {u['label']:<32} {u['model']:<7} s(m) = {u['s_m']:6.2f}  [{described}]")
    args.out.mkdir(parents=True, exist_ok=True)
    figure = plot(points, users, bounds, args.out / "scaling.png")
    write_json_atomic(args.out / "scaling.json", {
        "bounds": None if bounds is None else {"lo": bounds.lo, "hi": bounds.hi, "slopes": bounds.slopes,
                                               "offset": bounds.offset, "described": described},
        "formula": "s(m) = 10 * sum_t (x_t - lo_t) / (hi_t - lo_t)", "tasks": list(TASK_KEYS),
        "paper": points, "yours": users})
    log.info("wrote %s and %s", figure, args.out / "scaling.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
