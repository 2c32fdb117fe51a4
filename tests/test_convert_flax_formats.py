"""The authors' files as flax writes them: bfloat16 leaves, every msgpack dtype, orbax directories.

Variants of the mwmae_tiny fixture are built by re-encoding its leaves exactly as
flax.serialization (msgpack ext types) and orbax 0.3.x (`checkpoint_<step>/checkpoint`)
write them; the writers live in benchmarks/convert_bench.py.
"""

from __future__ import annotations

import json
import logging
import shutil

import msgpack
import numpy as np
import pytest
import torch

import hear_mwmae
from benchmarks.convert_bench import (RELEASED_BF16_LEAVES, bfloat16_bits, get_leaf, orbax_tree, pack_array,
                                      repack_bfloat16, set_leaf, write_orbax_dir)
from hear_mwmae.checkpoint import load_checkpoint
from hear_mwmae.cli import main as cli_main
from hear_mwmae.convert import ConversionError, convert_source, read_flax_msgpack
from hear_mwmae.files import sha256_file

from conftest import WAVES, load_npy, max_abs


def _raw_tree(path) -> dict:
    """A flax msgpack file with its ext leaves kept as msgpack.ExtType."""
    return msgpack.unpackb(path.read_bytes(), raw=False, strict_map_key=False,
                           ext_hook=lambda code, data: msgpack.ExtType(code, data))


@pytest.fixture(scope="module")
def fixture_tree(fixture_checkpoint) -> dict:
    return _raw_tree(fixture_checkpoint("mwmae_tiny") / "checkpoint_0")


@pytest.fixture(scope="module")
def bf16_tree(fixture_tree) -> dict:
    """The fixture with mask_token and its two Adam moments stored as bfloat16 (the released config)."""
    tree = _raw_tree_copy(fixture_tree)
    for path in RELEASED_BF16_LEAVES:
        set_leaf(tree, path, repack_bfloat16(get_leaf(tree, path)))
    return tree


def _raw_tree_copy(tree):
    return {k: _raw_tree_copy(v) for k, v in tree.items()} if isinstance(tree, dict) else tree


def _config(fixture_checkpoint) -> str:
    return (fixture_checkpoint("mwmae_tiny") / "config.json").read_text()


