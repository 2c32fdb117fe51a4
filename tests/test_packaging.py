"""What a plain `pip install` gets: the bundled demo checkpoint inside the package, loadable by name."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

import pytest
import torch

import hear_mwmae
from hear_mwmae import sources
from hear_mwmae.files import sha256_file

from conftest import REPO


def test_the_demo_loads_by_name_and_the_clone_path_is_the_same_file():
    by_name = hear_mwmae.load_model("demo-tiny", device="cpu")
    in_clone = REPO / "weights" / "demo-tiny.pt"
    assert in_clone.resolve() == sources.bundled_file("demo-tiny").resolve()  # one copy in git
    by_path = hear_mwmae.load_model(str(in_clone), device="cpu", sha256=sha256_file(sources.bundled_file("demo-tiny")))
    audio = torch.rand(2, 20000) * 2 - 1
    torch.testing.assert_close(hear_mwmae.get_scene_embeddings(audio, by_name),
                               hear_mwmae.get_scene_embeddings(audio, by_path), rtol=0, atol=0)


def test_the_wheel_holds_the_demo(tmp_path):
    """Build the wheel as pip would and look inside (the demo used to be left out of it)."""
    pytest.importorskip("setuptools")
    tree = tmp_path / "tree"  # a copy: building writes build/ and *.egg-info beside the sources
    shutil.copytree(REPO / "hear_mwmae", tree / "hear_mwmae", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "setup.cfg", "README.md"):
        shutil.copy(REPO / name, tree / name)
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(tree)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    wheel = next(tmp_path.glob("hear_mwmae-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read("hear_mwmae/data/demo-tiny.pt")
    assert data == sources.bundled_file("demo-tiny").read_bytes()
