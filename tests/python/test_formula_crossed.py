"""Several grouping factors: crossed `(1 | a) + (1 | b)` and nested `(1 | a/b)` formula models."""

import tempfile
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe.errors import DataError, SpecError
from mlnpe.formula.api import FormulaNPE
from mlnpe.formula.design import build_design
from mlnpe.formula.model import MAX_CROSSED
from mlnpe.formula.stancode import brms_variable_names, stan_data, stan_program
from mlnpe.formula.terms import parse_formula
from mlnpe.inference.psis import ParetoKWarning
from mlnpe.networks.effects import LevelEffects
from mlnpe.train import TrainConfig

TINY = TrainConfig(steps=5, batch_size=8, progress=False)
NET = {"summary": {"hidden": 16, "row_hidden": 8, "attention": 2}, "global_flow": {"transforms": 1, "hidden": (16,)},
       "local_flow": {"transforms": 1, "hidden": (16,)}}


def crossed_data(seed=0, subjects=10, items=4, reps=2):
    rng = np.random.default_rng(seed)
    ra, rb = rng.normal(0, 1.0, subjects), rng.normal(0, 0.7, items)
    rows = []
    for j in range(subjects):
        for k in range(items):
            for _ in range(reps):
                x = rng.normal()
                rows.append({"y": 1 + 0.5 * x + ra[j] + rb[k] + rng.normal(0, 0.5), "x": x, "subj": f"s{j:02d}",
                             "item": f"i{k}"})  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def crossed():
    model = FormulaNPE("y ~ x + (1 | item) + (1 | subj)", crossed_data(), network=NET)
    model.train(TINY)
    return model


def test_the_factor_with_the_most_levels_is_primary(crossed):
    # written with item first, the model makes subj (10 levels) primary: its effects are the local parameters
    assert crossed.terms.group == "subj" and [c.group for c in crossed.terms.crossed] == ["item"]
    assert crossed.terms.formula == "y ~ 1 + x + (1 | subj) + (1 | item)"
    labels = [s.labels[0] for s in crossed.slots]
    assert labels == ["Intercept", "b_x", "sd_subj__Intercept", "sd_item__Intercept", "sigma",
                      "r_item[i0,Intercept]", "r_item[i1,Intercept]", "r_item[i2,Intercept]", "r_item[i3,Intercept]"]
    assert crossed.model.level_effects == tuple((5 + k, 1 + k) for k in range(4))  # feature 0 is x
    table = crossed.prior_summary()
    assert list(table.loc[table["class"] == "sd", "group"]) == ["subj", "item"]


def test_nested_levels_are_named_as_brms_names_them():
    data = pd.DataFrame({"y": np.arange(12.0), "a": list("AABB") * 3, "b": ["x", "y"] * 6})
    design = build_design(parse_formula("y ~ (1 | a/b)"), data)
    assert design.info.terms.group == "a:b" and design.levels == ("A_x", "A_y", "B_x", "B_y")
    assert design.crossed[0].group == "a" and design.crossed[0].levels == ("A", "B")
    new = build_design(design.info.terms, data.iloc[:2], reference=design.info, min_groups=1)
    assert new.crossed[0].levels == ("A", "B") and new.crossed[0].codes.tolist() == [0, 0]


def test_new_data_may_use_only_the_trained_levels_of_the_other_factors(crossed):
    data = crossed_data(seed=1)
    data.loc[0, "item"] = "i9"
    with pytest.raises(DataError, match=r"crossed grouping factor 'item' has levels \['i9'\]"):
        crossed.fit(data, refine=False)


def test_too_many_effects_of_other_factors_are_refused():
    rng = np.random.default_rng(0)
    n = 2 * (MAX_CROSSED + 1)
    data = pd.DataFrame({"y": rng.normal(size=n), "a": [f"a{i}" for i in range(n)],
                         "b": [f"b{i % (MAX_CROSSED + 1)}" for i in range(n)]})  # fmt: skip
    with pytest.raises(SpecError, match="more than the 100 it supports"):
        FormulaNPE("y ~ (1 | a) + (1 | b)", data, network=NET)


def test_prior_of_the_other_factors_effects(crossed):
    m = crossed.model
    g = m.sample_global(4000, torch.Generator().manual_seed(0)).double()
    sd, effects = m.sds(g, "item")[:, 0], m.effects(g, m.crossed[0])[..., 0]
    z = effects / sd[:, None]
    assert abs(float(z.std()) - 1.0) < 0.03 and abs(float(z.mean())) < 0.03
    # the global prior density includes the effects' normal density given their sd
    without = g.clone()
    base = m.log_prior_global(g)
    expected = torch.distributions.Normal(0.0, sd[:, None]).log_prob(effects).sum(-1)
    without[:, 5:] = 0.0
    zero = torch.distributions.Normal(0.0, sd[:, None]).log_prob(torch.zeros_like(effects)).sum(-1)
    torch.testing.assert_close(base - m.log_prior_global(without), expected - zero)


