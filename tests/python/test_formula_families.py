"""Tests of mlnpe.formula.families: exact log-likelihoods, simulation moments, randomness, response checks."""

import math

import numpy as np
import pytest
import scipy.stats as st
import torch

from mlnpe.errors import DataError, SpecError
from mlnpe.formula.families import (    FAMILIES,
    GammaFamily,
    Student,
    get_family,
    stan_likelihood,
    standard_gamma,
)
F64 = torch.float64


def _aux(values, S, B):
    return torch.tensor(values, dtype=F64).expand(S, B, len(values)).contiguous()


# ----------------------------------------------------------------------------------------------------------
# log_lik against scipy.stats
# ----------------------------------------------------------------------------------------------------------


def _scipy_logp(name, y, mu, aux, trials):
    if name == "gaussian":
        return st.norm.logpdf(y, mu, aux[0])
    if name == "student":
        return st.t.logpdf(y, aux[1], mu, aux[0])
    if name == "lognormal":
        return st.lognorm.logpdf(y, s=aux[0], scale=np.exp(mu))
    if name == "Gamma":
        return st.gamma.logpdf(y, a=aux[0], scale=np.exp(mu) / aux[0])
    if name == "bernoulli":
        return st.bernoulli.logpmf(y, 1 / (1 + np.exp(-mu)))
    if name == "binomial":
        return st.binom.logpmf(y, trials, 1 / (1 + np.exp(-mu)))
    if name == "poisson":
        return st.poisson.logpmf(y, np.exp(mu))
    phi = aux[0]  # negbinomial
    m = np.exp(mu)
    return st.nbinom.logpmf(y, phi, phi / (phi + m))


