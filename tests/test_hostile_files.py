"""Hostile checkpoints and configs (issue 19, the readers): a clean one-line refusal, never a crash,
never memory beyond a bound, never a silently wrong model, never unsafe advice or echoed bytes.

Files that crashed the interpreter or took gigabytes before these checks are only opened in a
child process under an address-space cap (`capped.run_capped`); the test asserts how the child
ended (an exit code, not a signal) and its peak resident memory.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import sys
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from benchmarks.convert_bench import get_leaf, pack_array, set_leaf
from hear_mwmae import cli
from hear_mwmae.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from hear_mwmae.config import (ENCODER_SIZES, FbankConfig, FrontendConfig, HeadConfig, ModelConfig, MWMAEConfig,
                               audiomae_config)
from hear_mwmae.convert import ConversionError, convert_source, read_flax_msgpack
from hear_mwmae.convert.audiomae import load_pickle_safely
from hear_mwmae.convert.flax_files import MAX_NESTING, read_tree
from hear_mwmae.pretrain.state import save_train_state

import capped
import hostile

CAP_MIB = 2048  # address space of each child; the interpreter with torch maps ~650 MiB
RSS_BOUND_MIB = 500  # peak resident memory of a child that refuses hostile files (it idles at ~300)
OPEN_FILES = Path(__file__).with_name("open_files.py")


def open_in_child(*attempts: tuple[str, Path], rss_bound_mib: float = RSS_BOUND_MIB) -> list[dict]:
    """Run `open_files.py ACTION PATH ...` in one capped child: it must end by itself (no signal,
    no time-out) under `rss_bound_mib` of peak resident memory. Returns one result per attempt."""
    args = [str(x) for action, path in attempts for x in (action, path)]
    ended = capped.run_capped([sys.executable, str(OPEN_FILES), *args], address_space_mib=CAP_MIB)
    assert ended.signal is None and not ended.timed_out and ended.returncode == 0, str(ended)
    assert ended.peak_rss_mib < rss_bound_mib, str(ended)
    results = [json.loads(line) for line in ended.stdout.splitlines() if line.startswith("{")]
    assert len(results) == len(attempts), str(ended)
    return results


def assert_refused(result: dict, *phrases: str) -> None:
    assert result["outcome"] == "refused", result
    assert "Traceback" not in result["message"] and "\n" not in result["message"], result
    for phrase in phrases:
        assert phrase in result["message"], result


def run_cli(caplog, *argv) -> tuple[int, str]:
    """(exit code, the one error line) of `hear-mwmae ARGV` in this process (safe inputs only)."""
    caplog.clear()
    code = cli.main([*map(str, argv)])
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, errors
    return code, errors[0]


# ----------------------------------------------------------------------------- 1. nested msgpack
def test_deeply_nested_flax_tuples_are_refused_not_a_crash(tmp_path):
    """200 nested orbax tuples (1 kB) killed `info`, `convert` and `load_model` with SIGSEGV."""
    run = hostile.deep_tuple_flax_run(tmp_path / "run", 200)
    bare = hostile.deep_tuple_flax_run(tmp_path / "bare", 200, bare=True)  # the 722-byte file
    assert (run / "checkpoint_0").stat().st_size < 1100 and (bare / "checkpoint_0").stat().st_size == 722
    results = open_in_child(*[(action, path) for path in (run, bare) for action in ("info", "convert", "load_model")])
    for result in results:
        assert_refused(result, "not a readable Flax msgpack checkpoint")
        assert ("nested deeper than 64" if result["path"] == str(run) else "malformed tuple leaf") in result["message"]
    assert not list(tmp_path.glob("*.converted.pt"))


def test_nesting_limit_is_exact(tmp_path):
    ok = hostile.deep_tuple_flax_run(tmp_path / "ok", MAX_NESTING - 1) / "checkpoint_0"
    tree = read_tree(ok)[0]["params"]
    depth = 0
    while tree:
        assert isinstance(tree, tuple)  # orbax tuples stay tuples
        tree, depth = tree[0], depth + 1
    assert depth == MAX_NESTING - 1
    deep = hostile.deep_tuple_flax_run(tmp_path / "deep", MAX_NESTING) / "checkpoint_0"
    with pytest.raises(ConversionError, match=f"nested deeper than {MAX_NESTING}"):
        read_tree(deep)


@pytest.mark.parametrize("leaf,message", [
    (lambda: msgpack.ExtType(1, msgpack.packb(((-1,), "float32", b"\0" * 16))), "shape is not a list of"),
    (lambda: msgpack.ExtType(1, msgpack.packb(((2.0,), "float32", b"\0" * 8))), "shape is not a list of"),
    (lambda: msgpack.ExtType(1, msgpack.packb(((10**12,), "float32", b"\0" * 4))), "do not fit"),
    (lambda: msgpack.ExtType(1, msgpack.packb([[4], "float32"])), "expected shape, dtype, bytes"),
    (lambda: {"__msgpack_chunked_array__": True, "shape": {"0": 5},
              "chunks": {"0": pack_array(np.zeros(4, np.float32))}}, "do not hold the 5 elements"),
    (lambda: {"__msgpack_chunked_array__": True, "shape": {"0": -1},
              "chunks": {"0": pack_array(np.zeros(4, np.float32))}}, "not a list of sizes"),
])
def test_array_leaves_must_declare_exactly_the_bytes_they_hold(tmp_path, leaf, message):
    """Before: a shape of -1 was silently inferred, a chunked array's bad shape was a traceback."""
    path = tmp_path / "checkpoint_0"
    path.write_bytes(msgpack.packb({"params": {"w": leaf()}}))
    with pytest.raises(ConversionError, match=message):
        read_flax_msgpack(path)


