"""Tests of mlnpe.inference.psis: Pareto-smoothed importance sampling, k-hat, GPD fit, weighted moments and resampling.

Statistical checks use fixed seeds and normal proposal/target pairs whose tail index is known: for proposal N(0, 1)
and target N(0, s^2) with s > 1 the ratios have a Pareto tail with k = 1 - 1 / s^2. k-hat is biased slightly
downward at finite S: the tail of the ratios is Pareto only up to a slowly varying factor ``1 / sqrt(log w)``, and
a scipy maximum-likelihood GPD fit of the same exceedances gives the same values (about -0.04 at s = 1.5, -0.08 at
s = 3, not shrinking noticeably by S = 200k). One 20k-draw k-hat has a standard deviation of about 0.09, so
comparisons use the mean of ten fixed-seed 20k-draw replicates and an asymmetric tolerance. Moment checks use a
tolerance of a few Monte Carlo standard errors.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np
import pytest
from scipy import special, stats

from mlnpe.errors import DataError
from mlnpe.inference.psis import ParetoKWarning, PsisResult, gpd_fit, pareto_khat, psis, psis_moments

S = 20_000


def _normal_log_ratios(target_sd: float, seed: int, target_mean: float = 0.0, draws: int = S):
    """Draws theta ~ N(0, 1) and returns (theta, log N(theta; mean, sd) - log N(theta; 0, 1))."""
    theta = np.random.default_rng(seed).normal(size=draws)
    return theta, stats.norm.logpdf(theta, target_mean, target_sd) - stats.norm.logpdf(theta)


def _khat(target_sd: float, seed: int) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        return psis(_normal_log_ratios(target_sd, seed)[1]).pareto_k


@functools.lru_cache(maxsize=None)
def _mean_khat(target_sd: float, replicates: int = 10) -> float:
    """Mean k-hat over fixed-seed 20k-draw replicates (seeds 0, 1, ...)."""
    return float(np.mean([_khat(target_sd, seed) for seed in range(replicates)]))


# --------------------------------------------------------------------------------------------------------------
# (a) exact sampling


@pytest.mark.parametrize("constant", [0.0, -3.7, 250.0])
def test_exact_sampling_gives_flat_tail_and_full_ess(constant):
    result = psis(np.full(1000, constant))
    assert result.pareto_k == -math.inf
    assert result.ess == pytest.approx(1000.0)
    np.testing.assert_allclose(result.weights(), 1.0 / 1000)
    assert special.logsumexp(result.log_weights) == pytest.approx(0.0, abs=1e-12)
    assert pareto_khat(np.full(1000, constant)) == -math.inf
    assert result.diagnosis().startswith("Good")


def test_near_exact_sampling_has_small_khat():
    log_ratios = 1e-3 * np.random.default_rng(0).normal(size=4000)
    result = psis(log_ratios)
    assert result.pareto_k < 0.3
    assert result.ess > 0.99 * 4000


# --------------------------------------------------------------------------------------------------------------
# (b) k-hat for normal proposal / target


def test_light_tailed_ratios_have_small_khat():
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParetoKWarning)  # no warning for a good approximation
        result = psis(_normal_log_ratios(0.8, seed=1)[1])
    assert result.pareto_k < 0.5
    assert result.pareto_k <= result.khat_threshold
    assert result.diagnosis().startswith("Good")


def test_heavy_tailed_ratios_have_khat_above_half():
    assert _mean_khat(1.5) > 0.5  # true k = 0.556
    assert _mean_khat(1.5) > _mean_khat(1.2) + 0.15  # true k = 0.306
    assert pareto_khat(_normal_log_ratios(1.5, seed=1)[1]) == pytest.approx(_khat(1.5, seed=1))


def test_very_wide_target_warns():
    log_ratios = _normal_log_ratios(3.0, seed=4)[1]
    with pytest.warns(ParetoKWarning, match=r"k-hat = 0\.\d\d > 0\.7.*(train longer|Train longer)"):
        result = psis(log_ratios)
    assert result.pareto_k > 0.7
    assert result.diagnosis().startswith("Bad")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ParetoKWarning)
        psis(log_ratios, warn=False)  # silenced on request


@pytest.mark.parametrize("target_sd", [1.5, 2.0, 3.0])
def test_khat_matches_theoretical_tail_index(target_sd):
    true_k = 1.0 - 1.0 / target_sd**2
    mean_khat = _mean_khat(target_sd)
    assert true_k - 0.12 < mean_khat < true_k + 0.05, (mean_khat, true_k)  # known small downward bias


def test_khat_increases_with_target_width():
    khats = [_khat(sd, seed=5) for sd in (0.8, 1.2, 1.5, 2.0, 3.0)]
    assert np.all(np.diff(khats) > 0), khats


# --------------------------------------------------------------------------------------------------------------
# algorithm details


def test_tail_length_and_threshold():
    log_ratios = _normal_log_ratios(1.2, seed=6)[1]
    assert psis(log_ratios).tail_length == math.ceil(3 * math.sqrt(S))  # 425 < 0.2 S
    assert psis(log_ratios, r_eff=0.25).tail_length == math.ceil(3 * math.sqrt(S / 0.25))
    assert psis(log_ratios[:100]).tail_length == 20  # 0.2 S < 3 sqrt(S)
    assert psis(log_ratios[:100]).khat_threshold == pytest.approx(0.5)
    assert psis(log_ratios[:1000]).khat_threshold == pytest.approx(1 - 1 / 3)
    assert psis(log_ratios).khat_threshold == pytest.approx(0.7)  # capped


def test_smoothing_keeps_body_proportional_and_tail_ordered():
    log_ratios = _normal_log_ratios(1.5, seed=7)[1] + 12.3  # additive constant must not matter
    result = psis(log_ratios)
    assert special.logsumexp(result.log_weights) == pytest.approx(0.0, abs=1e-10)
    order = np.argsort(log_ratios)
    body, tail = order[: S - result.tail_length], order[S - result.tail_length :]
    offset = result.log_weights[body] - log_ratios[body]
    np.testing.assert_allclose(offset, offset[0], atol=1e-9)  # body: raw weights, rescaled
    assert np.all(np.diff(result.log_weights[tail]) >= -1e-12)  # tail: increasing order statistics
    assert result.log_weights[tail[0]] >= result.log_weights[body[-1]] - 1e-12
    # truncation at the largest raw weight: no smoothed weight above it (on the common scale)
    raw = log_ratios - special.logsumexp(log_ratios)
    scale = result.log_weights[body[0]] - raw[body[0]]
    assert np.max(result.log_weights) <= np.max(raw) + scale + 1e-9
    assert result.log_weights[tail] != pytest.approx(raw[tail] + scale)  # the tail was replaced
    assert result.ess == pytest.approx(1.0 / np.sum(result.weights() ** 2))
    assert 0 < result.ess < S


@pytest.mark.parametrize("target_sd", [1.2, 3.0])
def test_smoothed_weights_follow_the_paper_recipe(target_sd):
    """Tail = GPD quantiles at (z - 0.5) / M plus the (M + 1)-th largest ratio, truncated at the largest ratio."""
    log_ratios = _normal_log_ratios(target_sd, seed=16, draws=3000)[1]
    result = psis(log_ratios, warn=False)
    tail = math.ceil(3 * math.sqrt(3000))
    assert result.tail_length == tail
    shifted = log_ratios - log_ratios.max()
    order = np.argsort(shifted)
    cutoff = math.exp(shifted[order[-tail - 1]])
    k, sigma = gpd_fit(np.exp(shifted[order[-tail:]]) - cutoff)
    assert result.pareto_k == pytest.approx(k, abs=1e-12)
    expected = shifted.copy()
    quantiles = stats.genpareto.ppf((np.arange(1, tail + 1) - 0.5) / tail, k, scale=sigma)
    expected[order[-tail:]] = np.minimum(np.log(quantiles + cutoff), 0.0)
    np.testing.assert_allclose(result.log_weights, expected - special.logsumexp(expected), atol=1e-9)


def test_minus_inf_log_ratios_get_zero_weight():
    log_ratios = _normal_log_ratios(0.9, seed=8, draws=2000)[1]
    log_ratios[::7] = -np.inf
    result = psis(log_ratios)
    assert np.all(result.weights()[::7] == 0.0)
    assert np.isfinite(result.pareto_k) and result.pareto_k < 0.5
    assert result.weights().sum() == pytest.approx(1.0)


def test_too_few_finite_log_ratios_give_infinite_khat():
    log_ratios = np.full(200, -np.inf)
    log_ratios[:5] = np.arange(5.0)
    with pytest.warns(ParetoKWarning):
        result = psis(log_ratios)
    assert result.pareto_k == math.inf
    assert np.count_nonzero(result.weights()) == 5
    assert result.diagnosis().startswith("Bad")


def test_diagnosis_categories():
    base = dict(log_weights=np.full(1000, -math.log(1000)), ess=1000.0, tail_length=95, khat_threshold=1 - 1 / 3)
    good, ok, bad = (PsisResult(pareto_k=k, **base).diagnosis() for k in (0.3, 0.68, 0.9))
    assert good.startswith("Good") and "reliable" in good
    assert ok.startswith("Ok") and f"{math.ceil(10 ** (1 / (1 - 0.68)))} draws" in ok
    assert bad.startswith("Bad") and "heavy tail" in bad and "MCMC" in bad
    assert all(text.count(". ") == 0 for text in (good, ok, bad))  # one sentence each


# --------------------------------------------------------------------------------------------------------------
# (c) importance-weighted moments


def test_weighted_moments_recover_target():
    theta, log_ratios = _normal_log_ratios(0.9, seed=9, target_mean=0.3)
    result = psis(log_ratios)
    assert result.pareto_k < 0.5
    mean, sd = psis_moments(theta, result)
    assert mean.shape == () and sd.shape == ()
    se_mean, se_sd = 0.9 / math.sqrt(result.ess), 0.9 / math.sqrt(2 * result.ess)
    assert abs(mean - 0.3) < 4 * se_mean
    assert abs(sd - 0.9) < 4 * se_sd
    assert abs(theta.mean() - 0.3) > 20 * se_mean  # unweighted draws are clearly off: the test has power


def test_weighted_moments_trailing_axes():
    theta, log_ratios = _normal_log_ratios(0.9, seed=10, target_mean=0.3, draws=2000)
    result = psis(log_ratios)
    values = np.stack([theta, 2 * theta + 1, np.ones_like(theta)], axis=1).reshape(2000, 3, 1)
    mean, sd = psis_moments(values, result)
    assert mean.shape == (3, 1) and sd.shape == (3, 1)
    np.testing.assert_allclose(mean[1, 0], 2 * mean[0, 0] + 1)
    np.testing.assert_allclose(sd[1, 0], 2 * sd[0, 0])
    np.testing.assert_allclose([mean[2, 0], sd[2, 0]], [1.0, 0.0], atol=1e-12)


# --------------------------------------------------------------------------------------------------------------
# (d) GPD fit


@pytest.mark.parametrize("k", [0.2, 0.5])
@pytest.mark.parametrize("sigma", [1.0, 3.0])
def test_gpd_fit_recovers_parameters(k, sigma):
    x = stats.genpareto.rvs(k, scale=sigma, size=5000, random_state=np.random.default_rng(int(10 * k + sigma)))
    k_hat, sigma_hat = gpd_fit(x)
    assert abs(k_hat - k) < 0.06
    assert abs(sigma_hat / sigma - 1) < 0.08


def _zhang_stephens_reference(x: np.ndarray) -> tuple[float, float]:
    """Plain-loop Zhang & Stephens (2009) estimate, without the prior on k, written from the paper's formulas."""
    x = np.sort(x)
    n = len(x)
    m = 30 + int(math.sqrt(n))
    x_star = x[int(n / 4 + 0.5) - 1]
    thetas, log_liks = [], []
    for j in range(1, m + 1):
        theta = 1 / x[-1] + (1 - math.sqrt(m / (j - 0.5))) / (3 * x_star)
        k = float(np.mean(np.log1p(-theta * x)))
        thetas.append(theta)
        log_liks.append(n * (math.log(-theta / k) - k - 1))
    weights = np.exp(np.array(log_liks) - special.logsumexp(log_liks))
    theta_hat = float(np.dot(weights, thetas))
    k_hat = float(np.mean(np.log1p(-theta_hat * x)))
    return k_hat, -k_hat / theta_hat


