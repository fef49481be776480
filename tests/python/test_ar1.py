"""Tests of the hierarchical AR(1) case study (mlnpe.case_studies.ar1).

Fast tests (one thread, well under a minute): shapes, simulator moments against closed forms, the likelihood and
priors against scipy, bad-input errors, the summary network's padding behaviour, save -> load, a tiny end-to-end
train + SBC run and the Stan program text. With MLNPE_SLOW_TESTS=1 one test compiles the Stan program (about
80 s) and checks its log density against the model's.
"""

import json
import math
import os
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mlnpe import DataError, GroupedBatch, SpecError, TrainConfig
from mlnpe.case_studies import ar1
from mlnpe.case_studies.ar1 import (    GLOBAL_NAMES,
    LOCAL_NAMES,
    AR1Summary,
    HierarchicalAR1,
    ar1_data,
    ar1_estimator,
    ar1_network,
    ar1_stan_data,
    ar1_stan_program,
    load_ar1_estimator,
    posterior_predictive,
)
from mlnpe.inference.calibration import pool_local_ranks, sbc_check, sbc_ranks
from mlnpe.core.models import MODELS, model_from_config
from mlnpe.core.spec import simulate_batch

TINY = dict(summary=dict(row_hidden=8, hidden=8, depth=1, local_dim=4, global_dim=8),
            global_flow=dict(transforms=1, hidden=(8,), bins=4), local_flow=dict(transforms=1, hidden=(8,), bins=4))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def full_design(model: HierarchicalAR1, b: int, j: int, n: int, seed: int) -> GroupedBatch:
    row_mask = torch.ones(b, j, n, dtype=torch.bool)
    return GroupedBatch(None, row_mask, torch.ones(b, j, dtype=torch.bool), model.sample_covariates(row_mask, gen(seed)))


def fixed_locals(b: int, j: int, values: tuple[float, ...]) -> torch.Tensor:
    return torch.tensor(values).expand(b, j, 5).clone()


def frame(n_groups: int = 3, length: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(f"c{j}", 2000 + t, rng.normal(), rng.normal(), rng.normal()) for j in range(n_groups) for t in range(length)]
    return pd.DataFrame(rows, columns=["country", "year", "dy", "u", "v"])


# ---- the model ---------------------------------------------------------------------------------------------


def test_simulated_batch_has_the_declared_shapes_and_names():
    model = HierarchicalAR1()
    sims = simulate_batch(model, 7, (10, 30), (5, 30), gen(0))
    b, j, n = sims.batch.row_mask.shape
    assert b == 7 and 10 <= j <= 30 and 5 <= n <= 30
    assert sims.global_params.shape == (7, 10) and sims.local_params.shape == (7, j, 5)
    assert sims.batch.y.shape == (7, j, n, 1) and sims.batch.x.shape == (7, j, n, 2)
    assert model.global_names == list(GLOBAL_NAMES) and model.local_names == list(LOCAL_NAMES)
    assert GLOBAL_NAMES[:2] == ("mu_alpha", "sd_alpha") and GLOBAL_NAMES[-2:] == ("mu_log_sigma", "sd_log_sigma")
    assert (sims.global_params[:, 1::2] > 0).all() and (sims.local_params[..., 4] > 0).all()
    padded = ~sims.batch.row_mask
    assert (sims.batch.y[..., 0][padded] == 0).all() and (sims.batch.x[padded] == 0).all()
    assert model.ordered_rows and model.x_dim == 2
    with pytest.raises(SpecError, match="init_scale"):
        HierarchicalAR1(init_scale=0.0)


def test_covariates_are_standardized_within_each_series():
    mask = torch.arange(12)[None, None, :] < torch.tensor([[12, 5, 2]])[..., None]  # (1, 3, 12)
    x = HierarchicalAR1().sample_covariates(mask, gen(1))
    for j, n in enumerate([12, 5, 2]):
        real = x[0, j, :n].double()
        assert torch.allclose(real.mean(0), torch.zeros(2, dtype=torch.double), atol=1e-6)
        assert torch.allclose(real.std(0, unbiased=False), torch.ones(2, dtype=torch.double), atol=1e-5)
        assert (x[0, j, n:] == 0).all()


