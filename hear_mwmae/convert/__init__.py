"""The authors' checkpoints -> our state dict and config (`Converted`), for both families.

    convert_source(path)   detect the layout and convert it:
      MW-MAE (JAX/Flax, `flax.py`): a run directory (`config.json` + `checkpoint_<step>`)
        or a `checkpoint_<step>` with `config.json` beside it; each `checkpoint_<step>` is a
        legacy Flax msgpack file or an orbax checkpoint directory (`flax_files.py`)
      Audio-MAE (PyTorch, `audiomae.py`): the authors' `checkpoint-<epoch>.pth` /
        `pretrained.pth` (pre-trained or fine-tuned), and the timm / Hugging Face Hub layout
        (`config.json` + `model.safetensors` or `pytorch_model.bin`)

Conversion never runs the authors' code and needs no JAX: files are decoded as data
(msgpack + numpy, or `torch.load(weights_only=True)`), mapped through explicit name
tables, every shape checked, and loaded strictly into our model.
"""

from __future__ import annotations

from pathlib import Path

from .audiomae import convert_file, convert_timm_dir, is_timm_dir
from .common import CONVERTER_VERSION, ConversionError, Converted
from .flax import (config_from_release, convert_params, convert_run_dir, find_checkpoint, flatten,
                   parameter_table, read_flax_msgpack)
from .flax_files import is_orbax_dir


def is_msgpack_map(path: Path) -> bool:
    """Whether a file starts like a msgpack map (a Flax checkpoint), not a zip / safetensors."""
    with open(path, "rb") as fh:
        head = fh.read(1)
    return bool(head) and (0x80 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))


def is_zip(path: Path) -> bool:
    """Whether a file starts like a zip archive (torch.save's format), even a truncated one."""
    with open(path, "rb") as fh:
        return fh.read(4) == b"PK\x03\x04"


def convert_source(source: str | Path, *, checkpoint: str | Path | None = None,
                   config_path: str | Path | None = None, num_heads: int | None = None,
                   decoder_num_heads: int | None = None) -> Converted:
    """Convert an authors' checkpoint of either family, detecting its layout.

    `checkpoint` picks a file inside a run directory (default: the newest);
    `config_path` names the config when it is not beside the checkpoint.
    `num_heads` / `decoder_num_heads` (Audio-MAE): head counts when the file cannot tell.
    """
    source = Path(source)
    if not source.exists():
        raise ConversionError(f"{source}: no such file or directory")
    if is_timm_dir(source):
        return convert_timm_dir(source, num_heads=num_heads)
    if source.is_file() and (is_zip(source) or source.suffix == ".safetensors"):  # Audio-MAE .pth / timm file
        return convert_file(source, num_heads=num_heads, decoder_num_heads=decoder_num_heads)
    if is_orbax_dir(source) or source.is_dir() or is_msgpack_map(source):  # MW-MAE run dir / checkpoint_<step>
        return convert_run_dir(source, checkpoint=checkpoint, config_path=config_path)
    raise ConversionError(f"{source}: not a checkpoint layout this converter knows (an MW-MAE run directory "
                          "or checkpoint_<step> file)")


__all__ = ["CONVERTER_VERSION", "ConversionError", "Converted", "config_from_release", "convert_params",
           "convert_run_dir", "convert_source", "find_checkpoint", "flatten", "is_msgpack_map", "is_orbax_dir",
           "parameter_table", "read_flax_msgpack"]
