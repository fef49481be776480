"""Self-consistency of the amortized posterior (Schmitt et al., ICML 2024, arXiv 2310.04395).

For the true posterior, log p(theta) + log p(x | theta) - log q(theta | x) equals log p(x) for every theta, so its
spread over draws of theta is zero exactly there. The self-consistency loss is that spread: the variance, over a
few draws theta_s from q (held fixed, no gradient through the sampling), of

    r_s = log p(tau, omega) + sum_j [log p(lambda_j | tau, omega) + log p(x_j | lambda_j, omega)] - log q(theta_s | x),

with log q the joint factorized density (the global flow plus the sum of the local flows over real groups). It
needs the model's three log densities (`TwoLevelModel.log_prior_global`, `log_prior_local`, `log_likelihood`),
and is added to the NPE loss (eq. 13) with the weight `TrainConfig.self_consistency`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .core.data import GroupedBatch
from .core.spec import TwoLevelModel
from .estimator import MultilevelEstimator

__all__ = ["has_likelihood", "log_joint", "self_consistency"]

_DENSITIES = ("log_prior_global", "log_prior_local", "log_likelihood")


def has_likelihood(model: TwoLevelModel) -> bool:
    """Whether `model` implements the prior densities and the likelihood (not only the simulators)."""
    return all(getattr(type(model), name) is not getattr(TwoLevelModel, name) for name in _DENSITIES)


def log_joint(model: TwoLevelModel, batch: GroupedBatch, global_params: Tensor, local_params: Tensor) -> Tensor:
    """log p(theta) + log p(x | theta) of constrained draws: global (S, B, G), local (S, B, J, L) -> (S, B).

    Padded groups contribute nothing (their local draws are junk and are never evaluated into the sum)."""
    lp_local = model.log_prior_local(local_params, global_params)
    lp = torch.where(batch.group_mask, lp_local + model.log_likelihood(batch, global_params, local_params), 0.0)
    return model.log_prior_global(global_params) + lp.sum(-1)


def self_consistency(
    estimator: MultilevelEstimator, model: TwoLevelModel, batch: GroupedBatch, n_draws: int, generator: torch.Generator
) -> Tensor:
    """The self-consistency loss of each dataset in `batch`: (B,).

    Arguments:
        estimator: the networks being trained (gradients flow through log q only).
        model: a model with tractable densities (`has_likelihood`).
        batch: the datasets, y included.
        n_draws: draws of theta from q per dataset (at least 2).
        generator: randomness of those draws.

    Returns:
        log(1 + Var_s(r_s)) per dataset: the variance where it is small (near the true posterior), and a gradient
        divided by 1 + Var where a poor early q makes it huge, so that it cannot swamp the NPE loss. 0 for a dataset
        where some r_s is not finite (a draw outside the prior's support), which then only contributes its NPE loss.
    """
    h_local, h_global = estimator.summarize(batch)
    with torch.no_grad():
        gu = estimator.global_sample(n_draws, h_global.detach(), generator)
        lu = estimator.local_sample(h_local.detach(), gu, generator)
        g, l = estimator.global_bijector.forward(gu), estimator.local_bijector.forward(lu)
        log_p = log_joint(model, batch, g, l)
    lq_global, lq_local = estimator.log_prob(g, l, batch, summaries=(h_local, h_global))
    r = log_p - (lq_global + lq_local.sum(-1))  # (S, B)
    finite = torch.isfinite(r).all(0)
    r = torch.where(finite, r, 0.0)
    return torch.where(finite, torch.log1p(r.var(0)), 0.0)
