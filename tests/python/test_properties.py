"""Property-based tests (hypothesis): no input a user may give ends in a silent failure or a foreign crash.

Whatever data, formula, prior or configuration a user passes, mlnpe either returns finite draws or raises an
`mlnpe.errors.MlnpeError` (never a TypeError, KeyError, IndexError, torch's RuntimeError, LinAlgError,
RecursionError ...); a column with NaN, inf, a stray string or a response outside the family's support is an error,
never dropped or merged silently; and group labels round-trip: the fit's levels are the data's labels, one level per
distinct label.

One small model per family is trained once per module (a few dozen steps, tiny networks); hypothesis varies the data
given to `fit`. Config constructors and prior parsing need no training. Examples are derandomized (a fixed seed).
"""

import dataclasses
import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from mlnpe import FlowConfig, NetworkConfig, ShiftConfig, StatisticsConfig, SufficientConfig, SummaryConfig, TrainConfig
from mlnpe.core.draws import PosteriorDraws
from mlnpe.errors import ConfigError, DataError, MlnpeError, NumericalError, SpecError
from mlnpe.formula import FormulaNPE, parse_formula
from mlnpe.formula.distributions import PRIOR_FAMILIES, parse_prior
from mlnpe.formula.families import FAMILIES
from mlnpe.formula.priors import PRIOR_CLASSES, PriorSpec, as_prior_specs, prior, priors_from_table
from mlnpe.inference.refine import RefineConfig

NET = {"summary": {"hidden": 16, "row_hidden": 8, "attention": 2}, "global_flow": {"transforms": 1, "hidden": (16,)},
       "local_flow": {"transforms": 1, "hidden": (16,)}}
TRAIN = TrainConfig(steps=30, batch_size=8, progress=False, check_every=0)
GROUPS, ROWS = (2, 10), (1, 8)

# formula and family per model; the response column is always "y", a covariate "x", binomial trials "n"
MODELS = {
    "gaussian": "y ~ x + (1 | g)",
    "bernoulli": "y ~ x + (1 | g)",
    "poisson": "y ~ 1 + (1 + x | g)",
    "binomial": "y | trials(n) ~ x + (1 | g)",
}


def examples(n):
    """Settings of a property: n examples, no deadline, a fixed seed (derandomized, so no example database)."""
    return settings(max_examples=n, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


def _seed_frame(family, seed=0, groups=5, rows=4):
    rng = np.random.default_rng(seed)
    g = np.repeat([f"s{k}" for k in range(groups)], rows)
    x = rng.normal(size=len(g))
    y = {"gaussian": rng.normal(size=len(g)), "bernoulli": rng.integers(0, 2, len(g)),
         "poisson": rng.poisson(2.0, len(g)), "binomial": rng.binomial(6, 0.4, len(g))}[family]
    return pd.DataFrame({"y": y, "x": x, "g": g, "n": 6})


@pytest.fixture(scope="module")
def models():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for family, formula in MODELS.items():
            model = FormulaNPE(formula, _seed_frame(family), family, network=NET, groups=GROUPS, rows=ROWS)
            model.train(TRAIN)
            out[family] = model
    return out


# ---- strategies ---------------------------------------------------------------------------------------------

# group labels: spaces (also non-breaking), dots, unicode, the empty string
_TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ09 ._-é漢ß\u00a0")), max_size=6)


@st.composite
def group_labels(draw, n_groups):
    """(kind, n_groups distinct labels) of one kind (a pandas Categorical with an unused category for "category"), or
    a mix of ints and strings."""
    kind = draw(st.sampled_from(["int", "str", "float", "mixed", "category", "bool"]))
    if kind == "bool" and n_groups <= 2:
        values = [False, True][:n_groups]
    elif kind in ("int", "bool"):
        kind = "int"
        values = draw(st.lists(st.integers(-10**12, 10**12), min_size=n_groups, max_size=n_groups, unique=True))
    elif kind in ("str", "category"):
        values = draw(st.lists(_TEXT, min_size=n_groups, max_size=n_groups, unique=True))
    elif kind == "float":
        values = draw(st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n_groups, max_size=n_groups,
                               unique=True))
    else:
        values = draw(st.lists(st.one_of(st.integers(0, 99), _TEXT), min_size=n_groups, max_size=n_groups,
                               unique_by=repr))
    return kind, values


