"""Tests of mlnpe.consistency: the self-consistency loss on the joint factorized density."""

from __future__ import annotations

import pytest
import torch

from mlnpe import MultilevelNPE, NetworkConfig, TrainConfig, TwoLevelModel
from mlnpe.consistency import has_likelihood, log_joint, self_consistency
from mlnpe.core.models import NormalHierarchical
from mlnpe.errors import ConfigError, DataError

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


# ---- unlabeled losses on observed data ------------------------------------------------------------------------


def _observed(seed: int = 11, groups: int = 5):
    from mlnpe.core.data import GroupedData

    gen = torch.Generator().manual_seed(seed)
    ys = [torch.randn(int(n), generator=gen).numpy() + 0.5 for n in torch.randint(2, 8, (groups,), generator=gen)]
    return GroupedData.from_groups(ys, levels=[f"g{j}" for j in range(groups)])


def test_observed_sets_are_the_data_its_leave_one_out_subsets_and_group_resamples():
    import numpy as np

    from mlnpe.consistency import ObservedSets

    data = _observed()
    sets = ObservedSets(data, min_groups=3)
    batch = sets.batch(40, torch.Generator().manual_seed(0))
    datasets = batch.to_datasets()
    assert len(datasets) == 40 and np.array_equal(datasets[0].y, data.y)  # the data themselves come first
    groups = {tuple(data.group(j)[0][:, 0]) for j in range(data.n_groups)}
    sizes = [d.n_groups for d in datasets[1:]]
    assert set(sizes) == {4, 5} and 4 in sizes and 5 in sizes  # both kinds occur
    for d in datasets[1:]:  # every group is one of the data's groups, whole
        assert all(tuple(d.group(j)[0][:, 0]) in groups for j in range(d.n_groups))
        if d.n_groups == 4:
            assert len({tuple(d.group(j)[0][:, 0]) for j in range(4)}) == 4  # one group left out, none repeated
    # a subset below the trained minimum of groups is replaced by a resample
    assert {d.n_groups for d in ObservedSets(data, min_groups=5).batch(20, torch.Generator()).to_datasets()} == {5}
    assert ObservedSets(data).batch(1, torch.Generator()).batch_size == 1


def test_observed_sets_of_several_datasets_take_turns_and_mix_their_resamples():
    import numpy as np

    from mlnpe.consistency import ObservedSets

    a, b = _observed(11, groups=5), _observed(12, groups=7)
    sets = ObservedSets([a, b], min_groups=3)
    gen = torch.Generator().manual_seed(0)
    firsts = [sets.batch(30, gen).to_datasets() for _ in range(4)]
    for i, datasets in enumerate(firsts):  # each dataset as it is, in turn, first in its batch
        assert np.array_equal(datasets[0].y, (a, b)[i % 2].y)
    rest = [d for datasets in firsts for d in datasets[1:]]
    rows_a = {tuple(a.group(j)[0][:, 0]) for j in range(5)}
    rows_b = {tuple(b.group(j)[0][:, 0]) for j in range(7)}
    sources = set()
    for d in rest:  # every perturbed dataset is made of the groups of one observed dataset, whole
        groups = {tuple(d.group(j)[0][:, 0]) for j in range(d.n_groups)}
        assert groups <= rows_a or groups <= rows_b
        sources.add("a" if groups <= rows_a else "b")
    assert sources == {"a", "b"}
    assert [s.batch(1, gen).batch_size for s in (sets, sets)] == [1, 1]
    with pytest.raises(DataError, match="at least one dataset"):
        ObservedSets([])


def test_training_takes_a_list_of_observed_datasets():
    history = _npe().train(TrainConfig(steps=3, batch_size=8, progress=False),
                           observed=[_observed(1), _observed(2, groups=6)])  # fmt: skip
    assert len(history.loss) == 3 and all(v == v for v in history.loss)
    with pytest.raises(DataError, match="a non-empty list of them or None, got list of int"):
        _npe().train(TrainConfig(steps=1, batch_size=4, progress=False), observed=[1, 2])
    with pytest.raises(DataError, match="got list of nothing"):
        _npe().train(TrainConfig(steps=1, batch_size=4, progress=False), observed=[])


