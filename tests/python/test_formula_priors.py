"""Tests of mlnpe.formula.priors: densities, sampling, truncation, LKJ, parsing, defaults and resolution."""

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import torch
from scipy.integrate import quad

from mlnpe.errors import SpecError
from mlnpe.formula.priors import (    ParamSlot,
    PriorDist,
    PriorSpec,
    default_priors,
    parse_prior,
    prior,
    prior_table,
    priors_from_table,
    resolve_priors,
)
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


# ----------------------------------------------------------------------------------------------------------
# Defaults
# ----------------------------------------------------------------------------------------------------------

# median 288.7 and R's mad 1.4826 * 40 = 59.3, like lme4::sleepstudy's Reaction
SLEEP_Y = 288.7 + 40.0 * np.array([-2.0, -1.0, 0.0, 1.0, 2.0])


def test_default_priors_gaussian_like_brms():
    d = default_priors("gaussian", "identity", SLEEP_Y, sd_x={"Days": 2.87})
    assert str(d["Intercept"]) == "student_t(3, 288.7, 59.3)" and d["Intercept"].lb is None
    assert str(d["sd"]) == "student_t(3, 0, 59.3)" and d["sd"].lb == 0
    assert str(d["sigma"]) == "student_t(3, 0, 59.3)" and d["sigma"].lb == 0
    assert str(d["cor"]) == "lkj(1)"
    sd_y = np.std(SLEEP_Y, ddof=1)
    assert d["b"].args == (0.0, float(f"{2.5 * sd_y:.3g}"))
    assert d["b_Days"].args == (0.0, float(f"{2.5 * sd_y / 2.87:.3g}"))
    assert set(d) == {"Intercept", "b", "sd", "cor", "sigma", "b_Days"}


def test_default_priors_other_families():
    d = default_priors("bernoulli", "logit", np.array([0, 1, 1, 0, 1]))
    assert str(d["Intercept"]) == "student_t(3, 0, 2.5)" and str(d["sd"]) == "student_t(3, 0, 2.5)"
    assert str(d["b"]) == "normal(0, 2.5)" and "sigma" not in d
    d = default_priors("poisson", "log", np.array([0, 1, 2, 2, 3, 5, 1, 2, 4]))
    assert str(d["Intercept"]) == "student_t(3, 0.7, 2.5)" and str(d["b"]) == "normal(0, 2.5)"
    # log link: zeros become 0.1 before the log
    assert str(default_priors("poisson", "log", np.array([0, 0, 0, 1, 5]))["Intercept"]) == "student_t(3, -2.3, 2.5)"
    d = default_priors("negbinomial", None, np.array([0, 1, 2]))
    assert str(d["shape"]) == "gamma(2, 0.1)" and d["shape"].lb == 0  # mlnpe's default, not brms's
    d = default_priors("student", "identity", SLEEP_Y)
    assert str(d["nu"]) == "gamma(2, 0.1)" and d["nu"].lb == 1 and str(d["sigma"]) == "student_t(3, 0, 59.3)"
    d = default_priors("lognormal", "identity", np.exp([0.0, 1.0, 2.0, 3.0, 4.0]))
    assert str(d["Intercept"]) == "student_t(3, 2, 2.5)"
    assert d["b"].args[1] == pytest.approx(2.5 * np.std([0, 1, 2, 3, 4], ddof=1), rel=1e-2)
    # factor-like responses do not inform the defaults
    assert str(default_priors("gaussian", "identity", np.array([True, False]))["Intercept"]) == "student_t(3, 0, 2.5)"
    with pytest.raises(SpecError, match="supports only its default link 'log'"):
        default_priors("Gamma", "inverse", np.array([1.0, 2.0]))


# ----------------------------------------------------------------------------------------------------------
# Specs, slots and resolution
# ----------------------------------------------------------------------------------------------------------


def _sleep_slots():
    return [
        ParamSlot("Intercept"),
        ParamSlot("b", "Days"),
        ParamSlot("sd", "Intercept", "Subject"),
        ParamSlot("sd", "Days", "Subject"),
        ParamSlot("cor", group="Subject"),
        ParamSlot("sigma"),
    ]