_RESPONSE = {
    "gaussian": st.floats(-50, 50),
    "bernoulli": st.integers(0, 1),
    "poisson": st.integers(0, 30),
    "binomial": st.integers(0, 6),
}
# values outside each family's support (or not numbers at all)
_BAD_RESPONSE = {
    "gaussian": st.sampled_from([math.nan, math.inf, -math.inf, "7"]),
    "bernoulli": st.sampled_from([2, -1, 0.5, math.nan, "1"]),
    "poisson": st.sampled_from([-1, 0.5, math.inf, math.nan, "3"]),
    "binomial": st.sampled_from([-1, 7, 0.5, math.nan, "2"]),
}
_BAD_COVARIATE = st.sampled_from([math.nan, math.inf, -math.inf, "oops", None])
_EXTREME = st.sampled_from([1e15 * 2, -1e300, 1e12, 1e-300, 5e14])


@st.composite
def datasets(draw, family):
    """(data frame, kind of group labels, the labels, what was corrupted: None, "response" (a value outside the
    family's support or a string), "covariate" (NaN, inf, None or a string) or "extreme" (a huge or tiny value))."""
    n_groups = draw(st.integers(1, 10))
    sizes = draw(st.lists(st.integers(1, 6), min_size=n_groups, max_size=n_groups))
    kind, labels = draw(group_labels(n_groups))
    rows = sum(sizes)
    g = [label for label, size in zip(labels, sizes) for _ in range(size)]
    order = draw(st.permutations(range(rows)))  # groups need not be contiguous
    x = draw(st.lists(st.floats(-3, 3), min_size=rows, max_size=rows))
    y = draw(st.lists(_RESPONSE[family], min_size=rows, max_size=rows))
    frame = {"y": list(y), "x": list(x), "g": g, "n": [6] * rows}
    corrupt = draw(st.sampled_from([None, None, "response", "covariate", "extreme"]))
    if corrupt is not None:
        row = draw(st.integers(0, rows - 1))
        if corrupt == "response":
            frame["y"][row] = draw(_BAD_RESPONSE[family])
        elif corrupt == "covariate":
            frame["x"][row] = draw(_BAD_COVARIATE)
        else:
            frame[draw(st.sampled_from(["x", "y"]))][row] = draw(_EXTREME)
    df = pd.DataFrame({k: [v[i] for i in order] for k, v in frame.items()})
    if kind == "category":  # unused categories are dropped, as brms drops unused levels
        df["g"] = pd.Categorical(df["g"], categories=[*labels, "".join(labels) + "-unused"])
    return df, kind, labels, corrupt


def _r_print(label):
    """What the fit should call a group: the label itself, as R prints it."""
    if isinstance(label, str):
        return label
    if isinstance(label, (bool, np.bool_)):
        return "TRUE" if label else "FALSE"
    return str(int(label)) if float(label).is_integer() else format(float(label), ".15g")


def _check_fit(fit, df, kind, labels):
    draws = fit.draws
    assert np.isfinite(draws.to_numpy()).all(), "non-finite draws"
    assert np.isfinite(fit.raw.global_draws).all() and np.isfinite(fit.raw.local_draws).all()
    assert draws.columns.is_unique
    levels = list(fit.raw.levels)
    # one level per distinct label, never merged; each row's group is the level of its own label
    assert len(levels) == len(set(labels)) == fit.raw.local_draws.shape[1]
    assert sorted(levels) == sorted(_r_print(v) for v in labels)
    row_levels = [levels[code] for code in fit.design.group]
    assert row_levels == [_r_print(v) for v in df["g"]]
    if kind == "float":
        assert all(float(level) == pytest.approx(v, rel=1e-14) for level, v in zip(row_levels, df["g"]))


