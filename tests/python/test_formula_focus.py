"""Focused training of formula models (`FormulaNPE.train(focus=k)`): truncated-prior rounds around the data."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe import RangeWarning, TrainConfig
from mlnpe.errors import ConfigError
from mlnpe.formula import FormulaNPE, check_focus, prior
from mlnpe.formula.focus import narrow_region


def _data(seed: int = 0, mu: float = 40.0, n_groups: int = 10, n_rows: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), n_rows)
    a = rng.normal(0.0, 2.0, n_groups)
    return pd.DataFrame({"g": [f"g{j}" for j in g], "y": mu + a[g] + rng.normal(0.0, 1.0, len(g))})


PRIORS = [prior("normal(0, 100)", "Intercept"), prior("normal(0, 5)", "sd"), prior("normal(0, 5)", "sigma")]


def _model(data: pd.DataFrame, seed: int = 0) -> FormulaNPE:
    return FormulaNPE("y ~ 1 + (1 | g)", data, "gaussian", PRIORS, seed=seed)


def test_region_restricts_simulation_but_not_the_prior_density():
    model = _model(_data())
    full = model.model.sample_global(4000, torch.Generator().manual_seed(1))
    in_force = model.model.set_region({"Intercept": (30.0, 50.0), "sd_g__Intercept": (0.5, 4.0), "sigma": (0.2, 3.0)})
    assert in_force == {"Intercept": (30.0, 50.0), "sd_g__Intercept": (0.5, 4.0), "sigma": (0.2, 3.0)}
    draws = model.model.sample_global(4000, torch.Generator().manual_seed(1))
    assert draws[:, 0].min() >= 30.0 and draws[:, 0].max() <= 50.0
    assert draws[:, 1].min() >= 0.5 and draws[:, 1].max() <= 4.0
    # the truncated prior is the prior restricted to the box: its shape inside is the prior's (normal(0, 100) is
    # almost flat over [30, 50], so the draws are almost uniform there)
    assert abs(float(draws[:, 0].mean()) - 40.0) < 0.6
    # PSIS targets the model as specified: the log prior is the full prior's, whatever the region
    theta = torch.tensor([[40.0, 1.0, 1.0]])
    expected = (
        -0.5 * (40.0 / 100) ** 2 - math.log(100 * math.sqrt(2 * math.pi))
        + 2 * (-0.5 * (1 / 5) ** 2 - math.log(5 * math.sqrt(2 * math.pi)) + math.log(2))
    )
    assert float(model.model.log_prior_global(theta)) == pytest.approx(expected, rel=1e-5)
    assert model.model.set_region(None) == {}
    again = model.model.sample_global(4000, torch.Generator().manual_seed(1))
    assert torch.equal(again, full)


def test_region_without_prior_mass_is_not_applied():
    model = _model(_data())
    in_force = model.model.set_region({"Intercept": (5000.0, 5001.0), "sigma": (-3.0, 2.0)})
    # 50 prior sds out: the box is dropped rather than sampled from a numerically empty tail; sigma's box is
    # intersected with its support [0, inf)
    assert in_force == {"sigma": (0.0, 2.0)}


def test_focus_rounds_region_and_save_load(tmp_path):
    data = _data()
    model = _model(data)
    model.train(TrainConfig(steps=200, batch_size=32, learning_rate=2e-3, progress=False), focus=1)
    assert len(model.rounds) == 2
    first = model.rounds[0]["region"]  # the regression box (`regression_region`)
    assert first["Intercept"][0] < data["y"].mean() < first["Intercept"][1]
    assert model.rounds[0]["datasets"] == 80 * 32 and model.rounds[1]["datasets"] == 120 * 32
    assert model.rounds[0]["box"] == "regression" and model.rounds[0]["box_khat"] is None
    # the second round's box: the first round's posterior box where PSIS found it covering (k-hat < 1), else the
    # regression box
    second = model.rounds[1]
    assert second["box"] == ("posterior" if second["box_khat"] < 1.0 else "kept")
    if second["box"] == "kept":
        assert second["region"] == first
    region = model.region
    assert set(region) == {"Intercept", "sd_g__Intercept", "sigma"}
    lo, hi = region["Intercept"]
    assert lo < data["y"].mean() < hi
    assert hi - lo < 400  # narrower than the prior's central 95 % (400 wide), even after 80 steps
    assert model.train_seconds == pytest.approx(sum(r["train_seconds"] for r in model.rounds))
    path = model.save(tmp_path / "m")
    loaded = FormulaNPE.load(path, data=data)
    assert loaded.region == region and loaded.rounds == model.rounds
    a = model.fit(n_draws=200, seed=3, psis=False).draws
    b = loaded.fit(n_draws=200, seed=3, psis=False).draws
    pd.testing.assert_frame_equal(a, b)
    assert model.spec_hash(focus=0) != model.spec_hash(focus=1)
    # the cache key is the specification's: the same before and after training (the R bridge recomputes it)
    assert model.spec_hash(focus=1) == _model(data).spec_hash(focus=1)


def test_an_uncertified_posterior_does_not_narrow_the_box():
    """An untrained amortizer's posterior (k-hat far above 0.7) says nothing about where the data's posterior is:
    its box would cut the posterior off for every later round, so the region stays."""
    data = _data()
    model = _model(data)
    model.model.set_region({"Intercept": (-50.0, 150.0)})
    out = narrow_region(model, seed=0)
    assert out["box"] == "kept" and out["box_khat"] > 1.0
    assert model.region == {"Intercept": (-50.0, 150.0)}


def test_focused_cache_key_covers_the_response():
    """Focused training and training on the data (their loss, their certificate) learn around the data's posterior:
    two data sets with the same covariates and groups but another response must not share such an amortizer, while
    ones trained on simulations alone (which see the covariates only) do."""
    a, b = _data(seed=0), _data(seed=0, mu=41.0)
    assert _model(a).spec_hash(focus=1) != _model(b).spec_hash(focus=1)
    assert _model(a).spec_hash(focus=0) != _model(b).spec_hash(focus=0)  # the data's loss and certificate
    simulations_only = TrainConfig(observed_weight=0.0, check_every=0)
    assert _model(a).spec_hash(simulations_only, focus=0) == _model(b).spec_hash(simulations_only, focus=0)
    assert _model(a).spec_hash(TrainConfig(device="cpu")) == _model(a).spec_hash(TrainConfig(device="auto"))
    regrouped = a.assign(g=a["g"].to_numpy()[::-1])
    assert _model(a).spec_hash(focus=1) != _model(regrouped).spec_hash(focus=1)


def test_regression_region_narrows_a_wide_prior_around_the_posterior():
    """Intercept prior normal(0, 100), sd and sigma normal+(0, 5): regression on the pooled statistics alone
    (no training) boxes every parameter around its posterior, far inside the prior. A box that missed the
    posterior (wrong sign, wrong features, a regression on the wrong parameters) fails this."""
    data = _data(seed=2)
    model = _model(data, seed=1)
    region = model.regression_region(seed=0)
    assert model.region == {}  # the model's own region is left as it was
    ref_mean, ref_sd = float(data["y"].mean()), math.sqrt(4.0 / 10 + 1.0 / 200)
    lo, hi = region["Intercept"]
    assert lo < ref_mean - 2 * ref_sd and ref_mean + 2 * ref_sd < hi
    assert hi - lo < 40 * ref_sd  # the prior's central 95 % is 400 wide, 600 posterior sds
    sd_lo, sd_hi = region["sd_g__Intercept"]
    assert sd_lo < 1.0 and 3.5 < sd_hi < 14.0  # truth 2 (10 groups: a wide posterior); the prior's 99.5 % point is 14
    s_lo, s_hi = region["sigma"]
    assert 0.6 < s_lo < 0.95 and 1.05 < s_hi < 1.6  # truth 1, 200 rows


def test_fit_warns_when_the_posterior_reaches_the_edge_of_the_region():
    data = _data(mu=40.0)
    model = _model(data)
    model.train(TrainConfig(steps=150, batch_size=32, learning_rate=2e-3, progress=False))
    model.model.set_region({"Intercept": (60.0, 80.0)})
    with pytest.warns(RangeWarning, match=r"edge of the region.*Intercept"):
        model.fit(n_draws=200, seed=1, psis=False)
    model.model.set_region({"Intercept": (-100.0, 180.0)})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RangeWarning)
        model.fit(n_draws=200, seed=1, psis=False)


def test_focus_makes_a_wide_prior_problem_accurate():
    """Intercept prior normal(0, 100) against a posterior sd of about 0.65: with the same small budget, the
    focused amortizer is centred within half a posterior sd of the truth-based reference, the unfocused one is
    not close. A focus that truncated the wrong region, or a round that kept the old networks' standardization,
    fails this."""
    data = _data(seed=2)
    # reference: grand mean and its approximate posterior sd sqrt(tau^2 / J + sigma^2 / N) with tau 2, sigma 1
    ref_mean, ref_sd = float(data["y"].mean()), math.sqrt(4.0 / 10 + 1.0 / 200)
    config = TrainConfig(steps=900, batch_size=64, learning_rate=2e-3, progress=False, seed=1)
    torch.set_num_threads(1)
    focused = _model(data, seed=1)
    focused.train(config, focus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = focused.fit(n_draws=2000, seed=2, refine=False)
    b = fit.draws["b_Intercept"]
    assert abs(b.mean() - ref_mean) < 0.5 * ref_sd
    assert 0.6 < b.std() / ref_sd < 2.5


def test_check_focus():
    assert check_focus(True) == 1 and check_focus(False) == 0 and check_focus(2.0) == 2
    for bad in (-1, 6, 1.5, "1", None):
        with pytest.raises(ConfigError, match="`focus` must be a whole number"):
            check_focus(bad)


def _slopes_data(seed: int = 3, n_groups: int = 40, n_rows: int = 12) -> pd.DataFrame:
    """Random intercepts (sd 25) and slopes (sd 6) on x = 0..11, sigma 10: the design of a sleep study."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), n_rows)
    x = np.tile(np.arange(n_rows, dtype=float), n_groups)
    a, b = rng.normal(0.0, 25.0, n_groups), rng.normal(0.0, 6.0, n_groups)
    y = 250.0 + a[g] + (10.0 + b[g]) * x + rng.normal(0.0, 10.0, len(g))
    return pd.DataFrame({"g": [f"s{j}" for j in g], "x": x, "y": y})