def write_run(run_dir, config: str, tree: dict, layout: str, step: int = 0):
    """A run directory with config.json and `checkpoint_<step>` as a legacy file or an orbax directory."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(config)
    if layout == "orbax":
        write_orbax_dir(run_dir / f"checkpoint_{step}", tree)
    else:
        (run_dir / f"checkpoint_{step}").write_bytes(msgpack.packb(tree))
    return run_dir


def bf16_rounded(t: torch.Tensor) -> torch.Tensor:
    bits = bfloat16_bits(t.numpy()).astype(np.uint32) << 16
    return torch.from_numpy(bits.view(np.float32))


# ----------------------------------------------------------------------------- the bfloat16 writer
def test_bfloat16_bits_round_to_nearest_even():
    one_ulp = 2.0 ** -7  # bfloat16 spacing at 1.0
    values = np.array([1.0, 1 + one_ulp / 2, 1 + 3 * one_ulp / 2, 1 + one_ulp / 2 + 2 ** -20, -2.0, np.inf,
                       np.finfo(np.float32).max], dtype=np.float32)
    expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC000, 0x7F80, 0x7F80]  # ties to even; max float32 -> inf
    assert bfloat16_bits(values).tolist() == expected
    nan = bfloat16_bits(np.array([np.nan, -np.nan], dtype=np.float32)).astype(np.uint32) << 16
    assert np.isnan(nan.view(np.float32)).all() and (nan >> 31).tolist() == [0, 1]
    try:
        import ml_dtypes
    except ImportError:
        return
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * np.float32(0.02)
    assert np.array_equal(bfloat16_bits(x), x.astype(ml_dtypes.bfloat16).view(np.uint16))


# ----------------------------------------------------------------------------- bfloat16 and orbax variants
VARIANTS = [("msgpack", True), ("orbax", False), ("orbax", True)]


@pytest.mark.parametrize("layout,bf16", VARIANTS, ids=["bf16-file", "orbax-dir", "orbax-dir-bf16"])
def test_variants_convert_to_the_same_weights(tmp_path, fixture_checkpoint, fixture_tree, bf16_tree, converted,
                                              layout, bf16):
    run = write_run(tmp_path / "run", _config(fixture_checkpoint), bf16_tree if bf16 else fixture_tree, layout)
    c = convert_source(run)
    reference = converted("mwmae_tiny").state_dict
    assert set(c.state_dict) == set(reference)
    for key, value in reference.items():
        got = c.state_dict[key]
        assert got.dtype == torch.float32
        if bf16 and key == "decoder.mask_token":
            assert torch.equal(got, bf16_rounded(value)) and not torch.equal(got, value)
        else:
            assert torch.equal(got, value), key
    prov = c.provenance
    data_file = run / "checkpoint_0" / "checkpoint" if layout == "orbax" else run / "checkpoint_0"
    assert prov["source_sha256"] == sha256_file(data_file) and prov["step"] == 0
    assert prov["source_file"] == ("checkpoint_0/checkpoint" if layout == "orbax" else "checkpoint_0")
    assert prov["layout"] == ("orbax" if layout == "orbax" else "flax-msgpack")
    assert prov["source_dtypes"] == ({"bfloat16": ["mask_token"]} if bf16 else {})


@pytest.mark.parametrize("layout", ["msgpack", "orbax"])
def test_bf16_variants_reproduce_the_fixture_embeddings(tmp_path, fixture_checkpoint, bf16_tree, layout):
    run = write_run(tmp_path / "run", _config(fixture_checkpoint), bf16_tree, layout)
    out = tmp_path / "enc.pt"
    assert cli_main(["convert", str(run), str(out), "--encoder-only"]) == 0
    model = hear_mwmae.load_model(str(out), device="cpu")
    for wave in WAVES:
        audio = torch.from_numpy(load_npy("mwmae_tiny", f"{wave}.npy"))[None]
        emb, _ = hear_mwmae.get_timestamp_embeddings(audio, model)
        assert max_abs(emb, load_npy("mwmae_tiny", f"{wave}.timestamp_embeddings.npy")) <= 1e-4, wave
    assert load_checkpoint(out).provenance["source_dtypes"] == {"bfloat16": ["mask_token"]}


def test_orbax_layout_is_what_orbax_aggregates(fixture_tree):
    tree = orbax_tree(fixture_tree)
    assert list(tree)[:2] == ["step", "batch_stats"] and list(tree)[-1] == "opt_state"
    assert isinstance(tree["opt_state"], list) and tree["opt_state"][1] is None  # optax EmptyState
    assert set(tree["opt_state"][0]) == {"count", "mu", "nu"}


def test_orbax_dir_passed_directly(tmp_path, fixture_checkpoint, bf16_tree, converted):
    run = write_run(tmp_path / "run", _config(fixture_checkpoint), bf16_tree, "orbax", step=7)
    direct = convert_source(run / "checkpoint_7")  # config.json in the parent
    aggregate = convert_source(run / "checkpoint_7" / "checkpoint")  # config.json two levels up
    via_dir = convert_source(run)
    for c in (direct, aggregate):
        assert c.provenance["source_sha256"] == via_dir.provenance["source_sha256"]
        for key, value in via_dir.state_dict.items():
            assert torch.equal(c.state_dict[key], value), key
    assert direct.provenance["step"] == 0  # the step stored in the train state, not the name
    on_the_fly = load_checkpoint(run / "checkpoint_7")  # load_model's path, converting on the fly
    assert torch.equal(on_the_fly.state_dict["decoder.mask_token"], via_dir.state_dict["decoder.mask_token"])
    shutil.move(run / "config.json", tmp_path / "elsewhere.json")
    with pytest.raises(ConversionError, match="config.json not found"):
        convert_source(run / "checkpoint_7")
    c = convert_source(run / "checkpoint_7", config_path=tmp_path / "elsewhere.json")
    assert c.config == converted("mwmae_tiny").config
    out = tmp_path / "from_dir.pt"
    assert cli_main(["convert", str(run / "checkpoint_7"), str(out), "--config", str(tmp_path / "elsewhere.json")]) == 0
    assert load_checkpoint(out).provenance["source_file"] == "checkpoint_7/checkpoint"


def test_newest_step_among_files_and_directories(tmp_path, fixture_checkpoint, fixture_tree, caplog):
    config = _config(fixture_checkpoint)
    run = write_run(tmp_path / "run", config, fixture_tree, "msgpack", step=0)
    write_run(run, config, fixture_tree, "orbax", step=5)
    write_run(run, config, fixture_tree, "msgpack", step=12)
    assert convert_source(run).provenance["source_file"] == "checkpoint_12"
    write_run(run, config, fixture_tree, "orbax", step=30)
    assert convert_source(run).provenance["source_file"] == "checkpoint_30/checkpoint"
    assert convert_source(run, checkpoint="checkpoint_5").provenance["source_file"] == "checkpoint_5/checkpoint"
    (run / "checkpoint_40.orbax-checkpoint-tmp-1700000000123456").mkdir()  # a save still running / interrupted
    with caplog.at_level(logging.WARNING):
        assert convert_source(run).provenance["source_file"] == "checkpoint_30/checkpoint"
    assert "unfinished orbax save" in caplog.text and "checkpoint_40" in caplog.text
    for name in ("checkpoint_0", "checkpoint_12"):
        (run / name).unlink()
    for name in ("checkpoint_5", "checkpoint_30"):
        shutil.rmtree(run / name)
    with pytest.raises(ConversionError, match="only unfinished orbax saves"):
        convert_source(run)


# ----------------------------------------------------------------------------- incomplete and unreadable orbax dirs
@pytest.fixture()
def orbax_run(tmp_path, fixture_checkpoint, fixture_tree):
    return write_run(tmp_path / "run", _config(fixture_checkpoint), fixture_tree, "orbax")


@pytest.mark.parametrize("keep,message", [(0.5, "truncated or corrupt"), (0.999, "truncated or corrupt"),
                                          (0.0, "empty")])
def test_truncated_orbax_aggregate_file(orbax_run, keep, message):
    aggregate = orbax_run / "checkpoint_0" / "checkpoint"
    data = aggregate.read_bytes()
    aggregate.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ConversionError, match=message):
        convert_source(orbax_run)


def test_incomplete_orbax_dirs(orbax_run):
    step_dir = orbax_run / "checkpoint_0"
    (step_dir / "checkpoint").unlink()
    with pytest.raises(ConversionError, match="incomplete orbax checkpoint: no aggregate file 'checkpoint'"):
        convert_source(orbax_run)
    with pytest.raises(ConversionError, match="incomplete orbax checkpoint"):
        convert_source(step_dir)
    unfinished = step_dir.rename(orbax_run / "checkpoint_0.orbax-checkpoint-tmp-1700000000123456")
    with pytest.raises(ConversionError, match="unfinished orbax save"):
        convert_source(unfinished)


def _zarr_dir(path, shape) -> None:
    """A tensorstore zarr array directory as orbax's per-array storage leaves it (metadata + a chunk)."""
    path.mkdir()
    (path / ".zarray").write_text(json.dumps({"chunks": list(shape), "compressor": {"id": "zstd", "level": 1},
                                              "dtype": "<f4", "fill_value": None, "filters": None, "order": "C",
                                              "shape": list(shape), "zarr_format": 2}))
    (path / (".".join(["0"] * len(shape)) or "0")).write_bytes(b"\x28\xb5\x2f\xfd")