def test_param_slots():
    names = [s.name for s in _sleep_slots()]
    assert names == ["b_Intercept", "b_Days", "sd_Subject__Intercept", "sd_Subject__Days", "cor_Subject", "sigma"]
    assert [s.lb for s in _sleep_slots()] == [None, None, 0.0, 0.0, None, 0.0]
    assert ParamSlot("nu").lb == 1.0 and ParamSlot("shape").lb == 0.0
    with pytest.raises(SpecError, match="parameter class 'sd' needs a coef and a group"):
        ParamSlot("sd", "Days")
    with pytest.raises(SpecError, match="unknown parameter class 'L'"):
        ParamSlot("L")


def test_prior_spec_validation():
    p = prior("normal(0, 5)", coef="Days")
    assert p == PriorSpec("normal(0, 5)", "b", "Days") and str(p) == "prior(normal(0, 5), class = b, coef = Days)"
    with pytest.raises(SpecError, match="prior class 'sigma' takes no `coef`"):
        prior("normal(0, 1)", class_="sigma", coef="x")
    with pytest.raises(SpecError, match="prior class 'b' takes no `group`"):
        prior("normal(0, 1)", group="g")
    with pytest.raises(SpecError, match=r"unknown prior class 'bb'; valid classes are \['Intercept'"):
        prior("normal(0, 1)", class_="bb")
    with pytest.raises(SpecError, match="is flat"):
        prior("")


def _by_name(resolved):
    return {slot.name: (dist, source) for slot, dist, source in resolved}


def test_resolve_defaults_and_b_scaling():
    defaults = default_priors("gaussian", "identity", SLEEP_Y)
    out = _by_name(resolve_priors(_sleep_slots(), [], defaults, {"Days": 2.0}))
    assert all(source == "default" for _, source in out.values())
    assert out["b_Days"][0].args == (0.0, float(f"{defaults['b'].args[1] / 2.0:.3g}"))
    assert out["sd_Subject__Days"][0].is_half and str(out["cor_Subject"][0]) == "lkj(1)"
    with pytest.raises(SpecError, match=r"`sd_x` has no entry for coefficient 'Days'"):
        resolve_priors(_sleep_slots(), [], defaults, {"x": 1.0})
    # defaults with per-coefficient entries take precedence
    d2 = default_priors("gaussian", "identity", SLEEP_Y, sd_x={"Days": 4.0})
    assert _by_name(resolve_priors(_sleep_slots(), [], d2, None))["b_Days"][0] == d2["b_Days"]


def test_resolve_precedence_like_brms():
    defaults = default_priors("gaussian", "identity", SLEEP_Y)
    slots = _sleep_slots()
    user = [prior("normal(0, 5)", "sd"), prior("normal(0, 1)", "sd", coef="Days")]
    out = _by_name(resolve_priors(slots, user, defaults, {"Days": 1.0}))
    assert str(out["sd_Subject__Intercept"][0]) == "normal(0, 5)" and out["sd_Subject__Intercept"][1] == "user"
    assert str(out["sd_Subject__Days"][0]) == "normal(0, 1)"
    assert out["sd_Subject__Days"][0].lb == 0 and out["sd_Subject__Days"][0].is_half
    # class + group beats class + coef
    user.append(prior("normal(0, 3)", "sd", group="Subject"))
    out = _by_name(resolve_priors(slots, user, defaults, {"Days": 1.0}))
    assert str(out["sd_Subject__Intercept"][0]) == "normal(0, 3)" and str(out["sd_Subject__Days"][0]) == "normal(0, 3)"
    # class + coef + group beats everything
    user.append(prior("normal(0, 0.5)", "sd", coef="Days", group="Subject"))
    out = _by_name(resolve_priors(slots, user, defaults, {"Days": 1.0}))
    assert str(out["sd_Subject__Days"][0]) == "normal(0, 0.5)"
    assert str(out["sd_Subject__Intercept"][0]) == "normal(0, 3)"
    assert out["sigma"][1] == "default" and out["b_Days"][1] == "default"
    out = _by_name(resolve_priors(slots, [prior("lkj(2)", "cor"), prior("exponential(1)", "sigma")], defaults, None))
    assert str(out["cor_Subject"][0]) == "lkj(2)" and str(out["sigma"][0]) == "exponential(1)"


