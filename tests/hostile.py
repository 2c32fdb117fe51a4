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
