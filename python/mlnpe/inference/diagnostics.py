"""Diagnostics for amortized multilevel posteriors: SBC ranks, ECDF bands, recovery, pooling, and their plots.

The checks follow section 3.1 of Habermann et al. (2024): simulation-based calibration (SBC) with ECDF-difference
plots and 99 % simultaneous bands (Säilynoja, Bürkner and Vehtari, 2022), recovery of the true values, posterior
predictive checks and the pooling factor of eq. 15.

Every diagnostic is a pure function of numpy arrays. Axis order, used everywhere:

- ``draws``: ``(sims, draws, params)`` for global parameters, ``(sims, draws, groups, params)`` for local ones;
- ``truth``: ``(sims, params)`` or ``(sims, groups, params)``;
- ``mask``: ``(sims, groups)``, True where a group exists (padded groups are False);
- ``ranks``: ``(sims, params)`` or ``(sims, groups, params)``; pooled ranks ``(n, params)``.

The ``plot_*`` functions are thin adapters that import matplotlib when called; importing this module imports
neither matplotlib nor torch. They return a :class:`matplotlib.figure.Figure` (never calling ``plt.show``) and
save it when given ``path``.
"""

from __future__ import annotations

import functools
import math
from os import PathLike
from typing import Any, Sequence

import numpy as np
from scipy import special, stats

from ..errors import DataError

__all__ = [
    "sbc_ranks",
    "pool_local_ranks",
    "fractional_ranks",
    "sbc_uniformity_pvalues",
    "ecdf_bands",
    "ecdf_diff",
    "sbc_check",
    "recovery",
    "pooling_factor",
    "plot_sbc_ecdf",
    "plot_sbc_histogram",
    "plot_recovery",
    "plot_pooling",
    "plot_ppc",
]

_TOL = 1e-9  # float slack when comparing ECDF differences with band limits built from the same counts


# --------------------------------------------------------------------------------------------------------------
# input checks


def _as_float(values: Any, argument: str, ndims: Sequence[int]) -> np.ndarray:
    """Converts to a finite float64 array whose number of dimensions is one of `ndims`."""
    array = np.asarray(values)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise DataError(f"`{argument}` must be numeric, got dtype {array.dtype}. Pass a numeric numpy array.")
    array = array.astype(np.float64)
    if array.ndim not in ndims:
        wanted = " or ".join(str(d) for d in ndims)
        raise DataError(
            f"`{argument}` must have {wanted} dimensions, got shape {array.shape}. Check the axis order in the "
            "docstring (sims, draws, [groups,] params)."
        )
    if array.size == 0:
        raise DataError(f"`{argument}` is empty (shape {array.shape}). Pass at least one value per axis.")
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataError(
            f"`{argument}` has {int(bad.sum())} non-finite values (first at index "
            f"{tuple(int(i) for i in np.argwhere(bad)[0])}). Remove or replace them; use a mask for padding."
        )
    return array


def _as_mask(mask: Any, shape: tuple[int, ...], argument: str = "mask") -> np.ndarray:
    """Checks a boolean mask of the given shape."""
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise DataError(f"`{argument}` must be boolean, got dtype {array.dtype}. Pass e.g. `{argument} == 1`.")
    if array.shape != shape:
        raise DataError(f"`{argument}` must have shape (sims, groups) = {shape}, got {array.shape}.")
    return array


def _check_prob(prob: float) -> float:
    prob = float(prob)
    if not 0.0 < prob < 1.0:
        raise DataError(f"`prob` must lie strictly between 0 and 1, got {prob}. Use e.g. prob=0.99.")
    return prob