def _assert_one_line_hint(exc_text: str, where) -> None:
    assert "\n" not in exc_text and str(where) in exc_text
    assert "cannot be read without orbax" in exc_text and "FLAX_USE_ORBAX_CHECKPOINTING=false" in exc_text
    assert f"ocp.PyTreeCheckpointer().restore('{where}')" in exc_text


def test_per_array_storage_is_refused_with_a_one_line_hint(tmp_path, fixture_checkpoint, fixture_tree, caplog):
    """Arrays saved with aggregate=False: zarr sub-directories named by the param path and
    `PLACEHOLDER://<name>` strings in the aggregate file."""
    tree = _raw_tree_copy(fixture_tree)
    run = tmp_path / "run"
    step_dir = run / "checkpoint_0"
    step_dir.mkdir(parents=True)

    def replace(node, names):
        for key, value in node.items():
            if isinstance(value, dict):
                replace(value, names + [key])
            elif isinstance(value, msgpack.ExtType):
                name = ".".join(names + [key])
                _zarr_dir(step_dir / name, msgpack.unpackb(value.data)[0])
                node[key] = f"PLACEHOLDER://{name}"

    replace(tree, [])
    (step_dir / "checkpoint").write_bytes(msgpack.packb(orbax_tree(tree)))
    (run / "config.json").write_text(_config(fixture_checkpoint))
    for source in (run, step_dir):
        with pytest.raises(ConversionError) as info:
            convert_source(source)
        _assert_one_line_hint(str(info.value), step_dir)
    assert cli_main(["convert", str(run), str(tmp_path / "x.pt")]) == 2
    assert "FLAX_USE_ORBAX_CHECKPOINTING=false" in caplog.text and not (tmp_path / "x.pt").exists()


