"""aevb reproduce end to end on the smoke budget: the table, the JSON, the paper's numbers beside ours,
and a second call that reuses the finished rows."""
from __future__ import annotations

import json

from aevb.cli import main
from aevb.reproduce.burda2015 import PAPER


def test_burda2015_smoke_writes_the_table_and_reuses_finished_rows(tmp_path, capsys):
    out = tmp_path / "burda"
    rows = "vae-k1-1layer,iwae-k5-2layer"
    assert main(["reproduce", "burda2015", "--budget", "smoke", "--rows", rows, "--out", str(out), "--quiet"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["budget"] == "smoke" and [r["row"] for r in results["rows"]] == rows.split(",")
    one, two = results["rows"]
    assert one["paper_nll"] == PAPER["vae-k1-1layer"][0] == 86.76 and two["paper_nll"] == 83.89
    assert len(one["active_units"]) == 1 and len(two["active_units"]) == 2 and one["epochs"] == 1
    assert one["nll"] > 0 and one["standard_error"] > 0 and one["nll"] <= -one["test_elbo"] + 5 * one["standard_error"]  # log p(x) ≥ ELBO
    config = json.loads((out / "runs" / "iwae-k5-2layer" / "config.json").read_text())
    assert config["model"]["model"] == "hierarchical" and config["train"]["estimator"] == "iwae"
    assert config["train"]["lr_schedule"] == "burda" and config["train"]["optimizer_eps"] == 1e-4
    table = (out / "table.md").read_text()
    assert "| vae-k1-1layer | 86.76 |" in table and f"{one['nll']:.2f} ± {one['standard_error']:.2f}" in table
    stamp = (out / "runs" / "vae-k1-1layer" / "metrics.jsonl").stat().st_mtime_ns
    assert main(["reproduce", "burda2015", "--budget", "smoke", "--rows", "vae-k1-1layer", "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "runs" / "vae-k1-1layer" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert json.loads((out / "results.json").read_text())["rows"] == [one]
    capsys.readouterr()
    assert main(["reproduce", "--list"]) == 0 and "--budget quick" in capsys.readouterr().out
    assert main(["reproduce", "burda2015", "--budget", "smoke", "--rows", "vae-k2-1layer", "--out", str(out)]) == 2
    assert "unknown row 'vae-k2-1layer'" in capsys.readouterr().err
