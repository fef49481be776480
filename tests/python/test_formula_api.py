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
    eta_model = gaussian.model.linear_predictor(g, l, batch.x)[:, 0]
    eta_rows = torch.cat([eta_model[:, j, : int(n)] for j, n in enumerate(data.n_rows)], 1).numpy()
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


@pytest.mark.parametrize(
    "formula, family",
    [("bin ~ x + (1 | g)", "bernoulli"), ("count ~ x + (1 | g)", "poisson"),
     ("succ | trials(n) ~ x + (1 | g)", "binomial"), ("count ~ 1 + (1 | g)", "negbinomial"),
     ("y ~ x + (1 + x || g)", "student")],
)
def test_families_train_and_fit(formula, family):
    model = FormulaNPE(formula, _df(), family, network=NET)
    model.train(TINY)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        fit = model.fit(n_draws=20, seed=0, refine=False)
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
        (dict(formula="y ~ x + (1 | g) + (1 | sex)"), SpecError, "one grouping factor"),
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
