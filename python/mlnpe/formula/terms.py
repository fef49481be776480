"""Parse a brms/lme4 model formula into its terms: the first stage of the formula pipeline (no data, no torch).

Supported syntax::

    y ~ x + f + x:f                  population-level terms (numeric or factor variables, interactions)
    y ~ a * b                        a + b + a:b   (`:` binds tighter than `*`, as in R)
    y ~ 0 + f   or   y ~ f - 1       no intercept (other `- term` removals are rejected)
    y ~ 0 + Intercept + x            brms's intercept as an ordinary coefficient (`b_Intercept`, class b,
                                     predictors not centred)
    y ~ x + offset(log(t))           a known part of the linear predictor, coefficient 1 (several offsets add up)
    y | trials(n) ~ x + (1 | g)      binomial number of trials
    (1 | g)  (x | g)  (1 + x | g)    correlated group-level effects (an intercept is implied, as in lme4)
    (1 + x || g)                     uncorrelated group-level effects
    (0 + x | g)                      group-level slopes without intercept

    (1 | a) + (1 | b)                crossed grouping factors (each its own sds, correlations and effects)
    (1 | a/b)                        nested factors: (1 | a) + (1 | a:b)
    (1 | a:b)                        the interaction of a and b as one grouping factor (levels `<a>_<b>`)

One group-level term per grouping factor: `(1 | g) + (0 + x | g)` is rejected with a message suggesting
`(1 + x || g)` (merging blocks would change how brms codes factors in them, and a partly correlated covariance
cannot be represented). With several grouping factors the first is the *primary* one until
:meth:`FormulaTerms.with_primary` makes another primary (the design makes the factor with the most levels
primary: see :mod:`mlnpe.formula.model`); the others are :attr:`FormulaTerms.crossed`. Functions (`log(x)`,
`I(x^2)`, `s(x)`), `.`, `^`, `%in%` and parentheses other than around group-level terms raise
:class:`~mlnpe.errors.SpecError`, except inside `offset()`.

`Intercept` is brms's reserved name: it may only stand as a term of its own in the population-level part of a
formula without the default intercept (`0 + Intercept`); as a variable anywhere else it is an error. An offset
takes numeric columns, numbers, `+ - * / ^`, parentheses and the functions log, log2, log10, log1p, exp and sqrt
(`offset(log(exposure))`, `offset(log(area * years))`); it is not allowed in group-level terms (nor in brms).

Terms follow R's `terms()`: they are sorted by their number of variables (formula order among equals),
duplicates are dropped and the variables of an interaction are ordered by their first appearance in the
formula part they belong to (population-level or the group-level term), so `y ~ x + f + f:x` has the terms
`x`, `f`, `x:f`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from typing import NamedTuple, NoReturn, Sequence

from ..errors import SpecError

__all__ = ["INTERCEPT", "CrossedTerm", "FormulaTerms", "OffsetTerm", "factor_variables", "parse_formula"]

#: brms's reserved name of the intercept as an ordinary coefficient (`0 + Intercept`).
INTERCEPT = "Intercept"

_TOKEN = re.compile(
    r"\s*(?:(?P<name>\.?[A-Za-z][A-Za-z0-9._]*)|(?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)"
    r"|(?P<op>\|\||%in%|[~+\-*:/^|(),.]))"
)
_FIX_FUNCTIONS = (
    "Only variables, interactions (a:b, a*b), 0/1 and group-level terms (1 + x | g) are supported: "
    "compute transformed columns in the data first (e.g. data['log_x'] = np.log(data['x']))."
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "name", "number" or "op"
    text: str
    pos: int


_OFFSET_FUNCTIONS = ("log", "log2", "log10", "log1p", "exp", "sqrt")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "neg": 3, "^": 4}  # R's; names, numbers and calls bind tightest


@dataclass(frozen=True)
class OffsetTerm:
    """One `offset(expr)` term: a known part of the linear predictor, with coefficient 1 (data, not a parameter).

    Attributes:
        expr: the expression as nested tuples: ("num", value), ("var", name), ("call", function, argument),
            ("neg", argument) and ("op", operator, left, right), operator one of + - * / ^.
    """

    expr: tuple

    @property
    def text(self) -> str:
        """The expression written back with R's precedence, e.g. "log(area * years)"."""
        return _expression_text(self.expr)

    @property
    def variables(self) -> tuple[str, ...]:
        """The columns the expression reads, in order of appearance."""
        return tuple(dict.fromkeys(_expression_variables(self.expr)))

    def __str__(self) -> str:
        return f"offset({self.text})"


