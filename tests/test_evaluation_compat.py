"""The compat fixes of evaluation/compat.py, each shown to be needed by heareval itself.

Embeddings come from heareval's own `task_embeddings` with a tiny hand-made feature
(log energy near each synthetic tone), so these tests need heareval but no model.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("heareval.predictions.task_predictions", reason="heareval absent: bash evaluation/install.sh")

from heareval.embeddings.task_embeddings import task_embeddings  # noqa: E402
from heareval.predictions import task_predictions as tp  # noqa: E402

from evaluation import compat, grids, synthetic  # noqa: E402
from evaluation.predict import configured, link_embeddings  # noqa: E402


class ToyEmbedding:
    """Duck-typed stand-in for heareval's Embedding: band energies at the synthetic tones."""

    type = "torch"
    sample_rate = 16000
    hop = 640  # 40 ms

    def _features(self, audio: np.ndarray) -> np.ndarray:  # (n, samples) -> (n, frames, 4)
        n_frames = audio.shape[1] // self.hop
        frames = audio[:, : n_frames * self.hop].reshape(len(audio), n_frames, self.hop)
        spec = np.abs(np.fft.rfft(frames, axis=-1))
        bins = [int(round(f * self.hop / self.sample_rate)) for f in synthetic.TONES.values()]
        return np.log1p(np.stack([spec[..., b - 1: b + 2].sum(-1) for b in bins], -1)).astype(np.float32)

    def get_scene_embedding_as_numpy(self, audio: torch.Tensor) -> np.ndarray:
        return self._features(np.asarray(audio)).mean(1)

    def get_timestamp_embedding_as_numpy(self, audio: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        emb = self._features(np.asarray(audio))
        ts = (np.arange(emb.shape[1]) + 0.5) * 1000 * self.hop / self.sample_rate
        return emb, np.tile(ts, (len(emb), 1)).astype(np.float32)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("compat")
    tasks = synthetic.make_tasks(root / "tasks", clips_per_split=12, seed=3)
    out = {}
    for task in tasks:
        if task.name in ("synth_event", "synth_scene_multiclass"):
            task_embeddings(ToyEmbedding(), task, root / "emb" / task.name)
            out[task.name] = root / "emb" / task.name
    return out


TINY_GRID = {**grids.FAST, "max_epochs": [3], "patience": [1]}  # a few seconds per run


def _predict(embed_dir: Path, work: Path) -> dict:
    link_embeddings(embed_dir, work)
    dims = (work / "test.embedding-dimensions.json").read_text()
    tp.task_predictions(embedding_path=work, embedding_size=int(dims.strip("[]").split(",")[1]),
                        grid_points=1, gpus=None, in_memory=True, deterministic=True, grid="default",
                        logger=__import__("logging").getLogger("test.heareval"))
    return __import__("json").loads((work / "test.predicted-scores.json").read_text())


# ------------------------------------------------------------- torch.load of Lightning checkpoints

def _lightning_like_checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 3, "hyper_parameters": {"hidden_norm": torch.nn.BatchNorm1d}}, path)
    return path


def test_trust_is_limited_to_ckpt_files_under_the_root(tmp_path):
    inside = _lightning_like_checkpoint(tmp_path / "work" / "lightning_logs" / "epoch=3.ckpt")
    outside = _lightning_like_checkpoint(tmp_path / "elsewhere" / "epoch=3.ckpt")
    not_ckpt = _lightning_like_checkpoint(tmp_path / "work" / "model.pt")
    with pytest.raises(pickle.UnpicklingError):  # torch >= 2.6 default
        torch.load(inside)
    with compat.trust_checkpoints_under(tmp_path / "work"):
        assert torch.load(inside)["epoch"] == 3
        with open(inside, "rb") as fh:  # Lightning passes an open file
            assert torch.load(fh)["epoch"] == 3
        for path in (outside, not_ckpt):
            with pytest.raises(pickle.UnpicklingError):
                torch.load(path)
        with pytest.raises(pickle.UnpicklingError):  # an explicit choice is respected
            torch.load(inside, weights_only=True)
    with pytest.raises(pickle.UnpicklingError):  # restored on exit
        torch.load(inside)


def test_heareval_fails_on_its_own_checkpoints_without_the_trust_fix(embedded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with compat.restore_best_epoch_for_test(), configured(TINY_GRID, 0):
        with pytest.raises(pickle.UnpicklingError):
            _predict(embedded["synth_scene_multiclass"], tmp_path / "work")


# ------------------------------------------------------------- best epoch for event tasks

def test_event_task_needs_the_best_epoch_fix(embedded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = tmp_path / "work"
    with compat.trust_checkpoints_under(work), configured(TINY_GRID, 0):
        with pytest.raises(KeyError):
            _predict(embedded["synth_event"], work)
    with compat.heareval_compat(work), configured(TINY_GRID, 0):
        scores = _predict(embedded["synth_event"], work)
    assert 0.0 <= scores["test"]["test_score"] <= 1.0  # quality is checked end to end
    # Lightning's logs and checkpoints went to the work folder, not ./logs
    assert list(work.glob("lightning_logs/version_*/checkpoints/*.ckpt"))
    assert not (tmp_path / "logs").exists()


# ------------------------------------------------------------- grid and seed injection

def test_configured_injects_grid_and_seed_and_restores():
    grid = grids.get_grid("fast")
    before = (tp.PARAM_GRID, tp.seed_everything, torch.are_deterministic_algorithms_enabled())
    with configured(grid, 7):
        assert tp.PARAM_GRID is grid
        assert tp.seed_everything(42, workers=False) == 7
        torch.use_deterministic_algorithms(True)  # as Lightning's deterministic trainer does
    assert (tp.PARAM_GRID, tp.seed_everything, torch.are_deterministic_algorithms_enabled()) == before