def _is_integer(value: Any, minimum: int) -> bool:
    """True for an integer-valued number (not a bool) of at least `minimum`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    return float(value).is_integer() and value >= minimum


def _check_n_draws(n_draws: int) -> int:
    if not _is_integer(n_draws, 1):
        raise DataError(f"`n_draws` must be a positive integer (posterior draws per simulation), got {n_draws!r}.")
    return int(n_draws)


def _check_ranks(ranks: Any, n_draws: int) -> np.ndarray:
    """Checks pooled ranks (n, params): integers in [0, n_draws]."""
    array = np.asarray(ranks)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.size == 0:
        raise DataError(
            f"`ranks` must have shape (n, params), got {array.shape}. Pool local ranks (sims, groups, params) "
            "with pool_local_ranks(ranks, mask) first."
        )
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise DataError(f"`ranks` must hold integers, got dtype {array.dtype}. Pass the output of sbc_ranks().")
        array = array.astype(np.int64)
    if array.min() < 0 or array.max() > n_draws:
        raise DataError(
            f"`ranks` must lie in [0, n_draws] = [0, {n_draws}], got values in [{array.min()}, {array.max()}]. "
            "Ranks of -1 mark padded groups: drop them with pool_local_ranks(ranks, mask); otherwise check "
            "`n_draws`."
        )
    return array


def _default_rng(rng: np.random.Generator | None) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise DataError(
            f"`rng` must be a numpy Generator or None, got {type(rng).__name__}. Use np.random.default_rng(seed)."
        )
    return rng


# --------------------------------------------------------------------------------------------------------------
# SBC ranks


def sbc_ranks(
    draws: np.ndarray,
    truth: np.ndarray,
    *,
    mask: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Ranks of the true values among the posterior draws, the statistic of simulation-based calibration.

    The rank is the number of draws below the true value; draws equal to the true value (possible for discrete
    parameters or rounded draws) are counted as below with a uniformly random number of them, so that ranks of
    a calibrated posterior are uniform on {0, ..., n_draws} even with ties.

    Arguments:
        draws: (sims, draws, params) for global parameters or (sims, draws, groups, params) for local ones.
        truth: (sims, params) or (sims, groups, params), the values the data were simulated from.
        mask: (sims, groups) boolean, True for groups that exist; only for local parameters. Padded groups get
            rank -1 and may hold any finite value.
        rng: generator for breaking ties; a fresh one when None.

    Returns:
        Integer ranks of shape ``truth.shape``, in [0, n_draws], and -1 where ``mask`` is False.

    Raises:
        DataError: shapes that do not match, non-finite values, or a mask for global parameters.

    Example:
        >>> ranks = sbc_ranks(draws, truth, rng=np.random.default_rng(1))  # (sims, params)
    """
    draws = _as_float(draws, "draws", (3, 4))
    truth = _as_float(truth, "truth", (2, 3))
    if draws.ndim != truth.ndim + 1 or draws.shape[0] != truth.shape[0] or draws.shape[2:] != truth.shape[1:]:
        raise DataError(
            f"`draws` {draws.shape} and `truth` {truth.shape} do not match: expected draws (sims, draws, params) "
            "with truth (sims, params), or draws (sims, draws, groups, params) with truth (sims, groups, params)."
        )
    if mask is not None:
        if truth.ndim != 3:
            raise DataError(
                "`mask` applies to local parameters only (truth of shape (sims, groups, params)), got truth of "
                f"shape {truth.shape}. Drop `mask` for global parameters."
            )
        mask = _as_mask(mask, truth.shape[:2])
    rng = _default_rng(rng)
    target = truth[:, None]
    below = (draws < target).sum(axis=1)
    ties = (draws == target).sum(axis=1)
    ranks = below.astype(np.int64)
    if ties.any():
        ranks += rng.integers(0, ties + 1)  # uniform on {0, ..., ties}
    if mask is not None:
        ranks[~mask] = -1
    return ranks


