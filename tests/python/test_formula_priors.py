"""Tests of mlnpe.formula.priors: defaults, resolution with brms's precedence, user specifications and tables."""

import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe.errors import SpecError
from mlnpe.formula.distributions import PriorDist
from mlnpe.formula.priors import (
    ParamSlot,
    PriorSpec,
    default_priors,
    prior,
    prior_table,
    priors_from_table,
    resolve_priors,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


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


def test_a_prior_string_is_a_class_b_prior_and_other_inputs_get_clear_errors():
    """As brms's set_prior("normal(0, 1)") sets class b; a number or an unknown field is a SpecError naming it (a
    plain string once recursed over its characters)."""
    from mlnpe.errors import SpecError
    from mlnpe.formula.priors import PriorSpec, as_prior_specs

    assert as_prior_specs("normal(0, 2)") == [PriorSpec("normal(0, 2)", "b")]
    assert as_prior_specs(("normal(0, 2)", {"prior": "normal(0, 1)", "class_": "sd"}))[1].class_ == "sd"
    with pytest.raises(SpecError, match="got float 3.0"):
        as_prior_specs(3.0)
    with pytest.raises(SpecError, match="'foo'"):
        as_prior_specs({"foo": 1})
