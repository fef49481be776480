"""Parse a brms/lme4 model formula into its terms: the first stage of the formula pipeline (no data, no torch).

Supported syntax::

    y ~ x + f + x:f                  population-level terms (numeric or factor variables, interactions)
    y ~ a * b                        a + b + a:b   (`:` binds tighter than `*`, as in R)
    y ~ 0 + f   or   y ~ f - 1       no intercept (other `- term` removals are rejected)
    y | trials(n) ~ x + (1 | g)      binomial number of trials
    (1 | g)  (x | g)  (1 + x | g)    correlated group-level effects (an intercept is implied, as in lme4)
    (1 + x || g)                     uncorrelated group-level effects
    (0 + x | g)                      group-level slopes without intercept

One grouping factor per model and one group-level term per grouping factor: `(1 | g) + (0 + x | g)` is
rejected with a message suggesting `(1 + x || g)` (merging blocks would change how brms codes factors in
them, and a partly correlated covariance cannot be represented). Functions (`log(x)`, `I(x^2)`, `s(x)`,
`offset(o)`), `.`, `^`, `/`, `%in%` and parentheses other than around group-level terms raise
:class:`~mlnpe.errors.SpecError`.

Terms follow R's `terms()`: they are sorted by their number of variables (formula order among equals),
duplicates are dropped and the variables of an interaction are ordered by their first appearance in the
formula part they belong to (population-level or the group-level term), so `y ~ x + f + f:x` has the terms
`x`, `f`, `x:f`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from ..errors import SpecError

__all__ = ["FormulaTerms", "parse_formula"]

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


class _Sum(NamedTuple):
    """A parsed `term + term ...`: `terms` in R's order, `shown` in the order to write them back."""

    intercept: bool
    terms: tuple[tuple[str, ...], ...]
    shown: tuple[tuple[str, ...], ...]


class _GroupTerm(NamedTuple):
    group: str | None
    part: _Sum
    correlated: bool
    text: str


@dataclass(frozen=True)
class FormulaTerms:
    """The parsed terms of a formula.

    Attributes:
        response: name of the response variable.
        trials: name of the binomial trials variable of `y | trials(n) ~ ...`, or None.
        intercept: whether the population-level part has an intercept.
        terms: population-level terms without the intercept, each a tuple of variable names (several for
            an interaction), in R's `terms()` order.
        group: name of the grouping factor, or None without group-level terms.
        group_intercept: whether the group-level part has a (varying) intercept.
        group_terms: group-level terms without the intercept, like `terms`.
        correlated: True for `|` (correlated effects) and without group-level terms, False for `||`.
        formula: the normalized formula text, e.g. "y ~ 1 + x + (1 + x | g)".
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

    def __post_init__(self) -> None:
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

    def variables(self) -> tuple[str, ...]:
        """All variable names used, without repeats: response, trials, predictors in term order, group."""
        names = [self.response, self.trials]
        names += [v for term in self.terms for v in term]
        names += [v for term in self.group_terms for v in term]
        names.append(self.group)
        return tuple(dict.fromkeys(n for n in names if n is not None))


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
    term = _single_group(groups, formula)
    if term is None:
        term = _GroupTerm(None, _Sum(False, (), ()), True, "")
    used = {v for t in fixed.terms + term.part.terms for v in t} | {term.group}
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
        formula=_format(response, trials, fixed, term),
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
            groups.append(_parse_group(part[1:-1], formula))
        elif len(part) == 1 and part[0].kind == "number":
            intercept = _intercept_flag(part[0], sign, formula)
        elif sign == "-":
            raise SpecError(
                f"`formula` {formula!r}: removing terms with '-' ({_text(part)!r}) is not supported, only "
                "'- 1'. Write the terms you want, e.g. a + b instead of a*b - a:b."
            )
        else:
            found += [t for t in _parse_product(part, formula) if t not in found]
            own += part
    order = {}  # group-level terms do not count, as lme4's fixed part (nobars()) has none: (z | g) + x*z gives x:z
    for token in own:
        if token.kind == "name":
            order.setdefault(token.text, len(order))
    ordered = sorted(found, key=len)  # stable: formula order among terms of the same degree
    terms = tuple(tuple(sorted(term, key=order.__getitem__)) for term in ordered)
    in_order = tuple(tuple(sorted(term, key=order.__getitem__)) for term in found)
    shown = terms if _first_appearance(terms) == _first_appearance(in_order) else in_order
    return _Sum(intercept, terms, shown), groups


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
                what = "offsets (offset(...))"
            elif name == "I":
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


def _parse_group(tokens: list[_Token], formula: str) -> _GroupTerm:
    """Parses the inside of `(lhs | g)`."""
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
    if len(rhs) == 1 and rhs[0].kind == "name":
        group = _check_name(rhs[0], formula)
    elif rhs and all(t.kind == "name" or t.text in ("/", ":") for t in rhs) and rhs[0].kind == "name":
        raise SpecError(
            f"`formula` {formula!r}: mlnpe fits one grouping factor per model; {text} uses the groups "
            f"{_nested_groups(rhs)}. Combine them into one column (e.g. data['a_b'] = a + '_' + b) and "
            "use (... | a_b)."
        )
    else:
        raise SpecError(
            f"`formula` {formula!r}: the grouping factor in {text} must be a single variable name, got "
            f"{_text(rhs)!r}."
        )
    part, _ = _parse_sum(lhs, formula, allow_groups=False)
    if not part.intercept and not part.terms:
        raise SpecError(f"`formula` {formula!r}: {text} has no coefficients; write (1 | {group}).")
    return _GroupTerm(group, part, correlated, text)


def _nested_groups(tokens: list[_Token]) -> list[str]:
    """brms's groups of `a/b/c` (a, a:b, a:b:c) or `a:b` (a:b)."""
    if any(t.text == "/" for t in tokens):
        parts = [_text(p) for _, p in _split(tokens, ("/",), leading=False)]
        return [":".join(parts[: i + 1]) for i in range(len(parts))]
    return [_text(tokens)]