def test_prior_draws_follow_eq_17():
    model = HierarchicalAR1()
    g = model.sample_global(40_000, gen(2))
    mean, sd = g[:, 0::2], g[:, 1::2]
    assert torch.allclose(mean.mean(0), torch.tensor([0, 0, 0, 0, -1.0]), atol=0.02)
    assert torch.allclose(mean.std(0), torch.tensor([0.3, 0.3, 0.3, 0.3, 0.5]), rtol=0.03)
    half_normal_mean = torch.tensor([0.25, 0.25, 0.25, 0.25, 1.0]) * math.sqrt(2 / math.pi)
    assert torch.allclose(sd.mean(0), half_normal_mean, rtol=0.03)
    local = model.sample_local(torch.tensor([[0.1, 0.2, 0.3, 0.1, -0.2, 0.3, 0.0, 0.05, -1.0, 0.4]]), 40_000, gen(3))[0]
    eta = torch.cat([local[:, :4], local[:, 4:].log()], -1)
    assert torch.allclose(eta.mean(0), torch.tensor([0.1, 0.3, -0.2, 0.0, -1.0]), atol=0.01)
    assert torch.allclose(eta.std(0), torch.tensor([0.2, 0.1, 0.3, 0.05, 0.4]), rtol=0.03)


def test_long_series_reach_the_stationary_mean_and_variance():
    # gamma = delta = 0: y is stationary with mean alpha / (1 - beta), variance sigma^2 / (1 - beta^2);
    # after 29 steps beta^29 < 1e-6 of the start remains
    model = HierarchicalAR1(init_scale=3.0)
    alpha, beta, sigma = 0.3, 0.6, 0.5
    design = full_design(model, 40, 250, 30, seed=4)
    y = model.simulate(torch.zeros(40, 10), fixed_locals(40, 250, (alpha, beta, 0, 0, sigma)), design, gen(5))
    last = y[:, :, -1, 0].double()
    assert last.mean().item() == pytest.approx(alpha / (1 - beta), abs=0.03)
    assert last.var().item() == pytest.approx(sigma**2 / (1 - beta**2), abs=0.03)
    assert y[:, :, 0, 0].double().std().item() == pytest.approx(3.0, rel=0.03)  # the start is Normal(0, init_scale)


def test_conditional_mean_given_lambda_is_the_regression_of_eq_16():
    model = HierarchicalAR1()
    truth = (0.2, -0.7, 0.5, -0.3, 0.4)  # a negative beta exercises odd and even powers
    design = full_design(model, 20, 100, 25, seed=6)
    y = model.simulate(torch.zeros(20, 10), fixed_locals(20, 100, truth), design, gen(7))[..., 0].double()
    x = design.x.double()
    target = y[..., 1:].reshape(-1)
    features = torch.stack([torch.ones_like(target), y[..., :-1].reshape(-1), x[..., :-1, 0].reshape(-1),
                            x[..., :-1, 1].reshape(-1)], -1)  # fmt: skip
    coef = torch.linalg.lstsq(features, target[:, None]).solution[:, 0]
    residual_sd = (target - features @ coef).std()
    assert torch.allclose(coef, torch.tensor(truth[:4], dtype=torch.double), atol=0.01)
    assert residual_sd.item() == pytest.approx(truth[4], rel=0.01)


def test_vectorized_simulation_equals_the_recursion():
    model = HierarchicalAR1()
    sims = simulate_batch(model, 3, (4, 6), (5, 9), gen(8))
    design = GroupedBatch(None, sims.batch.row_mask, sims.batch.group_mask, sims.batch.x)
    local = sims.local_params.clone()
    local[..., 1] = torch.linspace(-1.3, 1.2, local.shape[1])  # include |beta| > 1
    y = model.simulate(sims.global_params, local, design, gen(9))[..., 0].double()
    noise = torch.randn(design.row_mask.shape, generator=gen(9)).double()
    a, b, c, d, s = local.double().unbind(-1)
    x = design.x.double()
    expected = torch.zeros_like(y)
    expected[..., 0] = model.init_scale * noise[..., 0]
    for t in range(1, y.shape[-1]):
        expected[..., t] = a + b * expected[..., t - 1] + c * x[..., t - 1, 0] + d * x[..., t - 1, 1] + s * noise[..., t]
    expected = expected * design.row_mask
    assert torch.allclose(y, expected, rtol=1e-4, atol=1e-4)