def test_declared_lengths_are_bounded_by_the_file(tmp_path):
    """A map header claiming 2**31 entries in a 16-byte file is refused before reading on."""
    path = tmp_path / "checkpoint_0"
    path.write_bytes(b"\x81\xa6params\xdf\x7f\xff\xff\xff\x00\x00\x00")
    with pytest.raises(ConversionError, match="exceeds max_map_len"):
        read_tree(path)


# ----------------------------------------------------------------------------- 2. configs: memory cases
def test_config_sizes_are_checked_before_anything_is_allocated(tmp_path, fixture_checkpoint):
    """depth 10**5 took 5-7 GB, n_fft 10**9 6 GB, the authors' config.json with decoder depth 10**5
    5 GB and 117 s, before a traceback; now each is refused at once, the child staying near its
    idle ~300 MB."""
    from safetensors.torch import save_file

    depth = hostile.our_checkpoint(tmp_path / "depth.pt", model={"depth": 100000})
    n_fft = hostile.our_checkpoint(tmp_path / "n_fft.pt", frontend={"n_fft": 10**9, "win_length": 10**9})
    payload = hostile.demo_payload()
    payload["config"]["model"]["depth"] = 100000
    safetensors = tmp_path / "depth.safetensors"
    save_file(payload["state_dict"], safetensors, metadata={"format": "hear-mwmae", "format_version": "2",
                                                            "config": json.dumps(payload["config"])})
    run = hostile.release_run_dir(tmp_path / "run", fixture_checkpoint("mwmae_tiny"), {"decoder_depth": 100000})
    results = open_in_child(("load_model", depth), ("info", depth), ("load_model", n_fft), ("info", n_fft),
                            ("load_model", safetensors), ("convert", run))
    for result in results[:2] + results[4:5]:
        assert_refused(result, "invalid config: depth must be an integer in [1, 128], got 100000")
    for result in results[2:4]:
        assert_refused(result, "invalid config: n_fft must be an integer in [2, 8192], got 1000000000")
    assert_refused(results[5], "decoder_depth must be an integer in [0, 128], got 100000")


# ----------------------------------------------------------------------------- 2. configs: values
@pytest.mark.parametrize("field,value,message", [
    ("num_heads", 3.7, "num_heads must be an integer in [1, 64], got 3.7"),
    ("num_heads", 3.0, "num_heads must be an integer"),
    ("num_heads", 0, "num_heads must be an integer in [1, 64], got 0"),
    ("depth", True, "depth must be an integer in [1, 128], got True"),
    ("embed_dim", -192, "embed_dim must be an integer in [1, 8192], got -192"),
    ("mlp_ratio", math.inf, "mlp_ratio must be a finite number in (0, 16], got inf"),
    ("mlp_ratio", math.nan, "mlp_ratio must be a finite number"),
    ("patch_size", [0, 16], "patch_size[0] must be an integer in [1, 4096], got 0"),
    ("patch_size", [4, 16, 1], "patch_size must hold 2 integers, got 3"),
    ("img_size", "200x80", "img_size must be a list of integers"),
    ("img_size", [4096, 4096], "makes 262144 patches per chunk; at most 4096"),
    ("window_sizes", [10**9, 0, 0], "window_sizes[0] must be an integer in [0, 4096]"),
    ("window_sizes", [3, 0, 0], "window 3 does not divide the 250 tokens"),
    ("shifting_windows", 1, "shifting_windows must be true or false, got 1"),
    ("layer_norm_eps", 0.0, "layer_norm_eps must be a finite number in (0, 1]"),
    ("decoder_depth", 10**5, "decoder_depth must be an integer in [0, 128]"),
    ("family", 7, "family must be a string"),
    ("embed_dim", 6, "embed_dim must be a multiple of 4"),  # found by the fuzz test: a traceback at init
])
def test_model_config_values_are_typed_and_bounded(field, value, message):
    base = {"embed_dim": 192, "depth": 2, "num_heads": 3}
    with pytest.raises(ValueError) as info:
        ModelConfig(**{**base, field: value})
    assert message in str(info.value)


