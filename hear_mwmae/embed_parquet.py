"""`embed --format parquet`: embeddings as rows of Parquet shards, read back as one dataset.

    OUT/embeddings/part-<run>-r<rank>-<n>.parquet     at most --shard-rows rows (and ~1 GiB) each

One row per input: `input` (as the index records it; where a name is not UTF-8, a readable
stand-in, its exact bytes in `input_b64`), `path` (relative to the folder it was found in, or to
the dataset), `duration_s`, `sample_rate`, `channels` (of the file), `embedding` (scene: a
fixed-size list of D float32; timestamp mode: a list of steps such lists), `timestamps`
(timestamp mode: a list of float32 ms), `model`, `checkpoint_sha256`. Read it with

    pandas.read_parquet("OUT/embeddings")
    datasets.load_dataset("parquet", data_dir="OUT/embeddings", split="train")

Writing: the writer thread adds each result to the open shard, a temporary file beside its name
(row groups of at most 64 MB or 256 rows; a written row keeps only what its record needs, so
memory stays bounded whatever --shard-rows), and closes the shard when it
is full, renaming it into place; only then do its rows' records say "ok" (until then "pending",
naming the shard). A killed run leaves a temporary file (removed by the next run) and pending
records (redone): never a visible row without a record.

Resume, `--force` and staleness work per clip as with `.npy`: a record's output is its shard.
Shards are never appended to: a re-embedded input gets its row in a new shard, and its old row
goes when `compact_shards` runs (rank 0, under the lock, before and after the embedding): a shard
keeps exactly the rows whose record names it and keeps its outputs ("ok", or removed with
outputs kept); a shard with other rows is rewritten without them, a row group at a time; a shard
with no such row is deleted. After a run every visible row belongs to an "ok" record, once.
"""

from __future__ import annotations

import base64
import os
import secrets
import time
from collections import defaultdict
from typing import Any

import numpy as np

from .embed_index import keeps_outputs
from .embed_plan import Job
from .embed_store import Result, StoreError
from .out_folder import OutFolder

FOLDER = "embeddings"
SHARD_BYTES = 1 << 30  # a shard is closed at --shard-rows rows or about this many bytes of embeddings
ROW_GROUP_BYTES = 64 << 20
ROW_GROUP_ROWS = 256
SHARD_ROWS = 10_000  # --shard-rows default


def schema(dim: int, mode: str) -> Any:
    """The Arrow schema of a shard (D = `dim`)."""
    import pyarrow as pa

    embedding = pa.list_(pa.float32(), dim)  # fixed size
    fields = [("input", pa.string()), ("input_b64", pa.string()), ("path", pa.string()),
              ("duration_s", pa.float64()), ("sample_rate", pa.int32()), ("channels", pa.int32()),
              ("embedding", pa.list_(embedding) if mode == "timestamp" else embedding)]
    if mode == "timestamp":
        fields.append(("timestamps", pa.list_(pa.float32())))
    return pa.schema(fields + [("model", pa.string()), ("checkpoint_sha256", pa.string())])


def _name_columns(key: str) -> tuple[str, str | None]:
    """(input, input_b64) of an index key: the stand-in and the exact bytes of a name that is not UTF-8."""
    raw = os.fsencode(key)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), base64.b64encode(raw).decode("ascii")


def _key(name: str | None, b64: str | None) -> str:
    return os.fsdecode(base64.b64decode(b64)) if b64 else name