def test_linear_predictor_adds_every_factors_effects(crossed):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = crossed.fit(n_draws=50, seed=1, refine=False)
    d, data = fit.draws, crossed.data
    eta = fit.linear_predictor()
    manual = (d["b_Intercept"].to_numpy()[:, None] + d["b_x"].to_numpy()[:, None] * data["x"].to_numpy()
              + np.stack([d[f"r_subj[{s},Intercept]"] for s in data["subj"]], 1)
              + np.stack([d[f"r_item[{i},Intercept]"] for i in data["item"]], 1))  # fmt: skip
    np.testing.assert_allclose(eta, manual, rtol=1e-5, atol=1e-5)
    assert list(d.columns) == brms_variable_names(crossed, fit.design.levels)


def test_save_and_load_keep_the_effects(crossed):
    with tempfile.TemporaryDirectory() as tmp:
        crossed.save(tmp)
        again = FormulaNPE.load(tmp, data=crossed.data)
    assert again.npe.effects == crossed.npe.effects and again.terms == crossed.terms
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        a, b = crossed.fit(n_draws=20, seed=3, refine=False), again.fit(n_draws=20, seed=3, refine=False)
    pd.testing.assert_frame_equal(a.draws, b.draws)


def test_stan_program_has_a_block_per_factor(crossed):
    program = stan_program(crossed)
    for line in ("mu += rows_dot_product(Z_1, r_1[group_1]);", "mu += rows_dot_product(Z_2, r_2[group_2]);",
                 "target += std_normal_lpdf(to_vector(z_2));", "matrix[J_2, M_2] r_2;  // group-level effects of item"):
        assert line in program
    data = stan_data(crossed)
    assert data["J_1"] == 10 and data["J_2"] == 4 and data["group_2"].max() == 4 and data["Z_2"].shape == (80, 1)


def test_level_effects_summaries():
    effects = LevelEffects([(3, 1), (4, 2)], row_features=3)
    rows = torch.tensor([[1.0, 1, 0], [3.0, 1, 0], [2.0, 0, 1], [5.0, 0, 1]])  # y, [level 1], [level 2]
    owner = torch.tensor([0, 0, 1, 3])  # groups among B * J = 2 * 2
    weights = effects.group_weights(rows, owner, 2, 2)
    torch.testing.assert_close(weights, torch.tensor([[[1.0, 0], [0, 1]], [[0, 0], [0, 1]]]))
    stats = effects.statistics(rows, rows[:, 0], owner, 2, 2)  # y on each feature, per dataset; log(1 + sum x^2)
    torch.testing.assert_close(stats[0], torch.tensor([4.0 / 3, 2.0 / 2, float(np.log(3.0)), float(np.log(2.0))]))
    gu = torch.tensor([[0, 0, 0, 0.5, -1.0], [0, 0, 0, 2.0, 3.0]])
    torch.testing.assert_close(effects.offsets(weights, gu)[..., 0], torch.tensor([[0.5, -1.0], [0.0, 3.0]]))
    with pytest.raises(Exception, match="distinct covariates"):
        LevelEffects([(3, 0)], row_features=3)