@pytest.mark.parametrize("n", [8, 40, 500])
def test_gpd_fit_is_zhang_stephens_shrunk_toward_half(n):
    x = stats.genpareto.rvs(0.3, size=n, random_state=np.random.default_rng(n))
    k_zs, sigma_zs = _zhang_stephens_reference(x)
    k_hat, sigma_hat = gpd_fit(x)
    assert k_hat == pytest.approx((n * k_zs + 10 * 0.5) / (n + 10), abs=1e-10)
    assert sigma_hat == pytest.approx(sigma_zs, rel=1e-10)
    assert gpd_fit(x[::-1]) == pytest.approx((k_hat, sigma_hat))  # order does not matter


# --------------------------------------------------------------------------------------------------------------
# (e) resampling


def test_resample_indices_in_range_and_deterministic():
    result = psis(_normal_log_ratios(1.2, seed=14, draws=1000)[1])
    first = result.resample(rng=np.random.default_rng(0))
    second = result.resample(rng=np.random.default_rng(0))
    assert first.shape == (1000,) and np.issubdtype(first.dtype, np.integer)
    assert first.min() >= 0 and first.max() < 1000
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(result.resample(50, rng=7), result.resample(50, rng=np.random.default_rng(7)))
    unique = result.resample(300, rng=np.random.default_rng(1), replace=False)
    assert unique.shape == (300,) and np.unique(unique).size == 300


