"""Read the files flax and orbax write, as data: no JAX, no flax, no orbax, no tensorstore.

Two layouts hold an MW-MAE train state (`step`, `params`, `opt_state`, ...):

  legacy flax   `checkpoint_<step>`: one msgpack map (flax.serialization.msgpack_serialize)
  orbax 0.3.x   `checkpoint_<step>/`: a directory written by orbax's PyTreeCheckpointHandler,
                which is what flax 0.7.x `save_checkpoint` / `save_checkpoint_multiprocess`
                write by default (flax config `use_orbax_checkpointing`, on by default). With
                flax's save arguments every host-local array is *aggregated* into one msgpack
                file named `checkpoint` inside it (same encoding as the legacy file; sequences
                are msgpack arrays instead of {"0": ...} maps). Arrays saved *per array*
                (tensorstore zarr sub-directories, or OCDBT `manifest.ocdbt` + `d/`) leave a
                `PLACEHOLDER://<name>` string in that file; those need orbax to read.
                Orbax saves into `<name>.orbax-checkpoint-tmp-<time>` and renames it when the
                save is done (on GCS it saves in place and writes `commit_success.txt` last).

Leaf encoding (msgpack extension types of flax.serialization / orbax msgpack_utils):
  1  ndarray        msgpack (shape, dtype name, C-order bytes); dtype names are numpy's,
                    and `bfloat16` for JAX's bfloat16 (ml_dtypes)
  2  complex        msgpack (real, imag) of a Python complex
  3  numpy scalar   encoded as a 0-d ndarray, like 1
  4  tuple          (orbax only) a msgpack list of items
Arrays above 2**30 bytes are split into `{"__msgpack_chunked_array__": True, "shape": ..,
"chunks": ..}` maps.

The reader streams the file: top-level entries that are not wanted (the optimizer state,
two thirds of a train state) are skipped without being decoded, and the file's sha256 is
computed in the same pass.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from .common import ConversionError

log = logging.getLogger(__name__)

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR, EXT_TUPLE = 1, 2, 3, 4
ORBAX_AGGREGATE_FILE = "checkpoint"  # PyTreeCheckpointHandler's default aggregate_filename
ORBAX_TMP_MARK = ".orbax-checkpoint-tmp-"
ORBAX_COMMIT_FILE = "commit_success.txt"
ORBAX_PLACEHOLDERS = ("PLACEHOLDER://", "AGGREGATED://")
FLAX_GDA_PLACEHOLDER = "//GDAPlaceholder:"  # legacy multi-process arrays kept in checkpoint_<step>_gda/
_CHUNKED = "__msgpack_chunked_array__"
_STEP_NAME = re.compile(r"checkpoint_(\d+)")
_READ_SIZE = 4 << 20
_NUMPY_DTYPES = frozenset(
    ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
     "float16", "float32", "float64", "complex64", "complex128"])
FLOAT_DTYPES = frozenset(["bfloat16", "float16", "float32", "float64"])


class Skipped:
    """Stands for a top-level entry that was not decoded (see `read_tree(only=...)`)."""

    def __repr__(self) -> str:
        return "<skipped>"


SKIPPED = Skipped()


@dataclass(frozen=True)
class RawArray:
    """An ndarray leaf as flax wrote it, not yet decoded: `shape`, numpy/JAX dtype name, bytes."""

    shape: tuple[int, ...]
    dtype: str
    data: bytes

    def decode(self) -> np.ndarray:
        """The array; bfloat16 becomes float32 exactly (its 16 bits are float32's upper half)."""
        try:
            if self.dtype == "bfloat16":
                bits = np.frombuffer(self.data, dtype=np.uint16)
                flat = (bits.astype(np.uint32) << 16).view(np.float32)
            elif self.dtype in _NUMPY_DTYPES:
                flat = np.frombuffer(self.data, dtype=np.dtype(self.dtype))
            else:
                raise ConversionError(f"array dtype {self.dtype!r} is not supported (supported: bfloat16, "
                                      f"{', '.join(sorted(_NUMPY_DTYPES))})")
            return flat.reshape(self.shape)
        except ValueError as exc:  # buffer size not a multiple of the item size, or not the shape's
            raise ConversionError(f"array of shape {self.shape} and dtype {self.dtype}: {len(self.data)} bytes "
                                  f"do not fit ({exc})") from exc


def _ext_hook(code: int, data: bytes) -> Any:
    if code in (EXT_NDARRAY, EXT_NPSCALAR):
        fields = msgpack.unpackb(data, raw=True)
        if code == EXT_NPSCALAR and len(fields) == 2:  # (dtype, bytes): tolerated, flax writes a 0-d array
            fields = [[], *fields]
        shape, dtype, buffer = fields
        return RawArray(tuple(int(n) for n in shape), dtype.decode("ascii"), bytes(buffer))
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(data)
        return complex(real, imag)
    if code == EXT_TUPLE:
        return tuple(msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook))
    return msgpack.ExtType(code, data)


