import math

import pytest
import torch

from mlnpe.errors import ConfigError
from mlnpe.networks.flows import ConditionalFlow
from mlnpe.networks.summaries import DeepSet, RecurrentSummary, SetTransformer, build_summary

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


def test_conditional_affine_flow_density_matches_its_sampler():
    """The conditional affine map is part of the density: log_prob of draws equals a 1-D change of variables."""
    torch.manual_seed(0)
    flow = ConditionalFlow(1, 3, transforms=1, hidden=(16,), affine=True)
    with torch.no_grad():  # a context-dependent shift and a strong shrink, far from the identity
        flow.affine[-1].bias.copy_(torch.tensor([2.0, -3.0]))
    ctx = torch.zeros(1, 3)
    grid = torch.linspace(-2.0, 6.0, 4001)[:, None]
    with torch.no_grad():
        density = flow.log_prob(grid, ctx.expand(len(grid), 3)).exp()
    mass = float(torch.trapezoid(density, grid[:, 0]))
    assert abs(mass - 1.0) < 1e-3
    with torch.no_grad():
        draws = flow.sample(ctx.expand(20000, 3), torch.Generator().manual_seed(0))
    mean = float(torch.trapezoid(density * grid[:, 0], grid[:, 0]))
    assert abs(float(draws.mean()) - mean) < 0.01
    assert abs(float(draws.mean()) - 2.0) < 0.2 and float(draws.std()) < 0.2  # the shrink took effect


def test_conditional_affine_flow_log_scale_is_bounded():
    flow = ConditionalFlow(2, 3, transforms=1, hidden=(8,), affine=True, max_log_scale=3.0)
    with torch.no_grad():
        flow.affine[-1].bias.fill_(100.0)
    with torch.no_grad():
        _, log_scale = flow._shift_scale(torch.zeros(5, 3))
    assert float(log_scale.max()) <= 3.0


def test_full_moments_carry_the_within_set_residual_variance():
    """The last moment feature is log(residual variance of y given x + 1e-3), per set, padding ignored."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 400, 2, generator=gen)
    x[..., 0] = 2.0 * x[..., 1] + torch.tensor([0.5, 1.0, 2.0])[:, None] * x[..., 0]
    mask = torch.ones(3, 400, dtype=torch.bool)
    mask[2, 300:] = False
    x[2, 300:] = 1e3  # padding must not leak in
    net = DeepSet(2, summary_dim=4, hidden=8, moments="full")
    out = net(x, mask)
    resid = out[:, -2].exp() - 1e-3  # the log(n) feature comes last
    slope = out[:, -3]  # signed-log slope of y on x: 2
    assert torch.allclose(slope, torch.full((3,), math.log(3.0)), atol=0.1)
    assert torch.allclose(resid, torch.tensor([0.25, 1.0, 4.0]), rtol=0.2, atol=0.02)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_summary_equals_a_packed_run(cell):
    """Reading the padded run at each set's last real step gives the packed sequence's final state."""
    torch.manual_seed(0)
    net = RecurrentSummary(3, 4, 8, cell)
    x = torch.randn(5, 9, 3)
    lengths = torch.tensor([9, 2, 5, 7, 1])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    _, state = net.rnn(packed)
    last = (state[0] if cell == "lstm" else state)[-1]
    log_n = torch.log(lengths.float())[:, None]
    expected = torch.cat([net.head(torch.cat([last, log_n], -1)), log_n], -1)
    assert torch.allclose(net(x, mask), expected, atol=1e-5)


def test_spline_transform_matches_zuko():
    """The faster knot construction gives zuko's spline: same values, inverse and log-Jacobian."""
    import zuko

    from mlnpe.networks.flows import SplineTransform

    gen = torch.Generator().manual_seed(0)
    raw = [torch.randn(50, 1, k, generator=gen) * 3 for k in (8, 8, 7)]
    ours, theirs = SplineTransform(*raw), zuko.transforms.MonotonicRQSTransform(*raw)
    x = torch.randn(50, 1, generator=gen) * 4
    y, ladj = ours.call_and_ladj(x)
    y_ref, ladj_ref = theirs.call_and_ladj(x)
    assert torch.allclose(y, y_ref, atol=1e-5) and torch.allclose(ladj, ladj_ref, atol=1e-4)
    assert torch.allclose(ours.inv(y), theirs.inv(y), atol=1e-3) and torch.allclose(ours.inv(y), x, atol=1e-3)


def test_deep_set_extremes_are_the_masked_minimum_and_maximum():
    torch.manual_seed(0)
    summary = DeepSet(2, 4, 8, 1, "full", item_hidden=8, extremes=True)
    x = torch.randn(3, 6, 2)
    mask = torch.arange(6)[None] < torch.tensor([6, 2, 4])[:, None]
    out = summary(torch.where(mask[..., None], x, 1e6), mask)  # padding far outside the data is ignored
    low_high = out[:, summary.fixed_columns[-4:]]
    for i, n in enumerate([6, 2, 4]):
        assert torch.allclose(low_high[i], torch.cat([x[i, :n].amin(0), x[i, :n].amax(0)]))
    packed = summary.forward_packed(x[mask], torch.nonzero(mask)[:, 0], 3)
    assert torch.allclose(packed, out, atol=1e-6)
    with pytest.raises(ConfigError, match="extremes"):
        build_summary("set_transformer", 2, 4, 8, 1, extremes=True)


@pytest.mark.parametrize("features", [1, 2, 5])
@pytest.mark.parametrize("affine", [False, True])
def test_flow_from_noise_is_zukos_inverse_with_its_log_jacobian(features, affine):
    """`from_noise` (factored context, one conditioner pass per rank, fused spline inverse) equals zuko's inverse
    of the flow, with the context whole or in broadcastable parts, with or without gradients, and its log-Jacobian
    is the change of variables of `log_prob`. Noise of sd 3 reaches the identity tails beyond the spline bound."""
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        torch.manual_seed(features)
        flow = ConditionalFlow(features, 7, transforms=3, hidden=(32, 32), affine=affine)
        with torch.no_grad():  # far from the initialization
            for p in flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
            flow.set_standardization(torch.randn(features), torch.rand(features) + 0.5)
        h, g = torch.randn(4, 6, 5), torch.randn(10, 4, 1, 2)
        context = torch.cat([h.expand(10, 4, 6, 5), g.expand(10, 4, 6, 2)], -1)
        noise = 3 * torch.randn(10, 4, 6, features)
        with torch.no_grad():
            z = flow.flow(context).transform.inv(noise)
            if affine:
                shift, log_scale = flow._shift_scale(context)
                z = z * torch.exp(log_scale) + shift
            expected = z * flow.scale + flow.loc
            fast = flow.from_noise(noise, (h, g))
        assert torch.allclose(fast, expected, atol=1e-9)
        theta, log_det = flow.from_noise(noise.requires_grad_(True), context, log_det=True)
        assert torch.allclose(theta, expected, atol=1e-9)
        base = torch.distributions.Normal(0.0, 1.0).log_prob(noise).sum(-1)
        assert torch.allclose(flow.log_prob(theta, context), base - log_det, atol=1e-8)
        (grad,) = torch.autograd.grad(theta.sum(), noise)
        assert torch.isfinite(grad).all()
    finally:
        torch.set_default_dtype(dtype)
