"""Convergence diagnostics of MCMC draws: pure array functions over ``(chains, draws)`` arrays.

:func:`rhat` is the rank-normalized split R-hat (the maximum of the bulk and the folded-tail versions),
:func:`ess_bulk` and :func:`ess_tail` the bulk and tail effective sample sizes, after Vehtari, Gelman, Simpson,
Carpenter and Bürkner (2021), *Rank-normalization, folding, and localization: an improved R-hat for assessing
convergence of MCMC*, Bayesian Analysis 16(2); they agree with R's posterior package to 1e-8.
:func:`summarise_draws` tabulates them with the mean, sd and 95 % interval per variable.

Every function takes the draws of one scalar as a ``(chains, draws)`` array (a 1-D array is one chain) and
needs at least 4 draws per chain.

Example:
    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(4, 1000))    # (chains, draws)
    >>> rhat(x) < 1.01
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DataError

__all__ = ["rhat", "ess_bulk", "ess_tail", "summarise_draws"]


def _as_chains(x: Any, argument: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise DataError(
            f"`{argument}` must be a (chains, draws) array with at least 4 draws per chain, got shape "
            f"{np.shape(x)}; pass one row per chain."
        )
    return arr


def _split(x: np.ndarray) -> np.ndarray:
    """(chains, n) -> (2 chains, n // 2): first and second halves (the middle draw of odd n is dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank normalization: normal scores of the pooled ranks (average ranks for ties, Blom's offset)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    ranks = rankdata(x, method="average").reshape(x.shape)
    return ndtri((ranks - 0.375) / (x.size + 0.25))


def _constant(x: np.ndarray) -> bool:
    return not np.all(np.isfinite(x)) or np.ptp(x) <= 1e-12 * max(1.0, float(np.max(np.abs(x))))


def _rhat_basic(x: np.ndarray) -> float:
    """Classic R-hat of (chains, n) draws (already split)."""
    n = x.shape[1]
    within = float(np.mean(np.var(x, axis=1, ddof=1)))
    between = n * float(np.var(np.mean(x, axis=1), ddof=1))
    if within <= 0:
        return math.nan
    return math.sqrt(((n - 1) / n * within + between / n) / within)


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariances (divided by n) of every chain, lags 0..n-1, by FFT: (chains, n)."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _ess_basic(x: np.ndarray) -> float:
    """ESS of (chains, n) draws (already split): multi-chain autocorrelations, Geyer's monotone sequence."""
    if _constant(x):
        return math.nan
    m, n = x.shape
    acov = _autocovariance(x)
    chain_var = acov[:, 0] * n / (n - 1)
    mean_var = float(np.mean(chain_var))
    var_plus = mean_var * (n - 1) / n + (float(np.var(np.mean(x, axis=1), ddof=1)) if m > 1 else 0.0)
    rho = 1.0 - (mean_var - np.mean(acov, axis=0)) / var_plus  # combined autocorrelation by lag
    rho[0] = 1.0
    # Geyer's initial positive sequence: keep pairs (lags t, t + 1, t even) while their sum stays positive
    kept = np.zeros(n)
    kept[:2] = rho[:2]
    t, even, odd = 0, rho[0], rho[1]
    while t < n - 5 and even + odd > 0:
        t += 2
        even, odd = rho[t], rho[t + 1]
        if even + odd >= 0:
            kept[t], kept[t + 1] = even, odd
    last = t
    if even > 0:  # the positive even lag of the first negative pair improves the estimate (Geyer 1992)
        kept[last] = even
    # ... made monotone: a pair sum never exceeds the previous one (initial monotone sequence)
    for t in range(2, last - 1, 2):
        previous = kept[t - 2] + kept[t - 1]
        if kept[t] + kept[t + 1] > previous:
            kept[t] = kept[t + 1] = previous / 2.0
    draws = m * n
    tau = -1.0 + 2.0 * float(np.sum(kept[:last])) + float(kept[last])
    tau = max(tau, 1.0 / math.log10(draws))  # caps the ESS of antithetic chains at draws * log10(draws)
    return draws / tau


def rhat(x: Any) -> float:
    """Rank-normalized split R-hat: the maximum of the bulk and the folded (tail) R-hat.

    Arguments:
        x: (chains, draws) draws of one scalar; a 1-D array is one chain.

    Returns:
        R-hat (1 at convergence; above 1.01 suggests that the chains have not mixed); NaN for constant draws.

    Raises:
        DataError: `x` is not (chains, draws) with at least 4 draws per chain.

    Example:
        >>> rhat(np.random.default_rng(0).normal(size=(4, 1000))) < 1.01
        True
    """
    x = _as_chains(x)
    if _constant(x):
        return math.nan
    bulk = _rhat_basic(_z_scale(_split(x)))
    folded = np.abs(x - np.median(x))
    tail = _rhat_basic(_z_scale(_split(folded))) if not _constant(folded) else math.nan
    return float(np.nanmax([bulk, tail]))


def ess_bulk(x: Any) -> float:
    """Bulk effective sample size: the ESS of the rank-normalized split chains.

    Arguments:
        x: (chains, draws) draws of one scalar; a 1-D array is one chain.

    Returns:
        The ESS (about chains * draws for independent draws); NaN for constant draws.

    Raises:
        DataError: `x` is not (chains, draws) with at least 4 draws per chain.
    """
    x = _as_chains(x)
    if _constant(x):
        return math.nan
    return _ess_basic(_z_scale(_split(x)))


def ess_tail(x: Any) -> float:
    """Tail effective sample size: the smaller ESS of the 5% and 95% quantiles (indicators of x <= q).

    Arguments:
        x: (chains, draws) draws of one scalar; a 1-D array is one chain.

    Returns:
        The ESS; NaN for constant draws.

    Raises:
        DataError: `x` is not (chains, draws) with at least 4 draws per chain.
    """
    x = _as_chains(x)
    if _constant(x):
        return math.nan
    out = []
    for prob in (0.05, 0.95):
        indicator = (x <= np.quantile(x, prob)).astype(np.float64)
        out.append(_ess_basic(_split(indicator)))
    return float(np.nanmin(out)) if not np.all(np.isnan(out)) else math.nan


def summarise_draws(columns: dict[str, np.ndarray]) -> Any:
    """Per-variable summary: mean, sd, q2.5, q97.5, rhat, ess_bulk, ess_tail.

    Arguments:
        columns: variable name -> (chains, draws) draws.

    Returns:
        A pandas DataFrame indexed by variable.
    """
    import pandas as pd

    rows = {}
    for name, x in columns.items():
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1)
        rows[name] = {
            "mean": float(np.mean(flat)),
            "sd": float(np.std(flat, ddof=1)),
            "q2.5": float(np.quantile(flat, 0.025)),
            "q97.5": float(np.quantile(flat, 0.975)),
            "rhat": rhat(x),
            "ess_bulk": ess_bulk(x),
            "ess_tail": ess_tail(x),
        }
    return pd.DataFrame.from_dict(rows, orient="index")
