import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from mlnpe import TrainConfig
from mlnpe.errors import DataError, SpecError
from mlnpe.formula import FormulaNPE, prior, trained_model
from mlnpe.formula.cache import training_config
from mlnpe.inference.psis import ParetoKWarning

TINY = TrainConfig(steps=5, batch_size=8, progress=False)
NET = {"summary": {"hidden": 16, "row_hidden": 8, "attention": 2}, "global_flow": {"transforms": 1, "hidden": (16,)},
       "local_flow": {"transforms": 1, "hidden": (16,)}}


def _df(seed=0, J=6, n=8):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(J), n)
    x = rng.normal(size=J * n)
    sex = rng.choice(["Female", "Male"], size=J * n)
    y = 1 + 0.5 * x + rng.normal(0, 0.5, J)[g] + rng.normal(0, 0.7, J * n)
    counts = rng.poisson(np.exp(0.3 + 0.2 * x))
    trials = rng.integers(5, 12, size=J * n)
    succ = rng.binomial(trials, 0.4)
    return pd.DataFrame({"y": y, "x": x, "sex": sex, "g": [f"s{k}" for k in g], "count": counts,
                         "n": trials, "succ": succ, "bin": (y > 1).astype(int)})


@pytest.fixture(scope="module")
def gaussian():
    model = FormulaNPE("y ~ x + sex + (1 + x | g)", _df(), "gaussian", prior("normal(0, 2)", "b", coef="x"),
                       network=NET)
    model.train(TINY)
    return model


def test_brms_names_and_order(gaussian):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = gaussian.fit(n_draws=50, seed=1, refine=False)
    cols = list(fit.draws.columns)
    assert cols[:7] == ["b_Intercept", "b_x", "b_sexMale", "sd_g__Intercept", "sd_g__x", "cor_g__Intercept__x",
                        "sigma"]
    assert cols[7:10] == ["r_g[s0,Intercept]", "r_g[s1,Intercept]", "r_g[s2,Intercept]"]
    assert cols[-1] == "r_g[s5,x]" and len(cols) == 7 + 12
    assert (fit.draws["sigma"] > 0).all() and fit.draws["cor_g__Intercept__x"].abs().max() <= 1
    assert fit.pareto_k is not None and fit.ess > 0
    # b_Intercept is the intercept of uncentred predictors: Intercept_c - x_means . b
    raw = fit.raw.global_draws
    assert np.allclose(fit.draws["b_Intercept"], raw[:, 0] - raw[:, 1:3] @ gaussian.x_means)


def test_prior_summary_shows_user_and_default_priors(gaussian):
    table = gaussian.prior_summary()
    row = table[(table["class"] == "b") & (table["coef"] == "x")].iloc[0]
    assert row["prior"] == "normal(0, 2)" and row["source"] == "user"
    assert set(table["class"]) == {"Intercept", "b", "sd", "cor", "sigma"}


def test_exact_log_density_pieces(gaussian):
    data, design = gaussian.grouped_data(_df())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = gaussian.fit(n_draws=5, seed=2)
    batch = data.to_batch()
    g = torch.as_tensor(fit.raw.global_draws, dtype=torch.float32)[:, None]
    l = torch.as_tensor(fit.raw.local_draws, dtype=torch.float32)[:, None]
    ll = gaussian.model.log_likelihood(batch, g, l).sum(-1)[:, 0].double().numpy()
    eta = fit.linear_predictor()
    sigma = fit.draws["sigma"].to_numpy()
    expected = stats.norm.logpdf(design.y[None, :], eta, sigma[:, None]).sum(1)
    assert np.allclose(ll, expected, rtol=1e-4)
    # The model's own linear predictor (used in simulation) agrees with the prediction path.
    _, eta_rows, _, _ = gaussian.model.packed_rows(g, l, batch.row_mask, batch.x)  # groups in order, rows in order
    eta_rows = eta_rows.numpy()
    order = np.argsort(design.group, kind="stable")
    assert np.allclose(eta_rows, eta[:, order], atol=1e-4)


