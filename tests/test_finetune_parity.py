"""Golden parity with the Audio-MAE authors' fine-tuned classifier and one step of their fine-tuning
(`audiomae_ft_tiny`, vendored in tests/golden): logits and pooled features, the 2-D-masked
training forward, the BCE loss, every gradient, every parameter after one AdamW step over their
layer-decay groups, and the layer-decay tables of this model and of ViT-B with 527 classes.

Everything runs through the package's own pieces: the converter, `AudioClassifier`,
`finetune.model.param_groups` / `classification_loss`, `pretrain.loop.set_lr`, `get_logits`.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import golden
import hear_mwmae
from hear_mwmae.checkpoint import Checkpoint, build_classifier, build_encoder, save_checkpoint
from hear_mwmae.classifier import AudioClassifier
from hear_mwmae.config import HeadConfig, audiomae_config
from hear_mwmae.finetune.model import build_optimizer, classification_loss, param_groups
from hear_mwmae.finetune.recipes import FinetuneConfig
from hear_mwmae.model import set_fused_attention
from hear_mwmae.pretrain.loop import set_lr

from conftest import load_npy, max_abs

NAME = "audiomae_ft_tiny"
WAVES = ("wav0_chirp_noise_2s", "wav1_tones_dc_10p24s", "wav2_bursts_12p7s", "wav3_clicks_0p5s")
MODEL_TOL = 1e-5  # from the stored normalised fbank (un-normed fine-tuned tokens reach ~7e-6 with SDPA)
AUDIO_TOL = 3e-4  # from the waveform (the frontend's float32 FFT noise)
STEP = FinetuneConfig(weight_decay=5e-4, layer_decay=0.75, mask_t_prob=0.2, mask_f_prob=0.2, drop_path=0.0)
STEP_LR = 1e-3


def theirs(name: str) -> str:
    """Our parameter name -> the authors' (`models_vit.VisionTransformer`)."""
    return name.removeprefix("encoder.").removeprefix("classifier.")


@pytest.fixture(scope="module")
def converted_ft(fixture_checkpoint):
    from hear_mwmae.convert import convert_source

    return convert_source(fixture_checkpoint(NAME))


def classifier_from(c, fused: bool = True) -> AudioClassifier:
    ckpt = Checkpoint(c.config, c.state_dict, c.encoder_only, c.provenance)
    model = AudioClassifier(c.config.model, c.config.head, build_encoder(ckpt))
    model.classifier = build_classifier(ckpt)
    set_fused_attention(model, fused)
    return model.eval()


def fbank(wave: str) -> torch.Tensor:
    source = NAME if wave == "wav3_clicks_0p5s" else "audiomae_tiny"
    return torch.from_numpy(load_npy(source, f"{wave}.fbank_norm"))  # (1, 1024, 128)


def step_batch() -> tuple:
    x = torch.cat([fbank("wav0_chirp_noise_2s"), fbank("wav1_tones_dc_10p24s")])  # the fixture's reference batch
    noise = torch.cat([torch.from_numpy(load_npy(NAME, "ft_noise_t")), torch.from_numpy(load_npy(NAME, "ft_noise_f"))],
                      dim=1)  # time rows first, as the authors draw them
    targets = torch.from_numpy(load_npy(NAME, "ft_targets"))
    return x, targets, noise, torch.zeros(2, 2, 2), []


def test_conversion_keeps_the_head_with_generic_names(converted_ft, caplog):
    head = converted_ft.config.head
    assert head.num_classes == 7 and head.labels == tuple(f"class_{i}" for i in range(7)) and head.multi_label
    assert head.pooling == "mean" and not converted_ft.config.model.final_norm
    assert converted_ft.provenance["layout"] == "finetuned" and converted_ft.provenance["dropped_keys"] == []
    assert torch.equal(converted_ft.state_dict["classifier.head.weight"], torch.from_numpy(load_npy(NAME, "ckpt/head.weight")))


@pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "reference"])
def test_logits_and_pooled_from_the_authors_fbank(converted_ft, fused):
    model = classifier_from(converted_ft, fused)
    with torch.no_grad():
        for wave in ("wav0_chirp_noise_2s", "wav1_tones_dc_10p24s", "wav3_clicks_0p5s"):
            x = fbank(wave)
            assert max_abs(model(x), load_npy(NAME, f"{wave}.logits")) <= MODEL_TOL
            assert max_abs(model.pooled(x), load_npy(NAME, f"{wave}.pooled")) <= MODEL_TOL
        tokens = model.encoder.forward_tokens(fbank("wav0_chirp_noise_2s"))  # no final norm: the last block's tokens
        assert max_abs(tokens, load_npy(NAME, "wav0_chirp_noise_2s.encoder_tokens")) <= MODEL_TOL


def test_get_logits_from_the_waveform_matches_up_to_one_chunk(converted_ft, tmp_path):
    c = converted_ft
    path = save_checkpoint(tmp_path / "ft.pt", c.config, c.state_dict, provenance=c.provenance)
    model = hear_mwmae.load_model(str(path), device="cpu")
    assert model.labels == list(c.config.head.labels)
    for wave in ("wav0_chirp_noise_2s", "wav3_clicks_0p5s"):  # one chunk: the authors' output
        audio = torch.from_numpy(load_npy("audiomae_tiny", wave))[None]
        assert max_abs(hear_mwmae.get_logits(audio, model), load_npy(NAME, f"{wave}.logits")) <= AUDIO_TOL
    # 12.7 s: two chunks; the authors keep the first 10.24 s only, which is our first chunk
    audio = torch.from_numpy(load_npy("audiomae_tiny", "wav2_bursts_12p7s"))[None]
    per_chunk, centres = hear_mwmae.get_logits(audio, model, per_chunk=True)
    assert per_chunk.shape == (1, 2, 7) and centres.shape == (1, 2)
    assert max_abs(per_chunk[:, 0], load_npy(NAME, "wav2_bursts_12p7s.logits")) <= AUDIO_TOL
    frames = 1 + (audio.shape[1] - 400) // 160  # 1268: chunk 0 = frames 0..1023, chunk 1 = 1024..1267
    assert centres[0].tolist() == pytest.approx([12.5 + 511.5 * 10, 12.5 + (1024 + frames - 1) / 2 * 10])
    torch.testing.assert_close(hear_mwmae.get_logits(audio, model), per_chunk.mean(dim=1))


def test_masked_training_forward_loss_gradients_and_one_adamw_step(converted_ft):
    model = classifier_from(converted_ft).train()
    model.encoder.pos_embed.requires_grad_(False)  # frozen, as the authors fine-tune
    opt = build_optimizer(model, STEP)
    batch = step_batch()
    loss_fn = classification_loss(model, STEP, multi_label=True)

    from hear_mwmae.finetune.model import masking_keep
    from hear_mwmae.model import masking_2d

    ids_keep = masking_2d(batch[2], model.encoder.cfg.grid_size, masking_keep(model.encoder, STEP))[0]
    assert ids_keep.shape == (2, 51 * 6)  # int(64 * 0.8) time rows x int(8 * 0.8) bands
    with torch.no_grad():
        assert max_abs(model(batch[0], ids_keep), load_npy(NAME, "ft_logits_masked")) <= MODEL_TOL

    loss, _ = loss_fn(model, batch, torch.device("cpu"))
    ref_loss = float(load_npy(NAME, "ft_loss"))
    assert abs(loss.item() - ref_loss) / ref_loss <= 1e-5
    loss.backward()
    worst_grad = 0.0
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert {theirs(n) for n in trained} == {k.split("/", 1)[1] for k in golden.keys(NAME) if k.startswith("ft_grads/")}
    for name, p in trained.items():
        ref = load_npy(NAME, f"ft_grads/{theirs(name)}")
        scale = max(float(np.abs(ref).max()), 1e-6)
        worst_grad = max(worst_grad, max_abs(p.grad, ref) / scale)
    assert worst_grad <= 1e-4, worst_grad  # relative to each gradient's largest entry (float32 noise)

    # The optimiser on the authors' own gradients (Adam's first step divides by |g| + eps, so on
    # entries of |g| ~ eps float32 noise in g would be amplified: the step is checked on its own).
    for name, p in trained.items():
        p.grad = torch.from_numpy(load_npy(NAME, f"ft_grads/{theirs(name)}"))
    set_lr(opt, STEP_LR)
    opt.step()
    for name, p in model.named_parameters():
        assert max_abs(p.detach(), load_npy(NAME, f"ft_params_after_step/{theirs(name)}")) <= 1e-7, name


