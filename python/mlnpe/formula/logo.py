"""Leave-one-group-out cross-validation of a formula model with its amortizer: one instant refit per group.

:func:`formula_logo` supplies the three parts of `mlnpe.inference.logo.logo` for a :class:`FormulaNPE`:

* refit: ``model.fit`` of the data without group j (S amortized draws, never refined), with its PSIS log weights
  when the refit's k-hat is at most its threshold, else equal weights;
* proposal: `MultilevelNPE.local_proposal`, the even mixture of the local flow and the prior MVN(0, Sigma_s);
* held-out likelihood: :meth:`FormulaFit.log_lik` of group j's rows, summed.

With several grouping factors, `group=` names the factor whose levels are left out. For the primary factor (the
default) this is the scheme above. For another factor f, level k's rows are left out; the refit's draws still hold
an effect r_f[k], which without its rows follows its prior, and the held-out rows are predicted as those of a new
level: r_f[k] ~ MVN(0, Sigma_f) given each global draw (M draws per global draw, plain Monte Carlo), the effects of
primary groups that still have rows from the refit's draws, and those of primary groups that lose all their rows
(nested designs) from their prior too.

Example:
    >>> result = formula_logo(model, df, n_draws=500, n_local=20, seed=1)   # doctest: +SKIP
    >>> result.elpd, result.se                                               # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.data import GroupedData
from ..core.draws import PosteriorDraws
from ..checks import check_int, check_seed
from ..errors import ConfigError
from ..inference.logo import LogoRefit, LogoResult, logo
from ..inference.psis import ParetoKWarning
from .fit import FormulaFit, design_features

if TYPE_CHECKING:
    from .api import FormulaNPE

__all__ = ["formula_logo"]


def formula_logo(
    model: FormulaNPE, data: Any, n_draws: int = 1000, n_local: int = 20, seed: int | None = None,
    group: str | None = None,
) -> LogoResult:
    """Leave-one-group-out elpd of `data` under a trained formula model (brms's ``kfold(group =)``).

    For each group j, ``model.fit`` of the data without j gives `n_draws` global draws (weighted by their PSIS
    weights when the refit's k-hat is at most its threshold); the held-out group's effects are importance-sampled
    with `n_local` draws per global draw (`mlnpe.inference.logo`). The k-hat of every refit is returned in
    `pareto_k`, not warned about.

    Arguments:
        model: a trained :class:`FormulaNPE`.
        data: the data (a data frame with the model's columns).
        n_draws: global draws S of each refit (PSIS needs at least 10).
        n_local: draws M of the held-out group's effects per global draw.
        seed: refit j draws with seed + j and its proposal with seed + j + 7919 (None: 0).
        group: the grouping factor whose levels are left out (None: the primary one, `model.terms.group`).

    Returns:
        A `mlnpe.inference.logo.LogoResult`, one entry per group in the order of the design's levels (of the
        factor's levels present in the data).

    Raises:
        ConfigError: `n_draws` or `n_local` is not an integer >= 1, `seed` not an integer >= 0 or None, or `group`
            no grouping factor of the model.
    """
    n_draws, n_local, seed = check_int(n_draws, "n_draws"), check_int(n_local, "n_local"), check_seed(seed)
    from .design import as_frame

    data = as_frame(data)
    factors = [c.group for c in model.model.crossed]
    if group is not None and group != model.terms.group:
        if group not in factors:
            raise ConfigError(f"`group` {group!r} is not a grouping factor of the model; its factors: "
                              f"{[model.terms.group, *factors]}.")  # fmt: skip
        return _factor_logo(model, data, factors.index(group), n_draws, n_local, 0 if seed is None else seed)
    _, design = model.grouped_data(data)
    x = design_features(design, design.trials is not None).x
    base = 0 if seed is None else seed
    held_rows = [design.group == j for j in range(len(design.levels))]

    def refit(j: int) -> LogoRefit:
        return _refit(model, data.loc[~held_rows[j]].reset_index(drop=True), n_draws, base + j)[1]

    def local_proposal(j: int, global_draws: np.ndarray, m: int) -> tuple[torch.Tensor, np.ndarray]:
        generator = torch.Generator().manual_seed(base + j + 7919)
        rows = held_rows[j]
        group = GroupedData.from_groups([design.y[rows][:, None]], [x[rows]], [design.levels[j]])
        r, log_correction = model.npe.local_proposal(group, global_draws, m, generator)
        return r, log_correction.numpy()

    def held_out_log_lik(j: int, global_draws: np.ndarray, r: torch.Tensor) -> np.ndarray:
        level = design.levels[j]
        raw = PosteriorDraws(
            np.repeat(global_draws, n_local, 0), r.numpy().reshape(n_draws * n_local, 1, r.shape[-1]),
            tuple(model.npe.global_names), tuple(model.npe.local_names), (level,),
        )
        held_fit = FormulaFit(model, raw, dataclasses.replace(design, levels=(level,)))
        return held_fit.log_lik(newdata=data.loc[held_rows[j]].reset_index(drop=True)).sum(1)

    nobs = [int(rows.sum()) for rows in held_rows]
    return logo(design.levels, refit, local_proposal, held_out_log_lik, n_draws=n_draws, n_local=n_local, nobs=nobs)


def _refit(model: FormulaNPE, rest: Any, n_draws: int, seed: int) -> tuple[PosteriorDraws, LogoRefit]:
    """The amortized fit of `rest` (never refined): its raw draws, and its global draws with their PSIS log weights
    where its k-hat is at most the threshold (else equal weights)."""
    with warnings.catch_warnings():  # the k-hat of every refit is returned, not warned about
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = model.fit(rest, n_draws=n_draws, seed=seed, psis=n_draws >= 10, refine=False)
    reliable = fit.psis is not None and float(fit.psis.pareto_k) <= float(fit.psis.khat_threshold)
    log_weights = fit.psis.log_weights if reliable else np.full(n_draws, -math.log(n_draws))
    return fit.raw, LogoRefit(fit.raw.global_draws, log_weights, fit.pareto_k)


def _factor_logo(model: FormulaNPE, data: Any, index: int, n_draws: int, n_local: int, base: int) -> LogoResult:
    """Leave-one-level-out of the non-primary grouping factor `model.model.crossed[index]` (see the module doc)."""
    factor = model.model.crossed[index]
    _, design = model.grouped_data(data)
    codes = design.crossed[index].codes
    present = [k for k in range(len(factor.levels)) if (codes == k).any()]
    held_rows = [codes == k for k in present]
    columns = model.model.effect_columns(factor)
    m_f = len(factor.z_names)
    raws: dict[int, PosteriorDraws] = {}

    def refit(i: int) -> LogoRefit:
        raws[i], out = _refit(model, data.loc[~held_rows[i]].reset_index(drop=True), n_draws, base + i)
        return out

    def new_level(i: int, global_draws: np.ndarray, m: int) -> tuple[torch.Tensor, np.ndarray]:
        """r_f[k] from its prior given each global draw: M per draw (the proposal is the prior: no correction)."""
        generator = torch.Generator().manual_seed(base + i + 7919)
        g = torch.as_tensor(global_draws, dtype=torch.float64)
        z = torch.randn(g.shape[0], m, m_f, generator=generator, dtype=torch.float64)
        r = torch.einsum("sab,smb->sma", model.model.scale_tril(g, factor.group), z).reshape(-1, m_f)
        return r, np.zeros(r.shape[0])

    def held_out_log_lik(i: int, global_draws: np.ndarray, r: torch.Tensor) -> np.ndarray:
        raw, rows = raws[i], held_rows[i]
        g = np.repeat(global_draws, n_local, 0)
        k = present[i]
        g[:, columns[k * m_f : (k + 1) * m_f]] = r.numpy()
        levels = tuple(dict.fromkeys(design.levels[j] for j in design.group[rows]))
        fitted = {level: j for j, level in enumerate(raw.levels)}
        generator = torch.Generator().manual_seed(base + i + 104729)
        fresh = model.model.sample_local(torch.as_tensor(g, dtype=torch.float32), len(levels), generator).double().numpy()
        local = np.stack([np.repeat(raw.local_draws[:, fitted[level]], n_local, 0) if level in fitted else fresh[:, j]
                          for j, level in enumerate(levels)], 1)  # fmt: skip
        draws = PosteriorDraws(g, local, tuple(model.npe.global_names), tuple(model.npe.local_names), levels)
        held_fit = FormulaFit(model, draws, dataclasses.replace(design, levels=levels))
        return held_fit.log_lik(newdata=data.loc[rows].reset_index(drop=True)).sum(1)

    nobs = [int(rows.sum()) for rows in held_rows]
    return logo(tuple(factor.levels[k] for k in present), refit, new_level, held_out_log_lik, n_draws=n_draws,
                n_local=n_local, nobs=nobs)  # fmt: skip
