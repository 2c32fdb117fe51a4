"""The HEAR contract of the runtime: shapes, dtypes, timestamps, batching, bad input."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import hear_mwmae
from hear_mwmae.runtime import chunk_index, step_timestamps

SR = 16000


def audio_batch(n: int, samples: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(samples) / SR
    tones = torch.stack([torch.sin(2 * math.pi * (200 + 150 * i) * t) for i in range(n)])
    return (0.3 * tones + 0.05 * torch.randn(n, samples, generator=g)).float()


def release_embeddings(model, audio: torch.Tensor) -> torch.Tensor:
    """The release's strategy: always pad 200 - T % 200 frames, one encoder call per chunk, trim."""
    mel = model.frontend(audio)
    t = mel.shape[1]
    pad = 200 - t % 200
    mel = torch.from_numpy(np.pad(mel.numpy(), ((0, 0), (0, pad), (0, 0)), mode="reflect"))
    with torch.no_grad():
        outs = [model.encoder.forward_features(mel[:, i:i + 200]) for i in range(0, mel.shape[1], 200)]
    x = torch.cat(outs, dim=1)
    drop = int(50 * pad / 200)
    return x[:, : x.shape[1] - drop] if drop else x


def test_hear_attributes(tiny_model):
    assert tiny_model.sample_rate == 16000
    assert isinstance(tiny_model.scene_embedding_size, int) and tiny_model.scene_embedding_size == 960
    assert isinstance(tiny_model.timestamp_embedding_size, int) and tiny_model.timestamp_embedding_size == 960
    assert isinstance(tiny_model, torch.nn.Module)


@pytest.mark.parametrize("samples", [1, 100, 201, 8000, 31840, 32000, 63840, 96000])
def test_matches_release_chunking_and_timestamps(tiny_model, samples):
    audio = audio_batch(2, samples)
    emb, ts = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)
    frames = 1 + samples // 160
    assert emb.shape == (2, math.ceil(frames / 4), 960) and emb.dtype == torch.float32
    assert ts.shape == emb.shape[:2] and ts.dtype == torch.float32
    if samples > 200:  # the release itself cannot embed clips shorter than its STFT padding
        torch.testing.assert_close(emb, release_embeddings(tiny_model, audio), rtol=0, atol=1e-5)
    # HEAR validator: every interval 40 ms (within 1 ms), first <= one hop; centred on each step
    assert ts[0, 0] == 15.0
    if ts.shape[1] > 1:
        assert torch.all((torch.diff(ts) - 40.0).abs() < 1e-3)
    first_of_last = 4 * (ts.shape[1] - 1)
    real_centre = 10.0 * (first_of_last + frames - 1) / 2  # centre of the last step's real frames
    assert real_centre <= ts[0, -1] <= real_centre + 15.0  # a partial last step stays on the grid
    assert torch.equal(ts[0], ts[1])


def test_step_timestamps_formula():
    assert step_timestamps(200, 4, 10.0).tolist()[:3] == [15.0, 55.0, 95.0]
    assert step_timestamps(200, 4, 10.0)[-1].item() == 1975.0  # frames 196..199
    assert step_timestamps(201, 4, 10.0)[-1].item() == 2015.0  # frame 200 (+ padding): stays on the grid
    assert step_timestamps(1, 4, 10.0).tolist() == [15.0]
    assert step_timestamps(7, 2, 10.0).tolist() == [5.0, 25.0, 45.0, 65.0]


def test_no_padding_only_chunk():
    assert chunk_index(200, 200).shape == (200,)  # the release would add a second chunk
    assert chunk_index(201, 200).shape == (400,)
    idx = chunk_index(51, 200)  # reflect padding longer than the clip keeps bouncing
    assert idx.tolist()[:53] == list(range(51)) + [49, 48] and idx.max() == 50 and idx.min() == 0


def test_scene_is_mean_of_timestamps(tiny_model):
    audio = audio_batch(3, 40000)
    emb, _ = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)
    scene = hear_mwmae.get_scene_embeddings(audio, tiny_model)
    assert scene.shape == (3, 960) and scene.dtype == torch.float32
    # float32 sums in another order: a few ulps apart (relative ~4e-7 seen on AVX2)
    torch.testing.assert_close(scene, emb.mean(dim=1), rtol=2e-6, atol=1e-6)


def test_batch_equals_single_and_repeatable(tiny_model):
    audio = audio_batch(5, 50000, seed=3)
    emb, _ = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)
    scene = hear_mwmae.get_scene_embeddings(audio, tiny_model)
    for i in range(5):
        one, _ = hear_mwmae.get_timestamp_embeddings(audio[i:i + 1], tiny_model)
        torch.testing.assert_close(one[0], emb[i], rtol=0, atol=1e-5)
        torch.testing.assert_close(hear_mwmae.get_scene_embeddings(audio[i:i + 1], tiny_model)[0], scene[i],
                                   rtol=0, atol=1e-5)
    again, _ = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)
    assert torch.equal(again, emb)


