"""aevb reproduce kingma2013-fig2 … fig5 end to end on the smoke budget (figure, JSON, page; a second call
reuses what is done), the paper's set-up against configs/kingma2013-*.toml, and the budgets' points."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from aevb.cli import main
from aevb.config import Config, apply, load_toml
from aevb.data import load_dataset
from aevb.reproduce.kingma2013 import Fig3, choose_step_size, evaluations_per_example, log_points, paper_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(args, capsys) -> str:
    code = main(["reproduce", *args, "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("dataset", ["mnist", "frey-face"])
def test_the_paper_setup_is_the_config_files(dataset):
    from_file = Config()
    apply(from_file, load_toml(CONFIGS / f"kingma2013-{dataset}.toml"), "toml")
    ours = paper_config(dataset, from_file.model.latent_dim)
    ours.train.epochs = from_file.train.epochs
    assert from_file.to_dict() == ours.to_dict()


def test_log_points_are_log_spaced_and_end_at_the_budget():
    points = log_points(1667)
    assert points[0] == 1 and points[-1] == 1667 and list(points) == sorted(set(points))
    ratios = [b / a for a, b in zip(points[6:], points[7:])]  # past the integer rounding of the first few
    assert max(ratios) / min(ratios) < 1.3


def test_fig3_points_give_every_curve_the_same_samples():
    b = Fig3.BUDGETS["quick"]
    for n in b.train_sizes:
        for algorithm in ("sgvb", "wake-sleep", "mcem"):
            cfg = paper_config("mnist", 3, algorithm, 100)
            points = Fig3.epochs(b, cfg, n)
            assert points[-1] * n * evaluations_per_example(cfg) == b.options["samples"]
            assert 2 <= len(points) <= 3 and points == tuple(sorted(points))


def test_the_step_size_is_the_one_that_trains_best_first_and_is_kept(tmp_path):
    cfg = paper_config("mnist", 3)
    cfg.data.train_size = 300
    data = load_dataset(cfg.data)
    where = tmp_path / "runs" / "curve"
    chosen = choose_step_size(where, cfg, data, (1e-4, 0.1), quiet=True, probe_samples=3000)
    record = json.loads((where / "step_size.json").read_text())
    assert record["probe_epochs"] == 10 and record["metric"] == "bound on 1000 training images"
    scores = {float(lr): v for lr, v in record["scores"].items()}
    assert chosen == max(scores, key=scores.get) == 0.1  # 10^-4 barely moves from the N(0, 0.01²) start
    assert choose_step_size(where, cfg, data, (1e-4, 0.1), quiet=True) == 0.1  # read back, not probed again
    assert choose_step_size(tmp_path / "none", cfg, data, None, quiet=True) == cfg.train.lr == 0.02


def test_fig2_smoke_writes_figure_json_page_and_resumes(tmp_path, capsys):
    out = tmp_path / "fig2"
    page = run(["kingma2013-fig2", "--budget", "smoke", "--out", str(out)], capsys)
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"3", "20"}
    for nz, curves in results["curves"].items():
        assert set(curves) == {"sgvb", "wake-sleep"}
        for points in curves.values():
            assert [p["epoch"] for p in points] == [1, 2] and [p["samples"] for p in points] == [300, 600]
            assert all(p["test"] < 0 and p["train"] < 0 for p in points)
        config = json.loads((out / "runs" / f"mnist-wake-sleep-nz{nz}" / "lr0.02" / "config.json").read_text())
        assert config["train"]["algorithm"] == "wake-sleep" and config["model"]["latent_dim"] == int(nz)
    holds = all(c["sgvb"][-1]["test"] > c["wake-sleep"][-1]["test"] for c in results["curves"].values())
    assert results["ordering_holds"] == holds and ("**holds**" in page) == holds
    assert (out / "page.md").read_text() in page and "| N_z | samples |" in page
    with Image.open(out / "fig2.png") as png:
        assert png.size[0] > 2 * png.size[1]  # two panels side by side
    metrics = out / "runs" / "mnist-sgvb-nz3" / "lr0.02" / "metrics.jsonl"
    stamp = metrics.stat().st_mtime_ns
    run(["kingma2013-fig2", "--budget", "smoke", "--out", str(out)], capsys)
    assert metrics.stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text()) == results


def test_fig3_smoke_compares_three_algorithms_on_two_training_sets(tmp_path, capsys):
    out = tmp_path / "fig3"
    run(["kingma2013-fig3", "--budget", "smoke", "--out", str(out)], capsys)
    results = json.loads((out / "results.json").read_text())
    assert set(results["curves"]) == {"100", "200"}
    for n, curves in results["curves"].items():
        assert set(curves) == {"sgvb", "wake-sleep", "mcem"}
        for algorithm, points in curves.items():
            assert points[-1]["samples"] == 1000  # the same training samples evaluated (MCEM: 5 per example an epoch)
            assert all(p["test_se"] > 0 and p["test"] < 0 and 0 <= p["test_khat"] <= 1 for p in points)
        config = json.loads((out / "runs" / f"n{n}-mcem" / "lr0.02" / "config.json").read_text())
        assert config["train"]["algorithm"] == "mcem" and all(p["lr"] == 0.02 for p in curves["mcem"])
    assert (out / "fig3.png").is_file() and "MCEM train / test" in (out / "page.md").read_text()


def test_fig4_and_fig5_smoke_draw_the_grids(tmp_path, capsys):
    page = run(["kingma2013-fig4", "--budget", "smoke", "--out", str(tmp_path / "fig4")], capsys)
    with Image.open(tmp_path / "fig4" / "fig4.png") as png:
        assert png.size[0] == png.size[1] >= 20 * 28 * 2  # a 20 × 20 grid of 28 × 28 digits at scale 2
    assert "![Figure 4](fig4.png)" in page
    run(["kingma2013-fig5", "--budget", "smoke", "--out", str(tmp_path / "fig5")], capsys)
    results = json.loads((tmp_path / "fig5" / "results.json").read_text())
    assert set(results["curves"]) == {"2", "5", "10", "20"} and (tmp_path / "fig5" / "fig5.png").is_file()


def test_options_that_do_not_apply_are_refused(tmp_path, capsys):
    assert main(["reproduce", "kingma2013-fig3", "--dataset", "frey-face", "--out", str(tmp_path / "x")]) == 2
    assert "--dataset does not apply to kingma2013-fig3" in capsys.readouterr().err
    assert main(["reproduce", "kingma2013-fig2", "--rows", "a", "--out", str(tmp_path / "x")]) == 2
    assert "--rows does not apply to kingma2013-fig2; it takes --dataset" in capsys.readouterr().err
    assert main(["reproduce", "kingma2013-fig2", "--dataset", "cifar10", "--out", str(tmp_path / "x")]) == 2
    assert "kingma2013 trains on mnist or frey-face" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