def test_log_likelihood_matches_scipy():
    model = HierarchicalAR1()
    sims = simulate_batch(model, 3, (2, 5), (2, 8), gen(10))
    draws = torch.stack([model.sample_local(sims.global_params, sims.local_params.shape[1], gen(11 + s)) for s in range(4)])
    lp = model.log_likelihood(sims.batch, sims.global_params, draws)
    assert lp.shape == (4, 3, draws.shape[2])
    y, x, mask = sims.batch.y[..., 0].double().numpy(), sims.batch.x.double().numpy(), sims.batch.row_mask.numpy()
    p = draws.double().numpy()
    for s in range(4):
        for b in range(3):
            for j in range(draws.shape[2]):
                n = int(mask[b, j].sum())
                a, be, g, d, sd = p[s, b, j]
                mean = a + be * y[b, j, : n - 1] + g * x[b, j, : n - 1, 0] + d * x[b, j, : n - 1, 1]
                expected = stats.norm.logpdf(y[b, j, 1:n], mean, sd).sum() if n > 1 else 0.0
                assert lp[s, b, j].item() == pytest.approx(expected, rel=1e-4, abs=1e-3)
    # without a draws dimension
    assert torch.allclose(model.log_likelihood(sims.batch, sims.global_params, draws[0]), lp[0])


def test_log_priors_match_scipy():
    model = HierarchicalAR1()
    g = model.sample_global(5, gen(12))
    local = model.sample_local(g, 4, gen(13))
    gn, ln = g.double().numpy(), local.double().numpy()
    expected_g = sum(stats.norm.logpdf(gn[:, 2 * k], m, s) + stats.halfnorm.logpdf(gn[:, 2 * k + 1], scale=sd)
                     for k, ((m, s), sd) in enumerate(zip(ar1._MEAN_PRIORS, ar1._SD_PRIOR_SCALES)))  # fmt: skip
    assert np.allclose(model.log_prior_global(g).numpy(), expected_g, rtol=1e-5)
    expected_l = sum(stats.norm.logpdf(ln[..., k], gn[:, None, 2 * k], gn[:, None, 2 * k + 1]) for k in range(4))
    expected_l += stats.lognorm.logpdf(ln[..., 4], s=gn[:, None, 9], scale=np.exp(gn[:, None, 8]))
    assert np.allclose(model.log_prior_local(local, g).numpy(), expected_l, rtol=1e-4, atol=1e-4)


# ---- observed data -----------------------------------------------------------------------------------------


def test_ar1_data_builds_grouped_series_with_standardized_covariates():
    df = frame(3, 6).sample(frac=1.0, random_state=1).sort_values("year", kind="stable")  # groups interleaved
    data = ar1_data(df, group="country", time="year", y="dy")
    assert data.levels == ("c0", "c1", "c2") and data.n_rows.tolist() == [6, 6, 6]
    assert data.y_names == ("dy",) and data.x_names == ("u", "v")
    rows = df[df.country == "c1"].sort_values("year")
    assert np.allclose(data.group(1)[0][:, 0], rows.dy.to_numpy())
    assert np.allclose(data.group(1)[1].mean(0), 0) and np.allclose(data.group(1)[1].std(0), 1)
    raw = ar1_data(df, group="country", time="year", y="dy", standardize=False)
    assert np.allclose(raw.group(1)[1], rows[["u", "v"]].to_numpy())


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda d: d.drop(columns="u"), r"`covariates\[0\]` = 'u'"),
        (lambda d: d.assign(dy=d.dy.where(d.index != 4)), r"column 'dy' \(`y`\) has 1 missing values .*impute"),
        (lambda d: d.drop(index=3), r"gap in time in group 'c0': time 2004 .* follows time 2002.*impute"),
        (lambda d: d.iloc[[0, 2, 1, *range(3, len(d))]], r"time running backwards .*sort_values\(\['country', 'year'\]\)"),
        (lambda d: d.assign(year=d.year.where(d.index != 1, 2000)), r"repeated time in group 'c0'.*one row per"),
        (lambda d: d[(d.country != "c2") | (d.year == 2000)], r"1 series with fewer than 2 rows \(first: group 'c2'\)"),
        (lambda d: d.assign(year=d.year + 0.5), r"integer time points .*2000.5"),
        (lambda d: d.assign(dy="a"), r"column 'dy' \(`y`\) must be numeric"),
        (lambda d: d.assign(v=1.0), r"column 'v' \(`covariates`\) is constant within group 'c0'.*standardize=False"),
    ],
)
def test_bad_series_raise_errors_that_name_the_column_and_the_fix(edit, match):
    with pytest.raises(DataError, match=match):
        ar1_data(edit(frame()), group="country", time="year", y="dy")


