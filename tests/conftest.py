"""Shared test helpers: the golden fixtures of the authors' release and converted checkpoints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures"
FIXTURE_NAMES = ["mwmae_tiny", "mae_cls_tiny", "mwmae_shift_tiny"]
WAVES = ["wav0_chirp_noise_2s", "wav1_tones_noise_3p37s", "wav2_clicks_0p5s", "wav3_edge_200frames_1p99s"]


def fixture_dir(name: str) -> Path:
    path = FIXTURES / name
    if not (path / "ckpt" / "config.json").exists():
        pytest.skip(f"golden fixture {path} is absent (expected ../shared/fixtures beside the repo)")
    return path


def load_npy(name: str, file: str) -> np.ndarray:
    return np.load(fixture_dir(name) / file)


@pytest.fixture(scope="session")
def converted():
    """name -> Converted (config, full state dict, provenance), converted once per session."""
    from hear_mwmae.convert import convert_run_dir

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = convert_run_dir(fixture_dir(name) / "ckpt")
        return cache[name]

    return get


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, converted) -> Path:
    """Our .pt file converted from the mwmae_tiny fixture."""
    from hear_mwmae.checkpoint import save_checkpoint

    c = converted("mwmae_tiny")
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt", c.config, c.state_dict,
                           provenance=c.provenance)


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    import hear_mwmae

    return hear_mwmae.load_model(str(tiny_checkpoint), device="cpu")


def max_abs(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.abs(a - np.asarray(b)).max())
