"""The factorized ML-NPE estimator: q(tau, omega | h_global) * prod_j q(lambda_j | tau, omega, h_local(x_j)).

Eqs. 11-14 of Habermann et al. (arXiv 2408.13230): a local summary network per group, a permutation-invariant
global summary over groups, a global conditional flow and ONE shared local conditional flow. In training the
local flow is conditioned on the true global parameters (eq. 13); sampling is ancestral (eq. 14).
Flows work on unconstrained parameters; draws and log densities are on the constrained scale.

The global summary may carry hand-made statistics of the data (`mlnpe.networks.statistics`), and the flows may
model the residuals of a regression shift fitted to the pilot simulations (`mlnpe.networks.shift`). Global
parameters that act on rows through features (the effects of a formula model's other grouping factors) reach the
flows through `mlnpe.networks.effects`; the summaries never see those features.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from .core.constraints import Bijector
from .core.data import GroupedBatch
from .errors import ConfigError
from .networks.config import NetworkConfig
from .networks.effects import LevelEffects
from .networks.flows import ConditionalFlow
from .networks.shift import GlobalShift, LocalShift
from .networks.statistics import PooledStatistics, data_zero, group_moments, masked_moments, signed_log
from .networks.summaries import MLP, DeepSet, SufficientSummary, build_summary, fixed_columns

__all__ = ["MultilevelEstimator"]


def _log_normal(noise: Tensor) -> Tensor:
    """log N(noise; 0, I) summed over the last dimension."""
    return -0.5 * (noise * noise).sum(-1) - 0.5 * noise.shape[-1] * math.log(2 * math.pi)


def _log_columns(rows: Tensor, log_inputs: list[int], log_response: bool) -> Tensor:
    """sign(v) log(1 + |v|) of the `log_inputs` columns (the last dimension) and log y of the response with
    `log_response`, on a copy."""
    if not log_inputs and not log_response:
        return rows
    rows = rows.clone()
    if log_inputs:
        rows[..., log_inputs] = signed_log(rows[..., log_inputs])
    if log_response:
        y = rows[..., 0]
        rows[..., 0] = torch.where(y > 0, torch.log(y.clamp_min(1e-30)), 0.0)
    return rows


def _real_rows(batch: GroupedBatch) -> tuple[Tensor, Tensor]:
    """The R real rows of a batch (R, d), responses then covariates, and each one's group among the B * J (R,)."""
    flat = batch.row_mask.reshape(-1).nonzero().squeeze(1)
    group_of_row = torch.div(flat, batch.row_mask.shape[-1], rounding_mode="floor")
    if batch.y is None:
        batch.rows()  # raises the error that names the missing responses
    slots = batch.row_mask.numel()
    parts = [batch.y.reshape(slots, batch.y.shape[-1]).index_select(0, flat)]
    if batch.x is not None and batch.x.shape[-1]:
        parts.append(batch.x.reshape(slots, batch.x.shape[-1]).index_select(0, flat))
    return (torch.cat(parts, -1) if len(parts) > 1 else parts[0]), group_of_row


def _centring_map(g: int, centring: Sequence[tuple[int, Sequence[int]]]) -> Tensor:
    """The (G, G) map of `MultilevelEstimator`'s `centring`: per block, anchor' = anchor + mean(effects), effect_k'
    = effect_k - mean(effects) for all but the last, last' = mean(effects); other coordinates unchanged."""
    out = torch.eye(g, dtype=torch.float64)
    for anchor, columns in centring:
        columns = [int(c) for c in columns]
        if len(columns) < 2 or anchor in columns or not all(0 <= c < g for c in [anchor, *columns]):
            raise ConfigError(f"`centring` block ({anchor}, {columns}) needs 2+ effect columns other than the anchor.")
        step = torch.eye(g, dtype=torch.float64)
        mean = torch.zeros(g, dtype=torch.float64)
        mean[columns] = 1.0 / len(columns)
        step[anchor] += mean
        for c in columns[:-1]:
            step[c] -= mean
        step[columns[-1]] = mean
        out = step @ out
    return out.float()