def test_reverse_kl_is_finite_per_dataset_and_reaches_the_networks():
    from mlnpe.consistency import reverse_kl
    from mlnpe.core.data import collate

    npe = _npe()
    batch = collate([_observed(1), _observed(2, groups=4)])
    loss = reverse_kl(npe.estimator, npe.model, batch, 6, torch.Generator().manual_seed(0))
    assert loss.shape == (2,) and torch.isfinite(loss).all()
    loss.sum().backward()
    for name in ("global_flow", "local_flow", "local_summary"):
        grads = [p.grad for p in getattr(npe.estimator, name).parameters() if p.requires_grad]
        assert any(gr is not None and gr.abs().sum() > 0 for gr in grads), name


def test_reverse_kl_on_the_observed_data_brings_its_posterior_to_the_exact_one():
    """The two-level normal model, one observed dataset of 8 groups: after a short NPE training the amortized
    posterior of that dataset is off; the same budget continued with the observed data's reverse KL brings mu's
    and tau's means within 0.15 exact sds and their sds within 15 % of the exact ones, and PSIS certifies it
    (k-hat < 0.7). Continued without the observed data, the errors stay larger."""
    import numpy as np

    from mlnpe.core.data import GroupedData
    from mlnpe.examples.exact import normal_model_posterior

    rng = np.random.default_rng(3)
    alpha = 0.8 + 0.6 * rng.normal(size=8)
    ys = [alpha[j] + rng.normal(size=int(n)) for j, n in enumerate(rng.integers(3, 12, 8))]
    data = GroupedData.from_groups(ys)
    exact = normal_model_posterior(ys)

    def errors(npe):
        d = npe.sample(data, 4000, seed=1)
        mu, tau = d.global_draws[:, 0], d.global_draws[:, 1]
        return (abs(mu.mean() - exact.mu_mean) / exact.mu_sd, abs(tau.mean() - exact.tau_mean) / exact.tau_sd,
                mu.std() / exact.mu_sd, tau.std() / exact.tau_sd)  # fmt: skip

    arms = {}
    for weight in (0.0, 1.0):
        npe = MultilevelNPE(NormalHierarchical(), groups=(4, 12), rows=(2, 12), network=SMALL, seed=0)
        npe.train(TrainConfig(steps=300, batch_size=32, learning_rate=3e-3, progress=False))
        npe.train(TrainConfig(steps=300, batch_size=32, learning_rate=1e-3, progress=False, observed_weight=weight),
                  observed=data)  # fmt: skip
        arms[weight] = errors(npe)
    mu_err, tau_err, mu_ratio, tau_ratio = arms[1.0]
    assert mu_err < 0.15 and tau_err < 0.15, arms
    assert 0.85 < mu_ratio < 1.15 and 0.85 < tau_ratio < 1.15, arms
    assert max(arms[0.0][:2]) > max(mu_err, tau_err), arms


def test_observed_data_need_a_model_with_densities_and_the_trained_design():
    from mlnpe.errors import RangeError

    with pytest.raises(ConfigError, match="`observed` data train with self-consistency"):
        _npe(SimulatorOnly()).train(TrainConfig(steps=1, batch_size=4, progress=False), observed=_observed())
    with pytest.raises(RangeError):
        _npe().train(TrainConfig(steps=1, batch_size=4, progress=False), observed=_observed(groups=40))
    with pytest.raises(ConfigError, match="`observed_loss` must be"):
        TrainConfig(observed_loss="elbo")
    with pytest.raises(ConfigError, match="`observed_weight` must be a weight >= 0"):
        TrainConfig(observed_weight=-0.5)


def test_both_observed_losses_train():
    for loss in ("reverse_kl", "self_consistency"):
        history = _npe().train(TrainConfig(steps=3, batch_size=8, progress=False, observed_loss=loss),
                               observed=_observed())  # fmt: skip
        assert len(history.loss) == 3 and all(map(lambda v: v == v, history.loss)), loss
