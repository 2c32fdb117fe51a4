"""Golden parity against the Audio-MAE authors' code (vendored in tests/golden), both fixtures.

`audiomae_tiny` has a global (mode 0) decoder and 2-D masking references; `audiomae_swin_tiny`
the released shifted-window (mode 1) decoder. Every pitfall of the spec's section 12 is shown to
exceed the tolerance that guards it (the `test_pitfall_*` tests), so these tolerances would
catch it.
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np
import pytest
import torch

import hear_mwmae
from hear_mwmae.cli import main as cli_main
from hear_mwmae.config import AUDIOSET_STD, FbankConfig
from hear_mwmae.frontend import KaldiFbankFrontend, kaldi_mel_banks
from hear_mwmae.model import MWMAE, set_fused_attention, sincos_2d, sincos_audiomae
from hear_mwmae.swin import SwinBlock, log_relative_coordinates, shift_mask, window_tokens

from conftest import AUDIOMAE_FIXTURE_NAMES, load_npy, max_abs

FBANK_TOL = 1e-3  # normalised units; float32 FFT noise reaches ~3.3e-4 on low-energy bins
BANK_TOL = 2e-5  # fixture banks vs torchaudio's formula in float32: ~1.1e-5 (1 ulp of a SIMD log)
MODEL_TOL = 1e-5
HEAR_TOL = 3e-4
HEAR_WAVES = {"audiomae_tiny": ["wav0_chirp_noise_2s", "wav2_bursts_12p7s", "wav3_clicks_0p5s"],
              "audiomae_swin_tiny": ["wav0_chirp_noise_2s"]}
FBANK_WAVES = ["wav0_chirp_noise_2s", "wav3_clicks_0p5s"]
WAVE = "wav0_chirp_noise_2s"
PATHS = pytest.mark.parametrize("fused", [True, False], ids=["sdpa", "reference"])


def load_model_from(converted, name: str, **changes) -> MWMAE:
    c = converted(name)
    model = MWMAE(dataclasses.replace(c.config.model, **changes))
    model.load_state_dict(c.state_dict, strict=True)
    return model.eval()


@pytest.fixture(scope="module")
def models(converted):
    return {name: load_model_from(converted, name) for name in AUDIOMAE_FIXTURE_NAMES}


def audio(wave: str) -> torch.Tensor:
    return torch.from_numpy(load_npy("audiomae_tiny", wave))[None]


def fbank_norm(wave: str) -> torch.Tensor:
    """The authors' model input (1, 1024, 128)."""
    return torch.from_numpy(load_npy("audiomae_tiny", f"{wave}.fbank_norm"))


def decoder_input() -> torch.Tensor:
    return torch.cat([fbank_norm(WAVE), fbank_norm("wav1_tones_dc_10p24s")])  # (2, 1024, 128)


