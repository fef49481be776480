"""Self-consistency of the amortized posterior (Schmitt et al., ICML 2024, arXiv 2310.04395).

For the true posterior, log p(theta) + log p(x | theta) - log q(theta | x) equals log p(x) for every theta, so its
spread over draws of theta is zero exactly there. The self-consistency loss is that spread: the variance, over a
few draws theta_s from q (held fixed, no gradient through the sampling), of

    r_s = log p(tau, omega) + sum_j [log p(lambda_j | tau, omega) + log p(x_j | lambda_j, omega)] - log q(theta_s | x),

with log q the joint factorized density (the global flow plus the sum of the local flows over real groups). It
needs the model's three log densities (`TwoLevelModel.log_prior_global`, `log_prior_local`, `log_likelihood`),
and is added to the NPE loss (eq. 13) with the weight `TrainConfig.self_consistency`.

Neither loss needs true parameters, so each also applies to data that no simulation produced (Mishra et al.
2025, arXiv 2501.13483): the observed dataset, its leave-one-group-out subsets and bootstrap resamples of its
groups (:class:`ObservedSets`), trained on without labels (`TrainConfig.observed_loss`, weight
`TrainConfig.observed_weight`). Besides self-consistency, :func:`reverse_kl` offers the negative evidence lower
bound of the same joint density, whose pathwise gradient is far less noisy on one dataset.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from .core.data import GroupedBatch, GroupedData, collate
from .core.spec import TwoLevelModel
from .errors import DataError
from .estimator import MultilevelEstimator

__all__ = ["ObservedSets", "has_likelihood", "log_joint", "reverse_kl", "self_consistency"]

_DENSITIES = ("log_prior_global", "log_prior_local", "log_likelihood")


def has_likelihood(model: TwoLevelModel) -> bool:
    """Whether `model` implements the prior densities and the likelihood (not only the simulators)."""
    return all(getattr(type(model), name) is not getattr(TwoLevelModel, name) for name in _DENSITIES)


def log_joint(model: TwoLevelModel, batch: GroupedBatch, global_params: Tensor, local_params: Tensor) -> Tensor:
    """log p(theta) + log p(x | theta) of constrained draws: global (S, B, G), local (S, B, J, L) -> (S, B).

    Padded groups contribute nothing (their local draws are junk and are never evaluated into the sum). The
    model's densities run on the CPU (models keep their tensors there); draws on another device (networks
    trained on CUDA) are moved there and the result back, gradients included."""
    device = global_params.device
    if device.type != "cpu":
        out = log_joint(model, batch.to("cpu"), global_params.cpu(), local_params.cpu())
        return out.to(device)
    lp_local = model.log_prior_local(local_params, global_params)
    lp = torch.where(batch.group_mask, lp_local + model.log_likelihood(batch, global_params, local_params), 0.0)
    return model.log_prior_global(global_params) + lp.sum(-1)


def self_consistency(
    estimator: MultilevelEstimator, model: TwoLevelModel, batch: GroupedBatch, n_draws: int, generator: torch.Generator
) -> Tensor:
    """The self-consistency loss of each dataset in `batch`: (B,).

    Arguments:
        estimator: the networks being trained (gradients flow through log q only: the draws are held fixed, as
            in Schmitt et al. Reparameterized draws would let q lower the variance by moving its draws to where
            log p(theta, x) is flat; on one dataset that drove sigma 5 posterior sds off (BENCHMARKS.md)).
        model: a model with tractable densities (`has_likelihood`).
        batch: the datasets, y included.
        n_draws: draws of theta from q per dataset (at least 2).
        generator: randomness of those draws.

    Returns:
        log(1 + Var_s(r_s)) per dataset: the variance where it is small (near the true posterior), and a gradient
        divided by 1 + Var where a poor early q makes it huge, so that it cannot swamp the NPE loss. 0 for a dataset
        where some r_s is not finite (a draw outside the prior's support), which then only contributes its NPE loss.
    """
    h_local, h_global = summaries = estimator.summarize(batch)
    with torch.no_grad():
        gu = estimator.global_sample(n_draws, h_global.detach(), generator)
        lu = estimator.local_sample(h_local.detach(), gu, generator)
        g, l = estimator.global_bijector.forward(gu), estimator.local_bijector.forward(lu)
        log_p = log_joint(model, batch, g, l)
    lq_global, lq_local = estimator.log_prob(g, l, batch, summaries=summaries)
    r = log_p - (lq_global + lq_local.sum(-1))  # (S, B)
    finite = torch.isfinite(r).all(0)
    r = torch.where(finite, r, 0.0)
    return torch.where(finite, torch.log1p(r.var(0)), 0.0)


def reverse_kl(
    estimator: MultilevelEstimator, model: TwoLevelModel, batch: GroupedBatch, n_draws: int, generator: torch.Generator
) -> Tensor:
    """KL(q || p) of each dataset in `batch` up to its constant log p(x): mean_s [log q(theta_s | x) -
    log p(theta_s, x)] over reparameterized draws theta_s = T(noise_s) of the joint factorized q: (B,).

    The negative evidence lower bound, minimized (to -log p(x)) exactly at the true posterior. Its pathwise
    gradient flows through the draws into log p(theta, x) and log q. Draws with a non-finite log density (outside
    the prior's support) are left out of the mean. (The importance-weighted bound over the same draws, which covers
    more of the posterior's mass, was less accurate on sleepstudy and radon: BENCHMARKS.md.)
    """
    g, l, lq_global, lq_local = estimator.draw(n_draws, batch, generator)
    log_p = log_joint(model, batch, g, l)
    finite = torch.isfinite(log_p) & torch.isfinite(lq_global) & torch.isfinite(lq_local.sum(-1))  # (S, B)
    if not finite.all():
        # Recompute with the failed draws held fixed: the derivative of a non-finite density (an sd that underflowed
        # to 0) is not finite either, and 0 * inf would turn every gradient into NaN.
        g = torch.where(finite[..., None], g, g.detach())
        l = torch.where(finite[..., None, None], l, l.detach())
        log_p = log_joint(model, batch, g, l)
    gap = torch.where(finite, (lq_global + lq_local.sum(-1)) - log_p, 0.0)
    return gap.sum(0) / finite.sum(0).clamp_min(1)


class ObservedSets:
    """Unlabeled datasets around observed ones, for self-consistency on real data (Mishra et al. 2025).

    Each call to :meth:`batch` returns one observed dataset as it is (in turn, when there are several) and k - 1
    others, each a leave-one-group-out subset (one random group removed) or a bootstrap resample of the groups
    (J groups drawn with replacement, each with all its rows) of an observed dataset drawn at random, with equal
    probability. Subsets that would fall below `min_groups` are replaced by resamples.

    Arguments:
        data: the observed dataset, or a non-empty sequence of them.
        min_groups: the fewest groups the amortizer was trained on.
    """

    def __init__(self, data: GroupedData | Sequence[GroupedData], min_groups: int = 1):
        self.datasets = [data] if isinstance(data, GroupedData) else list(data)
        if not self.datasets:
            raise DataError("`observed` must hold at least one dataset, got an empty sequence.")
        self.min_groups, self._turn = int(min_groups), 0
        self._observed = [collate([d]) for d in self.datasets]

    def batch(self, k: int, generator: torch.Generator) -> GroupedBatch:
        """One observed dataset and k - 1 leave-one-group-out subsets or bootstrap resamples, collated."""
        first = self._turn % len(self.datasets)
        self._turn += 1
        if k <= 1:
            return self._observed[first]
        datasets = [self.datasets[first]]
        for _ in range(k - 1):
            source = self.datasets[0]
            if len(self.datasets) > 1:
                source = self.datasets[int(torch.randint(0, len(self.datasets), (1,), generator=generator))]
            j = source.n_groups
            u = torch.rand(2, generator=generator).tolist()
            if u[0] < 0.5 and j - 1 >= max(self.min_groups, 1):
                left = int(u[1] * j)
                datasets.append(source.subset([g for g in range(j) if g != left]))
            else:
                picks = torch.randint(0, j, (j,), generator=generator).numpy()
                datasets.append(source.subset(np.sort(picks).tolist()))
        return collate(datasets)