def test_predictions_shapes_and_errors(gaussian):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = gaussian.fit(n_draws=40, seed=3, refine=False)
    assert fit.posterior_predict(ndraws=10, seed=1).shape == (10, 48)
    assert fit.posterior_epred(ndraws=10, seed=1).shape == (10, 48)
    assert fit.log_lik().shape == (40, 48)
    assert fit.posterior_epred(_df().iloc[:3]).shape == (40, 3)
    new = _df().assign(g="new")
    with pytest.raises(DataError, match="levels \\['new'\\]"):
        fit.posterior_predict(new)


def test_save_load_and_cache(gaussian, tmp_path, monkeypatch):
    gaussian.save(tmp_path / "m")
    loaded = FormulaNPE.load(tmp_path / "m", data=_df())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        a = gaussian.fit(n_draws=20, seed=4, refine=False).draws
        b = loaded.fit(n_draws=20, seed=4, refine=False).draws
    assert a.equals(b)
    monkeypatch.setenv("MLNPE_CACHE_DIR", str(tmp_path / "cache"))
    m1, hit1 = trained_model("y ~ x + (1 | g)", _df(), "gaussian", train=TINY, network=NET)
    m2, hit2 = trained_model("y ~ x + (1 | g)", _df(), "gaussian", train=TINY, network=NET)
    assert (hit1, hit2) == (False, True)
    m3, hit3 = trained_model("y ~ x + (1 | g)", _df(), "gaussian", prior("normal(0, 1)", "b"), train=TINY,
                             network=NET)
    assert hit3 is False  # another prior is another model