def _pooled_statistics(model: FormulaNPE, data: pd.DataFrame) -> torch.Tensor:
    """The data's pooled statistics under the (untrained) model's standardization."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an untrained estimator's batch: only its inputs matter
        batch, _ = model.npe.batch(model.grouped_data(data)[0], allow_extrapolation=True)
    return model.npe.estimator.pooled_statistics(batch)[0].double()


def test_group_fits_estimate_sigma_and_the_group_level_sds_under_random_slopes():
    """The pooled statistics of `scale_statistics`: per-group least-squares fits give sigma (which the common-slope
    fit inflates by the slopes' spread) and moment estimates of the sds of intercepts at x = 0 (not at the
    covariate's pilot median) and of slopes."""
    data = _slopes_data()
    model = FormulaNPE("y ~ x + (1 + x | g)", data, "gaussian", seed=0)
    est = model.npe.estimator
    stats = _pooled_statistics(model, data)
    log_sigma2, excess, log_spread = stats[-5], stats[-4:-2], stats[-2:]
    sy, sx = float(est.row_scale[0]), float(est.row_scale[1])
    sigma = math.sqrt(math.exp(float(log_sigma2))) * sy
    assert sigma == pytest.approx(10.0, rel=0.1)
    common_slope = math.sqrt(math.exp(float(stats[8]))) * sy  # the pooled common-slope residual sd
    assert common_slope > 1.5 * sigma
    variance = torch.sign(excess) * torch.expm1(excess.abs())
    sd_intercept = math.sqrt(float(variance[0])) * sy
    sd_slope = math.sqrt(float(variance[1])) * sy / sx
    assert sd_intercept == pytest.approx(25.0, rel=0.35) and sd_slope == pytest.approx(6.0, rel=0.35)
    assert float(log_spread[0]) > float(torch.log(variance[0]))  # the raw spread includes the sampling noise


def test_group_fits_leave_out_group_level_covariates():
    """A covariate constant within groups (a county's uranium level) has no within-group slope: it is left out of
    each group's fit, and its effect on the intercepts is regressed out of their spread."""
    data = _slopes_data()
    z = np.random.default_rng(9).normal(0.0, 1.0, 40)
    data["z"] = z[data["g"].str[1:].astype(int)]
    data["y"] = data["y"] + 40.0 * data["z"]
    model = FormulaNPE("y ~ x + z + (1 + x | g)", data, "gaussian", seed=0)
    est = model.npe.estimator
    stats = _pooled_statistics(model, data)
    excess = stats[-6:-3]  # [log sigma^2, excess (intercept, x, z), log spread (intercept, x, z)]
    sy = float(est.row_scale[0])
    assert math.sqrt(math.exp(float(stats[-7]))) * sy == pytest.approx(10.0, rel=0.1)
    variance = torch.sign(excess) * torch.expm1(excess.abs())
    assert math.sqrt(float(variance[0])) * sy == pytest.approx(25.0, rel=0.35)  # without 40 z's spread
    assert float(excess[2]) == 0.0  # z has no within-group slope to spread


def test_regression_region_brackets_sigma_on_the_log_scale():
    """Before any training, the regression region of a random-slope model puts sigma in a box a few times its
    value wide, around the truth (positive parameters are regressed on the log scale)."""
    model = FormulaNPE("y ~ x + (1 + x | g)", _slopes_data(), "gaussian", seed=0)
    region = model.regression_region(seed=1)  # the default 2000 simulations, as training runs it
    low, high = region["sigma"]
    assert low < 10.0 < high and high / low < 4.0, region
    assert region["sd_g__x"][0] < 6.0 < region["sd_g__x"][1]


def test_region_edges_of_a_positive_parameter_on_the_log_scale():
    """A group-level sd of about 2 in a box [0.0095, 486] (a regression box with few groups) is far from both edges;
    the same draws in a box starting at 1.9 crowd its lower edge."""
    from mlnpe.core.draws import PosteriorDraws

    model = _model(_data())
    rng = np.random.default_rng(0)
    gd = np.column_stack([np.full(1000, 40.0), 2.0 * np.exp(rng.normal(0, 0.2, 1000)), np.ones(1000)])
    levels = tuple(f"g{j}" for j in range(10))
    draws = PosteriorDraws(gd, np.zeros((1000, 10, 1)), ("Intercept", "sd_g__Intercept", "sigma"), ("Intercept",), levels)
    model.model.set_region({"sd_g__Intercept": (0.0095, 486.0)})
    assert model.region_edges(draws) == []
    model.model.set_region({"sd_g__Intercept": (1.9, 50.0)})
    assert model.region_edges(draws)[0].startswith("sd_g__Intercept (")