def test_covariates_must_be_two_columns():
    with pytest.raises(DataError, match="exactly two columns"):
        ar1_data(frame(), group="country", time="year", y="dy", covariates=("u",))


# ---- networks ----------------------------------------------------------------------------------------------


def test_summary_is_the_recurrent_net_beside_moments_and_ignores_padding():
    torch.manual_seed(0)
    summary = AR1Summary(3, 4, 8, "lstm")
    x = torch.randn(5, 9, 3)
    mask = torch.arange(9)[None, :] < torch.tensor([9, 2, 5, 7, 3])[:, None]
    n_rnn = summary.rnn.out_features
    out = summary(x, mask)
    assert out.shape == (5, summary.out_features) and summary.out_features == n_rnn + 4 + 10 + 6 + 8
    # the series' least-squares fit of y_t+1 on (1, y_t, u_t, v_t): series 0 has 8 transitions
    design = torch.cat([torch.ones(8, 1), x[0, :-1]], 1).double()
    coef = torch.linalg.lstsq(design, x[0, 1:, :1].double()).solution[:, 0]
    resid = float(((x[0, 1:, 0].double() - design @ coef) ** 2).sum()) / (8 - 4)
    fit = out[0, n_rnn + 14:].double()
    assert torch.allclose(fit[:4], torch.sign(coef) * torch.log1p(coef.abs()), atol=0.03)
    assert float(fit[4]) == pytest.approx(math.log(resid + 1e-4), abs=0.05) and float(fit[5]) == pytest.approx(math.log(8))
    # then the raw coefficients and the log of their sampling variances, resid * diag((X'X)^-1)
    assert torch.allclose(fit[6:10], coef, atol=0.05)
    sampling = resid * torch.diagonal(torch.linalg.inv(design.T @ design))
    assert torch.allclose(fit[10:14], torch.log(sampling), atol=0.4), (fit[10:14], torch.log(sampling))  # ridge 1e-2, 8 rows
    assert summary.group_estimates == [(summary.out_features - 8 + i, summary.out_features - 4 + i) for i in range(4)]
    assert torch.allclose(out[:, :n_rnn], summary.rnn(torch.sign(x) * torch.log1p(x.abs()), mask), atol=1e-5)
    junk = torch.where(mask[..., None], x, torch.randn(5, 9, 3) * 100)
    longer = torch.cat([junk, torch.randn(5, 4, 3)], 1)
    assert torch.allclose(summary(longer, torch.cat([mask, torch.zeros(5, 4, dtype=torch.bool)], 1)), out, atol=1e-5)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in summary.parameters())


def test_estimator_inputs_are_scaled_robustly():
    npe = ar1_estimator(network=ar1_network(**TINY), pilot_size=128, seed=1)
    # median/MAD scaling: y's scale stays O(1) although explosive prior draws reach |y| >> 1e3
    assert 0.3 < float(npe.estimator.row_scale[0]) < 3.0
    assert torch.allclose(npe.estimator.row_scale[1:], torch.ones(2), atol=0.2)