def _table(model: AudioClassifier, weight_decay: float, layer_decay: float) -> dict[str, dict[str, float]]:
    out = {}
    for group in param_groups(model, weight_decay, layer_decay):
        for name in group["names"]:
            out[theirs(name)] = {"lr_scale": group["lr_scale"], "weight_decay": group["weight_decay"]}
    return out


def test_layer_decay_table_of_the_fixture_and_of_vit_b(converted_ft):
    expected = golden.meta(NAME)["json"]["ft_param_groups.json"]["params"]
    model = classifier_from(converted_ft)
    model.encoder.pos_embed.requires_grad_(False)
    table = _table(model, 5e-4, 0.75)
    assert table.keys() == expected.keys()
    for name, entry in expected.items():
        assert table[name]["weight_decay"] == entry["weight_decay"], name
        assert table[name]["lr_scale"] == pytest.approx(entry["lr_scale"], rel=1e-12), name

    vit_b = golden.meta(NAME)["json"]["ft_param_groups_vit_b.json"]["params"]
    with torch.device("meta"):
        big = AudioClassifier(audiomae_config("base", final_norm=False), HeadConfig.generic(527))
    big.encoder.pos_embed.requires_grad_(False)
    table = _table(big, 5e-4, 0.75)
    assert table.keys() == vit_b.keys() and len(table) == len(vit_b)
    for name, entry in vit_b.items():
        assert table[name]["weight_decay"] == entry["weight_decay"], name
        assert table[name]["lr_scale"] == pytest.approx(entry["lr_scale"], rel=1e-12), name


def one_step(model: AudioClassifier, cfg: FinetuneConfig) -> AudioClassifier:
    model.train()
    model.encoder.pos_embed.requires_grad_(False)
    opt = build_optimizer(model, cfg)
    classification_loss(model, cfg, multi_label=True)(model, step_batch(), torch.device("cpu"))[0].backward()
    set_lr(opt, STEP_LR)
    opt.step()
    return model


def test_pitfalls_exceed_the_tolerances(converted_ft):
    """What the tests above catch: the CLS token pooled in, other patches masked, no layer decay,
    weight decay on the 1-D parameters."""
    model = classifier_from(converted_ft)
    with torch.no_grad():
        tokens = model.encoder.forward_tokens(fbank("wav0_chirp_noise_2s"))
        with_cls = model.classifier.head(model.classifier.fc_norm(tokens.mean(dim=1)))
        assert max_abs(with_cls, load_npy(NAME, "wav0_chirp_noise_2s.logits")) > 100 * MODEL_TOL
        x, _, noise, _, _ = step_batch()
        unstructured = torch.argsort(torch.rand(2, 512, generator=torch.Generator().manual_seed(0)), dim=1)[:, :306]
        assert max_abs(model(x, unstructured), load_npy(NAME, "ft_logits_masked")) > 100 * MODEL_TOL
    for wrong in (dataclasses.replace(STEP, layer_decay=1.0), dataclasses.replace(STEP, weight_decay=0.5)):
        stepped = one_step(classifier_from(converted_ft), wrong)
        worst = max(max_abs(p.detach(), load_npy(NAME, f"ft_params_after_step/{theirs(n)}"))
                    for n, p in stepped.named_parameters())
        assert worst > 1e-5
