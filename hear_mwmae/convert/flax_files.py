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

Hostile files: every length a msgpack header declares (array, map, string, binary, extension)
is bounded by the bytes the file (or the extension's payload) holds, so nothing is allocated
for data that is not there; an array leaf's shape and dtype must account for exactly the bytes
it carries. Tuples (ext 4) are decoded one level at a time with an explicit stack, never by
msgpack calling itself through its extension hook (each nested call takes tens of kB of C
stack: a 722-byte file of 200 nested tuples used to crash the interpreter), and a tree nested
deeper than MAX_NESTING (maps, arrays and tuples together; a train state uses < 12) is refused.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import numpy as np

from ..files import safe_reason
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
MAX_NESTING = 64  # maps, arrays and tuples inside one another
MAX_ARRAY_DIMS = 32


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


def _limits(nbytes: int) -> dict[str, int]:
    """msgpack length limits for a buffer of `nbytes`: nothing can declare more items than bytes."""
    n = max(int(nbytes), 1)
    return {"max_str_len": n, "max_bin_len": n, "max_array_len": n, "max_map_len": n, "max_ext_len": n}


def _itemsize(dtype: str) -> int | None:
    if dtype == "bfloat16":
        return 2
    return np.dtype(dtype).itemsize if dtype in _NUMPY_DTYPES else None  # unknown: refused on decode


def _array_leaf(code: int, data: bytes) -> RawArray:
    """An ndarray / numpy scalar extension payload -> RawArray, its declared size checked
    against the bytes it carries before anything is allocated."""
    fields = msgpack.unpackb(data, raw=True, **_limits(len(data)))
    if code == EXT_NPSCALAR and isinstance(fields, (list, tuple)) and len(fields) == 2:
        fields = [[], *fields]  # (dtype, bytes): tolerated, flax writes a 0-d array
    if not (isinstance(fields, (list, tuple)) and len(fields) == 3):
        raise ValueError("malformed array leaf (expected shape, dtype, bytes)")
    shape, dtype, buffer = fields
    if (not isinstance(shape, (list, tuple)) or len(shape) > MAX_ARRAY_DIMS
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)):
        raise ValueError(f"malformed array leaf: the shape is not a list of at most {MAX_ARRAY_DIMS} sizes >= 0")
    if not isinstance(dtype, bytes) or not 0 < len(dtype) <= 32 or not isinstance(buffer, bytes):
        raise ValueError("malformed array leaf: dtype or data is not a byte string")
    name = dtype.decode("ascii", errors="replace")
    itemsize = _itemsize(name)
    if itemsize is not None and math.prod(shape) * itemsize != len(buffer):
        raise ValueError(f"array of shape {tuple(shape)} and dtype {name}: {len(buffer)} bytes do not fit "
                              f"({math.prod(shape) * itemsize} expected)")
    return RawArray(tuple(shape), name, buffer)


class _Tuple:
    """An orbax tuple (ext 4) not decoded yet: `data` is its msgpack list."""

    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data


def _ext_hook(code: int, data: bytes) -> Any:
    """Leaves of flax's extension types. A tuple is left packed (`_Tuple`) for `_unfold`:
    unpacking it here would make msgpack call itself once per level of nesting."""
    if code in (EXT_NDARRAY, EXT_NPSCALAR):
        return _array_leaf(code, data)
    if code == EXT_COMPLEX:
        parts = msgpack.unpackb(data, **_limits(len(data)))
        if not (isinstance(parts, (list, tuple)) and len(parts) == 2
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in parts)):
            raise ValueError("malformed complex leaf")
        return complex(*parts)
    if code == EXT_TUPLE:
        return _Tuple(data)
    return msgpack.ExtType(code, data)


def _unfold(value: Any) -> Any:
    """`value` with every `_Tuple` decoded into a tuple, level by level with an explicit stack;
    ValueError if maps, arrays and tuples nest deeper than MAX_NESTING."""
    root = [value]
    stack: list[tuple[Any, Any, int]] = [(root, 0, 0)]  # (container, key, depth of the value)
    tuples: list[tuple[Any, Any]] = []  # decoded tuples as lists, frozen (children first) at the end
    while stack:
        parent, key, depth = stack.pop()
        node = parent[key]
        if isinstance(node, _Tuple):
            node = msgpack.unpackb(node.data, raw=False, strict_map_key=False, ext_hook=_ext_hook,
                                   **_limits(len(node.data)))
            if not isinstance(node, list):
                raise ValueError("malformed tuple leaf (not a list)")
            parent[key] = node
            tuples.append((parent, key))
        if isinstance(node, (dict, list)):
            if depth >= MAX_NESTING:
                raise ValueError(f"maps, arrays and tuples nested deeper than {MAX_NESTING}: not a Flax train state")
            stack.extend((node, k, depth + 1) for k in (node.keys() if isinstance(node, dict) else range(len(node))))
    for parent, key in reversed(tuples):
        parent[key] = tuple(parent[key])
    return root[0]


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
    size = path.stat().st_size
    if size == 0:
        raise ConversionError(f"{path}: file is empty")
    with open(path, "rb") as fh:
        reader = _HashingReader(fh)
        buffer = min(size, 2**32 - 1)  # no object can be larger than the file
        unpacker = msgpack.Unpacker(reader, read_size=min(_READ_SIZE, buffer), max_buffer_size=buffer, raw=False,
                                    strict_map_key=False, ext_hook=_ext_hook, **_limits(size))
        state: dict[str, Any] = {}
        try:
            try:
                n_entries = unpacker.read_map_header()
            except ValueError as exc:
                raise ConversionError(f"{path}: not a readable Flax msgpack checkpoint (truncated or corrupt?): "
                                      f"it does not start with a msgpack map ({exc})") from exc
            for _ in range(n_entries):
                key = unpacker.unpack()
                if only is None or (isinstance(key, str) and key in only):
                    state[key] = _unfold(unpacker.unpack())
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
                f"{type(exc).__name__}: {safe_reason(exc)}") from exc
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
    """A chunked array map -> (array, dtype name of its chunks); the declared shape must hold
    exactly the chunks' elements, all chunks of one dtype."""
    shape_map, chunk_map = node.get("shape"), node.get("chunks")
    if not isinstance(shape_map, dict) or not isinstance(chunk_map, dict) or len(shape_map) > MAX_ARRAY_DIMS:
        raise ConversionError("malformed chunked array (no shape / chunks maps)")
    try:
        shape = tuple(shape_map[str(i)] for i in range(len(shape_map)))
        chunks = [chunk_map[str(i)] for i in range(len(chunk_map))]
    except KeyError as exc:
        raise ConversionError(f"malformed chunked array (no entry {safe_reason(exc)})") from exc
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise ConversionError("malformed chunked array (the shape is not a list of sizes >= 0)")
    if not chunks or not all(isinstance(c, RawArray) for c in chunks):
        raise ConversionError("malformed chunked array (chunks are not arrays)")
    if len({c.dtype for c in chunks}) != 1:
        raise ConversionError("malformed chunked array (chunks of different dtypes)")
    if sum(math.prod(c.shape) for c in chunks) != math.prod(shape):
        raise ConversionError(f"malformed chunked array: its chunks do not hold the {math.prod(shape)} elements "
                              f"of shape {shape}")
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