@pytest.mark.parametrize("family", list(MODELS))
def test_fit_gives_finite_draws_or_an_mlnpe_error(models, family):
    model = models[family]

    @examples(25)
    @given(data=datasets(family), extrapolate=st.booleans(), psis=st.booleans())
    def check(data, extrapolate, psis):
        df, kind, labels, corrupt = data
        note(repr(df))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit = model.fit(df, n_draws=20, seed=0, psis=psis, refine=False, allow_extrapolation=extrapolate)
        except MlnpeError as error:
            note(f"{type(error).__name__}: {error}")
            return
        assert corrupt in (None, "extreme"), f"corrupt {corrupt} data gave draws silently"
        _check_fit(fit, df, kind, labels)

    check()


# ---- arguments of fit ---------------------------------------------------------------------------------------

# values of the wrong type, out of range, non-finite, NumPy scalars and containers: what a user (or R) may pass
ODD = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4), st.lists(st.integers(-2, 70), max_size=3), st.tuples(st.integers(0, 9)),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2), st.binary(max_size=2),
    st.sampled_from([np.int64(3), np.float32(0.5), np.bool_(True), np.float64(math.nan), np.uint8(200)]),
)


@examples(40)
@given(n_draws=st.one_of(st.integers(1, 40), ODD), seed=st.one_of(st.integers(0, 2**63 - 1), ODD),
       psis=st.one_of(st.booleans(), ODD), extrapolate=st.one_of(st.booleans(), ODD),
       refine=st.one_of(st.just(False), ODD.filter(lambda v: v is not True and v != "auto")))
