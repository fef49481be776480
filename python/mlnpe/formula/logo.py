"""Leave-one-group-out cross-validation of a formula model with its amortizer: one instant refit per group.

:func:`formula_logo` supplies the three parts of `mlnpe.inference.logo.logo` for a :class:`FormulaNPE`:

* refit: ``model.fit`` of the data without group j (S amortized draws, never refined), with its PSIS log weights
  when the refit's k-hat is at most its threshold, else equal weights;
* proposal: `MultilevelNPE.local_proposal`, the even mixture of the local flow and the prior MVN(0, Sigma_s);
* held-out likelihood: :meth:`FormulaFit.log_lik` of group j's rows, summed.

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
from ..inference.logo import LogoRefit, LogoResult, logo
from ..inference.psis import ParetoKWarning
from .fit import FormulaFit, design_features

if TYPE_CHECKING:
    from .api import FormulaNPE

__all__ = ["formula_logo"]


def formula_logo(
    model: FormulaNPE, data: Any, n_draws: int = 1000, n_local: int = 20, seed: int | None = None
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

    Returns:
        A `mlnpe.inference.logo.LogoResult`, one entry per group in the order of the design's levels.

    Raises:
        ConfigError: `n_draws` or `n_local` is not an integer >= 1, or `seed` not an integer >= 0 or None.
    """
    n_draws, n_local, seed = check_int(n_draws, "n_draws"), check_int(n_local, "n_local"), check_seed(seed)
    from .design import as_frame

    data = as_frame(data)
    _, design = model.grouped_data(data)
    x = design_features(design, design.trials is not None).x
    base = 0 if seed is None else seed
    held_rows = [design.group == j for j in range(len(design.levels))]

    def refit(j: int) -> LogoRefit:
        rest = data.loc[~held_rows[j]].reset_index(drop=True)
        with warnings.catch_warnings():  # the k-hat of every refit is returned, not warned about
            warnings.simplefilter("ignore", ParetoKWarning)
            fit = model.fit(rest, n_draws=n_draws, seed=base + j, psis=n_draws >= 10, refine=False)
        reliable = fit.psis is not None and float(fit.psis.pareto_k) <= float(fit.psis.khat_threshold)
        log_weights = fit.psis.log_weights if reliable else np.full(n_draws, -math.log(n_draws))
        return LogoRefit(fit.raw.global_draws, log_weights, fit.pareto_k)

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
