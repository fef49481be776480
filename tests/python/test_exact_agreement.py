"""Statistical check of the whole engine against the exact posterior of the two-level normal model.

One estimator is trained for a short, fixed budget (seeded). Its draws must agree with the exact posterior
within tolerances that the two classic broken factorizations fail: a global flow that ignores the data
(its draws are the prior) and a local flow that ignores the global parameters.
"""

import numpy as np
import pytest
import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.examples.exact import compare_draws, normal_model_posterior
from mlnpe.core.models import NormalHierarchical
from mlnpe.core.spec import simulate_batch

GROUPS, ROWS = (5, 15), (2, 20)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup():
    npe = MultilevelNPE(NormalHierarchical(), groups=GROUPS, rows=ROWS, seed=0)
    npe.train(TrainConfig(steps=1200, batch_size=64, learning_rate=2e-3, seed=0, progress=False))
    sims = simulate_batch(npe.model, 12, GROUPS, ROWS, torch.Generator().manual_seed(99))
    datasets = sims.batch.to_datasets()
    exact = [normal_model_posterior([d.group(j)[0][:, 0] for j in range(d.n_groups)]) for d in datasets]
    return npe, sims, datasets, exact


def _errors(exact, mu, tau, alpha):
    """Mean error (exact sds) and mean sd ratio per block over datasets."""
    rows = [compare_draws(e, m, t, a) for e, m, t, a in zip(exact, mu, tau, alpha)]
    return {
        k: (np.mean([np.mean(r[k]["err_sd"]) for r in rows]), np.mean([np.mean(r[k]["sd_ratio"]) for r in rows]))
        for k in ("mu", "tau", "alpha")
    }


def _check(errors, err_tol=0.3, ratio=(0.75, 1.35)):
    return all(e <= err_tol and ratio[0] <= r <= ratio[1] for e, r in errors.values())


def test_agrees_with_exact_posterior(setup):
    npe, _, datasets, exact = setup
    draws = npe.sample(datasets, 1000, seed=1)
    errors = _errors(exact, [d["mu"] for d in draws], [d["tau"] for d in draws], [d["alpha"] for d in draws])
    assert _check(errors), errors


def test_global_flow_ignoring_data_fails_the_same_check(setup):
    npe, _, datasets, exact = setup
    draws = npe.sample(datasets, 1000, seed=1)
    prior = npe.model.sample_global(1000, torch.Generator().manual_seed(5)).numpy()
    errors = _errors(exact, [prior[:, 0]] * 12, [prior[:, 1]] * 12, [d["alpha"] for d in draws])
    assert not _check(errors), errors


def test_local_flow_ignoring_globals_fails_the_same_check(setup):
    npe, sims, datasets, exact = setup
    est = npe.estimator
    h_local, h_global = est.summarize(sims.batch)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        gu = est.global_sample(1000, h_global, gen)
        # The local flow sees one fixed global value instead of each global draw.
        fixed = est.global_bijector.inverse(torch.tensor([0.0, 1.0])).expand_as(gu)
        lu = est.local_sample(h_local, fixed, gen)
    g, l = est.global_bijector.forward(gu).numpy(), est.local_bijector.forward(lu).numpy()
    alpha = [l[:, i, : d.n_groups, 0] for i, d in enumerate(datasets)]
    errors = _errors(exact, [g[:, i, 0] for i in range(12)], [g[:, i, 1] for i in range(12)], alpha)
    assert not _check(errors), errors

