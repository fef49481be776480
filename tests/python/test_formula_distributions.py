"""Tests of mlnpe.formula.distributions: densities, sampling, truncation, LKJ and parsing of prior distributions."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy.integrate import quad

from mlnpe.errors import SpecError
from mlnpe.formula.distributions import PriorDist, parse_prior

F64 = torch.float64

SCALAR = [
    ("normal(1, 10)", st.norm(1, 10)),
    ("student_t(3, 0.5, 2.5)", st.t(3, 0.5, 2.5)),
    ("cauchy(0, 5)", st.cauchy(0, 5)),
    ("exponential(1.5)", st.expon(scale=1 / 1.5)),
    ("gamma(2, 0.1)", st.gamma(2, scale=10)),
    ("lognormal(0.3, 0.8)", st.lognorm(s=0.8, scale=math.exp(0.3))),
    ("beta(2, 3)", st.beta(2, 3)),
    ("uniform(-1, 5)", st.uniform(-1, 6)),
    ("inv_gamma(3, 2)", st.invgamma(3, scale=2)),
]
IDS = [text.split("(")[0] for text, _ in SCALAR]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------------------
# Densities and sampling
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ref"), SCALAR, ids=IDS)
def test_log_prob_matches_scipy(text, ref):
    d = parse_prior(text)
    x = ref.ppf(np.linspace(0.005, 0.995, 41))
    np.testing.assert_allclose(d.log_prob(torch.tensor(x, dtype=F64)).numpy(), ref.logpdf(x), rtol=1e-10, atol=1e-10)
    lo, hi = ref.support()
    outside = [v for v in (lo - 1.0, hi + 1.0) if math.isfinite(v)]
    if outside:
        assert torch.isneginf(d.log_prob(torch.tensor(outside, dtype=F64))).all()
    assert d.is_proper and d.log_prob(torch.tensor(x, dtype=torch.float32)).dtype == torch.float32


@pytest.mark.parametrize(("text", "ref"), SCALAR, ids=IDS)
def test_samples_follow_the_distribution(text, ref):
    d = parse_prior(text)
    x = d.sample((20000,), _gen(1), dtype=F64)
    assert x.shape == (20000,) and x.dtype == F64
    assert st.kstest(x.numpy(), ref.cdf).pvalue > 1e-3
    if text.split("(")[0] not in ("cauchy", "student_t"):  # heavy tails: the KS test suffices
        assert abs(x.mean().item() - ref.mean()) < 5 * ref.std() / math.sqrt(20000)
        assert x.std().item() == pytest.approx(ref.std(), rel=0.05)


def test_sampling_is_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    for text in ("student_t(3, 0, 2.5)", "beta(2, 2)", "gamma(2, 1)"):
        d = parse_prior(text)
        assert torch.equal(d.sample((50,), _gen(7)), d.sample((50,), _gen(7)))
        assert not torch.equal(d.sample((50,), _gen(7)), d.sample((50,), _gen(8)))
    lkj = parse_prior("lkj(2)")
    assert torch.equal(lkj.sample_corr(3, (10,), _gen(7)), lkj.sample_corr(3, (10,), _gen(7)))
    truncated = PriorDist("student_t", (3, 1, 2), lb=0.0)
    assert torch.equal(truncated.sample((10,), _gen(7)), truncated.sample((10,), _gen(7)))
    assert torch.equal(torch.get_rng_state(), state)
    assert parse_prior("normal(0, 1)").sample((2, 3), _gen()).shape == (2, 3)


# ----------------------------------------------------------------------------------------------------------
# Truncation
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ref"),
    [("normal(0, 2)", st.halfnorm(scale=2)), ("student_t(3, 0, 2.5)", None), ("cauchy(0, 1)", st.halfcauchy())],
)
def test_half_distributions(text, ref):
    d = parse_prior(text).with_bounds(0.0)
    assert d.is_half and d.log_normalizer == pytest.approx(-math.log(2))
    total, _ = quad(lambda v: math.exp(d.log_prob(torch.tensor([v], dtype=F64)).item()), 0, math.inf)
    assert total == pytest.approx(1.0, abs=1e-7)
    x = torch.tensor([0.1, 1.0, 7.0], dtype=F64)
    base = parse_prior(text).log_prob(x)
    assert torch.allclose(d.log_prob(x), base + math.log(2))
    assert torch.isneginf(d.log_prob(torch.tensor([-0.1], dtype=F64))).all()
    draws = d.sample((20000,), _gen(2), dtype=F64)
    assert (draws >= 0).all()
    if ref is None:
        ref_cdf = lambda v: 2 * st.t.cdf(v, 3, 0, 2.5) - 1  # noqa: E731
    else:
        ref_cdf = ref.cdf
    assert st.kstest(draws.numpy(), ref_cdf).pvalue > 1e-3


@pytest.mark.parametrize(
    ("dist", "ref"),
    [
        (PriorDist("normal", (1, 2), lb=0.5, ub=3), st.truncnorm(-0.25, 1, loc=1, scale=2)),
        (PriorDist("normal", (0, 1), lb=5), st.truncnorm(5, np.inf)),  # far tail
        (PriorDist("normal", (0, 1), ub=-4.5), st.truncnorm(-np.inf, -4.5)),
        (PriorDist("gamma", (2, 0.1), lb=1), None),
        (PriorDist("student_t", (3, 4, 2), lb=0), None),
        (PriorDist("cauchy", (0, 1), lb=-2, ub=10), None),
        (PriorDist("exponential", (2,), lb=0.5, ub=3), None),
        (PriorDist("lognormal", (0, 1), ub=2), None),
        (PriorDist("beta", (2, 5), lb=0.5), None),
        (PriorDist("inv_gamma", (3, 2), lb=0.5, ub=4), None),
        (PriorDist("uniform", (-5, 5), lb=0), st.uniform(0, 5)),
    ],
    ids=lambda v: str(v) if isinstance(v, PriorDist) else "",
)
def test_general_truncation(dist, ref):
    lo, hi = dist.support
    base = parse_prior(str(dist))
    total, _ = quad(
        lambda v: math.exp(dist.log_prob(torch.tensor([v], dtype=F64)).item()), lo, hi, points=None, limit=200
    )
    assert total == pytest.approx(1.0, abs=1e-6)
    x = dist.sample((20000,), _gen(3), dtype=F64)
    assert (x >= lo).all() and (x <= hi).all()
    # the truncated CDF from the untruncated density, by quadrature on a grid of the sample's quantiles
    qs = np.quantile(x.numpy(), [0.1, 0.3, 0.5, 0.7, 0.9])
    for q, p in zip(qs, [0.1, 0.3, 0.5, 0.7, 0.9]):
        mass, _ = quad(lambda v: math.exp(dist.log_prob(torch.tensor([v], dtype=F64)).item()), lo, q, limit=200)
        assert mass == pytest.approx(p, abs=0.015)
    if ref is not None:
        inside = torch.tensor(ref.ppf([0.1, 0.5, 0.9]), dtype=F64)
        np.testing.assert_allclose(dist.log_prob(inside).numpy(), ref.logpdf(inside.numpy()), rtol=1e-8)
        assert x.mean().item() == pytest.approx(ref.mean(), abs=5 * ref.std() / math.sqrt(20000))
    assert torch.isneginf(dist.log_prob(torch.tensor([lo - 0.1, hi + 0.1], dtype=F64))).all()
    assert dist.log_normalizer < 0 or str(dist).startswith("uniform")
    assert base.log_normalizer == 0.0


def test_truncation_checks():
    with pytest.raises(SpecError, match=r"truncated to \[10, inf\] keeps a probability mass of 7.6\de-24"):
        PriorDist("normal", (0, 1), lb=10)
    with pytest.raises(SpecError, match=r"`lb` must be below `ub`, got lb=2, ub=1"):
        PriorDist("normal", (0, 1), lb=2, ub=1)
    with pytest.raises(SpecError, match="lkj priors take no bounds"):
        PriorDist("lkj", (2,), lb=0)
    # bounds at the natural support are no truncation
    assert not PriorDist("gamma", (2, 1), lb=0).is_truncated
    assert not PriorDist("uniform", (0, 5), lb=0).is_truncated


def test_to_stan_follows_brms():
    half_t = PriorDist("student_t", (3, 0, 2.5), lb=0)
    assert half_t.to_stan("sd") == "target += student_t_lpdf(sd | 3, 0, 2.5) - 1 * student_t_lccdf(0 | 3, 0, 2.5);"
    assert half_t.to_stan("sd_1", n=2, target="lprior") == (
        "lprior += student_t_lpdf(sd_1 | 3, 0, 2.5) - 2 * student_t_lccdf(0 | 3, 0, 2.5);"
    )
    assert parse_prior("normal(0, 10)").to_stan("b") == "target += normal_lpdf(b | 0, 10);"
    assert PriorDist("gamma", (0.01, 0.01), lb=0).to_stan("shape") == "target += gamma_lpdf(shape | 0.01, 0.01);"
    assert PriorDist("gamma", (2, 0.1), lb=1).to_stan("nu") == (
        "target += gamma_lpdf(nu | 2, 0.1) - 1 * gamma_lccdf(1 | 2, 0.1);"
    )
    assert PriorDist("normal", (0, 1), ub=2).to_stan("b") == (
        "target += normal_lpdf(b | 0, 1) - 1 * normal_lcdf(2 | 0, 1);"
    )
    assert PriorDist("normal", (0, 1), lb=-1, ub=2).to_stan("b") == (
        "target += normal_lpdf(b | 0, 1) - 1 * log_diff_exp(normal_lcdf(2 | 0, 1), normal_lcdf(-1 | 0, 1));"
    )
    assert parse_prior("lkj(2)").to_stan("L_1") == "target += lkj_corr_cholesky_lpdf(L_1 | 2);"


# ----------------------------------------------------------------------------------------------------------
# LKJ
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0, 5.0])
def test_lkj_k2_is_beta_and_integrates_to_one(eta):
    d = PriorDist("lkj", (eta,))
    total, _ = quad(lambda r: math.exp(d.log_prob_corr(torch.tensor([[r]], dtype=F64), 2).item()), -1, 1)
    assert total == pytest.approx(1.0, abs=1e-6)
    r = torch.linspace(-0.95, 0.95, 21, dtype=F64)[:, None]
    ref = st.beta.logpdf((r[:, 0].numpy() + 1) / 2, eta, eta) - math.log(2)
    np.testing.assert_allclose(d.log_prob_corr(r, 2).numpy(), ref, rtol=1e-10)
    draws = d.sample_corr(2, (20000,), _gen(4), dtype=F64)
    assert draws.shape == (20000, 1)
    assert st.kstest((draws[:, 0].numpy() + 1) / 2, st.beta(eta, eta).cdf).pvalue > 1e-3


@pytest.mark.parametrize(("k", "eta"), [(3, 1.0), (3, 2.0), (4, 0.8)])
def test_lkj_marginals_and_positive_definiteness(k, eta):
    d = PriorDist("lkj", (eta,))
    draws = d.sample_corr(k, (4000, 2), _gen(5), dtype=F64)
    assert draws.shape == (4000, 2, k * (k - 1) // 2)
    flat = draws.reshape(-1, draws.shape[-1])
    assert torch.isfinite(d.log_prob_corr(flat, k)).all()
    # every off-diagonal of LKJ(eta) in dimension k is 2 * Beta(eta - 1 + k/2, same) - 1
    a = eta - 1 + k / 2
    for column in range(flat.shape[1]):
        assert st.kstest((flat[:, column].numpy() + 1) / 2, st.beta(a, a).cdf).pvalue > 1e-3


def test_lkj_normalizing_constant_matches_volume():
    d = PriorDist("lkj", (1.0,))
    assert d.lkj_log_normalizer(3) == pytest.approx(-math.log(math.pi**2 / 2))
    # LKJ(1) is uniform: the density is 1 / volume; estimate the volume of 4x4 correlation matrices by Monte Carlo
    u = 2 * torch.rand(200000, 6, generator=_gen(6), dtype=F64) - 1
    finite = torch.isfinite(d.log_prob_corr(u, 4))
    volume = 2**6 * finite.double().mean().item()
    assert math.exp(-d.lkj_log_normalizer(4)) == pytest.approx(volume, rel=0.03)
    # not positive definite -> -inf
    assert torch.isneginf(d.log_prob_corr(torch.tensor([0.9, 0.9, -0.9], dtype=F64), 3))
    with pytest.raises(SpecError, match="`k` must be an integer >= 2"):
        d.sample_corr(1, (3,), _gen())
    with pytest.raises(SpecError, match="needs an lkj prior"):
        parse_prior("normal(0, 1)").sample_corr(3, (3,), _gen())
    with pytest.raises(SpecError, match=r"use `sample_corr\(...\)` instead"):
        d.sample((3,), _gen())


# ----------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------


def test_parse_prior_roundtrips():
    for text in (
        "normal(0, 10)",
        "student_t(3, 0, 2.5)",
        "cauchy(0, 5)",
        "exponential(1)",
        "gamma(2, 0.1)",
        "lognormal(0, 1)",
        "beta(2, 2)",
        "lkj(2)",
        "uniform(0, 5)",
        "inv_gamma(0.001, 0.001)",
    ):
        assert str(parse_prior(text)) == text
    assert parse_prior(" student_t( 3,0 , 2.5 ) ") == PriorDist("student_t", (3.0, 0.0, 2.5))
    assert parse_prior("lkj_corr_cholesky(1)") == PriorDist("lkj", (1.0,))
    assert parse_prior("normal(-1e-3, 2.5E2)").args == (-0.001, 250.0)
    d = PriorDist("gamma", (2, 0.1), lb=1)
    assert PriorDist.from_dict(d.to_dict()) == d


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", r"prior '' is flat \(improper\); mlnpe simulates parameters from the prior, so every prior must be "
             r"proper"),
        ("flat", r"prior 'flat' is flat \(improper\).*such as 'normal\(0, 2.5\)' for b"),
        ("horseshoe(1)", r"unknown prior family 'horseshoe' in 'horseshoe\(1\)'; supported families are normal, "
                         r"student_t, cauchy, exponential, gamma, lognormal, beta, lkj, uniform, inv_gamma"),
        ("normal(0)", r"prior 'normal\(0\)' has 1 argument\(s\) but normal takes 2 \(mu, sigma\); write e.g. "
                      r"normal\(0, 10\)"),
        ("student_t(3, 0)", r"student_t takes 3 \(nu, mu, sigma\)"),
        ("normal(0, -1)", r"prior 'normal\(0, -1\)': argument sigma must be positive, got -1"),
        ("gamma(0, 1)", r"argument alpha must be positive, got 0"),
        ("lkj(0)", r"argument eta must be positive"),
        ("uniform(5, 0)", r"the lower limit must be below the upper limit, got 5 >= 0"),
        ("normal(0, inf)", r"argument sigma must be finite"),
        ("normal(0, a)", r"prior 'normal\(0, a\)': arguments must be numbers"),
        ("normal 0 1", r"cannot parse prior 'normal 0 1'"),
    ],
)
def test_parse_errors(text, message):
    with pytest.raises(SpecError, match=message):
        parse_prior(text)