def test_ocdbt_storage_is_refused_with_a_one_line_hint(orbax_run):
    step_dir = orbax_run / "checkpoint_0"
    (step_dir / "checkpoint").unlink()
    (step_dir / "manifest.ocdbt").write_bytes(b"\x00" * 16)
    (step_dir / "d").mkdir()
    with pytest.raises(ConversionError) as info:
        convert_source(orbax_run)
    _assert_one_line_hint(str(info.value), step_dir)


# ----------------------------------------------------------------------------- every dtype flax writes
def test_every_msgpack_leaf_type_decodes(tmp_path):
    rng = np.random.default_rng(1)
    arrays = {name: rng.integers(0, 100, size=(2, 3)).astype(name)
              for name in ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                           "float16", "float32", "float64", "complex64", "complex128"]}
    bf16_source = rng.standard_normal((4, 5)).astype(np.float32)
    scalar = msgpack.ExtType(3, msgpack.packb(((), "int64", np.int64(-7).tobytes()), use_bin_type=True))
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 3},
               "chunks": {"0": pack_array(np.arange(4, dtype=np.float32)),
                          "1": pack_array(np.arange(4, 6, dtype=np.float32))}}
    tree = {"step": scalar, "arrays": {k: pack_array(v) for k, v in arrays.items()},
            "bf16": pack_array(bf16_source, "bfloat16"), "complex": msgpack.ExtType(2, msgpack.packb((1.5, -2.0))),
            "tuple": msgpack.ExtType(4, msgpack.packb([1, pack_array(np.ones(2, np.float32))])),
            "chunked": chunked, "none": None, "empty": {}}
    path = tmp_path / "checkpoint_3"
    path.write_bytes(msgpack.packb(tree))
    state = read_flax_msgpack(path)
    for name, value in arrays.items():
        got = state["arrays"][name]
        assert got.dtype == np.dtype(name) and np.array_equal(got, value), name
    assert state["step"] == -7 and state["step"].shape == ()
    expected_bf16 = (bfloat16_bits(bf16_source).astype(np.uint32) << 16).view(np.float32)
    assert state["bf16"].dtype == np.float32 and np.array_equal(state["bf16"], expected_bf16)
    assert state["complex"] == complex(1.5, -2.0)
    assert state["tuple"][0] == 1 and np.array_equal(state["tuple"][1], np.ones(2))
    assert np.array_equal(state["chunked"], np.arange(6, dtype=np.float32).reshape(2, 3))
    assert state["none"] is None and state["empty"] == {}


