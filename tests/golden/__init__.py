"""Reader of the golden data vendored in this folder (written by `scripts/vendor_golden.py`).

The authors' reference outputs and their checkpoints, trimmed to what the tests assert, so
that a clone runs every parity test without `../shared`:

    <fixture>.npz / <fixture>.json   reference arrays, and the checkpoint's arrays (`ckpt/...`)
                                     with the rest of the checkpoint file as JSON
    inputs.npz / inputs.json         inputs shared by several fixtures (waveforms, fbank)
    analyses.npz / analyses.json     attention maps, PWCCA inputs and the reference JSON files

An array is either stored in the npz (manifest "arrays": dtype, shape, byte-shuffled; all
first bytes, then all second bytes, ..., which lets deflate compress float noise ~10 %
better) or regenerated (manifest "derived": a recipe and the CRC-32 of the original), see
`replay.py`: the Audio-MAE checkpoints (the authors' seeded initialisation plus the
fixture's perturbation; cls_token / mask_token stored), the Flax checkpoints' biases,
LayerNorm scales and position embeddings (known initial value plus the perturbation; where
XLA's float32 rounding differs, the XOR of the original bits is stored as "xor/<key>"), the
analyses' random attention maps, and references that are another reference rearranged
(Audio-MAE HEAR embeddings of a one-chunk clip, the MW-MAE patchify target). A regenerated
array whose CRC-32 differs from the original's raises.

`write_checkpoint()` rebuilds the checkpoint file in the authors' own layout: the Flax
msgpack byte for byte (its sha256 is checked against the original's), the Audio-MAE `.pth`
by `torch.save` of the same objects (model, optimizer, epoch, scaler, argparse.Namespace).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from . import replay

HERE = Path(__file__).resolve().parent
FOLDER = HERE  # where the bundles are read from (scripts/vendor_golden.py checks its output there)
FLAX_FIXTURES = ("mwmae_tiny", "mae_cls_tiny", "mwmae_shift_tiny")
AUDIOMAE_FIXTURES = ("audiomae_tiny", "audiomae_swin_tiny")
FINETUNE_FIXTURES = ("audiomae_ft_tiny",)  # the authors' fine-tuned classifier (models_vit) and one fine-tuning step
EXT_NDARRAY, EXT_NPSCALAR = 1, 3  # flax.serialization's msgpack extension codes


def unshuffle(data: np.ndarray, dtype: str, shape: list[int]) -> np.ndarray:
    """Inverse of the writer's byte shuffle: (itemsize * n,) uint8 -> array of `dtype`, `shape`."""
    dt = np.dtype(dtype)
    return np.array(data.reshape(dt.itemsize, -1).T, order="C").view(dt).reshape(shape)


def _untag(obj: dict[str, Any]) -> Any:
    """json object_hook: {"__tuple__": [...]} (a tuple in a checkpoint entry) -> tuple."""
    return tuple(obj["__tuple__"]) if set(obj) == {"__tuple__"} else obj


@functools.lru_cache(maxsize=None)
def _bundle(name: str) -> tuple[Any, dict[str, Any]]:
    manifest = json.loads((FOLDER / f"{name}.json").read_text(), object_hook=_untag)
    return np.load(FOLDER / f"{name}.npz"), manifest


def keys(name: str) -> list[str]:
    """Array keys of a bundle (fixture, "inputs" or "analyses"), checkpoint arrays excluded."""
    manifest = _bundle(name)[1]
    return [k for k in (*manifest["arrays"], *manifest.get("derived", {})) if not k.startswith(("ckpt/", "xor/"))]


def array(name: str, key: str) -> np.ndarray:
    """One array of bundle `name` (a fresh copy); falls back to the shared inputs (waveforms, fbank)."""
    manifest = _bundle(name)[1]
    if key in manifest["arrays"]:
        return _stored(name, key)
    if key in manifest.get("derived", {}):
        return _derived(name, key).copy()
    if name != "inputs":
        return array("inputs", key)
    raise KeyError(f"golden data has no array {key!r} (see tests/golden/*.json)")


