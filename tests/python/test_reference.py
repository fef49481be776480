"""Tests of the Stan reference of formula models: their Stan programs and data (mlnpe.formula.stancode), brms
names, R-hat and ESS (mlnpe.inference.convergence), the sampler plumbing (mlnpe.stan) and fit_stan.

The fast tests check the program text (compiling takes about a minute per model); one slow test compiles and
samples a small gaussian model with PyStan.
"""

import asyncio
import math
import re
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from mlnpe.errors import ConfigError, DataError
from mlnpe.formula.api import FormulaNPE
from mlnpe.formula.names import brms_names_and_values
from mlnpe.formula.priors import prior
from mlnpe.formula.stancode import brms_columns, brms_variable_names, stan_data, stan_program
from mlnpe.inference.convergence import ess_bulk, ess_tail, rhat
from mlnpe.stan import StanDiagnosticWarning, StanFit, fit_stan
from mlnpe.stan.backends import outside_event_loop, pystan_chains_first, warn_if_unreliable

LEVELS = ["s1", "s2", "s 3", "s4", "s5", "s6"]


def frame(seed: int = 0, groups=LEVELS, rows: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = len(groups) * rows
    x = rng.normal(1.0, 2.0, n)
    z = rng.normal(size=n)
    eta = 0.3 + 0.5 * x - 0.2 * z
    return pd.DataFrame(
        {
            "y": eta + rng.normal(size=n),
            "pos": np.exp(0.3 * eta + 0.3 * rng.normal(size=n)),
            "count": rng.poisson(np.exp(0.3 * eta).clip(0.1, 20)),
            "bin": (rng.random(n) < 0.5).astype(int),
            "succ": rng.binomial(6, 0.4, n),
            "n": np.full(n, 6),
            "x": x,
            "z": z,
            "g": np.repeat(groups, rows),
        }
    )


@pytest.fixture(scope="module")
def df() -> pd.DataFrame:
    return frame()


@pytest.fixture(scope="module")
def slopes(df) -> FormulaNPE:
    return FormulaNPE("y ~ x + (1 + x | g)", df)


def block(program: str, name: str) -> str:
    """The body of one program block."""
    match = re.search(rf"^{name} \{{\n(.*?)^\}}", program, re.S | re.M)
    return match.group(1) if match else ""


def declared(program: str, name: str) -> list[str]:
    """Names declared at the top level of a block."""
    out = []
    for line in block(program, name).splitlines():
        m = re.match(r"  (?:array\[[^\]]*\] )?[a-z_]+(?:<[^>]*>)?(?:\[[^\]]*\])? ([A-Za-z_][A-Za-z0-9_]*)\s*[;=]", line)
        if m:
            out.append(m.group(1))
    return out


# ---- the program ------------------------------------------------------------------------------------------


def test_gaussian_program_has_every_resolved_prior_and_the_model(slopes):
    program = stan_program(slopes)
    model_block = block(program, "model")
    priors = {slot.class_: dist for slot, dist, _ in slopes.resolved}
    assert priors["Intercept"].to_stan("Intercept") in model_block
    assert priors["b"].to_stan("b", n=1) in model_block
    # both sds share the default half-student-t: one vectorized statement with the truncation term twice
    assert priors["sd"].to_stan("sd_1", n=2) in model_block and "- 2 * student_t_lccdf(0 | 3, 0," in model_block
    assert "target += lkj_corr_cholesky_lpdf(L_1 | 1);" in model_block
    assert priors["sigma"].to_stan("sigma") in model_block and "student_t_lccdf(0 |" in priors["sigma"].to_stan("s")
    assert "target += std_normal_lpdf(to_vector(z_1));" in model_block
    assert "Y ~ normal(mu, sigma);" in model_block
    assert "vector[N] mu = Intercept + Xc * b;" in model_block
    assert "mu += rows_dot_product(Z_1, r_1[group_1]);" in model_block
    assert "r_1 = (diag_pre_multiply(sd_1, L_1) * z_1)';" in block(program, "transformed parameters")
    params = block(program, "parameters")
    assert "vector<lower=0>[M_1] sd_1;" in params and "real<lower=0> sigma;" in params
    assert "cholesky_factor_corr[M_1] L_1;" in params and "matrix[M_1, J_1] z_1;" in params
    assert "Xc = X - rep_matrix(x_means', N);" in block(program, "transformed data")
    gq = block(program, "generated quantities")
    assert "real b_Intercept = Intercept - dot_product(x_means, b);" in gq
    assert "vector[1] cor_1;" in gq and "cor_1[k] = Cor_1[i, j];" in gq
    # one prior statement per parameter block: nothing is counted twice
    assert model_block.count("target +=") == 6


FAMILIES = [
    # family, formula, likelihood, declarations that must appear, prior fragments
    ("bernoulli", "bin ~ x + (1 | g)", "Y ~ bernoulli_logit(mu);", ["array[N] int<lower=0, upper=1> Y;"], []),
    ("binomial", "succ | trials(n) ~ x + (1 | g)", "Y ~ binomial_logit(trials, mu);",
     ["array[N] int<lower=0> Y;", "array[N] int<lower=0> trials;"], []),
    ("poisson", "count ~ x + (1 | g)", "Y ~ poisson_log(mu);", ["array[N] int<lower=0> Y;"], []),
    ("negbinomial", "count ~ x + (1 | g)", "Y ~ neg_binomial_2_log(mu, shape);",
     ["array[N] int<lower=0> Y;", "real<lower=0> shape;"], ["target += gamma_lpdf(shape | 2, 0.5);"]),
    ("lognormal", "pos ~ x + (1 | g)", "Y ~ lognormal(mu, sigma);", ["vector[N] Y;", "real<lower=0> sigma;"],
     ["student_t_lccdf(0 |"]),
    ("Gamma", "pos ~ x + (1 | g)", "Y ~ gamma(shape, shape ./ exp(mu));", ["vector[N] Y;", "real<lower=0> shape;"],
     ["target += gamma_lpdf(shape | 2, 0.5);"]),
    ("student", "y ~ x + (1 | g)", "Y ~ student_t(nu, mu, sigma);",
     ["vector[N] Y;", "real<lower=0> sigma;", "real<lower=1> nu;"],
     ["target += gamma_lpdf(nu | 2, 0.1) - 1 * gamma_lccdf(1 | 2, 0.1);"]),
]  # fmt: skip


@pytest.mark.parametrize("family, formula, likelihood, decls, fragments", FAMILIES, ids=[f[0] for f in FAMILIES])
def test_family_likelihood_declarations_and_priors(df, family, formula, likelihood, decls, fragments):
    # a proper but tight shape prior: the default gamma(0.01, 0.01) is too wide to simulate from
    shape = [prior("gamma(2, 0.5)", "shape")] if family in ("negbinomial", "Gamma") else None
    model = FormulaNPE(formula, df, family=family, prior=shape)
    program = stan_program(model)
    assert likelihood in block(program, "model")
    for decl in decls:
        assert decl in program, decl
    for fragment in fragments:
        assert fragment in block(program, "model"), fragment
    aux = [name for name, _ in model.family.aux]
    params = declared(program, "parameters")
    assert params == ["Intercept", "b", "sd_1", "z_1"] + aux  # one group-level coefficient: no L_1
    for slot, dist, _ in model.resolved:  # every prior of the model, verbatim
        var = {"b": "b", "sd": "sd_1"}.get(slot.class_, slot.class_)
        assert dist.to_stan(var) in program, (slot, dist)
    assert set(declared(program, "data")) == set(stan_data(model))


def test_uncorrelated_effects_have_no_cholesky_factor_and_no_correlations(df):
    model = FormulaNPE("y ~ x + (1 + x || g)", df)
    program = stan_program(model)
    assert "L_1" not in program and "cor_1" not in program and "lkj" not in program
    assert "r_1 = diag_pre_multiply(sd_1, z_1)';" in program
    names = brms_variable_names(model, LEVELS)
    assert not any(n.startswith("cor_") for n in names)


def test_intercept_only_and_no_intercept_models(df):
    intercept_only = FormulaNPE("y ~ 1 + (1 | g)", df)
    only = stan_program(intercept_only)
    assert set(stan_data(intercept_only)) == set(declared(only, "data")) and "X" not in stan_data(intercept_only)
    assert " b;" not in block(only, "parameters") and "X" not in block(only, "data")
    assert "vector[N] mu = rep_vector(Intercept, N);" in only and "real b_Intercept = Intercept;" in only
    none = FormulaNPE("y ~ 0 + x + (1 | g)", df)
    text = stan_program(none)
    assert "Intercept" not in block(text, "parameters") + block(text, "model") and "vector[N] mu = Xc * b;" in text
    assert "generated quantities" not in text  # neither b_Intercept nor correlations
    assert brms_variable_names(none, LEVELS)[:2] == ["b_x", "sd_g__Intercept"]


def test_user_priors_bounds_and_per_coefficient_statements(df):
    priors = [
        prior("normal(0, 1)", "b", coef="x"),
        prior("normal(0.5, 2)", "b", coef="z", lb=0),
        prior("exponential(2)", "sd", coef="x"),
        prior("lkj(2)", "cor"),
        prior("gamma(2, 1)", "sigma"),
        prior("normal(0, 5)", "Intercept", lb=-10, ub=10),
    ]
    model = FormulaNPE("y ~ x + z + (1 + x | g)", df, prior=priors)
    program = stan_program(model)
    model_block = block(program, "model")
    assert "target += normal_lpdf(b[1] | 0, 1);" in model_block
    assert "target += normal_lpdf(b[2] | 0.5, 2) - 1 * normal_lccdf(0 | 0.5, 2);" in model_block
    assert "target += exponential_lpdf(sd_1[2] | 2);" in model_block
    assert "sd_1[1] | 3, 0," in model_block and "target += lkj_corr_cholesky_lpdf(L_1 | 2);" in model_block
    assert "target += gamma_lpdf(sigma | 2, 1);" in model_block
    assert "log_diff_exp(normal_lcdf(10 | 0, 5), normal_lcdf(-10 | 0, 5))" in model_block
    params = block(program, "parameters")
    assert "real<lower=-10, upper=10> Intercept;" in params
    assert "vector<lower=b_lower>[K] b;" in params
    assert "vector[K] b_lower = [negative_infinity(), 0.0]';" in block(program, "transformed data")


def test_stan_data_matches_the_design_and_keeps_the_models_centring(df, slopes):
    data = stan_data(slopes)
    assert set(data) == set(declared(stan_program(slopes), "data"))
    assert data["N"] == len(df) and data["K"] == 1 and data["M_1"] == 2 and data["J_1"] == len(LEVELS)
    np.testing.assert_allclose(data["Y"], df["y"])
    np.testing.assert_allclose(data["X"][:, 0], df["x"])
    np.testing.assert_allclose(data["Z_1"], np.column_stack([np.ones(len(df)), df["x"]]))
    assert data["group_1"].min() == 1 and data["group_1"].max() == len(LEVELS)
    # a subset with other covariate means still uses the means stored at training time
    part = df[df["g"].isin(["s1", "s2"])]
    sub = stan_data(slopes, part)
    np.testing.assert_allclose(sub["x_means"], slopes.x_means)
    assert not np.isclose(part["x"].mean(), slopes.x_means[0])
    assert sub["N"] == len(part) and sub["J_1"] == 2


def test_discrete_data_are_integers(df):
    data = stan_data(FormulaNPE("succ | trials(n) ~ x + (1 | g)", df, family="binomial"))
    assert data["Y"].dtype == np.int64 and data["trials"].dtype == np.int64
    np.testing.assert_array_equal(data["trials"], df["n"])


# ---- names ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("formula", ["y ~ x + (1 + x | g)", "y ~ x + z + (1 + x + z | g)"])
def test_names_and_values_agree_with_the_mlnpe_side(df, formula):
    """The Stan columns and mlnpe's brms_names_and_values give the same names, order and values."""
    model = FormulaNPE(formula, df)
    rng = np.random.default_rng(3)
    S, J, M, K = 5, len(LEVELS), len(model.z_names), len(model.x_means)
    width = sum(len(slot.labels) for slot in model.slots)
    raw = SimpleNamespace(global_draws=rng.normal(size=(S, width)), local_draws=rng.normal(size=(S, J, M)))
    names, values = brms_names_and_values(model, raw, LEVELS)
    assert brms_variable_names(model, LEVELS) == names
    # the same draws as Stan variables: (chains=1, draws, *dims)
    g = raw.global_draws
    intercept, b, sd = g[:, 0], g[:, 1 : 1 + K], g[:, 1 + K : 1 + K + M]
    cor_row_major = g[:, 1 + K + M : -1]
    pairs = [(i, j) for i in range(M) for j in range(i + 1, M)]
    cor_col_major = cor_row_major[:, sorted(range(len(pairs)), key=lambda p: pairs[p][::-1])]
    variables = {"b_Intercept": intercept - b @ model.x_means, "b": b, "sd_1": sd, "cor_1": cor_col_major,
                 "sigma": g[:, -1], "r_1": raw.local_draws}  # fmt: skip
    columns = brms_columns(model, LEVELS, {k: v[None] for k, v in variables.items()})
    assert list(columns) == names
    np.testing.assert_allclose(np.stack([c[0] for c in columns.values()], 1), values)
    assert "r_g[s.3,x]" in names and names.index("r_g[s1,x]") == names.index("r_g[s6,Intercept]") + 1


def test_pystan_layout_is_reordered_to_chains_first():
    chains, draws = 3, 4
    # PyStan: (*dims, draws * chains), flat index draw * chains + chain
    value = np.array([[[10 * c + d + 100 * k for d in range(draws) for c in range(chains)]] for k in range(2)])
    value = value.reshape(2, draws * chains)
    out = pystan_chains_first(value, chains)
    assert out.shape == (chains, draws, 2)
    assert out[2, 1, 1] == 100 + 21 and out[0, 3, 0] == 3


# ---- diagnostics ------------------------------------------------------------------------------------------


def ar1(rho: float, chains: int, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    eps = rng.normal(size=(chains, n)) * math.sqrt(1 - rho**2)
    x = np.empty((chains, n))
    x[:, 0] = rng.normal(size=chains)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + eps[:, t]
    return x


def test_iid_chains_have_rhat_near_one_and_ess_near_the_number_of_draws():
    x = np.random.default_rng(0).normal(size=(4, 1000))
    assert abs(rhat(x) - 1.0) < 0.01
    assert 0.85 * 4000 < ess_bulk(x) < 1.15 * 4000
    assert 0.8 * 4000 < ess_tail(x) < 1.2 * 4000


def test_chains_with_different_locations_or_scales_have_large_rhat():
    rng = np.random.default_rng(1)
    shifted = rng.normal(size=(4, 500)) + np.array([0.0, 0.0, 0.0, 2.0])[:, None]
    assert rhat(shifted) > 1.1
    # equal means, different scales: only the folded (tail) R-hat sees it
    scaled = rng.normal(size=(4, 500)) * np.array([1.0, 1.0, 1.0, 4.0])[:, None]
    assert rhat(scaled) > 1.05
    # a trend within each chain: split R-hat sees it even with one chain
    trend = rng.normal(size=(1, 1000)) + np.linspace(0, 3, 1000)
    assert rhat(trend) > 1.1


@pytest.mark.parametrize("rho", [0.5, 0.9])
def test_ar1_chains_have_ess_near_its_theoretical_value(rho):
    x = ar1(rho, 4, 4000, seed=2)
    expected = x.size * (1 - rho) / (1 + rho)
    assert 0.8 * expected < ess_bulk(x) < 1.2 * expected
    assert ess_tail(x) < 0.7 * x.size  # tail quantiles mix slowly too
    assert abs(rhat(x) - 1.0) < 0.02


def test_diagnostics_match_the_r_package_posterior():
    """Values of posterior 1.4.0's rhat(), ess_bulk() and ess_tail() on the same draws (transposed)."""
    autocorrelated = ar1(0.7, 4, 301, seed=3)  # odd length: split chains drop the middle draw
    heavy = np.random.default_rng(7).standard_t(3, size=(4, 250)) * np.array([1.0, 1.0, 1.0, 3.0])[:, None]
    for x, expected in [(autocorrelated, (1.008839946, 247.206325848, 421.122735535)),
                        (heavy, (1.133916817, 749.211796300, 80.053697037))]:  # fmt: skip
        np.testing.assert_allclose([rhat(x), ess_bulk(x), ess_tail(x)], expected, rtol=1e-8)


def test_diagnostics_edge_cases():
    assert math.isnan(rhat(np.ones((2, 10)))) and math.isnan(ess_bulk(np.ones((2, 10))))
    assert ess_bulk(np.random.default_rng(0).normal(size=200)) > 100  # 1-D = one chain
    with pytest.raises(DataError, match=r"`x` must be a \(chains, draws\) array"):
        rhat(np.zeros((2, 2, 2)))
    with pytest.raises(DataError, match="at least 4 draws"):
        ess_tail(np.zeros((4, 3)))


# ---- fit plumbing (no compile) ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "stan"}, "`backend` must be one of"),
        ({"chains": 0}, "`chains` must be an integer >= 1, got 0"),
        ({"adapt_delta": 1.5}, r"`adapt_delta` must be in \(0, 1\)"),
        ({"draws": 2.5}, "`draws` must be an integer"),
    ],
)
def test_fit_stan_checks_arguments_before_compiling(slopes, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        fit_stan(slopes, **kwargs)


def test_missing_data_is_an_error(slopes):
    dataless = SimpleNamespace(**{k: getattr(slopes, k) for k in ("terms", "family", "resolved", "x_means", "z_names",
                                                                     "grouped_data")}, data=None)  # fmt: skip
    with pytest.raises(DataError, match="`data` is None"):
        stan_data(dataless)


def test_warning_on_divergences_or_large_rhat():
    with pytest.warns(StanDiagnosticWarning, match="3 divergent transition"):
        warn_if_unreliable({"divergences": 3, "max_rhat": 1.0})
    with pytest.warns(StanDiagnosticWarning, match="max R-hat 1.100 > 1.01"):
        warn_if_unreliable({"divergences": 0, "max_rhat": 1.1})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_unreliable({"divergences": 0, "max_rhat": 1.005})


def test_stanfit_summary_per_variable():
    rng = np.random.default_rng(0)
    draws = pd.DataFrame({"b_x": rng.normal(2.0, 1.0, 800), ".chain": np.repeat([1, 2], 400),
                          ".iteration": np.tile(np.arange(1, 401), 2)})  # fmt: skip
    fit = StanFit(draws, {})
    table = fit.summary()
    assert list(table.columns) == ["mean", "sd", "q2.5", "q97.5", "rhat", "ess_bulk", "ess_tail"]
    assert fit.variables == ["b_x"] and abs(table.loc["b_x", "mean"] - 2.0) < 0.15
    assert fit.chains_array("b_x").shape == (2, 400)


def test_calls_from_inside_a_running_event_loop_run_in_a_thread():
    async def main():
        # asyncio.run inside a running loop would fail; the helper moves it to a worker thread
        return outside_event_loop(lambda: asyncio.run(asyncio.sleep(0, result=5)))

    assert asyncio.run(main()) == 5


# ---- one real fit -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pystan_fit_of_a_small_gaussian_model():
    pytest.importorskip("stan", reason='needs PyStan 3: pip install pystan "setuptools<81"')
    rng = np.random.default_rng(11)
    J, n, b_x = 8, 10, 0.8
    g = np.repeat([f"grp {j}" for j in range(J)], n)
    x = rng.normal(size=J * n)
    r = rng.normal(size=(J, 2)) * [0.5, 0.2]
    y = 1.0 + b_x * x + r[np.arange(J).repeat(n), 0] + r[np.arange(J).repeat(n), 1] * x + 0.5 * rng.normal(size=J * n)
    data = pd.DataFrame({"y": y, "x": x, "g": g})
    model = FormulaNPE("y ~ x + (1 + x | g)", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanDiagnosticWarning)  # a few divergences are possible with J = 8
        fit = fit_stan(model, chains=2, warmup=300, draws=300, seed=3, backend="pystan")
    levels = [f"grp.{j}" for j in range(J)]
    assert fit.variables == brms_variable_names(model, [f"grp {j}" for j in range(J)])
    assert fit.variables[:6] == ["b_Intercept", "b_x", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x", "sigma"]
    assert fit.variables[6] == f"r_g[{levels[0]},Intercept]" and fit.variables[-1] == f"r_g[{levels[-1]},x]"
    assert list(fit.draws.columns[-2:]) == [".chain", ".iteration"] and len(fit.draws) == 600
    assert set(fit.diagnostics) >= {"divergences", "max_rhat", "min_ess_bulk", "min_ess_tail", "seconds",
                                    "compile_seconds", "sample_seconds", "backend"}  # fmt: skip
    assert fit.diagnostics["backend"] == "pystan" and fit.diagnostics["max_rhat"] < 1.1
    d = fit.draws
    assert abs(d["b_x"].mean() - b_x) < 3 * d["b_x"].std() + 0.05
    assert d["sigma"].mean() == pytest.approx(0.5, abs=0.2)
    assert (d["sd_g__x"] > 0).all() and d["cor_g__Intercept__x"].abs().max() <= 1
    # b_Intercept is the uncentred intercept: Intercept - x_means * b
    assert abs(d["b_Intercept"].mean() - 1.0) < 3 * d["b_Intercept"].std() + 0.05
    summary = fit.summary()
    assert summary.loc["b_x", "ess_bulk"] > 50 and list(summary.index) == fit.variables

    # from inside a running event loop (as in Jupyter), with the cached model: the same seed, the same draws
    async def in_loop() -> StanFit:
        return fit_stan(model, chains=2, warmup=300, draws=300, seed=3, backend="pystan")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanDiagnosticWarning)
        again = asyncio.run(in_loop())
    pd.testing.assert_frame_equal(again.draws, fit.draws)


@pytest.mark.slow
def test_pystan_fit_of_a_poisson_model_with_an_offset_and_the_intercept_as_a_coefficient():
    # brms's `0 + Intercept` (b_Intercept of class b) and `offset(log(t))` compile, sample and recover the truth
    pytest.importorskip("stan", reason='needs PyStan 3: pip install pystan "setuptools<81"')
    rng = np.random.default_rng(5)
    J, n, b0, b_x = 12, 15, 0.3, 0.5
    g = np.repeat([f"s{j}" for j in range(J)], n)
    x, t = rng.normal(size=J * n), rng.uniform(0.5, 5.0, size=J * n)
    u = 0.3 * rng.normal(size=J)
    y = rng.poisson(t * np.exp(b0 + b_x * x + u[np.arange(J).repeat(n)]))
    data = pd.DataFrame({"y": y, "x": x, "t": t, "g": g})
    model = FormulaNPE("y ~ 0 + Intercept + x + offset(log(t)) + (1 | g)", data, family="poisson")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanDiagnosticWarning)
        fit = fit_stan(model, chains=2, warmup=300, draws=300, seed=4, backend="pystan")
    assert fit.variables[:3] == ["b_Intercept", "b_x", "sd_g__Intercept"] and fit.diagnostics["max_rhat"] < 1.1
    d = fit.draws
    # without the offset, b_Intercept would absorb mean(log t) = 0.8
    assert abs(d["b_Intercept"].mean() - b0) < 3 * d["b_Intercept"].std() + 0.05
    assert abs(d["b_x"].mean() - b_x) < 3 * d["b_x"].std() + 0.05
