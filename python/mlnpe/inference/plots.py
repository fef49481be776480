"""Plots of the diagnostics: SBC ECDF differences and rank histograms, recovery, pooling, posterior predictive.

Thin adapters over the array functions of :mod:`mlnpe.inference.calibration`, :mod:`mlnpe.inference.recovery`
and :mod:`mlnpe.inference.pooling`. They import matplotlib when called (importing this module does not), return
a :class:`matplotlib.figure.Figure` (never calling ``plt.show``) and save it when given ``path``.
"""

from __future__ import annotations

import math
from os import PathLike
from typing import Any, Sequence

import numpy as np
from scipy import stats

from ..errors import DataError
from .arrays import as_float, check_n_draws, check_prob, check_ranks
from .calibration import rank_bins, sbc_check, sbc_uniformity_pvalues
from .recovery import recovery

__all__ = [
    "plot_sbc_ecdf",
    "plot_sbc_histogram",
    "plot_recovery",
    "plot_pooling",
    "plot_ppc",
]


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
    n_draws = check_n_draws(n_draws)
    ranks = check_ranks(ranks, n_draws)
    prob = check_prob(prob)
    n = ranks.shape[0]
    bin_of_value, sizes = rank_bins(n, n_draws, n_bins)
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
    a = as_float(kappa_a, "kappa_a", (1, 2)).ravel()
    b = as_float(kappa_b, "kappa_b", (1, 2)).ravel()
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
    y_obs = as_float(y_obs, "y_obs", (1,))
    y_rep = as_float(y_rep, "y_rep", (2,))
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