@pytest.mark.parametrize("kind,field,value,message", [
    (FrontendConfig, "n_fft", 10**9, "n_fft must be an integer in [2, 8192]"),
    (FrontendConfig, "hop_length", 1, "hop_length must be an integer in [16, 8192]"),
    (FrontendConfig, "sample_rate", 16000.0, "sample_rate must be an integer"),
    (FrontendConfig, "n_mels", 10**6, "n_mels must be an integer in [1, 200]"),
    (FrontendConfig, "log_eps", -1.0, "log_eps must be a finite number in (0, 1]"),
    (FrontendConfig, "f_max", math.inf, "f_max must be a finite number"),
    (FbankConfig, "std", math.nan, "std must be a finite number"),
    (FbankConfig, "remove_clip_mean", "yes", "remove_clip_mean must be true or false"),
    (FbankConfig, "preemphasis", 2.0, "preemphasis must be a finite number in [0, 1]"),
])
def test_frontend_config_values_are_typed_and_bounded(kind, field, value, message):
    with pytest.raises(ValueError) as info:
        kind(**{field: value})
    assert message in str(info.value)


@pytest.mark.parametrize("change,message", [
    (dict(labels="abc"), "head labels must be a list"),  # was split into ('a', 'b', 'c')
    (dict(num_classes=3.0), "head num_classes must be an integer in [1, 100000], got 3.0"),
    (dict(num_classes=10**6, labels=()), "head num_classes must be an integer in [1, 100000]"),
    (dict(dropout="0.1"), "head dropout must be a finite number"),  # was a TypeError
    (dict(multi_label="yes"), "head multi_label must be true or false"),
])
def test_head_config_values_are_typed_and_bounded(change, message):
    with pytest.raises(ValueError) as info:
        HeadConfig(**{"num_classes": 3, "labels": ("a", "b", "c"), **change})
    assert message in str(info.value)


def test_bounds_admit_every_real_model():
    """Every released size of both families, ViT-H (1280 wide, 32 blocks, 16 heads) and Audio-MAE's
    1024 x 128 input, with both of its decoders."""
    for size in ENCODER_SIZES:
        MWMAEConfig(ModelConfig(**dict(zip(("embed_dim", "depth", "num_heads"), ENCODER_SIZES[size]))))
        for decoder in ("swin", "global"):
            MWMAEConfig(audiomae_config(size, decoder=decoder), FbankConfig())
    huge = audiomae_config("huge")
    assert (huge.embed_dim, huge.depth, huge.num_heads, huge.img_size) == (1280, 32, 16, (1024, 128))


def test_config_dicts_from_files_are_checked():
    for data, message in [([1, 2], "got list"), ({"model": [], "frontend": {}}, "config model must be a mapping"),
                          ({"model": {}, "frontend": {"kind": ["logmel"]}}, "unknown frontend kind"),
                          ({"model": {"depth": "12"}, "frontend": {}}, "depth must be an integer")]:
        with pytest.raises(ValueError, match=message):
            MWMAEConfig.from_dict(data)


# ----------------------------------------------------------------------------- 2. weights against the config
def test_integer_state_dict_key_is_a_clean_error(tmp_path):
    path = hostile.our_checkpoint(tmp_path / "m.pt", edit=lambda p: p["state_dict"].__setitem__(0, torch.zeros(1)))
    with pytest.raises(CheckpointError, match="state-dict key 0 is not a parameter name"):
        load_checkpoint(path)


