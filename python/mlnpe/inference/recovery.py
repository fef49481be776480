"""Recovery of the true values by the posterior: medians, central intervals, coverage, contraction, z-scores.

A pure function of numpy arrays in the axis order of :mod:`mlnpe.inference.calibration`: ``draws`` is
``(sims, draws, params)`` or ``(sims, draws, groups, params)``, ``truth`` ``(sims, params)`` or
``(sims, groups, params)``, ``mask`` ``(sims, groups)``. Its plot is :func:`mlnpe.inference.plots.plot_recovery`.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .arrays import as_float, as_mask

__all__ = ["recovery"]


def _flatten_local(
    draws: np.ndarray, truth: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Turns local draws (sims, draws, groups, params) into (cases, draws, params), one case per valid group."""
    if truth.ndim == 2:
        if mask is not None:
            raise DataError("`mask` applies to local parameters only (truth (sims, groups, params)). Drop `mask`.")
        return draws, truth
    keep = np.ones(truth.shape[:2], dtype=bool) if mask is None else as_mask(mask, truth.shape[:2])
    return np.moveaxis(draws, 1, 2)[keep], truth[keep]


def recovery(
    draws: np.ndarray,
    truth: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    prior_var: np.ndarray | float | None = None,
    level: float = 0.95,
) -> dict[str, np.ndarray]:
    """Recovery of the true values: medians, central intervals, coverage, correlation, contraction, z-scores.

    Local parameters are treated case by case: each valid (simulation, group) pair is one case.

    Arguments:
        draws: (sims, draws, params) or (sims, draws, groups, params).
        truth: (sims, params) or (sims, groups, params).
        mask: (sims, groups) boolean for local parameters, True for groups that exist.
        prior_var: (params,) or scalar prior variance for the contraction; by default the variance of ``truth``
            over cases, which estimates it when the true values are prior draws (as in SBC).
        level: probability of the central interval (0.95 gives the 2.5 % and 97.5 % quantiles).

    Returns:
        dict with, per case and parameter (cases, params): ``truth``, ``median``, ``mean``, ``sd``, ``lower``,
        ``upper``, ``covered`` (bool), ``contraction`` = 1 - posterior variance / prior variance and ``z_score`` =
        (posterior mean - truth) / posterior sd; per parameter (params,): ``coverage`` (fraction covered),
        ``correlation`` (Pearson, median vs truth; NaN if either is constant) and ``prior_var``.

    Raises:
        DataError: mismatched shapes, non-finite values, fewer than 2 draws, or a non-positive prior variance.
    """
    draws = as_float(draws, "draws", (3, 4))
    truth = as_float(truth, "truth", (2, 3))
    if draws.ndim != truth.ndim + 1 or draws.shape[0] != truth.shape[0] or draws.shape[2:] != truth.shape[1:]:
        raise DataError(
            f"`draws` {draws.shape} and `truth` {truth.shape} do not match: expected draws (sims, draws, params) "
            "with truth (sims, params), or draws (sims, draws, groups, params) with truth (sims, groups, params)."
        )
    if draws.shape[1] < 2:
        raise DataError(f"`draws` needs at least 2 draws per simulation, got {draws.shape[1]}.")
    level = float(level)
    if not 0.0 < level < 1.0:
        raise DataError(f"`level` must lie strictly between 0 and 1, got {level}. Use e.g. level=0.95.")
    draws, truth = _flatten_local(draws, truth, mask)
    if prior_var is None:
        if truth.shape[0] < 2:
            raise DataError("`prior_var` is needed with a single case: pass the prior variance of each parameter.")
        prior_var = truth.var(axis=0, ddof=1)
    prior_var = np.broadcast_to(np.asarray(prior_var, dtype=np.float64), truth.shape[1:]).copy()
    if not np.all(np.isfinite(prior_var) & (prior_var > 0)):
        raise DataError(
            f"`prior_var` must be positive and finite, got {prior_var.tolist()}. Pass the prior variances, or "
            "truths that vary across simulations."
        )
    tail = (1 - level) / 2
    lower, median, upper = np.quantile(draws, [tail, 0.5, 1 - tail], axis=1)
    mean = draws.mean(axis=1)
    sd = draws.std(axis=1, ddof=1)
    covered = (lower <= truth) & (truth <= upper)
    with np.errstate(divide="ignore", invalid="ignore"):
        z_score = (mean - truth) / sd
        centred_m, centred_t = median - median.mean(0), truth - truth.mean(0)
        correlation = (centred_m * centred_t).sum(0) / np.sqrt((centred_m**2).sum(0) * (centred_t**2).sum(0))
    return {
        "truth": truth,
        "median": median,
        "mean": mean,
        "sd": sd,
        "lower": lower,
        "upper": upper,
        "covered": covered,
        "coverage": covered.mean(axis=0),
        "correlation": correlation,
        "contraction": 1 - sd**2 / prior_var,
        "z_score": z_score,
        "prior_var": prior_var,
    }
