"""Common mistakes give one line that says what is wrong and what to do: exit code 2 on the CLI,
no traceback, never a hint to unpickle code."""

from __future__ import annotations

import logging
import re
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


# ----------------------------------------------------------------------------- every subcommand, every failure mode
def _pickled_model(path: Path) -> Path:
    """A torch file that pickles an object (what weights-only loading refuses, and must keep refusing)."""
    import fractions

    torch.save({"format": "hear-mwmae", "format_version": 2, "state_dict": {}, "x": fractions.Fraction(1, 3)}, path)
    return path


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, tiny_checkpoint, wav) -> dict[str, Path]:
    """Files for each failure mode: a pickled model, a pre-training run whose checkpoint.pt pickles an
    object, a symbolic link loop, a text file named like audio, a folder of data."""
    import fractions

    root = tmp_path_factory.mktemp("hostile")
    run = root / "run"
    run.mkdir()
    torch.save({"format": "hear-mwmae-train", "format_version": 1, "train_config": {}, "x": fractions.Fraction(1, 3)},
               run / "checkpoint.pt")
    (root / "bare").mkdir()
    torch.save({"format": "hear-mwmae-train", "format_version": 1}, root / "bare" / "checkpoint.pt")
    (root / "data").mkdir()
    sf.write(root / "data" / "a.wav", np.zeros(16000, np.float32), 16000)
    noise = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    for split in ("train", "valid", "test"):  # a labelled task: class folders per split
        for label in ("yes", "no"):
            (root / "task" / split / label).mkdir(parents=True)
            for i in range(2):
                sf.write(root / "task" / split / label / f"{i}.wav", noise, 16000)
    (root / "loop.wav").symlink_to("loop.wav")
    (root / "text.wav").write_text("hello, not audio")
    return {"pickled": _pickled_model(root / "pickled.pt"), "run": run, "bare_run": root / "bare",
            "data": root / "data", "task": root / "task",
            "loop": root / "loop.wav", "text": root / "text.wav", "root": root, "tiny": tiny_checkpoint, "wav": wav}


def _no_module(monkeypatch, *names: str) -> None:
    """As on a machine where these optional packages are not installed."""
    import sys

    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def _offline_hub(monkeypatch, tmp_path) -> None:
    pytest.importorskip("huggingface_hub")
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))


def _offline_gdown(monkeypatch) -> None:
    gdown = pytest.importorskip("gdown")
    import requests

    def no_network(*args, **kwargs):
        raise requests.exceptions.ConnectionError("HTTPSConnectionPool(host='drive.google.com', port=443): Max "
                                                  "retries exceeded\n(Caused by NameResolutionError(...))")

    monkeypatch.setattr(gdown, "download", no_network)
    monkeypatch.setattr(gdown, "download_folder", no_network)


HF = "hf://gaunernst/vit_base_patch16_1024_128.audiomae_as2m"
NO_HUB = "huggingface_hub is needed to load hf:// references but is not installed: pip install 'hear-mwmae[hub]'"
OFFLINE_HUB = f"cannot get {HF}: it is not in the local Hugging Face cache and the Hub cannot be reached"
REFUSED = "refused: it pickles objects other than tensors and plain containers"
LOOP = "a symbolic link loop (the link leads back to itself)"

