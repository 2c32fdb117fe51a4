"""Builders of hostile files: what an attacker could hand the checkpoint readers.

Each builder writes its file without going through the package (so the package's own checks
cannot stop the file being made). Open what they write only in a capped child process
(`capped.run_capped`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Callable

import msgpack
import torch

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "weights" / "demo-tiny.pt"


def deep_tuple_flax_run(run_dir: Path, depth: int, bare: bool = False) -> Path:
    """An MW-MAE run directory whose `checkpoint_0` is {"params": (((...),),)}: orbax's tuple
    extension (ext 4, a msgpack list inside) nested `depth` deep, 1 kB for depth 200. `bare`:
    each tuple's payload is the next extension itself, not a list holding it (722 bytes)."""
    inner = msgpack.packb([])
    for _ in range(depth):
        inner = msgpack.packb(msgpack.ExtType(4, inner if bare else b"\x91" + inner))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoint_0").write_bytes(b"\x81" + msgpack.packb("params") + inner)
    (run_dir / "config.json").write_text(json.dumps({"model": {"arch": "mae_tiny", "model_args": {}}}))
    return run_dir


def demo_payload() -> dict[str, Any]:
    """The bundled demo checkpoint's payload (a trusted file of ours), to be edited."""
    return torch.load(DEMO, map_location="cpu", weights_only=True)


def our_checkpoint(out: Path, *, model: dict[str, Any] | None = None, frontend: dict[str, Any] | None = None,
                   edit: Callable[[dict[str, Any]], None] | None = None) -> Path:
    """The demo checkpoint with config fields replaced (`model`, `frontend`) and/or the payload
    edited in place by `edit`, written with plain torch.save (no validation on the way)."""
    payload = demo_payload()
    payload["config"]["model"].update(model or {})
    payload["config"]["frontend"].update(frontend or {})
    if edit is not None:
        edit(payload)
    torch.save(payload, out)
    return out


def release_run_dir(run_dir: Path, source_run: Path, model_args: dict[str, Any]) -> Path:
    """A copy of an authors' run directory whose config.json's model_args are updated."""
    import shutil

    shutil.copytree(source_run, run_dir)
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"].setdefault("model_args", {}).update(model_args)
    (run_dir / "config.json").write_text(json.dumps(cfg))
    return run_dir


def audiomae_keys(dim: int, depth: int, patch: int = 16, tokens: int = 513, mlp: int = 4) -> dict[str, tuple]:
    """Names and shapes of an Audio-MAE encoder (the authors' names), `depth` blocks."""
    shapes: dict[str, tuple] = {"cls_token": (1, 1, dim), "pos_embed": (1, tokens, dim),
                                "patch_embed.proj.weight": (dim, 1, patch, patch), "patch_embed.proj.bias": (dim,),
                                "norm.weight": (dim,), "norm.bias": (dim,)}
    for i in range(depth):
        b = f"blocks.{i}."
        shapes.update({b + "norm1.weight": (dim,), b + "norm1.bias": (dim,), b + "norm2.weight": (dim,),
                       b + "norm2.bias": (dim,), b + "attn.qkv.weight": (3 * dim, dim), b + "attn.qkv.bias": (3 * dim,),
                       b + "attn.proj.weight": (dim, dim), b + "attn.proj.bias": (dim,),
                       b + "mlp.fc1.weight": (mlp * dim, dim), b + "mlp.fc1.bias": (mlp * dim,),
                       b + "mlp.fc2.weight": (dim, mlp * dim), b + "mlp.fc2.bias": (dim,)})
    return shapes


def expanded_audiomae_pth(out: Path, dim: int = 768, depth: int = 12, heads: int = 12) -> Path:
    """An Audio-MAE `.pth` whose every tensor is a stride-0 view of one stored float: a
    ViT-base's 86 M parameters in a file of a few tens of kB."""
    one = torch.zeros(1)
    model = {k: one.expand(shape) for k, shape in audiomae_keys(dim, depth).items()}
    args = argparse.Namespace(model="vit_custom_patch16", num_heads=heads)
    torch.save({"model": model, "args": args}, out)
    return out


def deflated(src: Path, out: Path) -> Path:
    """A copy of a torch zip whose data records are deflate-compressed (torch.save never does):
    a zip bomb when the data is zeros."""
    import zipfile

    with zipfile.ZipFile(src) as original, zipfile.ZipFile(out, "w") as copy:
        for info in original.infolist():
            data = original.read(info.filename)
            info.compress_type = zipfile.ZIP_DEFLATED if "/data/" in info.filename else zipfile.ZIP_STORED
            copy.writestr(info, data)
    return out


def shared_list_bomb(depth: int = 40) -> list:
    """A list whose every level holds the next one twice: 2**depth leaves, a few hundred bytes
    pickled (the pickle memo shares them). Anything that walks or prints it whole never ends."""
    node: list = []
    for _ in range(depth):
        node = [node, node]
    return node


def finetuned_with(src: Path, out: Path, *, head_rows: int | None = None, dataset: object = None) -> Path:
    """A copy of an authors' fine-tuned `.pth` whose `head.weight` claims `head_rows` outputs (and
    no columns, so nothing is stored) and / or whose `args.dataset` is `dataset`."""
    from hear_mwmae.convert.audiomae import load_pickle_safely

    obj = load_pickle_safely(src)  # (our own fixture: the authors' layout, args pickled)
    if head_rows is not None:
        obj["model"]["head.weight"] = torch.zeros(head_rows, 0)
    if dataset is not None:
        obj["args"].dataset = dataset
    torch.save(obj, out)
    return out
