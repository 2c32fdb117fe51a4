"""Task embeddings through heareval's own embedding code, cached per checkpoint.

Embeddings of a task are written by `heareval.embeddings.task_embeddings.task_embeddings`
with heareval's `Embedding` wrapper around module `hear_mwmae` and the checkpoint, exactly
as `python -m heareval.embeddings.runner hear_mwmae --model CKPT` would (that runner module
itself is not imported: on a CUDA machine with tensorflow-cpu it refuses to start).

Cache layout: <root>/<first 16 hex of the checkpoint's sha256>/<task dir name>/, finished
when `.done.embeddings` exists; an unfinished folder is removed and redone.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from .store import output_to, write_json_atomic

log = logging.getLogger(__name__)

DONE = ".done.embeddings"
MODULE = "hear_mwmae"


def cache_dir(root: Path, checkpoint_sha256: str, task_name: str) -> Path:
    """Where the embeddings of `task_name` by this checkpoint live."""
    return root / checkpoint_sha256[:16] / task_name


def is_done(embed_dir: Path) -> bool:
    """True when the folder holds a finished set of embeddings."""
    return (embed_dir / DONE).exists()


def load_embedding(checkpoint: Path, device: str, log_file: Path, quiet: bool = True) -> Any:
    """heareval's `Embedding` for hear_mwmae and `checkpoint`, placed on `device`.

    quiet: heareval's console output goes to log_file.
    """
    from heareval.embeddings.task_embeddings import Embedding

    with output_to(log_file, quiet):
        embedding = Embedding(MODULE, str(checkpoint), {"device": device})
    # heareval picks "cuda if available" on its own; keep the device that was asked for.
    embedding.device = device
    embedding.model.to(device)
    return embedding


def embed_task(embedding: Any, task_dir: Path, embed_dir: Path, info: dict[str, Any], log_file: Path,
               quiet: bool = True) -> None:
    """Embed every split of the task at `task_dir` into `embed_dir` (replacing leftovers).

    heareval's per-file copies (<split>/*.npy) are removed afterwards: predictions read only
    the per-split memmaps, labels and metadata. quiet: heareval's console output (its
    per-batch progress bars included) goes to log_file.
    """
    from heareval.embeddings.task_embeddings import task_embeddings

    if embed_dir.exists():
        log.info("removing unfinished embeddings in %s", embed_dir)
        shutil.rmtree(embed_dir)
    log.info("embedding %s ...", task_dir.name)
    start = time.perf_counter()
    with output_to(log_file, quiet):
        task_embeddings(embedding, task_dir, embed_dir)
    metadata = json.loads((task_dir / "task_metadata.json").read_text())
    for split in metadata["splits"]:
        shutil.rmtree(embed_dir / str(split), ignore_errors=True)
    write_json_atomic(embed_dir / "embedding-info.json",
                      {**info, "task_dir": str(task_dir), "seconds": round(time.perf_counter() - start, 1)})
    (embed_dir / DONE).touch()
    log.info("embedded %s in %.1f s", task_dir.name, time.perf_counter() - start)


def embedding_size(embed_dir: Path) -> int:
    """The embedding dimension, checked to agree across splits (as heareval's runner does)."""
    metadata = json.loads((embed_dir / "task_metadata.json").read_text())
    sizes = {json.loads((embed_dir / f"{split}.embedding-dimensions.json").read_text())[1]
             for split in metadata["splits"]}
    if len(sizes) != 1:
        raise ValueError(f"embedding sizes differ between splits in {embed_dir}: {sorted(sizes)}")
    return sizes.pop()
