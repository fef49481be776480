"""Tests of mlnpe.case_studies.ddm: the exact Wiener sampler and density, the two hierarchical DDMs, the lexical
decision data, bad-input errors and a tiny train + sample + LOGO run.

The comparison of the density with Stan's ``wiener_lpdf`` compiles a Stan program (about a minute) and runs only
with MLNPE_SLOW_TESTS=1.
"""

import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.case_studies.ddm import (    DDMDataWarning,
    DDMPriors,
    HierarchicalDDM,
    HierarchicalDDMBeta,
    check_ddm_data,
    compare_logo,
    ddm_data,
    ddm_network,
    load_speed_acc,
    logo_elpd,
    mean_decision_time,
    sample_wiener,
    stan_data_ddm,
    stan_program_ddm,
    upper_probability,
    wiener_log_density,
)
from mlnpe.core.data import GroupedData
from mlnpe.errors import ConfigError, DataError
from mlnpe.inference.refine import RefineConfig
from mlnpe.core.spec import simulate_batch

SLOW = os.environ.get("MLNPE_SLOW_TESTS") == "1"


def _shared_data() -> Path:
    """../shared/data beside the repository, or beside the repository this one was cloned from (CI clones main
    into a temporary directory)."""
    root = Path(__file__).resolve().parents[2]
    candidates = [root.parent / "shared" / "data"]
    origin = subprocess.run(["git", "-C", str(root), "config", "remote.origin.url"], capture_output=True, text=True)
    if origin.returncode == 0 and Path(origin.stdout.strip()).is_dir():
        candidates.append(Path(origin.stdout.strip()).resolve().parent / "shared" / "data")
    return next((c for c in candidates if c.is_dir()), candidates[0])