def test_fit_arguments_give_draws_or_an_mlnpe_error(models, n_draws, seed, psis, extrapolate, refine):
    """Any value of fit's arguments gives finite draws or an MlnpeError (refine=True/"auto" run HMC: below)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = models["gaussian"].fit(_seed_frame("gaussian", 1), n_draws=n_draws, seed=seed, psis=psis,
                                         allow_extrapolation=extrapolate, refine=refine)
    except MlnpeError:
        return
    assert np.isfinite(fit.draws.to_numpy()).all() and len(fit.draws) == n_draws


REFINE_FIELDS = st.fixed_dictionaries({}, optional={
    "chains": st.one_of(st.integers(2, 4), ODD), "warmup": st.one_of(st.integers(20, 30), ODD),
    "target_accept": st.one_of(st.floats(0.5, 0.99), ODD), "trajectory": st.one_of(st.floats(0.1, 2.0), ODD),
    "max_leapfrog": st.one_of(st.integers(1, 3), ODD), "pool": st.one_of(st.integers(4, 8), ODD),
    "seed": st.one_of(st.integers(0, 99), ODD),
})


@examples(6)
@given(fields_=REFINE_FIELDS)
def test_refined_fits_give_draws_or_an_mlnpe_error(models, fields_):
    """A refinement (HMC; small chains here) with any settings gives finite draws or an MlnpeError."""
    small = {"chains": 2, "warmup": 20, "max_leapfrog": 2, "pool": 4}
    try:
        config = RefineConfig(**{**small, **fields_})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = models["gaussian"].fit(_seed_frame("gaussian", 2), n_draws=8, seed=0, refine=True,
                                         refine_config=config)
    except MlnpeError:
        return
    assert np.isfinite(fit.draws.to_numpy()).all() and fit.refinement is not None


# ---- configs (no training) ----------------------------------------------------------------------------------

CONFIGS = [TrainConfig, RefineConfig, NetworkConfig, SummaryConfig, SufficientConfig, FlowConfig, StatisticsConfig,
           ShiftConfig]


def _as_json_dict(config):
    return config.to_dict() if hasattr(config, "to_dict") else dataclasses.asdict(config)


def _rebuilt(cls, d):
    return cls.from_dict(d) if hasattr(cls, "from_dict") else cls(**d)


@examples(300)
@given(cls=st.sampled_from(CONFIGS), data=st.data())
def test_configs_are_built_or_raise_a_config_error_and_round_trip_through_json(cls, data):
    names = [f.name for f in dataclasses.fields(cls)]
    changes = data.draw(st.dictionaries(st.sampled_from(names), ODD, max_size=3))
    base = {"family": "gaussian"} if cls is SufficientConfig else {}
    try:
        config = cls(**{**base, **changes})
    except ConfigError:
        return
    text = json.dumps(_as_json_dict(config), allow_nan=False)  # plain JSON: no NumPy scalars, no NaN
    assert _rebuilt(cls, json.loads(text)) == config


NESTED = st.recursive(ODD, lambda inner: st.dictionaries(
    st.sampled_from(["summary", "global_flow", "local_flow", "statistics", "shift", "sufficient", "hidden", "bins",
                     "transforms", "family", "floor", "local_kind", "log_inputs", "steps", "seed", "bogus", "1"]),
    inner, max_size=3), max_leaves=6)


@examples(300)
@given(cls=st.sampled_from([TrainConfig, NetworkConfig, SummaryConfig, FlowConfig, ShiftConfig]), d=NESTED)
def test_configs_from_any_dict_are_built_or_raise_a_config_error(cls, d):
    try:
        config = cls.from_dict(d)
    except ConfigError:
        return
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@examples(100)
@given(changes=NESTED)
def test_network_configs_merge_any_changes_or_raise_a_config_error(changes):
    try:
        config = NetworkConfig().merged(changes)
    except ConfigError:
        return
    assert isinstance(config, NetworkConfig)


# ---- priors (no training) -----------------------------------------------------------------------------------

NUMBER = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**6, 10**6),
                   st.sampled_from([0.0, 1e-300, 1e300, 3.4e38, 1e39, -1e39, 5e-324]))
PLAUSIBLE = st.one_of(st.floats(0.01, 10), st.integers(1, 5), NUMBER)


@st.composite
def prior_texts(draw):
    """Prior strings: mostly calls of known families with the right number of arguments, some with other names or
    counts, some free text."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(alphabet=st.sampled_from(list("normal_tgmucyx(), .-e0123456789")), max_size=20))
    if kind == 1:
        family = draw(st.sampled_from(["flat", "Normal", "lkj_corr_cholesky", "weibull", ""]))
        args = draw(st.lists(NUMBER, max_size=4))
    else:
        family = draw(st.sampled_from(list(PRIOR_FAMILIES)))
        args = draw(st.lists(PLAUSIBLE, min_size=len(PRIOR_FAMILIES[family]), max_size=len(PRIOR_FAMILIES[family])))
        if family == "uniform":
            args = sorted(args, key=lambda a: a if a == a else 0)
    return f"{family}({', '.join(repr(float(a)) if isinstance(a, float) else str(a) for a in args)})"


def _check_prior_draws(dist):
    gen = torch.Generator().manual_seed(0)
    if dist.family == "lkj":
        r = dist.sample_corr(3, (16,), gen)
        assert torch.isfinite(r).all() and torch.isfinite(dist.log_prob_corr(r, 3)).all()
        return
    x = dist.sample((64,), gen)
    lo, hi = dist.support
    assert torch.isfinite(x).all(), f"{dist} (lb={dist.lb}, ub={dist.ub}) drew non-finite values"
    assert ((x >= lo) & (x <= hi)).all()
    lp, edge = dist.log_prob(x), (x == lo) | (x == hi)  # a float32 draw may round onto a finite end: density 0 there
    assert not torch.isnan(lp).any() and (lp < math.inf).all() and torch.isfinite(lp[~edge]).all()


