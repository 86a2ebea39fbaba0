"""The training loop: NaN guard, checkpoints, resume."""
import json

import pytest
import torch

import aevb
from aevb import rundir
from aevb.config import Config
from aevb.errors import RunError, TrainingDiverged
from aevb.objectives import ESTIMATORS


def small_config(**train) -> Config:
    cfg = Config()
    cfg.data.dataset = "digits"
    cfg.model.hidden, cfg.model.latent_dim = [16], 2
    for k, v in {"epochs": 3, **train}.items():
        setattr(cfg.train, k, v)
    return cfg


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    estimator, calls = ESTIMATORS["B"], []
    steps_per_epoch = -(-1437 // 128)

    def poisoned(model, x, samples=1, beta=1.0):
        calls.append(1)
        terms = estimator(model, x, samples, beta)
        if len(calls) == steps_per_epoch + 1 + 3:  # third step of epoch 2 (after one test-set batch)
            terms.objective = terms.objective * float("nan")
        return terms

    monkeypatch.setitem(ESTIMATORS._items, "B", poisoned)
    cfg = small_config(estimator="B")
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 3.*epoch 1\) is kept"):
        aevb.train(cfg, tmp_path / "run", quiet=True)
    assert [json.loads(l)["epoch"] for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()] == [1]
    model = aevb.load(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_resume_refuses_a_corrupt_optimizer_state(tmp_path):
    run = aevb.train(small_config(epochs=1), tmp_path / "run", quiet=True)
    (run / "optimizer.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RunError, match="cannot be resumed"):
        aevb.train(small_config(epochs=2), run, resume=True, quiet=True)


def test_weights_of_another_model_shape_are_refused(tmp_path):
    run = aevb.train(small_config(epochs=1), tmp_path / "run", quiet=True)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["latent_dim"] = 3
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match="does not fit the model"):
        aevb.load(run)


def test_checkpoint_files_are_written_atomically(tmp_path):
    run = aevb.train(small_config(epochs=1), tmp_path / "run", quiet=True)
    assert not list(run.glob(".*tmp"))  # no temporary files left behind
    assert rundir.load_weights(run, aevb.load(run)) == 1
