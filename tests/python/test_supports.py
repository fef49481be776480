"""Tests of mlnpe.core.constraints: bijections, log-Jacobians, checks, serialization and the Bijector."""

from __future__ import annotations

import json

import pytest
import torch
from torch.autograd.functional import jacobian

from mlnpe.errors import DataError, SpecError
from mlnpe.core.constraints import (
    Bijector,
    Correlation,
    Interval,
    Positive,
    Real,
    Support,
    UnitInterval,
    cholesky_from_unconstrained,
    corr_matrix_to_vector,
    corr_vector_to_matrix,
    get_support,
    support_from_dict,
)

SUPPORTS = [
    Real(),
    Positive(),
    UnitInterval(),
    Interval(-2.0, 3.5),
    Correlation(2),
    Correlation(3),
    Correlation(4),
]
BATCH_SHAPES = [(), (5,), (3, 4)]
DTYPES = [torch.float32, torch.float64]


def _ids(support: Support) -> str:
    return support.spec()


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


@pytest.mark.parametrize("support", SUPPORTS, ids=_ids)
@pytest.mark.parametrize("batch", BATCH_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip(
    support: Support, batch: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator
) -> None:
    u = 1.5 * torch.randn(*batch, support.unconstrained_dim(), generator=gen, dtype=dtype)
    theta = support.forward(u)
    assert theta.shape == (*batch, support.constrained_dim())
    assert theta.dtype == dtype
    assert bool(support.check(theta).all())
    u_back = support.inverse(theta)
    assert u_back.shape == u.shape and u_back.dtype == dtype
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(u_back, u, atol=tol, rtol=tol)
    torch.testing.assert_close(support.forward(u_back), theta, atol=tol, rtol=tol)
    assert support.log_abs_det_jacobian(u).shape == batch


@pytest.mark.parametrize("support", SUPPORTS + [Correlation(5)], ids=_ids)
def test_log_det_matches_autograd(support: Support, gen: torch.Generator) -> None:
    for _ in range(3):
        u = torch.randn(support.unconstrained_dim(), generator=gen, dtype=torch.float64)
        jac = jacobian(support.forward, u)
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(support.log_abs_det_jacobian(u), expected, atol=1e-10, rtol=1e-10)


def test_log_det_batched_equals_unbatched(gen: torch.Generator) -> None:
    support = Correlation(4)
    u = torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)
    batched = support.log_abs_det_jacobian(u)
    single = torch.stack([support.log_abs_det_jacobian(row) for row in u.reshape(-1, 6)]).reshape(3, 4)
    torch.testing.assert_close(batched, single)


