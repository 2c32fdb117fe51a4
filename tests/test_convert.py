"""The converter: official run directories in, our checkpoints out; clear errors otherwise."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from hear_mwmae.checkpoint import load_checkpoint
from hear_mwmae.cli import main as cli_main
from hear_mwmae.convert import ConversionError, config_from_release, convert_run_dir, flatten, read_flax_msgpack

from conftest import FIXTURE_NAMES


@pytest.fixture()
def run_dir(tmp_path, fixture_checkpoint):
    """A writable copy of the mwmae_tiny run directory."""
    dst = tmp_path / "run"
    shutil.copytree(fixture_checkpoint("mwmae_tiny"), dst)
    return dst


def release_config(run_dir) -> dict:
    return json.loads((run_dir / "config.json").read_text())


def write_config(run_dir, cfg: dict) -> None:
    (run_dir / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_param_leaf_is_used_and_optimizer_state_skipped(name, converted, fixture_checkpoint):
    state = read_flax_msgpack(fixture_checkpoint(name) / "checkpoint_0")
    params = flatten(state["params"])
    assert "opt_state" in state  # present in the file ...
    c = converted(name)
    n_flax = sum(v.size for v in params.values())
    assert sum(v.numel() for v in c.state_dict.values()) == n_flax  # ... but only params are converted
    assert all(v.dtype == torch.float32 for v in c.state_dict.values())
    assert c.provenance["step"] == 0 and len(c.provenance["source_sha256"]) == 64


def test_tiny_config_is_read_from_config_json(converted):
    cfg = converted("mwmae_tiny").config.model
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads) == (192, 2, 3)
    assert cfg.decoder_window_sizes == (2, 5, 10, 25, 50, 125, 0, 0) and cfg.window_sizes == ()
    shift = converted("mwmae_shift_tiny").config.model
    assert shift.window_sizes == (10, 0, 2) and shift.shifting_windows
    assert converted("mae_cls_tiny").config.model.use_cls_token


def test_release_factory_names_follow_the_release_rules():
    base, naming = config_from_release({"model": {"arch": "mae_base", "model_args": {
        "decoder_window_sizes": [2, 5, 10, 25, 50, 125, 0, 0]}}})
    assert (base.embed_dim, base.depth, base.num_heads, base.use_cls_token) == (768, 12, 12, False)
    assert (base.decoder_embed_dim, base.decoder_depth, base.decoder_num_heads) == (384, 4, 8)
    assert naming == {"encoder": False, "decoder": True}
    plain, _ = config_from_release({"model": {"arch": "mae_tiny", "model_args": {}}})
    assert plain.use_cls_token and plain.decoder_window_sizes == () and plain.embed_dim == 192


def test_newest_checkpoint_is_used(run_dir):
    (run_dir / "checkpoint_10").write_bytes((run_dir / "checkpoint_0").read_bytes())
    (run_dir / "checkpoint_9").write_bytes(b"garbage")
    assert convert_run_dir(run_dir).provenance["source_file"] == "checkpoint_10"


def test_checkpoint_file_with_explicit_config(run_dir, tmp_path):
    cfg_file = tmp_path / "elsewhere.json"
    shutil.move(run_dir / "config.json", cfg_file)
    with pytest.raises(ConversionError, match="config.json not found"):
        convert_run_dir(run_dir / "checkpoint_0")
    assert convert_run_dir(run_dir / "checkpoint_0", config_path=cfg_file).config.model.embed_dim == 192


def test_missing_config_json(run_dir):
    (run_dir / "config.json").unlink()
    with pytest.raises(ConversionError, match="config.json not found"):
        convert_run_dir(run_dir)


def test_unknown_arch(run_dir):
    cfg = release_config(run_dir)
    cfg["model"]["arch"] = "vit_gigantic"
    write_config(run_dir, cfg)
    with pytest.raises(ConversionError, match="unknown model.arch 'vit_gigantic'"):
        convert_run_dir(run_dir)


@pytest.mark.parametrize("keep", [0.5, 0.999])
def test_truncated_checkpoint(run_dir, keep):
    data = (run_dir / "checkpoint_0").read_bytes()
    (run_dir / "checkpoint_0").write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_run_dir(run_dir)


def test_corrupt_and_empty_checkpoint(run_dir):
    (run_dir / "checkpoint_0").write_bytes(b"\xc1" * 100)
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_run_dir(run_dir)
    (run_dir / "checkpoint_0").write_bytes(b"")
    with pytest.raises(ConversionError, match="empty"):
        convert_run_dir(run_dir)


@pytest.mark.parametrize("change,message", [
    ({"depth": 3}, "missing from the checkpoint"),
    ({"depth": 1}, "not expected by the config"),
    ({"embed_dim": 96}, "config expects"),
    ({"decoder_window_sizes": [2, 5, 10, 25, 50, 50, 0, 0]}, "config expects"),
    ({"decoder_window_sizes": [2, 5, 10, 25, 50, 125, 0, 10]}, "missing from the checkpoint"),
    ({"patch_size": [4, 8]}, "config expects"),
    ({"patch_size": [8, 16]}, "window 2 does not divide the 125 tokens"),
])
def test_params_that_do_not_match_the_config(run_dir, change, message):
    cfg = release_config(run_dir)
    cfg["model"]["model_args"].update(change)
    write_config(run_dir, cfg)
    with pytest.raises(ConversionError, match=message):
        convert_run_dir(run_dir)


def test_cli_convert_full_and_encoder_only(run_dir, tmp_path):
    assert cli_main(["convert", str(run_dir), str(tmp_path / "full.pt")]) == 0
    assert cli_main(["convert", str(run_dir), str(tmp_path / "enc.safetensors"), "--encoder-only"]) == 0
    full, enc = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "enc.safetensors")
    assert not full.encoder_only and enc.encoder_only
    assert set(enc.state_dict) == {k for k in full.state_dict if k.startswith("encoder.")}
    assert any(k.startswith("decoder.") for k in full.state_dict)
    for k, v in enc.state_dict.items():
        assert torch.equal(v, full.state_dict[k])


def test_cli_reports_errors_without_traceback(tmp_path, caplog):
    assert cli_main(["convert", str(tmp_path / "nope"), str(tmp_path / "x.pt")]) == 2
    assert "no such file or directory" in caplog.text


def test_factory_named_release_run_dir_round_trips(tmp_path):
    """A `mae_tiny` run directory in the release's format (as written by benchmarks/convert_bench.py)."""
    from benchmarks.convert_bench import write_release_run_dir
    from hear_mwmae.config import model_config
    from hear_mwmae.model import MWMAE

    n_params = write_release_run_dir(tmp_path / "run", "tiny", seed=3)
    converted = convert_run_dir(tmp_path / "run")
    assert converted.config.model == model_config("tiny")  # 192-d, 12 blocks, released decoder
    assert converted.provenance["step"] == 1000 and converted.provenance["source_file"] == "checkpoint_1000"
    torch.manual_seed(3)
    original = MWMAE(model_config("tiny")).state_dict()
    assert sum(v.numel() for v in converted.state_dict.values()) == n_params
    for key, value in original.items():
        assert torch.equal(converted.state_dict[key], value), key
