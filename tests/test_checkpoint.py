"""Our checkpoint format: round trips, safe loading, Hub references (offline), clear errors."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import hear_mwmae
from hear_mwmae import sources
from hear_mwmae.checkpoint import (Checkpoint, CheckpointError, build_encoder, build_mwmae, load_checkpoint,
                                   save_checkpoint)
from hear_mwmae.files import sha256_file

from conftest import REPO



@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
@pytest.mark.parametrize("encoder_only", [False, True])
def test_round_trip(converted, tmp_path, suffix, encoder_only):
    c = converted("mwmae_shift_tiny")
    path = save_checkpoint(tmp_path / f"m{suffix}", c.config, c.state_dict, provenance=c.provenance,
                           encoder_only=encoder_only)
    ckpt = load_checkpoint(path)
    assert ckpt.config == c.config and ckpt.encoder_only == encoder_only
    assert ckpt.provenance["source_sha256"] == c.provenance["source_sha256"]
    for k, v in ckpt.state_dict.items():
        assert torch.equal(v, c.state_dict[k])
    build_encoder(ckpt)
    if encoder_only:
        with pytest.raises(CheckpointError, match="encoder-only"):
            build_mwmae(ckpt)
    else:
        build_mwmae(ckpt)


def test_pt_file_loads_with_plain_weights_only_torch_load(tiny_checkpoint):
    obj = torch.load(tiny_checkpoint, weights_only=True)
    assert obj["format"] == "hear-mwmae" and obj["format_version"] == 3
    assert obj["config"]["model"]["embed_dim"] == 192
    assert obj["config"]["model"]["family"] == "mwmae" and obj["config"]["frontend"]["kind"] == "logmel"


def test_format_1_files_are_migrated(tiny_checkpoint, tmp_path):
    """Format 1 (MW-MAE only) had no family / frontend kind: it loads as the same MW-MAE."""
    obj = torch.load(tiny_checkpoint, weights_only=True)
    old = dict(obj, format_version=1, config={
        "model": {k: v for k, v in obj["config"]["model"].items() if k in V1_MODEL_KEYS},
        "frontend": {k: v for k, v in obj["config"]["frontend"].items() if k != "kind"}})
    torch.save(old, tmp_path / "v1.pt")
    ckpt, new = load_checkpoint(tmp_path / "v1.pt"), load_checkpoint(tiny_checkpoint)
    assert ckpt.config == new.config and ckpt.provenance["migrated_from_format"] == 1
    demo = load_checkpoint(REPO / "weights" / "demo-tiny.pt")  # committed in format 1
    assert demo.config.family == "mwmae" and demo.provenance.get("migrated_from_format") == 1
    torch.save(dict(obj, format_version=2), tmp_path / "v2.pt")  # format 2: no classifier head
    assert load_checkpoint(tmp_path / "v2.pt").config == new.config and new.config.head is None
    torch.save(dict(obj, format_version=4), tmp_path / "v4.pt")
    with pytest.raises(CheckpointError, match="format_version 4 unsupported"):
        load_checkpoint(tmp_path / "v4.pt")


V1_MODEL_KEYS = {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio", "window_sizes",
                 "decoder_embed_dim", "decoder_depth", "decoder_num_heads", "decoder_window_sizes",
                 "shifting_windows", "use_cls_token", "mask_ratio", "norm_pix_loss", "layer_norm_eps"}


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "hear-mwmae", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused") as err:
        load_checkpoint(path)
    assert "posix.system" in str(err.value)  # names what was refused ...
    assert "weights_only" not in str(err.value)  # ... and never suggests loading it unsafely


def test_missing_file_says_how_to_get_weights(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"base.pt: no such file or directory; pass .* a name: demo-tiny \(bundled\), ") as err:
        hear_mwmae.load_model(str(tmp_path / "base.pt"))
    assert "weights/" not in str(err.value)  # a pip install has no weights/ folder to point to


def test_corrupt_and_foreign_files(tmp_path, tiny_checkpoint, fixture_checkpoint):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not a hear-mwmae checkpoint"):
        load_checkpoint(foreign)
    flax = tmp_path / "checkpoint_0"
    shutil.copy(fixture_checkpoint("mwmae_tiny") / "checkpoint_0", flax)
    with pytest.raises(CheckpointError, match="hear-mwmae convert"):
        load_checkpoint(flax)


def test_weights_that_do_not_match_config_are_rejected(converted, tmp_path):
    c = converted("mwmae_tiny")
    state = dict(c.state_dict)
    state["encoder.norm.weight"] = torch.zeros(7)
    path = save_checkpoint(tmp_path / "m.pt", c.config, state)
    with pytest.raises(CheckpointError, match=r"disagrees with its weights: shapes 'encoder.norm.weight' \(7,\)"):
        load_checkpoint(path)  # refused at load, before any module is built
    with pytest.raises(CheckpointError, match="disagrees with its weights"):
        build_encoder(Checkpoint(c.config, state))  # and by the builder, for a Checkpoint made by hand


def test_run_directory_is_converted_on_the_fly(converted, caplog, fixture_checkpoint):
    ckpt = load_checkpoint(fixture_checkpoint("mwmae_tiny"))
    assert "convert once" in caplog.text
    assert torch.equal(ckpt.state_dict["encoder.pos_embed"], converted("mwmae_tiny").state_dict["encoder.pos_embed"])


def test_sha256_pin(tiny_checkpoint):
    digest = sha256_file(tiny_checkpoint)
    assert sources.resolve(tiny_checkpoint, sha256=digest) == tiny_checkpoint
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        hear_mwmae.load_model(str(tiny_checkpoint), sha256="0" * 64)


def make_hub_cache(root, repo_id: str, filename: str, source, revision: str = "main"):
    """Lay out a Hugging Face Hub cache entry by hand, as huggingface_hub stores downloads."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = root / f"models--{repo_id.replace('/', '--')}"
    snap = repo_dir / "snapshots" / commit / filename
    snap.parent.mkdir(parents=True)
    shutil.copy(source, snap)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / revision).write_text(commit)
    return commit


