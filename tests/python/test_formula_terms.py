"""Tests of mlnpe.formula.terms: brms/lme4 formula parsing."""

import ast
import dataclasses
from pathlib import Path

import pytest

from mlnpe.errors import SpecError
from mlnpe.formula.terms import FormulaTerms, parse_formula

# formula -> (intercept, terms, group, group_intercept, group_terms, correlated)
FORMS = {
    "y ~ x": (True, (("x",),), None, False, (), True),
    "y ~ 1": (True, (), None, False, (), True),
    "y ~ 1 + x + (1 | g)": (True, (("x",),), "g", True, (), True),
    "y ~ x + (1 + x | g)": (True, (("x",),), "g", True, (("x",),), True),
    "y ~ x + (x | g)": (True, (("x",),), "g", True, (("x",),), True),
    "y ~ x + (1 + x || g)": (True, (("x",),), "g", True, (("x",),), False),
    "y ~ x + (0 + x | g)": (True, (("x",),), "g", False, (("x",),), True),
    "y ~ x + (x - 1 | g)": (True, (("x",),), "g", False, (("x",),), True),
    "y ~ 0 + x + (1 | g)": (False, (("x",),), "g", True, (), True),
    "y ~ x - 1 + (1 | g)": (False, (("x",),), "g", True, (), True),
    "y ~ -1 + x": (False, (("x",),), None, False, (), True),
    "y ~ x + 0": (False, (("x",),), None, False, (), True),
    "y ~ a:b": (True, (("a", "b"),), None, False, (), True),
    "y ~ a * b": (True, (("a",), ("b",), ("a", "b")), None, False, (), True),
    "y ~ a * b * c": (
        True,
        (("a",), ("b",), ("c",), ("a", "b"), ("a", "c"), ("b", "c"), ("a", "b", "c")),
        None, False, (), True,
    ),
    "y ~ a:b * c": (True, (("c",), ("a", "b"), ("a", "b", "c")), None, False, (), True),
    "y ~ x + x + x:x": (True, (("x",),), None, False, (), True),
    "y ~ a:b + a": (True, (("a",), ("a", "b")), None, False, (), True),
    "y ~ x + f + f:x": (True, (("x",), ("f",), ("x", "f")), None, False, (), True),
    "y ~ (1 + x * f | g)": (True, (), "g", True, (("x",), ("f",), ("x", "f")), True),
    "y ~ 0 + (0 + x:f || g)": (False, (), "g", False, (("x", "f"),), False),
    "y ~ x.1 + my_var + .z + (1 | Subject.ID)": (
        True, (("x.1",), ("my_var",), (".z",)), "Subject.ID", True, (), True,
    ),
}  # fmt: skip


@pytest.mark.parametrize("formula", list(FORMS))
def test_syntax_forms(formula):
    t = parse_formula(formula)
    got = (t.intercept, t.terms, t.group, t.group_intercept, t.group_terms, t.correlated)
    assert got == FORMS[formula]
    assert t.response == "y" and t.trials is None


@pytest.mark.parametrize("formula", list(FORMS))
def test_normalized_formula_parses_to_the_same_terms(formula):
    t = parse_formula(formula)
    assert parse_formula(t.formula) == t


def test_sleepstudy_formula_and_normalized_text():
    t = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert t.formula == "Reaction ~ 1 + Days + (1 + Days | Subject)"
    assert t.variables() == ("Reaction", "Days", "Subject")
    assert parse_formula("y ~ 0 + x + (x || g)").formula == "y ~ 0 + x + (1 + x || g)"


def test_trials_addition_term():
    t = parse_formula("k | trials(n) ~ x + (1 | g)")
    assert (t.response, t.trials) == ("k", "n")
    assert t.formula == "k | trials(n) ~ 1 + x + (1 | g)"
    assert t.variables() == ("k", "n", "x", "g")