@examples(300)
@given(text=prior_texts())
def test_prior_strings_parse_to_a_proper_prior_with_finite_draws_or_raise_a_spec_error(text):
    try:
        dist = parse_prior(text)
    except SpecError:
        return
    assert parse_prior(str(dist)) == dist  # prints as it parses
    try:
        dist.check_float32()  # what every parameter's prior must pass (a prior for Stan need not)
    except SpecError:
        return
    _check_prior_draws(dist)


BOUND = st.one_of(st.none(), NUMBER, st.text(alphabet="0123456789.-eabc", max_size=4), ODD)


@examples(300)
@given(text=prior_texts(), class_=st.one_of(st.sampled_from(PRIOR_CLASSES), ODD), coef=st.one_of(st.just(""), ODD),
       group=st.one_of(st.just(""), ODD), lb=BOUND, ub=BOUND)
def test_prior_specs_are_built_or_raise_a_spec_error(text, class_, coef, group, lb, ub):
    try:
        spec = prior(text, class_, coef, group, lb, ub)
        spec.dist.check_float32()
    except SpecError:
        return
    _check_prior_draws(spec.dist)


PRIOR_INPUT = st.recursive(
    st.one_of(prior_texts(), ODD, st.builds(PriorSpec, st.just("normal(0, 1)"))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(["prior", "class_", "class", "coef", "group", "lb", "ub", "resp"]), inner,
                        max_size=4),
        st.builds(pd.DataFrame, st.fixed_dictionaries({"prior": st.lists(prior_texts(), min_size=1, max_size=1)},
                                                      optional={"class": st.just(["b"])})),
    ),
    max_leaves=6,
)


@examples(200)
@given(value=PRIOR_INPUT)
def test_any_prior_argument_gives_prior_specs_or_a_spec_error(value):
    try:
        specs = as_prior_specs(value)
    except SpecError:
        return
    assert all(isinstance(s, PriorSpec) for s in specs)


ROW = st.dictionaries(st.sampled_from(["prior", "class", "coef", "group", "lb", "ub", "resp", "source"]),
                      st.one_of(prior_texts(), st.sampled_from(PRIOR_CLASSES), NUMBER, ODD), max_size=6)


@examples(200)
@given(table=st.one_of(st.lists(ROW, max_size=3), ROW, ODD))
def test_prior_tables_give_prior_specs_or_a_spec_error(table):
    try:
        specs = priors_from_table(table)
    except SpecError:
        return
    assert all(isinstance(s, PriorSpec) for s in specs)


# ---- formulas -----------------------------------------------------------------------------------------------

FORMULA_TOKENS = ["y", "x", "g", "n", " ~ ", " + ", " - ", "1", "0", "(", ")", " | ", " || ", ":", "*", "trials(n)",
                  "log(x)", ".", "^2", "%in%", ",", "y | trials(n)", "(1 | g)", "(1 + x | g)", "(x || g)"]


@st.composite
def formulas(draw):
    """Formulas of lme4's grammar: a response, population-level terms and a group-level term (often valid)."""
    terms = st.lists(st.sampled_from(["1", "0", "x", "z", "f", "x:z", "x*z", "z:x:f"]), min_size=1, max_size=3)
    fixed = " + ".join(draw(terms)) + draw(st.sampled_from(["", " - 1"]))
    bar, group = draw(st.sampled_from(["|", "||"])), draw(st.sampled_from(["g", "x", "g:h"]))
    group = f"({' + '.join(draw(terms))} {bar} {group})"
    response = draw(st.sampled_from(["y", "y | trials(n)", "cbind(y, n)"]))
    return f"{response} ~ {fixed} + {group}" if draw(st.booleans()) else f"{response} ~ {group} + {fixed}"


@examples(300)
@given(parts=st.lists(st.sampled_from(FORMULA_TOKENS), max_size=10), text=st.text(max_size=12), formula=formulas())
def test_formulas_parse_to_terms_that_print_as_they_parse_or_raise_a_spec_error(parts, text, formula):
    for formula in ("".join(parts), text, formula):
        try:
            terms = parse_formula(formula)
        except SpecError:
            continue
        assert parse_formula(terms.formula) == terms