class _HashingReader:
    """A file reader that hashes what it hands out."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self.digest = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        block = self._fh.read(n)
        self.digest.update(block)
        return block


def read_tree(path: str | Path, only: Collection[str] | None = None) -> tuple[dict[str, Any], str]:
    """Stream-decode a flax msgpack file (legacy checkpoint, or orbax's aggregate file).

    Returns (train state with `RawArray` leaves, sha256 of the file). Top-level entries not
    in `only` (default: all are decoded) are skipped and stand as `SKIPPED`; the whole file is
    still read, so a truncated or corrupt file is refused whichever entry it breaks.
    """
    path = Path(path)
    if path.stat().st_size == 0:
        raise ConversionError(f"{path}: file is empty")
    with open(path, "rb") as fh:
        reader = _HashingReader(fh)
        unpacker = msgpack.Unpacker(reader, read_size=_READ_SIZE, max_buffer_size=0, raw=False,
                                    strict_map_key=False, ext_hook=_ext_hook)
        state: dict[str, Any] = {}
        try:
            try:
                n_entries = unpacker.read_map_header()
            except ValueError as exc:
                raise ConversionError(f"{path}: not a readable Flax msgpack checkpoint (truncated or corrupt?): "
                                      f"it does not start with a msgpack map ({exc})") from exc
            for _ in range(n_entries):
                key = unpacker.unpack()
                if only is None or key in only:
                    state[key] = unpacker.unpack()
                else:
                    unpacker.skip()
                    state[key] = SKIPPED
            try:
                unpacker.skip()
            except msgpack.OutOfData:
                pass
            else:
                raise ConversionError(f"{path}: not a readable Flax msgpack checkpoint (truncated or corrupt?): "
                                      "data after the end of the train state")
        except ConversionError:
            raise
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise ConversionError(
                f"{path}: not a readable Flax msgpack checkpoint (truncated or corrupt?): "
                f"{type(exc).__name__}: {exc}") from exc
    return state, reader.digest.hexdigest()


def materialize(node: Any) -> Any:
    """`read_tree`'s output with every array decoded (chunked arrays joined); lists stay lists."""
    if isinstance(node, RawArray):
        return node.decode()
    if isinstance(node, dict):
        if node.get(_CHUNKED) is True:
            return join_chunks(node)[0]
        return {k: materialize(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [materialize(v) for v in node]
    return node


def join_chunks(node: dict[str, Any]) -> tuple[np.ndarray, str]:
    """A chunked array map -> (array, dtype name of its chunks)."""
    try:
        shape = tuple(int(node["shape"][str(i)]) for i in range(len(node["shape"])))
        chunks = [node["chunks"][str(i)] for i in range(len(node["chunks"]))]
    except (KeyError, TypeError) as exc:
        raise ConversionError(f"malformed chunked array ({exc})") from exc
    if not chunks or not all(isinstance(c, RawArray) for c in chunks):
        raise ConversionError("malformed chunked array (chunks are not arrays)")
    return np.concatenate([c.decode().reshape(-1) for c in chunks]).reshape(shape), chunks[0].dtype


def leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested maps (and orbax's lists) -> {'a/b/c': leaf}; a chunked array is one leaf."""
    if isinstance(tree, (list, tuple)):
        tree = {str(i): v for i, v in enumerate(tree)}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list, tuple)) and not (isinstance(value, dict) and value.get(_CHUNKED) is True):
            flat.update(leaves(value, name + "/"))
        else:
            flat[name] = value
    return flat


# ----------------------------------------------------------------------------- orbax directories
def is_orbax_dir(path: str | Path) -> bool:
    """Whether `path` is an orbax checkpoint directory (not a run directory with config.json)."""
    path = Path(path)
    if not path.is_dir() or (path / "config.json").exists():
        return False
    return (bool(_STEP_NAME.fullmatch(path.name)) or ORBAX_TMP_MARK in path.name
            or any((path / name).exists() for name in (ORBAX_AGGREGATE_FILE, ORBAX_COMMIT_FILE, "_METADATA",
                                                       "manifest.ocdbt")))


def resave_hint(path: Path) -> str:
    """One line: why `path` cannot be read here and the command that re-saves it as one msgpack file."""
    return (f"{path}: this orbax checkpoint keeps its arrays in per-array tensorstore storage (zarr / OCDBT), "
            f"which cannot be read without orbax; re-save it as one msgpack file where flax and orbax are installed: "
            f"python -c \"import pathlib, orbax.checkpoint as ocp, flax.serialization as fs; "
            f"pathlib.Path('{path}.msgpack').write_bytes(fs.to_bytes(ocp.PyTreeCheckpointer().restore('{path}')))\" "
            f"then convert {path}.msgpack (flax saves single-file checkpoints with FLAX_USE_ORBAX_CHECKPOINTING=false)")


def orbax_aggregate_file(path: Path) -> Path:
    """The aggregate msgpack file of a finished orbax checkpoint directory; refuses incomplete ones."""
    if ORBAX_TMP_MARK in path.name:
        raise ConversionError(f"{path}: an unfinished orbax save (orbax writes into '<name>{ORBAX_TMP_MARK}<time>' "
                              "and renames it when the save is complete); use a finished checkpoint_<step>")
    aggregate = path / ORBAX_AGGREGATE_FILE
    if aggregate.is_file():
        return aggregate
    names = sorted(p.name for p in path.iterdir())
    if "manifest.ocdbt" in names or any((p / ".zarray").exists() for p in path.iterdir() if p.is_dir()):
        raise ConversionError(resave_hint(path))
    raise ConversionError(f"{path}: an incomplete orbax checkpoint: no aggregate file '{ORBAX_AGGREGATE_FILE}' "
                          f"(found {names[:8]}); the save or the copy did not finish")


def find_checkpoint(run_dir: str | Path) -> Path:
    """Newest `checkpoint_<step>` (by step number) in a run directory: a legacy file or an orbax
    directory alike. Unfinished orbax saves (`*.orbax-checkpoint-tmp-*`) are ignored."""
    run_dir = Path(run_dir)
    found, unfinished = [], []
    for p in run_dir.iterdir():
        m = _STEP_NAME.fullmatch(p.name)
        if m and (p.is_file() or p.is_dir()):
            found.append((int(m.group(1)), p))
        elif ORBAX_TMP_MARK in p.name:
            unfinished.append(p.name)
    if not found:
        extra = f" (only unfinished orbax saves: {sorted(unfinished)})" if unfinished else ""
        raise ConversionError(f"{run_dir}: no checkpoint_<step> file or directory in this run directory{extra}")
    newest = max(found)[1]
    if unfinished:
        log.warning("%s: ignoring unfinished orbax save(s) %s; using %s", run_dir, sorted(unfinished), newest.name)
    return newest
