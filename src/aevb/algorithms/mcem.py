"""Monte Carlo EM (Kingma & Welling 2013, appendix E), the paper's baseline that needs no encoder:
the E-step samples the posterior p_θ(z|x) ∝ p_θ(x|z) p(z) by Hamiltonian Monte Carlo with the gradient
∇_z log p(z) + ∇_z log p_θ(x|z), the M-step ascends log p_θ(x, z) at those samples.

One persistent chain per training example, started at a draw of the prior, and one HMC step size per
chain. Each step takes a batch of examples: their chains advance by ``hmc_steps`` HMC iterations of
``leapfrog_steps`` leapfrog steps (aevb.inference.hmc), every chain's step size adapting toward the
acceptance rate ``hmc_acceptance`` by a Robbins-Monro update of log ε with the constant gain
ADAPTATION_GAIN (constant, since the posterior moves with θ: decreasing gains would stop following it);
then ``m_steps`` optimizer steps on θ minimise

    -(1/M) Σ_i log p_θ(x_i, z_i)   (+ the --theta prior term, through ``Algorithm.update``)

at the chains' states z_i. The paper: 10 leapfrog steps at a tuned 90% acceptance, then 5 weight
updates with Adagrad. The encoder q(z|x) is neither used nor trained (it keeps its initial weights),
so the run reports no ELBO: see ``MCEM.test``. The chains and step sizes are checkpointed with the
optimizer state (``state_dict``), so a resumed run continues them bit-identically.
"""
from __future__ import annotations

import torch

from ..config import TrainConfig
from ..distributed import Group
from ..errors import ConfigError
from ..inference.hmc import INITIAL_STEP_SIZE, adapt_step_size, hmc_step
from ..models import DecodesLatent
from ..objectives import log_joint
from .base import ALGORITHMS, Algorithm

ADAPTATION_GAIN = 0.1  # γ of log ε ← log ε + γ(α - δ): log ε settles within ~±0.1 of its fixed point
BOUND_OPTIONS = ("estimator", "samples", "beta", "beta_schedule", "free_bits")  # what shapes a bound, which MCEM has not


@ALGORITHMS.register("mcem")
class MCEM(Algorithm):
    """Monte Carlo EM over persistent HMC chains, one per training example (see the module)."""

    requires = DecodesLatent
    requirement = "models whose decoder alone gives p(x|z) (vae, hierarchical)"
    options = ("hmc_steps", "leapfrog_steps", "hmc_acceptance", "m_steps")

    def __init__(self, cfg, model, optimizer, data, device, group=Group()):
        super().__init__(cfg, model, optimizer, data, device, group)
        t, defaults = cfg.train, TrainConfig()
        for key in BOUND_OPTIONS:
            value, default = getattr(t, key), getattr(defaults, key)
            if value != default:
                flag = f"--{key.replace('_', '-')}"
                raise ConfigError(f"{flag} {value} shapes a variational bound, and --algorithm mcem has none (it ascends "
                                  f"log p(x, z) at posterior samples): leave it out or set {flag} {default}")
        if cfg.model.theta == "vb":
            raise ConfigError("--algorithm mcem needs one θ for the whole of an HMC trajectory, and --theta vb draws "
                              "a new one on every pass: use --theta ml or map")
        if t.early_stopping is not None or t.lr_schedule == "plateau":
            raise ConfigError("--early-stopping and --lr-schedule plateau watch an ELBO, and --algorithm mcem has "
                              "none (its encoder is not trained): drop them")
        if group.active:
            raise ConfigError("--algorithm mcem keeps one chain per training example in one process; run it "
                              "without torchrun")
        self.x = data.train_x.to(device)
        with torch.no_grad():
            self.z = model.prior().sample((self.n,))
        self.step_size = torch.full((self.n,), INITIAL_STEP_SIZE, device=device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The chains' states (N, latent_dim) and step sizes (N,)."""
        return {"z": self.z, "step_size": self.step_size}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, now in self.state_dict().items():
            saved = state.get(name)
            if not isinstance(saved, torch.Tensor) or saved.shape != now.shape or not saved.isfinite().all():
                raise ValueError(f"the chains' {name} is missing, of another shape than {tuple(now.shape)}, or not finite")
            now.copy_(saved)

    def loss(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-(1/M) Σ_i log p_θ(x_i, z_i)."""
        return -log_joint(self.model, x, z).mean()

    def begin_epoch(self) -> None:
        super().begin_epoch()
        self.log_pxz = torch.zeros((), device=self.device)
        self.accept = torch.zeros((), device=self.device)

    def step(self, idx: torch.Tensor, step: int, progress: float) -> None:
        t = self.cfg.train
        x = self.binarize(self.x[idx])
        z, eps = self.z[idx], self.step_size[idx]
        with self.precision.full():  # the acceptance test compares energies: in fp32
            for _ in range(t.hmc_steps):
                out = hmc_step(lambda z: log_joint(self.model, x, z), z, eps, t.leapfrog_steps)
                z, eps = out.z, adapt_step_size(eps, out.accept_prob, t.hmc_acceptance, ADAPTATION_GAIN)
                self.accept += out.accept_prob.sum()
        self.z[idx], self.step_size[idx] = z, eps
        self.log_pxz += out.log_prob.sum()
        for _ in range(t.m_steps):
            self.update(self.forward(x, z))

    def end_epoch(self) -> dict[str, float]:
        """``train_log_pxz``: the mean log p_θ(x, z) of the chains after their HMC iterations, before the
        M-steps; ``train_accept``: the mean acceptance probability of the epoch's HMC iterations;
        ``train_step_size``: the mean step size of the chains at its end."""
        return ({"train_log_pxz": self.log_pxz.item() / self.n,
                 "train_accept": self.accept.item() / (self.n * self.cfg.train.hmc_steps),
                 "train_step_size": self.step_size.mean().item()} | self.update_metrics())

    def test(self, x: torch.Tensor, y: torch.Tensor | None, s: torch.Tensor | None = None) -> dict[str, float]:
        """None: the ELBO of the untrained encoder would be a valid bound on log p(x) but says nothing of
        the model, and an honest log p(x) (the estimator of appendix D, ``aevb evaluate --hmc-likelihood``)
        costs far more than an epoch."""
        return {}