@pytest.mark.slow
def test_crossed_model_against_pystan():
    # the amortizer's joint density is Stan's: HMC through it (refine) agrees with Stan on a crossed model. The
    # tolerances leave room for the Monte Carlo error of both samplers along the weakly identified direction (the
    # intercept against the mean of the item effects: about 0.15 sds); a missing or wrong crossed term moves the item
    # effects and their sd by several sds.
    pytest.importorskip("stan", reason='needs PyStan 3: pip install pystan "setuptools<81"')
    from mlnpe.stan.reference import fit_stan

    data = crossed_data(seed=2, subjects=8, items=4)
    model = FormulaNPE("y ~ x + (1 | subj) + (1 | item)", data)
    model.train(TrainConfig(steps=400, batch_size=32, progress=False), focus=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = fit_stan(model, chains=4, warmup=1000, draws=1000, seed=4, adapt_delta=0.95, backend="pystan")
        fit = model.fit(seed=1, refine=True)
    r, a = ref.draws, fit.draws
    names = [c for c in r.columns if not c.startswith(".")]
    assert names == list(a.columns)
    err = ((a[names].mean() - r[names].mean()) / r[names].std()).abs()
    ratio = a[names].std() / r[names].std()
    assert err.median() < 0.2 and err.max() < 0.35, err.sort_values().tail()
    assert ratio.between(0.75, 1.3).all(), ratio.sort_values()


def test_structures_a_brms_user_may_not_mean_are_named():
    data = pd.DataFrame({"y": np.arange(12.0), "a": list("AABB") * 3, "b": ["x", "y"] * 6})
    with pytest.warns(UserWarning, match=r"levels \['x', 'y'\] of 'b' appear under several levels of 'a'"):
        build_design(parse_formula("y ~ (1 | a/b)"), data)
    with pytest.warns(UserWarning, match="'b' is a grouping factor on its own and nested in 'a'"):
        build_design(parse_formula("y ~ (1 | a/b) + (1 | b)"), data)
    single = pd.DataFrame({"y": np.arange(8.0), "g": list("ppqqrrss"), "h": ["u", "u", "u", "v", "u", "u", "u", "u"]})
    with pytest.warns(UserWarning, match=r"levels \['v'\] of the grouping factor 'h' have one row each"):
        build_design(parse_formula("y ~ (1 | g) + (1 | h)"), single)


def test_the_global_flow_models_the_intercept_and_the_effects_centred(crossed):
    est = crossed.npe.estimator
    assert crossed.model.effect_centring == ((0, (5, 6, 7, 8)),)
    g = torch.randn(6, 9)
    v = est._to_flow(g)  # the intercept plus the effects' mean, the centred effects, their mean
    torch.testing.assert_close(v[:, 0], g[:, 0] + g[:, 5:].mean(1))
    torch.testing.assert_close(v[:, 5:8], g[:, 5:8] - g[:, 5:].mean(1, keepdim=True))
    torch.testing.assert_close(v[:, 8], g[:, 5:].mean(1))
    torch.testing.assert_close(est._from_flow(v), g, atol=1e-5, rtol=1e-5)
    # the draws' log densities from the sampling pass equal the density pass's (the map's Jacobian included)
    batch = crossed.npe.batch(crossed.grouped_data(crossed.data)[0], allow_extrapolation=True)[0]
    with torch.no_grad():
        gd, ld, lq_g, lq_l = est.draw(7, batch, torch.Generator().manual_seed(0))
        again_g, again_l = est.log_prob(gd, ld, batch)
    torch.testing.assert_close(again_g, lq_g, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(again_l, lq_l, atol=2e-3, rtol=1e-4)


def test_logo_over_the_other_factor_predicts_each_level_as_a_new_one(crossed):
    """logo(group="item"): each item's rows are predicted as those of a new item. Given each refit draw they are
    MVN(mu_s, sigma_s^2 I + sd_item,s^2 11^T), with the subjects' effects of the same refit draw; the Monte Carlo
    estimate over the new item's effect must match that exact value. Leaving the new item's effect out (or taking
    it as 0) misses the shared variance, and leaving out the subjects' effects moves mu."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    data = crossed_data()
    result = crossed.logo(data, n_draws=100, n_local=1000, seed=3, group="item")
    assert result.levels == ("i0", "i1", "i2", "i3") and int(result.nobs_j.sum()) == len(data)
    for i, level in enumerate(result.levels):
        held = data[data["item"] == level]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ParetoKWarning)
            fit = crossed.fit(data[data["item"] != level].reset_index(drop=True), n_draws=100, seed=3 + i,
                              refine=False)  # fmt: skip
        d = fit.draws
        reliable = float(fit.psis.pareto_k) <= float(fit.psis.khat_threshold)
        log_w = fit.psis.log_weights if reliable else np.full(100, -np.log(100))
        subjects = d[[f"r_subj[{s},Intercept]" for s in held["subj"]]].to_numpy()
        mu = d["b_Intercept"].to_numpy()[:, None] + d["b_x"].to_numpy()[:, None] * held["x"].to_numpy() + subjects
        n = len(held)
        exact = [multivariate_normal(mu[s], d["sigma"].iloc[s] ** 2 * np.eye(n)
                                     + d["sd_item__Intercept"].iloc[s] ** 2 * np.ones((n, n))).logpdf(held["y"])
                 for s in range(100)]  # fmt: skip
        assert abs(result.elpd_j[i] - logsumexp(np.asarray(exact) + log_w)) < 0.15, (level, result.elpd_j[i])
    with pytest.raises(Exception, match="`group` 'plate' is not a grouping factor.*'subj', 'item'"):
        crossed.logo(data, n_draws=20, group="plate")
