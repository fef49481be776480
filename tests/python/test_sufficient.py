"""Sufficient-statistic local summaries (`SufficientConfig`, `mlnpe.networks.summaries.SufficientSummary`).

For a canonical-link GLM the exact posterior depends on a group's response only through sum y x (and sum y^2 for
a gaussian). The amortized posterior must too: two datasets with the same statistics and design get the same
draws, whatever else differs (overdispersion, skew), and datasets whose statistics differ do not.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe.errors import ConfigError
from mlnpe.io import network_from_saved
from mlnpe.networks.config import NetworkConfig, SufficientConfig, SummaryConfig
from mlnpe.formula import FormulaNPE, prior
from mlnpe.networks.summaries import DeepSet, SufficientSummary


def _same_statistics(y: torch.Tensor, x: torch.Tensor, square: bool, seed: int = 0) -> torch.Tensor:
    """Another response with the same sum y, sum y x (and sum y^2 when `square`) for the design [1, x]."""
    design = torch.cat([torch.ones(len(y), 1, dtype=y.dtype), x], 1)
    v = torch.randn(len(y), generator=torch.Generator().manual_seed(seed), dtype=y.dtype)
    v = v - design @ torch.linalg.lstsq(design, v[:, None]).solution[:, 0]  # orthogonal to [1, x]
    if square:  # |y + c v|^2 = |y|^2 for c = -2 y.v / |v|^2
        return y - 2 * (y @ v) / (v @ v) * v
    return y + v


@pytest.mark.parametrize("square", [True, False])
def test_summary_depends_on_the_response_only_through_its_sufficient_statistics(square):
    torch.manual_seed(0)
    summary = SufficientSummary(3, summary_dim=4, hidden=16, depth=1, square=square).double()
    x = torch.randn(7, 2, dtype=torch.float64)
    y = torch.randn(7, dtype=torch.float64).abs()
    y2 = _same_statistics(y, x, square)
    assert not torch.allclose(y, y2)
    rows = torch.stack([torch.cat([y[:, None], x], 1), torch.cat([y2[:, None], x], 1)])
    mask = torch.ones(2, 7, dtype=torch.bool)
    out = summary(rows, mask)
    assert out.shape == (2, summary.out_features)
    assert torch.allclose(out[0], out[1], atol=1e-8)
    # a change in sum y x changes the summary
    changed = rows.clone()
    changed[1, :, 0] = y + 0.3 * x[:, 0]
    assert not torch.allclose(summary(changed, mask)[0], summary(changed, mask)[1], atol=1e-4)
    # with `square`, sum y^2 matters; without it, it does not
    y3 = _same_statistics(y, x, square=False, seed=1)
    other = torch.stack([rows[0], torch.cat([y3[:, None], x], 1)])
    same = torch.allclose(*summary(other, mask), atol=1e-8)
    assert same is (not square)


def test_summary_ignores_padding_and_design_only_products():
    torch.manual_seed(1)
    summary = SufficientSummary(3, summary_dim=4, hidden=16, depth=1, square=False, design_only=(2,)).double()
    x = torch.randn(5, 1, dtype=torch.float64)
    trials = torch.tensor([[3.0], [5.0], [2.0], [4.0], [6.0]], dtype=torch.float64)
    y = torch.tensor([1.0, 2.0, 0.0, 3.0, 2.0], dtype=torch.float64)
    y2 = _same_statistics(y, x, square=False)  # same sum y and sum y x, a different sum y * trials
    assert abs(float(y @ trials[:, 0] - y2 @ trials[:, 0])) > 1e-3
    rows = torch.stack([torch.cat([y[:, None], x, trials], 1), torch.cat([y2[:, None], x, trials], 1)])
    out = summary(rows, torch.ones(2, 5, dtype=torch.bool))
    assert torch.allclose(out[0], out[1], atol=1e-8)
    padded = torch.cat([rows, 50 * torch.randn(2, 3, 3, dtype=torch.float64)], 1)
    mask = torch.cat([torch.ones(2, 5, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)], 1)
    assert torch.allclose(summary(padded, mask), out, atol=1e-8)
    with pytest.raises(ConfigError, match="design_only"):
        SufficientSummary(3, design_only=(0,))


def test_network_config_checks_sufficient():
    with pytest.raises(ConfigError, match="SufficientConfig `family`"):
        SufficientConfig("linear")
    with pytest.raises(ConfigError, match="log_inputs"):
        NetworkConfig(summary=SummaryConfig(sufficient=SufficientConfig("poisson")), log_inputs=(0,))
    assert network_from_saved({}, 2).summary.sufficient is None


def _counts(y_a: list[int]) -> pd.DataFrame:
    # 4 groups of 3 rows with x = 0, 1, 2; the first group's counts are given
    rng = np.random.default_rng(0)
    y = np.concatenate([y_a, rng.poisson(3.0, 9)])
    return pd.DataFrame({"g": np.repeat(["a", "b", "c", "d"], 3), "x": np.tile([0.0, 1.0, 2.0], 4), "y": y})


def test_formula_models_of_canonical_families_get_the_same_draws_for_the_same_statistics():
    """Poisson y ~ x + (1 | g): group a with counts (1, 0, 1) or (0, 2, 0) at x = (0, 1, 2) has the same sum y
    and sum y x, so the same exact posterior. The (untrained) amortizer's draws must be identical; a deep set
    over rows (negbinomial, which has no finite sufficient statistics) tells them apart."""
    priors = [prior("normal(0, 2)", "Intercept"), prior("normal(0, 1)", "b"), prior("normal(0, 1)", "sd")]
    first, second = _counts([1, 0, 1]), _counts([0, 2, 0])
    model = FormulaNPE("y ~ x + (1 | g)", first, "poisson", priors, seed=0)
    assert model.network.summary.sufficient.family == "poisson" and 0 not in model.network.log_inputs
    with pytest.warns(UserWarning, match="not been trained"):
        a = model.fit(first, n_draws=50, seed=3, psis=False).draws
    with pytest.warns(UserWarning, match="not been trained"):
        b = model.fit(second, n_draws=50, seed=3, psis=False).draws
    pd.testing.assert_frame_equal(a, b, atol=1e-5)
    third = _counts([2, 0, 0])  # same sum y, different sum y x
    with pytest.warns(UserWarning, match="not been trained"):
        c = model.fit(third, n_draws=50, seed=3, psis=False).draws
    assert not np.allclose(a.to_numpy(), c.to_numpy(), atol=1e-3)

    negbin = FormulaNPE("y ~ x + (1 | g)", first, "negbinomial", priors, seed=0)
    assert negbin.network.summary.sufficient is None
    with pytest.warns(UserWarning, match="not been trained"):
        a = negbin.fit(first, n_draws=50, seed=3, psis=False).draws
    with pytest.warns(UserWarning, match="not been trained"):
        b = negbin.fit(second, n_draws=50, seed=3, psis=False).draws
    assert not np.allclose(a.to_numpy(), b.to_numpy(), atol=1e-3)


def test_gaussian_formula_model_uses_sum_y_squared_and_binomial_keeps_trials_as_design():
    data = pd.DataFrame({"g": np.repeat(["a", "b", "c"], 4), "x": np.tile([0.0, 1.0, 2.0, 4.0], 3),
                         "y": np.arange(12.0), "n": np.tile([5, 6, 7, 8], 3)})
    gaussian = FormulaNPE("y ~ x + (1 | g)", data, "gaussian", seed=0)
    assert gaussian.network.summary.sufficient.family == "gaussian" and gaussian.network.log_inputs == ()
    binomial = FormulaNPE("y | trials(n) ~ x + (1 | g)", data.assign(y=np.tile([1, 2, 3, 4], 3)), "binomial", seed=0)
    assert binomial.network.summary.sufficient.family == "binomial"
    design_only = binomial.network.summary.sufficient.design_only
    assert design_only == binomial.network.log_inputs and len(design_only) == 1
    # a user's choice wins
    custom = FormulaNPE("y ~ x + (1 | g)", data, "gaussian", network={"summary": {"sufficient": None}}, seed=0)
    assert custom.network.summary.sufficient is None
    # formula models keep one residual scale per shifted parameter unless asked (BENCHMARKS.md, Stan agreement)
    assert not (gaussian.network.shift.heteroscedastic or gaussian.network.statistics.profile_average)
    assert not gaussian.npe.estimator.global_shift.heteroscedastic
    hetero = FormulaNPE("y ~ x + (1 | g)", data, "gaussian", network={"shift": {"heteroscedastic": True}}, seed=0)
    assert hetero.network.shift.heteroscedastic and hetero.npe.estimator.global_shift.heteroscedastic


def test_lognormal_formula_model_summarizes_log_y_by_its_gaussian_statistics():
    """log y of a lognormal model is gaussian: a group whose log responses are a reflection of another's about
    their mean, with x constant, has the same sum log y, sum log y x and sum (log y)^2, so the same draws; a
    rescaled response (log y shifted) does not."""
    base = pd.DataFrame({"g": np.repeat(["a", "b", "c", "d"], 3), "x": np.repeat([0.0, 1.0, 2.0, 3.0], 3),
                         "y": np.exp(np.tile([0.1, 0.5, 1.2], 4))})
    mirrored = base.copy()
    mirrored.loc[:2, "y"] = np.exp(np.array([1.2, 0.5, 0.1]) * -1 + 2 * 0.6)  # log y -> 1.2 - log y: same sums
    model = FormulaNPE("y ~ x + (1 | g)", base, "lognormal", seed=0)
    assert model.network.summary.sufficient.family == "gaussian" and model.network.log_response
    with pytest.warns(UserWarning, match="not been trained"):
        a = model.fit(base, n_draws=50, seed=3, psis=False).draws
    with pytest.warns(UserWarning, match="not been trained"):
        b = model.fit(mirrored, n_draws=50, seed=3, psis=False).draws
    pd.testing.assert_frame_equal(a, b, atol=1e-4)
    with pytest.warns(UserWarning, match="not been trained"):
        c = model.fit(base.assign(y=base.y * 2.0), n_draws=50, seed=3, psis=False).draws
    assert not np.allclose(a.to_numpy(), c.to_numpy(), atol=1e-3)
    with pytest.raises(ConfigError, match="log_response"):
        NetworkConfig(log_response=True, log_inputs=(0,))


def test_fixed_columns_of_the_summaries_are_weight_free():
    """`fixed_columns` (used by the estimator's regression shift) mark outputs that do not depend on the weights."""
    torch.manual_seed(0)
    x, mask = torch.randn(4, 7, 3), torch.arange(7)[None] < torch.tensor([7, 3, 5, 1])[:, None]
    for build in (lambda: SufficientSummary(3, 4, 8, 1, 8), lambda: DeepSet(3, 4, 8, 1, "full", item_hidden=8)):
        first, second = build(), build()
        cols = first.fixed_columns
        assert cols and cols == second.fixed_columns and max(cols) < first.out_features
        out1, out2 = first(x, mask), second(x, mask)
        assert torch.allclose(out1[:, cols], out2[:, cols], atol=1e-6)
        rest = [c for c in range(first.out_features) if c not in cols]
        assert not torch.allclose(out1[:, rest], out2[:, rest], atol=1e-3)


@pytest.mark.parametrize("family", ["poisson", "binomial", "bernoulli"])
def test_glm_slopes_estimate_the_link_scale_slope(family):
    """The pooled one-step slope of counts and proportions is close to the true link-scale slope (30 groups of
    40 rows with group intercepts), and a model saved before the option loads without it."""
    rng = np.random.default_rng(1)
    for slope in (0.0, 0.5, -0.8):
        g = np.repeat(np.arange(30), 40)
        x = rng.normal(size=g.size)
        eta = 0.3 + slope * x + rng.normal(0, 0.5, 30)[g]
        df = pd.DataFrame({"g": g.astype(str), "x": x})
        formula = "y ~ x + (1 | g)"
        if family == "poisson":
            df["y"] = rng.poisson(np.exp(eta))
        elif family == "binomial":
            df["n"] = rng.integers(5, 20, g.size)
            df["y"] = rng.binomial(df.n, 1 / (1 + np.exp(-eta)))
            formula = "y | trials(n) ~ x + (1 | g)"
        else:
            df["y"] = rng.binomial(1, 1 / (1 + np.exp(-eta)))
        model = FormulaNPE(formula, df, family, seed=0)
        est = model.npe.estimator
        assert est.statistics.glm_slopes
        with pytest.warns(UserWarning):
            batch, _ = model.npe.batch(model.grouped_data(df)[0], allow_extrapolation=True)
        coded = est.pooled_statistics(batch)[0, -2]
        estimate = float(torch.sign(coded) * torch.expm1(coded.abs())) / float(est.row_scale[1])
        assert estimate == pytest.approx(slope, abs=0.15 + 0.15 * abs(slope)), (slope, estimate)
    saved = {"pooled_moments": True, "sufficient": "poisson"}  # saved before `glm_slopes` existed
    assert network_from_saved(saved, 2).statistics.glm_slopes is False


def test_the_design_deep_set_runs_phi_once_per_distinct_row_with_the_same_output():
    """Simulated designs resample the data's covariate rows: the design deep set's phi sees each distinct row once
    (its per-row cost is a lookup), and its output is the plain deep set's."""
    torch.manual_seed(0)
    pool = torch.randn(50, 3)
    rows = pool[torch.randint(0, 50, (4000,))]
    owner = torch.randint(0, 40, (4000,))
    plain = DeepSet(3, 8, 16, 2, "full")
    repeated = DeepSet(3, 8, 16, 2, "full", repeated=True)
    repeated.load_state_dict(plain.state_dict())
    seen = []
    repeated.phi.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0].shape[0]))
    torch.testing.assert_close(repeated.forward_packed(rows, owner, 40), plain.forward_packed(rows, owner, 40))
    assert seen == [len(torch.unique(rows, dim=0))]
