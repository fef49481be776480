"""sbi compatibility: the factorized estimator behind sbi's `ConditionalDensityEstimator` interface.

sbi works with flat, fixed-shape tensors. The adapter packs the data and the parameters into that form:
- The condition is a padded tensor (B, J, N, y_dim + x_dim + 1). Its last channel is the row mask (1 for a
  real row), so no NaN padding is used.
- The input is the constrained parameter vector [globals (G), locals of group 1..J (J * L)].

Use it to pass a trained mlnpe estimator to sbi's tools. sbi is imported when this module is imported, which
takes a few seconds, so `import mlnpe` never imports it.

Example:
    >>> from mlnpe.sbi_adapter import SbiEstimator, pack_condition
    >>> est = SbiEstimator(npe.estimator, n_groups=30, n_rows=50, row_features=1)   # doctest: +SKIP
    >>> est.log_prob(theta, pack_condition(batch))                                  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from sbi.neural_nets.estimators.base import ConditionalDensityEstimator
from torch import Tensor

from .core.data import GroupedBatch
from .errors import DataError
from .estimator import MultilevelEstimator

__all__ = ["SbiEstimator", "pack_condition", "unpack_condition", "pack_theta", "unpack_theta"]


def pack_condition(batch: GroupedBatch, n_groups: int | None = None, n_rows: int | None = None) -> Tensor:
    """GroupedBatch -> (B, J, N, d + 1) with the row mask as the last channel, padded to the given sizes."""
    rows = torch.cat([batch.rows(), batch.row_mask[..., None].to(batch.y.dtype)], -1)
    b, j, n, d = rows.shape
    j_to, n_to = n_groups or j, n_rows or n
    if j_to < j or n_to < n:
        raise DataError(f"the batch has {j} groups x {n} rows, more than the target shape {j_to} x {n_to}.")
    out = rows.new_zeros(b, j_to, n_to, d)
    out[:, :j, :n] = rows
    return out


def unpack_condition(condition: Tensor, y_dim: int) -> GroupedBatch:
    """(B, J, N, d + 1) -> GroupedBatch (the first y_dim channels are responses, the rest covariates)."""
    row_mask = condition[..., -1] > 0.5
    values = condition[..., :-1]
    x = values[..., y_dim:] if values.shape[-1] > y_dim else None
    return GroupedBatch(values[..., :y_dim], row_mask, row_mask.any(-1), x)


def pack_theta(global_params: Tensor, local_params: Tensor) -> Tensor:
    """(..., G), (..., J, L) -> (..., G + J * L)."""
    return torch.cat([global_params, local_params.flatten(-2)], -1)


def unpack_theta(theta: Tensor, n_global: int, n_local: int) -> tuple[Tensor, Tensor]:
    """(..., G + J * L) -> (..., G), (..., J, L)."""
    g, l = theta[..., :n_global], theta[..., n_global:]
    return g, l.reshape(*l.shape[:-1], -1, n_local)


class SbiEstimator(ConditionalDensityEstimator):
    """A MultilevelEstimator seen as an sbi ConditionalDensityEstimator with fixed J and N.

    Arguments:
        estimator: the trained factorized estimator.
        n_groups: J of the padded condition.
        n_rows: N of the padded condition.
        row_features: y_dim + x_dim.
        y_dim: number of response columns.
    """

    def __init__(self, estimator: MultilevelEstimator, n_groups: int, n_rows: int, row_features: int, y_dim: int = 1):
        g = estimator.global_bijector.constrained_dim()
        l = estimator.local_bijector.constrained_dim()
        super().__init__(estimator, torch.Size([g + n_groups * l]), torch.Size([n_groups, n_rows, row_features + 1]))
        self.n_global, self.n_local, self.y_dim = g, l, y_dim

    def log_prob(self, input: Tensor, condition: Tensor, **kwargs) -> Tensor:
        """input (S, B, D) or (B, D), condition (B, J, N, d + 1) -> (S, B); padded groups contribute nothing."""
        squeeze = input.dim() == 2
        theta = input[None] if squeeze else input
        batch = unpack_condition(condition, self.y_dim)
        g, l = unpack_theta(theta, self.n_global, self.n_local)
        lp_g, lp_l = self.net.log_prob(g, l, batch)
        return lp_g + lp_l.sum(-1)

    def loss(self, input: Tensor, condition: Tensor, **kwargs) -> Tensor:
        """(B, D), (B, J, N, d + 1) -> (B,): eq. 13 with the true globals conditioning the local flow."""
        g, l = unpack_theta(input, self.n_global, self.n_local)
        return self.net.loss(g, l, unpack_condition(condition, self.y_dim))

    def sample(self, sample_shape: torch.Size, condition: Tensor, **kwargs) -> Tensor:
        """(B, J, N, d + 1) -> (*sample_shape, B, G + J * L) by ancestral sampling."""
        n = int(torch.Size(sample_shape).numel())
        g, l = self.net.sample(n, unpack_condition(condition, self.y_dim))
        theta = pack_theta(g, l)
        return theta.reshape(*sample_shape, *theta.shape[1:])

    def sample_and_log_prob(self, sample_shape: torch.Size, condition: Tensor, **kwargs) -> tuple[Tensor, Tensor]:
        n = int(torch.Size(sample_shape).numel())
        g, l, lp_g, lp_l = self.net.sample(n, unpack_condition(condition, self.y_dim), return_log_prob=True)
        theta = pack_theta(g, l)
        return theta.reshape(*sample_shape, *theta.shape[1:]), (lp_g + lp_l.sum(-1)).reshape(*sample_shape, -1)
