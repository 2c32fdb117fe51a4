"""Conversion of Audio-MAE checkpoints: the authors' pre-training and fine-tuned `.pth` files, the
timm / Hub layout (files and an offline Hub cache), heads, arguments, strictness, provenance
and the refusal of pickled code."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import pytest
import torch

import hear_mwmae
from hear_mwmae.checkpoint import CheckpointError, load_checkpoint
from hear_mwmae.cli import main as cli_main
from hear_mwmae.config import audiomae_config
from hear_mwmae.convert import ConversionError, convert_source
from hear_mwmae.convert.audiomae import config_from_weights, convert_payload, load_pickle_safely, rename
from hear_mwmae.files import sha256_file
from hear_mwmae.model import MWMAE

from conftest import AUDIOMAE_FIXTURE_NAMES, REPO, load_npy, max_abs

WAVE = "wav0_chirp_noise_2s"
HEAR_TOL = 3e-4
ARGS = {"audiomae_tiny": ("mae_vit_fixture_tiny_patch16", 192, 2, 3, "mwmha", 2, 4),
        "audiomae_swin_tiny": ("mae_vit_fixture_swin_tiny_patch16", 128, 2, 2, "swin", 16, 16)}


def authors(fixture_checkpoint, name: str) -> dict:
    return load_pickle_safely(fixture_checkpoint(name))


def encoder_part(model: dict) -> OrderedDict:
    return OrderedDict((k, v) for k, v in model.items() if not k.startswith(("decoder", "mask_token")))


def embed(model, wave: str = WAVE) -> torch.Tensor:
    return hear_mwmae.get_timestamp_embeddings(torch.from_numpy(load_npy("audiomae_tiny", wave))[None], model)[0]


_TO_AUTHORS = (("decoder.blocks.", "decoder_blocks."), ("decoder.embed.", "decoder_embed."),
               ("decoder.norm.", "decoder_norm."), ("decoder.pred.", "decoder_pred."),
               ("decoder.pos_embed", "decoder_pos_embed"), ("decoder.mask_token", "mask_token"), ("encoder.", ""))


def authors_name(key: str) -> str:
    theirs = next(t + key[len(o):] for o, t in _TO_AUTHORS if key.startswith(o))
    assert rename(theirs) == key
    return theirs


def shapes_of(cfg) -> dict[str, torch.Tensor]:
    """An authors'-named state dict of meta tensors (shapes only) for `cfg`."""
    with torch.device("meta"):
        return {authors_name(k): v for k, v in MWMAE(cfg).state_dict().items()}


# ----------------------------------------------------------------------------- layout (a)
@pytest.mark.parametrize("name", AUDIOMAE_FIXTURE_NAMES)
def test_pretraining_checkpoint_config_keys_and_provenance(converted, fixture_checkpoint, name):
    c = converted(name)
    factory, dim, depth, heads, kind, ddepth, dheads = ARGS[name]
    m = c.config.model
    assert (m.family, m.embed_dim, m.depth, m.num_heads, m.decoder_kind, m.decoder_depth, m.decoder_num_heads) == \
        ("audiomae", dim, depth, heads, kind, ddepth, dheads)
    assert (m.img_size, m.patch_size, m.use_cls_token, m.gelu, m.layer_norm_eps, m.final_norm) == \
        ((1024, 128), (16, 16), True, "erf", 1e-6, True)
    assert (m.norm_pix_loss, m.mask_ratio, m.mask_2d, m.mask_t_prob, m.mask_f_prob) == (True, 0.8, False, 0.7, 0.3)
    assert m.shifting_windows is True and c.config.frontend.kind == "kaldi_fbank"
    source = authors(fixture_checkpoint, name)["model"]
    with torch.device("meta"):
        expected = MWMAE(m).state_dict()
    assert set(c.state_dict) == set(expected) and len(c.state_dict) == len(source)
    assert all(torch.equal(c.state_dict[rename(k)], v) for k, v in source.items())
    p = c.provenance
    assert (p["layout"], p["epoch"], p["model_name"]) == ("pretrain", 32, factory)
    assert p["source_file"] == "checkpoint-32.pth"
    assert p["source_sha256"] == sha256_file(fixture_checkpoint(name))
    assert "num_heads" in p["heads_from"]["num_heads"] and p["source_args"]["decoder_mode"] == (kind == "swin")
    json.dumps(p)  # provenance is plain JSON


