"""Shared fixtures. The math tests (test_distributions, test_objectives) use ``torch_seed`` and
``assert_within_se``; names are kept specific so that other fixtures can sit beside them."""
from __future__ import annotations

import pytest
import torch

pytest_plugins = ("browser",)  # tests/browser.py: the ``browser`` fixture, headless Chromium over WebDriver


@pytest.fixture
def torch_seed():
    """Seed torch's global generator (the one torch.distributions samples from) with 0 for the
    test, and put the previous state back afterwards."""
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    yield 0
    torch.random.set_rng_state(state)


# Monte Carlo checks accept |estimate - exact| <= 5 standard errors. For a correct estimator the
# error is close to normal, so one check fails by chance with probability 5.7e-7 (the suite makes a
# few hundred, and seeds are fixed anyway); a wrong formula fails once its bias exceeds 5 SE, and
# the sample sizes below make the SE small next to the biases that matter.
SE_MULTIPLE = 5.0


def _assert_within_se(estimate, exact, se, what: str = "estimate", k: float = SE_MULTIPLE, atol: float = 0.0):
    estimate, exact, se = torch.broadcast_tensors(
        *(torch.as_tensor(t, dtype=torch.float64).detach() for t in (estimate, exact, se)))
    err = (estimate - exact).abs()
    bad = err > k * se + atol
    assert not bad.any(), (
        f"{what}: |estimate - exact| > {k} SE + {atol}\n estimate {estimate[bad].tolist()}\n"
        f" exact    {exact[bad].tolist()}\n se       {se[bad].tolist()}"
    )


@pytest.fixture
def assert_within_se():
    """``assert_within_se(estimate, exact, se, what, k=5, atol=0)``, elementwise over tensors."""
    return _assert_within_se


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (restored after): tiny tensor ops on a shared 2-core machine
    run much faster without thread synchronisation, and bit-identity is claimed per thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
