"""The vendored golden data (tests/golden): every array reads back and passes its CRC-32 check,
the rebuilt checkpoints load in the authors' layout, the replay matches torch's own RNG, the
reader round-trips every dtype. That every kept array and rebuilt checkpoint equals the
original in ../shared/fixtures is checked by `scripts/vendor_golden.py` whenever it writes the
data (a clone has no ../shared, so the test suite never depends on it)."""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import pickle
import shutil
from collections import OrderedDict

import msgpack
import numpy as np
import pytest
import torch

import golden
from conftest import REPO
from golden import replay

BUNDLES = ("inputs", *golden.FLAX_FIXTURES, *golden.AUDIOMAE_FIXTURES, "analyses")


@pytest.fixture(scope="module")
def vendor():
    """scripts/vendor_golden.py as a module (its Bundle writer, KEEP and checks)."""
    spec = importlib.util.spec_from_file_location("vendor_golden", REPO / "scripts" / "vendor_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def golden_folder(monkeypatch):
    """Point the reader at another folder (and forget what it cached) for one test."""
    caches = (golden._bundle, golden._derived, golden._replayed_params)

    def use(folder):
        for cache in caches:
            cache.cache_clear()
        monkeypatch.setattr(golden, "FOLDER", folder)

    yield use
    monkeypatch.undo()
    for cache in caches:
        cache.cache_clear()


@pytest.mark.parametrize("name", BUNDLES)
def test_every_array_reads_back(name):
    manifest = golden.meta(name)
    for key, (dtype, shape, _) in manifest["arrays"].items():
        value = golden.array(name, key)
        assert value.dtype == np.dtype(dtype) and list(value.shape) == shape, key
    for key, entry in manifest["derived"].items():
        value = golden.array(name, key)  # raises unless the CRC-32 is the original's
        assert replay.crc32(value) == entry["crc32"]
        value.flat[0] += 1  # a fresh copy: the cached array is not touched
        assert replay.crc32(golden.array(name, key)) == entry["crc32"]


def test_bundles_hold_what_keep_lists(vendor):
    for name, keep in vendor.KEEP.items():
        expected = {item.split("/", 1)[1] if name == "inputs" else item for item in keep if not item.endswith("/*")}
        groups = [item[:-1] for item in keep if item.endswith("/*")]  # "ft_grads/*": every array of that npz
        held = set(golden.keys(name))
        grouped = {k for k in held if k.startswith(tuple(groups))} if groups else set()
        assert held - grouped == expected, f"rerun scripts/vendor_golden.py after editing KEEP ({name})"
        assert all(any(k.startswith(g) for k in grouped) for g in groups), name


def test_checkpoints_are_mostly_regenerated():
    for name in golden.AUDIOMAE_FIXTURES:
        derived = [k for k in golden.meta(name)["derived"] if k.startswith("ckpt/")]
        stored = [k for k in golden.meta(name)["arrays"] if k.startswith("ckpt/")]
        assert sorted(stored) == ["ckpt/cls_token", "ckpt/mask_token"], name
        assert len(derived) + len(stored) == len(golden.meta(name)["checkpoint"]["model_keys"])


def test_wrong_crc_raises(tmp_path, golden_folder):
    name = "audiomae_swin_tiny"
    shutil.copy(golden.HERE / f"{name}.npz", tmp_path)
    manifest = json.loads((golden.HERE / f"{name}.json").read_text())
    manifest["derived"]["ckpt/decoder_blocks.3.attn.tau"]["crc32"] ^= 1
    (tmp_path / f"{name}.json").write_text(json.dumps(manifest))
    golden_folder(tmp_path)
    golden.array(name, "ckpt/decoder_blocks.2.attn.tau")
    with pytest.raises(RuntimeError, match="CRC-32"):
        golden.array(name, "ckpt/decoder_blocks.3.attn.tau")


@pytest.mark.parametrize("name", golden.FLAX_FIXTURES)
def test_flax_checkpoint_rebuilds_byte_identical(fixture_checkpoint, name):
    info = golden.meta(name)["checkpoint"]
    run_dir = fixture_checkpoint(name)
    data = (run_dir / info["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == info["sha256"]
    state = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert {"params", "opt_state", "step"} <= set(state)
    assert json.loads((run_dir / "config.json").read_text()) == json.loads(info["config_json"])


@pytest.mark.parametrize("name", golden.AUDIOMAE_FIXTURES)
def test_audiomae_checkpoint_loads_like_the_authors_file(fixture_checkpoint, name):
    info = golden.meta(name)["checkpoint"]
    path = fixture_checkpoint(name)
    with pytest.raises(pickle.UnpicklingError):  # the pickled argparse.Namespace, as in the original
        torch.load(path, weights_only=True)
    with torch.serialization.safe_globals([argparse.Namespace]):
        obj = torch.load(path, weights_only=True)
    assert list(obj) == ["model", "optimizer", "epoch", "scaler", "args"]
    assert isinstance(obj["model"], OrderedDict) and list(obj["model"]) == info["model_keys"]
    shapes = {k: shape for k, (shape, _) in info["replay"]["params"].items()}
    for key, value in obj["model"].items():
        assert value.dtype == torch.float32 and list(value.shape) == shapes[key], key
    assert isinstance(obj["args"], argparse.Namespace) and obj["args"].model.startswith("mae_vit_fixture_")
    assert isinstance(obj["optimizer"]["param_groups"][0]["betas"], tuple)
    assert isinstance(obj["epoch"], int) and obj["scaler"]["scale"] > 0


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="replay follows torch's AVX2 / AVX-512 uniform_ kernel (fused multiply-add)")
def test_replayed_generator_matches_torch():
    seed = 1234
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        linear, conv = torch.nn.Linear(7, 13), torch.nn.Conv2d(1, 4, 16, stride=16)
        wide = torch.empty(50, 30)
        torch.nn.init.xavier_uniform_(wide)
        torch.nn.init.normal_(torch.empty(1, 1, 32), std=0.02)
        after = torch.empty(100).uniform_(-0.3, 0.3)
    gen = replay.TorchCPUGenerator(seed)
    expected = [gen.kaiming_uniform((13, 7)), gen.uniform((13,), -7 ** -0.5, 7 ** -0.5),
                gen.kaiming_uniform((4, 1, 16, 16)), gen.uniform((4,), -1 / 16, 1 / 16),
                gen.xavier_uniform((50, 30))]
    gen.skip(32)
    expected.append(gen.uniform((100,), -0.3, 0.3))
    got = [linear.weight, linear.bias, conv.weight, conv.bias, wide, after]
    for e, g in zip(expected, got):
        assert np.array_equal(e, g.detach().numpy())


def test_sincos_pos_embed_layout():
    table = replay.sincos_audiomae(16, rows=2, cols=3)  # token 1 + r*cols + c: [sincos(c) | sincos(r)]
    assert table.shape == (7, 16) and table.dtype == np.float32 and not table[0].any()
    r, c = 1, 2
    row = table[1 + r * 3 + c].astype(np.float64)
    omega = 1.0 / 10000 ** (np.arange(4) / 4.0)  # dim/4 frequencies per axis
    assert np.allclose(row[:8], np.concatenate([np.sin(c * omega), np.cos(c * omega)]), atol=1e-7)
    assert np.allclose(row[8:], np.concatenate([np.sin(r * omega), np.cos(r * omega)]), atol=1e-7)


def test_reader_round_trips_every_dtype(vendor, tmp_path, golden_folder):
    rng = np.random.default_rng(0)
    values = {f"a/{dt}": (rng.standard_normal((3, 5)) * 100).astype(dt)
              for dt in ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                         "uint16", "uint32", "uint64", "complex64", "complex128", ">f4", "<i2")}
    values |= {"a/bool": rng.random(7) > 0.5, "a/scalar": np.float32(2.5).reshape(()),
               "a/empty": np.zeros((0, 3), np.float32), "a/strided": np.arange(24, dtype=np.int32).reshape(4, 6).T,
               "x": rng.standard_normal((2, 4, 6, 1)).astype(np.float32)}
    bundle = vendor.Bundle()
    for key, value in values.items():
        bundle.add(key, value)
    recipe = {"recipe": "patchify", "input": "x", "patch": [2, 3]}
    target = replay.patchify(values["x"], (2, 3))
    bundle.derive("target", target, recipe, target)
    nearly = target.copy()
    nearly.flat[5] = np.nextafter(nearly.flat[5], np.float32(np.inf))
    bundle.derive("nearly", nearly, recipe, target, xor=True)
    bundle.derive("other", -target, recipe, target)
    assert dict(bundle.counts) == {"stored": len(values) + 1, "regenerated": 1, "xor": 1}
    bundle.write(tmp_path, "roundtrip", {})
    golden_folder(tmp_path)
    for key, value in {**values, "target": target, "nearly": nearly, "other": -target}.items():
        back = golden.array("roundtrip", key)
        assert back.dtype == value.dtype and back.shape == value.shape, key
        assert back.tobytes() == np.ascontiguousarray(value).tobytes(), key