SPEED_ACC = _shared_data() / "speed_acc" / "speed_acc.csv"
CASES = [(0.5, 1.0, 0.5), (-1.5, 1.2, 0.3), (2.5, 2.0, 0.6), (0.0, 0.8, 0.5)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- sampler and density ------------------------------------------------------------------------------------
@pytest.mark.parametrize("v, a, w", CASES)
def test_sampler_matches_analytic_choice_probability_and_mean_rt(v, a, w):
    n = 40_000
    rt, response = sample_wiener(torch.full((n,), v), a, w, 0.3, gen(1))
    p = float(upper_probability(torch.tensor(v), torch.tensor(a), torch.tensor(w)))
    mean = float(mean_decision_time(torch.tensor(v), torch.tensor(a), torch.tensor(w)))
    assert abs(float(response.mean()) - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-4
    assert abs(float((rt - 0.3).mean()) - mean) < 4 * float(rt.std()) / math.sqrt(n)
    assert float(rt.min()) > 0.3 and set(response.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("v, a, w", CASES[:3])
def test_density_integrates_to_one_and_gives_the_choice_probability(v, a, w):
    t = torch.linspace(1e-6, 15.0, 150_001, dtype=torch.float64)
    upper = torch.trapezoid(wiener_log_density(t + 0.2, 1, v, a, w, 0.2).exp(), t)
    lower = torch.trapezoid(wiener_log_density(t + 0.2, 0, v, a, w, 0.2).exp(), t)
    assert float(upper + lower) == pytest.approx(1.0, abs=1e-6)
    assert float(upper) == pytest.approx(float(upper_probability(torch.tensor(v), torch.tensor(a), torch.tensor(w))), abs=1e-6)


def test_density_matches_a_simulation_histogram():
    v, a, w, t0, n = 0.8, 1.3, 0.45, 0.25, 60_000
    rt, response = sample_wiener(torch.full((n,), v), a, w, t0, gen(2))
    edges = torch.linspace(t0, 2.5, 26, dtype=torch.float64)
    fine = torch.linspace(0, 1, 201, dtype=torch.float64)
    for r in (0.0, 1.0):
        counts = torch.histogram(rt[response == r], bins=edges).hist / n
        for k in range(25):
            t = edges[k] + (edges[k + 1] - edges[k]) * fine
            p = float(torch.trapezoid(wiener_log_density(t, r, v, a, w, t0).exp(), t))
            assert abs(float(counts[k]) - p) < 5 * math.sqrt(max(p, 1e-5) / n) + 2e-4, (r, k)


def test_density_mirrors_the_boundaries_and_is_zero_before_t0():
    rt = torch.tensor([0.35, 0.6, 1.4, 3.0], dtype=torch.float64)
    up = wiener_log_density(rt, 1, 0.7, 1.1, 0.4, 0.3)
    assert torch.allclose(up, wiener_log_density(rt, 0, -0.7, 1.1, 0.6, 0.3))
    # the small- and large-time series agree where they hand over (u = t / a^2 = 1)
    near = wiener_log_density(torch.tensor([1.0 - 1e-9, 1.0 + 1e-9], dtype=torch.float64), 0, 0.4, 1.0, 0.35, 0.0)
    assert float(near[0]) == pytest.approx(float(near[1]), abs=1e-7)
    assert torch.isneginf(wiener_log_density(torch.tensor([0.2, 0.3], dtype=torch.float64), 1, 0.7, 1.1, 0.4, 0.3)).all()


# ---- models -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model", [HierarchicalDDM(), HierarchicalDDMBeta()])
def test_models_simulate_and_evaluate_densities(model):
    sims = simulate_batch(model, 3, (10, 12), (1, 20), gen(3))
    assert sims.batch.y.shape[-1] == 2 and sims.global_params.shape[-1] == len(model.global_names)
    y = sims.batch.y[sims.batch.row_mask]
    assert (y[:, 0] > 0).all() and set(y[:, 1].unique().tolist()) <= {0.0, 1.0}
    ll = model.log_likelihood(sims.batch, sims.global_params[None], sims.local_params[None])
    assert ll.shape == (1, 3, sims.batch.group_mask.shape[1])
    assert torch.isfinite(ll[0][sims.batch.group_mask]).all()
    assert torch.isfinite(model.log_prior_global(sims.global_params)).all()
    assert torch.isfinite(model.log_prior_local(sims.local_params, sims.global_params)).all()
    # a non-decision time above an observed rt makes the likelihood zero
    local = sims.local_params.clone()
    local[..., 2] = 10.0
    assert torch.isneginf(model.log_likelihood(sims.batch, sims.global_params[None], local[None])[0][sims.batch.group_mask]).all()


def test_priors_are_the_papers_with_xi_read_as_shape_and_scale():
    g = HierarchicalDDMBeta().sample_global(20_000, gen(4)).double()
    assert float(g[:, 7].mean()) == pytest.approx(15.0, rel=0.05)  # Gamma(5, scale 3)
    assert float(g[:, 0].mean()) == pytest.approx(0.5, abs=0.02)
    assert float(g[:, 2].exp().median()) == pytest.approx(math.exp(-1), rel=0.05)
    with pytest.raises(ConfigError, match="xi"):
        DDMPriors(xi=(5.0, -3.0))


# ---- data ---------------------------------------------------------------------------------------------------
def test_bad_input_raises_clear_errors():
    subject = ["a", "a", "b"]
    with pytest.raises(DataError, match="rt <= 0"):
        ddm_data([0.5, -0.1, 0.6], [1, 0, 1], subject)
    with pytest.raises(DataError, match="0 \\(lower boundary\\) or 1"):
        ddm_data([0.5, 0.4, 0.6], [1, 2, 1], subject)
    with pytest.raises(DataError, match="below min_rt = 0.15"):
        ddm_data([0.5, 0.05, 0.6], [1, 0, 1], subject)
    ok = ddm_data([0.5, 0.05, 0.6], [1, 0, 1], subject, min_rt=0.01)
    assert ok.n_groups == 2 and ok.n_rows.tolist() == [2, 1] and ok.levels == ("a", "b")
    with pytest.raises(DataError, match="two response columns"):
        check_ddm_data(GroupedData.from_groups([np.ones(3)]))


@pytest.mark.skipif(not SPEED_ACC.exists(), reason="the lexical decision data are not in ../shared/data")
def test_speed_acc_block_4_accuracy():
    with pytest.warns(DDMDataWarning, match="6 censored trials"):
        data = load_speed_acc(SPEED_ACC, block=4)
    assert data.n_groups == 17 and int(data.n_rows.sum()) == 1626 and data.n_rows.max() == 96
    assert set(np.unique(data.y[:, 1])) == {0.0, 1.0} and data.y[:, 0].min() > 0.3
    with pytest.raises(DataError, match="censored='drop'"):
        load_speed_acc(SPEED_ACC, block=4, censored="error")
    with pytest.warns(DDMDataWarning):  # accuracy coding: 1 = correct; the same trials and rts
        correct = load_speed_acc(SPEED_ACC, block=4, coding="accuracy")
    assert np.array_equal(correct.y[:, 0], data.y[:, 0]) and correct.y[:, 1].mean() == pytest.approx(0.956, abs=0.001)
    with pytest.raises(ConfigError, match="`coding` must be 'stimulus' or 'accuracy'"):
        load_speed_acc(SPEED_ACC, block=4, coding="correct")
    with pytest.raises(DataError, match="no trials"):
        load_speed_acc(SPEED_ACC, block=3)  # odd blocks are speed blocks
    sdata = stan_data_ddm(HierarchicalDDM(), data)
    assert sdata["N"] == 1626 and sum(sdata["response"]) == int(data.y[:, 1].sum())
    assert "beta_proportion" in stan_program_ddm(HierarchicalDDMBeta())
    assert "vector<lower=0, upper=min_rt>[J] t0;" in stan_program_ddm(HierarchicalDDM())  # bounded: see ddm.py


# ---- tiny end-to-end run ------------------------------------------------------------------------------------
def test_tiny_train_sample_and_logo():
    data = ddm_data(*simulated_trials(), min_rt=0.05)
    results = []
    for model in (HierarchicalDDM(), HierarchicalDDMBeta()):
        npe = MultilevelNPE(model, groups=(10, 12), rows=(5, 20), network=ddm_network(summary={"hidden": 16}),
                            pilot_size=32)  # fmt: skip
        # each subject's fastest response reaches the networks (the non-decision time must stay below it)
        assert npe.estimator.local_summary.extremes and npe.estimator.local_shift
        # with the data's reverse KL through the Wiener density (on from the second step), as ddm.py trains
        npe.train(TrainConfig(steps=3, batch_size=8, progress=False, observed_draws=2, observed_datasets=2),
                  observed=data)  # fmt: skip
        assert np.isfinite(npe.history.loss).all()
        draws = npe.sample(data, n_draws=20, seed=1)
        assert draws.local_draws.shape == (20, 11, len(model.local_names))
        result = logo_elpd(npe, model, data, n_draws=8, n_local=4, seed=2)
        assert result.elpd_j.shape == (11,) and np.isfinite(result.se) and result.refit_seconds > 0
        assert np.isnan(result.pareto_k).all() and result.nobs_j.tolist() == [12] * 11  # amortized refits: no PSIS
        plugin = logo_elpd(npe, model, data, n_draws=8, n_local=4, seed=2, proposal="plugin")
        assert plugin.elpd_j.shape == (11,) and np.isfinite(plugin.elpd_j).all()
        results.append(result)
    diff = compare_logo(results[1], results[0])
    assert diff["elpd_diff"] == pytest.approx(results[1].elpd - results[0].elpd)


def simulated_trials():
    model = HierarchicalDDM()
    g = model.sample_global(1, gen(5))
    local = model.sample_local(g, 11, gen(6))[0].double()
    subject = np.repeat(np.arange(11), 12)
    rt, response = sample_wiener(local[subject, 0], local[subject, 1], float(g[0, 6]), local[subject, 2], gen(7))
    return rt.numpy(), response.numpy(), subject


# ---- Stan (slow) --------------------------------------------------------------------------------------------
@pytest.mark.skipif(not SLOW, reason="compiles a Stan program; set MLNPE_SLOW_TESTS=1")
def test_density_matches_stan_wiener_lpdf():
    import stan

    program = """
    data { int N; vector[N] rt; array[N] int resp; vector[N] v; vector[N] a; vector[N] w; vector[N] t0; }
    generated quantities {
      vector[N] lp;
      for (n in 1:N) lp[n] = resp[n] == 1 ? wiener_lpdf(rt[n] | a[n], t0[n], w[n], v[n])
                                          : wiener_lpdf(rt[n] | a[n], t0[n], 1 - w[n], -v[n]);
    }
    """
    rng = np.random.default_rng(0)
    n = 40
    values = {"v": rng.normal(0.5, 1.0, n), "a": rng.uniform(0.6, 2.5, n), "w": rng.uniform(0.2, 0.8, n),
              "t0": rng.uniform(0.1, 0.4, n)}  # fmt: skip
    values["rt"] = values["t0"] + rng.uniform(0.02, 2.5, n)
    resp = rng.integers(0, 2, n)
    posterior = stan.build(program, data={"N": n, "resp": resp.tolist(), **{k: x.tolist() for k, x in values.items()}})
    stan_lp = np.asarray(posterior.fixed_param(num_chains=1, num_samples=1)["lp"])[:, 0]
    ours = wiener_log_density(*(torch.as_tensor(values[k]) for k in ("rt",)), torch.as_tensor(resp),
                              *(torch.as_tensor(values[k]) for k in ("v", "a", "w", "t0"))).numpy()  # fmt: skip
    np.testing.assert_allclose(ours, stan_lp, atol=1e-5, rtol=1e-5)


def test_logo_flow_and_prior_proposals_estimate_the_same_elpd():
    """Both importance-sampling proposals are unbiased for p(x_j | tau, omega): with few trials per subject
    (where prior draws suffice) they agree; a proposal bug (a missing prior or q term) shifts the flow's."""
    rt, response, subject = simulated_trials()
    keep = np.concatenate([np.flatnonzero(subject == j)[:3] for j in range(11)])
    data = ddm_data(rt[keep], response[keep], subject[keep], min_rt=0.05)
    model = HierarchicalDDM()
    npe = MultilevelNPE(model, groups=(10, 12), rows=(2, 5), network=ddm_network(summary={"hidden": 16}), pilot_size=64)
    npe.train(TrainConfig(steps=150, batch_size=32, learning_rate=3e-3, progress=False, seed=0))
    flow = logo_elpd(npe, model, data, n_draws=40, n_local=500, seed=3, proposal="flow")
    prior = logo_elpd(npe, model, data, n_draws=40, n_local=500, seed=3, proposal="prior")
    assert np.all(prior.ess_j > 200)
    assert np.abs(flow.elpd_j - prior.elpd_j).max() < 0.15
    with pytest.raises(ConfigError, match="proposal"):
        logo_elpd(npe, model, data, n_draws=2, n_local=2, proposal="posterior")
    # the same estimator on refined LOGO posteriors (HMC through the amortizer; its draws are checked against Stan
    # in test_refine.py and BENCHMARKS.md): here only the plumbing, with chains far too short to converge
    refined = logo_elpd(npe, model, data, n_draws=8, n_local=20, seed=3, posterior="refined",
                        refine_config=RefineConfig(chains=4, warmup=20, pool=16, seed=0))  # fmt: skip
    assert refined.posterior == "refined" and np.isfinite(refined.max_rhat) and flow.posterior == "amortized"
    assert refined.to_dict()["posterior"] == "refined" and np.isnan(flow.max_rhat)
    assert np.all(np.isfinite(refined.elpd_j)) and refined.n_draws == 8
    with pytest.raises(ConfigError, match="posterior"):
        logo_elpd(npe, model, data, n_draws=2, n_local=2, posterior="stan")
