"""The HEAR tools themselves accept the package: hear-validator and heareval's embedding runner.

These need the HEAR toolchain (`bash evaluation/install.sh`; CI installs it) and skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

needs_toolchain = pytest.mark.skipif(
    shutil.which("hear-validator") is None or importlib.util.find_spec("heareval") is None,
    reason="HEAR toolchain not installed (run: bash evaluation/install.sh)",
)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
# family -> (embedding size, first timestamp ms, step ms) of its tiny checkpoint
FAMILIES = {"mwmae": (960, 15.0, 40.0), "audiomae": (1536, 87.5, 160.0)}


@pytest.fixture(params=sorted(FAMILIES))
def family_checkpoint(request, tiny_checkpoint, converted, tmp_path_factory):
    """(family, our .pt): MW-MAE's tiny checkpoint, or the converted audiomae_tiny fixture."""
    if request.param == "mwmae":
        return "mwmae", tiny_checkpoint
    from hear_mwmae.checkpoint import save_checkpoint

    c = converted("audiomae_tiny")
    path = tmp_path_factory.mktemp("amae") / "audiomae_tiny.pt"
    return "audiomae", save_checkpoint(path, c.config, c.state_dict, provenance=c.provenance, encoder_only=True)


@needs_toolchain
def test_hear_validator_passes(family_checkpoint):
    _, checkpoint = family_checkpoint
    proc = subprocess.run(["hear-validator", "hear_mwmae", "--model", str(checkpoint)],
                          capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Looks good!" in proc.stdout


@needs_toolchain
def test_heareval_runner_writes_embeddings(family_checkpoint, tmp_path):
    from evaluation.synthetic import make_tasks

    family, checkpoint = family_checkpoint
    size, first, step = FAMILIES[family]

    tasks = make_tasks(tmp_path / "tasks", clips_per_split=4, seed=1)
    scene_task = next(t for t in tasks if t.name == "synth_scene_multiclass")
    event_task = next(t for t in tasks if t.name == "synth_event")
    keep = tmp_path / "selected"
    keep.mkdir()
    for task in (scene_task, event_task):
        shutil.move(str(task), keep / task.name)
    out = tmp_path / "embeddings"
    proc = subprocess.run(
        [sys.executable, "-m", "heareval.embeddings.runner", "hear_mwmae", "--model", str(checkpoint),
         "--tasks-dir", str(keep), "--embeddings-dir", str(out),
         "--model-options", json.dumps({"device": "cpu", "max_chunks_per_batch": 8})],
        capture_output=True, text=True, env=ENV, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    scene = sorted(out.rglob("synth_scene_multiclass/test/*.embedding.npy"))
    assert scene and np.load(scene[0]).shape == (size,)
    event = sorted(out.rglob("synth_event/test/*.embedding.npy"))
    assert event and np.load(event[0]).shape[1] == size
    stamps = json.loads(event[0].with_name(event[0].name.replace(".embedding.npy", ".timestamps.json")).read_text())
    assert stamps[0] == first and np.allclose(np.diff(stamps), step)
    assert len(stamps) == np.load(event[0]).shape[0]