AUX_VALUES = {
    "gaussian": [[1.5], [0.7]],
    "student": [[1.5, 4.0], [0.7, 12.0]],
    "lognormal": [[0.8], [0.3]],
    "Gamma": [[2.5], [0.6]],
    "negbinomial": [[3.0], [0.5]],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_log_lik_matches_scipy(name):
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(1)
    S, B, J, N = 3, 2, 2, 5
    eta = 0.8 * torch.randn(S, B, J, N, generator=g, dtype=F64)
    aux_rows = AUX_VALUES.get(name, [[], []])
    aux = torch.tensor(aux_rows, dtype=F64)[None].expand(S, B, len(aux_rows[0])).contiguous()
    trials = torch.randint(1, 15, (B, J, N), generator=g).to(F64) if family.needs_trials else None
    y = family.simulate(eta[0], aux[0], trials, g)
    out = family.log_lik(y, eta, aux, trials)
    assert out.shape == (S, B, J, N)
    for s in range(S):
        for b in range(B):
            ref = _scipy_logp(
                name,
                y[b].numpy(),
                eta[s, b].numpy(),
                aux_rows[b],
                None if trials is None else trials[b].numpy(),
            )
            np.testing.assert_allclose(out[s, b].numpy(), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_log_lik_without_draw_dim_and_gradients(name):
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(2)
    eta = torch.randn(2, 3, 4, generator=g, dtype=F64, requires_grad=True)
    aux = torch.tensor(AUX_VALUES.get(name, [[], []]), dtype=F64, requires_grad=True)
    trials = torch.full((2, 3, 4), 6.0, dtype=F64) if family.needs_trials else None
    y = family.simulate(eta.detach(), aux.detach(), trials, g)
    out = family.log_lik(y, eta, aux, trials)
    assert out.shape == (2, 3, 4) and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(eta.grad).all() and (eta.grad != 0).any()
    if aux.numel():
        assert torch.isfinite(aux.grad).all() and (aux.grad != 0).all()


# ----------------------------------------------------------------------------------------------------------
# Simulation
# ----------------------------------------------------------------------------------------------------------


def _theory(name, mu_eta, aux, n):
    """Mean and variance of y given eta (scalar) and aux."""
    if name == "gaussian":
        return mu_eta, aux[0] ** 2
    if name == "student":
        s, nu = aux
        return mu_eta, s**2 * nu / (nu - 2)
    if name == "lognormal":
        s = aux[0]
        return math.exp(mu_eta + s**2 / 2), (math.exp(s**2) - 1) * math.exp(2 * mu_eta + s**2)
    if name == "Gamma":
        m = math.exp(mu_eta)
        return m, m**2 / aux[0]
    if name == "bernoulli":
        p = 1 / (1 + math.exp(-mu_eta))
        return p, p * (1 - p)
    if name == "binomial":
        p = 1 / (1 + math.exp(-mu_eta))
        return n * p, n * p * (1 - p)
    if name == "poisson":
        m = math.exp(mu_eta)
        return m, m
    m = math.exp(mu_eta)  # negbinomial
    return m, m + m**2 / aux[0]


SIM_AUX = {
    "gaussian": [[2.0], [0.5]],
    "student": [[1.0, 10.0], [2.0, 6.0]],
    "lognormal": [[0.4], [0.2]],
    "Gamma": [[3.0], [0.8]],
    "negbinomial": [[2.0], [10.0]],
}


@pytest.mark.parametrize("name", list(FAMILIES))
def test_simulated_moments_match_theory(name):
    family = FAMILIES[name]
    g = torch.Generator().manual_seed(3)
    B, J, N = 2, 2, 20000
    eta_values = [0.3, 1.2]
    eta = torch.tensor(eta_values, dtype=F64)[:, None, None].expand(B, J, N).contiguous()
    aux_rows = SIM_AUX.get(name, [[], []])
    aux = torch.tensor(aux_rows, dtype=F64).reshape(B, -1)
    trials = torch.full((B, J, N), 12.0, dtype=F64) if family.needs_trials else None
    y = family.simulate(eta, aux, trials, g)
    assert y.shape == (B, J, N) and y.dtype == F64
    for b in range(B):
        mean, var = _theory(name, eta_values[b], aux_rows[b], 12)
        draws = y[b].reshape(-1).numpy()
        n = draws.size
        assert abs(draws.mean() - mean) < 5 * math.sqrt(var / n), (b, draws.mean(), mean)
        assert draws.var(ddof=1) == pytest.approx(var, rel=0.06), (b, draws.var(), var)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_simulation_uses_only_the_generator(name):
    family = FAMILIES[name]
    eta = torch.linspace(-1, 1, 24).reshape(2, 3, 4)
    aux = torch.tensor(AUX_VALUES.get(name, [[], []]), dtype=torch.float32)
    trials = torch.full((2, 3, 4), 5.0) if family.needs_trials else None
    state = torch.get_rng_state()
    y1 = family.simulate(eta, aux, trials, torch.Generator().manual_seed(11))
    y2 = family.simulate(eta, aux, trials, torch.Generator().manual_seed(11))
    y3 = family.simulate(eta, aux, trials, torch.Generator().manual_seed(12))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(y1, y2)
    assert y1.dtype == torch.float32 and y1.shape == (2, 3, 4)
    if name != "bernoulli":  # 24 Bernoulli draws may coincide
        assert not torch.equal(y1, y3)


def test_standard_gamma_is_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    a = standard_gamma(torch.full((1000,), 2.0, dtype=F64), torch.Generator().manual_seed(5))
    b = standard_gamma(torch.full((1000,), 2.0, dtype=F64), torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)
    assert a.mean().item() == pytest.approx(2.0, abs=0.15)


def test_simulation_guards_against_overflow_and_underflow():
    g = torch.Generator().manual_seed(4)
    big = torch.full((1, 2, 50), 200.0)
    assert torch.isfinite(FAMILIES["poisson"].simulate(big, None, None, g)).all()
    assert torch.isfinite(FAMILIES["negbinomial"].simulate(big, torch.tensor([[1.0]]), None, g)).all()
    assert torch.isfinite(FAMILIES["lognormal"].simulate(big, torch.tensor([[1.0]]), None, g)).all()
    # tiny shapes (gamma(0.01, 0.01) priors) must still give positive responses
    y = GammaFamily().simulate(torch.zeros(1, 2, 500), torch.tensor([[1e-3]]), None, g)
    assert (y > 0).all() and torch.isfinite(y).all()
    y = FAMILIES["lognormal"].simulate(torch.full((1, 2, 50), -500.0), torch.tensor([[1.0]]), None, g)
    assert (y > 0).all()


def test_aux_and_trials_errors():
    g = torch.Generator().manual_seed(0)
    eta = torch.zeros(2, 3, 4)
    with pytest.raises(SpecError, match=r"family 'student': `aux` must have shape \(2, 2\)"):
        Student().simulate(eta, torch.ones(2, 1), None, g)
    with pytest.raises(SpecError, match=r"family 'gaussian' needs `aux` with columns \['sigma'\]"):
        FAMILIES["gaussian"].simulate(eta, None, None, g)
    with pytest.raises(DataError, match="family 'binomial' needs `trials`"):
        FAMILIES["binomial"].simulate(eta, None, None, g)


# ----------------------------------------------------------------------------------------------------------
# Metadata and lookup
# ----------------------------------------------------------------------------------------------------------


def test_family_metadata():
    assert FAMILIES["gaussian"].aux == (("sigma", "positive"),)
    assert Student().aux_names == ("sigma", "nu")
    assert FAMILIES["negbinomial"].aux_names == ("shape",)
    assert GammaFamily().aux_names == ("shape",) and GammaFamily().link == "log"
    assert FAMILIES["lognormal"].aux_names == ("sigma",)
    for name in ("bernoulli", "binomial", "poisson"):
        assert FAMILIES[name].aux == ()
    assert [FAMILIES[n].link for n in ("bernoulli", "binomial", "poisson")] == ["logit", "logit", "log"]
    assert str(FAMILIES["gaussian"]) == "Family: gaussian\n  Link function: identity"
    np.testing.assert_allclose(FAMILIES["poisson"].link_numpy(np.array([0, 1, np.e])), [math.log(0.1), 0, 1])
    np.testing.assert_allclose(FAMILIES["lognormal"].link_numpy(np.array([1, np.e])), [0, 1])
    eta = torch.tensor([-1.0, 0.0, 2.0])
    assert torch.allclose(FAMILIES["bernoulli"].inverse_link(eta), torch.sigmoid(eta))
    assert torch.allclose(FAMILIES["poisson"].inverse_link(eta), eta.exp())
    assert torch.equal(FAMILIES["gaussian"].inverse_link(eta), eta)


def test_get_family():
    assert get_family("GAUSSIAN") is FAMILIES["gaussian"]
    assert get_family("gamma") is FAMILIES["Gamma"] and get_family("Gamma") is FAMILIES["Gamma"]
    assert get_family({"family": "poisson", "link": "log"}) is FAMILIES["poisson"]
    assert get_family({"family": "student"}) is FAMILIES["student"]
    assert get_family(Student()) == Student()
    with pytest.raises(SpecError, match=r"unknown family 'weibull'; supported families are \['gaussian'"):
        get_family("weibull")
    with pytest.raises(SpecError, match="family 'bernoulli' supports only its default link 'logit'.*got link 'probit'"):
        get_family({"family": "bernoulli", "link": "probit"})
    with pytest.raises(SpecError, match="family 'Gamma' supports only its default link 'log'"):
        get_family({"family": "Gamma", "link": "inverse"})
    with pytest.raises(SpecError, match="family dict must have key 'family'"):
        get_family({"family": "poisson", "links": "log"})


def test_stan_likelihood_templates():
    expected = {
        "gaussian": "Y ~ normal(mu, sigma);",
        "bernoulli": "Y ~ bernoulli_logit(mu);",
        "binomial": "Y ~ binomial_logit(trials, mu);",
        "poisson": "Y ~ poisson_log(mu);",
        "negbinomial": "Y ~ neg_binomial_2_log(mu, shape);",
        "lognormal": "Y ~ lognormal(mu, sigma);",
        "Gamma": "Y ~ gamma(shape, shape ./ exp(mu));",
        "student": "Y ~ student_t(nu, mu, sigma);",
    }
    assert {name: stan_likelihood(name) for name in expected} == expected


# ----------------------------------------------------------------------------------------------------------
# Response checks
# ----------------------------------------------------------------------------------------------------------


def test_valid_responses_pass():
    FAMILIES["gaussian"].check_response(np.array([-1.5, 0.0, 3.2]))
    FAMILIES["bernoulli"].check_response(np.array([True, False, True]))
    FAMILIES["bernoulli"].check_response([0, 1, 1.0])
    FAMILIES["poisson"].check_response(np.array([0, 3, 7]))
    FAMILIES["negbinomial"].check_response(np.array([[0.0, 2.0], [5.0, 1.0]]))
    FAMILIES["binomial"].check_response(np.array([0, 3, 5]), trials=np.array([2, 3, 9]))
    FAMILIES["lognormal"].check_response(np.array([0.1, 2.0]))
    FAMILIES["Gamma"].check_response(np.array([0.1, 2.0]))


@pytest.mark.parametrize(
    ("name", "y", "trials", "message"),
    [
        (
            "bernoulli",
            [0, 1, 2, 1, 3],
            None,
            r"family 'bernoulli': argument 'y' has 2 invalid row\(s\) \(first: 2 at row 2\); bernoulli expects "
            r"0 or 1 \(or booleans\); recode the response to 0/1\.",
        ),
        (
            "poisson",
            [1, -1, 2.5],
            None,
            r"family 'poisson': argument 'y' has 2 invalid row\(s\) \(first: -1 at row 1\); poisson expects "
            r"non-negative integer counts",
        ),
        (
            "negbinomial",
            [1, 2, 0.5],
            None,
            r"family 'negbinomial': argument 'y' has 1 invalid row\(s\) \(first: 0.5 at row 2\)",
        ),
        (
            "binomial",
            [1, 7, 9],
            [5, 5, 5],
            r"family 'binomial': argument 'y' has 2 row\(s\) with more successes than trials \(first: 7 > "
            r"trials = 5 at row 1\); binomial expects integer successes 0 <= y <= trials",
        ),
        (
            "binomial",
            [1, -2],
            [5, 5],
            r"family 'binomial': argument 'y' has 1 invalid row\(s\) \(first: -2 at row 1\)",
        ),
        (
            "lognormal",
            [1.0, 0.0, -2.0],
            None,
            r"family 'lognormal': argument 'y' has 2 non-positive row\(s\) \(first: 0 at row 1\); lognormal "
            r"expects positive numbers",
        ),
        (
            "Gamma",
            [-1.0],
            None,
            r"family 'Gamma': argument 'y' has 1 non-positive row\(s\) \(first: -1 at row 0\); Gamma expects "
            r"positive numbers",
        ),
        (
            "gaussian",
            [1.0, np.nan, np.inf],
            None,
            r"family 'gaussian': argument 'y' has 2 non-finite row\(s\) \(first: nan at row 1\); gaussian expects "
            r"finite real numbers; remove or impute these rows\.",
        ),
        (
            "poisson",
            [1, np.inf],
            None,
            r"family 'poisson': argument 'y' has 1 non-finite row\(s\) \(first: inf at row 1\)",
        ),
    ],
)
def test_invalid_responses_are_rejected(name, y, trials, message):
    with pytest.raises(DataError, match=message):
        FAMILIES[name].check_response(np.array(y, dtype=float), None if trials is None else np.array(trials))


def test_response_check_argument_name_trials_and_dtype():
    with pytest.raises(DataError, match=r"family 'poisson': argument 'count' has 1 invalid"):
        FAMILIES["poisson"].check_response([-1], argument="count")
    with pytest.raises(DataError, match=r"family 'binomial' needs `trials`.*got None"):
        FAMILIES["binomial"].check_response([1, 2])
    with pytest.raises(DataError, match=r"`trials` has 1 row\(s\) that are not non-negative integers \(first: 2.5"):
        FAMILIES["binomial"].check_response([1, 2], trials=[3, 2.5])
    with pytest.raises(DataError, match=r"`trials` must be numeric with one entry per row of 'y' \(2\)"):
        FAMILIES["binomial"].check_response([1, 2], trials=[3])
    with pytest.raises(DataError, match="`trials` is only used by the binomial family"):
        FAMILIES["poisson"].check_response([1, 2], trials=[3, 3])
    with pytest.raises(DataError, match=r"family 'gaussian': argument 'y' must be numeric, got dtype <U1"):
        FAMILIES["gaussian"].check_response(np.array(["a", "b"]))


@pytest.mark.parametrize("name", ["lognormal", "Gamma"])
def test_positive_families_mask_padding_without_nan_gradients(name):
    family = FAMILIES[name]
    y = torch.tensor([[[1.5, 0.0, -1.0]]], dtype=F64)  # rows 2 and 3 are padding or invalid
    eta = torch.zeros(1, 1, 3, dtype=F64, requires_grad=True)
    aux = torch.tensor([[1.0]], dtype=F64, requires_grad=True)
    lp = family.log_lik(y, eta, aux)
    assert torch.isfinite(lp[..., 0]).all() and torch.isneginf(lp[..., 1:]).all()
    mask = torch.tensor([[[True, False, False]]])
    torch.where(mask, lp, 0.0).sum().backward()
    assert torch.isfinite(eta.grad).all() and torch.isfinite(aux.grad).all()