@examples(30)
@given(formula=st.sampled_from(["y ~ x + (1 | g)", "y ~ 1 + (1 + x | g)", "y ~ 0 + x + (x || g)", "y ~ x + (1 | x)",
                                "y ~ g + (1 | g)", "y | trials(n) ~ x + (1 | g)", "x ~ y + (1 | g)"]),
       family=st.one_of(st.sampled_from(list(FAMILIES) + ["Gaussian", "weibull"]), ODD),
       priors=st.one_of(st.none(), st.lists(st.tuples(prior_texts(), st.sampled_from(PRIOR_CLASSES)), max_size=2), ODD),
       data=datasets("poisson"))
def test_models_are_built_and_sample_finite_draws_or_raise_an_mlnpe_error(formula, family, priors, data):
    """Any formula, family, prior and data build a model whose (untrained) draws are finite, or an MlnpeError."""
    df = data[0]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = isinstance(priors, list) and all(isinstance(p, tuple) for p in priors)
            specs = [prior(text, class_) for text, class_ in priors] if pairs else priors
            model = FormulaNPE(formula, df, family, specs, network=NET)
            fit = model.fit(n_draws=10, seed=0, psis=True, refine=False, allow_extrapolation=True)
    except MlnpeError:
        return
    assert np.isfinite(fit.draws.to_numpy()).all()


# ---- regressions: one plain case of each class of failure the properties found --------------------------------


def test_config_parts_are_configs_dicts_or_off():
    """Was: NetworkConfig(summary="abc") failed later with an AttributeError; NetworkConfig(global_flow={}) kept {}."""
    with pytest.raises(ConfigError, match=r"^NetworkConfig `summary` must be a SummaryConfig, a dict of its fields or "
                                          r"None \(off\), got 'abc'\.$"):
        NetworkConfig(summary="abc")
    assert NetworkConfig(global_flow={"transforms": 2}).global_flow == FlowConfig(transforms=2)
    assert SummaryConfig(sufficient={"family": "gaussian"}).sufficient == SufficientConfig("gaussian")
    assert NetworkConfig(statistics=False, shift=None).statistics is None  # False (R's FALSE) is off


@pytest.mark.parametrize("build", [NetworkConfig.from_dict, NetworkConfig().merged, TrainConfig.from_dict])
@pytest.mark.parametrize("value", [True, [1, 2], "abc", 3.5])
def test_configs_from_anything_but_a_dict_are_config_errors(build, value):
    """Was: TypeError or ValueError from dict()."""
    with pytest.raises(ConfigError, match=r"dict of fields, e\.g\. .* got "):
        build(value)


def test_unknown_keys_of_any_type_are_named():
    """Was: TypeError from sorting keys of mixed types."""
    with pytest.raises(ConfigError, match=r"NetworkConfig got unknown keys \[1, 'bogus'\]"):
        NetworkConfig.from_dict({1: 2, "bogus": 3})
    with pytest.raises(ConfigError, match=r"TrainConfig got unknown keys \[1\]"):
        TrainConfig.from_dict({1: 2})


def test_prior_bounds_and_classes_of_other_types_are_spec_errors():
    """Was: ValueError or TypeError from float() of a bound, ValueError from comparing a DataFrame class."""
    with pytest.raises(SpecError, match=r"prior normal\(0, 1\): `lb` must be a number or None, got 'abc'\."):
        prior("normal(0, 1)", lb="abc")
    with pytest.raises(SpecError, match=r"prior table row 0: `ub` must be a number or empty, got \[1, 2\]\."):
        priors_from_table([{"prior": "normal(0, 1)", "class": "b", "ub": [1, 2]}])
    with pytest.raises(SpecError, match="unknown prior class"):
        PriorSpec("normal(0, 1)", class_=pd.DataFrame({"a": [1, 2]}))


