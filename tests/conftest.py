"""Shared test helpers: the authors' golden data (vendored in tests/golden) and converted checkpoints."""

from __future__ import annotations

import contextlib
import subprocess
import sys

from pathlib import Path

import numpy as np
import pytest
import torch

import golden

REPO = Path(__file__).resolve().parents[1]
FIXTURE_NAMES = list(golden.FLAX_FIXTURES)  # the MW-MAE (JAX release) fixtures
AUDIOMAE_FIXTURE_NAMES = list(golden.AUDIOMAE_FIXTURES)
WAVES = ["wav1_tones_noise_3p37s", "wav3_edge_200frames_1p99s"]  # MW-MAE clips: 2 chunks; exactly 1 chunk


def load_npy(name: str, file: str) -> np.ndarray:
    """A golden array of fixture `name` by its file name in ../shared/fixtures (".npy" optional)."""
    return golden.array(name, file.removesuffix(".npy"))


@pytest.fixture(scope="session")
def fixture_checkpoint(tmp_path_factory):
    """name -> the fixture's checkpoint rebuilt in the authors' layout (a Flax run directory, or an
    Audio-MAE `.pth` file), written once per session. Treat it as read-only: copy it to modify it."""
    root = tmp_path_factory.mktemp("golden_ckpt")
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = golden.write_checkpoint(name, root / name)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def converted(fixture_checkpoint):
    """name -> Converted (config, full state dict, provenance), converted once per session."""
    from hear_mwmae.convert import convert_source

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = convert_source(fixture_checkpoint(name))
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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread, and much faster on a busy machine. A module opts in
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    with single_thread():
        yield


def assert_fused_and_reference_agree(module: torch.nn.Module, x: torch.Tensor) -> None:
    """The SDPA path (`fused=True`) and the explicit reference path of an attention module give the
    same output and the same gradients for x (B, N, C) and every parameter."""
    outs, grads = [], []
    x = x.detach().requires_grad_(True)
    weights = torch.linspace(-1, 1, x.shape[-1])
    for fused in (True, False):
        module.fused = fused
        out = module(x)
        (out * weights).sum().backward()
        outs.append(out.detach())
        grads.append([x.grad.clone()] + [p.grad.clone() for p in module.parameters()])
        x.grad = None
        module.zero_grad()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a `python -m hear_mwmae.cli ...` / torchrun child: this checkout first on
    PYTHONPATH (so the child imports the package under test), plus `extra`."""
    import os

    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def torchrun_cli(*argv: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`torchrun --standalone --nproc_per_node NPROC -m hear_mwmae.cli ARGV...`, one thread per
    process (gloo on the CPU), output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "hear_mwmae.cli", *argv]
    return subprocess.run(cmd, env=child_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=timeout)


@contextlib.contextmanager
def single_thread():
    """torch on one CPU thread inside the block, like each torchrun child of `torchrun_cli`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def max_abs(a, b) -> float:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.abs(a - np.asarray(b)).max())
