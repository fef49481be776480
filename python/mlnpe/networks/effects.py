"""Global parameters that act on rows through features: the effects of a model's other grouping factors.

A model with several grouping factors (`mlnpe.formula.model`: `(1 | subject) + (1 | item)`) keeps the effects of
all but one factor among its global parameters. Each such effect r_p enters the linear predictor of a row as
x_ip * r_p, where x_ip is a row feature (the factor's group-level column times the indicator of the effect's
level). The networks see these features only through this module, which gives the flows what they need:

- the global flow gets, per effect, the least-squares coefficient of the standardized response on its feature,
  sum_i x_ip y_i / sum_i x_ip^2 (for an intercept: the level's mean response), and log(1 + sum_i x_ip^2) (its
  information), over the dataset's rows;
- the local flow of group j gets the group's mean offset (1 / n_j) sum_i sum_p x_ip r_p at the globals it is
  conditioned on: with a gaussian response this (times n_j) is exactly how the other factors enter group j's
  posterior. It is computed from the per-group feature means W_jp, a function of the data alone, which
  `MultilevelEstimator.summarize` appends to h_local.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import ConfigError

__all__ = ["LevelEffects"]


class LevelEffects(nn.Module):
    """Row features paired with the global parameters they multiply.

    Arguments:
        pairs: (global column, row column) per effect: the unconstrained global scalar (real support, so its
            unconstrained value is its value) and the column of the rows (response first) that multiplies it.
        row_features: the width of the rows.
    """

    def __init__(self, pairs: Sequence[tuple[int, int]], row_features: int):
        super().__init__()
        pairs = [(int(g), int(r)) for g, r in pairs]
        if not pairs:
            raise ConfigError("LevelEffects needs at least one (global column, row column) pair.")
        if any(not 0 < r < row_features for _, r in pairs) or len({r for _, r in pairs}) < len(pairs):
            raise ConfigError(f"LevelEffects: the row columns {[r for _, r in pairs]} must be distinct covariates.")
        self.register_buffer("global_columns", torch.tensor([g for g, _ in pairs], dtype=torch.long))
        self.register_buffer("row_columns", torch.tensor([r for _, r in pairs], dtype=torch.long))
        self.register_buffer("offset_scale", torch.ones(()))
        self.size = len(pairs)

    @property
    def statistics_features(self) -> int:
        return 2 * self.size

    def group_weights(self, rows: Tensor, group_of_row: Tensor, b: int, j: int) -> Tensor:
        """Each group's mean effect features: raw rows (R, d), their group among the B * J (R,) -> (B, J, P)."""
        features = rows[:, self.row_columns]
        total = features.new_zeros(b * j, self.size).index_add(0, group_of_row, features)
        count = features.new_zeros(b * j).index_add(0, group_of_row, torch.ones_like(features[:, 0]))
        return (total / count.clamp_min(1.0)[:, None]).unflatten(0, (b, j))

    def statistics(self, rows: Tensor, y: Tensor, group_of_row: Tensor, b: int, j: int) -> Tensor:
        """Per dataset and effect, the coefficient of y on its feature and log(1 + its sum of squares): raw rows
        (R, d), the standardized response (R,), each row's group among the B * J (R,) -> (B, 2P)."""
        features = rows[:, self.row_columns]
        dataset = torch.div(group_of_row, j, rounding_mode="floor")
        xy = features.new_zeros(b, self.size).index_add(0, dataset, features * y[:, None])
        xx = features.new_zeros(b, self.size).index_add(0, dataset, features * features)
        return torch.cat([xy / (xx + 1.0), torch.log1p(xx)], -1)

    def offsets(self, weights: Tensor, global_u: Tensor) -> Tensor:
        """Each group's mean offset at the globals, standardized: weights (B, J, P), unconstrained globals
        (..., B, G) -> (..., B, J, 1)."""
        effects = global_u[..., self.global_columns].unsqueeze(-2)  # (..., B, 1, P)
        return (weights * effects).sum(-1, keepdim=True) / self.offset_scale

    @torch.no_grad()
    def set_scale(self, weights: Tensor, global_u: Tensor, real: Tensor) -> None:
        """Standardizes the offsets by their sd over pilot simulations: weights (B, J, P), globals (B, G), real
        groups (B, J)."""
        self.offset_scale.fill_(1.0)
        values = self.offsets(weights, global_u)[..., 0][real]
        self.offset_scale.copy_(values.std().clamp_min(1e-6) if values.numel() > 1 else torch.ones(()))