def test_resample_follows_weights():
    theta, log_ratios = _normal_log_ratios(0.9, seed=15, target_mean=0.3, draws=4000)
    result = psis(log_ratios)
    for replace in (True, False):
        idx = result.resample(2000, rng=np.random.default_rng(2), replace=replace)
        assert abs(theta[idx].mean() - 0.3) < 4 * 0.9 / math.sqrt(1000), replace  # target mean, not 0
    zero = np.r_[np.full(50, -np.inf), np.zeros(50)]
    assert np.all(psis(zero).resample(500, rng=np.random.default_rng(3)) >= 50)  # zero weight: never drawn


# --------------------------------------------------------------------------------------------------------------
# (f) bad input


@pytest.mark.parametrize(
    ("log_ratios", "match"),
    [
        (np.r_[np.zeros(20), np.nan], "NaN"),
        (np.r_[np.zeros(20), np.inf], r"\+inf"),
        (np.zeros(9), "fewer than the 10"),
        (np.zeros((10, 2)), "1-D"),
        (np.full(20, -np.inf), "all -inf"),
        (np.array(["a"] * 20), "numeric"),
    ],
)
def test_bad_log_ratios_raise(log_ratios, match):
    with pytest.raises(DataError, match=match):
        psis(log_ratios)
    with pytest.raises(DataError, match=match):
        pareto_khat(log_ratios)