class ParquetStore:
    """Shards of this rank's results (see the module docstring)."""

    format = "parquet"

    def __init__(self, folder: OutFolder, dim: int, mode: str, settings: dict[str, Any], shard_rows: int = SHARD_ROWS,
                 rank: int = 0) -> None:
        import pyarrow  # noqa: F401 - fail here, before anything is embedded, if it is missing

        self.folder, self.dim, self.mode, self.settings = folder, dim, mode, settings
        self.shard_rows = max(1, int(shard_rows))
        self.schema = schema(dim, mode)
        self.prefix = f"{FOLDER}/part-{time.strftime('%Y%m%dT%H%M%S')}-{secrets.token_hex(3)}-r{rank:03d}"
        self.count = 0  # shards opened
        self.shard: str | None = None
        self._open = None  # (atomic_write context, file handle, ParquetWriter)
        self.in_shard: list[Result] = []  # rows in the open shard (written or buffered)
        self.buffer: list[Result] = []  # rows not yet written as a row group
        self.buffered = self.shard_bytes = 0

    def names(self, result: Result) -> tuple[str | None, str | None]:
        if self.shard is None:
            self.shard = f"{self.prefix}-{self.count:05d}.parquet"
            self.count += 1
        return self.shard, None

    def put(self, result: Result) -> list[Result]:
        size = int(np.prod(result.emb.shape)) * 4
        self.buffer.append(result)
        self.in_shard.append(result)
        self.buffered += size
        self.shard_bytes += size
        if self.buffered >= ROW_GROUP_BYTES or len(self.buffer) >= ROW_GROUP_ROWS:
            self._write_group()
        if len(self.in_shard) >= self.shard_rows or self.shard_bytes >= SHARD_BYTES:
            return self._close_shard()
        return []

    def close(self) -> list[Result]:
        return self._close_shard() if self.in_shard else []

    def missing(self, record: dict[str, Any], job: Job) -> str | None:
        output = record.get("output")
        if not (isinstance(output, str) and output.startswith(FOLDER + "/") and output.endswith(".parquet")):
            return "recorded under other output names"
        return None if self.folder.is_file(output) else "output missing"

    # ------------------------------------------------------------------------- writing
    def _table(self, results: list[Result]) -> Any:
        import pyarrow as pa

        arrays = [r.emb.array() if not isinstance(r.emb, np.ndarray) else r.emb for r in results]
        flat = np.concatenate([a.reshape(-1) for a in arrays]).astype(np.float32, copy=False)
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), self.dim)
        columns: dict[str, Any] = {}
        names = [_name_columns(str(r.job.source)) for r in results]
        columns["input"] = pa.array([n for n, _ in names], pa.string())
        columns["input_b64"] = pa.array([b for _, b in names], pa.string())
        columns["path"] = pa.array([_name_columns(getattr(r.job, "relative", None) or os.path.basename(
            str(r.job.source)))[0] for r in results], pa.string())
        columns["duration_s"] = pa.array([r.extra.get("duration_s") for r in results], pa.float64())
        columns["sample_rate"] = pa.array([r.extra.get("sample_rate") for r in results], pa.int32())
        columns["channels"] = pa.array([r.extra.get("channels") for r in results], pa.int32())
        if self.mode == "timestamp":
            offsets = np.concatenate([[0], np.cumsum([a.shape[0] for a in arrays])]).astype(np.int32)
            columns["embedding"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), embedding)
            stamps = np.concatenate([r.stamps for r in results]).astype(np.float32, copy=False)
            columns["timestamps"] = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()),
                                                             pa.array(stamps, pa.float32()))
        else:
            columns["embedding"] = embedding
        columns["model"] = pa.array([self.settings.get("model")] * len(results), pa.string())
        columns["checkpoint_sha256"] = pa.array([self.settings.get("checkpoint_sha256")] * len(results), pa.string())
        return pa.Table.from_pydict(columns, schema=self.schema)

    def _write_group(self) -> None:
        if not self.buffer:
            return
        try:
            if self._open is None:
                import pyarrow.parquet as pq

                context = self.folder.atomic_write(self.shard)
                fh = context.__enter__()
                self._open = (context, fh, pq.ParquetWriter(fh, self.schema))
            self._open[2].write_table(self._table(self.buffer))
        except Exception as exc:
            self._fail(exc)
        for result in self.buffer:  # written: only what its record needs stays until the shard closes
            result.release()
            result.emb = np.empty((0, self.dim), np.float32)
        self.buffer, self.buffered = [], 0

    def _close_shard(self) -> list[Result]:
        self._write_group()
        context, _, writer = self._open
        try:
            writer.close()
            context.__exit__(None, None, None)  # flushed, fsynced, renamed into place
        except Exception as exc:
            self._open = None
            self._fail(exc)
        done, self.in_shard = self.in_shard, []
        self._open, self.shard, self.shard_bytes = None, None, 0
        return done

    def _fail(self, exc: Exception) -> None:
        """A write failed: the open shard is dropped with every row in it."""
        if self._open is not None:
            context, _, _ = self._open
            try:
                context.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary file
            except Exception:  # noqa: BLE001 - it re-raises `exc`
                pass
        lost = self.in_shard
        for result in lost:
            result.release()
        self._open, self.shard, self.in_shard, self.buffer, self.buffered, self.shard_bytes = None, None, [], [], 0, 0
        raise StoreError(f"writing a Parquet shard failed: {exc}", lost) from exc


# ----------------------------------------------------------------------------- compaction
def compact_shards(folder: OutFolder, records: dict[str, dict[str, Any]]) -> int:
    """Drop the rows no record keeps (see the module docstring). Returns how many rows went."""
    shards = folder.names(FOLDER, ".parquet")
    if not shards:
        return 0
    import pyarrow.parquet as pq

    wanted: dict[str, set[str]] = defaultdict(set)
    for key, record in records.items():
        if record.get("format") == "parquet" and isinstance(record.get("output"), str) and keeps_outputs(record):
            wanted[record["output"]].add(key)
    dropped = 0
    for shard in shards:
        keep = wanted.get(shard, set())
        fh = folder.open_read(shard)
        if fh is None:
            continue
        with fh:
            try:
                parquet = pq.ParquetFile(fh)
                names = parquet.read(columns=["input", "input_b64"]).to_pydict()
            except Exception:  # noqa: BLE001 - not a shard we can read: nothing in it is kept
                names = None
            keys = [] if names is None else [_key(n, b) for n, b in zip(names["input"], names["input_b64"])]
            mask, seen = [], set()
            for key in keys:
                mask.append(key in keep and key not in seen)
                seen.add(key)
            if names is not None and all(mask):
                continue
            dropped += len(keys) - sum(mask)
            if names is None or not any(mask):
                folder.delete(shard)
                continue
            with folder.atomic_write(shard) as out:
                writer, row = pq.ParquetWriter(out, parquet.schema_arrow), 0
                for group in range(parquet.num_row_groups):  # a row group at a time
                    table = parquet.read_row_group(group)
                    writer.write_table(table.filter(np.array(mask[row:row + table.num_rows])))
                    row += table.num_rows
                writer.close()
    return dropped


__all__ = ["FOLDER", "SHARD_ROWS", "ParquetStore", "compact_shards", "schema"]