def test_normalized_text_keeps_interaction_variable_order():
    t = parse_formula("y ~ a:b * c")
    assert t.terms == (("c",), ("a", "b"), ("a", "b", "c"))
    assert t.formula == "y ~ 1 + a:b + c + a:b:c"  # "c + a:b + ..." would rename a:b:c to c:a:b, as R does
    assert parse_formula("y ~ x*f").formula == "y ~ 1 + x + f + x:f"


def test_whitespace_insensitive():
    a = parse_formula("y~x*f+(1+x||g)")
    b = parse_formula("  y  ~ x *\n f +  ( 1 +  x ||\tg )  ")
    assert a == b


def test_variables_in_term_order_without_repeats():
    t = parse_formula("y ~ b:a + a + z + (1 + z + w | g)")
    assert t.variables() == ("y", "a", "z", "b", "w", "g")
    # R names an interaction by the variables' first appearance: b appears before a
    assert t.terms == (("a",), ("z",), ("b", "a"))


def test_terms_are_frozen():
    t = parse_formula("y ~ x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.intercept = False  # type: ignore[misc]


def test_direct_construction_is_checked():
    with pytest.raises(SpecError, match="need a `group`"):
        FormulaTerms("y", None, True, (), None, True, (), True, "y ~ 1")
    with pytest.raises(SpecError, match=r"has no coefficients. Use \(1 \| g\)"):
        FormulaTerms("y", None, True, (), "g", False, (), True, "y ~ 1")


@pytest.mark.parametrize(
    "formula, match",
    [
        ("y x", "exactly one '~'.*got no '~'"),
        ("y ~ x ~ z", "got 2 '~'"),
        ("~ x", "empty response"),
        ("y ~", "no predictors after '~'"),
        ("y ~ (1 | g", r"unbalanced parentheses: 1 '\(' not closed"),
        ("y ~ x) + (1 | g)", r"unbalanced parentheses: '\)' at position 5"),
        ("y ~ x + $z", r"unexpected character '\$' at position 8"),
        ("y ~ x +", "missing term around"),
        ("y ~ x + + z", "missing term around"),
        ("log(y) ~ x", "response must be a single variable name"),
        ("y + z ~ x", "response must be a single variable name"),
        ("y | weights(w) ~ x", r"addition terms \['weights\(w\)'\] are not supported; only 'y \| trials\(n\)'"),
        ("y | trials(n) + se(s) ~ x", r"addition terms \['se\(s\)'\] are not supported"),
        ("y | trials(10) ~ x", r"trials\(\) needs a column name"),
        ("y ~ log(x)", r"functions such as log\(...\) are not supported.*compute transformed columns"),
        ("y ~ I(x^2)", r"I\(...\) expressions are not supported"),
        ("y ~ x + offset(o):z", r"an offset must be a term of its own, got 'offset\(o\):z'"),
        ("y ~ x + offset(o) * z", r"an offset must be a term of its own"),
        ("y ~ x + (1 + offset(o) | g)", r"offset\(o\) is inside a group-level term; offsets belong to the population"),
        ("y ~ x - offset(o)", r"an offset cannot be subtracted .*offset\(-o\)"),
        ("y ~ x + offset()", r"offset\(\) is empty; .*offset\(log\(exposure\)\)"),
        ("y ~ offset(log(x, 2))", r"cannot read offset\(log\(x, 2\)\) at ',' \(log\(\) takes one argument"),
        ("y ~ offset(I(x))", r"at 'I' \(the function I\(\) is not supported in offsets\).*log, log2, log10"),
        ("y ~ offset(a +)", r"cannot read offset\(a \+\) at its end"),
        ("y ~ offset(a b)", r"cannot read offset\(a b\) at 'b'"),
        ("y ~ x + offset(log(y))", "uses the response 'y' as a predictor"),
        ("y ~ s(x) + (1 | g)", r"functions such as s\(...\)"),
        ("y ~ .", r"'\.' \(all other columns\) is not supported"),
        ("y ~ (a + b):c", "parentheses are only supported around group-level terms"),
        ("y ~ a^2", r"operator '\^' is not supported"),
        ("y ~ a %in% b", "operator '%in%' is not supported"),
        ("y ~ a/b", "operator '/' is not supported"),
        ("y ~ 2 + x", "the number '2' is not a term"),
        ("y ~ 2*x", "numbers cannot be part of a term"),
        ("y ~ x | g", r"group-level terms need parentheses, e.g. \(1 \+ x \| g\)"),
        ("y ~ x + (1 + x | g1) + (1 | g2) + (1 | g1)", r"the group 'g1' appears in 2 group-level terms"),
        ("y ~ x + (1 | a/b) + (1 | a)", r"the group 'a' appears in 2 group-level terms"),
        ("y ~ (1 | a:a)", r"names 'a' twice in the factor 'a:a'"),
        ("y ~ (1 | a/)", "must be a variable name"),
        ("y ~ (1 | gr(g))", "grouping factor in .* must be a variable name"),
        ("y ~ (1 | p | g)", "ID syntax"),
        ("y ~ (0 | g)", r"has no coefficients; write \(1 \| g\)"),
        ("y ~ ( | g)", "nothing left of the bar"),
        ("y ~ x - (1 | g)", "cannot be subtracted"),
        ("y ~ a * b - a:b", r"removing terms with '-' \('a:b'\) is not supported, only '- 1'"),
        ("y ~ (1 | g) + (0 + x | g)", r"appears in 2 .*Write \(1 \+ x \| g\) .* \(1 \+ x \|\| g\)"),
        ("y ~ (1 | g) + (1 | g)", "appears in 2 group-level terms"),
        ("y ~ Intercept + x", r"'Intercept' .* needs the default intercept removed.*'0 \+ Intercept \+ \.\.\.'"),
        ("y ~ 1 + Intercept", "needs the default intercept removed"),
        ("y ~ 0 + Intercept:x", r"'Intercept' is reserved .*only stand alone .* '0 \+ Intercept'"),
        ("y ~ 0 + Intercept * x", "'Intercept' is reserved"),
        ("y ~ 0 + x + (0 + Intercept | g)", "'Intercept' is reserved"),
        ("y ~ x + (1 | Intercept)", "'Intercept' is reserved"),
        ("Intercept ~ 0 + x", "'Intercept' is reserved"),
        ("y ~ x + offset(log(Intercept))", "'Intercept' is reserved"),
        ("y ~ y + x", "uses the response 'y' as a predictor"),
        ("y ~ x + ((1 | g))", "parentheses are only supported"),
    ],
)
def test_errors(formula, match):
    with pytest.raises(SpecError, match=match):
        parse_formula(formula)


def test_zero_plus_intercept_is_a_population_level_term():
    t = parse_formula("y ~ 0 + Intercept + x + (1 | g)")
    assert (t.intercept, t.intercept_coef, t.terms) == (False, True, (("Intercept",), ("x",)))
    assert t.formula == "y ~ 0 + Intercept + x + (1 | g)" and parse_formula(t.formula) == t
    assert t.variables() == ("y", "x", "g")  # Intercept is no column
    later = parse_formula("y ~ x + Intercept - 1 + (1 | g)")  # formula order, as model.matrix orders the columns
    assert later.terms == (("x",), ("Intercept",)) and later.intercept_coef
    assert not parse_formula("y ~ x + (1 | g)").intercept_coef
    with pytest.raises(SpecError, match="needs `intercept=False`"):
        FormulaTerms("y", None, True, (("Intercept",),), None, False, (), True, "y ~ 1 + Intercept")


@pytest.mark.parametrize(
    "formula, offsets, variables",
    [
        ("y ~ x + offset(log(exposure)) + (1 | g)", ["log(exposure)"], ("y", "x", "exposure", "g")),
        ("y ~ offset(o) + x", ["o"], ("y", "x", "o")),
        ("y ~ x + offset(log(a * b)) + offset(-c/2)", ["log(a * b)", "-c/2"], ("y", "x", "a", "b", "c")),
        ("y ~ offset(x^2) + x", ["x^2"], ("y", "x")),
        ("y ~ offset(1e-3 * t) + offset(exp(-(a - b)))", ["0.001 * t", "exp(-(a - b))"], ("y", "t", "a", "b")),
    ],
)
def test_offsets(formula, offsets, variables):
    t = parse_formula(formula)
    assert [o.text for o in t.offsets] == offsets and t.variables() == variables
    assert all(f"offset({o})" in t.formula for o in offsets)
    assert parse_formula(t.formula) == t
    assert t.terms in ((), (("x",),))  # offsets are no coefficients


@pytest.mark.parametrize(
    "text, tree",
    [
        ("-x^2", ("neg", ("op", "^", ("var", "x"), ("num", 2.0)))),  # R: ^ binds tighter than unary minus
        ("-x*y", ("op", "*", ("neg", ("var", "x")), ("var", "y"))),
        ("a - b - c", ("op", "-", ("op", "-", ("var", "a"), ("var", "b")), ("var", "c"))),
        ("a - (b - c)", ("op", "-", ("var", "a"), ("op", "-", ("var", "b"), ("var", "c")))),
        ("2^3^4", ("op", "^", ("num", 2.0), ("op", "^", ("num", 3.0), ("num", 4.0)))),
        ("(2^3)^4", ("op", "^", ("op", "^", ("num", 2.0), ("num", 3.0)), ("num", 4.0))),
        ("a/(b*c)", ("op", "/", ("var", "a"), ("op", "*", ("var", "b"), ("var", "c")))),
        ("log1p(+x)", ("call", "log1p", ("var", "x"))),
    ],
)
def test_offset_expressions_follow_r_precedence_and_write_back(text, tree):
    (offset,) = parse_formula(f"r ~ offset({text})").offsets
    assert offset.expr == tree
    assert parse_formula(f"r ~ offset({offset.text})").offsets[0].expr == tree


def test_non_string_formula():
    with pytest.raises(SpecError, match="`formula` must be a string"):
        parse_formula(None)  # type: ignore[arg-type]


def test_formula_layer_imports_no_torch():
    folder = Path(__file__).resolve().parents[2] / "python" / "mlnpe" / "formula"
    for name in ("terms.py", "design.py", "names.py"):
        tree = ast.parse((folder / name).read_text())
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not any(m.split(".")[0] == "torch" for m in imported), name


@pytest.mark.parametrize(
    "formula, primary, crossed, variables",
    [
        ("y ~ x + (1 | a) + (1 | b)", "a", ["b"], ("y", "x", "a", "b")),
        ("y ~ (1 + x | a) + (1 || b)", "a", ["b"], ("y", "x", "a", "b")),
        ("y ~ (1 | a/b)", "a", ["a:b"], ("y", "a", "b")),
        ("y ~ (1 | a/b/c)", "a", ["a:b", "a:b:c"], ("y", "a", "b", "c")),
        ("y ~ (1 | a:b)", "a:b", [], ("y", "a", "b")),
    ],
)
def test_several_grouping_factors(formula, primary, crossed, variables):
    t = parse_formula(formula)
    assert t.group == primary and [c.group for c in t.crossed] == crossed and t.variables() == variables
    assert parse_formula(t.formula) == t
    last = t.with_primary(t.groups[-1])  # another primary factor: the same model, the formula says so
    assert last.groups[0] == t.groups[-1] and set(last.groups) == set(t.groups)
    assert parse_formula(last.formula) == last


def test_nesting_expands_as_brms_does():
    t = parse_formula("y ~ x + (1 + x | school/class)")
    assert t.formula == "y ~ 1 + x + (1 + x | school) + (1 + x | school:class)"
    assert t.crossed[0].intercept and t.crossed[0].terms == (("x",),) and t.crossed[0].correlated
    with pytest.raises(SpecError, match="none of the grouping factors"):
        t.with_primary("class")