def test_dict_holding_only_model(fixture_checkpoint, converted, tmp_path, caplog):
    only = tmp_path / "pretrained.pth"
    torch.save({"model": authors(fixture_checkpoint, "audiomae_tiny")["model"]}, only)
    with pytest.raises(ConversionError, match="--num-heads"):
        convert_source(only)
    assert cli_main(["convert", str(only), str(tmp_path / "x.pt")]) == 2
    assert "heads cannot be known" in caplog.text
    c = convert_source(only, num_heads=3, decoder_num_heads=4)
    full = converted("audiomae_tiny")
    assert c.config == full.config
    assert all(torch.equal(v, full.state_dict[k]) for k, v in c.state_dict.items())
    assert c.provenance["epoch"] is None and c.provenance["heads_from"]["num_heads"] == "num_heads override"
    out = tmp_path / "only.pt"
    assert cli_main(["convert", str(only), str(out), "--num-heads", "3", "--decoder-num-heads", "4"]) == 0
    assert load_checkpoint(out).config == full.config


def test_heads_from_factory_names_and_standard_sizes(caplog):
    swin_base = shapes_of(audiomae_config("base"))
    name = "mae_vit_base_patch16"
    cfg, src = config_from_weights(swin_base, {"model": name, "decoder_mode": 1}, name)
    assert (cfg.num_heads, cfg.decoder_num_heads, cfg.decoder_depth, cfg.decoder_kind) == (12, 16, 16, "swin")
    assert src["num_heads"] == "factory name 'mae_vit_base_patch16'"
    with pytest.raises(ConversionError, match="768-d, 12-block model, but the weights are 384-d"):
        config_from_weights(shapes_of(audiomae_config("small")), {}, "mae_vit_base_patch16")
    with pytest.raises(ConversionError, match="stored arguments say num_heads=8"):
        config_from_weights(swin_base, {"num_heads": 8}, "vit_base_patch16")
    # no args at all (the released pretrained.pth): the standard ViT of that width and depth
    cfg, src = config_from_weights(swin_base, {}, None, bare=True)
    assert cfg.num_heads == 12 and "standard ViT" in src["num_heads"] and "assuming 12 heads" in caplog.text
    glob = shapes_of(audiomae_config("large", decoder="global"))
    cfg, _ = config_from_weights(glob, {"decoder_mode": 0}, "mae_vit_large_patch16")
    assert (cfg.num_heads, cfg.depth, cfg.decoder_kind, cfg.decoder_num_heads, cfg.decoder_depth) == \
        (16, 24, "mwmha", 16, 8)
    with pytest.raises(ConversionError, match="cannot be known"):
        config_from_weights(swin_base, {}, "my_custom_vit")
    with pytest.raises(ConversionError, match="does not divide"):
        config_from_weights(swin_base, {}, None, num_heads=7)


@pytest.mark.parametrize("args,message", [
    ({"use_custom_patch": True}, "use_custom_patch"),
    ({"audio_exp": False}, "image model"),
    ({"decoder_mode": 2}, "decoder_mode 2"),
    ({"decoder_mode": 0}, "decoder_mode=0 but the decoder blocks are Swin"),
])
def test_unsupported_arguments_are_refused(fixture_checkpoint, args, message):
    state = authors(fixture_checkpoint, "audiomae_swin_tiny")["model"]
    with pytest.raises(ConversionError, match=message):
        config_from_weights(state, {"num_heads": 2, **args}, None)


def test_stored_training_arguments(fixture_checkpoint):
    state = authors(fixture_checkpoint, "audiomae_swin_tiny")["model"]
    cfg, _ = config_from_weights(state, {"num_heads": 2, "no_shift": True, "norm_pix_loss": "", "mask_2d": True,
                                         "mask_t_prob": 0.5, "mask_f_prob": 0.25, "mask_ratio": 0.75}, None)
    assert (cfg.shifting_windows, cfg.norm_pix_loss, cfg.mask_2d, cfg.mask_2d_keep, cfg.mask_ratio) == \
        (False, False, True, (32, 6), 0.75)
    cfg, _ = config_from_weights(state, {"num_heads": 2, "norm_pix_loss": "False"}, None)
    assert cfg.norm_pix_loss is True  # the authors' `type=bool` option: any non-empty string is True


