import pytest
import torch

from mlnpe.errors import ConfigError
from mlnpe.nn import ConditionalFlow, DeepSet, RecurrentSummary, SetTransformer, build_summary

SETS = [
    lambda: DeepSet(3, 8, hidden=16),
    lambda: SetTransformer(3, 8, dim=16, heads=2, blocks=1, inducing=4),
]


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 6, 3, generator=g)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] + [0] * 5, [1] * 5 + [0]]).bool()
    return x, mask


@pytest.mark.parametrize("make", SETS)
def test_permutation_invariance(make):
    torch.manual_seed(0)
    net = make().eval()
    x, mask = _data()
    out = net(x, mask)
    perm = torch.randperm(6)
    assert torch.allclose(net(x[:, perm], mask[:, perm]), out, atol=1e-5)


@pytest.mark.parametrize("make", SETS + [lambda: RecurrentSummary(3, 8, hidden=16)])
def test_padding_invariance(make):
    torch.manual_seed(0)
    net = make().eval()
    x, mask = _data()
    out = net(x, mask)
    # Change padded values and add more padding: outputs must not move.
    x2 = torch.where(mask[..., None], x, torch.full_like(x, 1e3))
    x3 = torch.cat([x2, torch.randn(4, 5, 3)], 1)
    m3 = torch.cat([mask, torch.zeros(4, 5, dtype=torch.bool)], 1)
    assert torch.allclose(net(x3, m3), out, atol=1e-5)
    assert out.shape == (4, net.out_features)


def test_recurrent_summary_is_order_sensitive():
    torch.manual_seed(0)
    net = RecurrentSummary(3, 8, hidden=16, cell="gru").eval()
    x, mask = _data()
    out = net(x, mask)
    rev = x.clone()
    rev[0] = x[0].flip(0)
    assert not torch.allclose(net(rev, mask)[0], out[0], atol=1e-4)


@pytest.mark.parametrize("make", SETS + [lambda: RecurrentSummary(3, 8, hidden=16)])
def test_gradients_reach_all_parameters(make):
    torch.manual_seed(0)
    net = make()
    x, mask = _data()
    net(x, mask).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_deepset_moments_are_exact_sufficient_statistics():
    net = DeepSet(1, 4)
    x = torch.tensor([[[1.0], [3.0], [0.0]]])
    out = net(x, torch.tensor([[True, True, False]]))
    # mean 2, variance 1 (about the mean, divided by n), log n
    assert torch.allclose(out[0, -3:], torch.tensor([2.0, 1.0, torch.log(torch.tensor(2.0))]))


def test_build_summary_rejects_unknown_kind():
    with pytest.raises(ConfigError, match="unknown summary network 'cnn'"):
        build_summary("cnn", 3, 8, 16, 2)


def test_conditional_flow_shapes_and_standardization():
    torch.manual_seed(0)
    flow = ConditionalFlow(2, 5, transforms=2, hidden=(16,))
    flow.set_standardization(torch.tensor([10.0, -3.0]), torch.tensor([2.0, 0.5]))
    ctx = torch.randn(7, 4, 5)
    draws = flow.sample(ctx, torch.Generator().manual_seed(1))
    assert draws.shape == (7, 4, 2)
    assert flow.log_prob(draws, ctx).shape == (7, 4)
    # Standardization: draws are centred near loc, and the density integrates the affine Jacobian.
    with torch.no_grad():
        many = flow.sample(torch.zeros(20000, 5), torch.Generator().manual_seed(2))
    assert abs(float(many[:, 0].mean()) - 10.0) < 2.0
    # Same generator seed gives the same draws.
    again = flow.sample(ctx, torch.Generator().manual_seed(1))
    assert torch.equal(draws, again)
