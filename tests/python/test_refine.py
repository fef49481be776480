"""HMC refinement of amortized draws (mlnpe.inference.refine): exactness against the exact posterior, bookkeeping, errors."""

import numpy as np
import pytest
import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.errors import ConfigError, DataError
from mlnpe.examples.exact import compare_draws, normal_model_posterior
from mlnpe.core.models import NormalHierarchical
from mlnpe.inference.refine import RefineConfig, RefineResult, _Target, refine
from mlnpe.core.spec import simulate_batch

GROUPS, ROWS = (5, 15), (2, 20)


@pytest.fixture(scope="module")
def undertrained():
    """An amortizer trained far too briefly to be accurate, and datasets with their exact posteriors."""
    npe = MultilevelNPE(NormalHierarchical(), groups=GROUPS, rows=ROWS, seed=0)
    npe.train(TrainConfig(steps=150, batch_size=32, learning_rate=2e-3, seed=0, progress=False))
    sims = simulate_batch(npe.model, 3, GROUPS, ROWS, torch.Generator().manual_seed(7))
    datasets = sims.batch.to_datasets()
    exact = [normal_model_posterior([d.group(j)[0][:, 0] for j in range(d.n_groups)]) for d in datasets]
    return npe, datasets, exact


def _worst(report):
    """Largest |mean error| in exact sds and largest |log sd ratio| over mu, tau and every alpha_j."""
    err = max(float(np.max(report[k]["err_sd"])) for k in ("mu", "tau", "alpha"))
    ratio = max(float(np.max(np.abs(np.log(report[k]["sd_ratio"])))) for k in ("mu", "tau", "alpha"))
    return err, ratio


def test_target_is_the_exact_posterior_carried_to_the_base_space(undertrained):
    """log pi(x) - log q(x) in the refinement's coordinates equals log p(theta, y) - log q(theta) up to a constant."""
    npe, datasets, _ = undertrained
    data = datasets[0]
    target = _Target(npe.estimator, npe.model, data)
    est = target.est
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        gu = est.global_sample(64, target.h_global, gen)
        zl = torch.randn(64, 1, target.n_groups, target.n_local, generator=gen)
        target.set_affine(gu[:, 0])
        x = target.state(gu[:, 0], zl[:, 0])
        ours = target.log_density(x) - est.global_log_prob(gu, target.h_global)[:, 0].double()
        ours = ours + 0.5 * (zl[:, 0].double() ** 2).sum((-1, -2))
        g, l = target.constrained(x)
        lq_g, lq_l = est.log_prob(g[:, None], l[:, None], target.batch)
        model = npe.model
        log_p = (
            model.log_prior_global(g.double())
            + model.log_prior_local(l.double(), g.double()).sum(-1)
            + model.log_likelihood(data.to_batch(torch.float64), g.double()[:, None], l.double()[:, None])[:, 0].sum(-1)
        )
        theirs = log_p - (lq_g[:, 0] + lq_l[:, 0].sum(-1)).double()
    diff = (ours - theirs).numpy()
    assert np.ptp(diff) < 1e-2 * max(1.0, float(np.std(theirs.numpy()))), (np.ptp(diff), np.std(theirs.numpy()))


def test_refined_draws_match_the_exact_posterior_where_the_amortized_ones_do_not(undertrained):
    npe, datasets, exact = undertrained
    raw_worst, refined_worst = [], []
    for data, post in zip(datasets, exact):
        raw = npe.sample(data, 2000, seed=1)
        raw_worst.append(_worst(compare_draws(post, raw["mu"], raw["tau"], raw["alpha"])))
        result = refine(npe.estimator, npe.model, data, 1600, RefineConfig(chains=16, warmup=100, seed=2),
                        labels=(npe.global_names, npe.local_names))
        mu, tau = result.global_draws[:, 0], result.global_draws[:, 1]
        refined_worst.append(_worst(compare_draws(post, mu, tau, result.local_draws[..., 0])))
        assert result.max_rhat < 1.05 and result.divergences <= 5, result.problems()  # funnel near tau = 0
        assert 0.6 < result.accept_rate < 0.95
    # the undertrained amortizer is visibly off somewhere; the refinement is within Monte Carlo error everywhere
    assert max(e for e, _ in raw_worst) > 0.3, raw_worst
    assert max(e for e, _ in refined_worst) < 0.2, refined_worst
    assert max(r for _, r in refined_worst) < np.log(1.15), refined_worst