# (subcommand arguments, what to break, exit code, a phrase the one line must hold)
CASES = {
    # a missing optional dependency
    "info hf:// without huggingface_hub": (["info", HF], "no hub", 2, NO_HUB),
    "convert hf:// without huggingface_hub": (["convert", HF, "{root}/o.pt"], "no hub", 2, NO_HUB),
    "embed hf:// without huggingface_hub": (["embed", "--model", HF, "{wav}", "--out", "{tmp}/o"], "no hub", 2, NO_HUB),
    "analyze hf:// without huggingface_hub": (["analyze", "pwcca", HF, "--synthetic", "--no-figures", "--out",
                                               "{tmp}/a"], "no hub", 2, NO_HUB),
    "export-onnx hf:// without huggingface_hub": (["export-onnx", HF, "{tmp}/o.onnx"], "no hub", 2, NO_HUB),
    "tag hf:// without huggingface_hub": (["tag", "{wav}", "--model", HF], "no hub", 2, NO_HUB),
    "finetune hf:// without huggingface_hub": (["finetune", "--recipe", "cpu-small", "--model", HF, "--task", "{task}",
                                                "--out", "{tmp}/ft"], "no hub", 2, NO_HUB),
    "push-to-hub without huggingface_hub": (["push-to-hub", "{tiny}", "someone/model"], "no hub", 2,
                                            "uploading needs huggingface_hub: pip install 'hear-mwmae[hub]'"),
    "analyze without matplotlib": (["analyze", "attention", "{tiny}", "--synthetic", "--out", "{tmp}/a"],
                                   "no matplotlib", 2, "matplotlib is needed for the figures (or pass --no-figures)"),
    "export-onnx without onnx": (["export-onnx", "{tiny}", "{tmp}/o.onnx"], "no onnx", 2,
                                 "pip install 'hear-mwmae[onnx]'"),
    "fetch without gdown": (["fetch", "audiomae-base-as2m", "--cache-dir", "{tmp}/c"], "no gdown", 2,
                            "downloading needs gdown: pip install 'hear-mwmae[fetch]'"),
    # a pickled object where weights are expected
    "pretrain-export of a pickling checkpoint.pt": (["pretrain-export", "{run}", "{tmp}/o.pt"], None, 2, REFUSED),
    "pretrain --resume of a pickling checkpoint.pt": (["pretrain", "--resume", "--data", "{data}", "--out", "{run}"],
                                                      None, 2, REFUSED),
    "pretrain --recipe --resume of a pickling checkpoint.pt": (
        ["pretrain", "--recipe", "demo-tiny", "--resume", "--data", "{data}", "--out", "{run}"], None, 2, REFUSED),
    "info on a pickling model": (["info", "{pickled}"], None, 2, "refused: the file pickles objects other than"),
    "embed with a pickling model": (["embed", "--model", "{pickled}", "{wav}", "--out", "{tmp}/o"], None, 2,
                                    "refused: the file pickles objects other than"),
    "analyze a pickling model": (["analyze", "pwcca", "{pickled}", "--synthetic", "--no-figures", "--out", "{tmp}/a"],
                                 None, 2, "refused: the file pickles objects other than"),
    "tag with a pickling model": (["tag", "{wav}", "--model", "{pickled}"], None, 2,
                                  "refused: the file pickles objects other than"),
    "finetune a pickling model": (["finetune", "--recipe", "cpu-small", "--model", "{pickled}", "--task", "{task}",
                                   "--out", "{tmp}/ft"], None, 2, "refused: the file pickles objects other than"),
    "save-pretrained a pickling model": (["save-pretrained", "{pickled}", "{tmp}/hub"], None, 2,
                                         "refused: the file pickles objects other than"),
    "export-onnx a pickling model": (["export-onnx", "{pickled}", "{tmp}/o.onnx"], None, 2,
                                     "refused: the file pickles objects other than"),
    # offline
    "fetch offline": (["fetch", "audiomae-base-as2m", "--cache-dir", "{tmp}/c"], "offline", 2,
                      "failed: no network (ConnectionError: cannot reach drive.google.com); to fetch it by hand: "
                      "download pretrained.pth from https://drive.google.com/file/d/"),
    "fetch of a run offline": (["fetch", "mwmae-base-4x16-4l", "--cache-dir", "{tmp}/c"], "offline", 2,
                               "to fetch it by hand: download the folder "
                               "mwmae_base_200_4x16_8x128_default_bfloat16_run1"),
    "info hf:// offline": (["info", HF], "offline", 2, OFFLINE_HUB),
    "embed hf:// offline": (["embed", "--model", HF, "{wav}", "--out", "{tmp}/o"], "offline", 2, OFFLINE_HUB),
    "convert hf:// offline": (["convert", HF, "{tmp}/o.pt"], "offline", 2, OFFLINE_HUB),
    # unreadable, non-audio, looping paths
    "info on a symbolic link loop": (["info", "{loop}"], None, 2, LOOP),
    "embed with a looping model path": (["embed", "--model", "{loop}", "{wav}", "--out", "{tmp}/o"], None, 2, LOOP),
    "embed a looping input": (["embed", "--model", "{tiny}", "{loop}", "--out", "{tmp}/o"], None, 1, LOOP),
    "embed a text file named .wav": (["embed", "--model", "{tiny}", "{text}", "--out", "{tmp}/o"], None, 1,
                                     "error: not audio, or corrupt: FFmpeg finds no audio it can decode in it (its "
                                     "first bytes are 68 65 6c 6c 6f 2c 20 6e)"),  # never echoed: 8 bytes in hex
    "convert a text file": (["convert", "{text}", "{tmp}/o.pt"], None, 2, "text.wav"),
    "pretrain-export of a missing run": (["pretrain-export", "{root}/nothing", "{tmp}/o.pt"], None, 2,
                                         "no training checkpoint at"),
    "pretrain-export of an incomplete run": (["pretrain-export", "{bare_run}", "{tmp}/o.pt"], None, 2,
                                             "incomplete training checkpoint (no usable 'train_config')"),
    "analyze --audio of a missing folder": (["analyze", "pwcca", "{tiny}", "--audio", "{root}/nothing", "--no-figures",
                                             "--out", "{tmp}/a"], None, 2, "nothing"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_subcommand_ends_in_one_line(case, hostile, tmp_path, monkeypatch, caplog, capsys):
    """Each failure mode of the issue, through the real command line: one error line, the exit code,
    no traceback, never torch's advice to load with weights_only=False."""
    argv, breakage, expected_code, phrase = CASES[case]
    if breakage == "no hub":
        _no_module(monkeypatch, "huggingface_hub")
    elif breakage == "no matplotlib":
        _no_module(monkeypatch, "matplotlib", "matplotlib.pyplot")
        from hear_mwmae import analyze_cli

        monkeypatch.setattr(analyze_cli, "_load", lambda *a: pytest.fail("loaded the model before checking"))
    elif breakage == "no onnx":
        _no_module(monkeypatch, "onnx")
    elif breakage == "no gdown":
        _no_module(monkeypatch, "gdown")
    elif breakage == "offline":
        _offline_hub(monkeypatch, tmp_path)
        _offline_gdown(monkeypatch)
    values = {k: str(v) for k, v in hostile.items()} | {"tmp": str(tmp_path)}
    code, message = run_cli(caplog, *[a.format(**values) for a in argv])
    captured = capsys.readouterr()
    assert code == expected_code, message
    assert phrase in message, message
    assert "\n" not in message and "Traceback" not in captured.err + captured.out
    assert "weights_only" not in message
    assert not re.search(r"fetch mwmae-base-4x16-4l(?! --from)", message)  # no other family's fetch suggested ...
    assert "weights/" not in message  # ... nor a folder that a pip install does not have


def test_a_real_process_prints_one_line(hostile, tmp_path):
    """The same through a process of its own: stderr is exactly one line."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "hear_mwmae.cli", "pretrain-export", str(hostile["run"]), str(tmp_path / "o.pt")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert REFUSED in done.stderr and "weights_only" not in done.stderr and "Traceback" not in done.stderr


def test_every_option_of_every_subcommand_has_help():
    """`--precision` had none; `hear-mwmae X --help` should explain every flag it lists."""
    import argparse

    def missing(parser: argparse.ArgumentParser, name: str):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    yield from missing(subparser, f"{name} {sub}")
            elif action.option_strings and not action.help:
                yield f"{name} {'/'.join(action.option_strings)}"

    assert list(missing(cli.build_parser(), "hear-mwmae")) == []


@pytest.mark.parametrize("flag,value,message", [
    ("--workers", "257", "must be 0 ... 256, got 257"),
    ("--workers", "-1", "must be 0 ... 256, got -1"),
    ("--workers", "two", "not a whole number: 'two'"),
    ("--shard-rows", "0", "must be at least 1, got 0"),
    ("--max-duration", "0", "must be a positive number of seconds, got 0"),
])
def test_embed_numbers_out_of_range_are_usage_errors(flag, value, message, wav, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["embed", str(wav), "--out", str(tmp_path / "out"), flag, value])
    assert stop.value.code == 2 and f"argument {flag}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