def test_hub_reference_resolves_offline_from_the_cache(tiny_checkpoint, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    make_hub_cache(tmp_path / "hub", "someone/mwmae", "sub/tiny.pt", tiny_checkpoint)
    digest = sha256_file(tiny_checkpoint)
    model = hear_mwmae.load_model("hf://someone/mwmae/sub/tiny.pt", device="cpu", sha256=digest)
    assert model.scene_embedding_size == 960
    with pytest.raises(FileNotFoundError, match=r"not in the local Hugging Face cache .*`hf download someone/mwmae "
                       r"sub/missing.pt --local-dir DIR`.* pass DIR/sub/missing.pt instead"):
        sources.load_checkpoint("hf://someone/mwmae/sub/missing.pt")
    with pytest.raises(FileNotFoundError):
        sources.load_checkpoint("hf://someone/mwmae/sub/tiny.pt@v2")  # revision not in the cache, offline
    with pytest.raises(ValueError, match="bad Hub reference"):
        sources.load_checkpoint("hf://only-owner")


def _imports(module_file) -> set[str]:
    """Every package module a source file imports, at the top or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(module_file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found |= {node.module} if node.module else {a.name for a in node.names}
    return found


def test_names_and_the_hub_resolve_above_the_format_and_the_registry():
    """checkpoint.py (the format) imports neither registry.py nor sources.py; registry.py saves
    through checkpoint.py and does not resolve; sources.py sits above both. No import circle."""
    package = REPO / "hear_mwmae"
    assert not _imports(package / "checkpoint.py") & {"registry", "sources"}
    assert "sources" not in _imports(package / "registry.py")
    assert {"registry", "checkpoint"} <= _imports(package / "sources.py")