class _Sum(NamedTuple):
    """A parsed `term + term ...`: `terms` in R's order, `shown` in the order to write them back."""

    intercept: bool
    terms: tuple[tuple[str, ...], ...]
    shown: tuple[tuple[str, ...], ...]
    offsets: tuple[OffsetTerm, ...] = ()


class _GroupTerm(NamedTuple):
    group: str | None
    part: _Sum
    correlated: bool
    text: str


def factor_variables(group: str) -> tuple[str, ...]:
    """The data columns of a grouping factor: ("g",) for "g", ("a", "b") for the interaction "a:b"."""
    return tuple(group.split(":"))


@dataclass(frozen=True)
class CrossedTerm:
    """The group-level term of a grouping factor other than the primary one.

    Attributes:
        group: the factor's name, a column ("b") or an interaction of columns ("a:b").
        intercept: whether it has a varying intercept.
        terms: its terms without the intercept, like `FormulaTerms.terms`.
        correlated: True for `|`, False for `||`.
    """

    group: str
    intercept: bool
    terms: tuple[tuple[str, ...], ...]
    correlated: bool

    def text(self) -> str:
        """The term as the normalized formula writes it, e.g. "(1 + x | b)"."""
        lhs = " + ".join(["1" if self.intercept else "0"] + [":".join(t) for t in self.terms])
        return f"({lhs} {'|' if self.correlated else '||'} {self.group})"


@dataclass(frozen=True)
class FormulaTerms:
    """The parsed terms of a formula.

    Attributes:
        response: name of the response variable.
        trials: name of the binomial trials variable of `y | trials(n) ~ ...`, or None.
        intercept: whether the population-level part has the default intercept (brms's `Intercept` class, the
            intercept of centred predictors).
        terms: population-level terms without the default intercept, each a tuple of variable names (several
            for an interaction), in R's `terms()` order; `("Intercept",)` is brms's intercept as an ordinary
            coefficient (`0 + Intercept`, see :attr:`intercept_coef`).
        group: name of the grouping factor, or None without group-level terms.
        group_intercept: whether the group-level part has a (varying) intercept.
        group_terms: group-level terms without the intercept, like `terms`.
        correlated: True for `|` (correlated effects) and without group-level terms, False for `||`.
        formula: the normalized formula text, e.g. "y ~ 1 + x + (1 + x | g)".
        offsets: the population-level `offset()` terms (their sum enters the linear predictor).
        crossed: the group-level terms of the other grouping factors, crossed with or nested in `group`.
    """

    response: str
    trials: str | None
    intercept: bool
    terms: tuple[tuple[str, ...], ...]
    group: str | None
    group_intercept: bool
    group_terms: tuple[tuple[str, ...], ...]
    correlated: bool
    formula: str
    offsets: tuple[OffsetTerm, ...] = ()
    crossed: tuple[CrossedTerm, ...] = ()

    def __post_init__(self) -> None:
        if self.intercept_coef and self.intercept:
            raise SpecError(
                "FormulaTerms: the term 'Intercept' (the intercept as a coefficient) needs `intercept=False`, got "
                "True. Drop one of the two intercepts."
            )
        if self.group is None and (self.group_intercept or self.group_terms):
            raise SpecError(
                "FormulaTerms: `group_intercept`/`group_terms` need a `group`, got group=None. "
                "Name the grouping factor or drop the group-level terms."
            )
        if self.group is not None and not (self.group_intercept or self.group_terms):
            raise SpecError(
                f"FormulaTerms: the group-level term of {self.group!r} has no coefficients. "
                f"Use (1 | {self.group}) for a varying intercept."
            )
        if self.crossed and self.group is None:
            raise SpecError("FormulaTerms: `crossed` terms need a primary `group`, got group=None.")
        names = [self.group] + [c.group for c in self.crossed]
        if len(set(names)) < len(names):
            raise SpecError(f"FormulaTerms: the grouping factors {names} repeat a factor; give each one term.")

    @property
    def intercept_coef(self) -> bool:
        """Whether the intercept is an ordinary population-level coefficient (brms's `0 + Intercept`): `b_Intercept`
        of class b, the predictors not centred for it."""
        return (INTERCEPT,) in self.terms

    @property
    def groups(self) -> tuple[str, ...]:
        """Every grouping factor, the primary first."""
        return () if self.group is None else (self.group,) + tuple(c.group for c in self.crossed)

    def variables(self) -> tuple[str, ...]:
        """All data columns used, without repeats: response, trials, predictors in term order, the offsets'
        columns, the grouping factors' columns (`Intercept` of `0 + Intercept` is no column)."""
        names = [self.response, self.trials]
        names += [v for term in self.terms if term != (INTERCEPT,) for v in term]
        names += [v for term in self.group_terms for v in term]
        names += [v for c in self.crossed for term in c.terms for v in term]
        names += [v for offset in self.offsets for v in offset.variables]
        names += [v for g in self.groups for v in factor_variables(g)]
        return tuple(dict.fromkeys(n for n in names if n is not None))

    def with_primary(self, group: str) -> "FormulaTerms":
        """The same model with `group` as the primary grouping factor (the others in their order)."""
        if group == self.group:
            return self
        terms = {self.group: CrossedTerm(self.group, self.group_intercept, self.group_terms, self.correlated)}
        terms.update({c.group: c for c in self.crossed})
        if group not in terms:
            raise SpecError(f"FormulaTerms: {group!r} is none of the grouping factors {list(terms)}.")
        first = terms.pop(group)
        crossed = tuple(terms.values())
        head = self.formula[: _first_group_term(self.formula)]
        return replace(
            self, group=group, group_intercept=first.intercept, group_terms=first.terms, correlated=first.correlated,
            crossed=crossed, formula=" + ".join([head, first.text()] + [c.text() for c in crossed]),
        )