def test_result_shapes_names_and_diagnostics(undertrained):
    npe, datasets, _ = undertrained
    data = datasets[1]
    result = refine(npe.estimator, npe.model, data, 100, RefineConfig(chains=4, warmup=20, seed=0),
                    labels=(npe.global_names, npe.local_names))
    assert isinstance(result, RefineResult)
    assert result.global_draws.shape == (100, 2) and result.local_draws.shape == (100, data.n_groups, 1)
    assert result.chains == 4 and np.all(result.global_draws[:, 1] > 0)
    assert set(result.rhat) == {"mu", "tau", *(f"alpha[{lev}]" for lev in data.levels)}
    assert result.seconds > 0 and np.isfinite(result.step_size) and result.leapfrog >= 1
    again = refine(npe.estimator, npe.model, data, 100, RefineConfig(chains=4, warmup=20, seed=0))
    np.testing.assert_array_equal(again.global_draws, result.global_draws)  # seeded


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"chains": 1}, "chains"),
        ({"warmup": 5}, "warmup"),
        ({"target_accept": 0.3}, "target_accept"),
        ({"trajectory": 0.0}, "trajectory"),
        ({"chains": 64, "pool": 32}, "pool"),
    ],
)
def test_config_errors_name_the_setting(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RefineConfig(**kwargs)


def test_bad_arguments(undertrained):
    npe, datasets, _ = undertrained
    with pytest.raises(DataError, match="GroupedData"):
        refine(npe.estimator, npe.model, {"y": [1.0]})
    with pytest.raises(ConfigError, match="n_draws"):
        refine(npe.estimator, npe.model, datasets[0], 0)


@pytest.fixture(scope="module")
def formula_model():
    import pandas as pd

    from mlnpe.formula import FormulaNPE, prior

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 6)
    x = rng.normal(size=g.size)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.7, 8)[g] + rng.normal(0, 1.0, g.size)
    data = pd.DataFrame({"y": y, "x": x, "g": [f"s{j}" for j in g]})
    model = FormulaNPE("y ~ x + (1 | g)", data, "gaussian", [prior("normal(0, 2)", "b")], seed=0,
                       network={"summary": {"hidden": 16}, "global_flow": {"hidden": (16,), "transforms": 1},
                                "local_flow": {"hidden": (16,)}})
    model.train(TrainConfig(steps=40, batch_size=16, seed=0, progress=False), focus=0)
    return model


def test_formula_fit_refines_on_request_and_when_psis_fails(formula_model):
    import warnings as _warnings

    from mlnpe.inference.psis import ParetoKWarning
    from mlnpe.inference.refine import RefineWarning

    config = RefineConfig(chains=4, warmup=20, pool=64, seed=1)
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RefineWarning)
        fit = formula_model.fit(n_draws=60, seed=1, refine=True, refine_config=config)
    assert fit.refinement is not None and fit.raw.log_q is None
    assert fit.draws.shape[0] == 60 and list(fit.draws.columns[:4]) == ["b_Intercept", "b_x", "sd_g__Intercept", "sigma"]
    assert fit.pareto_k is not None  # the PSIS certificate of the amortized draws that were replaced
    with pytest.raises(ConfigError, match="refined by HMC"):
        fit.resampled()
    # "auto" refines exactly when k-hat exceeds 0.7; this 40-step amortizer is far off
    with _warnings.catch_warnings():
        _warnings.simplefilter("ignore", RefineWarning)
        auto = formula_model.fit(n_draws=60, seed=1, refine="auto", refine_config=config)
    assert auto.pareto_k > 0.7 and auto.refinement is not None
    with pytest.warns(ParetoKWarning):
        kept = formula_model.fit(n_draws=60, seed=1, refine=False)
    assert kept.refinement is None and kept.raw.log_q is not None
    with pytest.raises(ConfigError, match="`refine` must be"):
        formula_model.fit(n_draws=60, refine="yes")
    with pytest.raises(ConfigError, match="RefineConfig"):
        formula_model.fit(n_draws=60, refine=True, refine_config={"chains": 4})


def test_refined_fits_do_not_warn_about_the_focusing_box(formula_model):
    """The refined draws follow the posterior under the full prior: a focusing box they leave does not cut them."""
    import warnings as _warnings

    from mlnpe import RangeWarning
    from mlnpe.inference.refine import RefineWarning

    formula_model.model.set_region({"Intercept": (40.0, 60.0)})
    try:
        with pytest.warns(RangeWarning, match="edge of the region"):
            formula_model.fit(n_draws=60, seed=1, psis=False)
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore", RefineWarning)
            _warnings.simplefilter("error", RangeWarning)
            fit = formula_model.fit(n_draws=60, seed=1, refine=True,
                                    refine_config=RefineConfig(chains=4, warmup=20, pool=64, seed=1))
        assert fit.draws["b_Intercept"].mean() < 40.0  # not cut to the box
    finally:
        formula_model.model.set_region(None)


def test_auto_refines_on_a_bad_k_hat_or_too_few_effective_draws():
    from types import SimpleNamespace

    from mlnpe.inference.policy import psis_unreliable

    def psis(k, ess):
        return SimpleNamespace(pareto_k=k, ess=ess)

    assert not psis_unreliable(None, 4000)  # no PSIS, no verdict
    assert not psis_unreliable(psis(0.3, 1200.0), 4000)
    assert psis_unreliable(psis(0.75, 3000.0), 4000)  # k-hat above 0.7
    assert psis_unreliable(psis(0.67, 76.0), 4000)  # sleepstudy in the vignette: 76 effective draws of 4000
    assert not psis_unreliable(psis(0.67, 76.0), 500)