def test_a_prior_table_of_scalars_is_one_row():
    """Was: TypeError from list() of a scalar column (R's length-1 vectors arrive as scalars)."""
    assert priors_from_table({"prior": "normal(0, 1)", "class": "sd", "lb": 0}) == [PriorSpec("normal(0, 1)", "sd",
                                                                                              lb=0.0)]
    with pytest.raises(SpecError, match="row 0 must have columns 'prior' and 'class'"):
        priors_from_table({"prior": 0.0})


@pytest.mark.parametrize("text, class_, match", [
    ("gamma(0.01, 0.01)", "shape", r"^user prior gamma\(0.01, 0.01\) for shape \(class 'shape'\) puts mass where "
                                   r"mlnpe's float32 simulations cannot represent it: all but 2e-09 of it lies in "
                                   r"\[0, 1.35e\+03\], which must lie within \+-1e\+30 \(and above 1e-30 for a "
                                   r"positive parameter\)\. Choose a prior on the parameter's scale, e\.g\. "
                                   r"gamma\(2, 0\.1\)\.$"),
    ("inv_gamma(0.001, 0.001)", "sd", r"for sd_g__Intercept \(class 'sd'\) .* lies in \[8.84e-05, inf\]"),
    ("student_t(0.05, 0, 1)", "b", r"for b_x \(class 'b'\) .* lies in \[-1.5e\+153, 1.5e\+153\]"),
    ("lognormal(0, 30)", "sigma", r"for sigma \(class 'sigma'\) .* lies in \[7.17e-79, 1.39e\+78\]"),
    ("lkj(0.25)", "cor", r"^user prior lkj\(0.25\) for cor_g \(class 'cor'\) puts a mass of 0.091 on correlations "
                         r"within 0.0001 of \+-1, which mlnpe's float32 simulations cannot represent; use eta >= 0.5"),
])
def test_priors_beyond_float32_simulations_are_spec_errors_naming_the_parameter(text, class_, match):
    """Was: a SpecError from the simulator ("returned non-finite values"), a NumericalError blaming the data or, for
    lkj(eta < 1), torch's LinAlgError while the model was built. Stan's priors: they still parse."""
    family, response = ("negbinomial", "poisson") if class_ == "shape" else ("gaussian", "gaussian")
    formula = "y ~ x + (1 + x | g)" if class_ == "cor" else "y ~ x + (1 | g)"
    assert str(parse_prior(text)) == text
    with pytest.raises(SpecError, match=match):
        FormulaNPE(formula, _seed_frame(response), family, prior(text, class_), network=NET)


@pytest.mark.parametrize("text, match", [
    ("normal(1, 1e-300)", r"argument sigma must be at least 1e-30 \(mlnpe simulates in float32\), got 1e-300"),
    ("normal(0, 1e39)", r"argument sigma must be finite and at most 1e\+30 in absolute value"),
    ("lkj(1e7)", r"argument eta must be at most 1e\+06 .*, got 10000000"),
])
def test_prior_arguments_beyond_float32_are_spec_errors(text, match):
    """Was: a NaN log density (a scale that is 0 in float32), infinite draws, a NaN lkj normalizing constant."""
    with pytest.raises(SpecError, match=match):
        parse_prior(text)


def test_common_priors_pass_the_float32_check():
    for text in ("normal(0, 10)", "student_t(3, 0, 2.5)", "cauchy(0, 5)", "exponential(1)", "gamma(2, 0.1)",
                 "lognormal(0, 1)", "beta(0.5, 0.5)", "lkj(1)", "lkj(0.5)", "uniform(-1e6, 1e6)", "inv_gamma(2, 1)"):
        parse_prior(text).check_float32()
        parse_prior(text).with_bounds(0.0 if text[:3] in ("nor", "stu", "cau") else None).check_float32()