def test_regression_shift_uses_the_series_fits():
    """The global flow's shift regresses the hyperparameters on the mean and variance over series of the
    summary's least-squares fits: before any training it predicts the hyper-means on fresh simulations (R^2 over
    0.8; the pooled moments alone give mu_gamma and mu_delta R^2 near 0), and the local shift predicts each
    series' coefficients."""
    npe = ar1_estimator(network=ar1_network(**TINY), pilot_size=1024, seed=1)
    est = npe.estimator.eval()
    assert len(est._fixed_cols) == est.local_summary.fixed_features == 28 and len(est._estimate_pairs) == 4
    sims = simulate_batch(npe.model, 300, npe.groups, npe.rows, gen(8))
    with torch.no_grad():
        _, shift, _ = est._split_global(est.summarize(sims.batch)[1])
    gu = est.global_bijector.inverse(sims.global_params)
    r2 = 1.0 - ((gu - shift) ** 2).mean(0) / gu.var(0)
    names = list(ar1.GLOBAL_NAMES)
    for name in ("mu_gamma", "mu_delta", "mu_alpha"):
        assert r2[names.index(name)] > 0.8, dict(zip(names, r2.tolist()))
    # the local flow's shift: each series' (alpha, beta, gamma, delta) from its own fit, the globals and products
    assert est.local_shift
    with torch.no_grad():
        h_local, _ = est.summarize(sims.batch)
        _, local_shift = est._local_inputs(h_local, gu)
    real = sims.batch.group_mask
    lu = est.local_bijector.inverse(sims.local_params)[real]
    residual = (lu - local_shift[real]).abs().median(0).values
    spread = (lu - lu.median(0).values).abs().median(0).values
    assert (residual[:4] < 0.6 * spread[:4]).all(), (residual, spread)
    g, l, lp_g, lp_l = est.sample(3, sims.batch, gen(1), return_log_prob=True)
    lp_g2, lp_l2 = est.log_prob(g, l, sims.batch)
    assert torch.allclose(lp_l, lp_l2, atol=1e-3) and torch.allclose(lp_g, lp_g2, atol=1e-3)


# ---- training, SBC, save and load --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_npe():
    npe = ar1_estimator(network=ar1_network(**TINY), groups=(10, 12), rows=(5, 8), pilot_size=128, seed=3)
    npe.train(TrainConfig(steps=25, batch_size=16, seed=3, progress=False))
    return npe


def test_tiny_end_to_end_train_and_sbc(tiny_npe):
    sims = simulate_batch(tiny_npe.model, 20, tiny_npe.groups, tiny_npe.rows, gen(20))
    g, l = tiny_npe.sample_batch(sims.batch, 30, gen(21))
    assert g.shape == (30, 20, 10) and l.shape == (30, 20, sims.local_params.shape[1], 5)
    assert torch.isfinite(g).all() and torch.isfinite(l).all()
    rng = np.random.default_rng(0)
    global_ranks = sbc_ranks(g.permute(1, 0, 2).numpy(), sims.global_params.numpy(), rng=rng)
    mask = sims.batch.group_mask.numpy()
    local_ranks = sbc_ranks(l.permute(1, 0, 2, 3).numpy(), sims.local_params.numpy(), mask=mask, rng=rng)
    pooled = pool_local_ranks(local_ranks, mask)
    assert global_ranks.shape == (20, 10) and pooled.shape == (int(mask.sum()), 5)
    for ranks in (global_ranks, pooled):
        check = sbc_check(ranks, 30, rng=rng)
        assert check["inside_band"].shape == (ranks.shape[1],) and ((ranks >= 0) & (ranks <= 30)).all()


def test_sample_and_posterior_predictive_on_a_data_frame(tiny_npe):
    data = ar1_data(frame(10, 6), group="country", time="year", y="dy")
    draws = tiny_npe.sample(data, n_draws=50, seed=1)
    assert draws.global_names == GLOBAL_NAMES and draws.local_names == LOCAL_NAMES
    assert draws.local_draws.shape == (50, 10, 5) and draws.levels == data.levels
    pp = posterior_predictive(draws, data, seed=2)
    assert pp["y_rep"].shape == (50, 10 * 5) and pp["y"].shape == (50,)
    assert pp["step"].min() == 1 and pp["step"].max() == 5 and pp["group"].max() == 9
    assert np.allclose(pp["y"][:5], data.group(0)[0][1:, 0])


def test_save_and_load_round_trip(tiny_npe, tmp_path):
    tiny_npe.save(tmp_path / "ar1")
    config = json.loads((tmp_path / "ar1" / "config.json").read_text())
    assert config["model"] == {"class": "HierarchicalAR1", "module": "mlnpe.case_studies.ar1",
                               "kwargs": {"init_scale": 1.0}}  # fmt: skip
    loaded = load_ar1_estimator(tmp_path / "ar1")
    assert isinstance(loaded.model, HierarchicalAR1) and loaded.trained
    data = ar1_data(frame(10, 7, seed=5), group="country", time="year", y="dy")
    draws = tiny_npe.sample(data, n_draws=20, seed=4)
    assert np.array_equal(tiny_npe.log_prob(draws, data), loaded.log_prob(draws, data))
    again = loaded.sample(data, n_draws=20, seed=4)
    assert np.array_equal(again.global_draws, draws.global_draws)