def test_correlation_k2_is_tanh(gen: torch.Generator) -> None:
    u = torch.randn(7, 1, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(Correlation(2).forward(u), torch.tanh(u))


@pytest.mark.parametrize("k", [2, 3, 4, 6])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_correlation_matrices_are_valid(k: int, dtype: torch.dtype, gen: torch.Generator) -> None:
    support = Correlation(k)
    u = torch.randn(50, support.unconstrained_dim(), generator=gen, dtype=dtype)
    R = corr_vector_to_matrix(support.forward(u), k)
    assert R.shape == (50, k, k)
    torch.testing.assert_close(R, R.mT)
    torch.testing.assert_close(torch.diagonal(R, dim1=-2, dim2=-1), torch.ones(50, k, dtype=dtype))
    assert bool((torch.linalg.eigvalsh(R.double()) > 0).all())


def test_cholesky_from_unconstrained_matches_forward(gen: torch.Generator) -> None:
    k = 4
    z = torch.randn(2, 3, 6, generator=gen, dtype=torch.float64)
    L = cholesky_from_unconstrained(z, k)
    assert L.shape == (2, 3, k, k)
    torch.testing.assert_close(L, torch.tril(L))
    assert bool((torch.diagonal(L, dim1=-2, dim2=-1) > 0).all())
    torch.testing.assert_close(corr_matrix_to_vector(L @ L.mT), Correlation(k).forward(z))
    torch.testing.assert_close(L, torch.linalg.cholesky(L @ L.mT))


def test_corr_vector_matrix_helpers() -> None:
    r = torch.tensor([0.1, 0.2, 0.3])
    R = corr_vector_to_matrix(r)
    expected = torch.tensor([[1.0, 0.1, 0.2], [0.1, 1.0, 0.3], [0.2, 0.3, 1.0]])
    torch.testing.assert_close(R, expected)
    torch.testing.assert_close(corr_matrix_to_vector(R), r)
    with pytest.raises(SpecError, match="4"):
        corr_vector_to_matrix(torch.zeros(4))
    with pytest.raises(DataError, match=r"\(2, 3\)"):
        corr_matrix_to_vector(torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("support", "bad", "good"),
    [
        (Real(), [float("nan"), float("inf")], [-1e30, 0.0]),
        (Positive(), [-1.0, 0.0, float("inf"), float("nan")], [1e-30, 5.0]),
        (UnitInterval(), [0.0, 1.0, 1.5, -0.1, float("nan")], [1e-9, 0.5]),
        (Interval(-2.0, 3.5), [-2.0, 3.5, 4.0, -3.0, float("nan")], [-1.999, 3.4]),
    ],
    ids=lambda x: x.spec() if isinstance(x, Support) else "",
)
def test_check_scalar_supports(support: Support, bad: list[float], good: list[float]) -> None:
    values = torch.tensor(bad + good, dtype=torch.float64)[:, None]
    inside = support.check(values)
    assert inside.tolist() == [False] * len(bad) + [True] * len(good)


def test_check_correlation() -> None:
    support = Correlation(3)
    theta = torch.tensor(
        [
            [0.2, 0.1, -0.3],  # valid
            [1.2, 0.0, 0.0],  # |r| > 1
            [0.9, 0.9, -0.9],  # |r| < 1 but not positive definite
            [1.0, 0.0, 0.0],  # boundary
            [float("nan"), 0.0, 0.0],
        ]
    )
    assert support.check(theta).tolist() == [True, False, False, False, False]
    inverse = support.inverse(theta)
    assert bool(torch.isfinite(inverse[0]).all())
    assert not bool(torch.isfinite(inverse[1:]).all(-1).any())


def test_check_and_inverse_raises_with_value() -> None:
    with pytest.raises(SpecError, match=r"sigma.*-3\.0"):
        Positive().check_and_inverse(torch.tensor([[1.0], [-3.0]]), arg_name="sigma")
    bij = Bijector(["real", "correlation:3"])
    with pytest.raises(SpecError, match="theta"):
        bij.check_and_inverse(torch.tensor([0.0, 0.9, 0.9, -0.9]))
    torch.testing.assert_close(bij.check_and_inverse(torch.zeros(2, 4)), torch.zeros(2, 4))


@pytest.mark.parametrize("support", SUPPORTS, ids=_ids)
def test_dict_round_trip(support: Support) -> None:
    restored = Support.from_dict(json.loads(json.dumps(support.to_dict())))
    assert restored == support and type(restored) is type(support)
    assert support_from_dict(support.to_dict()) == support
    assert get_support(support.spec()) == support
    assert get_support(support.to_dict()) == support
    assert get_support(support) is support


def test_get_support_strings() -> None:
    assert get_support("real") == Real()
    assert get_support(" Positive ") == Positive()
    assert get_support("unit_interval") == UnitInterval()
    assert get_support("correlation:3") == Correlation(3)
    assert get_support("interval:0:1") == Interval(0.0, 1.0)
    assert get_support("interval:-1e-3:2.5") == Interval(-0.001, 2.5)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("bogus", "bogus"),
        ("correlation", "correlation"),
        ("correlation:x", "'x'"),
        ("correlation:1", "1"),
        ("interval:0", "interval:0"),
        ("interval:a:b", "interval:a:b"),
        ("interval:2:1", "low=2.0"),
        ("interval:0:inf", "inf"),
        ({"name": "wobbly"}, "wobbly"),
        ({"name": "interval", "low": 0.0}, "high"),
        ({"name": "real", "extra": 1}, "extra"),
        (3.5, "3.5"),
    ],
)
def test_get_support_errors_name_the_value(spec: object, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        get_support(spec)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_get_support_error_lists_valid_names() -> None:
    with pytest.raises(SpecError, match="unit_interval"):
        get_support("unit")


def test_constructor_validation() -> None:
    with pytest.raises(SpecError, match="True"):
        Correlation(True)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="2.5"):
        Correlation(2.5)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="low=1.0"):
        Interval(1.0, 1.0)
    with pytest.raises(SpecError, match="nan"):
        Interval(float("nan"), 1.0)


def test_shape_and_dtype_errors() -> None:
    with pytest.raises(DataError, match=r"\(\.\.\., 3\).*\(4, 2\)"):
        Correlation(3).forward(torch.zeros(4, 2))
    with pytest.raises(DataError, match="int64"):
        Positive().forward(torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(DataError, match="list"):
        Real().inverse([1.0])  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"\(\.\.\., 5\)"):
        Bijector(["real", "correlation:3", "positive"]).forward(torch.zeros(3))


