"""Pareto-smoothed importance sampling (PSIS) to certify and correct amortized posterior draws.

An amortized posterior ``q(theta | y)`` is only an approximation of the exact posterior ``p(theta | y)``. For one
dataset, the log importance ratios ``log p(theta, y) - log q(theta | y)`` of draws ``theta ~ q(theta | y)`` tell how
good the approximation is, and reweighting the draws corrects it. PSIS (Vehtari, Simpson, Gelman, Yao and Gabry,
2024, "Pareto smoothed importance sampling", JMLR 25(72)) stabilises the weights by replacing the largest ones with
the expected order statistics of a generalized Pareto distribution (GPD) fitted to them; the fitted shape ``k-hat``
is the diagnostic:

- ``k-hat <= min(1 - 1 / log10(S), 0.7)``: the weighted estimates are reliable;
- between that threshold and 0.7: usable, but more draws are needed (at least ``10 ** (1 / (1 - k-hat))``);
- ``k-hat > 0.7``: the weights have a very heavy tail and the estimates are unreliable.

Axis order, used everywhere: ``log_ratios`` is ``(draws,)``; ``values`` in :func:`psis_moments` is
``(draws, ...)`` with any trailing parameter axes, and the returned means and sds have the trailing shape.

Special values: a log ratio of ``-inf`` (draw impossible under the target) is allowed and gets weight zero;
``NaN`` and ``+inf`` raise :class:`~mlnpe.errors.DataError`. When all tail ratios are equal (for instance, exact
sampling), the weights have no tail and ``pareto_k`` is the sentinel ``-inf``; when fewer draws have a finite log
ratio than the tail needs, no tail can be fitted and ``pareto_k`` is the sentinel ``+inf`` (unreliable).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from ..errors import DataError
from ..memory import check_memory

__all__ = [
    "ParetoKWarning",
    "PsisResult",
    "psis",
    "pareto_khat",
    "gpd_fit",
    "psis_moments",
]

_MIN_DRAWS = 10  # fewer draws give no meaningful tail
_K_BAD = 0.7  # above this, PSIS estimates are unreliable whatever the number of draws
_PRIOR_N = 10.0  # weight (in pseudo-observations) of the weakly informative prior on k, centred at 0.5
_PRIOR_K = 0.5
_ZS_PRIOR = 3.0  # Zhang & Stephens (2009) prior constant of the grid over theta
_ZS_MIN_GRID = 30  # Zhang & Stephens (2009) minimum number of grid points


class ParetoKWarning(UserWarning):
    """Pareto k-hat exceeds 0.7: the importance weights have a very heavy tail, so estimates are unreliable."""


# --------------------------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, eq=False)
class PsisResult:
    """Result of :func:`psis` for one set of draws.

    Attributes:
        log_weights: ``(draws,)`` Pareto-smoothed, truncated and normalized log weights (``logsumexp == 0``);
            ``-inf`` where the log ratio was ``-inf``. Read-only.
        pareto_k: The estimated GPD shape k-hat of the upper tail of the weights; ``-inf`` when the tail is flat
            (all tail weights equal), ``+inf`` when too few draws have a finite log ratio to fit a tail.
        ess: Effective sample size of the smoothed weights, ``1 / sum(w ** 2)``. It does not include the
            relative efficiency ``r_eff`` of correlated draws; multiply by ``r_eff`` for MCMC draws.
        tail_length: Number of largest weights that were replaced by GPD order statistics (``M``).
        khat_threshold: ``min(1 - 1 / log10(S), 0.7)`` for ``S`` draws: k-hat at or below it is reliable.
    """

    log_weights: np.ndarray
    pareto_k: float
    ess: float
    tail_length: int
    khat_threshold: float

    @property
    def n_draws(self) -> int:
        """Number of draws ``S``."""
        return int(self.log_weights.shape[0])

    def weights(self) -> np.ndarray:
        """Returns the normalized importance weights, shape ``(draws,)``, summing to one."""
        weights = np.exp(self.log_weights)
        return weights / weights.sum()

    def resample(
        self,
        n: int | None = None,
        rng: np.random.Generator | int | None = None,
        replace: bool = True,
    ) -> np.ndarray:
        """Draws indices of draws with probability proportional to their smoothed weights (importance resampling).

        Args:
            n: Number of indices; defaults to the number of draws ``S``.
            rng: A numpy random generator (or an integer seed); a fresh unseeded generator when None.
            replace: Sample with replacement (default). Without replacement, no draw appears twice, which keeps
                more distinct draws when weights are uneven; ``n`` may then not exceed the number of draws with
                non-zero weight.

        Returns:
            Integer indices into the draws axis, shape ``(n,)``.

        Raises:
            DataError: If ``n`` is not a positive integer, exceeds the non-zero weights without replacement,
                or ``rng`` is not a generator or seed.
        """
        size = self.n_draws if n is None else n
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise DataError(f"`n` must be a positive integer, got {n!r}. Pass e.g. n={self.n_draws} or leave it None.")
        size = int(size)
        if rng is None or isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            generator = np.random.default_rng(rng)
        elif isinstance(rng, np.random.Generator):
            generator = rng
        else:
            raise DataError(
                f"`rng` must be a numpy.random.Generator, an integer seed or None, got {type(rng).__name__}. "
                "Pass np.random.default_rng(seed)."
            )
        check_memory(  # the indices and numpy's cumulative weights
            16.0, size, f"`n`={size} resampled draws", "Pass n <= {most}.", fixed=16.0 * self.n_draws, error=DataError
        )
        weights = self.weights()
        if not replace:
            nonzero = int(np.count_nonzero(weights))
            if size > nonzero:
                raise DataError(
                    f"`n`={size} exceeds the {nonzero} draws with non-zero weight, so sampling without replacement "
                    f"is impossible. Pass n <= {nonzero} or replace=True."
                )
        return generator.choice(self.n_draws, size=size, replace=bool(replace), p=weights)

    def diagnosis(self) -> str:
        """Returns a one-sentence plain-English verdict on k-hat: good, ok (more draws needed) or bad."""
        k, threshold, draws = self.pareto_k, self.khat_threshold, self.n_draws
        if k == -math.inf:
            return (
                f"Good: the {draws} importance weights have no tail (all the largest weights are equal, Pareto "
                "k-hat = -inf), so the amortized draws match the target and the weighted estimates are reliable."
            )
        if k == math.inf:
            return (
                f"Bad: too few of the {draws} draws have non-zero importance weight to fit a tail (Pareto k-hat = "
                "inf), so the amortized draws are not a reliable approximation for this dataset; train longer, "
                "widen the trained ranges, use more draws, or check the model for misspecification and use MCMC."
            )
        if k <= threshold:
            return (
                f"Good: Pareto k-hat = {k:.2f} is at or below the threshold {threshold:.2f} for {draws} draws, so "
                "the (importance-weighted) amortized draws are reliable for this dataset."
            )
        if k <= _K_BAD:
            needed = _draws_needed(k)
            return (
                f"Ok: Pareto k-hat = {k:.2f} is above the threshold {threshold:.2f} for {draws} draws but at most "
                f"{_K_BAD}, so the weighted estimates are usable but noisy; use at least {needed} draws "
                "(10 ** (1 / (1 - k))) to make them reliable."
            )
        return (
            f"Bad: Pareto k-hat = {k:.2f} > {_K_BAD} means the importance weights have a very heavy tail, so the "
            "amortized draws are not a reliable approximation for this dataset and weighted estimates are "
            "unreliable; train longer or with more focusing rounds (formula models: `focus=2`), widen the trained "
            "ranges, use more draws, or check the model for misspecification and use MCMC."
        )


def _draws_needed(k: float) -> int:
    """Smallest S with min(1 - 1/log10(S), 0.7) >= k, i.e. S >= 10 ** (1 / (1 - k)), for k < 0.7."""
    return int(math.ceil(10.0 ** (1.0 / (1.0 - k))))


# --------------------------------------------------------------------------------------------------------------
# input checks


def _as_log_ratios(log_ratios: Any) -> np.ndarray:
    """Converts to a 1-D float64 array of at least 10 log ratios, without NaN or +inf, with one finite value."""
    array = np.asarray(log_ratios)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number) or np.issubdtype(
        array.dtype, np.complexfloating
    ):
        raise DataError(
            f"`log_ratios` must be a real numeric array, got dtype {array.dtype}. Pass "
            "log p(theta, y) - log q(theta | y) as a float numpy array."
        )
    check_memory(  # a float64 copy, the sort order, smoothed ratios, weights and their temporaries
        56.0, array.size, f"PSIS of `log_ratios` with {array.size} draws", "Thin the draws to at most {most}.",
        error=DataError,
    )
    array = array.astype(np.float64)
    if array.ndim != 1:
        raise DataError(
            f"`log_ratios` must be 1-D with shape (draws,), got shape {array.shape}. Compute the log ratios for "
            "one dataset at a time (loop over datasets) and flatten chains into the draws axis."
        )
    if array.shape[0] < _MIN_DRAWS:
        raise DataError(
            f"`log_ratios` has {array.shape[0]} draws, fewer than the {_MIN_DRAWS} PSIS needs. Draw more samples "
            "from the amortized posterior (hundreds to thousands)."
        )
    nan = np.isnan(array)
    if nan.any():
        raise DataError(
            f"`log_ratios` has {int(nan.sum())} NaN values (first at index {int(np.flatnonzero(nan)[0])}). Check "
            "the log density of the model and of the approximation at these draws."
        )
    pos_inf = array == np.inf
    if pos_inf.any():
        raise DataError(
            f"`log_ratios` has {int(pos_inf.sum())} +inf values (first at index {int(np.flatnonzero(pos_inf)[0])}), "
            "i.e. draws with zero approximate density. Check the log density of the approximation at these draws."
        )
    if not np.isfinite(array).any():
        raise DataError(
            "`log_ratios` are all -inf: every draw is impossible under the target. Check the model log density "
            "and that the draws lie inside the parameter supports."
        )
    return array


def _check_r_eff(r_eff: Any) -> float:
    if isinstance(r_eff, bool) or not isinstance(r_eff, (int, float, np.integer, np.floating)):
        raise DataError(f"`r_eff` must be a positive number, got {r_eff!r}. Use 1.0 for independent draws.")
    value = float(r_eff)
    if not math.isfinite(value) or value <= 0:
        raise DataError(f"`r_eff` must be positive and finite, got {r_eff!r}. Use 1.0 for independent draws.")
    return value


# --------------------------------------------------------------------------------------------------------------
# generalized Pareto


def _gpd_fit_sorted(x: np.ndarray) -> tuple[float, float]:
    """Zhang & Stephens (2009) fit plus weakly informative prior on k; `x` sorted ascending, >= 0, max > 0."""
    n = x.shape[0]
    grid_size = _ZS_MIN_GRID + int(math.floor(math.sqrt(n)))
    j = np.arange(1, grid_size + 1, dtype=np.float64)
    x_star = x[int(math.floor(n / 4.0 + 0.5)) - 1] if n >= 2 else x[0]  # first quartile
    if x_star <= 0:  # ties at the threshold: use the smallest positive value as the scale of the grid
        x_star = x[x > 0][0]
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(grid_size / (j - 0.5))) / (_ZS_PRIOR * x_star)  # all < 1 / max(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        k_grid = np.log1p(-theta[:, None] * x[None, :]).mean(axis=1)  # GPD shape k for each theta (profile)
        profile = n * (np.log(-theta / k_grid) - k_grid - 1.0)
    profile = np.where(np.isfinite(profile), profile, -np.inf)
    weights = np.exp(profile - special.logsumexp(profile))
    theta_hat = float(np.sum(theta * weights))
    k = float(np.mean(np.log1p(-theta_hat * x)))
    sigma = -k / theta_hat if theta_hat != 0 else float(np.mean(x))  # theta -> 0 is the exponential limit
    k = (k * n + _PRIOR_N * _PRIOR_K) / (n + _PRIOR_N)  # shrink toward 0.5 with weight n / (n + 10)
    return k, float(sigma)


def gpd_fit(x: np.ndarray) -> tuple[float, float]:
    """Fits a generalized Pareto distribution (location 0) to exceedances, as PSIS does.

    Uses the empirical Bayes estimate of Zhang & Stephens (2009), a posterior-mean estimate of
    ``theta = -k / sigma`` over a grid, followed by the weakly informative prior adjustment of Vehtari et al.
    (2024): ``k <- (n k + 10 * 0.5) / (n + 10)``, i.e. shrinkage toward 0.5 with weight ``n / (n + 10)``. ``sigma``
    is the estimate before the adjustment. The GPD has ``P(X > x) = (1 + k x / sigma) ** (-1 / k)``.

    Args:
        x: ``(n,)`` non-negative exceedances over a threshold (any order), ``n >= 2``, not all zero.

    Returns:
        ``(k, sigma)``: shape (tail index; larger is heavier, ``k >= 1`` means infinite mean) and scale.

    Raises:
        DataError: If ``x`` is not 1-D numeric, has fewer than 2 values, or has negative, non-finite or only zero
            values.
    """
    array = np.asarray(x)
    if array.dtype == object or not np.issubdtype(array.dtype, np.number) or np.issubdtype(
        array.dtype, np.complexfloating
    ):
        raise DataError(f"`x` must be a real numeric array, got dtype {array.dtype}. Pass exceedances as floats.")
    array = array.astype(np.float64)
    if array.ndim != 1 or array.shape[0] < 2:
        raise DataError(
            f"`x` must be 1-D with at least 2 values, got shape {array.shape}. Pass the exceedances over a "
            "threshold as a flat array."
        )
    if not np.isfinite(array).all():
        raise DataError(
            f"`x` has {int((~np.isfinite(array)).sum())} non-finite values. Remove them before fitting."
        )
    if (array < 0).any():
        raise DataError(
            f"`x` has negative values (minimum {array.min():.4g}); exceedances must be >= 0. Subtract the "
            "threshold and keep only values above it."
        )
    if not (array > 0).any():
        raise DataError("`x` is all zero; a GPD cannot be fitted. Pass exceedances with at least one positive value.")
    return _gpd_fit_sorted(np.sort(array))


def _gpd_quantile(p: np.ndarray, k: float, sigma: float) -> np.ndarray:
    """Quantile function of the GPD with location 0, shape k and scale sigma."""
    if abs(k) < 1e-12:
        return -sigma * np.log1p(-p)
    return sigma * np.expm1(-k * np.log1p(-p)) / k


# --------------------------------------------------------------------------------------------------------------
# PSIS


def _tail_length(draws: int, r_eff: float) -> int:
    return int(min(math.ceil(0.2 * draws), math.ceil(3.0 * math.sqrt(draws / r_eff))))


def _khat_threshold(draws: int) -> float:
    return float(min(1.0 - 1.0 / math.log10(draws), _K_BAD))


def _smooth(log_ratios: np.ndarray, r_eff: float) -> tuple[np.ndarray, float, int]:
    """Returns (smoothed unnormalized log weights, k-hat, tail length) for checked inputs."""
    draws = log_ratios.shape[0]
    tail = _tail_length(draws, r_eff)
    shifted = log_ratios - np.max(log_ratios)  # max is finite: at least one finite value; max raw weight is 1
    order = np.argsort(shifted, kind="stable")
    n_finite = int(np.isfinite(shifted).sum())
    if n_finite <= tail:  # the cutoff would be -inf: weight sits on a few draws, no tail can be fitted
        return shifted, math.inf, tail
    tail_idx = order[draws - tail :]
    cutoff = shifted[order[draws - tail - 1]]  # (M+1)-th largest log ratio
    tail_log = shifted[tail_idx]  # ascending
    if tail_log[-1] - tail_log[0] <= 0.0:  # flat tail: bounded weights, nothing to smooth
        return shifted, -math.inf, tail
    exp_cutoff = math.exp(cutoff)
    exceed = np.exp(tail_log) - exp_cutoff
    if not (exceed > 0).any():  # tail differs only below float resolution of the weights
        return shifted, -math.inf, tail
    k, sigma = _gpd_fit_sorted(np.maximum(exceed, 0.0))
    smoothed = shifted.copy()
    if math.isfinite(k) and math.isfinite(sigma) and sigma > 0:
        p = (np.arange(1, tail + 1, dtype=np.float64) - 0.5) / tail
        with np.errstate(divide="ignore", over="ignore"):
            smoothed[tail_idx] = np.log(_gpd_quantile(p, k, sigma) + exp_cutoff)
        smoothed = np.minimum(smoothed, 0.0)  # truncate at the largest raw weight
    return smoothed, float(k), tail


def pareto_khat(log_ratios: np.ndarray, r_eff: float = 1.0) -> float:
    """Returns the PSIS Pareto k-hat of the upper tail of the importance ratios, without smoothing or warnings.

    Args:
        log_ratios: ``(draws,)`` log importance ratios, at least 10; ``-inf`` allowed.
        r_eff: Relative efficiency of the draws (1 for independent draws); sets the tail length.

    Returns:
        k-hat; ``-inf`` for a flat tail, ``+inf`` when too few draws have a finite log ratio.

    Raises:
        DataError: On NaN or +inf log ratios, all -inf, fewer than 10 draws, wrong shape, or bad ``r_eff``.
    """
    _, k, _ = _smooth(_as_log_ratios(log_ratios), _check_r_eff(r_eff))
    return k


def psis(log_ratios: np.ndarray, *, r_eff: float = 1.0, warn: bool = True) -> PsisResult:
    """Pareto-smoothed importance sampling of one set of draws (Vehtari et al., 2024).

    With ``S`` draws, the ``M = min(ceil(0.2 S), ceil(3 sqrt(S / r_eff)))`` largest ratios (after dividing by the
    largest, for stability) are replaced by the expected order statistics (quantiles at ``(z - 0.5) / M``,
    ``z = 1..M``) of a generalized Pareto distribution fitted to their exceedances over the ``(M + 1)``-th largest
    ratio; all weights are then truncated at the largest raw weight and normalized.

    Args:
        log_ratios: ``(draws,)`` log importance ratios ``log p(theta, y) - log q(theta | y)``, any additive
            constant; at least 10 draws. ``-inf`` (weight zero) is allowed.
        r_eff: Relative efficiency of the draws: 1 for independent draws such as amortized ones, ``ESS / S`` for
            MCMC draws. Only sets the tail length.
        warn: Emit :class:`ParetoKWarning` when k-hat > 0.7.

    Returns:
        A :class:`PsisResult` with smoothed normalized log weights, k-hat, ESS, tail length and threshold.

    Raises:
        DataError: On NaN or +inf log ratios, all -inf, fewer than 10 draws, wrong shape, or bad ``r_eff``.

    Warns:
        ParetoKWarning: If ``warn`` and k-hat > 0.7.
    """
    array = _as_log_ratios(log_ratios)
    smoothed, k, tail = _smooth(array, _check_r_eff(r_eff))
    log_weights = smoothed - special.logsumexp(smoothed)
    log_weights.setflags(write=False)
    ess = float(1.0 / np.sum(np.exp(2.0 * log_weights)))
    result = PsisResult(
        log_weights=log_weights,
        pareto_k=k,
        ess=ess,
        tail_length=tail,
        khat_threshold=_khat_threshold(array.shape[0]),
    )
    if warn and k > _K_BAD:
        warnings.warn(
            f"Pareto k-hat = {k:.2f} > {_K_BAD} for {array.shape[0]} draws: the importance weights have a very "
            "heavy tail, so the amortized draws are not a reliable approximation for this dataset and importance-"
            "weighted estimates are unreliable. Train longer, widen the trained ranges (groups, rows, parameters) "
            "to cover this dataset, use more draws, or check the model for misspecification and use MCMC.",
            ParetoKWarning,
            stacklevel=2,
        )
    return result


def psis_moments(values: np.ndarray, result: PsisResult) -> tuple[np.ndarray, np.ndarray]:
    """Importance-weighted posterior means and standard deviations.

    Args:
        values: ``(draws, ...)`` draws of any quantities (e.g. ``(draws, params)``), the same draws, in the same
            order, as the log ratios given to :func:`psis`.
        result: The :class:`PsisResult` of those draws.

    Returns:
        ``(mean, sd)``, each of shape ``values.shape[1:]``: ``sum_s w_s v_s`` and
        ``sqrt(sum_s w_s (v_s - mean) ** 2)``.

    Raises:
        DataError: If ``values`` is not numeric, has non-finite values at draws with non-zero weight, or its
            first axis does not match the number of draws.
    """
    if not isinstance(result, PsisResult):
        raise DataError(f"`result` must be a PsisResult, got {type(result).__name__}. Pass the output of psis().")
    array = np.asarray(values)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"`values` must be a real numeric array, got dtype {array.dtype}. Pass the draws as floats.")
    array = array.astype(np.float64)
    if array.ndim < 1 or array.shape[0] != result.n_draws:
        raise DataError(
            f"`values` must have shape (draws, ...) with draws = {result.n_draws}, got shape {array.shape}. Pass "
            "the draws whose log ratios produced `result`, draws on the first axis."
        )
    weights = result.weights()
    used = weights > 0
    if not np.isfinite(array[used]).all():
        raise DataError(
            "`values` has non-finite entries at draws with non-zero weight. Remove or fix these draws and "
            "recompute the log ratios."
        )
    array = np.where(used.reshape((-1,) + (1,) * (array.ndim - 1)), array, 0.0)
    mean = np.tensordot(weights, array, axes=(0, 0))
    var = np.tensordot(weights, (array - mean) ** 2, axes=(0, 0))
    return mean, np.sqrt(np.maximum(var, 0.0))
