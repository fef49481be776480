"""Simulation-based calibration: ranks of the true values, uniformity tests and simultaneous ECDF bands.

The checks follow section 3.1 of Habermann et al. (2024): simulation-based calibration (SBC) with ECDF-difference
plots and 99 % simultaneous bands (Säilynoja, Bürkner and Vehtari, 2022).

Every function is a pure function of numpy arrays; importing this module imports neither matplotlib nor torch.
Axis order, used everywhere:

- ``draws``: ``(sims, draws, params)`` for global parameters, ``(sims, draws, groups, params)`` for local ones;
- ``truth``: ``(sims, params)`` or ``(sims, groups, params)``;
- ``mask``: ``(sims, groups)``, True where a group exists (padded groups are False);
- ``ranks``: ``(sims, params)`` or ``(sims, groups, params)``; pooled ranks ``(n, params)``.

Plots of these checks are in :mod:`mlnpe.inference.plots`.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from scipy import special, stats

from ..errors import DataError
from .arrays import as_float, as_generator, as_mask, check_n_draws, check_prob, check_ranks, is_integer

__all__ = [
    "sbc_ranks",
    "pool_local_ranks",
    "fractional_ranks",
    "rank_bins",
    "sbc_uniformity_pvalues",
    "ecdf_bands",
    "ecdf_diff",
    "sbc_check",
]

_TOL = 1e-9  # float slack when comparing ECDF differences with band limits built from the same counts


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
    draws = as_float(draws, "draws", (3, 4))
    truth = as_float(truth, "truth", (2, 3))
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
        mask = as_mask(mask, truth.shape[:2])
    rng = as_generator(rng)
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
    mask = as_mask(mask, ranks.shape[:2])
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
    n_draws = check_n_draws(n_draws)
    ranks = check_ranks(ranks, n_draws)
    rng = as_generator(rng)
    return (ranks + rng.random(ranks.shape)) / (n_draws + 1)


# --------------------------------------------------------------------------------------------------------------
# uniformity tests


def rank_bins(n: int, n_draws: int, n_bins: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous bins of {0, ..., n_draws}: the bin of each rank value and the number of values per bin.

    These are the bins of the chi-square test of :func:`sbc_uniformity_pvalues` and of the rank histograms.

    Arguments:
        n: number of ranks.
        n_draws: posterior draws per simulation.
        n_bins: number of bins; None for min(20, n // 5, n_draws + 1), so that each bin expects >= 5 ranks.

    Returns:
        ``(bin_of_value, sizes)``: (n_draws + 1,) bin index of each rank value and (n_bins,) values per bin.

    Raises:
        DataError: fewer than 2 or more than n_draws + 1 bins.
    """
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
    n_draws = check_n_draws(n_draws)
    ranks = check_ranks(ranks, n_draws)
    if method == "ks":
        u = fractional_ranks(ranks, n_draws, rng=rng)
        return np.array([stats.kstest(u[:, j], "uniform").pvalue for j in range(u.shape[1])])
    if method != "chisq":
        raise DataError(f'`method` must be "chisq" or "ks", got {method!r}.')
    n = ranks.shape[0]
    bin_of_value, sizes = rank_bins(n, n_draws, n_bins)
    observed = np.stack([np.bincount(bin_of_value[ranks[:, j]], minlength=sizes.size) for j in range(ranks.shape[1])])
    expected = n * sizes / (n_draws + 1)
    statistic = ((observed - expected) ** 2 / expected).sum(axis=1)
    return stats.chi2.sf(statistic, sizes.size - 1)


# --------------------------------------------------------------------------------------------------------------
# ECDF bands (Säilynoja, Bürkner and Vehtari, 2022)


def _grid(n_sims: int, n_eval: int | None) -> np.ndarray:
    k = max(2, min(n_sims, 100)) if n_eval is None else n_eval
    if not is_integer(k, 2):
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
    if not is_integer(n_sims, 1):
        raise DataError(f"`n_sims` must be a positive integer (the number of ranks), got {n_sims!r}.")
    n_sims = int(n_sims)
    prob = check_prob(prob)
    z = _grid(n_sims, n_eval)
    if method == "optimize":
        gamma = _gamma_optimize(n_sims, z.size + 1, prob)
    elif method == "simulate":
        if not is_integer(n_simulations, 100):
            raise DataError(f"`n_simulations` must be an integer >= 100, got {n_simulations!r}.")
        gamma = _gamma_simulate(n_sims, z, prob, int(n_simulations), as_generator(rng))
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
    values = as_float(fractional, "fractional", (1, 2))
    if values.ndim == 1:
        values = values[:, None]
    if values.min() < 0 or values.max() > 1:
        raise DataError(
            f"`fractional` must lie in [0, 1], got values in [{values.min()}, {values.max()}]. Convert integer "
            "ranks with fractional_ranks(ranks, n_draws)."
        )
    z = as_float(z, "z", (1,))
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
    n_draws = check_n_draws(n_draws)
    ranks = check_ranks(ranks, n_draws)
    n = ranks.shape[0]
    z, lower, upper = ecdf_bands(n, n_eval=n_eval, prob=prob)
    diff = ecdf_diff(fractional_ranks(ranks, n_draws, rng=rng), z)
    inside = ((diff >= lower[:, None] - _TOL) & (diff <= upper[:, None] + _TOL)).all(axis=0)
    pvalue = sbc_uniformity_pvalues(ranks, n_draws) if n >= 10 else np.full(ranks.shape[1], np.nan)
    return {"z": z, "lower": lower, "upper": upper, "ecdf_diff": diff, "inside_band": inside, "pvalue": pvalue}
