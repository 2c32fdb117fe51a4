"""The benchmark scripts run (so they cannot rot) and report what they claim: tiny sizes, CPU."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script: str, *args: str, cwd: Path) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_runtime_bench_side_by_side_with_gemm_and_fidelity(tmp_path):
    out = run("runtime_bench.py", "--size", "tiny", "--workloads", "1x3s", "--configs", "ours-fp32,ours-int8",
              "--repeats", "1", "--json", str(tmp_path / "r.json"), cwd=tmp_path)
    data = json.loads((tmp_path / "r.json").read_text())
    runs = {r["config"]: r for r in data["runs"]}
    assert set(runs) == {"ours-fp32", "ours-int8"}
    for r in runs.values():
        assert len(r["times_s"]) == 1
        assert r["gemm_gflops"] > 0 and r["chunks"] == 2 and r["chunks_per_pass"] == 2
        assert r["output_shape"] == [1, 76, 960]
    (fid,) = data["fidelity_vs_ours_fp32"]
    assert fid["config"] == "ours-int8" and 0.99 < fid["worst_cos"] < 1.0 and 0 < fid["rel_err"] < 0.05
    assert "enc/GEMM" in out and "ours-int8" in out


def test_runtime_bench_audiomae_family(tmp_path):
    rb = load_script("runtime_bench")  # the worker in this process (the driver is tested above)
    threads = torch.get_num_threads()
    try:
        assert rb.main(["--worker", "--family", "audiomae", "--size", "tiny", "--workload", "1x3s", "--config",
                        "ours-fp32", "--repeats", "1", "--result", str(tmp_path / "a.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    r = json.loads((tmp_path / "a.json").read_text())
    assert r["family"] == "audiomae" and r["chunks"] == 1  # one 1024-frame chunk
    assert r["output_shape"] == [1, 19, 8 * 192]  # ceil(298 frames / 16): 160 ms steps of 8 patches x 192


def test_bench_helpers():
    rb = load_script("runtime_bench")
    assert rb.parse_config("ours-fp32-compile") == ("ours", "fp32", "compile")
    assert rb.parse_config("ours-fp32-unfused") == ("ours", "fp32", "unfused")
    assert rb.parse_config("ort-int8") == ("ort", "int8", "")
    assert rb.parse_config("tag-bf16") == ("tag", "bf16", "")
    assert rb.reference_of("audiomae:tag-int8") == "audiomae:tag-fp32" and rb.reference_of("ours-int8") == "ours-fp32"
    for bad in ("ort-bf16", "loop-fp32-compile", "tag-fp32-unfused", "ours-int4", "ours", "ours-int8-unfused", "ours-fp32-fast"):
        with pytest.raises(ValueError):
            rb.parse_config(bad)
    cfg = rb.bench_config("mwmae", "base")
    assert abs(rb.chunk_flops(cfg.model) / 1e9 - 44.8) < 0.1
    assert rb.chunks_run("loop", 16, 1.99, cfg) == 32 and rb.chunks_run("ours", 16, 1.99, cfg) == 16
    assert rb.chunks_run("ours", 1, 60.0, rb.bench_config("audiomae", "base")) == 6
    ref = torch.randn(4, 7, 16)
    assert rb.compare(ref, ref)["worst_cos"] == pytest.approx(1.0)
    flipped = ref.clone()
    flipped[1, 2] *= -1
    fid = rb.compare(flipped, ref)
    assert fid["worst_cos"] == pytest.approx(-1.0) and fid["rel_max_abs"] == pytest.approx(
        float(2 * ref[1, 2].abs().max() / ref.abs().max()))


def test_rounds_are_merged_best_time_best_gemm_largest_peak():
    rb = load_script("runtime_bench")
    a = {"times_s": [2.0, 3.0], "best_s": 2.0, "gemm_gflops": 100.0, "peak_rss_mb": 50.0, "rss_delta_mb": 5.0}
    b = {"times_s": [1.5], "best_s": 1.5, "gemm_gflops": 90.0, "peak_rss_mb": 60.0, "rss_delta_mb": 4.0}
    m = rb.merge(rb.merge(None, a), b)
    assert m["times_s"] == [2.0, 3.0, 1.5] and m["best_s"] == 1.5 and m["gemm_gflops"] == 100.0
    assert m["peak_rss_mb"] == 60.0 and m["rss_delta_mb"] == 5.0


def test_gpu_bench_quick_on_cpu(tmp_path, capsys):
    gb = load_script("gpu_bench")  # in this process: the script is one process by design
    assert gb.main(["--device", "cpu", "--quick", "--out", str(tmp_path / "g")]) == 0
    out = capsys.readouterr().out
    data = json.loads((tmp_path / "g" / "gpu_bench.json").read_text())
    embed = {(r["workload"], r["config"]) for r in data["embed"]}
    assert embed == {("2x2s", p) for p in ("fp32", "bf16", "fp16")}
    for r in data["embed"]:
        assert r["audio_s_per_s"] > 0 and r["tflops"] > 0 and r["chunks_per_pass"] == 4
        if r["config"] != "fp32":
            assert 0.99 < r["worst_cos"] <= 1.0 and 0 < r["rel_err"] < 0.05
    assert [r["chunks_per_pass"] for r in data["chunks"]] == [2, 4]
    assert data["pretrain"]["samples_per_s"] > 0 and data["pretrain"]["recipe"] == "released"
    assert data["ceiling"] and not data["skipped"]
    md = (tmp_path / "g" / "gpu_bench.md").read_text()
    assert "## embed (eager)" in md and "## pre-training" in md and md in out


def test_runtime_bench_in_process_interleaves_families_and_compares(tmp_path, capsys):
    rb = load_script("runtime_bench")
    threads = torch.get_num_threads()
    try:
        assert rb.main(["--in-process", "--size", "tiny", "--workloads", "1x3s", "--repeats", "2",
                        "--configs", "ours-fp32,ours-fp32-unfused,audiomae:ours-fp32,audiomae:ours-int8,"
                                     "audiomae:tag-fp32,audiomae:tag-int8",
                        "--json", str(tmp_path / "i.json")]) == 0
    finally:
        torch.set_num_threads(threads)
    data = json.loads((tmp_path / "i.json").read_text())
    runs = {r["config"]: r for r in data["runs"]}
    assert all(len(r["times_s"]) == 2 and r["gemm_gflops"] > 0 for r in runs.values())
    assert runs["audiomae:ours-fp32"]["output_shape"] == [1, 19, 1536] and runs["ours-fp32"]["output_shape"][1] == 76
    fid = {f["config"]: f for f in data["fidelity_vs_ours_fp32"]}
    # each against its own family's ours-fp32; the classifier's logits against tag-fp32
    assert set(fid) == {"ours-fp32-unfused", "audiomae:ours-int8", "audiomae:tag-int8"}
    assert fid["ours-fp32-unfused"]["rel_err"] < 1e-5 and 0.99 < fid["audiomae:ours-int8"]["worst_cos"] < 1.0
    assert runs["audiomae:tag-int8"]["output_shape"] == [1, rb.HEAD_CLASSES]  # logits per clip
    assert 0.99 < fid["audiomae:tag-int8"]["worst_cos"] < 1.0
    assert "audiomae:ours-int8" in capsys.readouterr().out


def test_families_machine_and_ratio_to_onnx_runtime():
    rb = load_script("runtime_bench")
    assert rb.expand_families(["loop-fp32", "ours-int8", "audiomae:ours-fp32"], ["mwmae", "audiomae"]) == [
        "mwmae:loop-fp32", "mwmae:ours-int8", "audiomae:ours-int8", "audiomae:ours-fp32"]
    assert rb.ort_of("ours-int8") == "ort-int8" and rb.ort_of("audiomae:ours-fp32") == "audiomae:ort-fp32"
    assert rb.ort_of("ours-bf16") is None and rb.ort_of("ours-fp32-unfused") is None and rb.ort_of("ort-int8") is None
    info = rb.machine()
    assert info["cpu"] and info["torch"] == torch.__version__ and info["int8_engine"] in ("onednn", "fbgemm", "none")

    def run_of(config: str, best_s: float, gemm: float) -> dict:
        return {"config": config, "audio_s": 10.0, "best_s": best_s, "times_s": [best_s], "chunks": 5,
                "chunk_gflop": 44.8, "gemm_gflops": gemm, "chunks_per_pass": 5, "setup_s": 0.0, "warmup_s": 0.0}

    results = {("w", c): run_of(c, t, g) for c, t, g in (("audiomae:ours-fp32", 4.0, 300.0),
                                                           ("audiomae:ours-int8", 1.0, 448.0),
                                                           ("audiomae:ort-int8", 1.5, 448.0))}
    table = rb.report(results, {}, ["w"], None, info).splitlines()
    assert table[0].startswith("CPU: ")
    row = next(line for line in table if "audiomae:ours-int8 |" in line)
    cells = [c.strip() for c in row.split("|")]
    # audio s/s 10, 4x fp32, 1.5x ONNX Runtime, 224 GFLOP/s = 0.50 of the 448 GEMM figure
    assert cells[2:8] == ["10.00", "4.00", "1.50", "224", "448", "0.50"]


def test_finetune_bench_reports_training_and_tagging_speed(tmp_path):
    out = run("finetune_bench.py", "--size", "tiny", "--batch", "2", "--steps", "1", "--classes", "5",
              "--tag-clips", "1", "--tag-seconds", "2", cwd=tmp_path)
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [r["family"] for r in rows] == ["mwmae", "audiomae"]
    for r in rows:
        assert r["train_clips_per_s"] > 0 and r["tag_audio_s_per_s"] > 0 and r["embed_audio_s_per_s"] > 0
        assert r["peak_GiB"] > 0 and r["batch"] == 2
    assert "| mwmae" in out and "train clips/s" in out


def test_load_checks_bench_times_both_ways():
    lb = load_script("load_checks_bench")
    record = lb.main(["--size", "tiny", "--repeats", "1"])
    assert record["with_checks_s"] > 0 and record["without_checks_s"] > 0 and record["file_mb"] > 1
    import hear_mwmae.checkpoint as checkpoint
    import hear_mwmae.payload_checks as payload_checks

    assert payload_checks.check_state_dict.__module__ == "hear_mwmae.state_checks"  # the checks are restored
    assert checkpoint._check_parts.__module__ == "hear_mwmae.checkpoint"


def test_long_file_bench_reports_both_peaks_and_the_difference(tmp_path):
    out = run("long_file_bench.py", "--minutes", "0.2", "--threads", "1", "--json", str(tmp_path / "l.json"),
              cwd=tmp_path)
    data = json.loads((tmp_path / "l.json").read_text())
    assert data["embed"]["peak_rss_mib"] > 100 and data["whole"]["peak_rss_mib"] > 100
    assert data["difference"]["max_abs"] == 0.0  # 12 s: held in memory, the same path
    assert "peak RSS" in out


def test_embed_bench_reports_decode_model_embed_and_file_counts(tmp_path):
    out = run("embed_bench.py", "--files", "2", "--seconds", "1", "--workers", "0,1", "--precisions", "fp32",
              "--rounds", "1", "--count-clips", "5", "--json", str(tmp_path / "e.json"), cwd=tmp_path)
    data = json.loads((tmp_path / "e.json").read_text())
    rows = data["speeds"]["rows"]
    assert [(r["precision"], r["workers"]) for r in rows] == [("fp32", 0), ("fp32", 1)]
    for r in rows:
        assert r["decode_audio_s_per_s"] > 0 and r["model_audio_s_per_s"] > 0 and r["embed_audio_s_per_s"] > 0
        bound = min(r["decode_audio_s_per_s"], r["model_audio_s_per_s"])
        assert r["fraction_of_bound"] == pytest.approx(r["embed_audio_s_per_s"] / bound)
    assert rows[0]["vs_workers_0"] == 1.0 and data["speeds"]["worker_start_s"] > 0
    counts = {c["format"]: c for c in data["corpus"]}
    # npy: a file per clip + index.jsonl, embed.json, .embed.lock; parquet: one shard + the same three
    assert counts["npy"]["files_in_out"] == 5 + 3 and counts["parquet"]["files_in_out"] == 1 + 3
    assert counts["npy"]["peak_rss_mib"] > 50 and counts["parquet"]["peak_rss_mib"] > 50
    assert "embed / min(decode, model)" in out and "| parquet | 5 |" in out