def test_micro_batch_size_does_not_change_results(tiny_checkpoint):
    audio = audio_batch(3, 70000)
    big = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", max_chunks_per_batch=64)
    small = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", max_chunks_per_batch=1)
    torch.testing.assert_close(hear_mwmae.get_timestamp_embeddings(audio, small)[0],
                               hear_mwmae.get_timestamp_embeddings(audio, big)[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(hear_mwmae.get_scene_embeddings(audio, small),
                               hear_mwmae.get_scene_embeddings(audio, big), rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_is_close_to_fp32(tiny_checkpoint, tiny_model, precision):
    audio = audio_batch(2, 32000)
    low = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", precision=precision)
    a = hear_mwmae.get_timestamp_embeddings(audio, low)[0]
    b = hear_mwmae.get_timestamp_embeddings(audio, tiny_model)[0]
    assert a.dtype == torch.float32
    assert (a - b).norm() / b.norm() < 1e-2


def test_empty_batch(tiny_model):
    emb, ts = hear_mwmae.get_timestamp_embeddings(torch.zeros(0, 16000), tiny_model)
    assert emb.shape == (0, 26, 960) and ts.shape == (0, 26)
    assert hear_mwmae.get_scene_embeddings(torch.zeros(0, 16000), tiny_model).shape == (0, 960)


@pytest.mark.parametrize("audio,error,match", [
    (torch.zeros(16000), ValueError, "2-D"),
    (torch.zeros(1, 2, 16000), ValueError, "2-D"),
    (torch.zeros(2, 16000, dtype=torch.int16), TypeError, "floating point"),
    (torch.zeros(2, 0), ValueError, "zero samples"),
    (torch.tensor([[0.0, float("nan")] * 400]), ValueError, "NaN or Inf"),
    (torch.tensor([[0.0, float("inf")] * 400]), ValueError, "NaN or Inf"),
    ([[0.0] * 400], TypeError, "torch.Tensor"),
])
def test_bad_input_is_rejected(tiny_model, audio, error, match):
    with pytest.raises(error, match=match):
        hear_mwmae.get_timestamp_embeddings(audio, tiny_model)
    with pytest.raises(error, match=match):
        hear_mwmae.get_scene_embeddings(audio, tiny_model)


def test_loud_audio_warns(tiny_model):
    with pytest.warns(UserWarning, match="far outside"):
        hear_mwmae.get_scene_embeddings(audio_batch(1, 8000) * 1000, tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hear_mwmae.get_scene_embeddings(audio_batch(1, 8000), tiny_model)


def test_numpy_and_float64_input_accepted(tiny_model):
    audio = audio_batch(1, 8000)
    ref = hear_mwmae.get_scene_embeddings(audio, tiny_model)
    torch.testing.assert_close(hear_mwmae.get_scene_embeddings(audio.double().numpy(), tiny_model), ref)


def test_bad_options(tiny_checkpoint):
    with pytest.raises(TypeError, match="unknown load_model options"):
        hear_mwmae.load_model(str(tiny_checkpoint), devcie="cpu")
    with pytest.raises(ValueError, match="precision"):
        hear_mwmae.load_model(str(tiny_checkpoint), precision="int4")  # int8 exists (tests/test_int8.py)
    with pytest.raises(TypeError, match="load_model"):
        hear_mwmae.get_scene_embeddings(audio_batch(1, 800), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not a device name"):
        hear_mwmae.load_model(str(tiny_checkpoint), device="gpu0")
    if not torch.cuda.is_available():  # a clear error, not torch's bare AssertionError
        with pytest.raises(ValueError, match=r"device 'cuda': CUDA is not available here .* use device='cpu'"):
            hear_mwmae.load_model(str(tiny_checkpoint), device="cuda")


def test_blocked_frontend_equals_whole_clip():
    from hear_mwmae.frontend import LogMelFrontend

    frontend = LogMelFrontend()
    audio = audio_batch(2, 16000 * 3 + 77)
    whole = frontend(audio)
    for block in (1, 7, 100, 301):
        torch.testing.assert_close(frontend(audio, frames_per_block=block), whole, rtol=0, atol=1e-6)


def test_long_clip_goes_through_the_frontend_in_blocks(tiny_checkpoint, monkeypatch):
    import hear_mwmae.runtime as runtime

    audio = audio_batch(1, 16000 * 9)
    model = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")
    ref = hear_mwmae.get_timestamp_embeddings(audio, model)[0]
    monkeypatch.setattr(runtime, "FRONTEND_SAMPLES_PER_PASS", 16000 * 2)  # 9 s clip -> 5 blocks
    calls = []
    original = model.frontend._frames_to_log_mel
    monkeypatch.setattr(model.frontend, "_frames_to_log_mel", lambda x: calls.append(x.shape) or original(x))
    torch.testing.assert_close(hear_mwmae.get_timestamp_embeddings(audio, model)[0], ref, rtol=0, atol=1e-5)
    assert len(calls) == 5 and max(shape[1] for shape in calls) <= 16000 * 2 + 400


def test_default_micro_batch_follows_the_device(tiny_checkpoint):
    model = hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")
    assert model.max_chunks_per_batch == 16
    assert hear_mwmae.load_model(str(tiny_checkpoint), device="cpu", max_chunks_per_batch=3).max_chunks_per_batch == 3