def _single_group(groups: list[_GroupTerm], formula: str) -> _GroupTerm | None:
    """The only group-level term (None without one); several grouping factors or terms raise."""
    if not groups:
        return None
    names = list(dict.fromkeys(g.group for g in groups))
    texts = [g.text for g in groups]
    if len(names) > 1:
        raise SpecError(
            f"`formula` {formula!r}: mlnpe fits one grouping factor per model, found groups {names} in "
            f"{texts}. Fit one model per grouping factor or combine the factors into one column."
        )
    if len(groups) > 1:
        coefs = ["1"] if any(g.part.intercept for g in groups) else ["0"]
        coefs += list(dict.fromkeys(":".join(t) for g in groups for t in g.part.shown))
        lhs = " + ".join(coefs)
        raise SpecError(
            f"`formula` {formula!r}: the group {names[0]!r} appears in {len(groups)} group-level terms "
            f"{texts}; mlnpe needs one term per grouping factor. Write ({lhs} | {names[0]}) "
            f"for correlated or ({lhs} || {names[0]}) for uncorrelated effects."
        )
    return groups[0]


def _format(response: str, trials: str | None, fixed: _Sum, term: _GroupTerm) -> str:
    """The normalized formula text, with explicit 1/0 for the intercepts."""
    lhs = response if trials is None else f"{response} | trials({trials})"
    rhs = [_format_sum(fixed)]
    if term.group is not None:
        rhs.append(f"({_format_sum(term.part)} {'|' if term.correlated else '||'} {term.group})")
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
    """Rejects brms's reserved `Intercept` and other special names."""
    if token.kind != "name":
        raise SpecError(
            f"`formula` {formula!r}: expected a variable name at position {token.pos}, got {token.text!r}."
        )
    if token.text == "Intercept":
        raise SpecError(
            f"`formula` {formula!r}: 'Intercept' is reserved (brms's intercept name). Use 1 or 0 to keep or "
            "drop the intercept, and rename a column called 'Intercept'."
        )
    return token.text


def _text(tokens: Sequence[_Token]) -> str:
    """Tokens joined back into readable text."""
    out = ""
    for token in tokens:
        spaced = token.kind == "op" and token.text in ("+", "-", "*", "|", "||", "/", "~", "%in%")
        out += f" {token.text} " if spaced else token.text
    return re.sub(r"\s+", " ", out).strip()
