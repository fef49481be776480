"""Tests of mlnpe.inference's array diagnostics (calibration, recovery, pooling) and their plots (plots).

Statistical tests use fixed seeds and exact (conjugate) posteriors; band coverage is checked against fresh
uniform samples with a tolerance of a few Monte Carlo standard errors.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mlnpe.errors import DataError
from mlnpe.inference import calibration
from mlnpe.inference.calibration import (
    ecdf_bands,
    ecdf_diff,
    pool_local_ranks,
    sbc_check,
    sbc_ranks,
    sbc_uniformity_pvalues,
)
from mlnpe.inference.plots import plot_pooling, plot_ppc, plot_recovery, plot_sbc_ecdf, plot_sbc_histogram
from mlnpe.inference.pooling import pooling_factor
from mlnpe.inference.recovery import recovery

PYTHON_DIR = Path(calibration.__file__).resolve().parents[2]


def _require(module: str):
    """Imports an optional dependency; a missing one skips locally but fails under CI (no silent skips)."""
    if os.environ.get("CI"):
        return importlib.import_module(module)
    return pytest.importorskip(module)


def _conjugate_normal(seed: int, *, sims: int = 400, n_draws: int = 200, params: int = 2, kind: str = "exact"):
    """theta ~ N(0, 1), y ~ N(theta, 1): posterior N(y / 2, 1 / 2); optionally overconfident or biased."""
    rng = np.random.default_rng(seed)
    theta = rng.normal(size=(sims, params))
    y = theta + rng.normal(size=(sims, params))
    mean, sd = y / 2, np.sqrt(0.5)
    if kind == "overconfident":
        sd = sd / 2
    elif kind == "biased":
        mean = mean + 0.5 * sd
    draws = mean[:, None] + sd * rng.normal(size=(sims, n_draws, params))
    return draws, theta


def _inside(diff: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """(K, samples) ECDF differences -> (samples,) whether each lies inside the band at every grid point."""
    return ((diff >= lower[:, None] - 1e-9) & (diff <= upper[:, None] + 1e-9)).all(axis=0)


# ----------------------------------------------------------------------------------------------------------------
# ranks


def test_ranks_count_draws_below_truth_without_ties():
    draws = np.array([[[0.1], [0.5], [0.9], [0.3]], [[2.0], [3.0], [4.0], [5.0]]])  # (sims=2, draws=4, params=1)
    truth = np.array([[0.4], [1.0]])
    ranks = sbc_ranks(draws, truth, rng=np.random.default_rng(0))
    assert ranks.dtype.kind == "i"
    np.testing.assert_array_equal(ranks, [[2], [0]])


def test_ties_are_broken_uniformly_at_random():
    draws = np.tile(np.array([1.0, 2.0, 2.0, 3.0])[None, :, None], (6000, 1, 1))
    truth = np.full((6000, 1), 2.0)
    ranks = sbc_ranks(draws, truth, rng=np.random.default_rng(1)).ravel()
    assert set(np.unique(ranks)) == {1, 2, 3}  # 1 below, plus 0, 1 or 2 of the two ties
    frequencies = np.bincount(ranks, minlength=4)[1:] / ranks.size
    np.testing.assert_allclose(frequencies, 1 / 3, atol=0.025)  # ~4 Monte Carlo sd
    again = sbc_ranks(draws, truth, rng=np.random.default_rng(1)).ravel()
    np.testing.assert_array_equal(ranks, again)  # reproducible with the same generator


def test_ties_from_an_exact_discrete_posterior_give_uniform_ranks():
    # theta ~ Bernoulli(0.5), y ~ N(theta, 1): the exact posterior is Bernoulli, so most draws tie with the truth
    rng = np.random.default_rng(2)
    sims, n_draws = 1000, 99
    theta = rng.integers(0, 2, size=(sims, 1)).astype(float)
    y = theta + rng.normal(size=(sims, 1))
    p1 = 1 / (1 + np.exp(-(y - 0.5)))
    draws = (rng.random((sims, n_draws, 1)) < p1[:, None]).astype(float)
    ranks = sbc_ranks(draws, theta, rng=rng)
    assert sbc_uniformity_pvalues(ranks, n_draws)[0] > 0.01
    assert sbc_check(ranks, n_draws, rng=rng)["inside_band"].all()
    naive = (draws < theta[:, None]).sum(axis=1)  # ignoring ties is not uniform: the tests must see that
    assert sbc_uniformity_pvalues(naive, n_draws)[0] < 1e-6


def test_local_ranks_with_mask_mark_padding_and_pool_valid_groups():
    rng = np.random.default_rng(3)
    sims, n_draws, groups, params = 5, 30, 4, 2
    draws = rng.normal(size=(sims, n_draws, groups, params))
    truth = rng.normal(size=(sims, groups, params))
    mask = np.ones((sims, groups), dtype=bool)
    mask[0, 3] = mask[2, 2:] = False
    ranks = sbc_ranks(draws, truth, mask=mask, rng=rng)
    assert ranks.shape == (sims, groups, params)
    assert (ranks[~mask] == -1).all() and (ranks[mask] >= 0).all()
    # padding content is irrelevant
    garbage = draws.copy()
    garbage[np.broadcast_to(~mask[:, None, :, None], garbage.shape)] = 1e6
    np.testing.assert_array_equal(sbc_ranks(garbage, truth, mask=mask, rng=rng), ranks)
    pooled = pool_local_ranks(ranks, mask)
    assert pooled.shape == (int(mask.sum()), params)
    np.testing.assert_array_equal(pooled, (draws < truth[:, None]).sum(axis=1)[mask])
    with pytest.raises(DataError, match="negative"):
        pool_local_ranks(ranks, np.ones_like(mask))
    with pytest.raises(DataError, match="mask.*shape"):
        pool_local_ranks(ranks, mask[:, :3])
    with pytest.raises(DataError, match="drop them with pool_local_ranks"):
        sbc_uniformity_pvalues(ranks.reshape(-1, params), n_draws)


# ----------------------------------------------------------------------------------------------------------------
# calibration checks against exact and wrong posteriors


def test_exact_posterior_ranks_are_uniform():
    # each check flags an exact posterior with probability ~1 % by design; the seed is fixed
    draws, theta = _conjugate_normal(1)
    ranks = sbc_ranks(draws, theta, rng=np.random.default_rng(1))
    assert ranks.shape == (400, 2) and ranks.min() >= 0 and ranks.max() <= 200
    assert (sbc_uniformity_pvalues(ranks, 200) > 0.01).all()
    assert (sbc_uniformity_pvalues(ranks, 200, method="ks", rng=np.random.default_rng(0)) > 0.01).all()
    check = sbc_check(ranks, 200, rng=np.random.default_rng(0))
    assert check["inside_band"].all()
    assert check["ecdf_diff"].shape == (99, 2) and check["z"].shape == (99,)


@pytest.mark.parametrize("kind", ["overconfident", "biased"])
def test_miscalibrated_posteriors_are_flagged(kind):
    draws, theta = _conjugate_normal(11, kind=kind)
    ranks = sbc_ranks(draws, theta, rng=np.random.default_rng(11))
    assert (sbc_uniformity_pvalues(ranks, 200) < 0.01).all()
    assert (sbc_uniformity_pvalues(ranks, 200, method="ks", rng=np.random.default_rng(0)) < 0.01).all()
    assert not sbc_check(ranks, 200, rng=np.random.default_rng(0))["inside_band"].any()


def test_chisq_false_alarm_rate_is_nominal():
    rng = np.random.default_rng(12)
    ranks = rng.integers(0, 51, size=(300, 2000))  # 2000 exactly uniform rank samples as "parameters"
    rate = (sbc_uniformity_pvalues(ranks, 50) < 0.05).mean()
    assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 2000)


def test_chisq_uses_uneven_bins_correctly():
    # 11 rank values in 4 bins of sizes 3, 3, 2, 3 (or similar): expected counts must follow the bin sizes
    rng = np.random.default_rng(13)
    ranks = rng.integers(0, 11, size=(400, 1000))
    pvalues = sbc_uniformity_pvalues(ranks, 10, n_bins=4)
    assert abs((pvalues < 0.05).mean() - 0.05) < 0.03


# ----------------------------------------------------------------------------------------------------------------
# simultaneous ECDF bands


@pytest.mark.parametrize("n_sims", [20, 200])
def test_band_has_simultaneous_coverage(n_sims):
    z, lower, upper = ecdf_bands(n_sims, prob=0.99)
    assert z.shape == (min(n_sims, 100) - 1,)
    n_samples = 20_000
    u = np.random.default_rng(n_sims).random((n_sims, n_samples))
    coverage = _inside(ecdf_diff(u, z), lower, upper).mean()
    mc_sd = np.sqrt(0.99 * 0.01 / n_samples)  # 0.0007
    # the exact coverage is >= 0.99, above it only by the discreteness of the counts
    assert 0.99 - 4 * mc_sd <= coverage <= 0.99 + 0.003 + 4 * mc_sd, coverage


def test_simulated_band_has_simultaneous_coverage():
    n_sims = 100
    z, lower, upper = ecdf_bands(
        n_sims, prob=0.95, method="simulate", n_simulations=4000, rng=np.random.default_rng(7)
    )
    n_samples = 10_000
    u = np.random.default_rng(8).random((n_sims, n_samples))
    coverage = _inside(ecdf_diff(u, z), lower, upper).mean()
    # Monte Carlo sd of the gamma estimate (4,000 samples, 0.0034) and of this check (0.0022), plus discreteness
    assert abs(coverage - 0.95) < 0.015, coverage
    z2, lower2, upper2 = ecdf_bands(n_sims, prob=0.95)
    assert np.abs(lower - lower2).max() <= 1.5 / n_sims and np.abs(upper - upper2).max() <= 1.5 / n_sims


def test_band_is_wider_than_pointwise_and_narrower_than_bonferroni():
    n_sims = 200
    z, lower, upper = ecdf_bands(n_sims, prob=0.99)
    assert (lower <= 0).all() and (upper >= 0).all()
    pointwise = stats.binom.ppf([[0.005], [0.995]], n_sims, z) / n_sims - z
    bonferroni = stats.binom.ppf([[0.005 / z.size], [1 - 0.005 / z.size]], n_sims, z) / n_sims - z
    assert (lower <= pointwise[0]).all() and (upper >= pointwise[1]).all()
    assert (lower >= bonferroni[0]).all() and (upper <= bonferroni[1]).all()
    assert (upper - lower).sum() < (bonferroni[1] - bonferroni[0]).sum()
    # the unadjusted pointwise band is crossed far more often than 1 %: simultaneous coverage matters
    u = np.random.default_rng(9).random((n_sims, 5000))
    assert _inside(ecdf_diff(u, z), pointwise[0], pointwise[1]).mean() < 0.9


def test_band_grid_options_and_determinism():
    z, lower, upper = ecdf_bands(1000, n_eval=50)
    np.testing.assert_allclose(z, np.arange(1, 50) / 50)
    z2, lower2, upper2 = ecdf_bands(1000, n_eval=50)
    np.testing.assert_array_equal(lower, lower2)
    np.testing.assert_array_equal(upper, upper2)
    assert ecdf_bands(5)[0].size == 4


def test_ecdf_diff_matches_definition():
    values = np.array([[0.1, 0.9], [0.4, 0.2], [0.4, 0.3], [0.8, 0.95]])
    z = np.array([0.25, 0.4, 0.5])
    expected = np.array([[1, 1], [3, 2], [3, 2]]) / 4 - z[:, None]
    np.testing.assert_allclose(ecdf_diff(values, z), expected)


# ----------------------------------------------------------------------------------------------------------------
# recovery


def test_recovery_of_exact_posterior():
    draws, theta = _conjugate_normal(20, sims=500, n_draws=400)
    result = recovery(draws, theta, prior_var=1.0)
    for key in ("median", "lower", "upper", "covered", "contraction", "z_score"):
        assert result[key].shape == (500, 2)
    assert np.all(np.abs(result["coverage"] - 0.95) < 4 * np.sqrt(0.95 * 0.05 / 500))
    assert np.all(np.abs(result["contraction"].mean(0) - 0.5) < 0.02)  # 1 - (1/2) / 1
    assert np.all(np.abs(result["z_score"].std(0) - 1) < 0.1)
    assert np.all(np.abs(result["correlation"] - np.sqrt(0.5)) < 0.08)  # corr(y / 2, theta) = 1 / sqrt(2)
    default = recovery(draws, theta)  # prior variance estimated from the truths
    assert np.all(np.abs(default["prior_var"] - 1) < 0.15)
    assert (result["lower"] <= result["median"]).all() and (result["median"] <= result["upper"]).all()


def test_recovery_flags_overconfidence_and_handles_local_masks():
    draws, theta = _conjugate_normal(21, sims=500, kind="overconfident")
    # intervals half as wide cover P(|Z| < 0.98) = 0.67 instead of 0.95
    assert (recovery(draws, theta, prior_var=1.0)["coverage"] < 0.75).all()
    rng = np.random.default_rng(22)
    local = rng.normal(size=(6, 50, 3, 2))
    truth = rng.normal(size=(6, 3, 2))
    mask = np.ones((6, 3), dtype=bool)
    mask[1, 2] = False
    result = recovery(local, truth, mask=mask)
    assert result["median"].shape == (17, 2)
    np.testing.assert_allclose(result["median"][0], np.median(local[0, :, 0], axis=0))


# ----------------------------------------------------------------------------------------------------------------
# pooling factor (eq. 15)


def test_pooling_factor_limits():
    rng = np.random.default_rng(30)
    n_draws, groups = 20_000, 5
    mu = rng.normal(size=n_draws)
    sigma = 0.7
    # complete pooling: the group deviations' posterior equals their prior N(0, sigma)
    complete = mu[:, None] + sigma * rng.normal(size=(n_draws, groups))
    np.testing.assert_allclose(pooling_factor(complete, mu, sigma), 1.0, atol=0.05)
    # no pooling: the data pin each eta_j (and so mu) down, far more precisely than the spread sigma
    mu_sharp = 1e-3 * rng.normal(size=n_draws)
    no_pooling = np.arange(groups) + 1e-3 * rng.normal(size=(n_draws, groups))
    assert (pooling_factor(no_pooling, mu_sharp, np.full(n_draws, sigma)) < 1e-4).all()
    # the variance is of the draw-wise difference: an uncertain mu adds to it
    np.testing.assert_allclose(pooling_factor(no_pooling, mu, sigma), 1 / sigma**2, rtol=0.05)


def test_pooling_factor_matches_normal_normal_formula():
    # known mu and sigma_eta; group j has n_j rows with residual sd sigma_y
    rng = np.random.default_rng(31)
    mu, sigma_eta, sigma_y = 0.3, 1.2, 2.0
    n_rows = np.array([1, 4, 16, 64])
    post_var = 1 / (n_rows / sigma_y**2 + 1 / sigma_eta**2)
    draws = rng.normal(size=(40_000, n_rows.size)) * np.sqrt(post_var) + 1.0
    kappa = pooling_factor(draws, np.full(40_000, mu), sigma_eta)
    expected = (sigma_y**2 / n_rows) / (sigma_y**2 / n_rows + sigma_eta**2)
    np.testing.assert_allclose(kappa, expected, rtol=0.03)
    assert np.all(np.diff(kappa) < 0)  # more data per group, less pooling


def test_pooling_factor_uses_draw_wise_differences_and_params_axis():
    rng = np.random.default_rng(32)
    mu = rng.normal(size=(4000, 2))
    eta = mu[:, None, :] + 0.1 * rng.normal(size=(4000, 3, 2))  # eta moves with mu: Var(eta - mu) is small
    sigma = np.abs(rng.normal(1.0, 0.05, size=(4000, 2)))
    kappa = pooling_factor(eta, mu, sigma)
    assert kappa.shape == (3, 2)
    np.testing.assert_allclose(kappa, np.broadcast_to(0.01 / np.mean(sigma**2, axis=0), (3, 2)), rtol=0.1)


# ----------------------------------------------------------------------------------------------------------------
# plots


def test_plots_are_created_and_saved(tmp_path):
    _require("matplotlib")
    from matplotlib.figure import Figure

    draws, theta = _conjugate_normal(40, sims=100, n_draws=50)
    ranks = sbc_ranks(draws, theta, rng=np.random.default_rng(0))
    rng = np.random.default_rng(41)
    y_rep = rng.normal(size=(80, 30))
    figures = {
        "ecdf.png": plot_sbc_ecdf(ranks, 50, ["a", "b"], rng=rng, path=tmp_path / "ecdf.png"),
        "hist.png": plot_sbc_histogram(ranks, 50, ["a", "b"], path=tmp_path / "hist.png"),
        "recovery.png": plot_recovery(draws, theta, ["a", "b"], path=tmp_path / "recovery.png"),
        "pooling.png": plot_pooling(rng.random(8), rng.random(8), path=tmp_path / "pooling.png"),
        "ppc.png": plot_ppc(rng.normal(size=30), y_rep, path=tmp_path / "ppc.png"),
    }
    for name, fig in figures.items():
        assert isinstance(fig, Figure)
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    titles = [ax.get_title() for ax in figures["ecdf.png"].axes if ax.get_visible()]
    assert titles == ["a: pass", "b: pass"]
    over, theta = _conjugate_normal(42, sims=100, n_draws=50, params=1, kind="overconfident")
    fig = plot_sbc_ecdf(sbc_ranks(over, theta, rng=rng), 50, ["mu"], rng=rng)
    assert fig.axes[0].get_title() == "mu: FAIL"
    assert plot_ppc(np.ones(5), np.ones((3, 5))) is not None  # constant data fall back to a histogram


# ----------------------------------------------------------------------------------------------------------------
# bad input and imports


def test_bad_input_raises_data_error_naming_the_argument():
    draws, theta = _conjugate_normal(50, sims=20, n_draws=10)
    with pytest.raises(DataError, match="`draws` .* and `truth` .* do not match"):
        sbc_ranks(draws, theta[:, :1])
    bad = draws.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(DataError, match="`draws` has 1 non-finite"):
        sbc_ranks(bad, theta)
    with pytest.raises(DataError, match="`mask` applies to local parameters only"):
        sbc_ranks(draws, theta, mask=np.ones((20, 1), dtype=bool))
    with pytest.raises(DataError, match="`mask` must be boolean"):
        sbc_ranks(draws[:, :, None], theta[:, None], mask=np.ones((20, 1)))
    with pytest.raises(DataError, match=r"`ranks` must lie in \[0, n_draws\]"):
        sbc_uniformity_pvalues(np.full((50, 1), 11), 10)
    with pytest.raises(DataError, match="`method` must be"):
        sbc_uniformity_pvalues(np.zeros((50, 1), dtype=int), 10, method="ad")
    with pytest.raises(DataError, match="bins for the chi-square test"):
        sbc_uniformity_pvalues(np.zeros((6, 1), dtype=int), 10)
    with pytest.raises(DataError, match=r"`prob` must be a probability in \(0, 1\), e.g. 0.99, got 99"):
        ecdf_bands(100, prob=99)
    with pytest.raises(DataError, match="`n_sims` must be a positive integer"):
        ecdf_bands(0)
    with pytest.raises(DataError, match="`n_eval` must be an integer >= 2"):
        ecdf_bands(100, n_eval=1)
    with pytest.raises(DataError, match='`method` must be "optimize" or "simulate"'):
        ecdf_bands(100, method="exact")
    with pytest.raises(DataError, match="`fractional` must lie in"):
        ecdf_diff(np.array([[3.0]]), np.array([0.5]))
    with pytest.raises(DataError, match="`hyper_mean_draws` must have shape"):
        pooling_factor(np.zeros((10, 3)), np.zeros(9), 1.0)
    with pytest.raises(DataError, match="`hyper_sd_draws` must be positive"):
        pooling_factor(np.zeros((10, 3)), np.zeros(10), -1.0)
    with pytest.raises(DataError, match="`prior_var` must be positive"):
        recovery(draws, theta, prior_var=0.0)
    with pytest.raises(DataError, match="`names` must have one entry per parameter"):
        _require("matplotlib")
        plot_sbc_histogram(np.zeros((50, 2), dtype=int), 10, ["only one"])


def test_diagnostics_imports_neither_matplotlib_nor_torch():
    # load the modules under a bare package so that only their own imports count (not mlnpe/__init__.py)
    code = (
        "import sys, types; "
        f"pkg = types.ModuleType('mlnpe'); pkg.__path__ = [{str(PYTHON_DIR / 'mlnpe')!r}]; "
        "sys.modules['mlnpe'] = pkg; "
        "import mlnpe.inference.arrays, mlnpe.inference.calibration, mlnpe.inference.recovery; "
        "import mlnpe.inference.pooling, mlnpe.inference.plots, mlnpe.inference.arviz; "
        "bad = [m for m in ('matplotlib', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_inference_package_reexports_lazily():
    # the package namespace loads a module only when one of its names is first used
    code = (
        "import sys, types; "
        f"pkg = types.ModuleType('mlnpe'); pkg.__path__ = [{str(PYTHON_DIR / 'mlnpe')!r}]; "
        "sys.modules['mlnpe'] = pkg; "
        "import mlnpe.inference as inference; "
        "assert 'mlnpe.inference.calibration' not in sys.modules; "
        "from mlnpe.inference import pooling_factor, sbc_check; "
        "from mlnpe.inference.calibration import sbc_check as direct; "
        "assert sbc_check is direct and 'mlnpe.inference.plots' not in sys.modules; "
        "assert sorted(inference._EXPORTS) == sorted(inference.__all__); "
        "bad = [m for m in ('matplotlib', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
