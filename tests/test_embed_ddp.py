"""`hear-mwmae embed` under torchrun: two gloo processes on the CPU give the outputs and the index
of one process, and a run killed before merging resumes from its index parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch.distributed as dist

import hear_mwmae
from hear_mwmae import embed
from hear_mwmae.embed_plan import canonical, output_names


def records(out: Path) -> dict[str, dict]:
    lines = (out / "index.jsonl").read_text().splitlines()
    return {r["output"] or r["input"]: r for r in map(json.loads, lines)}


def torchrun(*argv: str, nproc: int = 2) -> subprocess.CompletedProcess:
    root = str(Path(hear_mwmae.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "-m", "hear_mwmae.cli", "embed", "--no-progress", "--device", "cpu", *argv]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process_and_resume(tmp_path, tiny_checkpoint):
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    for i, seconds in enumerate([0.5, 0.5, 1.0, 1.5, 0.5]):  # equal lengths batch together on one rank
        (src / f"d{i % 2}").mkdir(parents=True, exist_ok=True)
        sf.write(src / f"d{i % 2}" / f"c{i}.wav", 0.1 * rng.standard_normal(int(16000 * seconds)).astype(np.float32),
                 16000, subtype="FLOAT")
    (src / "notes.txt").write_text("not audio")
    (src / "bad.wav").write_bytes(b"RIFF nothing")

    parser_args = ["--model", str(tiny_checkpoint), str(src), "--mode", "timestamp"]
    single = tmp_path / "single"
    import argparse

    parser = argparse.ArgumentParser()
    embed.register(parser.add_subparsers())
    args = parser.parse_args(["embed", "--no-progress", "--device", "cpu", *parser_args, "--out", str(single)])
    assert args.func(args) == 1  # bad.wav failed

    ddp = tmp_path / "ddp"
    done = torchrun(*parser_args, "--out", str(ddp))
    assert done.returncode != 0, done.stderr[-3000:]  # exit code 1 (bad.wav) on both ranks
    assert "embedded 5, reused 0 (already done), failed 1, not audio 1" in done.stderr, done.stderr[-3000:]
    assert not list(ddp.glob("index.part-*"))
    one, two = records(single), records(ddp)
    assert one.keys() == two.keys()
    for key in one:  # the same records, field by field (only the order of lines may differ)
        assert one[key] == two[key], key
    for rel in (r["output"] for r in one.values() if r["status"] == "ok"):
        for name in (rel, rel.replace(".npy", ".ts.npy")):
            np.testing.assert_allclose(np.load(ddp / name), np.load(single / name), rtol=1e-4, atol=1e-5)

    # a run killed after embedding, before rank 0 merged: records only in the parts, one output lost
    lines = (ddp / "index.jsonl").read_text().splitlines()
    (ddp / "index.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (ddp / "index.part-00000.jsonl").write_text("\n".join(lines[2:4]) + "\n")
    (ddp / "index.part-00001.jsonl").write_text("\n".join(lines[4:]) + "\n")
    lost = output_names(canonical(src / "d0" / "c0.wav"), "scene")[0].as_posix()
    (ddp / lost).unlink()
    again = torchrun(*parser_args, "--out", str(ddp))
    assert "embedded 1, reused 4 (already done), failed 1, not audio 1" in again.stderr, again.stderr[-3000:]
    assert not list(ddp.glob("index.part-*"))
    assert records(ddp)[lost]["reason"] == "output missing"
    assert {k: {f: v for f, v in r.items() if f != "reason"} for k, r in records(ddp).items()} == \
        {k: {f: v for f, v in r.items() if f != "reason"} for k, r in one.items()}
