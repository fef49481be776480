"""Train to a certificate: stop training once PSIS certifies the amortized posterior of the observed data.

`Certificate(npe, data)` is a training monitor (`MultilevelNPE.train(monitor=)`, called every
`TrainConfig.check_every` steps). Each check draws from the amortized posterior of `data`, computes the PSIS
k-hat of the log ratios log p(theta, y) - log q(theta | y) (the model's exact joint density,
`mlnpe.consistency.log_joint`), and the NPE loss of a fixed set of held-out simulations. Training stops with the
reason "certificate" once k-hat is below `KHAT_REFINE` (0.7) and the held-out loss has not improved, by more than
0.1 %, for `patience` checks; otherwise the budget (steps or time limit)
ends it. Every check is recorded in `TrainHistory.checks` (step, seconds, k-hat, held-out loss and its standard
error).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ..consistency import has_likelihood, log_joint
from ..core.data import GroupedData, collate
from ..errors import ConfigError
from .policy import KHAT_REFINE
from .psis import psis

__all__ = ["Certificate", "observed_khat", "ratio_khat"]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def observed_khat(npe: Any, batch: Any, n_draws: int = 1000, seed: int = 0) -> float:
    """The PSIS k-hat of `n_draws` amortized draws of one collated dataset `batch` under `npe`'s current weights
    (inf when no log ratio is finite)."""
    est = npe.estimator
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        g, l, lq_g, lq_l = est.draw(int(n_draws), batch.to(_device(est)), generator)
        g, l, lq = g.cpu(), l.cpu(), (lq_g + lq_l.sum(-1)).cpu()
        log_ratio = (log_joint(npe.model, batch, g, l).double() - lq.double())[:, 0]
    return ratio_khat(log_ratio.numpy())


def ratio_khat(log_ratio: np.ndarray) -> float:
    """The PSIS k-hat of one set of log ratios log p(theta, y) - log q(theta | y) (S,): NaN and +inf ratios (a draw
    outside the model's support) count as weight zero; inf when no ratio is finite."""
    if not np.isfinite(log_ratio).any():
        return math.inf
    log_ratio = np.where(np.isnan(log_ratio) | (log_ratio == np.inf), -np.inf, log_ratio)
    return float(psis(log_ratio, warn=False).pareto_k)


class Certificate:
    """A training monitor that stops once the observed data's amortized posterior is certified by PSIS.

    Arguments:
        npe: the `MultilevelNPE` being trained (its model must have tractable densities).
        data: the observed dataset.
        n_draws: draws per k-hat (PSIS needs a tail: at least 100).
        validation: held-out simulated datasets for the NPE loss.
        patience: checks without improvement of the held-out loss before the certificate may stop training.
        seed: seed of the held-out simulations and the draws.
    """

    def __init__(
        self, npe: Any, data: GroupedData, n_draws: int = 1000, validation: int = 128, patience: int = 1, seed: int = 0
    ):
        if npe.model is None or not has_likelihood(npe.model):
            raise ConfigError("a certificate needs the model's exact joint density (log priors and log likelihood).")
        if int(n_draws) < 100:
            raise ConfigError(f"`n_draws` of a certificate must be at least 100, got {n_draws!r}.")
        self.npe, self.n_draws, self.patience, self.seed = npe, int(n_draws), int(patience), int(seed)
        npe.check_design(data)
        self.batch = collate([data])
        self.held_out = npe.simulate(int(validation), torch.Generator().manual_seed(self.seed + 31337))
        self.best, self.stale, self.start = math.inf, 0, time.perf_counter()
        self.records: list[dict[str, float]] = []

    def khat(self) -> float:
        """The PSIS k-hat of the amortized draws of the observed data under the current weights."""
        return observed_khat(self.npe, self.batch, self.n_draws, self.seed)

    def held_out_loss(self) -> tuple[float, float]:
        """The mean NPE loss (eq. 13) of the held-out simulations and its standard error."""
        s = self.held_out.to(_device(self.npe.estimator))
        with torch.no_grad():
            losses = self.npe.estimator.loss(s.global_params, s.local_params, s.batch).double().cpu()
        return float(losses.mean()), float(losses.std() / math.sqrt(losses.numel()))

    def __call__(self, step: int) -> str | None:
        khat, (loss, se) = self.khat(), self.held_out_loss()
        # an improvement counts when it exceeds 0.1 % of the loss (a standard error over the held-out datasets,
        # 0.5-1 % here, stopped sleepstudy and seeds at k-hat 0.5 with sd ratios down to 0.7: BENCHMARKS.md)
        if not math.isfinite(self.best) or loss < self.best - 1e-3 * max(1.0, abs(self.best)):
            self.best, self.stale = loss, 0
        else:
            self.stale += 1
        self.records.append({"step": int(step), "seconds": time.perf_counter() - self.start, "khat": khat,
                             "held_out_loss": loss, "held_out_se": se})  # fmt: skip
        self.npe.history.checks.append(dict(self.records[-1]))
        if khat < KHAT_REFINE and self.stale >= self.patience:
            return "certificate"
        return None