def test_bijector_concatenation(gen: torch.Generator) -> None:
    blocks = [Real(), Positive(), Correlation(3), Interval(0.0, 10.0), UnitInterval(), Correlation(2)]
    bij = Bijector(blocks)
    assert isinstance(bij, Support)
    assert bij.unconstrained_dim() == bij.constrained_dim() == 1 + 1 + 3 + 1 + 1 + 1
    assert bij.constrained_sizes == [1, 1, 3, 1, 1, 1]
    assert len(bij) == len(blocks)
    u = torch.randn(4, 5, bij.unconstrained_dim(), generator=gen, dtype=torch.float64)
    theta = bij.forward(u)
    assert theta.shape == (4, 5, bij.constrained_dim())
    assert bool(bij.check(theta).all())
    torch.testing.assert_close(bij.inverse(theta), u)

    parts = torch.split(u, bij.unconstrained_sizes, dim=-1)
    expected_theta = torch.cat([s.forward(p) for s, p in zip(blocks, parts)], dim=-1)
    torch.testing.assert_close(theta, expected_theta)
    expected_logdet = sum(s.log_abs_det_jacobian(p) for s, p in zip(blocks, parts))
    torch.testing.assert_close(bij.log_abs_det_jacobian(u), expected_logdet)

    single = u[0, 0]
    jac_logdet = torch.linalg.slogdet(jacobian(bij.forward, single)).logabsdet
    torch.testing.assert_close(bij.log_abs_det_jacobian(single), jac_logdet)

    bad = theta.clone()
    bad[1, 2, 1] = -1.0
    inside = bij.check(bad)
    assert not bool(inside[1, 2]) and int(inside.sum()) == 19


def test_bijector_dict_round_trip() -> None:
    bij = Bijector(["real", "positive", "correlation:4", "interval:-1:1"])
    restored = Bijector.from_dict(json.loads(json.dumps(bij.to_dict())))
    assert restored == bij
    assert bij.to_dict()["name"] == "product"
    assert Support.from_dict(bij.to_dict()) == bij and get_support(bij.to_dict()) == bij
    assert Bijector.from_dict({"supports": bij.to_dict()["supports"]}) == bij
    assert hash(restored) == hash(bij) and bij != Bijector(["real"])
    nested = Bijector([bij, "positive"])
    assert nested.constrained_sizes == [bij.constrained_dim(), 1]
    assert Support.from_dict(json.loads(json.dumps(nested.to_dict()))) == nested
    with pytest.raises(SpecError, match="no string form"):
        bij.spec()
    with pytest.raises(SpecError, match="supports"):
        Bijector.from_dict({"blocks": []})
    with pytest.raises(SpecError, match=r"\[\]"):
        Bijector([])
    with pytest.raises(SpecError, match="'real'"):
        Bijector("real")  # type: ignore[arg-type]


@pytest.mark.parametrize("support", SUPPORTS + [Correlation(5)], ids=_ids)
@pytest.mark.parametrize("scale", [50.0, 1e4])
def test_gradients_finite_for_large_inputs_float32(support: Support, scale: float) -> None:
    d = support.unconstrained_dim()
    signs = torch.tensor([1.0, -1.0]).repeat(d)[: 2 * d].reshape(2, d)
    u = torch.cat([scale * signs, scale * torch.ones(1, d), -scale * torch.ones(1, d)]).requires_grad_(True)
    theta = support.forward(u)
    assert bool(torch.isfinite(theta).all())
    if isinstance(support, Correlation) and support.k > 2:
        # For k >= 3, extreme same-sign values may round to |r| = 1 in float32 (check reports it).
        assert bool((theta.abs() <= 1).all())
    else:
        assert bool(support.check(theta).all())
    loss = theta.sum() + support.log_abs_det_jacobian(u).sum()
    (grad,) = torch.autograd.grad(loss, u)
    assert not bool(torch.isnan(grad).any())
    assert bool(torch.isfinite(grad).all())


@pytest.mark.parametrize("support", SUPPORTS, ids=_ids)
def test_inverse_gradients_finite(support: Support, gen: torch.Generator) -> None:
    u = torch.randn(6, support.unconstrained_dim(), generator=gen)
    theta = support.forward(u).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(support.inverse(theta).sum(), theta)
    assert bool(torch.isfinite(grad).all())


def test_inverse_of_exact_identity_has_correct_gradient() -> None:
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    jac = jacobian(Correlation(3).inverse, theta.detach())
    torch.testing.assert_close(jac, torch.eye(3, dtype=torch.float64))


def test_float32_extremes_stay_inside_scalar_supports() -> None:
    u = torch.tensor([[-50.0], [50.0], [-100.0], [100.0]])
    for support in (Positive(), UnitInterval(), Interval(1.0, 1.5), Correlation(2)):
        theta = support.forward(u)
        assert bool(support.check(theta).all()), support
        assert bool(torch.isfinite(support.inverse(theta)).all()), support
