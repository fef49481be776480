"""Tests of mlnpe.examples.exact: the exact posterior of the two-level normal model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from mlnpe.errors import DataError
from mlnpe.examples.exact import NormalModelPosterior, normal_model_posterior, simulate_normal_model

GROUPS = [
    np.array([0.9, -0.2, 0.4]),
    np.array([-1.1, 0.1]),
    np.array([1.5, 0.8, 1.9, 0.6, 1.2]),
]


def _grid_reference(ybar, n, sigma, mu_loc, mu_scale, tau_scale, mu_range, tau_range, size=(601, 2001)):
    """Posterior moments by brute-force 2-d trapezoid quadrature over (mu, tau), alpha integrated analytically."""
    ybar = np.asarray(ybar, float)
    s2 = sigma**2 / np.asarray(n, float)
    mu = np.linspace(*mu_range, size[0])[:, None, None]
    tau = np.linspace(*tau_range, size[1])[None, :, None]
    var = tau**2 + s2
    # log N(mu; mu_loc, mu_scale) + log HalfNormal(tau; tau_scale) + sum_j log N(ybar_j; mu, tau^2 + s_j^2)
    log_p = (
        -0.5 * ((mu[..., 0] - mu_loc) / mu_scale) ** 2
        - 0.5 * (tau[..., 0] / tau_scale) ** 2
        - 0.5 * (np.log(var) + (ybar - mu) ** 2 / var).sum(axis=-1)
    )
    w = np.exp(log_p - log_p.max())
    w[0] *= 0.5  # trapezoid rule: half weight on the boundary rows and columns
    w[-1] *= 0.5
    w[:, 0] *= 0.5
    w[:, -1] *= 0.5
    w /= w.sum()
    # alpha_j | mu, tau: precision-weighted combination of mu (prior) and ybar_j (likelihood).
    a_mean = (mu * s2 + ybar * tau**2) / var
    a_var = tau**2 * s2 / var
    mu2, tau2 = mu[..., 0], tau[..., 0]
    out = {
        "mu_mean": (w * mu2).sum(),
        "tau_mean": (w * tau2).sum(),
        "alpha_mean": np.einsum("ab,abj->j", w, a_mean),
    }
    out["mu_sd"] = np.sqrt((w * (mu2 - out["mu_mean"]) ** 2).sum())
    out["tau_sd"] = np.sqrt((w * (tau2 - out["tau_mean"]) ** 2).sum())
    out["alpha_sd"] = np.sqrt(np.einsum("ab,abj->j", w, a_var + (a_mean - out["alpha_mean"]) ** 2))
    # Mass on the outer rows/columns must be negligible for the reference to be trustworthy.
    out["edge_mass"] = w[0].sum() + w[-1].sum() + w[:, -1].sum() + (w[:, 0].sum() if tau_range[0] > 0 else 0.0)
    return out


def _assert_matches(post: NormalModelPosterior, ref: dict, atol: float) -> None:
    assert ref["edge_mass"] < 1e-10
    for key in ("mu_mean", "mu_sd", "tau_mean", "tau_sd"):
        assert getattr(post, key) == pytest.approx(ref[key], abs=atol), key
    np.testing.assert_allclose(post.alpha_mean, ref["alpha_mean"], atol=atol)
    np.testing.assert_allclose(post.alpha_sd, ref["alpha_sd"], atol=atol)


# ---------------------------------------------------------------------------------------------------------------
# (a) brute-force checks
# ---------------------------------------------------------------------------------------------------------------


def test_matches_importance_sampling_from_prior():
    """Plain importance sampling of (mu, tau, alpha) from the prior, weighted by the likelihood of all the y."""
    rng = np.random.default_rng(20240611)
    draws = 400_000
    mu = rng.normal(0.0, 1.0, draws)
    tau = np.abs(rng.normal(0.0, 1.0, draws))
    alpha = mu[:, None] + tau[:, None] * rng.standard_normal((draws, len(GROUPS)))
    log_w = sum(stats.norm.logpdf(g[None, :], alpha[:, [j]], 1.0).sum(axis=1) for j, g in enumerate(GROUPS))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    ess = 1.0 / (w**2).sum()
    assert ess > 10_000

    post = normal_model_posterior(GROUPS)
    quantities = {"mu": (mu, post.mu_mean, post.mu_sd), "tau": (tau, post.tau_mean, post.tau_sd)}
    for j in range(len(GROUPS)):
        quantities[f"alpha{j}"] = (alpha[:, j], post.alpha_mean[j], post.alpha_sd[j])
    for name, (x, exact_mean, exact_sd) in quantities.items():
        mean = w @ x
        dev2 = (x - mean) ** 2
        var = w @ dev2
        se_mean = np.sqrt(w**2 @ dev2)
        se_sd = np.sqrt(w**2 @ (dev2 - var) ** 2) / (2.0 * np.sqrt(var))
        assert abs(mean - exact_mean) < 5.0 * se_mean, name
        assert abs(np.sqrt(var) - exact_sd) < 5.0 * se_sd, name


@pytest.mark.parametrize(
    "sigma, mu_loc, mu_scale, tau_scale",
    [(1.0, 0.0, 1.0, 1.0), (1.5, 0.5, 2.0, 0.7), (0.3, -1.0, 0.5, 3.0)],
)
def test_matches_dense_two_dimensional_grid(sigma, mu_loc, mu_scale, tau_scale):
    ybar = np.array([g.mean() for g in GROUPS])
    n = np.array([len(g) for g in GROUPS])
    post = normal_model_posterior(
        ybar=ybar, n=n, sigma=sigma, mu_loc=mu_loc, mu_scale=mu_scale, tau_scale=tau_scale
    )
    ref = _grid_reference(
        ybar, n, sigma, mu_loc, mu_scale, tau_scale, mu_range=(-8.0, 8.0), tau_range=(0.0, 6.0 * tau_scale + 3.0)
    )
    _assert_matches(post, ref, atol=2e-5)


def test_matches_dense_grid_when_tau_is_well_identified():
    """Many groups: the posterior of tau is peaked away from 0 and the grid must zoom onto it."""
    rng = np.random.default_rng(1)
    truth, groups = simulate_normal_model([20] * 40, rng, tau_scale=1.0)
    post = normal_model_posterior(groups)
    assert post.tau_sd < 0.3 * post.tau_mean
    assert post.tau_edges[0] > 0.0
    ybar = np.array([g.mean() for g in groups])
    ref = _grid_reference(
        ybar,
        [20] * 40,
        1.0,
        0.0,
        1.0,
        1.0,
        mu_range=(ybar.mean() - 2.0, ybar.mean() + 2.0),
        tau_range=(0.25, 2.0),
        size=(301, 801),
    )
    _assert_matches(post, ref, atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# (b) limits
# ---------------------------------------------------------------------------------------------------------------


def test_huge_groups_pin_alpha_to_the_group_means():
    ybar = np.array([-1.0, 0.5, 1.2, 2.0])
    n = np.full(4, 1e8)
    post = normal_model_posterior(ybar=ybar, n=n, sigma=2.0)
    np.testing.assert_allclose(post.alpha_mean, ybar, atol=1e-6)
    np.testing.assert_allclose(post.alpha_sd, 2.0 / np.sqrt(n), rtol=1e-4)
    # mu and tau then follow from four exactly known alphas.
    assert 0.5 < post.tau_mean < 3.0


def test_identical_huge_groups_concentrate_tau_near_zero():
    post = normal_model_posterior(ybar=np.full(50, 0.7), n=np.full(50, 1e6))
    assert post.tau_edges[0] == 0.0
    assert post.tau_mean < 0.01
    assert post.mu_mean == pytest.approx(0.7, abs=1e-3)
    assert np.all(np.isfinite(post.alpha_sd)) and np.all(post.alpha_sd > 0)


def test_data_far_outside_the_prior_widen_the_grid():
    post = normal_model_posterior(ybar=[-100.0, 0.0, 50.0, 100.0], n=[3, 2, 5, 1])
    assert 5.0 < post.tau_mean < 30.0
    assert post.tau_weights[-1] < 1e-12
    assert post.cdf("tau", post.tau_edges[-1]) == pytest.approx(1.0)


def test_grid_size_convergence():
    fine = normal_model_posterior(GROUPS, grid_size=20_000)
    for size, tol in [(200, 1e-6), (4000, 1e-9)]:
        post = normal_model_posterior(GROUPS, grid_size=size)
        assert post.tau_mean == pytest.approx(fine.tau_mean, abs=tol)
        assert post.tau_sd == pytest.approx(fine.tau_sd, abs=tol)
        assert post.mu_mean == pytest.approx(fine.mu_mean, abs=tol)
        np.testing.assert_allclose(post.alpha_sd, fine.alpha_sd, atol=tol)


def test_groups_and_sufficient_statistics_agree():
    a = normal_model_posterior(GROUPS)
    b = normal_model_posterior(ybar=[g.mean() for g in GROUPS], n=[len(g) for g in GROUPS])
    assert a.mu_mean == pytest.approx(b.mu_mean, abs=1e-14)
    assert a.tau_sd == pytest.approx(b.tau_sd, abs=1e-14)
    np.testing.assert_allclose(a.alpha_mean, b.alpha_mean, atol=1e-14)
    assert a.tau_weights.sum() == pytest.approx(1.0)
    assert a.tau_grid.shape == (4000,) and a.tau_edges.shape == (4001,)
    assert np.all(np.diff(a.tau_edges) > 0)
    assert np.all((a.tau_grid > a.tau_edges[:-1]) & (a.tau_grid < a.tau_edges[1:]))
    assert a.alpha_mean.shape == a.alpha_sd.shape == (3,)


# ---------------------------------------------------------------------------------------------------------------
# (c) calibration
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sigma, tau_scale", [(1.0, 1.0), (2.0, 0.5)])
def test_sbc_cdf_at_truth_is_uniform(sigma, tau_scale):
    rng = np.random.default_rng(123)
    u = {"mu": [], "tau": [], "alpha": []}
    for _ in range(300):
        n_rows = rng.integers(1, 8, size=rng.integers(2, 7))
        truth, groups = simulate_normal_model(n_rows, rng, sigma=sigma, tau_scale=tau_scale)
        post = normal_model_posterior(groups, sigma=sigma, tau_scale=tau_scale, grid_size=1000)
        u["mu"].append(post.cdf("mu", truth["mu"]))
        u["tau"].append(post.cdf("tau", truth["tau"]))
        u["alpha"].append(post.cdf("alpha", truth["alpha"])[0])
    for name, values in u.items():
        assert stats.kstest(values, "uniform").pvalue > 0.01, name


def test_sbc_detects_a_misspecified_posterior():
    """Power check of the SBC test above: a posterior computed under the wrong tau prior fails it."""
    rng = np.random.default_rng(123)
    u = []
    for _ in range(100):
        truth, groups = simulate_normal_model(rng.integers(1, 8, size=4), rng)
        u.append(normal_model_posterior(groups, tau_scale=0.3, grid_size=500).cdf("tau", truth["tau"]))
    assert stats.kstest(u, "uniform").pvalue < 1e-6


# ---------------------------------------------------------------------------------------------------------------
# (d) sampling and CDFs
# ---------------------------------------------------------------------------------------------------------------


def test_sample_moments_and_cdfs_match():
    post = normal_model_posterior(GROUPS, mu_scale=2.0)
    rng = np.random.default_rng(99)
    draws = 200_000
    s = post.sample(draws, rng)
    assert s["mu"].shape == (draws,) and s["tau"].shape == (draws,) and s["alpha"].shape == (draws, 3)
    assert np.all(s["tau"] >= 0.0)
    for x, mean, sd in [
        (s["mu"], post.mu_mean, post.mu_sd),
        (s["tau"], post.tau_mean, post.tau_sd),
        *[(s["alpha"][:, j], post.alpha_mean[j], post.alpha_sd[j]) for j in range(3)],
    ]:
        assert abs(x.mean() - mean) < 5.0 * sd / np.sqrt(draws)
        assert x.std() == pytest.approx(sd, rel=0.015)
    # Kolmogorov distance between the draws and the exact CDFs (DKW: 0.005 is > 3 sigma for 200k draws).
    for name, x in [("mu", s["mu"]), ("tau", s["tau"])]:
        q = np.quantile(x, np.linspace(0.01, 0.99, 25))
        np.testing.assert_allclose(post.cdf(name, q), np.linspace(0.01, 0.99, 25), atol=0.005)
    q = np.quantile(s["alpha"], [0.1, 0.5, 0.9], axis=0)  # (3, J)
    np.testing.assert_allclose(post.cdf("alpha", q), np.array([[0.1] * 3, [0.5] * 3, [0.9] * 3]), atol=0.005)


def test_cdf_shapes_and_limits():
    post = normal_model_posterior(GROUPS)
    assert isinstance(post.cdf("mu", 0.0), float)
    assert isinstance(post.cdf("tau", 1.0), float)
    assert post.cdf("mu", -np.inf) == 0.0 and post.cdf("mu", np.inf) == 1.0
    assert post.cdf("tau", -1.0) == 0.0 and post.cdf("tau", 0.0) == 0.0 and post.cdf("tau", 1e6) == 1.0
    assert post.cdf("mu", np.zeros((2, 5))).shape == (2, 5)
    grid = np.linspace(-3, 3, 50)
    assert np.all(np.diff(post.cdf("mu", grid)) > 0)
    assert np.all(np.diff(post.cdf("tau", np.linspace(0, 5, 50))) > 0)
    assert post.cdf("alpha", 0.0).shape == (3,)
    assert post.cdf("alpha", np.zeros((4, 3))).shape == (4, 3)
    np.testing.assert_allclose(post.cdf("alpha", post.alpha_mean), 0.5, atol=0.05)
    assert post.cdf("mu", post.mu_mean) == pytest.approx(0.5, abs=0.05)


def test_simulate_normal_model_shapes_and_reproducibility():
    truth, groups = simulate_normal_model([3, 1, 4], np.random.default_rng(0), sigma=0.5)
    assert truth["mu"].shape == () and truth["tau"].shape == () and truth["alpha"].shape == (3,)
    assert truth["tau"] >= 0.0
    assert [len(g) for g in groups] == [3, 1, 4]
    again, groups2 = simulate_normal_model([3, 1, 4], np.random.default_rng(0), sigma=0.5)
    assert float(again["mu"]) == float(truth["mu"])
    for g, h in zip(groups, groups2):
        np.testing.assert_array_equal(g, h)


# ---------------------------------------------------------------------------------------------------------------
# (e) errors
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([],), {}, "groups"),
        (([np.array([1.0]), np.array([])],), {}, r"groups\[1\]"),
        (([np.array([1.0, np.nan])],), {}, r"groups\[0\]"),
        (([np.array([1.0, np.inf])],), {}, r"groups\[0\]"),
        (([np.ones((2, 2))],), {}, r"groups\[0\]"),
        (("abc",), {}, "groups"),
        ((), {}, "groups"),
        ((GROUPS,), {"ybar": [1.0], "n": [1]}, "groups"),
        ((), {"ybar": [1.0, 2.0]}, "n"),
        ((), {"ybar": [1.0, 2.0], "n": [1]}, "n"),
        ((), {"ybar": [1.0, 2.0], "n": [1, 0]}, "n"),
        ((), {"ybar": [1.0, 2.0], "n": [1, 2.5]}, "n"),
        ((), {"ybar": [1.0, np.nan], "n": [1, 2]}, "ybar"),
        ((), {"ybar": [], "n": []}, "ybar"),
        ((GROUPS,), {"sigma": 0.0}, "sigma"),
        ((GROUPS,), {"sigma": -1.0}, "sigma"),
        ((GROUPS,), {"sigma": np.nan}, "sigma"),
        ((GROUPS,), {"mu_scale": 0.0}, "mu_scale"),
        ((GROUPS,), {"tau_scale": -2.0}, "tau_scale"),
        ((GROUPS,), {"mu_loc": np.inf}, "mu_loc"),
        ((GROUPS,), {"grid_size": 3}, "grid_size"),
    ],
)
def test_posterior_input_errors(args, kwargs, match):
    with pytest.raises(DataError, match=match):
        normal_model_posterior(*args, **kwargs)


def test_method_and_simulator_errors():
    post = normal_model_posterior(GROUPS)
    rng = np.random.default_rng(0)
    with pytest.raises(DataError, match="name"):
        post.cdf("sigma", 0.0)
    with pytest.raises(DataError, match="value"):
        post.cdf("mu", np.nan)
    with pytest.raises(DataError, match="J=3"):
        post.cdf("alpha", np.zeros(2))
    with pytest.raises(DataError, match="n must"):
        post.sample(0, rng)
    with pytest.raises(DataError, match="rng"):
        post.sample(10, 0)
    with pytest.raises(DataError, match="n_rows"):
        simulate_normal_model([], rng)
    with pytest.raises(DataError, match="n_rows"):
        simulate_normal_model([3, 0], rng)
    with pytest.raises(DataError, match="rng"):
        simulate_normal_model([3], None)
    with pytest.raises(DataError, match="sigma"):
        simulate_normal_model([3], rng, sigma=0.0)
