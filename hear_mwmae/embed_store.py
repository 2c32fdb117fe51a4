"""Where `embed` puts embeddings: one small interface, one class per format.

The writer thread of `embed_pipeline.py` hands a store one `Result` at a time and records what
the store says, so that an output on disk always has a record and an "ok" record always has its
output:

    store.names(result)   -> (output, timestamps): what the record names ("pending") while written
    store.put(result)     -> the results now safely on disk (a `.npy` pair: this one; a Parquet
                             shard: all its rows, once the shard is closed); raises `StoreError`
                             naming the results a failed write took with it
    store.close()         -> the results still waiting (the last shard)
    store.missing(record, job) -> why a recorded result is no longer usable, or None

What no record keeps any more goes on rank 0, under the lock: `.npy` files with their records
(`embed_index.delete_outputs`), Parquet rows by `embed_parquet.compact_shards`.

`NpyStore` (the default, `--format npy`): one file per input (and one of timestamps), named by
`embed_plan.output_names`, each written atomically inside the folder (`out_folder.py`).
`embed_parquet.ParquetStore` (`--format parquet`): rows in shards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .embed_plan import Job
from .embed_stream import Rows
from .out_folder import OutFolder

FORMATS = ("npy", "parquet")


@dataclass
class Result:
    """One embedded input: its job, the fields its record gets (facts, decoder info, reason),
    the embedding ((D,), (steps, D) or a `Rows`) and the timestamps ((steps,) ms, or (0,))."""

    job: Job
    extra: dict[str, Any]
    emb: np.ndarray | Rows
    stamps: np.ndarray
    names: tuple[str | None, str | None] = field(default=(None, None))

    def release(self) -> None:
        """Drop a `Rows`' temporary file once written (or failed)."""
        if isinstance(self.emb, Rows):
            self.emb.close()


class StoreError(RuntimeError):
    """A write failed; `results` are the results it took with it (e.g. every row of a shard)."""

    def __init__(self, message: str, results: list[Result]) -> None:
        super().__init__(message)
        self.results = results


class Store(Protocol):
    format: str

    def names(self, result: Result) -> tuple[str | None, str | None]: ...

    def put(self, result: Result) -> list[Result]: ...

    def close(self) -> list[Result]: ...

    def missing(self, record: dict[str, Any], job: Job) -> str | None: ...


def save_npy(folder: OutFolder, name: str, array: np.ndarray | Rows) -> None:
    """`np.save` of `array` as `name` inside the folder, so that a crash never leaves a half-written
    file; a `Rows` (a long clip's timestamp embeddings) is copied a block of rows at a time."""
    with folder.atomic_write(name) as fh:
        if isinstance(array, Rows):
            np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(array.dtype),
                                                      "fortran_order": False, "shape": array.shape})
            for block in array.blocks():
                fh.write(block.tobytes())
        else:
            np.save(fh, np.ascontiguousarray(array))


class NpyStore:
    """OUT/<input path>.npy (+ .ts.npy in timestamp mode), one input at a time."""

    format = "npy"

    def __init__(self, folder: OutFolder) -> None:
        self.folder = folder

    def names(self, result: Result) -> tuple[str | None, str | None]:
        job = result.job
        return job.output.as_posix(), job.timestamps.as_posix() if job.timestamps is not None else None

    def put(self, result: Result) -> list[Result]:
        output, stamps = result.names
        try:
            save_npy(self.folder, output, result.emb)
            if stamps is not None:
                save_npy(self.folder, stamps, result.stamps)
        except Exception as exc:
            raise StoreError(str(exc), [result]) from exc
        finally:
            result.release()
        return [result]

    def close(self) -> list[Result]:
        return []

    def missing(self, record: dict[str, Any], job: Job) -> str | None:
        expected = [p.as_posix() for p in job.outputs]
        if [record.get("output"), record.get("timestamps")] != (expected + [None])[:2]:
            return "recorded under other output names"
        if not all(self.folder.is_file(p) for p in expected):
            return "output missing"
        return None


__all__ = ["FORMATS", "NpyStore", "Result", "Store", "StoreError", "save_npy"]