def ids(name: str, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    return (torch.from_numpy(load_npy(name, f"{kind}_ids_keep")).long(),
            torch.from_numpy(load_npy(name, f"{kind}_ids_restore")).long())


@torch.no_grad()
def encoder_tokens(model: MWMAE, x: torch.Tensor) -> torch.Tensor:
    """All 513 tokens after the final norm, CLS first (the authors' forward_encoder with ratio 0)."""
    return model.encoder.forward_masked(x, torch.arange(model.cfg.num_patches)[None].expand(x.shape[0], -1))


@torch.no_grad()
def padded_fbank(frontend: KaldiFbankFrontend, wav: torch.Tensor) -> torch.Tensor:
    """Our model input for a clip of <= 1024 frames: normalised, zero rows (log domain) to 1024."""
    return frontend.pad_frames(frontend(wav), 1024)


# ----------------------------------------------------------------------------- frontend
def test_filterbank_matches_torchaudio_float32():
    banks = kaldi_mel_banks(FbankConfig())  # (257, 128)
    ref = load_npy("audiomae_tiny", "fbank_mel_banks")  # (128, 257)
    assert banks.dtype == torch.float32 and tuple(banks.shape) == (257, 128)
    assert max_abs(banks.t(), ref) <= BANK_TOL
    assert float(banks[-1].abs().max()) == 0.0  # the Nyquist bin has no weight
    window = KaldiFbankFrontend().window
    torch.testing.assert_close(window, torch.hann_window(400, periodic=False), rtol=0, atol=0)


@pytest.mark.parametrize("wave", FBANK_WAVES)
def test_fbank_from_audio(wave):
    frontend = KaldiFbankFrontend()
    raw = frontend.log_mel(audio(wave))
    ref_raw = load_npy("audiomae_tiny", f"{wave}.fbank_raw")
    assert raw.shape[1:] == ref_raw.shape == (1 + (audio(wave).shape[1] - 400) // 160, 128)
    assert max_abs(raw, ref_raw[None]) / (2 * AUDIOSET_STD) <= FBANK_TOL
    assert max_abs(padded_fbank(frontend, audio(wave)), fbank_norm(wave)) <= FBANK_TOL


def test_clip_mean_is_removed_before_framing():
    """Removing the clip mean changes only float noise (the per-frame DC removal cancels a
    constant), so no tolerance can catch its absence: assert the operation itself."""
    wav = audio(WAVE) + 0.25
    ours = KaldiFbankFrontend().log_mel(wav)
    without = KaldiFbankFrontend(FbankConfig(remove_clip_mean=False))
    assert torch.equal(ours, without.log_mel(wav - wav.mean(dim=1, keepdim=True)))
    assert not torch.equal(ours, without.log_mel(wav))


class NoDcRemoval(KaldiFbankFrontend):
    """Pitfall: per-frame DC removal skipped (the rest of the Kaldi recipe unchanged)."""

    def _frames_to_log_fbank(self, samples):
        cfg = self.cfg
        frames = samples.unfold(-1, cfg.win_length, cfg.hop_length)
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - cfg.preemphasis * previous) * self.window
        power = torch.fft.rfft(frames, n=cfg.n_fft).abs().pow(2.0)
        return torch.matmul(power, self.fbank).clamp_min(cfg.log_eps).log()


def _with_window(window: torch.Tensor) -> KaldiFbankFrontend:
    frontend = KaldiFbankFrontend()
    frontend.window = window
    return frontend


def _from_raw(raw: torch.Tensor, pad_value: float | None = None, normalise=None) -> torch.Tensor:
    """Pad raw log fbank (1, T, 128) to 1024 frames with `pad_value` (raw domain), then normalise."""
    normalise = normalise or KaldiFbankFrontend().normalize
    if pad_value is not None:
        raw = torch.cat([raw, torch.full((1, 1024 - raw.shape[1], 128), pad_value)], dim=1)
    return normalise(raw)


def _snip_edges_false(wav: torch.Tensor) -> torch.Tensor:
    """Kaldi frames with snip_edges=False: (N + 80) // 160 frames over the clip padded as torchaudio
    does (120 samples mirrored at the start, the reversed clip after the end)."""
    frames = (wav.shape[1] + 80) // 160
    padded = torch.cat([wav[:, :120].flip(1), wav, wav.flip(1)], dim=1)[:, :(frames - 1) * 160 + 400]
    frontend = KaldiFbankFrontend()
    return frontend.pad_frames(frontend(padded), 1024)


FRONTEND_PITFALLS = {
    "periodic_hann": lambda w: padded_fbank(_with_window(torch.hann_window(400, periodic=True)), w),
    "povey_window": lambda w: padded_fbank(_with_window(torch.hann_window(400, periodic=False).pow(0.85)), w),
    "no_preemphasis": lambda w: padded_fbank(KaldiFbankFrontend(FbankConfig(preemphasis=0.0)), w),
    "no_per_frame_dc_removal": lambda w: padded_fbank(NoDcRemoval(), w),
    "fft_400_not_512": lambda w: padded_fbank(KaldiFbankFrontend(FbankConfig(n_fft=400)), w),
    "low_freq_0": lambda w: padded_fbank(KaldiFbankFrontend(FbankConfig(f_min=0.0)), w),
    "snip_edges_false": _snip_edges_false,
    "one_frame_fewer": lambda w: _from_raw(KaldiFbankFrontend().log_mel(w)[:, :-1], 0.0),
    "normalise_by_std": lambda w: padded_fbank(KaldiFbankFrontend(FbankConfig(std_scale=1.0)), w),
    "normalise_by_std_squared": lambda w: padded_fbank(KaldiFbankFrontend(FbankConfig(std_scale=AUDIOSET_STD)), w),
    "per_clip_mean_std": lambda w: _from_raw(KaldiFbankFrontend().log_mel(w), 0.0,
                                             lambda x: (x - x.mean()) / (2 * x.std())),
    "pad_with_log_eps_raw": lambda w: _from_raw(KaldiFbankFrontend().log_mel(w), float(np.log(1.1920929e-07))),
    "pad_with_zero_after_normalising": lambda w: torch.cat(
        [KaldiFbankFrontend()(w), torch.zeros(1, 1024 - KaldiFbankFrontend().num_frames(w.shape[1]), 128)], dim=1),
}


@pytest.mark.parametrize("pitfall", sorted(FRONTEND_PITFALLS))
def test_pitfall_frontend_exceeds_the_fbank_tolerance(pitfall):
    with torch.no_grad():
        wrong = FRONTEND_PITFALLS[pitfall](audio(WAVE))
    assert wrong.shape == (1, 1024, 128)
    assert max_abs(wrong, fbank_norm(WAVE)) > FBANK_TOL, pitfall


# ----------------------------------------------------------------------------- encoder
@pytest.mark.parametrize("name", AUDIOMAE_FIXTURE_NAMES)
@PATHS
def test_encoder_tokens_from_stored_fbank(models, name, fused):
    model = models[name]
    set_fused_attention(model, fused)
    tokens = encoder_tokens(model, fbank_norm(WAVE))
    with torch.no_grad():  # the HEAR features are the same tokens without CLS, (64, 8 * D)
        feats = model.encoder.forward_features(fbank_norm(WAVE))
    set_fused_attention(model, True)
    assert max_abs(tokens, load_npy(name, f"{WAVE}.encoder_tokens")) <= MODEL_TOL
    assert torch.allclose(feats, tokens[:, 1:].reshape(1, 64, -1), atol=1e-6)


def _frequency_major(model: MWMAE) -> MWMAE:
    enc = model.encoder

    def embed(x):
        x = enc.patch_embed.proj(x.unsqueeze(1))
        return x.transpose(2, 3).flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:]

    enc.embed_patches = embed
    return model