@pytest.mark.parametrize("change,message", [
    (lambda m: m.pop("decoder_norm.weight"), "missing from the checkpoint"),
    (lambda m: m.__setitem__("blocks.0.attn.extra", torch.zeros(3)), "not part of an Audio-MAE"),
    (lambda m: m.__setitem__("decoder_pred.weight", torch.zeros(255, 128)), r"decoder.pred.weight: shape \(255, 128\)"),
    (lambda m: m.__setitem__("blocks.0.norm1.weight", torch.zeros(192, dtype=torch.long)), "not floating point"),
    (lambda m: m.pop("cls_token"), "no cls_token"),
])
def test_weights_that_do_not_fit_are_refused(fixture_checkpoint, change, message):
    obj = authors(fixture_checkpoint, "audiomae_tiny")
    obj["model"] = OrderedDict(obj["model"])
    change(obj["model"])
    with pytest.raises(ConversionError, match=message):
        convert_payload(obj, fixture_checkpoint("audiomae_tiny"))


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickled_code_is_refused_and_never_run(fixture_checkpoint, tmp_path):
    marker = tmp_path / "ran"
    obj = authors(fixture_checkpoint, "audiomae_tiny")
    obj["args"] = RunsCode(marker)
    evil = tmp_path / "checkpoint-1.pth"
    torch.save(obj, evil)
    with pytest.raises(ConversionError, match="refused"):
        convert_source(evil)
    with pytest.raises(CheckpointError, match="refused"):
        hear_mwmae.load_model(str(evil))
    assert cli_main(["convert", str(evil), str(tmp_path / "out.pt")]) == 2
    other = tmp_path / "other.pth"  # a harmless class, but not the one allowed
    torch.save({**authors(fixture_checkpoint, "audiomae_tiny"), "args": PurePosixPath("/data")}, other)
    with pytest.raises(ConversionError, match="refused"):
        convert_source(other)
    assert not marker.exists()


def test_unreadable_and_foreign_files(fixture_checkpoint, tmp_path, tiny_checkpoint):
    bad = tmp_path / "checkpoint-2.pth"
    bad.write_bytes(fixture_checkpoint("audiomae_tiny").read_bytes()[:5000])
    with pytest.raises(ConversionError, match="truncated or corrupt"):
        convert_source(bad)
    with pytest.raises(ConversionError, match="already a hear-mwmae checkpoint"):
        convert_source(tiny_checkpoint)
    torch.save({"weight": torch.zeros(2)}, tmp_path / "w.pth")
    with pytest.raises(ConversionError, match="not an Audio-MAE checkpoint"):
        convert_source(tmp_path / "w.pth")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConversionError, match="inside its timm / Hub directory"):
        convert_source(tmp_path / "model.safetensors")


# ----------------------------------------------------------------------------- layout (b)
def test_finetuned_checkpoint_uses_the_last_blocks_tokens(fixture_checkpoint, converted, tmp_path):
    src = authors(fixture_checkpoint, "audiomae_tiny")
    model = encoder_part(src["model"])
    del model["norm.weight"], model["norm.bias"]
    torch.manual_seed(0)
    model.update({"fc_norm.weight": torch.rand(192), "fc_norm.bias": torch.rand(192),
                  "head.weight": torch.rand(527, 192), "head.bias": torch.rand(527)})
    # main_finetune_as's options: audio_exp is never set there, mask_2d / mask_t_prob mean fine-tuning masks
    args = argparse.Namespace(model="vit_fixture_tiny_patch16", num_heads=3, nb_classes=527, global_pool=True,
                              audio_exp=False, mask_2d=True, mask_t_prob=0.2, mask_f_prob=0.2)
    path = tmp_path / "checkpoint-59.pth"
    torch.save({"model": model, "optimizer": {}, "epoch": 59, "scaler": {}, "args": args}, path)
    c = convert_source(path)
    assert c.encoder_only and c.config.model.final_norm is False
    assert c.config.model.mask_2d is False and c.config.model.mask_t_prob == 0.7  # the preset's, not fine-tuning's
    assert c.provenance["layout"] == "finetuned"
    assert c.provenance["dropped_keys"] == []  # the classifier is kept, named by AudioSet's 527 classes
    head = c.config.head
    assert head.num_classes == 527 and head.multi_label and head.pooling == "mean" and head.label_source == "audioset"
    assert head.labels[0] == "Speech" and head.label_ids[0] == "/m/09x0r"
    for ours, theirs in (("classifier.head.weight", "head.weight"), ("classifier.fc_norm.bias", "fc_norm.bias")):
        assert torch.equal(c.state_dict[ours], model[theirs])
    pre = MWMAE(converted("audiomae_tiny").config.model).eval()
    pre.load_state_dict(converted("audiomae_tiny").state_dict)
    pre.encoder.norm = torch.nn.Identity()
    ft = hear_mwmae.load_model(str(path), device="cpu")
    x = torch.from_numpy(load_npy("audiomae_tiny", f"{WAVE}.fbank_norm"))
    with torch.no_grad():
        # not bit-equal: fp32 CPU runtimes fuse bias / GELU into oneDNN linears (hear_mwmae/cpu_fused.py)
        torch.testing.assert_close(ft.encoder.forward_features(x), pre.encoder.forward_features(x), rtol=0, atol=1e-5)
    assert ft.timestamp_embedding_size == 1536 and embed(ft).shape == (1, 13, 1536)


