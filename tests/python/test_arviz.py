"""Tests of mlnpe.inference.arviz: brms-named draws as an arviz.InferenceData (groups, shapes, names, coordinates)."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pandas as pd
import pytest

from mlnpe.errors import DataError
from mlnpe.inference.arviz import to_inference_data

N_DRAWS, N_ROWS = 200, 7
LEVELS, COEFS = ("b", "a", "c"), ("Intercept", "x")  # levels deliberately unsorted: coordinates keep this order


@pytest.fixture
def az():
    return pytest.importorskip("arviz")  # a skip, and so a failure under MLNPE_STRICT=1, when ArviZ is missing


def _draws(seed: int = 0) -> pd.DataFrame:
    """A draws table as FormulaFit.draws names it: globals, then r_g[level,coef] with the level varying fastest."""
    rng = np.random.default_rng(seed)
    columns = {
        "b_Intercept": rng.normal(size=N_DRAWS),
        "b_x": rng.normal(size=N_DRAWS),
        "sd_g__Intercept": rng.gamma(2.0, size=N_DRAWS),
        "sd_g__x": rng.gamma(2.0, size=N_DRAWS),
        "cor_g__Intercept__x": rng.uniform(-1, 1, size=N_DRAWS),
        "sigma": rng.gamma(2.0, size=N_DRAWS),
    }
    for coef in COEFS:
        for level in LEVELS:
            columns[f"r_g[{level},{coef}]"] = rng.normal(size=N_DRAWS)
    return pd.DataFrame(columns)


def _pointwise(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.normal(size=N_ROWS)
    y_rep = rng.normal(size=(N_DRAWS, N_ROWS))
    log_lik = -0.5 * (y - rng.normal(0, 0.1, size=(N_DRAWS, N_ROWS))) ** 2 - 0.5 * np.log(2 * np.pi)
    return log_lik, y_rep, y


def test_groups_shapes_names_and_coordinates(az):
    draws = _draws()
    log_lik, y_rep, y = _pointwise()
    idata = to_inference_data(draws, log_likelihood=log_lik, posterior_predictive=y_rep, observed_data=y)
    assert isinstance(idata, az.InferenceData)
    assert set(idata.groups()) == {"posterior", "log_likelihood", "posterior_predictive", "observed_data"}
    posterior = idata.posterior
    assert list(posterior.data_vars) == ["b_Intercept", "b_x", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x",
                                         "sigma", "r_g"]  # fmt: skip
    assert posterior["b_x"].dims == ("chain", "draw") and posterior["b_x"].shape == (1, N_DRAWS)
    assert posterior["r_g"].dims == ("chain", "draw", "g", "g_coef")
    assert posterior["r_g"].shape == (1, N_DRAWS, len(LEVELS), len(COEFS))
    assert list(posterior["g"].values) == list(LEVELS) and list(posterior["g_coef"].values) == list(COEFS)
    for level in LEVELS:
        for coef in COEFS:
            np.testing.assert_array_equal(posterior["r_g"].sel(g=level, g_coef=coef).values[0],
                                          draws[f"r_g[{level},{coef}]"].to_numpy())  # fmt: skip
    np.testing.assert_array_equal(posterior["sigma"].values[0], draws["sigma"].to_numpy())
    for group, values in (("log_likelihood", log_lik), ("posterior_predictive", y_rep)):
        variable = idata[group]["y"]
        assert variable.dims == ("chain", "draw", "obs_id") and variable.shape == (1, N_DRAWS, N_ROWS)
        np.testing.assert_array_equal(variable.values[0], values)
    assert idata.observed_data["y"].dims == ("obs_id",)
    np.testing.assert_array_equal(idata.observed_data["y"].values, y)
    assert idata.attrs["inference_library"] == "mlnpe"


def test_arviz_summary_and_loo_run(az):
    log_lik, y_rep, y = _pointwise()
    idata = to_inference_data(_draws(), log_likelihood=log_lik, posterior_predictive=y_rep, observed_data=y)
    summary = az.summary(idata)
    assert len(summary) == 6 + len(LEVELS) * len(COEFS)  # one row per scalar and per element of r_g
    assert "b_Intercept" in summary.index and any(name.startswith("r_g[") for name in summary.index)
    assert np.isfinite(summary["mean"].to_numpy()).all()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loo = az.loo(idata)
    assert loo.n_data_points == N_ROWS and np.isfinite(loo.elpd_loo)


def test_chains_split_rows_chain_major_and_dims_rename(az):
    draws = _draws()
    idata = to_inference_data(draws, chains=2, dims={"r_g": ["subject", "term"]})
    assert set(idata.groups()) == {"posterior"}
    assert idata.posterior["b_x"].shape == (2, N_DRAWS // 2)
    assert idata.posterior["b_x"].values[1, 0] == draws["b_x"].iloc[N_DRAWS // 2]
    assert idata.posterior["r_g"].dims == ("chain", "draw", "subject", "term")
    assert list(idata.posterior["subject"].values) == list(LEVELS)


def test_mapping_input_and_other_bracketed_variables(az):
    rng = np.random.default_rng(2)
    columns = {"mu": rng.normal(size=10), "theta[1]": rng.normal(size=10), "theta[2]": rng.normal(size=10)}
    idata = to_inference_data(columns)
    assert idata.posterior["theta"].dims == ("chain", "draw", "theta_dim_0")
    assert list(idata.posterior["theta_dim_0"].values) == ["1", "2"]
    np.testing.assert_array_equal(idata.posterior["theta"].values[0, :, 1], columns["theta[2]"])


def test_errors_name_the_argument(az):
    draws = _draws()
    log_lik, y_rep, y = _pointwise()
    with pytest.raises(DataError, match=r"lacks the column r_g\[c,x\]"):
        to_inference_data(draws.drop(columns="r_g[c,x]"))
    with pytest.raises(DataError, match="`log_likelihood` must have shape \\(draws, rows\\) with draws = 200"):
        to_inference_data(draws, log_likelihood=log_lik[:100])
    with pytest.raises(DataError, match="must share their rows"):
        to_inference_data(draws, log_likelihood=log_lik, observed_data=y[:-1])
    with pytest.raises(DataError, match="`chains` must be a positive integer that divides the 200 draws"):
        to_inference_data(draws, chains=3)
    with pytest.raises(DataError, match="`dims\\['r_g'\\]` must name 2 dimensions"):
        to_inference_data(draws, dims={"r_g": ["g"]})
    with pytest.raises(DataError, match="`draws` must be a pandas DataFrame or a mapping"):
        to_inference_data(np.zeros((10, 2)))
    with pytest.raises(DataError, match="same positive number of draws"):
        to_inference_data({"a": np.zeros(3), "b": np.zeros(4)})
    with pytest.raises(DataError, match="`response` 'sigma' is also a column"):
        to_inference_data(draws, observed_data=y, response="sigma")


def test_missing_arviz_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "arviz", None)  # makes `import arviz` raise ImportError
    with pytest.raises(ImportError, match="pip install arviz"):
        to_inference_data(_draws())


def test_formula_fit_to_arviz_has_every_group():
    pytest.importorskip("arviz")
    import pandas as pd

    from mlnpe import TrainConfig
    from mlnpe.formula import FormulaNPE

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 5)
    x = rng.normal(size=g.size)
    df = pd.DataFrame({"y": 1 + 0.5 * x + rng.normal(size=6)[g] + rng.normal(size=g.size), "x": x, "g": g})
    model = FormulaNPE("y ~ x + (1 | g)", df, family="gaussian", seed=0)
    model.train(TrainConfig(steps=3, batch_size=8, time_limit=None, progress=False, num_threads=1))
    fit = model.fit(n_draws=50, seed=1, refine=False, psis=False)
    idata = fit.to_arviz(seed=2)
    assert set(idata.groups()) >= {"posterior", "log_likelihood", "posterior_predictive", "observed_data"}
    assert idata.posterior["b_x"].shape == (1, 50)
    assert idata.posterior["r_g"].shape == (1, 50, 6, 1)
    assert idata.log_likelihood["y"].shape == (1, 50, g.size)
    assert idata.posterior_predictive["y"].shape == (1, 50, g.size)
    np.testing.assert_allclose(idata.observed_data["y"].values, df["y"].to_numpy())