def _tiny_fit(formula, df, family, n_draws):
    """A FormulaNPE trained for a few steps and its unrefined fit of `df` (k-hat warnings silenced)."""
    model = FormulaNPE(formula, df, family, network=NET)
    model.train(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        return model, model.fit(n_draws=n_draws, seed=0, refine=False)


@pytest.mark.parametrize(
    "formula, family",
    [("bin ~ x + (1 | g)", "bernoulli"), ("count ~ x + (1 | g)", "poisson"),
     ("succ | trials(n) ~ x + (1 | g)", "binomial"), ("count ~ 1 + (1 | g)", "negbinomial"),
     ("y ~ x + (1 + x || g)", "student")],
)
def test_families_train_and_fit(formula, family):
    model, fit = _tiny_fit(formula, _df(), family, n_draws=20)
    assert np.isfinite(fit.draws.to_numpy()).all()
    assert np.isfinite(fit.log_lik()).all()


def test_untrained_model_gets_a_khat_warning():
    model = FormulaNPE("y ~ x + (1 | g)", _df(), "gaussian", network=NET)
    with pytest.warns(ParetoKWarning, match="k-hat"):
        model.fit(n_draws=100, seed=0, refine=False)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(formula="y ~ z + (1 | g)"), DataError, "z"),
        (dict(formula="y ~ x"), SpecError, "group-level term"),
        (dict(formula="y ~ x + (1 | g) + (0 + x | g)"), SpecError, "one term per grouping factor"),
        (dict(formula="count ~ x + (1 | g)", family="poisson", data=_df().assign(count=-1)), DataError, "poisson"),
        (dict(formula="y ~ x + (1 | g)", family="bernoulli"), DataError, "bernoulli"),
        (dict(formula="y ~ x + (1 | g)", prior=prior("normal(0, 1)", "b", coef="w")), SpecError, "w"),
        (dict(formula="y ~ x + (1 | g)", family="weibull"), SpecError, "weibull"),
        (dict(formula="y ~ x + (1 | g)", data=_df().assign(g="one")), DataError, "2 or more groups"),
    ],
)
def test_bad_input(kwargs, error, match):
    args = dict(formula="y ~ x + (1 | g)", data=_df(), family="gaussian", prior=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        FormulaNPE(args["formula"], args["data"], args["family"], args["prior"], network=NET)


def test_na_and_unseen_factor_level(gaussian):
    df = _df()
    df.loc[3, "x"] = np.nan
    with pytest.raises(DataError, match="'x' has 1 missing"):
        gaussian.fit(df)
    df = _df().assign(sex="Other")
    with pytest.raises(DataError, match="Other"):
        gaussian.fit(df)


def test_training_designs_copy_observed_groups_in_a_random_order():
    """A simulated group that keeps its source group's size copies that group's rows, permuted (so each observed
    design is among the training designs); the other groups draw rows with replacement over the trained range."""
    sizes = [3, 5, 8, 13]
    df = pd.DataFrame({
        "g": np.repeat([f"g{k}" for k in range(4)], sizes),
        "x": np.concatenate([100.0 * k + np.arange(n) for k, n in enumerate(sizes)]),
        "y": np.zeros(sum(sizes)),
    })
    model = FormulaNPE("y ~ x + (1 | g)", df, "gaussian", groups=(2, 6), rows=(2, 20), seed=0)
    batch = model.model.sample_design(400, (2, 6), (2, 20), torch.Generator().manual_seed(1))
    x_col = model.feature_names.index("x")
    copies = shuffled = groups = 0
    for b in range(batch.x.shape[0]):
        for j in range(int(batch.group_mask[b].sum())):
            values = batch.x[b, j, batch.row_mask[b, j], x_col].double().numpy()
            groups += 1
            k = int(values[0] // 100)
            own = np.arange(sizes[k]) + 100.0 * k
            if len(values) == sizes[k] and np.array_equal(np.sort(values), own):
                copies += 1
                shuffled += not np.array_equal(values, own)
            else:
                assert np.all(values // 100 == k)  # drawn with replacement from one source group
    assert copies / groups > 0.7  # 75 % keep their source's size and rows
    assert shuffled / copies > 0.5  # in a random order


def test_fits_train_on_one_default_budget_that_single_fields_change():
    from mlnpe.formula.cache import TRAINING
    from mlnpe.interop import FitControl

    config = training_config()
    assert (config.steps, config.batch_size, config.learning_rate) == (1500, 64, 2e-3) == tuple(TRAINING.values())
    assert config.observed_weight > 0 and config.check_every > 0  # the data's loss and certificate are on
    changed = training_config({"steps": 10})
    assert changed.steps == 10 and changed.learning_rate == 2e-3
    assert FitControl.from_r({"train": {"steps": 50.0}}).train == training_config({"steps": 50})
    assert training_config(TrainConfig(steps=7)).learning_rate == TrainConfig().learning_rate  # a full config as is


def test_saves_carry_a_checksum_that_catches_edits_and_torn_writes(gaussian, tmp_path):
    """Editing a saved config (a parameter's support, a prior) or swapping a file is a LoadError naming the file,
    not a model that loads and gives wrong draws."""
    import json

    from mlnpe.errors import LoadError

    path = gaussian.save(tmp_path / "m")
    amortizer = json.loads((path / "amortizer" / "config.json").read_text())
    assert len(amortizer["checksum"]) == 64 and len(json.loads((path / "formula.json").read_text())["checksum"]) == 64
    FormulaNPE.load(path)
    edited = dict(amortizer)
    edited["specs"]["global_params"][0]["support"] = "positive"
    (path / "amortizer" / "config.json").write_text(json.dumps(edited))
    with pytest.raises(LoadError, match="amortizer/config.json' or the files it describes changed"):
        FormulaNPE.load(path)
    path = gaussian.save(tmp_path / "m2")
    formula = json.loads((path / "formula.json").read_text())
    formula["priors"][0]["args"] = [0.0, 123.0]
    (path / "formula.json").write_text(json.dumps(formula))
    with pytest.raises(LoadError, match="formula.json' or the files it describes changed"):
        FormulaNPE.load(path)


def test_the_cache_retrains_a_corrupt_entry_and_leaves_no_partial_one(tmp_path, monkeypatch):
    monkeypatch.setenv("MLNPE_CACHE_DIR", str(tmp_path / "cache"))
    model, hit = trained_model("y ~ x + (1 | g)", _df(), "gaussian", train=TINY, network=NET)
    entry = tmp_path / "cache" / model.spec_hash(training_config(TINY), 1)
    assert not hit and entry.is_dir()
    (entry / "amortizer" / "weights.pt").write_bytes(b"torn")
    with pytest.warns(UserWarning, match="retraining a corrupt cache entry"):
        _, hit = trained_model("y ~ x + (1 | g)", _df(), "gaussian", train=TINY, network=NET)
    assert not hit
    assert trained_model("y ~ x + (1 | g)", _df(), "gaussian", train=TINY, network=NET)[1]
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging


def test_two_processes_with_one_spec_train_once(tmp_path):
    """The second process waits for the first one's lock, then loads its entry instead of training again."""
    import subprocess
    import sys

    script = (
        "import sys, warnings; warnings.simplefilter('ignore'); sys.path.insert(0, %r)\n"
        "from test_formula_api import _df, NET, TINY\n"
        "from mlnpe.formula import trained_model\n"
        "print(trained_model('y ~ x + (1 | g)', _df(), 'gaussian', train=TINY, network=NET)[1])\n"
    ) % str(Path(__file__).parent)
    env = {**os.environ, "MLNPE_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    hits = sorted(p.communicate(timeout=300)[0].strip().splitlines()[-1] for p in procs)
    assert hits == ["False", "True"]


# ---- brms's `0 + Intercept` and offset() --------------------------------------------------------------------------

SMALL = TrainConfig(steps=20, batch_size=16, progress=False)


def _exposure_df(seed=0, J=6, n=8):
    df = _df(seed, J, n)
    rng = np.random.default_rng(seed + 1)
    expo = rng.uniform(0.5, 5.0, len(df))
    return df.assign(expo=expo, count=rng.poisson(expo * np.exp(0.3 + 0.2 * df["x"])))


def _hand_eta(fit, data, offset=None):
    """b_Intercept + b_x x + r_g[level] (+ offset) from the brms-named draws: (draws, rows)."""
    d = fit.draws
    r = d[[f"r_g[{level},Intercept]" for level in fit.design.levels]].to_numpy()
    group = np.array([fit.design.levels.index(level) for level in data["g"]])
    eta = d["b_Intercept"].to_numpy()[:, None] + d["b_x"].to_numpy()[:, None] * data["x"].to_numpy()[None] + r[:, group]
    return eta if offset is None else eta + np.asarray(offset)[None]


def _model_log_lik(model, fit, data):
    """log p(y | theta) of every draw from the simulator's own likelihood (packed_rows): (draws,)."""
    batch = model.grouped_data(data)[0].to_batch()
    g = torch.as_tensor(fit.raw.global_draws, dtype=torch.float32)[:, None]
    l = torch.as_tensor(fit.raw.local_draws, dtype=torch.float32)[:, None]
    return model.model.log_likelihood(batch, g, l).sum(-1)[:, 0].double().numpy()


@pytest.fixture(scope="module")
def exposure():
    model = FormulaNPE("count ~ x + offset(log(expo)) + (1 | g)", _exposure_df(), "poisson", network=NET)
    model.train(SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = model.fit(n_draws=20, seed=0, refine=False)
    return model, fit


def test_offset_enters_the_likelihood_as_a_known_term(exposure):
    model, fit = exposure
    df = _exposure_df()
    eta = _hand_eta(fit, df, np.log(df["expo"]))
    np.testing.assert_allclose(fit.linear_predictor(), eta, rtol=1e-10)
    expected = stats.poisson.logpmf(df["count"].to_numpy()[None], np.exp(eta)).sum(1)
    np.testing.assert_allclose(_model_log_lik(model, fit, df), expected, rtol=1e-4)
    np.testing.assert_allclose(fit.log_lik().sum(1), expected, rtol=1e-8)
    assert not any("expo" in name or "offset" in name for name in fit.draws.columns)  # data: no draws, no prior
    assert "offset" not in " ".join(model.prior_summary()["coef"])
    assert model.feature_names == ["x", "offset(log(expo))"] and model.offset_column == 1


def test_offset_travels_with_its_rows_in_simulated_designs(exposure):
    model, _ = exposure
    df = _exposure_df()
    batch = model.model.sample_design(50, model.groups, model.rows, torch.Generator().manual_seed(0))
    rows = batch.x[batch.row_mask].double().numpy()  # (real rows, [x, offset])
    observed = {(round(x, 5), round(o, 5)) for x, o in zip(df["x"], np.log(df["expo"]))}
    assert {(round(x, 5), round(o, 5)) for x, o in rows} <= observed
    zero = torch.zeros(1, 50, len(model.npe.global_names))
    local = torch.zeros(1, 50, batch.row_mask.shape[1], len(model.z_names))
    _, eta, _, _ = model.model.packed_rows(zero, local, batch.row_mask, batch.x)
    np.testing.assert_allclose(eta[0].numpy(), rows[:, 1], rtol=1e-6)  # eta = offset when every parameter is 0


def test_offset_predictions_need_the_offset_columns_of_newdata(exposure):
    _, fit = exposure
    new = _exposure_df().iloc[:6]
    doubled = new.assign(expo=2 * new["expo"])
    np.testing.assert_allclose(fit.posterior_epred(doubled), 2 * fit.posterior_epred(new), rtol=1e-10)
    np.testing.assert_allclose(fit.linear_predictor(new), _hand_eta(fit, new, np.log(new["expo"])), rtol=1e-10)
    assert fit.posterior_predict(new, seed=1).shape == (20, 6)
    with pytest.raises(DataError, match=r"variables \['expo'\] .* \(offset\(log\(expo\)\) is data: .*`newdata`"):
        fit.posterior_epred(new.drop(columns="expo"))
    with pytest.raises(DataError, match=r"offset\(log\(expo\)\) takes log\(\) of 1 value\(s\) that are not positive"):
        fit.posterior_epred(new.assign(expo=[0.0, 1, 1, 1, 1, 1]))


def test_offset_model_saves_and_loads_with_its_offset(exposure, tmp_path):
    import json

    from mlnpe.formula.stancode import stan_data, stan_program

    model, _ = exposure
    path = model.save(tmp_path / "m")
    config = json.loads((path / "formula.json").read_text())
    assert config["formula"] == "count ~ 1 + x + offset(log(expo)) + (1 | g)" and config["offset_column"] == 1
    loaded = FormulaNPE.load(path, data=_exposure_df())
    assert loaded.offset_column == 1 and loaded.terms.offsets == model.terms.offsets
    assert loaded.spec_hash() == model.spec_hash()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        a = model.fit(n_draws=10, seed=4, refine=False)
        b = loaded.fit(n_draws=10, seed=4, refine=False)
    assert a.draws.equals(b.draws)
    np.testing.assert_array_equal(a.posterior_epred(), b.posterior_epred())
    plain = FormulaNPE("count ~ x + offset(expo) + (1 | g)", _exposure_df(), "poisson", network=NET)
    assert plain.spec_hash() != model.spec_hash()
    program = stan_program(model)
    assert "vector[N] offsets;" in program and "vector[N] mu = Intercept + Xc * b + offsets;" in program
    np.testing.assert_allclose(stan_data(model)["offsets"], np.log(_exposure_df()["expo"]))
    assert "offsets" not in stan_program(FormulaNPE("count ~ x + (1 | g)", _df(), "poisson", network=NET))


@pytest.mark.parametrize(
    "formula, family",
    [("y ~ x + offset(x / 2) + (1 | g)", "gaussian"), ("count ~ x + offset(log(expo)) + (1 | g)", "negbinomial"),
     ("succ | trials(n) ~ x + offset(log(expo) - 1) + (1 | g)", "binomial"),
     ("bin ~ 0 + Intercept + x + offset(-x) + (1 | g)", "bernoulli")],
)  # fmt: skip
def test_offsets_train_and_fit_in_every_family(formula, family):
    model, fit = _tiny_fit(formula, _exposure_df(), family, n_draws=10)
    assert np.isfinite(fit.draws.to_numpy()).all() and np.isfinite(fit.log_lik()).all()
    np.testing.assert_allclose(fit.log_lik().sum(1), _model_log_lik(model, fit, _exposure_df()), rtol=1e-4)


def test_zero_plus_intercept_is_a_class_b_coefficient(tmp_path):
    df = _df()
    model = FormulaNPE("y ~ 0 + Intercept + x + (1 | g)", df, "gaussian",
                       [prior("normal(1, 0.5)", "b", coef="Intercept"), prior("normal(0, 2)", "b")], network=NET)
    table = model.prior_summary()
    assert list(table["class"]) == ["b", "b", "sd", "sigma"] and list(table["coef"][:2]) == ["Intercept", "x"]
    assert list(table["prior"][:2]) == ["normal(1, 0.5)", "normal(0, 2)"] and set(table["source"][:2]) == {"user"}
    np.testing.assert_array_equal(model.x_means, [0.0, 0.0])  # not centred
    assert model.feature_names == ["x"] and model.x_source == [-1, 0]  # the column of ones is no feature
    # a class-b prior reaches it; without one it gets the default of brms's Intercept class (brms: flat)
    everything = FormulaNPE("y ~ 0 + Intercept + x + (1 | g)", df, "gaussian", prior("normal(0, 3)", "b"), network=NET)
    assert list(everything.prior_summary()["prior"][:2]) == ["normal(0, 3)", "normal(0, 3)"]
    default = FormulaNPE("y ~ 0 + Intercept + x + (1 | g)", df, "gaussian", network=NET).prior_summary()
    centred = FormulaNPE("y ~ x + (1 | g)", df, "gaussian", network=NET).prior_summary()
    assert default["prior"][0] == centred["prior"][0] and default["class"][0] == "b"
    with pytest.raises(SpecError, match=r"class_='b', coef='Intercept'"):
        FormulaNPE("y ~ 0 + Intercept + x + (1 | g)", df, "gaussian", prior("normal(0, 1)", "Intercept"), network=NET)

    model.train(SMALL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = model.fit(n_draws=20, seed=0, refine=False)
    assert list(fit.draws.columns[:4]) == ["b_Intercept", "b_x", "sd_g__Intercept", "sigma"]
    np.testing.assert_array_equal(fit.draws["b_Intercept"], fit.raw.global_draws[:, 0])  # no uncentring
    eta = _hand_eta(fit, df)
    np.testing.assert_allclose(fit.linear_predictor(), eta, rtol=1e-10)
    expected = stats.norm.logpdf(df["y"].to_numpy()[None], eta, fit.draws["sigma"].to_numpy()[:, None]).sum(1)
    np.testing.assert_allclose(_model_log_lik(model, fit, df), expected, rtol=1e-4)

    from mlnpe.formula.stancode import stan_program

    program = stan_program(model)
    assert "vector[N] mu = Xc * b;" in program and " Intercept;" not in program
    assert "normal_lpdf(b[1] | 1, 0.5)" in program and "normal_lpdf(b[2] | 0, 2)" in program

    loaded = FormulaNPE.load(model.save(tmp_path / "m"), data=df)
    assert loaded.x_source == [-1, 0] and loaded.terms.intercept_coef and loaded.spec_hash() == model.spec_hash()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        a, b = (m.fit(n_draws=10, seed=3, refine=False).draws for m in (loaded, model))
    assert a.equals(b)


def test_models_without_offset_or_reserved_intercept_save_as_before(gaussian):
    """Cache keys of existing models stay valid: their formula.json has no new keys."""
    config = gaussian.config_dict()
    assert "x_source" not in config and "offset_column" not in config