@pytest.mark.parametrize("model,message", [
    ({"depth": 3}, "depth is 3, but the weights hold 4 encoder blocks"),
    ({"embed_dim": 96}, "embed_dim is 96, but encoder.patch_embed.proj.weight is 192 wide"),
    ({"decoder_depth": 3}, "decoder_depth is 3, but the weights hold 2 decoder blocks"),
    ({"use_cls_token": True, "decoder_window_sizes": []}, "use_cls_token is True, but encoder.cls_token present: "),
])
def test_info_reports_a_config_that_disagrees_with_its_weights(tmp_path, caplog, model, message):
    """Before: `info` printed such a file as fine (exit 0); the mismatch surfaced only when building."""
    path = hostile.our_checkpoint(tmp_path / "m.pt", model=model)
    code, error = run_cli(caplog, "info", path)
    assert code == 2 and "the config disagrees with its weights" in error and message in error


def test_provenance_and_flags_must_be_plain_data(tmp_path):
    for edit, message in [(lambda p: p.__setitem__("encoder_only", "no"), "encoder_only must be true or false"),
                          (lambda p: p.__setitem__("provenance", {"x": torch.zeros(2)}), "provenance holds a Tensor"),
                          (lambda p: p.__setitem__("format_version", 2.5), "format_version is not an integer")]:
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(hostile.our_checkpoint(tmp_path / "m.pt", edit=edit))


# ----------------------------------------------------------------------------- 3. stored elements
def test_expanded_views_are_refused_before_they_are_materialised(tmp_path, fixture_checkpoint):
    """An Audio-MAE .pth of 40 kB whose tensors are stride-0 views of one float converted into a
    343 MB ViT-base (1.8 GB with 2000 blocks) and peaked at 620 MB; now refused, nothing made.
    Likewise a classifier claiming 10**9 classes without storing a weight (one generated class
    name each: tens of GB before), and stored arguments that are a 2**40-leaf list."""
    src = hostile.expanded_audiomae_pth(tmp_path / "exp.pth")
    assert src.stat().st_size < 100_000
    ft = fixture_checkpoint("audiomae_ft_tiny")
    classes = hostile.finetuned_with(ft, tmp_path / "classes.pth", head_rows=10**9)
    dataset = hostile.finetuned_with(ft, tmp_path / "dataset.pth", dataset=hostile.shared_list_bomb())
    results = open_in_child(("convert", src), ("load_model", src), ("load_checkpoint", src), ("convert", classes),
                            ("info", dataset))
    for result in results[:3]:
        assert_refused(result, "overlap in storage", "stride (0, 0, 0)")
    assert_refused(results[3], "head.weight has 1000000000 outputs; a head has 1 to 100000")
    assert results[4]["outcome"] == "ok", results[4]  # a valid model: the odd argument is not walked
    assert not (tmp_path / "exp.pth.converted.pt").exists()


def test_views_sharing_one_storage_are_refused(tmp_path):
    def share(payload):  # every block's qkv weight: one stored tensor seen through 4 names
        qkv = payload["state_dict"]["encoder.blocks.0.attn.qkv.weight"]
        for i in range(1, 4):
            payload["state_dict"][f"encoder.blocks.{i}.attn.qkv.weight"] = qkv

    with pytest.raises(CheckpointError, match="views of one stored block"):
        load_checkpoint(hostile.our_checkpoint(tmp_path / "m.pt", edit=share))


def test_overlapping_view_in_our_checkpoint_is_refused(tmp_path):
    def overlap(payload):
        w = payload["state_dict"]["encoder.blocks.0.mlp.fc1.weight"]  # (768, 192)
        payload["state_dict"]["encoder.blocks.0.mlp.fc1.weight"] = torch.zeros(1000).as_strided(w.shape, (1, 1))

    with pytest.raises(CheckpointError, match="overlap in storage"):
        load_checkpoint(hostile.our_checkpoint(tmp_path / "m.pt", edit=overlap))


def test_compressed_records_are_refused_before_they_inflate(tmp_path, caplog, tiny_checkpoint):
    """A training checkpoint of 100 MB of zeros deflates to 100 kB; `pretrain-export` inflated it."""
    state = {"encoder.w": torch.zeros(25_000_000)}
    save_train_state(tmp_path / "plain.pt", train_config={}, step=1, model=state, optimizer={}, world_size=1,
                     last_loss=0.5, data={}, seconds=1.0)
    run = tmp_path / "run"
    run.mkdir()
    bomb = hostile.deflated(tmp_path / "plain.pt", run / "checkpoint.pt")
    assert bomb.stat().st_size < 200_000
    code, message = run_cli(caplog, "pretrain-export", run, tmp_path / "o.pt")
    assert code == 2 and "compressed record(s)" in message
    ours = hostile.deflated(tiny_checkpoint, tmp_path / "ours.pt")
    with pytest.raises(CheckpointError, match="compressed record"):
        load_checkpoint(ours)


