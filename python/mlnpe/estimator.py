"""The factorized ML-NPE estimator: q(tau, omega | h_global) * prod_j q(lambda_j | tau, omega, h_local(x_j)).

Eqs. 11-14 of Habermann et al. (arXiv 2408.13230): a local summary network per group, a permutation-invariant
global summary over groups, a global conditional flow and ONE shared local conditional flow. In training the
local flow is conditioned on the true global parameters (eq. 13); sampling is ancestral (eq. 14).
Flows work on unconstrained parameters; draws and log densities are on the constrained scale.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from .data import GroupedBatch
from .errors import ConfigError
from .nn import MLP, ConditionalFlow, build_summary
from .supports import Bijector

__all__ = ["NetworkConfig", "MultilevelEstimator"]


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the networks.

    Attributes:
        local_summary: "deepset", "set_transformer", "lstm" or "gru" (rows of a group).
        global_summary: "deepset" or "set_transformer" (groups of a dataset).
        summary_hidden: width of the summary networks.
        summary_depth: hidden layers (deep set) or attention blocks (set transformer).
        row_hidden: width of the deep set's per-row network (it runs once per row: keep it narrow).
        global_attention: attention-weighted pools in the global deep set (0: plain mean pooling).
        local_summary_dim: learned dimension of h_local.
        global_summary_dim: learned dimension of h_global.
        global_transforms, global_hidden: spline transforms and conditioner widths of the global flow.
        local_transforms, local_hidden: the same for the shared local flow.
        bins: spline bins.
        affine: start each flow with a conditional affine map (see `ConditionalFlow`).
        global_context: width of the learned embedding of h_global that the global flow sees (0: none). The
            raw global summary is wide (hundreds of pooled moments); embedding it once per dataset keeps the
            flow's per-draw cost low.
        log_inputs: row columns (0 = first response column, covariates after the responses) that the networks
            see as sign(v) log(1 + |v|): counts and other heavy-tailed inputs, whose raw scale would let a few
            huge simulated values dominate the standardization.
        pooled_moments: append the dataset's pooled within-group statistics to the global summary (rows with at
            most 8 columns): the grand mean, the pooled within-group covariance, the within-group least-squares
            fit of the first column on the others and the log of its residual variance, log(sum N_j - J) and
            log J. Summed over all rows, they carry what every group says about a shared residual scale or a
            shared slope, which a learned pool over groups of very different sizes recovers only roughly.
            Saved models without the key load with False (`from_saved`).
    """

    local_summary: str = "deepset"
    global_summary: str = "deepset"
    summary_hidden: int = 64
    summary_depth: int = 2
    row_hidden: int = 16
    global_attention: int = 8
    local_summary_dim: int = 16
    global_summary_dim: int = 32
    global_transforms: int = 3
    global_hidden: tuple[int, ...] = (64, 64)
    local_transforms: int = 1
    local_hidden: tuple[int, ...] = (32, 32)
    bins: int = 8
    affine: bool = True
    global_context: int = 64
    log_inputs: tuple[int, ...] = ()
    pooled_moments: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_inputs", tuple(int(i) for i in self.log_inputs))
        object.__setattr__(self, "global_hidden", tuple(int(h) for h in self.global_hidden))
        object.__setattr__(self, "local_hidden", tuple(int(h) for h in self.local_hidden))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if value < (0 if f.name in ("global_attention", "global_context") else 1):
                raise ConfigError(f"NetworkConfig `{f.name}` must be a positive integer, got {value!r}.")
        if self.global_summary not in ("deepset", "set_transformer"):
            raise ConfigError(
                f"NetworkConfig `global_summary` must be 'deepset' or 'set_transformer' (groups are exchangeable), "
                f"got {self.global_summary!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"NetworkConfig got unknown keys {unknown}; known keys: {sorted(known)}.")
        return cls(**d)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "NetworkConfig":
        """The config of a saved model: keys added since it was saved take the value that reproduces it."""
        return cls.from_dict({"pooled_moments": False, **d})


def _masked_moments(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Robust centre and scale over the real entries: values (..., d), mask (...) -> (d,), (d,).

    The median, and the interquartile range / 1.349 (the sd of a normal), falling back to the sd for columns
    whose quartiles coincide (a rare level of a binary column). Pilot simulations under vague priors (brms's
    student_t(3, ...) scales, or explosive AR(1) draws) have a few huge values that would inflate a sd and
    squash every typical dataset and parameter into a sliver around zero.
    """
    real = values[mask]
    if real.shape[0] > 2**20:  # torch.quantile's size limit; an even thinning keeps the quantiles
        real = real[:: -(-real.shape[0] // 2**20)]
    q25, median, q75 = torch.quantile(real, torch.tensor([0.25, 0.5, 0.75], dtype=real.dtype), dim=0)
    iqr = (q75 - q25) / 1.349
    scale = torch.where(iqr > 0, iqr, real.std(0))
    return median, scale.clamp_min(1e-6)


class MultilevelEstimator(nn.Module):
    """Two summary networks and two conditional flows, trained jointly.

    Arguments:
        global_bijector: constrained <-> unconstrained map of the G global scalars.
        local_bijector: the same for the L local scalars of a group.
        row_features: dimension of a row as the networks see it (y_dim + x_dim).
        config: network sizes.
        local_summary: optional custom local summary module (see mlnpe.nn for the interface).
        global_summary: optional custom global summary module.
    """

    def __init__(
        self,
        global_bijector: Bijector,
        local_bijector: Bijector,
        row_features: int,
        config: NetworkConfig = NetworkConfig(),
        local_summary: nn.Module | None = None,
        global_summary: nn.Module | None = None,
    ):
        super().__init__()
        self.global_bijector, self.local_bijector, self.config = global_bijector, local_bijector, config
        g, l = global_bijector.unconstrained_dim, local_bijector.unconstrained_dim
        c = config
        self.local_summary = local_summary or build_summary(
            c.local_summary, row_features, c.local_summary_dim, c.summary_hidden, c.summary_depth, c.row_hidden,
            moments="full" if row_features <= 8 else "diag",
        )
        h_local = self.local_summary.out_features
        self.global_summary = global_summary or build_summary(
            c.global_summary, h_local, c.global_summary_dim, c.summary_hidden, c.summary_depth,
            attention=c.global_attention,
        )
        self.pooled = config.pooled_moments and row_features <= 8
        if self.pooled:
            pairs = torch.triu_indices(row_features, row_features)
            self.register_buffer("_pair_a", pairs[0], persistent=False)
            self.register_buffer("_pair_b", pairs[1], persistent=False)
        pooled_dim = row_features + pairs.shape[1] + row_features + 2 if self.pooled else 0
        h_global = self.global_summary.out_features + pooled_dim
        self.global_embed = MLP(h_global, [c.summary_hidden], c.global_context) if c.global_context else nn.Identity()
        self.global_flow = ConditionalFlow(
            g, c.global_context or h_global, c.global_transforms, c.global_hidden, c.bins, c.affine
        )
        self.local_flow = ConditionalFlow(l, h_local + g, c.local_transforms, c.local_hidden, c.bins, c.affine)
        if any(not 0 <= i < row_features for i in config.log_inputs):
            raise ConfigError(
                f"NetworkConfig `log_inputs` {list(config.log_inputs)} must index the {row_features} row columns."
            )
        self.log_inputs = list(config.log_inputs)
        self.register_buffer("row_loc", torch.zeros(row_features))
        self.register_buffer("row_scale", torch.ones(row_features))

    # ---- standardization ------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_standardization(self, global_params: Tensor, local_params: Tensor, batch: GroupedBatch) -> None:
        """Fixes input and parameter standardization from pilot simulations (padding ignored)."""
        loc, scale = _masked_moments(self._rows(batch), batch.row_mask)
        self.row_loc.copy_(loc)
        self.row_scale.copy_(scale)
        gu = self.global_bijector.inverse(global_params)
        self.global_flow.set_standardization(*_masked_moments(gu, torch.ones(gu.shape[0], dtype=torch.bool)))
        lu = self.local_bijector.inverse(local_params)
        self.local_flow.set_standardization(*_masked_moments(lu, batch.group_mask))

    def _rows(self, batch: GroupedBatch) -> Tensor:
        """(B, J, N, d) rows as the networks see them, before standardization."""
        rows = batch.rows()
        if not self.log_inputs:
            return rows
        cols = self.log_inputs
        rows = rows.clone()
        rows[..., cols] = torch.sign(rows[..., cols]) * torch.log1p(rows[..., cols].abs())
        return rows

    # ---- networks -------------------------------------------------------------------------------------------
    def summarize(self, batch: GroupedBatch) -> tuple[Tensor, Tensor]:
        """Returns h_local (B, J, h_l) (zeros for padded groups) and h_global (B, h_g), embedded once here."""
        rows = (self._rows(batch) - self.row_loc) / self.row_scale
        real = batch.group_mask
        h_real = self.local_summary(rows[real], batch.row_mask[real])
        h_local = rows.new_zeros(*real.shape, h_real.shape[-1])
        h_local[real] = h_real
        h_global = self.global_summary(h_local, real)
        if self.pooled:
            h_global = torch.cat([h_global, self._pooled_features(rows, batch.row_mask)], -1)
        return h_local, self.global_embed(h_global)

    def _pooled_features(self, rows: Tensor, row_mask: Tensor) -> Tensor:
        """Pooled within-group statistics of standardized rows (see `NetworkConfig.pooled_moments`).

        Arguments:
            rows: (B, J, N, d) standardized rows; row_mask: (B, J, N).
        Returns:
            (B, d + pairs + d + 2): grand mean, signed-log within-group covariance (upper triangle), signed-log
            slopes of column 0 on the others (ridge 1e-2: a covariate constant within groups has no within
            variance), log(residual variance + 1e-4), log(sum N_j - J + 1),
            log J.
        """
        mask = row_mask.to(rows.dtype)[..., None]
        n_j = mask.sum(2)  # (B, J, 1)
        mean_j = (rows * mask).sum(2) / n_j.clamp_min(1.0)
        dev = (rows - mean_j.unsqueeze(2)) * mask
        within = torch.einsum("bjnd,bjne->bde", dev, dev)
        n_total = n_j.sum((1, 2))
        n_groups = (n_j[..., 0] > 0).sum(1).to(rows.dtype)
        dof = n_total - n_groups
        cov = within / dof.clamp_min(1.0)[:, None, None]
        grand = (rows * mask).sum((1, 2)) / n_total.clamp_min(1.0)[:, None]
        d = rows.shape[-1]
        if d > 1:
            cxx = cov[:, 1:, 1:] + 1e-2 * torch.eye(d - 1, dtype=rows.dtype, device=rows.device)
            cx0 = cov[:, 1:, :1]
            slopes = torch.linalg.solve(cxx, cx0)[..., 0]
            residual = (cov[:, 0, 0] - (cx0[..., 0] * slopes).sum(-1)).clamp_min(0.0)
            residual = residual * dof / (dof - (d - 1)).clamp_min(1.0)  # the residual's degrees of freedom
        else:
            slopes, residual = rows.new_zeros(rows.shape[0], 0), cov[:, 0, 0]
        upper = cov[:, self._pair_a, self._pair_b]

        def signed_log(v: Tensor) -> Tensor:
            return torch.sign(v) * torch.log1p(v.abs())

        return torch.cat(
            [grand, signed_log(upper), signed_log(slopes), torch.log(residual + 1e-4)[:, None],
             torch.log1p(dof.clamp_min(0.0))[:, None], torch.log(n_groups.clamp_min(1.0))[:, None]],
            -1,
        )

    def _local_context(self, h_local: Tensor, global_u: Tensor) -> Tensor:
        """h_local (B, J, h), global_u (..., B, G) -> (..., B, J, h + G), globals standardized."""
        g = (global_u - self.global_flow.loc) / self.global_flow.scale
        g = g.unsqueeze(-2).expand(*g.shape[:-1], h_local.shape[-2], g.shape[-1])
        return torch.cat([h_local.expand(*g.shape[:-1], h_local.shape[-1]), g], -1)

    # ---- densities ------------------------------------------------------------------------------------------
    def loss(self, global_params: Tensor, local_params: Tensor, batch: GroupedBatch) -> Tensor:
        """Eq. 13: -log q_global - sum_j log q_local, with the local flow given the TRUE globals.

        Arguments:
            global_params: (B, G) constrained.
            local_params: (B, J, L) constrained.
        Returns:
            (B,) negative log density in unconstrained space.
        """
        h_local, h_global = self.summarize(batch)
        gu = self.global_bijector.inverse(global_params)
        lu = self.local_bijector.inverse(local_params)
        lp_global = self.global_flow.log_prob(gu, h_global)
        lp_local = self.local_flow.log_prob(lu, self._local_context(h_local, gu))
        return -(lp_global + torch.where(batch.group_mask, lp_local, 0.0).sum(-1))

    def log_prob(
        self, global_params: Tensor, local_params: Tensor, batch: GroupedBatch, summaries: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact log density of given draws on the constrained scale.

        Arguments:
            global_params: (S, B, G).
            local_params: (S, B, J, L).
        Returns:
            log q(tau, omega | x) (S, B) and log q(lambda_j | tau, omega, x_j) (S, B, J) (0 for padded groups).
        """
        h_local, h_global = summaries if summaries is not None else self.summarize(batch)
        gu = self.global_bijector.inverse(global_params)
        lu = self.local_bijector.inverse(local_params)
        return self._log_prob_unconstrained(gu, lu, h_local, h_global, batch.group_mask)

    def _log_prob_unconstrained(
        self, gu: Tensor, lu: Tensor, h_local: Tensor, h_global: Tensor, group_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Constrained-scale log densities from unconstrained draws (flow density minus log-Jacobian)."""
        lp_global = self.global_flow.log_prob(gu, h_global) - self.global_bijector.log_abs_det_jacobian(gu)
        lp_local = self.local_flow.log_prob(lu, self._local_context(h_local, gu))
        lp_local = torch.where(group_mask, lp_local - self.local_bijector.log_abs_det_jacobian(lu), 0.0)
        return lp_global, lp_local

    @torch.no_grad()
    def sample(
        self, n: int, batch: GroupedBatch, generator: torch.Generator | None = None, return_log_prob: bool = False
    ) -> tuple[Tensor, ...]:
        """Ancestral sampling (eq. 14): globals from the global flow, then every group's locals given them.

        Returns:
            global draws (n, B, G) and local draws (n, B, J, L), constrained (padded groups hold junk); with
            `return_log_prob` also the log densities of `log_prob`.
        """
        h_local, h_global = self.summarize(batch)
        gu = self.global_flow.sample(h_global.expand(n, *h_global.shape), generator)
        lu = self.local_flow.sample(self._local_context(h_local, gu), generator)
        g, l = self.global_bijector.forward(gu), self.local_bijector.forward(lu)
        if not return_log_prob:
            return g, l
        return (g, l, *self._log_prob_unconstrained(gu, lu, h_local, h_global, batch.group_mask))
