import torch

from mlnpe import FlowConfig, MultilevelNPE, NetworkConfig, SummaryConfig
from mlnpe.core.models import NormalHierarchical
from mlnpe.sbi_adapter import SbiEstimator, pack_condition, pack_theta, unpack_condition, unpack_theta

SMALL = NetworkConfig(summary=SummaryConfig(hidden=16, row_hidden=8), global_flow=FlowConfig(transforms=1, hidden=(16,)),
                      local_flow=FlowConfig(transforms=1, hidden=(16,)))


def test_adapter_matches_estimator_and_sbi_shapes():
    from sbi.neural_nets.estimators.base import ConditionalDensityEstimator

    npe = MultilevelNPE(NormalHierarchical(), groups=(2, 4), rows=(1, 5), network=SMALL, pilot_size=32)
    sims = npe.simulate(3, torch.Generator().manual_seed(0))
    adapter = SbiEstimator(npe.estimator.eval(), n_groups=4, n_rows=5, row_features=1)
    assert isinstance(adapter, ConditionalDensityEstimator)
    cond = pack_condition(sims.batch, 4, 5)
    assert cond.shape == (3, 4, 5, 2)
    back = unpack_condition(cond, 1)
    assert torch.equal(back.row_mask[:, : sims.batch.row_mask.shape[1], : sims.batch.row_mask.shape[2]],
                       sims.batch.row_mask)
    theta = adapter.sample((6,), cond)
    assert theta.shape == (6, 3, 2 + 4)
    lp = adapter.log_prob(theta, cond)
    assert lp.shape == (6, 3) and torch.isfinite(lp).all()
    g, l = unpack_theta(theta, 2, 1)
    assert torch.equal(pack_theta(g, l), theta)
    lp_g, lp_l = npe.estimator.log_prob(g, l, back)
    assert torch.allclose(lp, lp_g + lp_l.sum(-1))
    assert adapter.loss(theta[0], cond).shape == (3,)
    samples, log_probs = adapter.sample_and_log_prob((5,), cond)
    assert samples.shape == (5, 3, 6) and log_probs.shape == (5, 3)