def parse_formula(formula: str) -> FormulaTerms:
    """Parses a brms/lme4 formula (see the module docstring for the syntax).

    Arguments:
        formula: the formula text; whitespace is ignored.

    Returns:
        The :class:`FormulaTerms`.

    Raises:
        SpecError: for syntax errors, unsupported syntax, or several grouping factors.

    Example:
        >>> t = parse_formula("Reaction ~ Days + (Days | Subject)")
        >>> t.terms, t.group, t.group_terms, t.formula
        ((('Days',),), 'Subject', (('Days',),), 'Reaction ~ 1 + Days + (1 + Days | Subject)')
        >>> t = parse_formula("y ~ 0 + Intercept + x + offset(log(t)) + (1 | g)")
        >>> t.intercept, t.intercept_coef, t.terms, [str(o) for o in t.offsets]
        (False, True, (('Intercept',), ('x',)), ['offset(log(t))'])
    """
    if not isinstance(formula, str):
        raise SpecError(f"`formula` must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}.")
    tokens = _tokenize(formula)
    tildes = [i for i, t in enumerate(tokens) if t.text == "~"]
    if len(tildes) != 1:
        what = "no '~'" if not tildes else f"{len(tildes)} '~'"
        raise SpecError(
            f"`formula` needs exactly one '~' between the response and the predictors, e.g. "
            f"'y ~ x + (1 | g)'; got {what} in {formula!r}."
        )
    lhs, rhs = tokens[: tildes[0]], tokens[tildes[0] + 1 :]
    response, trials = _parse_lhs(lhs, formula)
    if not rhs:
        raise SpecError(f"`formula` {formula!r} has no predictors after '~'. Use 'y ~ 1' for an intercept only.")
    fixed, groups = _parse_sum(rhs, formula, allow_groups=True)
    groups = _one_term_per_group(groups, formula)
    term = groups[0] if groups else _GroupTerm(None, _Sum(False, (), ()), True, "")
    crossed = tuple(CrossedTerm(g.group, g.part.intercept, g.part.terms, g.correlated) for g in groups[1:])
    used = {v for t in fixed.terms + term.part.terms for v in t}
    used |= {v for g in groups for v in factor_variables(g.group)}
    used |= {v for c in crossed for t in c.terms for v in t}
    used |= {v for offset in fixed.offsets for v in offset.variables}
    if response in used:
        raise SpecError(
            f"`formula` {formula!r} uses the response {response!r} as a predictor too. Remove it from the "
            "right-hand side."
        )
    return FormulaTerms(
        response=response,
        trials=trials,
        intercept=fixed.intercept,
        terms=fixed.terms,
        group=term.group,
        group_intercept=term.part.intercept,
        group_terms=term.part.terms,
        correlated=term.correlated,
        formula=_format(response, trials, fixed, groups),
        offsets=fixed.offsets,
        crossed=crossed,
    )


