"""Tests of mlnpe.consistency: the self-consistency loss on the joint factorized density."""

from __future__ import annotations

import pytest
import torch

from mlnpe import MultilevelNPE, NetworkConfig, TrainConfig, TwoLevelModel
from mlnpe.consistency import has_likelihood, log_joint, self_consistency
from mlnpe.core.models import NormalHierarchical
from mlnpe.errors import ConfigError

SMALL = NetworkConfig.from_dict({"summary": {"hidden": 16, "row_hidden": 8, "local_dim": 4, "global_dim": 8},
                                 "global_flow": {"transforms": 1, "hidden": [16]},
                                 "local_flow": {"hidden": [16]}})  # fmt: skip


class SimulatorOnly(NormalHierarchical):
    """The normal model without its densities, as a user's simulator would come."""

    log_prior_global = TwoLevelModel.log_prior_global
    log_prior_local = TwoLevelModel.log_prior_local
    log_likelihood = TwoLevelModel.log_likelihood


def _npe(model=None) -> MultilevelNPE:
    return MultilevelNPE(model or NormalHierarchical(), groups=(3, 6), rows=(2, 8), network=SMALL, seed=0)


def test_has_likelihood_tells_simulators_from_models_with_densities():
    assert has_likelihood(NormalHierarchical())
    assert not has_likelihood(SimulatorOnly())


def test_log_joint_is_prior_plus_likelihood_over_real_groups():
    npe = _npe()
    sims = npe.simulate(5, torch.Generator().manual_seed(1))
    g, l = sims.global_params[None], sims.local_params[None]
    mask = sims.batch.group_mask
    expected = npe.model.log_prior_global(g) + (
        (npe.model.log_prior_local(l, g) + npe.model.log_likelihood(sims.batch, g, l)) * mask
    ).sum(-1)
    torch.testing.assert_close(log_joint(npe.model, sims.batch, g, l), expected)


def test_loss_per_dataset_is_finite_and_reaches_both_flows_and_the_summaries():
    npe = _npe()
    sims = npe.simulate(8, torch.Generator().manual_seed(2))
    loss = self_consistency(npe.estimator, npe.model, sims.batch, 4, torch.Generator().manual_seed(3))
    assert loss.shape == (8,) and torch.isfinite(loss).all() and (loss >= 0).all()
    loss.mean().backward()
    for name in ("global_flow", "local_flow", "local_summary"):
        module = getattr(npe.estimator, name)
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads), name


def test_an_untrained_posterior_is_not_self_consistent():
    """log p(theta, x) - log q(theta | x) varies over draws of an untrained q, so every dataset's loss is positive."""
    npe = _npe()
    sims = npe.simulate(4, torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        base = self_consistency(npe.estimator, npe.model, sims.batch, 2, gen)
    assert (base > 0).all()  # an untrained q is not self-consistent


def test_training_with_self_consistency_runs_and_is_checked():
    npe = _npe()
    history = npe.train(TrainConfig(steps=4, batch_size=8, time_limit=None, progress=False, self_consistency=1.0))
    assert len(history.loss) and all(map(torch.isfinite, map(torch.tensor, history.loss)))
    with pytest.raises(ConfigError, match="needs a model with log_prior_global"):
        _npe(SimulatorOnly()).train(TrainConfig(steps=2, batch_size=4, progress=False, self_consistency=1.0))
    with pytest.raises(ConfigError, match="`self_consistency` must be a weight >= 0"):
        TrainConfig(self_consistency=-1.0)
    with pytest.raises(ConfigError, match="`consistency_draws` must be at least 2"):
        TrainConfig(consistency_draws=1)


def test_self_consistency_off_leaves_training_unchanged():
    a, b = _npe(), _npe()
    a.train(TrainConfig(steps=3, batch_size=8, time_limit=None, progress=False))
    b.train(TrainConfig(steps=3, batch_size=8, time_limit=None, progress=False, self_consistency=0.0))
    assert a.history.loss == b.history.loss
