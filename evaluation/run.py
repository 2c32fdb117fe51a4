"""Reproduce the paper's HEAR table with one command.

    python -m evaluation.run --tasks-dir TASKS --model mwmae-base-4x16-4l \\
        [--tasks paper|all|a,b] [--seeds 10] [--grid paper|default|fast] [--out hear-results]

Steps: check the task folders; embed each task once per checkpoint (cached under
OUT/embeddings/<sha256 prefix>/); for every task and seed 0..N-1 train and test heareval's
predictor with the chosen grid (results stored per seed under OUT/predictions/, so an
interrupted run resumes where it stopped); write OUT/results.{json,md,png}.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from hear_mwmae.files import sha256_file, try_lock

from .grids import GRIDS, get_grid
from .store import read_json
from .tasks import TASKS, TaskDirError, check_task_dir, resolve_names

log = logging.getLogger("evaluation")
LOCK_NAME = ".evaluation.lock"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluation.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks-dir", type=Path, required=True, help="folder holding HEAR task folders")
    p.add_argument("--model", type=Path, required=True,
                   help="hear_mwmae checkpoint (.pt / .safetensors) or a fetched model's name")
    p.add_argument("--tasks", default="all",
                   help="comma-separated task folder names or keys; 'paper' = the ten tasks of the "
                        "paper; 'all' (default) = every task folder in --tasks-dir")
    p.add_argument("--seeds", type=int, default=10, help="number of seeds, 0..N-1 (default 10)")
    p.add_argument("--grid", choices=sorted(GRIDS), default="paper", help="downstream grid (default paper)")
    p.add_argument("--out", type=Path, default=Path("hear-results"), help="output folder")
    p.add_argument("--embeddings-dir", type=Path, help="embedding cache (default OUT/embeddings)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("-v", "--verbose", action="store_true", help="show heareval's and Lightning's output")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error("--seeds must be at least 1")
    return args


def pick_device(name: str) -> str:
    """Resolve `auto` to cuda when available, else cpu."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available")
    return name


def resolve_model(model: Path) -> Path:
    """--model as a file: a released model's name (`hear-mwmae fetch NAME`) becomes its cached file."""
    from hear_mwmae import registry

    if registry.is_name(str(model)):
        try:
            return registry.cached_file(str(model))
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"--model {model}: {exc}") from None
    if not model.is_file():
        raise SystemExit(f"--model {model} is not a file")
    return model


def lock_out(out: Path) -> Any:
    """Hold OUT/.evaluation.lock (a `filelock.FileLock`) for the run; exit if another run holds it."""
    out.mkdir(parents=True, exist_ok=True)
    lock = try_lock(out / LOCK_NAME)
    if lock is None:
        raise SystemExit(f"another `python -m evaluation.run` is using {out} (lock {out / LOCK_NAME} is held); "
                         "wait for it to finish, or pass another --out")
    return lock


def check_tasks(tasks_dir: Path, names: list[str]) -> list[Path]:
    """The task folders to run, each checked; exits with every problem listed."""
    if not tasks_dir.is_dir():
        raise SystemExit(f"--tasks-dir {tasks_dir} is not a directory")
    try:
        dirnames = resolve_names(names, tasks_dir)
    except TaskDirError as exc:
        raise SystemExit(str(exc)) from None
    problems = []
    for name in dirnames:
        try:
            check_task_dir(tasks_dir / name)
        except TaskDirError as exc:
            problems.append(f"  - {exc}")
    if problems:
        raise SystemExit("cannot run these tasks:\n" + "\n".join(problems))
    missing = [t.title for t in TASKS if t.dirname not in dirnames]
    if missing:
        log.info("not running %d of the paper's tasks (%s): no overall score", len(missing), ", ".join(missing))
    return [tasks_dir / name for name in dirnames]


def import_heareval(verbose: bool) -> None:
    """Import heareval (and so TensorFlow and Lightning), quietly unless verbose."""
    if not verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
    try:
        import heareval.predictions.task_predictions  # noqa: F401
    except ImportError as exc:
        raise SystemExit(f"heareval is not usable ({exc}); install it with: bash evaluation/install.sh") from None
    if not verbose:  # after the import: Lightning sets its loggers to INFO when imported
        for name in ("pytorch_lightning", "lightning_fabric"):
            logging.getLogger(name).setLevel(logging.WARNING)