def _tokenize(formula: str) -> list[_Token]:
    """Splits the formula into names, numbers and operators, checking characters and parentheses."""
    tokens: list[_Token] = []
    pos, depth = 0, 0
    stripped = formula.rstrip()
    while pos < len(stripped):
        match = _TOKEN.match(stripped, pos)
        if match is None:
            bad = stripped[pos:].lstrip()[:1]
            where = len(stripped) - len(stripped[pos:].lstrip())
            raise SpecError(
                f"`formula` {formula!r} has an unexpected character {bad!r} at position {where}. "
                "Variable names must be plain R names (letters, digits, '.', '_'); rename the column."
            )
        kind = match.lastgroup or "op"
        token = _Token(kind, match.group(kind), match.start(kind))
        depth += {"(": 1, ")": -1}.get(token.text, 0) if kind == "op" else 0
        if depth < 0:
            raise SpecError(f"`formula` {formula!r} has unbalanced parentheses: ')' at position {token.pos}.")
        tokens.append(token)
        pos = match.end()
    if depth != 0:
        raise SpecError(f"`formula` {formula!r} has unbalanced parentheses: {depth} '(' not closed.")
    return tokens


def _parse_lhs(tokens: list[_Token], formula: str) -> tuple[str, str | None]:
    """Returns (response, trials) from the tokens left of '~'."""
    if not tokens:
        raise SpecError(f"`formula` {formula!r} has an empty response: write 'y ~ ...' with the response column.")
    if tokens[0].kind != "name" or (len(tokens) > 1 and tokens[1].text != "|"):
        raise SpecError(
            f"`formula` {formula!r}: the response must be a single variable name (optionally followed by "
            f"'| trials(n)'), got {_text(tokens)!r}. {_FIX_FUNCTIONS}"
        )
    response = _check_name(tokens[0], formula)
    if len(tokens) == 1:
        return response, None
    trials: list[str] = []
    unsupported: list[str] = []
    for part in _split(tokens[2:], ("+",)):
        part = part[1]
        is_call = (
            len(part) == 4 and part[0].kind == "name" and part[1].text == "(" and part[3].text == ")"
        )
        if is_call and part[0].text == "trials" and part[2].kind == "name":
            trials.append(_check_name(part[2], formula))
        elif is_call and part[0].text == "trials":
            raise SpecError(
                f"`formula` {formula!r}: trials() needs a column name, got {_text(part)!r}. Add a column with "
                "the number of trials per row and write 'y | trials(n) ~ ...'."
            )
        else:
            unsupported.append(_text(part) or "(empty)")
    if unsupported:
        raise SpecError(
            f"`formula` {formula!r}: the addition terms {unsupported} are not supported; only "
            "'y | trials(n)' (binomial trials) is. Remove them."
        )
    if len(trials) != 1:
        raise SpecError(f"`formula` {formula!r} has {len(trials)} trials() terms; give exactly one.")
    return response, trials[0]


