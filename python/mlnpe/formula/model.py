"""A brms-style formula as a two-level simulator: the last stage of formula -> terms -> design -> model.

Parameters, in brms's order:
- global: the centred intercept `Intercept` (brms's Stan parameter, the intercept of mean-centred predictors),
  the population-level coefficients `b_<x>`, the group-level sds `sd_<g>__<z>`, the correlations
  `cor_<g>__<zi>__<zj>` (one LKJ block), and the family parameters (sigma, shape, nu);
- local: the group-level effects r_j of every group (one per column of Z).

Several grouping factors (`(1 | a) + (1 | b)`, `(1 | a/b)`): the factor with the most levels is the primary one,
whose effects are the local parameters; every other (crossed or nesting) factor f contributes global parameters:
its sds, its correlations and its effects `r_<f>[level,coef]` for each of its K_f levels (kind "r", after the
family parameters), r_f[k] ~ MVN(0, diag(sd_f) Omega_f diag(sd_f)). This factorization is exact: given the globals,
the primary factor's units are independent, as ML-NPE needs. Its limit is that the other factors' levels are
fixed by the training data and their K_f * M_f effects widen the global flow (`MAX_CROSSED` in total). Each row
carries, as features, the products of that factor's columns with the indicator of its level (`design_features`),
so a simulated group that copies an observed group's rows keeps the observed cross-classification.

Model: eta_ij = Intercept + (x_ij - x_means) b + z_ij r_j + offset_ij; r_j ~ MVN(0, diag(sd) Omega diag(sd));
y_ij ~ family(eta). With brms's `0 + Intercept` there is no `Intercept` parameter: `b_Intercept` is the coefficient of
a column of ones in x, and x_means are 0. The offset is data (a feature column), with coefficient 1.

Covariates for training datasets are resampled from the user's data (offsets travel with their rows). A simulated
group takes the covariate rows of a randomly chosen observed group. 75 % of the time it keeps that group's size and
copies its rows in a random order, so every observed group's design is among the training designs; otherwise its
size is log-uniform over the trained range and its rows are drawn with replacement. This keeps the designs
realistic for users who refit new data of the same design or leave groups out, while still covering the whole
range of N_j.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.data import GroupedBatch, make_masks
from ..errors import SpecError
from ..core.spec import ParamSpec, TwoLevelModel
from ..core.constraints import corr_vector_to_matrix
from .design import DesignInfo
from .families import Family, get_family
from .names import brms_rename

__all__ = ["MAX_CROSSED", "CovariatePool", "CrossedFactor", "FormulaModel", "GlobalSlot", "crossed_factors", "global_slots"]

#: the most effects of non-primary grouping factors (sum of levels times coefficients) a model may have
MAX_CROSSED = 100

_MIN_FOCUS_LOG_MASS = float(np.log(1e-7))  # a focusing box with less prior mass stays unapplied


@dataclass(frozen=True)
class GlobalSlot:
    """One global parameter block and its prior.

    Attributes:
        name: brms name of the block (for correlations the block name `cor_<g>`).
        kind: "Intercept", "b", "sd", "cor", "aux" or "r" (the effects of a non-primary grouping factor).
        prior: the PriorDist in force (None for "r": its prior is its factor's sds and correlations).
        labels: brms names of the scalars.
        support: support spec string.
        group: the grouping factor of "sd", "cor" and "r" blocks, else "".
    """

    name: str
    kind: str
    prior: Any
    labels: tuple[str, ...]
    support: str
    group: str = ""


@dataclass(frozen=True)
class CrossedFactor:
    """A grouping factor other than the primary one: its effects are global parameters.

    Attributes:
        group: its name ("b" or "a:b").
        levels: its levels (brms labels).
        z_names: its group-level columns' names.
        columns: the feature columns holding z_m * [level == k], level-major ((k, m) at k * M + m).
    """

    group: str
    levels: tuple[str, ...]
    z_names: tuple[str, ...]
    columns: tuple[int, ...]

    def labels(self) -> tuple[str, ...]:
        """brms names of its effects, level-major: r_<g>[level,coef]."""
        levels = ["".join("." if ch.isspace() else ch for ch in level) for level in self.levels]
        return tuple(f"r_{self.group}[{level},{brms_rename(z)}]" for level in levels for z in self.z_names)


def crossed_factors(info: DesignInfo, feature_names: Sequence[str]) -> tuple[CrossedFactor, ...]:
    """The non-primary grouping factors of a design, with their feature columns (named `<g>[<level>,<coef>]` by
    `mlnpe.formula.fit.design_features`).

    Raises:
        SpecError: they have more than `MAX_CROSSED` effects in all.
    """
    out = []
    index = {name: i for i, name in enumerate(feature_names)}
    for i, term in enumerate(info.terms.crossed):
        z_names = tuple(name for name, _ in info.crossed_plan(i))
        levels = info.crossed_levels[term.group]
        columns = tuple(index[f"{term.group}[{level},{z}]"] for level in levels for z in z_names)
        out.append(CrossedFactor(term.group, levels, z_names, columns))
    total = sum(len(c.levels) * len(c.z_names) for c in out)
    if total > MAX_CROSSED:
        sizes = {c.group: f"{len(c.levels)} levels x {len(c.z_names)} coefficients" for c in out}
        raise SpecError(
            f"the formula {info.terms.formula!r} makes {info.terms.group!r} (the factor with the most levels) the "
            f"primary grouping factor; the effects of the others ({sizes}) are global parameters of the amortizer, "
            f"{total} in all, more than the {MAX_CROSSED} it supports. Drop varying slopes of those factors, or fit "
            "them as population-level terms."
        )
    return tuple(out)


def global_slots(
    resolved: Sequence[tuple[Any, Any, str]], family: Family, crossed: Sequence[CrossedFactor] = ()
) -> list[GlobalSlot]:
    """The global parameter blocks of resolved priors (`mlnpe.formula.priors.design_priors`), in their order, then
    the effects of the `crossed` (non-primary) grouping factors.

    Arguments:
        resolved: (ParamSlot, PriorDist, source) per parameter.
        family: the response family (the supports of its parameters).
        crossed: the non-primary grouping factors.
    """
    out = []
    for slot, dist, _ in resolved:
        if slot.class_ == "Intercept":
            out.append(GlobalSlot("Intercept", "Intercept", dist, ("Intercept",), "real"))
        elif slot.class_ == "b":
            out.append(GlobalSlot(slot.name, "b", dist, (slot.name,), "real"))
        elif slot.class_ == "sd":
            out.append(GlobalSlot(slot.name, "sd", dist, (slot.name,), "positive", slot.group))
        elif slot.class_ == "cor":
            g = slot.group
            z = [brms_rename(s.coef) for s, _, _ in resolved if s.class_ == "sd" and s.group == g]
            labels = tuple(f"cor_{g}__{z[i]}__{z[j]}" for i in range(len(z)) for j in range(i + 1, len(z)))
            out.append(GlobalSlot(slot.name, "cor", dist, labels, f"correlation:{len(z)}", g))
        else:
            support = dict(family.aux)[slot.class_]
            out.append(GlobalSlot(slot.name, "aux", dist, (slot.name,), support))
    for factor in crossed:  # one scalar slot per effect (supports are scalar)
        out += [GlobalSlot(label, "r", None, (label,), "real", factor.group) for label in factor.labels()]
    return out


@dataclass(frozen=True)
class CovariatePool:
    """Observed covariate rows by group, to resample training designs from.

    Attributes:
        x: (J_data, N_max, d_x) per-group rows (zeros where padded).
        n: (J_data,) rows per observed group.
    """

    x: Tensor
    n: Tensor

    @classmethod
    def from_rows(cls, x: np.ndarray, group: np.ndarray, n_groups: int) -> "CovariatePool":
        counts = np.bincount(group, minlength=n_groups)
        pool = np.zeros((n_groups, max(int(counts.max()), 1), x.shape[1]), dtype=np.float32)
        order = np.argsort(group, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(counts)])
        pos = np.arange(len(group)) - offsets[group[order]]
        pool[group[order], pos] = x[order]
        return cls(torch.as_tensor(pool), torch.as_tensor(counts, dtype=torch.long))


class FormulaModel(TwoLevelModel):
    """The two-level simulator of a formula, a family and priors.

    `offsets[i]:offsets[i + 1]` are the columns of global slot i in the (..., G) global parameters.

    Arguments:
        slots: global parameter blocks in order (see module docstring).
        z_names: names of the group-level coefficients (columns of Z).
        z_source: for each Z column, -1 for the intercept or the index of the feature column it copies.
        family: family name.
        x_means: (K,) means of the population-level columns (centring).
        x_source: (K,) for each population-level column, -1 for a column of ones (`0 + Intercept`) or the index of
            the feature column it copies.
        feature_names: names of the per-row feature columns the networks see beside y.
        trials_column: index of the trials feature (binomial), or None.
        pool: covariate rows to resample designs from.
        y_name: name of the response.
        offset_column: index of the offset feature (added to eta with coefficient 1), or None.
        crossed: the non-primary grouping factors, whose effects are the slots of kind "r".
    """

    ordered_rows = False

    def __init__(
        self,
        slots: Sequence[GlobalSlot],
        z_names: Sequence[str],
        z_source: Sequence[int],
        family: str,
        x_means: Sequence[float],
        x_source: Sequence[int],
        feature_names: Sequence[str],
        trials_column: int | None,
        pool: CovariatePool,
        y_name: str = "y",
        offset_column: int | None = None,
        crossed: Sequence[CrossedFactor] = (),
    ):
        self.slots = tuple(slots)
        self.crossed = tuple(crossed)
        self.family = get_family(family)
        self.z_names = tuple(z_names)
        self.z_source = torch.as_tensor(list(z_source), dtype=torch.long)
        self.x_means = torch.as_tensor(np.asarray(x_means, dtype=np.float32).reshape(-1))
        self.x_source = torch.as_tensor(list(x_source), dtype=torch.long)
        self.trials_column, self.offset_column = trials_column, offset_column
        self.pool = pool
        self.global_params = tuple(ParamSpec(s.name, s.support, s.labels) for s in self.slots)
        self.local_params = tuple(ParamSpec(z, "real") for z in self.z_names)
        self.y_dim, self.x_dim = 1, len(feature_names)
        self.y_names, self.x_names = (y_name,), tuple(feature_names)
        self.offsets = np.cumsum([0] + [ParamSpec(s.name, s.support, s.labels).dim for s in self.slots])
        self.region: dict[str, tuple[float, float]] = {}
        self._unboxed = ("cor", "r", "Intercept", "b") if crossed else ("cor",)
        self._sampling_priors = [s.prior for s in self.slots]
        if len(self.z_source) != len(self.z_names):
            raise SpecError("`z_source` needs one entry per group-level coefficient.")
        # the primary factor's sd and cor columns are keyed by "": those of no crossed factor
        crossed_groups = {c.group for c in self.crossed}
        self._index: dict[tuple[str, str], Tensor] = {}  # (kind, group) -> global columns of sd, cor and r
        for kind in ("sd", "cor", "r"):
            for g in [""] + [c.group for c in self.crossed]:
                cols = [c for i, slot in enumerate(self.slots) if slot.kind == kind
                        and (slot.group if slot.group in crossed_groups else "") == g
                        for c in range(self.offsets[i], self.offsets[i + 1])]  # fmt: skip
                self._index[kind, g] = torch.as_tensor(cols, dtype=torch.long)
        self.level_effects = tuple(
            (int(g), int(x)) for c in self.crossed for g, x in zip(self._index["r", c.group], c.columns)
        )
        intercept = [self.offsets[i] for i, slot in enumerate(self.slots) if slot.kind == "Intercept"]
        self.effect_centring = tuple(  # a level's mean is Intercept + r_f[level]: see MultilevelEstimator
            (int(intercept[0]), tuple(int(x) for x in self._index["r", c.group][c.z_names.index("Intercept")::len(c.z_names)]))
            for c in self.crossed if intercept and "Intercept" in c.z_names and len(c.levels) > 1
        )
        for c in self.crossed:
            if not len(self._index["r", c.group]) == len(c.levels) * len(c.z_names) == len(c.columns):
                raise SpecError(f"the crossed factor {c.group!r} needs one r slot and one feature column per effect.")
            if len(self._index["sd", c.group]) != len(c.z_names):
                raise SpecError(f"the crossed factor {c.group!r} needs one sd slot per coefficient.")
        if len(self.x_source) != len(self.x_means):
            raise SpecError(
                f"`x_source` needs one entry per population-level column ({len(self.x_means)} `x_means`), got "
                f"{len(self.x_source)}."
            )

    # ---- parameter access ---------------------------------------------------------------------------------
    def _block(self, global_params: Tensor, kind: str) -> list[tuple[GlobalSlot, Tensor]]:
        out = []
        for i, slot in enumerate(self.slots):
            if slot.kind == kind:
                out.append((slot, global_params[..., self.offsets[i] : self.offsets[i + 1]]))
        return out

    def _vector(self, global_params: Tensor, kind: str) -> Tensor:
        parts = [v for _, v in self._block(global_params, kind)]
        return torch.cat(parts, -1) if parts else global_params[..., :0]

    def intercept(self, global_params: Tensor) -> Tensor:
        """(..., G) -> (...) centred intercept (0 without an intercept)."""
        v = self._vector(global_params, "Intercept")
        return v[..., 0] if v.shape[-1] else global_params.new_zeros(global_params.shape[:-1])

    def coefficients(self, global_params: Tensor) -> Tensor:
        """(..., G) -> (..., K) population-level coefficients."""
        return self._vector(global_params, "b")

    def sds(self, global_params: Tensor, group: str = "") -> Tensor:
        """(..., G) -> (..., M) group-level sds of the primary factor (of a crossed factor `group`)."""
        return global_params[..., self._index["sd", group]]

    def aux(self, global_params: Tensor) -> Tensor:
        """(..., G) -> (..., A) family parameters."""
        return self._vector(global_params, "aux")

    def effects(self, global_params: Tensor, factor: CrossedFactor) -> Tensor:
        """(..., G) -> (..., K_f, M_f) the effects of a crossed factor."""
        return global_params[..., self._index["r", factor.group]].unflatten(-1, (len(factor.levels), len(factor.z_names)))

    def effect_columns(self, factor: CrossedFactor) -> list[int]:
        """The global columns of a crossed factor's effects, level-major ((k, m) at k * M_f + m)."""
        return [int(c) for c in self._index["r", factor.group]]

    def scale_tril(self, global_params: Tensor, group: str = "") -> Tensor:
        """(..., G) -> (..., M, M) Cholesky factor of the covariance of r_j (of a crossed factor's effects)."""
        sd = self.sds(global_params, group)
        m = sd.shape[-1]
        cor = global_params[..., self._index["cor", group]]
        if cor.shape[-1]:
            chol = torch.linalg.cholesky(corr_vector_to_matrix(cor, m))
        else:
            chol = torch.eye(m, dtype=sd.dtype).expand(*sd.shape[:-1], m, m)
        return sd[..., :, None] * chol

    # ---- focusing ------------------------------------------------------------------------------------------
    def set_region(self, region: dict[str, Sequence[float]] | None) -> dict[str, tuple[float, float]]:
        """Restricts the simulated global parameters to a box (the truncated prior of a focusing round).

        Arguments:
            region: {scalar name: (low, high)} on the natural scale; correlations are never restricted. None or
                an empty dict restores the full prior.
        Returns:
            the bounds in force, after intersecting with each prior's support. A bound that would leave the
            prior almost no mass (the data far in the prior's tail) is not applied.

        With several grouping factors, the intercept and the coefficients stay unrestricted too: the effects of the
        other factors absorb part of them (a level's mean is Intercept + r_f[level]), so their marginal posteriors
        are much wider than the combinations the data pin down, and a box from an early round's posterior would
        cut them.

        Only simulation changes: `log_prior_global` stays the full prior, so PSIS weights target the posterior
        of the model as specified. The amortizer then learns p(theta | y) for datasets whose posterior lies
        inside the box, where it equals the full-prior posterior (Deistler et al. 2022, truncated proposals).
        """
        self.region, self._sampling_priors = {}, []
        for slot in self.slots:
            box = None if slot.kind in self._unboxed or not region else region.get(slot.labels[0])
            prior = slot.prior
            if box is not None:
                lo_s, hi_s = prior.support
                lo, hi = max(lo_s, float(box[0])), min(hi_s, float(box[1]))
                try:
                    prior = prior.with_bounds(
                        lo if np.isfinite(lo) else None, hi if np.isfinite(hi) else None
                    )
                    if prior.log_normalizer < _MIN_FOCUS_LOG_MASS:
                        raise SpecError("too little prior mass")
                    self.region[slot.labels[0]] = (lo, hi)
                except SpecError:
                    prior = slot.prior
            self._sampling_priors.append(prior)
        return dict(self.region)

    # ---- TwoLevelModel --------------------------------------------------------------------------------------
    def sample_global(self, n: int, generator: torch.Generator) -> Tensor:
        parts = []
        for slot, prior in zip(self.slots, self._sampling_priors):
            if slot.kind == "cor":
                m = slot.support.split(":")[1]
                parts.append(prior.sample_corr(int(m), (n,), generator).to(torch.float32))
            elif slot.kind == "r":  # drawn below, given their factor's sds and correlations
                parts.append(torch.zeros(n, 1))
            else:
                parts.append(prior.sample((n,), generator).to(torch.float32).reshape(n, 1))
        out = torch.cat(parts, -1)
        for factor in self.crossed:
            z = torch.randn(n, len(factor.levels), len(factor.z_names), generator=generator)
            r = torch.einsum("bmq,bkq->bkm", self.scale_tril(out, factor.group), z)
            out[:, self._index["r", factor.group]] = r.flatten(1)
        return out

    def sample_local(self, global_params: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        m = len(self.z_names)
        z = torch.randn(global_params.shape[0], n_groups, m, generator=generator, dtype=global_params.dtype)
        return torch.einsum("bkm,bjm->bjk", self.scale_tril(global_params), z)

    def sample_design(
        self, n: int, groups: tuple[int, int], rows: tuple[int, int], generator: torch.Generator
    ) -> GroupedBatch:
        n_groups = torch.randint(groups[0], groups[1] + 1, (n,), generator=generator)
        j_max = int(n_groups.max())
        source = torch.randint(0, len(self.pool.n), (n, j_max), generator=generator)
        own = self.pool.n[source].clamp(rows[0], rows[1])
        # log-uniform over the trained range: covers it without making every dataset as large as its largest group
        u = torch.rand(n, j_max, generator=generator, dtype=torch.float64)
        spread = torch.exp(u * (np.log(rows[1] + 1.0) - np.log(rows[0])) + np.log(rows[0])).floor().long()
        spread = spread.clamp(rows[0], rows[1])
        pick_own = torch.rand(n, j_max, generator=generator) < 0.75
        n_rows = torch.where(pick_own, own, spread)
        group_mask, row_mask = make_masks(n_groups, n_rows)
        b, j, r = row_mask.nonzero(as_tuple=True)  # the real rows, each group's contiguous and in order
        source_n = self.pool.n[source[b, j]]
        row_index = (torch.rand(len(b), generator=generator) * source_n).long()  # with replacement
        # a group of its source's own size copies the source's rows, permuted: sorting random keys within each
        # group (groups stay contiguous) permutes its row positions
        keys = (b * j_max + j).double() + torch.rand(len(b), generator=generator, dtype=torch.float64)
        copy = (pick_own & (own == self.pool.n[source]))[b, j]
        row_index = torch.where(copy, r[keys.argsort()], row_index)
        x = self.pool.x.new_zeros(*row_mask.shape, self.pool.x.shape[-1])
        x[b, j, r] = self.pool.x[source[b, j], row_index]
        return GroupedBatch(None, row_mask, group_mask, x)

    def packed_rows(self, global_params: Tensor, local_params: Tensor, row_mask: Tensor, x: Tensor | None):
        """The linear predictor on the real rows only (padding is 94 % of a simulated radon batch): global (..., B,
        G), local (..., B, J, M), row mask (B, J, N), features (B, J, N, d_x) or None -> the real rows' (batch,
        group, row) indices (R,) each, in `row_mask.nonzero()` order, eta (..., R) (offset included), the family's
        auxiliary parameters (..., R, A) and the trials (R,) or None."""
        b, j, n = row_mask.nonzero(as_tuple=True)
        dtype = global_params.dtype
        rows = x[b, j, n].to(dtype) if x is not None else global_params.new_zeros(len(b), 0)
        with_ones = torch.cat([rows.new_ones(len(b), 1), rows], -1)  # source -1 picks the ones column
        eta = self.intercept(global_params)[..., b]
        coef = self.coefficients(global_params)
        if coef.shape[-1]:
            eta = eta + ((with_ones[:, self.x_source + 1] - self.x_means.to(dtype)) * coef[..., b, :]).sum(-1)
        eta = eta + (with_ones[:, self.z_source + 1] * local_params[..., b, j, :]).sum(-1)
        for factor in self.crossed:  # each row's columns z_m * [level == k] times r_f[k, m]
            effects = global_params[..., self._index["r", factor.group]]
            eta = eta + (rows[:, list(factor.columns)] * effects[..., b, :]).sum(-1)
        if self.offset_column is not None:
            eta = eta + rows[:, self.offset_column]
        aux = self.aux(global_params)[..., b, :]
        trials = None if self.trials_column is None else rows[:, self.trials_column]
        return (b, j, n), eta, aux, trials

    def simulate(
        self, global_params: Tensor, local_params: Tensor, design: GroupedBatch, generator: torch.Generator
    ) -> Tensor:
        (b, j, n), eta, aux, trials = self.packed_rows(global_params, local_params, design.row_mask, design.x)
        cells = eta[:, None, None]  # the family's (groups, rows) axes, one cell per real row
        y = self.family.simulate(cells, aux, None if trials is None else trials[:, None, None], generator)
        out = eta.new_zeros(*design.row_mask.shape, 1)
        out[b, j, n, 0] = y[:, 0, 0]
        return out

    def log_prior_global(self, global_params: Tensor) -> Tensor:
        total = global_params.new_zeros(global_params.shape[:-1])
        for slot, value in [pair for kind in ("Intercept", "b", "sd", "cor", "aux") for pair in self._block(global_params, kind)]:
            if slot.kind == "cor":
                total = total + slot.prior.log_prob_corr(value, int(slot.support.split(":")[1]))
            else:
                total = total + slot.prior.log_prob(value[..., 0])
        for factor in self.crossed:
            chol = self.scale_tril(global_params, factor.group)[..., None, :, :]
            total = total + _mvn_log_prob(self.effects(global_params, factor), chol).sum(-1)
        return total

    def log_prior_local(self, local_params: Tensor, global_params: Tensor) -> Tensor:
        return _mvn_log_prob(local_params, self.scale_tril(global_params)[..., None, :, :])

    def log_likelihood(self, batch: GroupedBatch, global_params: Tensor, local_params: Tensor) -> Tensor:
        (b, j, n), eta, aux, trials = self.packed_rows(global_params, local_params, batch.row_mask, batch.x)
        y = batch.y[b, j, n, 0]
        lp = self.family.log_lik(y[:, None, None], eta[..., None, None], aux,
                                 None if trials is None else trials[:, None, None])[..., 0, 0]  # fmt: skip
        n_groups = batch.row_mask.shape[-2]
        out = lp.new_zeros(*lp.shape[:-1], batch.row_mask.shape[0] * n_groups)
        return out.index_add(-1, b * n_groups + j, lp).unflatten(-1, batch.row_mask.shape[:2])

    def to_config(self) -> dict[str, Any]:
        return {"class": "FormulaModel"}


def _mvn_log_prob(values: Tensor, chol: Tensor) -> Tensor:
    """log N(values | 0, chol chol^T): values (..., K, M), chol (..., 1, M, M) -> (..., K)."""
    sol = torch.linalg.solve_triangular(chol, values[..., None], upper=False)[..., 0]
    logdet = torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (sol * sol).sum(-1) - logdet - 0.5 * values.shape[-1] * float(np.log(2 * np.pi))
