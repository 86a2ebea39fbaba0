"""--compile: the compiled training loss and importance-sampling pass compute what the eager ones do,
and a machine without a compiler gets one line and an eager run."""
from __future__ import annotations

import pytest
import torch

from aevb.config import Config
from aevb.data import load_dataset
from aevb.evaluate import _pass, evaluate, importance_sampled, sampling_pass
from aevb.train import Trainer


def digits(**train) -> Config:
    cfg = Config()
    cfg.data.dataset, cfg.data.train_size, cfg.data.test_size = "digits", 256, 64
    cfg.model.hidden, cfg.model.latent_dim = [32], 3
    for k, v in {"device": "cpu", **train}.items():
        setattr(cfg.train, k, v)
    return cfg


def test_a_compiled_loss_trains_like_the_eager_one():
    ends = {}
    for compile in (False, True):
        torch.manual_seed(1)
        trainer = Trainer(digits(compile=compile, beta_schedule="linear", warmup_epochs=1.0), load_dataset(digits().data))
        assert trainer.warnings == []
        ends[compile] = [trainer.epoch(e)["train_elbo"] for e in (1, 2)]
    assert type(trainer.algorithm.forward).__name__ == "CompiledLoss" and trainer.algorithm.forward.run is not \
        trainer.algorithm.forward.eager  # it compiled, and did not fall back
    # the same draws (fallback_random) through the same arithmetic, fused differently: equal to float32 rounding
    assert ends[True] == pytest.approx(ends[False], rel=1e-4)


def test_without_a_compiler_training_and_evaluation_run_eagerly_and_say_so(monkeypatch):
    monkeypatch.setattr("aevb.compiling.shutil.which", lambda name: None)
    trainer = Trainer(digits(compile=True), load_dataset(digits().data))
    assert trainer.warnings == ["--compile needs a C++ compiler on cpu, which is not installed here; "
                                "training without compiling"]
    assert trainer.algorithm.forward == trainer.algorithm.loss  # eager
    assert trainer.epoch(1)["train_elbo"] < 0
    run, why = sampling_pass(trainer.model, trainer.x_test, compile=True)
    assert run is _pass and "needs a C++ compiler" in why


def test_compiled_importance_sampling_agrees_with_eager_within_its_error():
    torch.manual_seed(0)
    trainer = Trainer(digits(), load_dataset(digits().data))
    trainer.epoch(1)
    model, x = trainer.model.eval(), trainer.x_test
    run, why = sampling_pass(model, x, compile=True)
    assert why is None and run is not _pass
    eager, se_e = importance_sampled(model, x, 500)
    fast, se_f = importance_sampled(model, x, 500, run_pass=run)
    se = (se_e.pow(2) + se_f.pow(2)).sqrt()
    assert ((eager - fast).abs() < 5 * se + 1e-4).all()  # independent draws: within 5 combined standard errors
    r = evaluate(model, x[:16], ks=(1, 50), compile=True)
    assert r["compiled"] and r["compile"] is None