def _parse_sum(tokens: list[_Token], formula: str, *, allow_groups: bool) -> tuple[_Sum, list[_GroupTerm]]:
    """Parses `term + term ...` into its population-level part and its group-level terms.

    The terms are shown (written back) in R's order when that keeps the variables' order of first
    appearance, which names interactions, and in formula order otherwise (`a:b * c`).
    """
    intercept = True
    found: list[frozenset[str]] = []
    groups: list[_GroupTerm] = []
    offsets: list[OffsetTerm] = []
    own: list[_Token] = []  # the population-level part's tokens: its variables' order of first appearance
    for sign, part in _split(tokens, ("+", "-")):
        if not part:
            raise SpecError(
                f"`formula` {formula!r} has a missing term around {sign!r}: remove the extra operator."
            )
        if part[0].text == "(" and _closing(part, 0) == len(part) - 1 and _has_bar(part[1:-1]):
            if not allow_groups:
                raise SpecError(f"`formula` {formula!r}: group-level terms cannot be nested: {_text(part)!r}.")
            if sign == "-":
                raise SpecError(f"`formula` {formula!r}: a group-level term cannot be subtracted: -{_text(part)}.")
            groups.extend(_parse_group(part[1:-1], formula))
        elif len(part) == 1 and part[0].kind == "number":
            intercept = _intercept_flag(part[0], sign, formula)
        elif _is_offset(part):
            offsets.append(_parse_offset(part, sign, formula, allow_groups))
        elif sign == "-":
            raise SpecError(
                f"`formula` {formula!r}: removing terms with '-' ({_text(part)!r}) is not supported, only "
                "'- 1'. Write the terms you want, e.g. a + b instead of a*b - a:b."
            )
        elif allow_groups and len(part) == 1 and part[0].text == INTERCEPT:  # brms's `0 + Intercept`
            found += [t for t in (frozenset({INTERCEPT}),) if t not in found]
            own += part
        else:
            found += [t for t in _parse_product(part, formula) if t not in found]
            own += part
    if intercept and frozenset({INTERCEPT}) in found:
        raise SpecError(
            f"`formula` {formula!r}: the term 'Intercept' (brms's intercept as an ordinary coefficient, class b) "
            "needs the default intercept removed, as in brms: write '0 + Intercept + ...'."
        )
    order = {}  # group-level terms do not count, as lme4's fixed part (nobars()) has none: (z | g) + x*z gives x:z
    for token in own:
        if token.kind == "name":
            order.setdefault(token.text, len(order))
    ordered = sorted(found, key=len)  # stable: formula order among terms of the same degree
    terms = tuple(tuple(sorted(term, key=order.__getitem__)) for term in ordered)
    in_order = tuple(tuple(sorted(term, key=order.__getitem__)) for term in found)
    shown = terms if _first_appearance(terms) == _first_appearance(in_order) else in_order
    return _Sum(intercept, terms, shown, tuple(offsets)), groups


def _first_appearance(terms: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for term in terms for v in term))


def _intercept_flag(token: _Token, sign: str, formula: str) -> bool:
    """`+ 1` adds the intercept, `+ 0` and `- 1` remove it, `- 0` adds it (all as in R)."""
    if token.text not in ("0", "1"):
        raise SpecError(
            f"`formula` {formula!r}: the number {token.text!r} is not a term; only 1 (intercept), 0 or -1 "
            "(no intercept) are allowed."
        )
    return (token.text == "1") == (sign == "+")


def _parse_product(tokens: list[_Token], formula: str) -> list[frozenset[str]]:
    """Expands `a:b * c` into R's terms: a:b + c + a:b:c."""
    _reject_unsupported(tokens, formula)
    terms: list[frozenset[str]] = []
    for _, factor in _split(tokens, ("*",), leading=False):
        names = _split(factor, (":",), leading=False)
        if any(len(name) != 1 or name[0].kind != "name" for _, name in names):
            raise SpecError(
                f"`formula` {formula!r}: cannot read the term {_text(tokens)!r}; expected variables joined by "
                f"':' or '*'. {_FIX_FUNCTIONS}"
            )
        term = frozenset(_check_name(name[0], formula) for _, name in names)
        new = [term] + [t | term for t in terms]
        terms = terms + [t for t in new if t not in terms]
    return terms


def _reject_unsupported(tokens: list[_Token], formula: str) -> None:
    """Raises a SpecError naming the first unsupported construct in a population-level term."""
    for i, token in enumerate(tokens):
        following = tokens[i + 1].text if i + 1 < len(tokens) else ""
        if token.kind == "name" and following == "(":
            name = token.text
            if name == "offset":
                raise SpecError(
                    f"`formula` {formula!r}: an offset must be a term of its own, got {_text(tokens)!r}. Write it "
                    "as '+ offset(...)', e.g. y ~ x + offset(log(exposure)) + (1 | g)."
                )
            if name == "I":
                what = "I(...) expressions"
            else:
                what = f"functions such as {name}(...)"
            raise SpecError(f"`formula` {formula!r}: {what} are not supported. {_FIX_FUNCTIONS}")
        if token.text == "(":
            raise SpecError(
                f"`formula` {formula!r}: parentheses are only supported around group-level terms such as "
                f"(1 + x | g), got {_text(tokens)!r}. Expand the term, e.g. write a + b + a:b for a*b."
            )
        if token.text == ".":
            raise SpecError(
                f"`formula` {formula!r}: '.' (all other columns) is not supported; list the predictors by name."
            )
        if token.text in ("|", "||"):
            raise SpecError(
                f"`formula` {formula!r}: group-level terms need parentheses, e.g. (1 + x | g), got "
                f"{_text(tokens)!r}."
            )
        if token.text in ("^", "/", "%in%", ",", "~"):
            raise SpecError(
                f"`formula` {formula!r}: the operator {token.text!r} is not supported in {_text(tokens)!r}. "
                f"{_FIX_FUNCTIONS}"
            )
        if token.kind == "number":
            raise SpecError(
                f"`formula` {formula!r}: numbers cannot be part of a term ({_text(tokens)!r}); use 1, 0 or -1 "
                "as separate terms for the intercept."
            )