def _set_pos_embed(model: MWMAE, value: torch.Tensor) -> MWMAE:
    with torch.no_grad():
        model.encoder.pos_embed[0, 1:] = value
    return model


MODEL_PITFALLS = {
    "frequency_major_patch_tokens": lambda cv: _frequency_major(load_model_from(cv, "audiomae_tiny")),
    "pos_embed_recomputed_not_loaded": lambda cv: _set_pos_embed(load_model_from(cv, "audiomae_tiny"),
                                                                 sincos_audiomae(192, (64, 8))),
    "natural_tf_sincos_layout": lambda cv: _set_pos_embed(
        m := load_model_from(cv, "audiomae_tiny"),
        m.encoder.pos_embed[0, 1:] - sincos_audiomae(192, (64, 8)) + sincos_2d(192, (64, 8))),
    "gelu_tanh": lambda cv: load_model_from(cv, "audiomae_tiny", gelu="tanh"),
    "layernorm_eps_1e-5": lambda cv: load_model_from(cv, "audiomae_tiny", layer_norm_eps=1e-5),
    "layernorm_eps_1e-12": lambda cv: load_model_from(cv, "audiomae_tiny", layer_norm_eps=1e-12),
}


@pytest.mark.parametrize("pitfall", sorted(MODEL_PITFALLS))
def test_pitfall_model_exceeds_the_token_tolerance(converted, pitfall):
    wrong = MODEL_PITFALLS[pitfall](converted)
    assert max_abs(encoder_tokens(wrong, fbank_norm(WAVE)), load_npy("audiomae_tiny", f"{WAVE}.encoder_tokens")) \
        > MODEL_TOL, pitfall


