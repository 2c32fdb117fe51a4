"""Common mistakes give one line that says what is wrong and what to do: exit code 2 on the CLI,
no traceback, never a hint to unpickle code."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import hear_mwmae
from hear_mwmae import cli
from hear_mwmae.checkpoint import CheckpointError
from hear_mwmae.pretrain.state import save_train_state


def run_cli(caplog, *argv) -> tuple[int, str]:
    """(exit code, the one error line) of `hear-mwmae ARGV`."""
    caplog.clear()
    code = cli.main([*map(str, argv)])
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert not errors[0].exc_info  # no traceback
    message = errors[0].getMessage()
    assert "weights_only" not in message
    return code, message


@pytest.fixture(scope="module")
def wav(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("audio") / "some.wav"
    sf.write(path, np.zeros(1600, np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory, tiny_checkpoint) -> Path:
    """What `hear-mwmae pretrain` leaves: train_config.json and the training state checkpoint.pt."""
    run = tmp_path_factory.mktemp("run")
    (run / "train_config.json").write_text("{}")
    state = torch.load(tiny_checkpoint, weights_only=True)["state_dict"]
    save_train_state(run / "checkpoint.pt", train_config={}, step=3, model=state, optimizer={}, world_size=1,
                     last_loss=0.5, data={}, seconds=1.0)
    return run


def test_info_on_an_audio_file(caplog, wav):
    code, message = run_cli(caplog, "info", wav)
    assert code == 2 and message.startswith(f"{wav}: an audio file, not a model checkpoint")


def test_embed_with_an_audio_file_as_model(caplog, wav, tmp_path):
    code, message = run_cli(caplog, "embed", "--model", wav, wav, "--out", tmp_path / "out")
    assert code == 2 and "an audio file, not a model checkpoint" in message


def test_info_on_random_bytes(caplog, tmp_path):
    path = tmp_path / "random.bin"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    code, message = run_cli(caplog, "info", path)
    assert code == 2 and "not a model checkpoint: neither a torch file, a safetensors file" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_embed_on_cuda_without_cuda(caplog, wav, tmp_path, tiny_checkpoint):
    code, message = run_cli(caplog, "embed", "--model", tiny_checkpoint, "--device", "cuda", wav,
                            "--out", tmp_path / "out")
    assert code == 2 and message.startswith("--device cuda: CUDA is not available here") \
        and message.endswith("use --device cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["run dir", "checkpoint.pt"])
def test_a_pretraining_run_points_to_pretrain_export(caplog, pretrain_run, what):
    target = pretrain_run if what == "run dir" else pretrain_run / "checkpoint.pt"
    code, message = run_cli(caplog, "info", target)
    assert code == 2 and f"`hear-mwmae pretrain-export {pretrain_run} OUT.pt`" in message
    with pytest.raises(CheckpointError, match="pretrain-export"):
        hear_mwmae.load_model(str(target))


def test_transposed_audio_warns(tiny_model):
    with pytest.warns(UserWarning, match=r"\(3, 2\) holds more sounds than samples.*transposed"):
        hear_mwmae.get_scene_embeddings(torch.rand(3, 2) * 2 - 1, tiny_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the usual layout stays quiet
        hear_mwmae.get_scene_embeddings(torch.rand(2, 1600) * 0.5, tiny_model)


def test_a_second_evaluation_run_on_one_out_stops_at_once(tmp_path, tiny_checkpoint):
    from filelock import FileLock

    from evaluation import run, synthetic

    synthetic.make_tasks(tmp_path / "tasks", clips_per_split=2, seed=0)
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(str(out / run.LOCK_NAME)):
        with pytest.raises(SystemExit, match=r"another `python -m evaluation.run` is using .*pass another --out"):
            run.main(["--tasks-dir", str(tmp_path / "tasks"), "--model", str(tiny_checkpoint), "--out", str(out),
                      "--device", "cpu"])