def _parse_group(tokens: list[_Token], formula: str) -> list[_GroupTerm]:
    """Parses the inside of `(lhs | g)`: one term, or one per factor of `(lhs | a/b)` (a, then a:b)."""
    bars = [i for i, t in enumerate(tokens) if t.text in ("|", "||") and _depth(tokens, i) == 0]
    text = f"({_text(tokens)})"
    if len(bars) > 1:
        raise SpecError(
            f"`formula` {formula!r}: the ID syntax {text} (several '|') is not supported. Use one term "
            "(lhs | g) per grouping factor."
        )
    lhs, rhs = tokens[: bars[0]], tokens[bars[0] + 1 :]
    if not lhs:
        raise SpecError(f"`formula` {formula!r}: {text} has nothing left of the bar; write (1 | g).")
    correlated = tokens[bars[0]].text == "|"
    names_ok = rhs and all(t.kind == "name" or t.text in ("/", ":") for t in rhs)
    if not (names_ok and rhs[0].kind == "name" and rhs[-1].kind == "name") or any(
        a.kind == b.kind for a, b in zip(rhs, rhs[1:])
    ):
        raise SpecError(
            f"`formula` {formula!r}: the grouping factor in {text} must be a variable name (g), an interaction "
            f"(a:b) or a nesting (a/b), got {_text(rhs)!r}."
        )
    for token in rhs:
        if token.kind == "name":
            _check_name(token, formula)
    groups = _nested_groups(rhs)
    part, _ = _parse_sum(lhs, formula, allow_groups=False)
    if not part.intercept and not part.terms:
        raise SpecError(f"`formula` {formula!r}: {text} has no coefficients; write (1 | {groups[-1]}).")
    for group in groups:
        repeated = [v for v in dict.fromkeys(factor_variables(group)) if factor_variables(group).count(v) > 1]
        if repeated:
            raise SpecError(f"`formula` {formula!r}: {text} names {repeated[0]!r} twice in the factor {group!r}.")
    return [_GroupTerm(group, part, correlated, text) for group in groups]


def _first_group_term(formula: str) -> int:
    """Where the group-level terms of a normalized formula text start (they come last; offsets hold no '|')."""
    start = 0
    while (start := formula.find(" + (", start)) >= 0:
        depth, end = 0, start + 3
        for end in range(start + 3, len(formula)):
            depth += {"(": 1, ")": -1}.get(formula[end], 0)
            if depth == 0:
                break
        if "|" in formula[start:end]:
            return start
        start = end
    return len(formula)


def _nested_groups(tokens: list[_Token]) -> list[str]:
    """brms's groups of `a/b/c` (a, a:b, a:b:c) or `a:b` (a:b)."""
    if any(t.text == "/" for t in tokens):
        parts = [_text(p).replace(" ", "") for _, p in _split(tokens, ("/",), leading=False)]
        return [":".join(parts[: i + 1]) for i in range(len(parts))]
    return [_text(tokens).replace(" ", "")]


def _one_term_per_group(groups: list[_GroupTerm], formula: str) -> list[_GroupTerm]:
    """The group-level terms, one per grouping factor; a factor in several terms raises."""
    for name in dict.fromkeys(g.group for g in groups):
        mine = [g for g in groups if g.group == name]
        if len(mine) == 1:
            continue
        coefs = ["1"] if any(g.part.intercept for g in mine) else ["0"]
        coefs += list(dict.fromkeys(":".join(t) for g in mine for t in g.part.shown))
        lhs = " + ".join(coefs)
        raise SpecError(
            f"`formula` {formula!r}: the group {name!r} appears in {len(mine)} group-level terms "
            f"{[g.text for g in mine]}; mlnpe needs one term per grouping factor. Write ({lhs} | {name}) "
            f"for correlated or ({lhs} || {name}) for uncorrelated effects."
        )
    return groups


