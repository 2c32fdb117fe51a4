"""`python -m evaluation.scaling`: the paper's tables, the s(m) formula with explicit bounds, user points."""

from __future__ import annotations

import json

import pytest

import golden
from evaluation import scaling

ANALYSES = golden.meta("analyses")["json"]


def test_vendored_tables_are_the_fixture():
    assert json.loads(scaling.PAPER_TABLES.read_text()) == ANALYSES["paper/paper_tables.json"]
    assert json.loads(scaling.SCORE_FIT.read_text()) == ANALYSES["paper/overall_score_fit.json"]


def test_paper_fit_reproduces_every_printed_score():
    points = scaling.paper_points(scaling.make_bounds(None, None, paper_fit=True))
    assert len(points) == 38 and {p["axis"] for p in points} == set(scaling.AXES)
    worst = max(abs(p["s_m"] - p["s_m_printed"]) for p in points)
    assert worst <= ANALYSES["paper/overall_score_fit.json"]["minmax"]["max_abs_residual"] + 1e-3
    vit_b = [p for p in points if p["condition"] == "Encoder=ViT-B"]
    assert vit_b[0]["x"] == pytest.approx(85.05, abs=0.01)  # 12 blocks of width 768
    assert sorted({p["x"] for p in points if p["axis"] == "patches"}) == [125, 250, 500, 640]


def test_minmax_bounds_score_and_are_printed_beside_every_score(tmp_path, capsys):
    argv = ["--lo", *["0"] * 10, "--hi", *["100"] * 10, "--out", str(tmp_path)]
    assert scaling.main(argv) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "s(m) =" in line]
    assert len(lines) == 38 and all("lo/hi = BO 0/100, CD 0/100" in line for line in lines)
    result = json.loads((tmp_path / "scaling.json").read_text())
    row = result["paper"][0]  # with bounds 0..100, s(m) is the plain mean of the ten tasks
    assert row["s_m"] == pytest.approx(sum(row["tasks"].values()) / 10)
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_user_results_placed_by_their_checkpoint(tmp_path, tiny_checkpoint, capsys):
    tasks = {t.dirname: {"mean": 50.0 + i} for i, t in enumerate(scaling.TASKS)}
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"checkpoint": str(tiny_checkpoint), "tasks": tasks}))
    lo = [f"{k}=10" for k in scaling.TASK_KEYS]
    hi = [f"{k}=90" for k in scaling.TASK_KEYS]
    assert scaling.main(["--results", f"{run}@label=mine,data_percent=50", "--lo", *lo, "--hi", *hi,
                         "--out", str(tmp_path / "o")]) == 0
    mine = json.loads((tmp_path / "o" / "scaling.json").read_text())["yours"][0]
    assert mine["label"] == "mine" and mine["model"] == "MW-MAE" and mine["data_percent"] == 50
    assert mine["patches"] == 250 and mine["decoder_depth"] == 2
    assert mine["encoder_params"] == pytest.approx(scaling.block_params(192, 2))
    assert mine["s_m"] == pytest.approx(10 * sum((50 + i - 10) / 80 for i in range(10)))
    assert "mine" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--lo", *["0"] * 10], "go together"),
    (["--lo", *["0"] * 9, "--hi", *["1"] * 9], "10 values"),
    (["--lo", *["5"] * 10, "--hi", *["5"] * 10], "hi > lo"),
    (["--paper-fit", "--lo", *["0"] * 10, "--hi", *["1"] * 10], "either"),
])
def test_bad_bounds(argv, message, tmp_path, caplog):
    assert scaling.main([*argv, "--out", str(tmp_path)]) == 2
    assert message in caplog.text


def test_user_results_need_bounds_and_all_tasks(tmp_path, caplog):
    partial = tmp_path / "p.json"
    partial.write_text(json.dumps({"tasks": {"BO": 90.0}}))
    assert scaling.main(["--results", str(partial), "--out", str(tmp_path)]) == 2
    assert "needs normalisation bounds" in caplog.text
    assert scaling.main(["--results", str(partial), "--paper-fit", "--out", str(tmp_path)]) == 2
    assert "missing" in caplog.text