def test_authors_position_layout_formula():
    """Fresh-init layout (the stored embeddings are what conversion uses): the authors lay the
    2-D sin-cos on the swapped (8, 64) grid in raster order."""
    d, k = 16, np.arange(512)
    omega = 1.0 / 10000 ** (np.arange(d // 4) / (d / 4))

    def emb(pos):
        out = pos[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    grid_w, grid_h = np.meshgrid(np.arange(64), np.arange(8))  # w (64) goes first, as theirs
    ref = np.concatenate([emb(grid_w.reshape(-1)), emb(grid_h.reshape(-1))], axis=1)
    assert max_abs(sincos_audiomae(d, (64, 8)), ref) < 1e-6
    assert max_abs(sincos_2d(d, (64, 8)), ref) > 0.5  # the "natural" (t, f) layout is another one
    assert np.array_equal(ref[k], ref)  # token k = 8 t + f


# ----------------------------------------------------------------------------- decoder
def decoder_errors(model: MWMAE, name: str, kind: str) -> tuple[float, float, float]:
    """(latent, pred at every 4th patch, relative loss) errors against the authors' outputs."""
    x = decoder_input()
    keep, restore = ids(name, kind)
    with torch.no_grad():
        latent = model.encoder.forward_masked(x, keep)
        out = model(x, keep, restore)
    ref_loss = float(load_npy(name, f"{kind}_loss"))
    assert max_abs(out.mask, load_npy(name, f"{kind}_mask")) == 0.0
    return (max_abs(latent, load_npy(name, f"{kind}_latent")),
            max_abs(out.pred[:, ::4], load_npy(name, f"{kind}_pred_every4")),
            abs(out.loss.item() - ref_loss) / abs(ref_loss))


@pytest.mark.parametrize("name", AUDIOMAE_FIXTURE_NAMES)
def test_random_masking_from_stored_noise(models, name):
    noise = torch.from_numpy(load_npy(name, "decoder_mask_noise"))
    keep, restore, mask = models[name].random_masking(2, noise=noise)
    ref_keep, ref_restore = ids(name, "decoder")
    assert models[name].cfg.len_keep == 102
    assert torch.equal(keep, ref_keep) and torch.equal(restore, ref_restore)
    assert max_abs(mask, load_npy(name, "decoder_mask")) == 0.0


def test_2d_masking_from_stored_noise(converted):
    model = load_model_from(converted, "audiomae_tiny", mask_2d=True)
    noise = torch.cat([torch.from_numpy(load_npy("audiomae_tiny", "decoder2d_noise_t")),
                       torch.from_numpy(load_npy("audiomae_tiny", "decoder2d_noise_f"))], dim=1)
    keep, restore, mask = model.random_masking(2, noise=noise)
    ref_keep, ref_restore = ids("audiomae_tiny", "decoder2d")
    assert torch.equal(keep, ref_keep) and torch.equal(restore, ref_restore)
    assert max_abs(mask, load_npy("audiomae_tiny", "decoder2d_mask")) == 0.0


@pytest.mark.parametrize("name,kind", [("audiomae_tiny", "decoder"), ("audiomae_tiny", "decoder2d"),
                                       ("audiomae_swin_tiny", "decoder")])
@PATHS
def test_decoder_latent_prediction_and_loss(models, name, kind, fused):
    model = models[name]
    set_fused_attention(model, fused)
    latent, pred, loss = decoder_errors(model, name, kind)
    set_fused_attention(model, True)
    assert latent <= MODEL_TOL and pred <= MODEL_TOL and loss <= 1e-5, (latent, pred, loss)


def _odd_blocks(model: MWMAE):
    return [b.attn for i, b in enumerate(model.decoder.blocks) if i % 2 == 1]


def _set_tokens(attn, tokens: torch.Tensor) -> None:
    attn.tokens = tokens.flatten()
    attn.untokens = torch.argsort(attn.tokens)


def _swin(converted, **changes) -> MWMAE:
    model = load_model_from(converted, "audiomae_swin_tiny", **changes)
    set_fused_attention(model, False)  # the explicit path, so that the variants below apply to it
    return model


def _shift_2_2(model):
    for attn in _odd_blocks(model):
        _set_tokens(attn, window_tokens((64, 8), (4, 4), (2, 2)))
        attn.attn_mask = shift_mask((64, 8), (4, 4), (2, 2))
    return model


def _roll_plus_2(model):
    for attn in _odd_blocks(model):
        _set_tokens(attn, window_tokens((64, 8), (4, 4), (-2, 0)))  # mask left as for -2
    return model


def _no_penalty(model):
    for attn in _odd_blocks(model):
        attn.attn_mask = None
    return model


def _scaled_dot_product(model):
    for blk in model.decoder.blocks:
        attn = blk.attn

        def probs(self, q, k):
            return ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + self.logit_mask(q.dtype)[None]).softmax(-1)

        attn._probs = types.MethodType(probs, attn)
    return model


def _pre_norm(model):
    for blk in model.decoder.blocks:
        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

        blk.forward = types.MethodType(forward, blk)
    return model


def _linear_coordinates(model):
    for blk in model.decoder.blocks:
        log_coords, _ = log_relative_coordinates((4, 4), distinct=False)
        blk.attn.relative_coordinates_log = torch.sign(log_coords) * torch.expm1(log_coords.abs())
    return model


def _windows_over_freq_time(model):
    for i, blk in enumerate(model.decoder.blocks):  # the tokens viewed as an (8, 64) grid
        shift = (2, 0) if i % 2 else (0, 0)
        _set_tokens(blk.attn, window_tokens((8, 64), (4, 4), shift))
        blk.attn.attn_mask = shift_mask((8, 64), (4, 4), shift)
    return model


def _meta_dropout_on(model):
    torch.manual_seed(0)
    for blk in model.decoder.blocks:
        blk.attn.meta_mlp.train()
    return model


SWIN_PITFALLS = {
    "no_shift_in_odd_blocks": lambda cv: _swin(cv, shifting_windows=False),
    "shift_2_2_not_2_0": lambda cv: _shift_2_2(_swin(cv)),
    "roll_plus_2_not_minus_2": lambda cv: _roll_plus_2(_swin(cv)),
    "no_minus_100_penalty": lambda cv: _no_penalty(_swin(cv)),
    "scaled_dot_product_not_cosine": lambda cv: _scaled_dot_product(_swin(cv)),
    "pre_norm_not_post_norm": lambda cv: _pre_norm(_swin(cv)),
    "linear_not_log_coordinates": lambda cv: _linear_coordinates(_swin(cv)),
    "windows_over_freq_time": lambda cv: _windows_over_freq_time(_swin(cv)),
    "meta_mlp_dropout_active": lambda cv: _meta_dropout_on(_swin(cv)),
    "gelu_tanh": lambda cv: _swin(cv, gelu="tanh"),
    "layernorm_eps_1e-5": lambda cv: _swin(cv, layer_norm_eps=1e-5),
}


@pytest.mark.parametrize("pitfall", sorted(SWIN_PITFALLS))
def test_pitfall_swin_exceeds_the_prediction_tolerance(converted, pitfall):
    wrong = SWIN_PITFALLS[pitfall](converted)
    assert all(isinstance(b, SwinBlock) for b in wrong.decoder.blocks)
    _, pred, _ = decoder_errors(wrong, "audiomae_swin_tiny", "decoder")
    assert pred > MODEL_TOL, pitfall


def test_swin_variant_helpers_leave_the_right_model_right(converted):
    """The variant machinery itself (explicit path, token buffers) reproduces the fixture."""
    model = _swin(converted)
    for blk in model.decoder.blocks:
        _set_tokens(blk.attn, blk.attn.tokens.clone())
    assert decoder_errors(model, "audiomae_swin_tiny", "decoder")[1] <= MODEL_TOL


# ----------------------------------------------------------------------------- HEAR, public path
@pytest.fixture(scope="module")
def hear_models(fixture_checkpoint, tmp_path_factory):
    """name -> [load_model of the `hear-mwmae convert` output, load_model of the authors' file]."""
    out = {}
    for name in AUDIOMAE_FIXTURE_NAMES:
        pt = tmp_path_factory.mktemp("amae") / f"{name}.pt"
        assert cli_main(["convert", str(fixture_checkpoint(name)), str(pt), "--encoder-only"]) == 0
        out[name] = [hear_mwmae.load_model(str(pt), device="cpu"),
                     hear_mwmae.load_model(str(fixture_checkpoint(name)), device="cpu")]
    return out


@pytest.mark.parametrize("name", AUDIOMAE_FIXTURE_NAMES)
def test_hear_embeddings_from_waveform(hear_models, name):
    for model in hear_models[name]:
        assert model.timestamp_embedding_size == model.scene_embedding_size == 8 * model.config.model.embed_dim
        for wave in HEAR_WAVES[name]:
            emb, stamps = hear_mwmae.get_timestamp_embeddings(audio(wave), model)
            scene = hear_mwmae.get_scene_embeddings(audio(wave), model)
            ref = load_npy(name, f"{wave}.hear_timestamp_embeddings")
            assert emb.shape == ref.shape and emb.dtype == torch.float32, wave
            assert max_abs(emb, ref) <= HEAR_TOL, wave
            assert max_abs(scene, load_npy(name, f"{wave}.hear_scene_embeddings")) <= HEAR_TOL, wave
            assert torch.equal(stamps, torch.from_numpy(load_npy(name, f"{wave}.hear_timestamps"))), wave


def test_hear_batch_equals_single_clips(hear_models):
    model = hear_models["audiomae_tiny"][0]
    wav = audio("wav2_bursts_12p7s")  # two chunks per clip
    batch = torch.cat([wav, 0.5 * wav.flip(1), wav])
    emb, stamps = hear_mwmae.get_timestamp_embeddings(batch, model)
    for i in range(3):
        single, _ = hear_mwmae.get_timestamp_embeddings(batch[i:i + 1], model)
        torch.testing.assert_close(emb[i:i + 1], single, rtol=1e-5, atol=1e-5)
    assert torch.equal(emb[0], emb[2]) and torch.allclose(torch.diff(stamps[0]), torch.tensor(160.0))


@pytest.mark.parametrize("n", [1, 100, 399, 400])
def test_clips_shorter_than_one_frame_embed(hear_models, n):
    model = hear_models["audiomae_tiny"][0]
    clip = audio("wav3_clicks_0p5s")[:, 2000:2000 + n]
    emb, stamps = hear_mwmae.get_timestamp_embeddings(clip, model)
    assert emb.shape == (1, 1, 1536) and bool(torch.isfinite(emb).all())
    assert stamps.tolist() == [[87.5]]
    # the same as the explicitly zero-padded 400-sample clip (after removing the clip mean)
    padded = torch.nn.functional.pad(clip - clip.mean(), (0, 400 - n))
    torch.testing.assert_close(emb, hear_mwmae.get_timestamp_embeddings(padded, model)[0], rtol=1e-5, atol=1e-5)