def seed_result(path: Path, expected: dict[str, Any]) -> dict[str, Any] | None:
    """A stored seed result made with the same checkpoint and grid, else None."""
    if not path.exists():
        return None
    result = read_json(path)
    if all(result.get(k) == v for k, v in expected.items()):
        return result
    log.warning("%s was made with another checkpoint or grid: redoing it", path)
    return None


def remove_empty_dirs(root: Path) -> None:
    """Remove `root` and the folders below it that hold no files."""
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(path.iterdir()):
            path.rmdir()
    if not any(root.iterdir()):
        root.rmdir()


def embed_all(task_dirs: list[Path], model: Path, sha: str, root: Path, device: str, log_file: Path,
              quiet: bool) -> None:
    """Embed every task not yet embedded by this checkpoint (the model is loaded only if needed)."""
    from . import embed

    embedding = None
    for task_dir in tqdm(task_dirs, desc="embed", unit="task"):
        target = embed.cache_dir(root, sha, task_dir.name)
        if embed.is_done(target):
            log.info("%s: embeddings cached in %s", task_dir.name, target)
            continue
        if embedding is None:
            embedding = embed.load_embedding(model, device, log_file, quiet=quiet)
        embed.embed_task(embedding, task_dir, target, {"checkpoint": str(model), "checkpoint_sha256": sha},
                         log_file, quiet=quiet)


def predict_all(task_dirs: list[Path], seeds: int, embeddings: dict[str, Path], out: Path, grid_name: str,
                record: dict[str, Any], device: str, quiet: bool) -> dict[str, list[dict[str, Any]]]:
    """Every task's seed results: stored ones reused, missing ones computed and stored."""
    from .predict import run_seed

    per_task: dict[str, list[dict[str, Any]]] = {d.name: [] for d in task_dirs}
    pending = []
    for task_dir in task_dirs:
        for seed in range(seeds):
            path = out / "predictions" / task_dir.name / f"seed-{seed:02d}.json"
            done = seed_result(path, {**record, "seed": seed})
            if done is not None:
                per_task[task_dir.name].append(done)
            else:
                pending.append((task_dir, seed, path))
    total = len(task_dirs) * seeds
    if len(pending) < total:
        log.info("resuming: %d of %d task seeds already done", total - len(pending), total)
    bar = tqdm(pending, desc="predict", unit="seed")
    for task_dir, seed, path in bar:
        bar.set_postfix_str(f"{task_dir.name} seed {seed}")
        metric = read_json(task_dir / "task_metadata.json")["evaluation"][0]
        result = run_seed(embeddings[task_dir.name], out / "work" / task_dir.name / f"seed-{seed:02d}", path,
                          seed=seed, grid=get_grid(grid_name), device=device, quiet=quiet,
                          record={"task": task_dir.name, "metric": metric, **record})
        log.info("%s seed %d: %s = %.4f (%.0f s)", task_dir.name, seed, metric, result["score"], result["seconds"])
        per_task[task_dir.name].append(result)
    remove_empty_dirs(out / "work")
    return per_task


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [] if args.tasks == "all" else [n.strip() for n in args.tasks.split(",") if n.strip()]
    task_dirs = check_tasks(args.tasks_dir, names)
    args.model = resolve_model(args.model)
    device = pick_device(args.device)
    out = args.out.resolve()
    lock = lock_out(out)  # before the slow imports: a second run on this --out stops at once
    import_heareval(args.verbose)
    from . import embed, report

    embeddings_root = (args.embeddings_dir or out / "embeddings").resolve()
    sha = sha256_file(args.model)
    log.info("checkpoint %s sha256 %s; device %s; grid %s; %d seeds", args.model, sha, device, args.grid, args.seeds)
    quiet = not args.verbose
    with logging_redirect_tqdm():
        embed_all(task_dirs, args.model, sha, embeddings_root, device, out / "embed.log", quiet)
        embeddings = {d.name: embed.cache_dir(embeddings_root, sha, d.name) for d in task_dirs}
        per_task = predict_all(task_dirs, args.seeds, embeddings, out, args.grid,
                               {"checkpoint_sha256": sha, "grid": args.grid}, device, quiet)
    run_info = {"checkpoint": str(args.model), "checkpoint_sha256": sha, "model": report.model_facts(args.model),
                "grid": args.grid, "seeds": list(range(args.seeds)), "device": device}
    paths = report.write_reports(report.summarize(per_task, run_info), out)
    log.info("wrote %s, %s and %s\n\n%s", paths["json"], paths["md"], paths["png"], paths["md"].read_text())
    lock.release()
    return 0


if __name__ == "__main__":
    sys.exit(main())