# ----------------------------------------------------------------------------- layout (c)
def timm_dir(root: Path, model: dict, weights: str, config: dict | None = None) -> Path:
    root.mkdir(parents=True)
    if weights == "model.safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.items()}, root / weights)
    else:
        torch.save(OrderedDict(model), root / weights)
    (root / "config.json").write_text(json.dumps(config or {
        "architecture": "vit_tiny_patch16_224", "num_classes": 0, "global_pool": "token",
        "model_args": {"embed_dim": 192, "depth": 2, "num_heads": 3, "img_size": [1024, 128], "in_chans": 1},
        "pretrained_cfg": {"input_size": [1, 1024, 128], "fixed_input_size": True}}))
    return root


@pytest.fixture(scope="module")
def pth_model(fixture_checkpoint):
    return hear_mwmae.load_model(str(fixture_checkpoint("audiomae_tiny")), device="cpu")


@pytest.mark.parametrize("weights", ["pytorch_model.bin", "model.safetensors"])
def test_timm_layout_loads_to_the_same_embeddings(fixture_checkpoint, pth_model, tmp_path, weights):
    folder = timm_dir(tmp_path / "repo", encoder_part(authors(fixture_checkpoint, "audiomae_tiny")["model"]), weights)
    c = convert_source(folder)
    assert c.encoder_only and c.provenance["layout"] == "timm" and c.provenance["source_file"] == weights
    assert c.config.model.final_norm and c.config.model.num_heads == 3
    assert convert_source(folder / weights).state_dict.keys() == c.state_dict.keys()
    model = hear_mwmae.load_model(str(folder), device="cpu")
    emb = embed(model)
    assert torch.equal(emb, embed(pth_model))
    assert max_abs(emb, load_npy("audiomae_tiny", f"{WAVE}.hear_timestamp_embeddings")) <= HEAR_TOL


def test_timm_finetuned_layout_has_no_final_norm(fixture_checkpoint, tmp_path):
    model = encoder_part(authors(fixture_checkpoint, "audiomae_tiny")["model"])
    del model["norm.weight"], model["norm.bias"]
    model.update({"fc_norm.weight": torch.ones(192), "fc_norm.bias": torch.zeros(192),
                  "head.weight": torch.zeros(527, 192), "head.bias": torch.zeros(527)})
    cfg = {"architecture": "vit_base_patch16_224", "num_classes": 527, "global_pool": "avg",
           "model_args": {"embed_dim": 192, "depth": 2, "num_heads": 3},
           "pretrained_cfg": {"input_size": [1, 1024, 128]}}
    c = convert_source(timm_dir(tmp_path / "ft", model, "model.safetensors", cfg))
    assert c.config.model.final_norm is False and c.provenance["dropped_keys"] == []
    assert c.config.head.num_classes == 527 and c.config.head.labels[137] == "Music"
    assert torch.equal(c.state_dict["classifier.fc_norm.weight"], model["fc_norm.weight"])
    cfg["global_pool"] = "token"  # timm's CLS classifier (norm, no fc_norm): not the authors' model
    with pytest.raises(ConversionError, match="global_pool 'token'"):
        convert_source(timm_dir(tmp_path / "token", model, "model.safetensors", cfg))