@pytest.mark.parametrize("r_eff", [0.0, -1.0, math.nan, "1"])
def test_bad_r_eff_raises(r_eff):
    with pytest.raises(DataError, match="r_eff"):
        psis(np.zeros(20), r_eff=r_eff)


@pytest.mark.parametrize(
    ("x", "match"),
    [([1.0], "at least 2"), ([1.0, -1.0], "negative"), ([0.0, 0.0], "all zero"), ([1.0, np.nan], "non-finite")],
)
def test_bad_gpd_fit_input_raises(x, match):
    with pytest.raises(DataError, match=match):
        gpd_fit(np.asarray(x))


def test_bad_moment_and_resample_input_raises():
    result = psis(np.zeros(20))
    with pytest.raises(DataError, match="draws = 20"):
        psis_moments(np.zeros((19, 2)), result)
    with pytest.raises(DataError, match="non-finite"):
        psis_moments(np.r_[np.zeros(19), np.nan], result)
    with pytest.raises(DataError, match="PsisResult"):
        psis_moments(np.zeros(20), "result")
    with pytest.raises(DataError, match="`n`"):
        result.resample(0)
    with pytest.raises(DataError, match="without replacement"):
        result.resample(21, replace=False)
    with pytest.raises(DataError, match="rng"):
        result.resample(rng="seed")