@pytest.mark.parametrize("name", ["mwmae_tiny", "audiomae_tiny", "audiomae_swin_tiny"])
def test_converted_file_is_at_most_twice_its_source(fixture_checkpoint, converted, tmp_path, name):
    src = fixture_checkpoint(name)
    size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file()) if src.is_dir() else src.stat().st_size
    c = converted(name)
    out = save_checkpoint(tmp_path / "c.pt", c.config, c.state_dict, provenance=c.provenance)
    assert out.stat().st_size <= 2 * size


# ----------------------------------------------------------------------------- 6. non-finite weights
def test_nan_weights_are_refused_at_load(tmp_path):
    key = "encoder.blocks.1.attn.proj.weight"
    path = hostile.our_checkpoint(tmp_path / "m.pt", edit=lambda p: p["state_dict"][key][3, 5].fill_(math.inf))
    with pytest.raises(CheckpointError, match=rf"not all finite \(NaN or inf\): \['{key}'\]"):
        load_checkpoint(path)


def test_nan_weights_are_refused_by_both_converters(tmp_path, fixture_checkpoint):
    run = tmp_path / "run"
    shutil.copytree(fixture_checkpoint("mwmae_tiny"), run)
    tree = msgpack.unpackb((run / "checkpoint_0").read_bytes(), strict_map_key=False,
                           ext_hook=lambda code, data: msgpack.ExtType(code, data))
    bias = get_leaf(tree, "params/decoder_pred/bias")
    shape, _, data = msgpack.unpackb(bias.data)
    values = np.frombuffer(data, np.float32).copy()
    values[0] = np.nan
    set_leaf(tree, "params/decoder_pred/bias", pack_array(values.reshape(shape)))
    (run / "checkpoint_0").write_bytes(msgpack.packb(tree))
    with pytest.raises(ConversionError, match="not all finite.*decoder.pred.bias"):
        convert_source(run)
    obj = load_pickle_safely(fixture_checkpoint("audiomae_tiny"))
    obj["model"]["blocks.0.norm1.weight"][0] = float("nan")
    torch.save(obj, tmp_path / "nan.pth")
    with pytest.raises(ConversionError, match=r"not all finite.*blocks.0.norm1.weight"):
        convert_source(tmp_path / "nan.pth")


# ----------------------------------------------------------------------------- 7. messages
class Evil:
    def __reduce__(self):
        return (eval, ("1 + 1",))


UNSAFE_ADVICE = ("weights_only", "add_safe_globals", "safe_globals", "allowlist", "will likely succeed")


def test_refusals_never_relay_advice_to_load_unsafely(tmp_path, caplog):
    evil = tmp_path / "evil.pt"
    torch.save({"format": "hear-mwmae", "state_dict": {"w": Evil()}}, evil)
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"format": "hear-mwmae-train", "model": Evil()}, run / "checkpoint.pt")
    for argv in (["info", evil], ["convert", evil, tmp_path / "o.pt"], ["pretrain-export", run, tmp_path / "o.pt"]):
        code, message = run_cli(caplog, *argv)
        assert code == 2 and "refused" in message and "it references eval" in message, message
        assert not any(advice in message for advice in UNSAFE_ADVICE), message


def test_a_foreign_file_is_described_by_at_most_8_bytes_of_magic(tmp_path, caplog):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    code, message = run_cli(caplog, "info", passwd)
    assert code == 2 and message.endswith("(its first bytes are 72 6f 6f 74 3a 78 3a 30)")
    assert "root" not in message.replace(str(passwd), "")


def test_pretrain_export_refuses_unstored_weights(tmp_path, caplog, tiny_checkpoint):
    state = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    state["encoder.norm.weight"] = torch.zeros(1).expand(192)
    save_train_state(tmp_path / "checkpoint.pt", train_config={}, step=1, model=state, optimizer={}, world_size=1,
                     last_loss=0.5, data={}, seconds=1.0)
    code, message = run_cli(caplog, "pretrain-export", tmp_path, tmp_path / "o.pt")
    assert code == 2 and "encoder.norm.weight" in message and "overlap in storage" in message