def _shift_regressors(
    stats: Tensor, h_local: Tensor, real: Tensor, fixed: list[int], estimate_pairs: list[tuple[int, int]]
) -> Tensor:
    """The regressors of the global shift (B, F'): the pooled statistics (B, F), then the mean and log variance
    over groups of the local summaries' (B, J, h) `fixed` features (see mlnpe.networks.summaries), and moment
    estimates of the group-level variances from their `group_estimates` pairs."""
    if not fixed:
        return stats
    mean, var = group_moments(h_local[..., fixed], real)
    out = [stats, mean, torch.log(var + 1e-4)]
    if estimate_pairs:
        est, log_var = (h_local[..., [p[i] for p in estimate_pairs]] for i in (0, 1))
        count = real.sum(1, keepdim=True).to(h_local.dtype)
        spread = group_moments(est, real)[1] * count / (count - 1.0).clamp_min(1.0)
        noise = group_moments(log_var.exp(), real)[0]
        out += [signed_log(spread - noise), torch.log(noise + 1e-8)]
    return torch.cat(out, -1)


class MultilevelEstimator(nn.Module):
    """Two summary networks and two conditional flows, trained jointly.

    Arguments:
        global_bijector: constrained <-> unconstrained map of the G global scalars.
        local_bijector: the same for the L local scalars of a group.
        row_features: dimension of a row as the networks see it (y_dim + x_dim).
        config: the networks' configuration.
        local_summary: optional custom local summary module (see mlnpe.networks.summaries for the interface).
        global_summary: optional custom global summary module.
        effects: (global column, row column) per global parameter that multiplies a row feature
            (`mlnpe.networks.effects`); those row columns are hidden from the summaries.
        centring: (anchor, effect columns) per block of real global scalars whose mean the anchor absorbs (a
            formula model's intercept and a crossed factor's intercepts: the data pin down anchor + effect_k,
            not each). The global flow then models anchor + mean, the effects minus their mean but the last,
            and the mean (`_to_flow`): nearly independent coordinates instead of a (K + 1)-dimensional ridge.
    """

    def __init__(
        self,
        global_bijector: Bijector,
        local_bijector: Bijector,
        row_features: int,
        config: NetworkConfig = NetworkConfig(),
        local_summary: nn.Module | None = None,
        global_summary: nn.Module | None = None,
        effects: Sequence[tuple[int, int]] = (),
        centring: Sequence[tuple[int, Sequence[int]]] = (),
    ):
        super().__init__()
        self.global_bijector, self.local_bijector, self.config = global_bijector, local_bijector, config
        g, l = global_bijector.unconstrained_dim(), local_bijector.unconstrained_dim()
        self.effects = LevelEffects(effects, row_features) if effects else None
        self.centred = bool(centring)
        if self.centred:  # the global flow's coordinates v = gu @ flow_map.T (see `centring`)
            flow_map = _centring_map(global_bijector.unconstrained_dim(), centring)
            self.register_buffer("flow_map", flow_map)
            self.register_buffer("flow_map_inverse", torch.linalg.inv(flow_map.double()).float())
            self.register_buffer("flow_log_det", torch.linalg.slogdet(flow_map.double())[1].float())
        hidden = set() if self.effects is None else set(self.effects.row_columns.tolist())
        self.visible = [c for c in range(row_features) if c not in hidden]  # the row columns the summaries see
        row_features = len(self.visible)
        s, sufficient = config.summary, config.summary.sufficient
        if local_summary is None and sufficient is not None:
            local_summary = SufficientSummary(
                row_features, s.local_dim, s.hidden, s.depth, s.row_hidden, square=sufficient.family == "gaussian",
                design_only=sufficient.design_only, floor=sufficient.floor, origin=sufficient.origin,
            )
        self.local_summary = local_summary or build_summary(
            s.local_kind, row_features, s.local_dim, s.hidden, s.depth, s.row_hidden,
            moments="full" if row_features <= 8 else "diag", extremes=s.extremes,
        )
        self.linear_response = config.sufficient_family in ("poisson", "binomial")
        h_local = self.local_summary.out_features
        self.global_summary = global_summary or build_summary(
            s.global_kind, h_local, s.global_dim, s.hidden, s.depth, attention=s.attention
        )
        self.statistics = None  # pooled statistics: for rows of at most 8 columns
        if config.statistics is not None and row_features <= 8:
            self.statistics = PooledStatistics(
                row_features, config.statistics, config.sufficient_family, config.design_only, config.log_inputs
            )
        pooled_dim = 0 if self.statistics is None else self.statistics.out_features
        self.group_moments = s.group_moments and not (
            isinstance(self.global_summary, DeepSet) and self.global_summary.moments != "none"
        )
        h_global = self.global_summary.out_features + pooled_dim + (2 * h_local if self.group_moments else 0)
        h_global += 0 if self.effects is None else self.effects.statistics_features
        shifted = self.statistics is not None and config.shift is not None
        self._fixed_cols = fixed_columns(self.local_summary, h_local) if shifted else []
        self._estimate_pairs = [(int(e), int(v)) for e, v in getattr(self.local_summary, "group_estimates", [])]
        if not self._fixed_cols:
            self._estimate_pairs = []
        n_stats = pooled_dim + 2 * len(self._fixed_cols) + 2 * len(self._estimate_pairs)
        n_stats += 0 if self.effects is None else self.effects.statistics_features
        self.global_shift = GlobalShift(n_stats, global_bijector, config.shift) if shifted else None
        self.local_shift = LocalShift(len(self._fixed_cols), g, l) if self._fixed_cols else None
        self.global_embed = MLP(h_global, [s.hidden], s.embedding) if s.embedding else nn.Identity()
        gf, lf = config.global_flow, config.local_flow
        self.global_flow = ConditionalFlow(g, s.embedding or h_global, gf.transforms, gf.hidden, gf.bins, gf.affine)
        offsets = 0 if self.effects is None else 1  # each group's mean offset from the effects
        self.local_flow = ConditionalFlow(l, h_local + g + offsets, lf.transforms, lf.hidden, lf.bins, lf.affine)
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
        """Fixes input and parameter standardization, and the shifts, from pilot simulations (padding ignored)."""
        loc, scale = masked_moments(self._rows(batch), batch.row_mask)
        if self.linear_response:  # scale only: the response's statistics stay proportional to sum y
            loc[0] = 0.0
        self.row_loc.copy_(loc)
        self.row_scale.copy_(scale)
        if getattr(self.local_summary, "origin", None) is not None:
            self.local_summary.set_origin(data_zero(self.row_loc, self.row_scale, self.local_summary.products))
        gu = self.global_bijector.inverse(global_params)
        v = self._to_flow(gu)
        loc, scale = masked_moments(v, torch.ones(v.shape[0], dtype=torch.bool))
        if self.global_shift is not None:
            h_local, packed, group_of_row = self._local(batch)
            stats = self._statistics(packed, group_of_row, *batch.row_mask.shape[:2])
            regressors = self._shift_statistics(
                stats, h_local, batch.group_mask, self._effect_statistics(batch, packed, group_of_row)
            )
            loc, scale = self.global_shift.fit(regressors, v, loc, scale)
        self.global_flow.set_standardization(loc, scale)
        lu = self.local_bijector.inverse(local_params)
        loc, scale = masked_moments(lu, batch.group_mask)
        if self.local_shift is not None:
            real = batch.group_mask
            g = self._standardized_globals(gu)[:, None].expand(*real.shape, gu.shape[-1])[real]
            loc, scale = self.local_shift.fit(
                h_local[..., self._fixed_cols][real], g, lu[real], loc, scale, self.config.shift.spread_limit
            )
        self.local_flow.set_standardization(loc, scale)
        if self.effects is not None:
            rows, owner = _real_rows(batch)
            weights = self.effects.group_weights(rows, owner, *batch.row_mask.shape[:2])
            self.effects.set_scale(weights, gu, batch.group_mask)

    def _to_flow(self, gu: Tensor) -> Tensor:
        """Unconstrained globals (..., G) -> the global flow's coordinates (the same without `centring`)."""
        return gu @ self.flow_map.T.to(gu.dtype) if self.centred else gu

    def _from_flow(self, v: Tensor) -> Tensor:
        return v @ self.flow_map_inverse.T.to(v.dtype) if self.centred else v

    def _standardized_globals(self, gu: Tensor) -> Tensor:
        """Unconstrained globals (..., G) in the global flow's coordinates and units of their prior's robust
        moments (the local flow's context)."""
        gu = self._to_flow(gu)
        if self.global_shift is not None:  # the global flow's own standardization is the shift's residual scale
            return (gu - self.global_shift.prior_loc) / self.global_shift.prior_scale
        return (gu - self.global_flow.loc) / self.global_flow.scale

    # ---- the global flow ------------------------------------------------------------------------------------
    def _split_global(self, h_global: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """`summarize`'s h_global -> the global flow's context, its shift and its log scale (None when absent)."""
        if self.global_shift is None:
            return h_global, None, None
        g = self.global_flow.features
        if not self.global_shift.log_scale:
            return h_global[..., :-g], h_global[..., -g:], None
        return h_global[..., : -2 * g], h_global[..., -2 * g : -g], h_global[..., -g:]

    def global_log_prob(self, gu: Tensor, h_global: Tensor) -> Tensor:
        """log q(gu | x) of unconstrained globals gu (..., B, G) given `summarize`'s h_global (B, ...)."""
        context, shift, log_scale = self._split_global(h_global)
        v = self._to_flow(gu)
        jacobian = self.flow_log_det if self.centred else 0.0
        if shift is None:
            return self.global_flow.log_prob(v, context) + jacobian
        if log_scale is None:
            return self.global_flow.log_prob(v - shift, context) + jacobian
        return self.global_flow.log_prob((v - shift) * torch.exp(-log_scale), context) - log_scale.sum(-1) + jacobian

    def global_sample(
        self, n: int, h_global: Tensor, generator: torch.Generator | None = None, log_prob: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n draws of unconstrained globals (n, B, G) given `summarize`'s h_global (B, ...); with `log_prob`,
        also log q(gu | x) (n, B), from the same pass (the flow's log-Jacobian at the draws)."""
        context = self._split_global(h_global)[0]
        noise = torch.randn(n, *context.shape[:-1], self.global_flow.features, generator=generator, dtype=context.dtype)
        noise = noise.to(context.device)  # drawn on the CPU generator wherever the networks live
        if not log_prob:
            return self.global_from_noise(noise, h_global)
        gu, log_det = self.global_from_noise(noise, h_global, log_det=True)
        return gu, _log_normal(noise) - log_det

    def global_from_noise(
        self, noise: Tensor, h_global: Tensor, log_det: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The global flow's map from its standard normal base: noise (..., B, G) -> unconstrained globals; with
        `log_det`, also log|det d gu / d noise| (..., B)."""
        context, shift, log_scale = self._split_global(h_global)
        out = self.global_flow.from_noise(noise, context, log_det=log_det)  # the context broadcasts: its layers run once
        gu, ladj = out if log_det else (out, None)
        if log_scale is not None:
            gu = gu * torch.exp(log_scale)
            ladj = None if ladj is None else ladj + log_scale.sum(-1)
        if shift is not None:
            gu = gu + shift
        gu = self._from_flow(gu)
        if ladj is not None and self.centred:
            ladj = ladj - self.flow_log_det
        return (gu, ladj) if log_det else gu

    # ---- summaries ------------------------------------------------------------------------------------------
    def _rows(self, batch: GroupedBatch) -> Tensor:
        """(B, J, N, d) rows as the networks see them, before standardization."""
        rows = batch.rows()
        rows = rows if self.effects is None else rows[..., self.visible]
        return _log_columns(rows, self.log_inputs, self.config.log_response)

    def _packed(self, batch: GroupedBatch) -> tuple[Tensor, Tensor]:
        """The R real rows, standardized (R, d), and each one's group among the B * J (R,)."""
        rows, group_of_row = _real_rows(batch)
        rows = rows if self.effects is None else rows[:, self.visible]
        rows = _log_columns(rows, self.log_inputs, self.config.log_response)
        return (rows - self.row_loc) / self.row_scale, group_of_row

    def _local(self, batch: GroupedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """h_local (B, J, h_l) (zeros for padded groups), the packed standardized rows and each row's group.

        Summaries that can (`forward_packed`: deep sets, sufficient statistics) see the real rows only; others
        get each group's padded rows and mask.
        """
        real = batch.group_mask
        packed, group_of_row = self._packed(batch)
        if hasattr(self.local_summary, "forward_packed") and getattr(self.local_summary, "scores", None) is None:
            slot = torch.cumsum(real.reshape(-1).long(), 0) - 1  # a real group's position among the real groups
            h_real = self.local_summary.forward_packed(packed, slot[group_of_row], int(real.sum()))
        else:
            rows = (self._rows(batch) - self.row_loc) / self.row_scale
            h_real = self.local_summary(rows[real], batch.row_mask[real])
        h_local = packed.new_zeros(*real.shape, h_real.shape[-1])
        h_local[real] = h_real
        return h_local, packed, group_of_row

    def _statistics(self, packed: Tensor, owner: Tensor, b: int, j: int) -> Tensor:
        """The pooled statistics (B, F) of the packed rows (R, d) with each row's group among the B * J (R,)."""
        return self.statistics(packed, owner, b, j, self.row_loc, self.row_scale)

    def summarize(self, batch: GroupedBatch) -> tuple[Tensor, Tensor]:
        """Returns h_local (B, J, h_l) (zeros for padded groups) and h_global (B, h_g), embedded once here (with a
        global shift, its last columns are the global flow's shift: use `global_log_prob`)."""
        real = batch.group_mask
        b, j, _ = batch.row_mask.shape
        h_local, packed, group_of_row = self._local(batch)
        h_global = self.global_summary(h_local, real)
        if self.group_moments:
            h_global = torch.cat([h_global, *group_moments(h_local, real)], -1)
        extra, stats_extra = h_local, None  # with effects, h_local returns with each group's mean effect features
        if self.effects is not None:
            rows = _real_rows(batch)[0]
            effect_stats = self.effects.statistics(rows, packed[:, 0], group_of_row, b, j)
            h_global = torch.cat([h_global, effect_stats], -1)
            stats_extra = effect_stats
            extra = torch.cat([h_local, self.effects.group_weights(rows, group_of_row, b, j)], -1)
        if self.statistics is None:
            return extra, self.global_embed(h_global)
        stats = self._statistics(packed, group_of_row, b, j)
        h_global = self.global_embed(torch.cat([h_global, stats], -1))
        if self.global_shift is not None:  # the flow's shift rides along in the last columns (`_split_global`)
            shift = self.global_shift(self._shift_statistics(stats, h_local, real, stats_extra))
            h_global = torch.cat([h_global, shift.to(h_global.dtype)], -1)
        return extra, h_global

    def _shift_statistics(self, stats: Tensor, h_local: Tensor, real: Tensor, effect_stats: Tensor | None) -> Tensor:
        """The regressors of the global shift: see `_shift_regressors`, then the effects' statistics."""
        out = _shift_regressors(stats, h_local, real, self._fixed_cols, self._estimate_pairs)
        return out if effect_stats is None else torch.cat([out, effect_stats], -1)

    def _effect_statistics(self, batch: GroupedBatch, packed: Tensor, owner: Tensor) -> Tensor | None:
        """The effects' statistics (B, 2P) (`LevelEffects.statistics`), or None without effects."""
        if self.effects is None:
            return None
        return self.effects.statistics(_real_rows(batch)[0], packed[:, 0], owner, *batch.row_mask.shape[:2])

    @torch.no_grad()
    def pooled_statistics(self, batch: GroupedBatch) -> Tensor | None:
        """(B, F) the fixed pooled statistics the global summary appends (None when `statistics` is off or rows
        are too wide): functions of the data alone, used for regression focusing (`FormulaNPE.train`)."""
        if self.statistics is None:
            return None
        b, j, _ = batch.row_mask.shape
        return self._statistics(*self._packed(batch), b, j)

    @torch.no_grad()
    def shift_statistics(self, batch: GroupedBatch) -> Tensor | None:
        """(B, F) the regressors of the global shift (the pooled statistics, then the mean and log variance over
        groups of the local summary's fixed features, the effects' statistics), or the pooled statistics alone
        without fixed features; None when `statistics` is off. Functions of the data alone (the fixed features have no weights)."""
        if self.statistics is None:
            return None
        b, j, _ = batch.row_mask.shape
        h_local, packed, owner = self._local(batch)
        stats = self._statistics(packed, owner, b, j)
        return self._shift_statistics(stats, h_local, batch.group_mask, self._effect_statistics(batch, packed, owner))

    # ---- the local flow -------------------------------------------------------------------------------------
    def _local_inputs(
        self, h_local: Tensor, global_u: Tensor, parts: bool = False
    ) -> tuple[Tensor | tuple[Tensor, Tensor], Tensor | None]:
        """The local flow's context (..., B, J, h + G) and shift (..., B, J, L) (None without a local shift).

        With `parts`, the context comes as its two broadcastable parts, h_local (B, J, h) and the standardized
        globals (..., B, 1, G) (`ConditionalFlow.from_noise` then applies the first layers to each once).
        """
        g = self._standardized_globals(global_u).unsqueeze(-2)  # (..., B, 1, G)
        pieces = [g]
        if self.effects is not None:  # h_local ends with the group's mean effect features: its offset at gu
            h_local, weights = h_local[..., : -self.effects.size], h_local[..., -self.effects.size :]
            pieces.append(self.effects.offsets(weights, global_u))  # (..., B, J, 1)
        if parts:
            context = (h_local, *pieces)
        else:
            shape = torch.broadcast_shapes(*(p.shape[:-2] for p in pieces), h_local.shape[:-2]) + h_local.shape[-2:-1]
            context = torch.cat([t.expand(*shape, -1) for t in (h_local, *pieces)], -1)
        if self.local_shift is None:
            return context, None
        return context, self.local_shift(h_local[..., self._fixed_cols], g)

    def local_log_prob(self, lu: Tensor, h_local: Tensor, gu: Tensor) -> Tensor:
        """log q(lu_j | gu, x_j) (..., B, J) of unconstrained locals lu (..., B, J, L) given globals gu (..., B, G)."""
        context, shift = self._local_inputs(h_local, gu)
        return self.local_flow.log_prob(lu if shift is None else lu - shift, context)

    def local_sample(
        self, h_local: Tensor, gu: Tensor, generator: torch.Generator | None = None, log_prob: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One unconstrained local draw per group and global draw: gu (..., B, G) -> (..., B, J, L); with
        `log_prob`, also log q(lu_j | gu, x_j) (..., B, J), from the same pass."""
        shape = torch.broadcast_shapes(gu.shape[:-1], h_local.shape[:-2]) + h_local.shape[-2:-1]
        noise = torch.randn(*shape, self.local_flow.features, generator=generator, dtype=h_local.dtype)
        noise = noise.to(h_local.device)
        if not log_prob:
            return self.local_from_noise(noise, h_local, gu)
        lu, log_det = self.local_from_noise(noise, h_local, gu, log_det=True)
        return lu, _log_normal(noise) - log_det

    def local_from_noise(
        self, noise: Tensor, h_local: Tensor, gu: Tensor, log_det: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The local flow's map from its standard normal base: noise (..., B, J, L) given globals gu (..., B, G)
        -> unconstrained locals (..., B, J, L); with `log_det`, also log|det d lu_j / d noise_j| (..., B, J)."""
        context, shift = self._local_inputs(h_local, gu, parts=True)
        out = self.local_flow.from_noise(noise, context, log_det=log_det)
        if shift is None:
            return out
        return (out[0] + shift, out[1]) if log_det else out + shift

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
        lp_global = self.global_log_prob(gu, h_global)
        lp_local = self.local_log_prob(lu, h_local, gu)
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
        lq_global, lq_local = self.global_log_prob(gu, h_global), self.local_log_prob(lu, h_local, gu)
        return self._constrained(gu, lu, lq_global, lq_local, batch.group_mask)

    def _constrained(
        self, gu: Tensor, lu: Tensor, lq_global: Tensor, lq_local: Tensor, group_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The flows' log densities of unconstrained draws -> those of the constrained draws (minus each
        bijector's log-Jacobian); padded groups get 0."""
        lp_global = lq_global - self.global_bijector.log_abs_det_jacobian(gu)
        lp_local = torch.where(group_mask, lq_local - self.local_bijector.log_abs_det_jacobian(lu), 0.0)
        return lp_global, lp_local

    def sample_bytes(self, datasets: int, groups: int) -> float:
        """About the peak memory of `sample` (with log densities) per draw, in bytes, for `datasets` datasets of
        `groups` (padded) groups: the local flow's activations per draw, dataset and group dominate (a conditioner's
        hidden layers and the spline knots of every local parameter), then the draws as float64 (`mlnpe.memory`)."""
        g, l = self.global_flow.features, self.local_flow.features
        lf, gf = self.config.local_flow, self.config.global_flow
        per_group = 4 * (2 * max(lf.hidden) + l * (3 * lf.bins + 4) + self.local_summary.out_features + g) + 8 * l
        per_dataset = 4 * (2 * max(gf.hidden) + g * (3 * gf.bins + 4)) + 8 * g + groups * per_group
        return float(datasets * per_dataset)

    @torch.no_grad()
    def sample(
        self, n: int, batch: GroupedBatch, generator: torch.Generator | None = None, return_log_prob: bool = False
    ) -> tuple[Tensor, ...]:
        """Ancestral sampling (eq. 14): globals from the global flow, then every group's locals given them.

        Returns:
            global draws (n, B, G) and local draws (n, B, J, L), constrained (padded groups hold junk); with
            `return_log_prob` also the log densities of `log_prob`.
        """
        if not return_log_prob:
            h_local, h_global = self.summarize(batch)
            gu = self.global_sample(n, h_global, generator)
            lu = self.local_sample(h_local, gu, generator)
            return self.global_bijector.forward(gu), self.local_bijector.forward(lu)
        return self.draw(n, batch, generator)

    def draw(
        self,
        n: int,
        batch: GroupedBatch,
        generator: torch.Generator | None = None,
        summaries: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Ancestral draws with their log densities, differentiable in the networks' weights (reparameterized: the
        draws are the flows' maps of fixed noise), for losses on the flows' own draws (`mlnpe.consistency`).

        Returns:
            global draws (n, B, G), local draws (n, B, J, L) (constrained), log q(tau, omega | x) (n, B) and
            log q(lambda_j | tau, omega, x_j) (n, B, J) (0 for padded groups).
        """
        h_local, h_global = summaries if summaries is not None else self.summarize(batch)
        # The flows' log densities at their own draws come from the sampling pass (base density minus the
        # log-Jacobian of the map from the noise), not from a second, density pass.
        gu, lq_global = self.global_sample(n, h_global, generator, log_prob=True)
        lu, lq_local = self.local_sample(h_local, gu, generator, log_prob=True)
        g, l = self.global_bijector.forward(gu), self.local_bijector.forward(lu)
        return (g, l, *self._constrained(gu, lu, lq_global, lq_local, batch.group_mask))