def test_lkj_below_one_simulates_positive_definite_float32_correlations():
    """lkj(0.5) puts 0.9 % of a partial correlation's mass within 1e-4 of +-1; those draws are kept at 1 - 1e-4, so
    every simulated correlation matrix has a float32 Cholesky factor."""
    draws = parse_prior("lkj(0.5)").sample_corr(3, (20000,), torch.Generator().manual_seed(0))
    omega = torch.eye(3).repeat(20000, 1, 1)
    rows, cols = torch.triu_indices(3, 3, offset=1)
    omega[:, rows, cols] = draws
    omega[:, cols, rows] = draws
    assert torch.linalg.cholesky_ex(omega).info.eq(0).all()
    assert 0.08 < float((draws.abs() > 0.9).float().mean()) < 0.12  # lkj(0.5)'s heavy edges (lkj(1): 0.04)


def test_a_non_finite_training_loss_is_a_numerical_error(monkeypatch):
    """Was: FloatingPointError."""
    model = FormulaNPE(MODELS["gaussian"], _seed_frame("gaussian"), "gaussian", network=NET)
    monkeypatch.setattr(model.npe.estimator, "loss", lambda g, l, batch: torch.full((g.shape[0],), math.nan))
    with pytest.raises(NumericalError, match=r"^the training loss became non-finite; lower `learning_rate`"):
        model.train(TRAIN)


def test_a_draw_with_a_group_level_sd_of_zero_is_impossible_not_nan(models):
    """Was: a NaN exact density (the group-level effects' density 0 / 0 at an sd that underflowed to 0 in float32), so
    that fit() failed with a DataError about `log_ratios`, an argument the user never gave."""
    model, data = models["gaussian"], _seed_frame("gaussian", 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raw = model.fit(data, n_draws=20, seed=0, refine=False).raw
    g = raw.global_draws.copy()
    g[:5, model.npe.global_names.index("sd_g__Intercept")] = 0.0
    draws = PosteriorDraws(g, raw.local_draws, raw.global_names, raw.local_names, raw.levels, raw.log_q)
    lp = model.log_joint(draws, model.grouped_data(data)[0])
    assert (lp[:5] == -math.inf).all() and np.isfinite(lp[5:]).all()


def test_interactions_take_the_order_of_the_population_level_part_alone():
    """Was: a group-level term before the population-level part set the order of an interaction's variables (z:x for
    `(z | g) + x*z`, where lme4 and brms have x:z), and the normalized formula parsed to other terms, so that a saved
    model's design could not be rebuilt."""
    terms = parse_formula("y ~ (z | g) + x*z")
    assert terms.terms == (("x",), ("z",), ("x", "z")) == parse_formula("y ~ x*z + (z | g)").terms
    assert parse_formula(terms.formula) == terms


def test_a_fit_whose_exact_density_is_infinite_at_every_draw_is_a_numerical_error(models, monkeypatch):
    """Was: a DataError about `log_ratios`, an argument the user never gave (counts of 1e14 under an untrained
    poisson amortizer)."""
    monkeypatch.setattr("mlnpe.formula.fit.log_joint", lambda model, draws, data: np.full(draws.n_draws, -math.inf))
    with pytest.raises(NumericalError, match=r"^the model gives this dataset no probability at any of the 20 amortized "
                                             r"draws .* or fit with psis=False"):
        models["gaussian"].fit(_seed_frame("gaussian"), n_draws=20, seed=0, refine=False)


def test_data_whose_scale_gives_no_simulable_default_prior_are_a_data_error():
    """Was: a SpecError about a prior the user never wrote (the data-based default normal(0, 1.8e-35) of b_x)."""
    data = _seed_frame("gaussian").assign(y=lambda d: d["y"] * 1e-35)
    with pytest.raises(DataError, match=r"^the scale of the data gives no default prior that mlnpe can simulate from "
                                        r"\(prior 'normal\(0, [\d.]+e-35\)'.*\) Rescale the response 'y'"):
        FormulaNPE(MODELS["gaussian"], data, "gaussian", network=NET)