def _with_params(tree, **leaves) -> dict:
    tree = _raw_tree_copy(tree)
    for path, leaf in leaves.items():
        set_leaf(tree, path.replace(".", "/"), leaf)
    return tree


def test_float16_and_float64_params_are_widened_or_rounded_and_recorded(tmp_path, fixture_checkpoint, fixture_tree):
    bias = np.frombuffer(msgpack.unpackb(get_leaf(fixture_tree, "params/decoder_pred/bias").data)[2], np.float32)
    pos = np.frombuffer(msgpack.unpackb(get_leaf(fixture_tree, "params/pos_embed").data)[2], np.float32)
    pos = pos.reshape(msgpack.unpackb(get_leaf(fixture_tree, "params/pos_embed").data)[0])
    tree = _with_params(fixture_tree, **{"params.decoder_pred.bias": pack_array(bias.astype(np.float16)),
                                         "params.pos_embed": pack_array(pos.astype(np.float64) + 1e-12)})
    step = msgpack.ExtType(3, msgpack.packb(((), "int64", np.int64(1234).tobytes()), use_bin_type=True))
    tree["step"] = step  # a numpy scalar step (ext type 3)
    c = convert_source(write_run(tmp_path / "run", _config(fixture_checkpoint), tree, "msgpack"))
    assert torch.equal(c.state_dict["decoder.pred.bias"], torch.from_numpy(bias.astype(np.float16).astype(np.float32)))
    assert torch.equal(c.state_dict["encoder.pos_embed"], torch.from_numpy((pos.astype(np.float64) + 1e-12)
                                                                           .astype(np.float32)))
    assert c.provenance["source_dtypes"] == {"float16": ["decoder_pred/bias"], "float64": ["pos_embed"]}
    assert c.provenance["step"] == 1234


@pytest.mark.parametrize("leaf,message", [
    (lambda: pack_array(np.zeros(64, np.int32)), "dtype int32; parameters must be floating point"),
    (lambda: msgpack.ExtType(1, msgpack.packb(((64,), "float8_e4m3fn", b"\0" * 64))),
     "'float8_e4m3fn' is not supported"),
    (lambda: msgpack.ExtType(1, msgpack.packb(((64,), "float32", b"\0" * 255))), "do not fit"),
    (lambda: "//GDAPlaceholder:params/decoder_pred/bias", "multi-process array"),
    (lambda: 3.0, "not an array"),
])
def test_unusable_param_leaves_are_refused(tmp_path, fixture_checkpoint, fixture_tree, leaf, message):
    tree = _with_params(fixture_tree, **{"params.decoder_pred.bias": leaf()})
    with pytest.raises(ConversionError, match=message):
        convert_source(write_run(tmp_path / "run", _config(fixture_checkpoint), tree, "msgpack"))


def test_optimizer_state_is_skipped_undecoded(tmp_path, fixture_checkpoint, fixture_tree, converted):
    """A leaf in opt_state that could not be decoded does not matter: the converter never decodes it."""
    bad = msgpack.ExtType(1, msgpack.packb(((3,), "no-such-dtype", b"\0" * 12)))
    tree = _with_params(fixture_tree, **{"opt_state.0.mu.mask_token": bad})
    run = write_run(tmp_path / "run", _config(fixture_checkpoint), tree, "msgpack")
    with pytest.raises(ConversionError, match="no-such-dtype"):
        read_flax_msgpack(run / "checkpoint_0")  # decoding everything does hit it
    c = convert_source(run)
    assert torch.equal(c.state_dict["decoder.mask_token"], converted("mwmae_tiny").state_dict["decoder.mask_token"])