def _format(response: str, trials: str | None, fixed: _Sum, groups: Sequence[_GroupTerm]) -> str:
    """The normalized formula text, with explicit 1/0 for the intercepts."""
    lhs = response if trials is None else f"{response} | trials({trials})"
    rhs = [_format_sum(fixed)] + [str(offset) for offset in fixed.offsets]
    rhs += [f"({_format_sum(g.part)} {'|' if g.correlated else '||'} {g.group})" for g in groups]
    return f"{lhs} ~ {' + '.join(rhs)}"


def _format_sum(part: _Sum) -> str:
    return " + ".join(["1" if part.intercept else "0"] + [":".join(t) for t in part.shown])


def _split(
    tokens: Sequence[_Token], ops: tuple[str, ...], *, leading: bool = True
) -> list[tuple[str, list[_Token]]]:
    """Splits tokens at depth-0 operators in `ops` into (preceding operator, part) pairs.

    The first part gets the operator "+"; with `leading`, a first token in `ops` is its sign (as in `-1 + x`).
    """
    parts: list[tuple[str, list[_Token]]] = []
    sign, current, depth = "+", [], 0
    for i, token in enumerate(tokens):
        if token.text in ops and depth == 0 and not (leading and i == 0):
            parts.append((sign, current))
            sign, current = token.text, []
        elif token.text in ops and depth == 0:
            sign = token.text
        else:
            depth += {"(": 1, ")": -1}.get(token.text, 0) if token.kind == "op" else 0
            current.append(token)
    parts.append((sign, current))
    return parts


def _closing(tokens: Sequence[_Token], start: int) -> int:
    """Index of the ')' matching the '(' at `start`."""
    depth = 0
    for i in range(start, len(tokens)):
        depth += {"(": 1, ")": -1}.get(tokens[i].text, 0) if tokens[i].kind == "op" else 0
        if depth == 0:
            return i
    return len(tokens)  # unreachable: the tokenizer checked the balance


def _depth(tokens: Sequence[_Token], index: int) -> int:
    """Parenthesis depth at `index`."""
    return sum({"(": 1, ")": -1}.get(t.text, 0) for t in tokens[:index] if t.kind == "op")


def _has_bar(tokens: Sequence[_Token]) -> bool:
    return any(t.text in ("|", "||") and _depth(tokens, i) == 0 for i, t in enumerate(tokens))


def _check_name(token: _Token, formula: str) -> str:
    """Rejects brms's reserved `Intercept` (as a variable) and other special names."""
    if token.kind != "name":
        raise SpecError(
            f"`formula` {formula!r}: expected a variable name at position {token.pos}, got {token.text!r}."
        )
    if token.text == INTERCEPT:
        raise SpecError(
            f"`formula` {formula!r}: 'Intercept' is reserved (brms's intercept name): it may only stand alone in "
            "the population-level part as '0 + Intercept' (the intercept as an ordinary coefficient). Elsewhere "
            "use 1 or 0 to keep or drop the intercept, and rename a column called 'Intercept'."
        )
    return token.text


# --- offsets -----------------------------------------------------------------------------------------------


def _is_offset(part: Sequence[_Token]) -> bool:
    """Whether a term is `offset(...)` as a whole."""
    return (
        len(part) >= 3 and part[0].text == "offset" and part[0].kind == "name" and part[1].text == "("
        and _closing(part, 1) == len(part) - 1
    )  # fmt: skip


def _parse_offset(part: list[_Token], sign: str, formula: str, population: bool) -> OffsetTerm:
    """Parses the term `offset(expr)` of the population-level part."""
    text = formula[part[0].pos : part[-1].pos + len(part[-1].text)]  # as the user wrote it
    if not population:
        raise SpecError(
            f"`formula` {formula!r}: {text} is inside a group-level term; offsets belong to the population-level "
            "part (brms does not allow them in group-level terms either). Move it out, e.g. "
            "y ~ x + offset(log(exposure)) + (1 | g)."
        )
    if sign == "-":
        raise SpecError(
            f"`formula` {formula!r}: an offset cannot be subtracted (- {text}); negate its expression instead, "
            "e.g. + offset(-o)."
        )
    inner = part[2:-1]
    if not inner:
        raise SpecError(
            f"`formula` {formula!r}: offset() is empty; give the known part of the linear predictor, e.g. "
            "offset(log(exposure))."
        )
    reader = _OffsetReader(inner, formula, text)
    expr = reader.sum()
    if reader.pos < len(inner):
        reader.fail()
    return OffsetTerm(expr)