def pool_local_ranks(ranks: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pools the ranks of local parameters over the valid groups of all simulations.

    Note that ranks of different groups of one simulation share the simulation's hyperparameters and need not
    be independent, so band and test levels for pooled ranks are approximate.

    Arguments:
        ranks: (sims, groups, params) from :func:`sbc_ranks` with a mask.
        mask: (sims, groups) boolean, True for groups that exist.

    Returns:
        (n_valid, params) ranks of the valid groups, simulation-major.

    Raises:
        DataError: mismatched shapes, or a negative rank in a valid group.
    """
    ranks = np.asarray(ranks)
    if ranks.ndim != 3:
        raise DataError(f"`ranks` must have shape (sims, groups, params), got {ranks.shape}.")
    mask = _as_mask(mask, ranks.shape[:2])
    pooled = ranks[mask]
    if pooled.size and pooled.min() < 0:
        raise DataError(
            "`ranks` has negative (padding) ranks in groups that `mask` marks as valid. Pass the same mask to "
            "sbc_ranks() and pool_local_ranks()."
        )
    return pooled


def fractional_ranks(ranks: np.ndarray, n_draws: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Randomized fractional ranks u = (rank + U) / (n_draws + 1) with U ~ Uniform(0, 1).

    For a calibrated posterior the ranks are uniform on {0, ..., n_draws}, so u is exactly Uniform(0, 1); this
    lets the continuous ECDF bands and the KS test apply for any number of draws.

    Arguments:
        ranks: (n, params) integer ranks.
        n_draws: posterior draws per simulation.
        rng: generator for U; a fresh one when None.

    Returns:
        (n, params) values in (0, 1).
    """
    n_draws = _check_n_draws(n_draws)
    ranks = _check_ranks(ranks, n_draws)
    rng = _default_rng(rng)
    return (ranks + rng.random(ranks.shape)) / (n_draws + 1)


# --------------------------------------------------------------------------------------------------------------
# uniformity tests


def _rank_bins(n: int, n_draws: int, n_bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous bins of {0, ..., n_draws}: the bin of each rank value and the number of values per bin."""
    n_values = n_draws + 1
    if n_bins is None:
        n_bins = min(20, n // 5, n_values)
    if n_bins < 2 or n_bins > n_values:
        raise DataError(
            f"need 2 to n_draws + 1 = {n_values} bins for the chi-square test, got {n_bins} (from n = {n} ranks; "
            "the default uses min(20, n // 5) bins so that each expects >= 5 ranks). Use more simulations."
        )
    bin_of_value = np.arange(n_values) * n_bins // n_values
    sizes = np.bincount(bin_of_value, minlength=n_bins)
    return bin_of_value, sizes


def sbc_uniformity_pvalues(
    ranks: np.ndarray,
    n_draws: int,
    *,
    method: str = "chisq",
    n_bins: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """P-values of a test that the ranks are uniform on {0, ..., n_draws}, one per parameter.

    ``"chisq"`` (default): Pearson chi-square test on the counts in ``n_bins`` contiguous bins of rank values
    (default min(20, n // 5), so each bin expects at least about 5 ranks); bins hold n_draws + 1 values as evenly
    as possible and the expected count of a bin is proportional to the values it holds. ``"ks"``:
    Kolmogorov-Smirnov test of the randomized fractional ranks (:func:`fractional_ranks`) against Uniform(0, 1).

    Arguments:
        ranks: (n, params) integer ranks (pooled for local parameters).
        n_draws: posterior draws per simulation.
        method: "chisq" or "ks".
        n_bins: number of bins for "chisq".
        rng: generator for the fractional ranks of "ks".

    Returns:
        (params,) p-values; small values flag miscalibration.

    Raises:
        DataError: bad ranks, an unknown method, or too few ranks for two bins.
    """
    n_draws = _check_n_draws(n_draws)
    ranks = _check_ranks(ranks, n_draws)
    if method == "ks":
        u = fractional_ranks(ranks, n_draws, rng=rng)
        return np.array([stats.kstest(u[:, j], "uniform").pvalue for j in range(u.shape[1])])
    if method != "chisq":
        raise DataError(f'`method` must be "chisq" or "ks", got {method!r}.')
    n = ranks.shape[0]
    bin_of_value, sizes = _rank_bins(n, n_draws, n_bins)
    observed = np.stack([np.bincount(bin_of_value[ranks[:, j]], minlength=sizes.size) for j in range(ranks.shape[1])])
    expected = n * sizes / (n_draws + 1)
    statistic = ((observed - expected) ** 2 / expected).sum(axis=1)
    return stats.chi2.sf(statistic, sizes.size - 1)


# --------------------------------------------------------------------------------------------------------------
# ECDF bands (Säilynoja, Bürkner and Vehtari, 2022)


def _grid(n_sims: int, n_eval: int | None) -> np.ndarray:
    k = max(2, min(n_sims, 100)) if n_eval is None else n_eval
    if not _is_integer(k, 2):
        raise DataError(f"`n_eval` must be an integer >= 2 (grid i / n_eval), got {n_eval!r}.")
    k = int(k)
    return np.arange(1, k) / k


def _count_band(n: int, z: np.ndarray, gamma: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise central (1 - gamma) Binomial(n, z) intervals of ECDF counts, as integer arrays."""
    lower = stats.binom.ppf(gamma / 2, n, z)
    upper = stats.binom.ppf(1 - gamma / 2, n, z)
    return lower.astype(np.int64), upper.astype(np.int64)


def _log_transition(
    previous: np.ndarray, counts: np.ndarray, n: int, q: float, log_factorial: np.ndarray
) -> np.ndarray:
    """log P(count c at the next grid point | count c' now) for c' in `previous` (rows) and c in `counts` (cols).

    The increment d = c - c' is Binomial(n - c', q), so the log pmf is lf(n - c') - lf(d) - lf(n - c)
    + d log q + (n - c) log(1 - q) with lf the log factorial: all terms but lf(d) depend on the row or the
    column alone, which keeps the (rows, cols) work to one table lookup.
    """
    row = log_factorial[n - previous] - previous * math.log(q)
    col = counts * math.log(q) + (n - counts) * math.log1p(-q) - log_factorial[n - counts]
    offsets = counts[None, :] - previous[:, None]
    increments = np.arange(offsets.min(), offsets.max() + 1)
    table = np.where(increments >= 0, -log_factorial[np.maximum(increments, 0)], -np.inf)  # -lf(d), d < 0 impossible
    return row[:, None] + col[None, :] + table[offsets - increments[0]]


def _coverages(n: int, z: np.ndarray, gammas: np.ndarray) -> np.ndarray:
    """Exact probability that a uniform sample's ECDF stays inside the pointwise bands of each gamma.

    The distribution of the ECDF count is propagated along the grid: given c of the n uniforms at or below
    z_{i-1}, the count up to z_i is c + Binomial(n - c, (z_i - z_{i-1}) / (1 - z_{i-1})); the mass of paths that
    leave the band is dropped. All gammas share one transition matrix per step (over the widest band), so only
    one matrix is held at a time.
    """
    log_factorial = special.gammaln(np.arange(n + 1) + 1.0)
    lower, upper = _count_band(n, z[None, :], gammas[:, None])  # (gammas, grid)
    wide_lower, wide_upper = lower.min(axis=0), upper.max(axis=0)
    mass = np.ones((gammas.size, 1))
    previous, z_previous = np.array([0]), 0.0
    for i, z_i in enumerate(z):
        counts = np.arange(wide_lower[i], wide_upper[i] + 1)
        q = (z_i - z_previous) / (1 - z_previous)
        # einsum, not matmul: multithreaded BLAS on these small products is erratic (10x slower) on busy machines
        mass = np.einsum("gi,ij->gj", mass, np.exp(_log_transition(previous, counts, n, q, log_factorial)))
        # masses below 1e-200 change no digit of the coverage; as subnormal floats they would slow the products
        # down a hundredfold
        mass[(counts < lower[:, i : i + 1]) | (counts > upper[:, i : i + 1]) | (mass < 1e-200)] = 0.0
        previous, z_previous = counts, z_i
    return mass.sum(axis=1)


@functools.lru_cache(maxsize=128)
def _gamma_optimize(n: int, k: int, prob: float) -> float:
    """Largest pointwise level gamma whose bands hold a uniform sample's ECDF at all grid points with prob >= prob.

    Coverage falls as gamma grows (the bands are nested), so gamma is bracketed on log-spaced grids between
    the Bonferroni level (1 - prob) / (k - 1), which always covers, and 1 - prob; three refinements on 33
    points leave a relative bracket width of (k - 1)^(1 / 32^3) - 1, about 1.4e-4 for k = 100.
    """
    z = np.arange(1, k) / k
    low, high = (1 - prob) / z.size, 1 - prob
    for _ in range(3):
        gammas = np.geomspace(low, high, 33)
        covered = np.flatnonzero(_coverages(n, z, gammas) >= prob)
        last = int(covered.max()) if covered.size else 0
        if last == gammas.size - 1:
            return float(gammas[-1])
        low, high = gammas[last], gammas[last + 1]
    return float(low)


def _gamma_simulate(n: int, z: np.ndarray, prob: float, n_simulations: int, rng: np.random.Generator) -> float:
    """Pointwise level gamma from simulated uniform samples (Säilynoja et al., 2022, simulation method).

    For each sample, the smallest two-sided pointwise tail probability over the grid, 2 min(P(X <= c_i),
    P(X >= c_i)) with X ~ Binomial(n, z_i), is the largest gamma whose bands still contain that sample; gamma is
    the (1 - prob) quantile of these values. ECDF counts of uniform samples on the grid are drawn directly as
    cumulative sums of multinomial bin counts.
    """
    widths = np.diff(np.concatenate([[0.0], z, [1.0]]))
    counts = rng.multinomial(n, widths, size=n_simulations)[:, :-1].cumsum(axis=1)
    tail = np.minimum(special.bdtr(counts, n, z), special.bdtrc(counts - 1, n, z))
    return float(np.quantile(2 * tail.min(axis=1), 1 - prob))


def ecdf_bands(
    n_sims: int,
    *,
    n_eval: int | None = None,
    prob: float = 0.99,
    method: str = "optimize",
    n_simulations: int = 10_000,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simultaneous confidence bands for the ECDF difference of a uniform sample (Säilynoja et al., 2022).

    The ECDF F_n of n_sims independent Uniform(0, 1) values has n_sims F_n(z_i) ~ Binomial(n_sims, z_i) at each
    grid point. Pointwise central (1 - gamma) binomial intervals would be crossed somewhere far more often than
    gamma, so gamma is adjusted until the ECDF stays inside at ALL grid points with probability ``prob``:

    - ``"optimize"`` (default, deterministic, cached): computes the simultaneous coverage of a given gamma
      exactly by a recursion over the grid and takes the largest gamma whose coverage is at least ``prob``
      (coverage exceeds ``prob`` only by the discreteness of the binomial counts).
    - ``"simulate"``: the (1 - prob) quantile of the smallest pointwise tail probability of ``n_simulations``
      simulated uniform samples.

    Arguments:
        n_sims: sample size of the ECDF (number of ranks).
        n_eval: grid size K; the grid is z_i = i / K, i = 1, ..., K - 1 (at 0 and 1 the difference is always 0).
            Default K = min(n_sims, 100).
        prob: simultaneous coverage probability.
        method: "optimize" or "simulate".
        n_simulations: samples for "simulate".
        rng: generator for "simulate"; a fresh one when None.

    Returns:
        ``(z, lower, upper)``, each (K - 1,): grid and band limits of ECDF(z) - z.

    Raises:
        DataError: n_sims < 1, prob outside (0, 1), n_eval < 2 or an unknown method.

    Example:
        >>> z, lower, upper = ecdf_bands(100, prob=0.99)
    """
    if not _is_integer(n_sims, 1):
        raise DataError(f"`n_sims` must be a positive integer (the number of ranks), got {n_sims!r}.")
    n_sims = int(n_sims)
    prob = _check_prob(prob)
    z = _grid(n_sims, n_eval)
    if method == "optimize":
        gamma = _gamma_optimize(n_sims, z.size + 1, prob)
    elif method == "simulate":
        if not _is_integer(n_simulations, 100):
            raise DataError(f"`n_simulations` must be an integer >= 100, got {n_simulations!r}.")
        gamma = _gamma_simulate(n_sims, z, prob, int(n_simulations), _default_rng(rng))
    else:
        raise DataError(f'`method` must be "optimize" or "simulate", got {method!r}.')
    lower, upper = _count_band(n_sims, z, gamma)
    return z, lower / n_sims - z, upper / n_sims - z


def ecdf_diff(fractional: np.ndarray, z: np.ndarray) -> np.ndarray:
    """ECDF difference ECDF(z) - z of values in [0, 1], per parameter.

    Arguments:
        fractional: (n, params) values in [0, 1], e.g. from :func:`fractional_ranks`.
        z: (K,) evaluation points.

    Returns:
        (K, params) differences, the ECDF counting values <= z.
    """
    values = _as_float(fractional, "fractional", (1, 2))
    if values.ndim == 1:
        values = values[:, None]
    if values.min() < 0 or values.max() > 1:
        raise DataError(
            f"`fractional` must lie in [0, 1], got values in [{values.min()}, {values.max()}]. Convert integer "
            "ranks with fractional_ranks(ranks, n_draws)."
        )
    z = _as_float(z, "z", (1,))
    ordered = np.sort(values, axis=0)
    counts = np.stack([np.searchsorted(ordered[:, j], z, side="right") for j in range(values.shape[1])], axis=1)
    return counts / values.shape[0] - z[:, None]


def sbc_check(
    ranks: np.ndarray,
    n_draws: int,
    *,
    prob: float = 0.99,
    n_eval: int | None = None,
    rng: np.random.Generator | None = None,
) -> dict[str, np.ndarray]:
    """SBC pass/fail per parameter: does the ECDF difference of the ranks stay inside the simultaneous band?

    Arguments:
        ranks: (n, params) integer ranks (pool local ranks with :func:`pool_local_ranks`).
        n_draws: posterior draws per simulation.
        prob: simultaneous coverage of the band (the paper uses 0.99).
        n_eval: grid size, see :func:`ecdf_bands`.
        rng: generator for the randomized fractional ranks; a fresh one when None.

    Returns:
        dict with ``z`` (K - 1,), ``lower`` and ``upper`` (K - 1,) band limits, ``ecdf_diff`` (K - 1, params),
        ``inside_band`` (params,) bool (the pass/fail decision) and ``pvalue`` (params,) chi-square p-values from
        :func:`sbc_uniformity_pvalues` (NaN when there are fewer than 10 ranks).
    """
    n_draws = _check_n_draws(n_draws)
    ranks = _check_ranks(ranks, n_draws)
    n = ranks.shape[0]
    z, lower, upper = ecdf_bands(n, n_eval=n_eval, prob=prob)
    diff = ecdf_diff(fractional_ranks(ranks, n_draws, rng=rng), z)
    inside = ((diff >= lower[:, None] - _TOL) & (diff <= upper[:, None] + _TOL)).all(axis=0)
    pvalue = sbc_uniformity_pvalues(ranks, n_draws) if n >= 10 else np.full(ranks.shape[1], np.nan)
    return {"z": z, "lower": lower, "upper": upper, "ecdf_diff": diff, "inside_band": inside, "pvalue": pvalue}


# --------------------------------------------------------------------------------------------------------------
# recovery and pooling


def _flatten_local(
    draws: np.ndarray, truth: np.ndarray, mask: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Turns local draws (sims, draws, groups, params) into (cases, draws, params), one case per valid group."""
    if truth.ndim == 2:
        if mask is not None:
            raise DataError("`mask` applies to local parameters only (truth (sims, groups, params)). Drop `mask`.")
        return draws, truth
    keep = np.ones(truth.shape[:2], dtype=bool) if mask is None else _as_mask(mask, truth.shape[:2])
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
    draws = _as_float(draws, "draws", (3, 4))
    truth = _as_float(truth, "truth", (2, 3))
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


def pooling_factor(
    local_draws: np.ndarray,
    hyper_mean_draws: np.ndarray,
    hyper_sd_draws: np.ndarray | float,
) -> np.ndarray:
    """Pooling factor of each group (Habermann et al., 2024, eq. 15, after Gelman and Pardoe, 2006).

    For a local parameter eta_j ~ Normal(mu_eta, sigma_eta)::

        kappa_j = Var(eta_j - mu_eta) / sigma_eta^2

    where Var is the posterior variance over draws of the difference eta_j - mu_eta (taken draw by draw) and
    sigma_eta^2 is the squared hierarchical standard deviation, summarized by its posterior mean E[sigma_eta^2].
    The paper prints the numerator as Var(eta_j - mu_eta)^2; the square belongs to the standard deviation of the
    source, (sd(eta_j - mu_eta))^2 = Var(eta_j - mu_eta) (Gelman and Hill, 2007, sec. 21.6), which keeps kappa
    dimensionless. kappa_j -> 1 is complete pooling (the data say nothing about the group's deviation, whose
    posterior then equals its prior Normal(0, sigma_eta)); kappa_j -> 0 is no pooling (the group's own data
    determine eta_j). In the normal-normal model with known mu, sigma_eta and residual sd sigma_y with n_j rows,
    kappa_j = (sigma_y^2 / n_j) / (sigma_y^2 / n_j + sigma_eta^2).

    Arguments:
        local_draws: (draws, groups) or (draws, groups, params) posterior draws of eta_j.
        hyper_mean_draws: (draws,) or (draws, params) draws of mu_eta, jointly with ``local_draws``.
        hyper_sd_draws: (draws,) or (draws, params) draws of sigma_eta, or a known scalar sigma_eta.

    Returns:
        (groups,) or (groups, params) pooling factors.

    Raises:
        DataError: mismatched shapes, fewer than 2 draws, non-finite values or a non-positive sigma_eta.
    """
    local = _as_float(local_draws, "local_draws", (2, 3))
    n_draws = local.shape[0]
    param_shape = local.shape[2:]
    mean = _as_float(hyper_mean_draws, "hyper_mean_draws", (1, 2))
    if mean.shape != (n_draws, *param_shape):
        raise DataError(
            f"`hyper_mean_draws` must have shape (draws{', params' if param_shape else ''}) = "
            f"{(n_draws, *param_shape)} to match `local_draws` {local.shape}, got {mean.shape}."
        )
    sd = np.asarray(hyper_sd_draws, dtype=np.float64)
    if sd.ndim == 0:
        sd = np.full((n_draws, *param_shape), float(sd))
    sd = _as_float(sd, "hyper_sd_draws", (1, 2))
    if sd.shape != (n_draws, *param_shape):
        raise DataError(
            f"`hyper_sd_draws` must be a scalar or have shape {(n_draws, *param_shape)} to match `local_draws` "
            f"{local.shape}, got {sd.shape}."
        )
    if n_draws < 2:
        raise DataError(f"`local_draws` needs at least 2 draws to estimate a variance, got {n_draws}.")
    if np.any(sd <= 0):
        raise DataError(f"`hyper_sd_draws` must be positive (a standard deviation), got minimum {sd.min()}.")
    deviation = local - mean[:, None]
    return deviation.var(axis=0, ddof=1) / (sd**2).mean(axis=0)


# --------------------------------------------------------------------------------------------------------------
# plotting adapters


def _new_figure(n_panels: int, panel_size: tuple[float, float] = (3.2, 2.6)) -> tuple[Any, np.ndarray]:
    """A matplotlib Figure (no pyplot state) with a grid of at least n_panels axes; extra axes hidden."""
    try:
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("mlnpe plots need matplotlib: pip install matplotlib") from error
    n_cols = min(4, n_panels)
    n_rows = math.ceil(n_panels / n_cols)
    fig = Figure(figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def _finish(fig: Any, path: str | PathLike[str] | None) -> Any:
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _names(names: Sequence[str] | None, n: int) -> list[str]:
    if names is None:
        return [f"param[{j}]" for j in range(n)]
    names = [str(name) for name in names]
    if len(names) != n:
        raise DataError(f"`names` must have one entry per parameter ({n}), got {len(names)}: {names[:5]}.")
    return names


def plot_sbc_ecdf(
    ranks: np.ndarray,
    n_draws: int,
    names: Sequence[str] | None = None,
    *,
    prob: float = 0.99,
    rng: np.random.Generator | None = None,
    path: str | PathLike[str] | None = None,
) -> Any:
    """ECDF-difference SBC plot: one panel per parameter with the shaded simultaneous band and pass/fail title.

    Arguments:
        ranks: (n, params) integer ranks.
        n_draws: posterior draws per simulation.
        names: one label per parameter.
        prob: simultaneous coverage of the band.
        rng: generator for the fractional ranks.
        path: file to save the figure to (PNG for a .png name).

    Returns:
        The matplotlib Figure.
    """
    check = sbc_check(ranks, n_draws, prob=prob, rng=rng)
    labels = _names(names, check["ecdf_diff"].shape[1])
    fig, axes = _new_figure(len(labels))
    z = np.concatenate([[0.0], check["z"], [1.0]])
    lower = np.concatenate([[0.0], check["lower"], [0.0]])
    upper = np.concatenate([[0.0], check["upper"], [0.0]])
    for j, ax in enumerate(axes):
        diff = np.concatenate([[0.0], check["ecdf_diff"][:, j], [0.0]])
        passed = bool(check["inside_band"][j])
        ax.fill_between(z, lower, upper, color="0.85", label=f"{prob:.0%} band")
        ax.plot(z, diff, color="tab:blue" if passed else "tab:red", lw=1.2)
        ax.axhline(0.0, color="0.5", lw=0.6)
        ax.set_title(f"{labels[j]}: {'pass' if passed else 'FAIL'}", fontsize=9)
        ax.set_xlabel("fractional rank")
        ax.set_ylabel("ECDF difference")
    return _finish(fig, path)


def plot_sbc_histogram(
    ranks: np.ndarray,
    n_draws: int,
    names: Sequence[str] | None = None,
    *,
    n_bins: int | None = None,
    prob: float = 0.99,
    path: str | PathLike[str] | None = None,
) -> Any:
    """SBC rank histograms with the pointwise binomial ``prob`` interval of a bin count, one panel per parameter.

    Bins are those of the chi-square test in :func:`sbc_uniformity_pvalues`, whose p-value is in the title.

    Arguments:
        ranks: (n, params) integer ranks.
        n_draws: posterior draws per simulation.
        names: one label per parameter.
        n_bins: number of bins (default min(20, n // 5)).
        prob: level of the shaded interval for each bin count.
        path: file to save the figure to.

    Returns:
        The matplotlib Figure.
    """
    n_draws = _check_n_draws(n_draws)
    ranks = _check_ranks(ranks, n_draws)
    prob = _check_prob(prob)
    n = ranks.shape[0]
    bin_of_value, sizes = _rank_bins(n, n_draws, n_bins)
    pvalues = sbc_uniformity_pvalues(ranks, n_draws, n_bins=sizes.size)
    labels = _names(names, ranks.shape[1])
    fig, axes = _new_figure(len(labels))
    edges = np.concatenate([[0], np.cumsum(sizes)]) - 0.5
    share = sizes / (n_draws + 1)
    low = stats.binom.ppf((1 - prob) / 2, n, share)
    high = stats.binom.ppf(1 - (1 - prob) / 2, n, share)
    for j, ax in enumerate(axes):
        counts = np.bincount(bin_of_value[ranks[:, j]], minlength=sizes.size)
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="tab:blue", alpha=0.7)
        ax.stairs(high, edges, baseline=low, fill=True, color="0.5", alpha=0.3)
        ax.stairs(n * share, edges, color="0.3", lw=0.8)
        ax.set_title(f"{labels[j]}: chi-square p = {pvalues[j]:.3g}", fontsize=9)
        ax.set_xlabel("rank")
        ax.set_ylabel("count")
    return _finish(fig, path)


def plot_recovery(
    draws: np.ndarray,
    truth: np.ndarray,
    names: Sequence[str] | None = None,
    *,
    mask: np.ndarray | None = None,
    path: str | PathLike[str] | None = None,
) -> Any:
    """Posterior medians and 95 % intervals against the true values, with the identity line, per parameter.

    Arguments:
        draws: (sims, draws, params) or (sims, draws, groups, params).
        truth: (sims, params) or (sims, groups, params).
        names: one label per parameter.
        mask: (sims, groups) boolean for local parameters.
        path: file to save the figure to.

    Returns:
        The matplotlib Figure.
    """
    result = recovery(draws, truth, mask=mask)
    labels = _names(names, result["truth"].shape[1])
    fig, axes = _new_figure(len(labels))
    for j, ax in enumerate(axes):
        t, m = result["truth"][:, j], result["median"][:, j]
        errors = np.stack([m - result["lower"][:, j], result["upper"][:, j] - m])
        ax.errorbar(t, m, yerr=errors, fmt="o", ms=2.5, lw=0.6, color="tab:blue", alpha=0.7)
        span = [min(t.min(), result["lower"][:, j].min()), max(t.max(), result["upper"][:, j].max())]
        ax.plot(span, span, color="0.3", lw=0.8, ls="--")
        ax.set_title(
            f"{labels[j]}: r = {result['correlation'][j]:.2f}, cov = {result['coverage'][j]:.2f}", fontsize=9
        )
        ax.set_xlabel("true value")
        ax.set_ylabel("posterior median (95 % interval)")
    return _finish(fig, path)


def plot_pooling(
    kappa_a: np.ndarray,
    kappa_b: np.ndarray,
    labels: tuple[str, str] = ("mlnpe", "Stan"),
    *,
    path: str | PathLike[str] | None = None,
) -> Any:
    """Scatter of two sets of pooling factors (e.g. mlnpe vs Stan) with the identity line.

    Arguments:
        kappa_a: pooling factors from :func:`pooling_factor`, any shape.
        kappa_b: the same shape, from the reference method.
        labels: axis labels for a and b.
        path: file to save the figure to.

    Returns:
        The matplotlib Figure.
    """
    a = _as_float(kappa_a, "kappa_a", (1, 2)).ravel()
    b = _as_float(kappa_b, "kappa_b", (1, 2)).ravel()
    if a.shape != b.shape:
        raise DataError(
            f"`kappa_a` and `kappa_b` must have the same shape, got {np.shape(kappa_a)} and {np.shape(kappa_b)}."
        )
    fig, (ax,) = _new_figure(1, panel_size=(3.6, 3.4))
    top = max(1.0, a.max(), b.max())
    ax.plot([0, top], [0, top], color="0.3", lw=0.8, ls="--")
    ax.scatter(b, a, s=14, color="tab:blue", alpha=0.8)
    ax.set_xlabel(f"pooling factor ({labels[1]})")
    ax.set_ylabel(f"pooling factor ({labels[0]})")
    ax.set_title("pooling factor kappa_j", fontsize=9)
    return _finish(fig, path)


def _density(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE on the grid, or a histogram density when the values are (nearly) constant."""
    if np.ptp(values) > 0 and values.size > 1:
        try:
            return stats.gaussian_kde(values)(grid)
        except np.linalg.LinAlgError:  # singular covariance
            pass
    hist, edges = np.histogram(values, bins=grid.size // 4 or 1, range=(grid[0], grid[-1]), density=True)
    return hist[np.clip(np.searchsorted(edges, grid, side="right") - 1, 0, hist.size - 1)]


def plot_ppc(
    y_obs: np.ndarray,
    y_rep: np.ndarray,
    *,
    max_draws: int = 50,
    path: str | PathLike[str] | None = None,
) -> Any:
    """Posterior predictive density overlay (like bayesplot's ppc_dens_overlay).

    Arguments:
        y_obs: (n,) observed responses.
        y_rep: (draws, n) replicated responses from the posterior predictive distribution.
        max_draws: at most this many replicates are drawn, evenly spaced over the draws.
        path: file to save the figure to.

    Returns:
        The matplotlib Figure.
    """
    y_obs = _as_float(y_obs, "y_obs", (1,))
    y_rep = _as_float(y_rep, "y_rep", (2,))
    if y_rep.shape[1] != y_obs.shape[0]:
        raise DataError(
            f"`y_rep` must have shape (draws, n) with n = len(y_obs) = {y_obs.shape[0]}, got {y_rep.shape}."
        )
    rows = np.unique(np.linspace(0, y_rep.shape[0] - 1, min(max_draws, y_rep.shape[0])).astype(int))
    low, high = min(y_obs.min(), y_rep[rows].min()), max(y_obs.max(), y_rep[rows].max())
    pad = 0.05 * (high - low) if high > low else 0.5
    grid = np.linspace(low - pad, high + pad, 256)
    fig, (ax,) = _new_figure(1, panel_size=(4.2, 3.0))
    for i, row in enumerate(rows):
        label = "y_rep" if i == 0 else None
        ax.plot(grid, _density(y_rep[row], grid), color="tab:blue", alpha=0.25, lw=0.7, label=label)
    ax.plot(grid, _density(y_obs, grid), color="black", lw=1.8, label="y")
    ax.set_xlabel("y")
    ax.set_ylabel("density")
    ax.legend(frameon=False, fontsize=8)
    return _finish(fig, path)