def test_a_fresh_process_rebuilds_the_model_from_its_config():
    config = HierarchicalAR1(init_scale=2.0).to_config()
    assert MODELS["HierarchicalAR1"] is HierarchicalAR1
    assert model_from_config(config).init_scale == 2.0
    code = ("import json, sys; from mlnpe.core.models import model_from_config; "
            "m = model_from_config(json.loads(sys.argv[1])); print(type(m).__name__, m.init_scale)")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code, json.dumps(config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.split() == ["HierarchicalAR1", "2.0"]


# ---- Stan ------------------------------------------------------------------------------------------------


def test_stan_program_and_data():
    program = ar1_stan_program()
    for line in ("mu_alpha ~ normal(0.0, 0.3);", "sd_delta ~ normal(0, 0.25);", "mu_log_sigma ~ normal(-1.0, 0.5);",
                 "sd_log_sigma ~ normal(0, 1.0);", "real<lower=0> sd_beta;", "to_vector(z) ~ std_normal();",
                 "vector[J] sigma_j = exp(log_sigma_j);"):  # fmt: skip
        assert line in program
    data = ar1_data(frame(3, 6), group="country", time="year", y="dy")
    sdata = ar1_stan_data(data)
    assert sdata["J"] == 3 and sdata["M"] == 15 and sdata["group"][:6] == [1, 1, 1, 1, 1, 2]
    assert np.allclose(sdata["y"][:5], data.group(0)[0][1:, 0]) and np.allclose(sdata["y_lag"][:5], data.group(0)[0][:-1, 0])
    assert np.allclose(sdata["u_lag"][:5], data.group(0)[1][:-1, 0])


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("MLNPE_SLOW_TESTS") != "1", reason="compiles Stan (~80 s): set MLNPE_SLOW_TESTS=1")
def test_stan_program_compiles_and_its_density_is_the_models():
    stan = pytest.importorskip("stan", reason='needs PyStan 3: pip install pystan "setuptools<81"')
    model = HierarchicalAR1()
    sims = simulate_batch(model, 1, (6, 6), (12, 12), gen(30))
    data = sims.batch.to_datasets()[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = ar1.fit_ar1_stan(data, chains=2, warmup=200, draws=200, seed=2, backend="pystan")
        posterior = stan.build(ar1_stan_program(), data=ar1_stan_data(data), random_seed=1)  # cached build
    assert fit.draws.global_names == GLOBAL_NAMES and fit.draws.local_draws.shape == (400, 6, 5)
    assert fit.diagnostics["max_rhat"] < 1.2 and fit.diagnostics["chains"] == 2

    # Stan's density of (mu, sd, z) without constants equals the model's density of (tau, lambda) plus the
    # Jacobian of lambda -> z, up to a constant: compare differences between two points
    def both(seed: int) -> tuple[float, float]:
        g = model.sample_global(1, gen(seed))
        local = model.sample_local(g, 6, gen(seed + 1))
        mean, sd = g[0, 0::2].double(), g[0, 1::2].double()
        eta = torch.cat([local[0, :, :4], local[0, :, 4:].log()], -1).double()
        z = ((eta - mean) / sd).T  # (5, J)
        pars = {name: float(v) for name, v in zip(GLOBAL_NAMES, g[0].tolist())} | {"z": z.tolist()}
        lp_stan = posterior.log_prob(posterior.unconstrain_pars(pars), adjust_transform=False)
        lp_model = model.log_prior_global(g.double()) + model.log_prior_local(local.double(), g.double()).sum()
        lp_model = lp_model + model.log_likelihood(data.to_batch(torch.float64), g.double(), local.double()).sum()
        jacobian = 6 * torch.log(sd).sum() + eta[:, 4].sum()  # d lambda / d z
        return lp_stan, float(lp_model + jacobian)

    (s1, m1), (s2, m2) = both(31), both(41)
    assert s1 - s2 == pytest.approx(m1 - m2, rel=1e-6, abs=1e-6)