@pytest.mark.parametrize(
    ("user", "message"),
    [
        (
            [prior("normal(0, 1)", "sd", group="Item")],
            r"user prior\(normal\(0, 1\), class = sd, group = Item\) matches no parameter of the model; valid "
            r"combinations are: .*\(class='sd', coef='Days', group='Subject'\)",
        ),
        ([prior("normal(0, 1)", "shape")], r"matches no parameter.*\(class='sigma', coef='', group=''\)"),
        ([prior("beta(2, 2)", "b")], r"user prior beta\(2, 2\) for b_Days \(class 'b'\) has support \(0, 1\) but "
                                     r"the parameter is real-valued; use one of normal, student_t, cauchy, uniform"),
        ([prior("lkj(2)", "sd")], r"user prior lkj\(2\) for sd_Subject__Intercept .*only for class 'cor'"),
        ([prior("normal(0, 1)", "cor")], r"user prior normal\(0, 1\) for cor_Subject .*use lkj\(eta\)"),
        (
            [prior("normal(-50, 1)", "sigma")],
            r"conflicts with the parameter's lower bound 0: prior normal\(-50, 1\) truncated to \[0, inf\] keeps",
        ),
        ([prior("normal(0, 1)", "b"), prior("normal(0, 2)", "b")], r"two user priors target class='b', coef=''"),
    ],
)
def test_resolve_errors(user, message):
    defaults = default_priors("gaussian", "identity", SLEEP_Y)
    with pytest.raises(SpecError, match=message):
        resolve_priors(_sleep_slots(), user, defaults, {"Days": 1.0})


def test_nu_prior_gets_lower_bound_one():
    defaults = default_priors("student", "identity", SLEEP_Y)
    slots = [ParamSlot("Intercept"), ParamSlot("sigma"), ParamSlot("nu")]
    out = _by_name(resolve_priors(slots, [prior("gamma(2, 0.5)", "nu")], defaults, None))
    assert out["nu"][0] == PriorDist("gamma", (2, 0.5), lb=1.0)
    assert (out["nu"][0].sample((100,), _gen()) >= 1).all()
    with pytest.raises(SpecError, match="lower bound 1"):
        resolve_priors(slots, [prior("beta(2, 2)", "nu")], defaults, None)


def test_prior_table_and_priors_from_table():
    defaults = default_priors("gaussian", "identity", SLEEP_Y)
    resolved = resolve_priors(_sleep_slots(), [prior("normal(0, 3)", "sd", group="Subject")], defaults, {"Days": 1.0})
    table = prior_table(resolved)
    assert list(table.columns) == ["prior", "class", "coef", "group", "lb", "ub", "source"]
    assert table.loc[0].to_dict() == {
        "prior": "student_t(3, 288.7, 59.3)", "class": "Intercept", "coef": "", "group": "",
        "lb": "", "ub": "", "source": "default",
    }
    assert table.loc[3].to_dict() == {
        "prior": "normal(0, 3)", "class": "sd", "coef": "Days", "group": "Subject",
        "lb": "0", "ub": "", "source": "user",
    }
    # a brmsprior-shaped table round-trips
    brms_like = pd.DataFrame(
        {
            "prior": ["normal(0, 3)", "lkj(2)", "normal(0, 1)"],
            "class": ["sd", "cor", "b"],
            "coef": ["", "", "Days"],
            "group": ["Subject", "Subject", ""],
            "resp": ["", "", ""],
            "dpar": ["", "", ""],
            "nlpar": ["", "", ""],
            "lb": [np.nan, np.nan, "-2"],
            "ub": ["", None, "2"],
            "source": ["user"] * 3,
        }
    )
    specs = priors_from_table(brms_like)
    assert specs == [
        PriorSpec("normal(0, 3)", "sd", "", "Subject"),
        PriorSpec("lkj(2)", "cor", "", "Subject"),
        PriorSpec("normal(0, 1)", "b", "Days", "", -2.0, 2.0),
    ]
    assert priors_from_table(brms_like.to_dict("list")) == specs
    assert priors_from_table(brms_like.to_dict("records")) == specs
    with pytest.raises(SpecError, match=r"prior table row 1: prior '' is flat"):
        priors_from_table([{"prior": "normal(0, 1)", "class": "b"}, {"prior": "", "class": "b"}])
    with pytest.raises(SpecError, match=r"prior table row 0: column 'dpar' = 'sigma' is not supported"):
        priors_from_table([{"prior": "normal(0, 1)", "class": "b", "dpar": "sigma"}])
    with pytest.raises(SpecError, match="must have columns 'prior' and 'class'"):
        priors_from_table([{"prior": "normal(0, 1)"}])