@pytest.mark.parametrize("change,message", [
    (lambda c: c["model_args"].update(init_values=1e-5), "model_args .'init_values'. are not supported"),
    (lambda c: c["pretrained_cfg"].update(input_size=[1, 998, 128]), "input_size .1, 998, 128. but the weights"),
    (lambda c: c["pretrained_cfg"].update(input_size=[3, 224, 224]), "1-channel 128-band"),
    (lambda c: c["model_args"].update(depth=12), "has depth 12, the weights 2"),
    (lambda c: (c["model_args"].pop("num_heads"), c.update(architecture="my_vit")), "cannot be known"),
])
def test_timm_config_problems(fixture_checkpoint, tmp_path, change, message):
    cfg = {"architecture": "vit_tiny_patch16_224", "model_args": {"embed_dim": 192, "depth": 2, "num_heads": 3},
           "pretrained_cfg": {"input_size": [1, 1024, 128]}}
    change(cfg)
    folder = timm_dir(tmp_path / "r", encoder_part(authors(fixture_checkpoint, "audiomae_tiny")["model"]),
                      "model.safetensors", cfg)
    with pytest.raises(ConversionError, match=message):
        convert_source(folder)


HUB_SCRIPT = r"""
import json, sys, torch, numpy as np
import hear_mwmae
from hear_mwmae.sources import load_checkpoint
from hear_mwmae.cli import main
wave = torch.from_numpy(np.load(sys.argv[1]))[None]
commit, digest, out = sys.argv[2], sys.argv[3], sys.argv[4]
res = {}
for ref in ("hf://someone/vit_tiny.audiomae", f"hf://someone/vit_tiny.audiomae@{commit}"):
    model = hear_mwmae.load_model(ref, device="cpu", sha256=digest)
    res[ref] = hear_mwmae.get_timestamp_embeddings(wave, model)[0].tolist()
for ref, kw in (("hf://someone/vit_tiny.audiomae@v2", {}), ("hf://someone/other", {}),
                ("hf://someone/vit_tiny.audiomae", {"sha256": "0" * 64})):
    try:
        load_checkpoint(ref, **kw)
        res[ref + str(kw)] = "loaded"
    except Exception as exc:
        res[ref + str(kw)] = type(exc).__name__ + ": " + str(exc)[:200]
res["cli"] = main(["convert", "hf://someone/vit_tiny.audiomae", out])
print(json.dumps(res))
"""


def test_hub_repo_reference_resolves_offline_from_a_hand_built_cache(fixture_checkpoint, tmp_path):
    pytest.importorskip("huggingface_hub")
    commit = "89abcdef0123456789abcdef0123456789abcdef"
    repo = tmp_path / "hf" / "hub" / "models--someone--vit_tiny.audiomae"
    snap = timm_dir(repo / "snapshots" / commit, encoder_part(authors(fixture_checkpoint, "audiomae_tiny")["model"]),
                    "model.safetensors")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    wave = tmp_path / "wave.npy"
    import numpy as np

    np.save(wave, load_npy("audiomae_tiny", WAVE))
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", HUB_SCRIPT, str(wave), commit, sha256_file(snap / "model.safetensors"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = load_npy("audiomae_tiny", f"{WAVE}.hear_timestamp_embeddings")
    for key in ("hf://someone/vit_tiny.audiomae", f"hf://someone/vit_tiny.audiomae@{commit}"):
        assert max_abs(torch.tensor(res[key]), ref) <= HEAR_TOL
    assert res["hf://someone/vit_tiny.audiomae@v2{}"].startswith("FileNotFoundError")
    assert res["hf://someone/other{}"].startswith("FileNotFoundError")
    assert "does not match the pinned" in res["hf://someone/vit_tiny.audiomae{'sha256': '" + "0" * 64 + "'}"]
    assert res["cli"] == 0
    ckpt = load_checkpoint(tmp_path / "out.pt")
    assert ckpt.provenance["source_ref"] == "hf://someone/vit_tiny.audiomae" and ckpt.encoder_only