def meta(name: str) -> dict[str, Any]:
    """The bundle's JSON: facts of the source, trimming, and (analyses) the reference JSON files."""
    return _bundle(name)[1]


def _stored(name: str, key: str) -> np.ndarray:
    data, manifest = _bundle(name)
    dtype, shape, shuffled = manifest["arrays"][key]
    raw = data[key.replace("/", "__")]
    return unshuffle(raw, dtype, shape) if shuffled else raw.reshape(shape)


@functools.lru_cache(maxsize=None)
def _replayed_params(name: str) -> dict[str, np.ndarray | None]:
    """The fixture checkpoint's parameters that `replay` regenerates (None for the others)."""
    spec = meta(name)["checkpoint"]["replay"]
    shapes = {k: tuple(shape) for k, (shape, _) in spec["params"].items()}
    scales = {k: scale for k, (_, scale) in spec["params"].items()}
    if spec["kind"] == "audiomae":
        return replay.audiomae_state_dict(shapes, spec["init_seed"], spec["perturb_seed"], scales, tuple(spec["grid"]))
    return replay.flax_params(shapes, spec["perturb_seed"], scales, tuple(spec["grid"]))


@functools.lru_cache(maxsize=None)
def _derived(name: str, key: str) -> np.ndarray:
    """A regenerated array (read-only), checked against the original's CRC-32."""
    entry = meta(name)["derived"][key]
    if entry["recipe"] == "checkpoint":
        value = _replayed_params(name)[entry["param"]]
    else:
        value = replay.regenerate(entry, lambda source: array(name, source))
    if value is None:
        raise RuntimeError(f"golden {name}/{key}: {entry} regenerates nothing (tests/golden/replay.py)")
    if "xor" in entry:
        bits = np.dtype(f"u{value.dtype.itemsize}")
        value = (value.view(bits) ^ _stored(name, entry["xor"]).view(bits)).view(value.dtype)
    if replay.crc32(value) != entry["crc32"]:
        raise RuntimeError(
            f"golden {name}/{key}: the array regenerated by recipe {entry['recipe']!r} differs from the "
            f"vendored original (CRC-32 {replay.crc32(value)} != {entry['crc32']}); tests/golden/replay.py "
            "no longer reproduces it on this machine (numpy version?)")
    value.setflags(write=False)
    return value


def _flax_tree(node: Any, name: str) -> Any:
    import msgpack

    if isinstance(node, dict) and set(node) == {"__array__"}:
        value = array(name, node["__array__"])
        payload = msgpack.packb((list(value.shape), value.dtype.name, value.tobytes()))
        return msgpack.ExtType(EXT_NDARRAY, payload)
    if isinstance(node, dict) and set(node) == {"__scalar__"}:
        value = array(name, node["__scalar__"])
        return msgpack.ExtType(EXT_NPSCALAR, msgpack.packb((value.dtype.name, value.tobytes())))
    if isinstance(node, dict):
        return {k: _flax_tree(v, name) for k, v in node.items()}
    return node


def write_checkpoint(name: str, out_dir: Path) -> Path:
    """Rebuild fixture `name`'s checkpoint in the authors' layout inside `out_dir`; returns the
    run directory (Flax: config.json + checkpoint_<step>) or the `.pth` file (Audio-MAE)."""
    info = meta(name)["checkpoint"]
    out_dir.mkdir(parents=True, exist_ok=True)
    if info["layout"] == "flax":
        import msgpack

        (out_dir / "config.json").write_text(info["config_json"])
        path = out_dir / info["file"]
        path.write_bytes(msgpack.packb(_flax_tree(info["tree"], name)))
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != info["sha256"]:
            raise RuntimeError(f"rebuilt {path} differs from the authors' file (sha256 {digest})")
        return out_dir
    import torch

    model = OrderedDict((k, torch.from_numpy(array(name, f"ckpt/{k}"))) for k in info["model_keys"])
    obj = {"model": model, "optimizer": info["optimizer"], "epoch": info["epoch"], "scaler": info["scaler"],
           "args": argparse.Namespace(**info["args"])}
    obj = {k: obj[k] for k in info["top_level_keys"]}
    path = out_dir / info["file"]
    torch.save(obj, path)
    return path