class _OffsetReader:
    """Recursive descent over the tokens of an offset's expression, with R's precedence: `^` (right-associative)
    over unary minus over `* /` over `+ -`."""

    def __init__(self, tokens: list[_Token], formula: str, text: str):
        self.tokens, self.formula, self.text, self.pos = tokens, formula, text, 0

    def peek(self) -> str:
        return self.tokens[self.pos].text if self.pos < len(self.tokens) else ""

    def take(self) -> _Token:
        if self.pos >= len(self.tokens):
            self.fail()
        self.pos += 1
        return self.tokens[self.pos - 1]

    def fail(self, why: str = "") -> NoReturn:
        at = repr(self.tokens[self.pos].text) if self.pos < len(self.tokens) else "its end"
        raise SpecError(
            f"`formula` {self.formula!r}: cannot read {self.text} at {at}{why}. An offset takes numeric columns, "
            f"numbers, + - * / ^, parentheses and the functions {', '.join(_OFFSET_FUNCTIONS)}, e.g. "
            "offset(log(exposure)); compute anything else as a column of the data first."
        )

    def sum(self) -> tuple:
        node = self.product()
        while self.peek() in ("+", "-"):
            node = ("op", self.take().text, node, self.product())
        return node

    def product(self) -> tuple:
        node = self.unary()
        while self.peek() in ("*", "/"):
            node = ("op", self.take().text, node, self.unary())
        return node

    def unary(self) -> tuple:
        if self.peek() in ("+", "-"):
            negate = self.take().text == "-"
            node = self.unary()
            return ("neg", node) if negate else node
        return self.power()

    def power(self) -> tuple:
        node = self.atom()
        if self.peek() == "^":
            self.take()
            node = ("op", "^", node, self.unary())
        return node

    def atom(self) -> tuple:
        token = self.take()
        if token.kind == "number":
            if not math.isfinite(float(token.text)):
                self.pos -= 1
                self.fail(" (the number is too large)")
            return ("num", float(token.text))
        if token.text == "(":
            node = self.sum()
            self.expect(")")
            return node
        if token.kind != "name":
            self.pos -= 1
            self.fail()
        if self.peek() != "(":
            return ("var", _check_name(token, self.formula))
        if token.text not in _OFFSET_FUNCTIONS:
            self.pos -= 1
            self.fail(f" (the function {token.text}() is not supported in offsets)")
        self.take()
        node = ("call", token.text, self.sum())
        if self.peek() == ",":
            self.fail(f" ({token.text}() takes one argument here)")
        self.expect(")")
        return node

    def expect(self, text: str) -> None:
        if self.peek() != text:
            self.fail()
        self.pos += 1


def _expression_text(node: tuple) -> str:
    """An offset's expression as text that parses back to the same tree (R's deparse spacing)."""
    kind = node[0]
    if kind == "num":
        value = node[1]
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if kind == "var":
        return node[1]
    if kind == "call":
        return f"{node[1]}({_expression_text(node[2])})"
    if kind == "neg":
        return "-" + _operand(node[1], _level(node[1]) < _PRECEDENCE["^"])
    _, op, left, right = node
    if op == "^":  # right-associative; a negated exponent needs no parentheses (2^-1)
        base = _operand(left, _level(left) <= _PRECEDENCE["^"])
        return f"{base}^{_operand(right, _level(right) < _PRECEDENCE['neg'])}"
    sep = "/" if op == "/" else f" {op} "
    return f"{_operand(left, _level(left) < _PRECEDENCE[op])}{sep}{_operand(right, _level(right) <= _PRECEDENCE[op])}"


def _level(node: tuple) -> int:
    """How tightly a node binds: its operator's precedence; numbers, columns and calls bind tightest."""
    if node[0] == "op":
        return _PRECEDENCE[node[1]]
    return _PRECEDENCE["neg"] if node[0] == "neg" else 5


def _operand(node: tuple, parenthesize: bool) -> str:
    text = _expression_text(node)
    return f"({text})" if parenthesize else text


def _expression_variables(node: tuple) -> list[str]:
    if node[0] == "var":
        return [node[1]]
    return [v for child in node[1:] if isinstance(child, tuple) for v in _expression_variables(child)]


def _text(tokens: Sequence[_Token]) -> str:
    """Tokens joined back into readable text."""
    out = ""
    for token in tokens:
        spaced = token.kind == "op" and token.text in ("+", "-", "*", "|", "||", "/", "~", "%in%")
        out += f" {token.text} " if spaced else token.text
    return re.sub(r"\s+", " ", out).strip()
