"""Data -> design matrices with brms's column names: the second stage of the formula pipeline.

:func:`build_design` turns parsed :class:`~mlnpe.formula.terms.FormulaTerms` and a data frame into a
:class:`Design`: the response, the population-level matrix X (without the default intercept), the group-level
matrix Z, the group codes and the offset. Columns are coded as R's `model.matrix()` codes them and named as brms
names them, so `Reaction ~ Days + (Days | Subject)` gives X = [Days] and Z = [Intercept, Days], and
`y ~ 0 + Intercept + Days + (1 | Subject)` gives X = [Intercept, Days] with a column of ones named Intercept.

Coding rules (R's `model.matrix`, the heuristic of *Statistical Models in S*, p. 38):

* numeric columns enter as they are; string, categorical and bool columns are factors;
* a factor in a term is coded by treatment contrasts (first level is the reference, one column per other
  level) when the term without that factor is the empty term or is contained in an earlier term, and by one
  indicator per level otherwise; without an intercept, the first factor of the first term holding a factor
  gets an indicator for every level (`0 + f` gives a column per level);
* interaction columns are products, named `x:SexFemale` with the variables in formula order and the first
  variable's columns varying fastest;
* with brms's `0 + Intercept` factors are coded as with an intercept (brms's `validate_terms`), the intercept
  being the column Intercept of X.

Offsets are evaluated on the data's numeric columns and summed into :attr:`Design.offset`; every row's offset
must be finite (log of a non-positive value, a missing or infinite value raise a DataError naming the offset).

Factor levels are ordered as R orders them: the category order of a pandas Categorical (unused categories
are dropped, as brms's `drop_unused_levels = TRUE` does), FALSE < TRUE for bool columns, numeric order for
numbers (integral values printed without decimals), and for strings the order of R's `sort()` in an English
UTF-8 locale: case-insensitive with lowercase first among equals ("a" < "A" < "b"). R in the C locale sorts
strings by code point instead, and locale rules for punctuation are not reproduced: use a pandas
Categorical to pin the order where this matters.

Names. `x_names`/`z_names` are R's `model.matrix` column names and keep spaces of factor levels
("fa b"); :mod:`mlnpe.formula.names` gives the brms parameter names (`b_fab`, `r_g[u.v,Intercept]`). Columns
whose brms names would collide are rejected here.

Rows are never dropped: a missing value in any used column raises :class:`~mlnpe.errors.DataError`.

Several grouping factors. A factor `a:b` is the interaction of its columns, its levels the R labels pasted with
"_" ("x_p"), sorted as brms sorts them; `(1 | a/b)` is `(1 | a) + (1 | a:b)`. Without a `reference`, the factor
with the most levels becomes the primary one (:meth:`~mlnpe.formula.terms.FormulaTerms.with_primary`; its
effects are the model's local parameters) and the others are :attr:`Design.crossed`, whose levels are fixed by
the training data (:attr:`DesignInfo.crossed_levels`): new data may use them, not others.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import DataError, SpecError
from .names import brms_rename
from .terms import INTERCEPT, FormulaTerms, OffsetTerm, factor_variables, parse_formula

__all__ = ["CrossedDesign", "Design", "DesignInfo", "as_frame", "build_design", "factor_values"]

# One design column: (variable, level) pairs multiplied together; level None means the numeric value.
_Column = tuple[tuple[str, "str | None"], ...]


@dataclass(frozen=True)
class DesignInfo:
    """Everything needed to rebuild the same design columns on new data.

    Attributes:
        terms: the parsed formula.
        factor_levels: levels of every factor variable used in X or Z, in coding order (the grouping
            factor is not included: its levels always come from the data).
        numeric: names of the numeric predictor variables.
        x_names: population-level column names (without the intercept).
        z_names: group-level column names ("Intercept" first when there is a varying intercept).
        crossed_levels: the levels of every crossed grouping factor (`terms.crossed`), in order.
    """

    terms: FormulaTerms
    factor_levels: Mapping[str, tuple[str, ...]]
    numeric: tuple[str, ...]
    x_names: tuple[str, ...]
    z_names: tuple[str, ...]
    crossed_levels: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        levels = {str(k): tuple(str(v) for v in vals) for k, vals in dict(self.factor_levels).items()}
        object.__setattr__(self, "factor_levels", levels)
        crossed = {str(k): tuple(str(v) for v in vals) for k, vals in dict(self.crossed_levels).items()}
        object.__setattr__(self, "crossed_levels", crossed)
        if list(crossed) != [c.group for c in self.terms.crossed]:
            raise SpecError(
                f"DesignInfo: `crossed_levels` covers the factors {list(crossed)}, the formula "
                f"{self.terms.formula!r} crosses {[c.group for c in self.terms.crossed]}. Rebuild it with build_design()."
            )
        object.__setattr__(self, "numeric", tuple(self.numeric))
        object.__setattr__(self, "x_names", tuple(self.x_names))
        object.__setattr__(self, "z_names", tuple(self.z_names))
        predictors = _predictors(self.terms)
        unknown = sorted(set(predictors) - set(levels) - set(self.numeric))
        if unknown:
            raise SpecError(
                f"DesignInfo: the predictors {unknown} are neither in `factor_levels` nor in `numeric`. "
                "Build the DesignInfo with build_design() instead of by hand."
            )
        x_plan, z_plan = _plans(self.terms, levels)
        if tuple(n for n, _ in x_plan) != self.x_names or tuple(n for n, _ in z_plan) != self.z_names:
            raise SpecError(
                f"DesignInfo: `x_names` {list(self.x_names)} / `z_names` {list(self.z_names)} do not match the "
                f"columns that the formula {self.terms.formula!r} and `factor_levels` give "
                f"({[n for n, _ in x_plan]} / {[n for n, _ in z_plan]}). Rebuild it with build_design()."
            )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict; :meth:`from_dict` inverts it."""
        return {
            "formula": self.terms.formula,
            "factor_levels": {k: list(v) for k, v in self.factor_levels.items()},
            "numeric": list(self.numeric),
            "x_names": list(self.x_names),
            "z_names": list(self.z_names),
            **({"crossed_levels": {k: list(v) for k, v in self.crossed_levels.items()}} if self.crossed_levels else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DesignInfo":
        """Rebuilds a DesignInfo from :meth:`to_dict` output (checked for consistency).

        Raises:
            SpecError: keys are missing or the stored names do not match the formula and levels.
        """
        keys = ("formula", "factor_levels", "numeric", "x_names", "z_names")
        missing = [k for k in keys if k not in data]
        if missing:
            raise SpecError(
                f"DesignInfo.from_dict: keys {missing} are missing from `data` (got {sorted(data)}). "
                "Pass the dict written by DesignInfo.to_dict()."
            )
        return cls(
            terms=parse_formula(data["formula"]),
            factor_levels={k: tuple(v) for k, v in data["factor_levels"].items()},
            numeric=tuple(data["numeric"]),
            x_names=tuple(data["x_names"]),
            z_names=tuple(data["z_names"]),
            crossed_levels={k: tuple(v) for k, v in data.get("crossed_levels", {}).items()},
        )

    def crossed_plan(self, index: int) -> tuple[tuple[str, _Column], ...]:
        """The group-level columns of crossed factor `index` ("Intercept" first when it has a varying intercept)."""
        return _term_plan(self.terms.crossed[index].intercept, self.terms.crossed[index].terms, self.factor_levels)


@dataclass(frozen=True)
class CrossedDesign:
    """The group-level part of one crossed grouping factor.

    Attributes:
        group: the factor's name ("b" or "a:b").
        Z: (rows, M_f) its group-level columns.
        z_names: (M_f,) their names.
        codes: (rows,) int64 codes 0..K_f-1 indexing `levels`.
        levels: (K_f,) its levels, those of the training data.
    """

    group: str
    Z: np.ndarray
    z_names: tuple[str, ...]
    codes: np.ndarray
    levels: tuple[str, ...]


@dataclass(frozen=True)
class Design:
    """Design matrices of one dataset.

    Attributes:
        y: (rows,) response as float.
        trials: (rows,) int64 binomial trials, or None.
        offset: (rows,) the sum of the formula's offsets, or None without offsets.
        X: (rows, K) population-level columns without the default intercept (with the column of ones
            "Intercept" under brms's `0 + Intercept`).
        x_names: (K,) column names of X, e.g. ("x", "SexFemale", "x:SexFemale").
        intercept: whether the model has the default population-level intercept (brms's `Intercept` class).
        x_means: (K,) column means of X (brms centres X by them; see
            :func:`mlnpe.formula.names.uncenter_intercept`).
        Z: (rows, M) group-level columns.
        z_names: (M,) column names of Z, e.g. ("Intercept", "x").
        group: (rows,) int64 group codes 0..J-1 indexing `levels`.
        levels: (J,) group levels as strings, in R's order.
        info: what is needed to rebuild the same columns on new data.
        crossed: the other grouping factors (`info.terms.crossed`), in order.
    """

    y: np.ndarray
    trials: np.ndarray | None
    offset: np.ndarray | None
    X: np.ndarray
    x_names: tuple[str, ...]
    intercept: bool
    x_means: np.ndarray
    Z: np.ndarray
    z_names: tuple[str, ...]
    group: np.ndarray
    levels: tuple[str, ...]
    info: DesignInfo = field(repr=False)
    crossed: tuple[CrossedDesign, ...] = ()


def build_design(
    terms: FormulaTerms,
    data: pd.DataFrame | Mapping[str, Sequence[Any]],
    *,
    reference: DesignInfo | None = None,
    min_groups: int = 2,
) -> Design:
    """Builds the design matrices of `terms` on `data`.

    Arguments:
        terms: the parsed formula (:func:`~mlnpe.formula.terms.parse_formula`); it needs a group-level term.
        data: a data frame, or a dict of equally long columns.
        reference: the :attr:`Design.info` of an earlier design: its factor levels and columns are reused,
            so new data get the same columns. Group levels always come from `data`, so new groups are fine.
        min_groups: the fewest groups accepted (2 to fit a multilevel model; 1 for predictions).

    Returns:
        The :class:`Design`.

    Raises:
        SpecError: the formula has no grouping factor, or `reference` belongs to another formula.
        DataError: missing columns, missing values, non-numeric response, fewer than 2 groups, a factor
            with one level, invalid trials, an offset that is not finite on every row, a column Intercept
            other than ones beside `0 + Intercept`, or a factor level unseen by `reference`.

    Example:
        >>> data = {"y": [1.0, 2, 3], "x": [0.0, 1, 2], "g": ["a", "a", "b"]}
        >>> d = build_design(parse_formula("y ~ x + (1 | g)"), data)
        >>> d.x_names, d.z_names, d.levels, d.group.tolist()
        (('x',), ('Intercept',), ('a', 'b'), [0, 0, 1])
    """
    if terms.group is None:
        raise SpecError(
            f"`terms` ({terms.formula!r}) has no group-level term. mlnpe models are multilevel: add one such "
            "as (1 | g)."
        )
    if reference is not None and reference.terms != terms:
        raise SpecError(
            f"`reference` was built for {reference.terms.formula!r}, not {terms.formula!r}. Pass the "
            "DesignInfo of a design of the same formula."
        )
    frame = as_frame(data)
    used = terms.variables()
    _check_present(frame, used, terms.offsets)
    _check_missing(frame, used)
    grouping = {v for g in terms.groups for v in factor_variables(g)}
    for name in used:
        _check_one_kind(frame[name], name)
        if name not in grouping:
            _check_not_temporal(frame[name], name)
    _check_intercept_column(frame, terms)
    factors = {g: factor_values(frame, g) for g in terms.groups}
    if reference is None and terms.crossed:  # the factor with the most levels is the primary one
        counts = {g: len(pd.unique(v)) for g, v in factors.items()}
        terms = terms.with_primary(max(terms.groups, key=lambda g: (counts[g], -terms.groups.index(g))))
        _check_structure(frame, terms, factors)
    if reference is None:
        levels, numeric = _learn_kinds(frame, _predictors(terms))
    else:
        levels, numeric = dict(reference.factor_levels), reference.numeric
    values = _predictor_values(frame, levels, numeric, checked=reference is not None)
    values[INTERCEPT] = np.ones(len(frame))  # the column of `0 + Intercept` (no variable has this name)
    x_plan, z_plan = _plans(terms, levels)
    X = _evaluate(x_plan, values, levels, len(frame))
    Z = _evaluate(z_plan, values, levels, len(frame))
    x_names, z_names = tuple(n for n, _ in x_plan), tuple(n for n, _ in z_plan)
    _check_brms_duplicates(x_names, "population-level")
    _check_brms_duplicates(z_names, "group-level")
    crossed = []
    for c in terms.crossed:
        plan = _term_plan(c.intercept, c.terms, levels)
        known = None if reference is None else reference.crossed_levels[c.group]
        codes, factor_levels = _crossed_codes(factors[c.group], c.group, known)
        crossed.append(CrossedDesign(c.group, _evaluate(plan, values, levels, len(frame)), tuple(n for n, _ in plan),
                                     codes, factor_levels))  # fmt: skip
    info = reference or DesignInfo(terms, levels, numeric, x_names, z_names, {c.group: c.levels for c in crossed})
    group, group_levels = _group_codes(factors[terms.group], terms.group, min_groups)
    y = _response(frame[terms.response], terms.response)
    trials = None if terms.trials is None else _trials(frame[terms.trials], terms.trials, y, terms.response)
    return Design(
        y=y,
        trials=trials,
        offset=_offset(frame, terms.offsets),
        X=X,
        x_names=x_names,
        intercept=terms.intercept,
        x_means=X.mean(axis=0),
        Z=Z,
        z_names=z_names,
        group=group,
        levels=group_levels,
        info=info,
        crossed=tuple(crossed),
    )


def _check_structure(frame: pd.DataFrame, terms: FormulaTerms, factors: Mapping[str, pd.Series]) -> None:
    """Warnings about several grouping factors that a brms user may not mean: a nested factor whose levels repeat
    under several levels of its parent, a factor used alone and nested, and levels of a non-primary factor with
    one row (their effects rest on one observation and the prior)."""
    groups = terms.groups
    for g in groups:
        parts = factor_variables(g)
        if len(parts) < 2 or ":".join(parts[:-1]) not in groups:
            continue
        parent, child = ":".join(parts[:-1]), parts[-1]
        shared = frame.assign(_p=factors[parent].to_numpy()).groupby(child, observed=True)["_p"].nunique()
        repeated = [str(v) for v in shared[shared > 1].index]
        if repeated:
            warnings.warn(
                f"levels {repeated[:5]} of {child!r} appear under several levels of {parent!r}: in (1 | {parent}/{child}) "
                f"brms, and mlnpe, treat each pair as its own unit of {g!r} (levels <{parent}>_<{child}>). If {child!r} "
                f"is crossed with {parent!r} instead, write (1 | {parent}) + (1 | {child}).",
                UserWarning, stacklevel=3,
            )
        if child in groups:
            warnings.warn(
                f"{child!r} is a grouping factor on its own and nested in {parent!r} ({g!r}); if that is not meant, "
                f"drop (... | {child}) or write the nesting as (1 | {parent}) + (1 | {child}).",
                UserWarning, stacklevel=3,
            )
    for c in terms.crossed:
        counts = factors[c.group].map(_r_label).value_counts()
        single = sorted(str(v) for v in counts[counts == 1].index)
        if single:
            warnings.warn(
                f"levels {single[:5]} of the grouping factor {c.group!r} have one row each ({len(single)} of "
                f"{len(counts)}): their effects rest on that row and the prior. Check the factor, or drop it if its "
                "levels are the rows.",
                UserWarning, stacklevel=3,
            )


def factor_values(frame: pd.DataFrame, group: str) -> pd.Series:
    """A grouping factor's values: its column, or for an interaction "a:b" its columns' R labels pasted with "_"."""
    variables = factor_variables(group)
    if len(variables) == 1:
        return frame[group]
    labels = [frame[v].map(_r_label).astype(str) for v in variables]
    out = labels[0]
    for more in labels[1:]:
        out = out + "_" + more
    return out.rename(group)


def _crossed_codes(series: pd.Series, name: str, known: Sequence[str] | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """Codes and levels of a crossed factor: the data's levels, or `known` (the training data's) for new data,
    which may use only those."""
    if known is None:
        return _group_codes(series, name)
    try:
        return _codes(series, known, name), tuple(known)
    except DataError:
        labels = sorted({_r_label(v) for v in pd.unique(series)} - set(known), key=_r_string_key)
        raise DataError(
            f"the crossed grouping factor {name!r} has levels {labels[:5]} in `data` that the model was not trained "
            f"with (it knows {list(known)[:10]}{' ...' if len(known) > 10 else ''}): the effects of {name!r} are "
            "fixed parameters of the trained model. Drop those rows, or fit the model on data with every level."
        ) from None


# --- data checks -------------------------------------------------------------------------------------------


def as_frame(data: Any) -> pd.DataFrame:
    """A DataFrame view of `data` (a DataFrame or a dict of columns), with string column names and a fresh index.

    Raises:
        DataError: anything else, columns of unequal lengths, no rows, or repeated column names.
    """
    if isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, Mapping):
        try:
            frame = pd.DataFrame({str(k): list(v) if not hasattr(v, "__array__") else v for k, v in data.items()})
        except (ValueError, TypeError) as error:
            lengths = {str(k): len(v) if hasattr(v, "__len__") else "scalar" for k, v in data.items()}
            raise DataError(
                f"`data` must hold columns of equal length, got lengths {lengths} ({error}). "
                "Pass a pandas DataFrame or a dict of equally long lists."
            ) from None
    else:
        raise DataError(
            f"`data` must be a pandas DataFrame or a dict of columns, got {type(data).__name__}. "
            "Convert it with pandas.DataFrame(...)."
        )
    if len(frame) == 0:
        raise DataError("`data` has no rows. Pass at least one row per group.")
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    repeated = sorted({c for c in frame.columns if list(frame.columns).count(c) > 1})
    if repeated:
        raise DataError(f"`data` has repeated column names {repeated}. Rename the columns so that each is unique.")
    return frame


def _check_present(frame: pd.DataFrame, names: Sequence[str], offsets: Sequence[OffsetTerm]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        in_offsets = [str(o) for o in offsets if set(o.variables) & set(missing)]
        note = (
            f" ({', '.join(in_offsets)} is data: every dataset, `newdata` of predictions too, needs its columns)"
            if in_offsets else ""
        )  # fmt: skip
        raise DataError(
            f"variables {missing} used in the formula are not columns of `data`{note}; available columns: "
            f"{list(frame.columns)}. Fix the formula or rename the columns."
        )


def _check_intercept_column(frame: pd.DataFrame, terms: FormulaTerms) -> None:
    """Beside `0 + Intercept` a data column named Intercept must be ones, brms's reserved intercept column."""
    if not terms.intercept_coef or INTERCEPT not in frame.columns:
        return
    column = frame[INTERCEPT]
    others = [v for v in column.tolist() if not (_is_numeric(column) and v == 1)]
    if others:
        raise DataError(
            f"`data` has a column 'Intercept' with values other than 1 (first {others[0]!r}), but 'Intercept' "
            f"in the formula {terms.formula!r} is brms's intercept as a coefficient (a column of ones): which one is "
            "meant is ambiguous. Rename or drop the column."
        )


def _check_missing(frame: pd.DataFrame, names: Sequence[str]) -> None:
    counts = {n: int(frame[n].isna().sum()) for n in names}
    bad = {n: c for n, c in counts.items() if c}
    if bad:
        listing = ", ".join(
            f"{n!r} has {c} missing value{'s' if c > 1 else ''} (first at row {int(np.argmax(frame[n].isna()))})"
            for n, c in bad.items()
        )
        raise DataError(
            f"`data`: {listing}. mlnpe never drops rows silently: remove or impute those rows first."
        )


def _is_numeric(series: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(series.dtype) and not pd.api.types.is_bool_dtype(series.dtype)


def _numeric(series: pd.Series, name: str, role: str) -> np.ndarray:
    """Float values of a numeric column, checked to be finite."""
    values = series.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(
            f"{role} {name!r} has {int(bad.sum())} infinite value(s) (first at row {int(np.argmax(bad))}). "
            "Remove or fix those rows."
        )
    return values


def _response(series: pd.Series, name: str) -> np.ndarray:
    if not (_is_numeric(series) or pd.api.types.is_bool_dtype(series.dtype)):
        raise DataError(
            f"the response {name!r} must be numeric (or bool), got dtype {series.dtype}. Convert it to numbers "
            "(e.g. 0/1 for a binary outcome)."
        )
    return _numeric(series.astype(np.float64), name, "the response")


def _trials(series: pd.Series, name: str, y: np.ndarray, response: str) -> np.ndarray:
    """Binomial trials: positive integers, with 0 <= y <= trials and integral y."""
    if not _is_numeric(series):
        raise DataError(f"trials {name!r} must be numeric positive integers, got dtype {series.dtype}.")
    values = _numeric(series, name, "trials")
    bad = (values <= 0) | (values != np.round(values))
    if bad.any():
        raise DataError(
            f"trials {name!r} must be positive integers, got {int(bad.sum())} other value(s) (first "
            f"{float(values[bad][0]):g} at row {int(np.argmax(bad))}). Fix or drop those rows."
        )
    bad = (y < 0) | (y > values) | (y != np.round(y))
    if bad.any():
        raise DataError(
            f"the response {response!r} must count successes between 0 and trials {name!r}, got "
            f"{int(bad.sum())} other value(s) (first {float(y[bad][0]):g} at row {int(np.argmax(bad))})."
        )
    return values.astype(np.int64)


def _check_brms_duplicates(names: Sequence[str], what: str) -> None:
    renamed = [brms_rename(n) for n in names]
    dups = sorted({n for n, r in zip(names, renamed) if renamed.count(r) > 1})
    if dups:
        raise DataError(
            f"the {what} columns {dups} get the same brms name after brms's renaming of special characters. "
            "Relabel the factor levels in `data` so that they differ in letters or digits."
        )


# --- factors -----------------------------------------------------------------------------------------------


def _r_label(value: Any) -> str:
    """A value as R's as.character() prints a factor level (integral numbers without decimals)."""
    if isinstance(value, (bool, np.bool_)):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return str(int(value)) if float(value).is_integer() else format(float(value), ".15g")
    return str(value)


def _r_string_key(label: str) -> tuple[str, str]:
    """Sort key of R's sort() on strings in an English UTF-8 locale: case-insensitive, lowercase first."""
    return label.casefold(), label.swapcase()


def _codes(series: pd.Series, known: Sequence[str], name: str) -> np.ndarray:
    """Row codes indexing `known` levels; a level outside `known` raises a DataError."""
    codes, uniques = pd.factorize(series, sort=False)
    index = {label: i for i, label in enumerate(known)}
    labels = [_r_label(u) for u in np.asarray(uniques, dtype=object).tolist()]
    unseen = sorted({label for label in labels if label not in index}, key=_r_string_key)
    if unseen:
        raise DataError(
            f"variable {name!r} has level(s) {unseen} in `data` that the model has not seen; known levels: "
            f"{list(known)}. Drop those rows or refit the model with data that include them."
        )
    return np.array([index[label] for label in labels], dtype=np.int64)[codes]


def _check_not_temporal(series: pd.Series, name: str) -> None:
    """Dates and time differences are never turned into numbers or levels behind the user's back (a grouping factor
    may be dates: its levels are their labels)."""
    if pd.api.types.is_datetime64_any_dtype(series.dtype) or pd.api.types.is_timedelta64_dtype(series.dtype):
        raise DataError(
            f"column {name!r} holds {'dates' if pd.api.types.is_datetime64_any_dtype(series.dtype) else 'time spans'} "
            f"(dtype {series.dtype}), which mlnpe does not convert implicitly. Use a number, e.g. "
            f"(df[{name!r}] - df[{name!r}].min()).dt.days, or categories (df[{name!r}].astype(str))."
        )


def _check_one_kind(series: pd.Series, name: str) -> None:
    """A column of Python objects holds numbers or strings, not both: a stray value never decides its type; and
    one value per row, not lists."""
    if series.dtype != object:
        return
    values = series.tolist()
    nested = [i for i, v in enumerate(values) if isinstance(v, (list, tuple, dict, set, np.ndarray))]
    if nested:
        raise DataError(
            f"column {name!r} holds {type(values[nested[0]]).__name__}s (row {nested[0]}: {values[nested[0]]!r}); "
            "mlnpe needs one value per row. Unnest the column (e.g. df.explode(col)) or take one element per row."
        )
    numbers = [isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in values]  # fmt: skip
    if any(numbers) and not all(numbers):
        row = numbers.index(False) if sum(numbers) > len(numbers) / 2 else numbers.index(True)
        raise DataError(
            f"column {name!r} mixes numbers and other values (row {row}: {values[row]!r}); a column's type is never "
            "guessed from a stray value. Make it all numbers, or all strings / a factor (e.g. df[col].astype(str))."
        )


def _levels_of(series: pd.Series) -> tuple[str, ...]:
    """Levels of a factor column in R's order (used levels only); distinct values that R would print alike (e.g.
    floats equal to 15 digits) are a DataError, never merged."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        used = set(series.cat.codes.tolist())
        categories = [c for i, c in enumerate(series.cat.categories) if i in used]
        _check_distinct(categories, series.name)
        return tuple(_r_label(c) for c in categories)
    unique = pd.unique(series)
    _check_distinct(unique.tolist(), series.name)
    if pd.api.types.is_bool_dtype(series.dtype) or _is_numeric(series):
        return tuple(dict.fromkeys(_r_label(v) for v in sorted(unique.tolist())))
    return tuple(sorted(dict.fromkeys(_r_label(v) for v in unique.tolist()), key=_r_string_key))


def _check_distinct(values: Sequence[Any], name: Any) -> None:
    seen: dict[str, Any] = {}
    for value in values:
        label = _r_label(value)
        if label in seen and seen[label] is not value and seen[label] != value:
            raise DataError(
                f"column {name!r} has distinct values {seen[label]!r} and {value!r} that print alike ({label!r}) and "
                "would be merged into one level. Relabel them in `data`."
            )
        seen[label] = value


def _learn_kinds(
    frame: pd.DataFrame, predictors: Sequence[str]
) -> tuple[dict[str, tuple[str, ...]], tuple[str, ...]]:
    """Splits predictors into factors (with their levels) and numeric variables."""
    levels: dict[str, tuple[str, ...]] = {}
    numeric: list[str] = []
    for name in predictors:
        series = frame[name]
        if _is_numeric(series):
            numeric.append(name)
            continue
        levels[name] = _levels_of(series)
        if len(levels[name]) < 2:
            raise DataError(
                f"factor {name!r} has a single level {list(levels[name])} in `data`; a factor needs 2 or more "
                "levels. Drop it from the formula."
            )
    return levels, tuple(numeric)


def _predictor_values(
    frame: pd.DataFrame, levels: Mapping[str, tuple[str, ...]], numeric: Sequence[str], *, checked: bool
) -> dict[str, np.ndarray]:
    """Float values of numeric predictors and int level codes of factors."""
    values: dict[str, np.ndarray] = {}
    for name in numeric:
        if checked and not _is_numeric(frame[name]):
            raise DataError(
                f"variable {name!r} was numeric when the model was built, but `data` has dtype "
                f"{frame[name].dtype}. Convert the column to numbers."
            )
        values[name] = _numeric(frame[name], name, "variable")
    for name, known in levels.items():
        values[name] = _codes(frame[name], known, name)
    return values


def _group_codes(series: pd.Series, name: str, min_groups: int = 2) -> tuple[np.ndarray, tuple[str, ...]]:
    """Group codes 0..J-1 and the group levels (from the data), requiring J >= min_groups and levels that stay
    distinct as brms names them (`r_<g>[level,coef]`, whitespace as ".")."""
    levels = _levels_of(series)
    named: dict[str, str] = {}
    for level in levels:
        brms = "".join("." if ch.isspace() else ch for ch in level)
        if brms in named:
            raise DataError(
                f"the grouping factor {name!r} has levels {named[brms]!r} and {level!r}, which brms names alike "
                f"(r_{name}[{brms},...]). Relabel one of them in `data`."
            )
        named[brms] = level
    if len(levels) < min_groups:
        raise DataError(
            f"the grouping factor {name!r} has {len(levels)} level {list(levels)} in `data`; a multilevel "
            "model needs 2 or more groups. Add groups or fit a single-level model."
        )
    return _codes(series, levels, name), levels


# --- offsets -----------------------------------------------------------------------------------------------

_OFFSET_DOMAINS = {  # function -> (which arguments are outside its domain, what the arguments must be)
    "log": (lambda v: v <= 0, "positive"), "log2": (lambda v: v <= 0, "positive"),
    "log10": (lambda v: v <= 0, "positive"), "log1p": (lambda v: v <= -1, "greater than -1"),
    "sqrt": (lambda v: v < 0, "non-negative"),
}
_OFFSET_UFUNCS = {"log": np.log, "log2": np.log2, "log10": np.log10, "log1p": np.log1p, "exp": np.exp, "sqrt": np.sqrt}
_OFFSET_OPS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power}


def _offset(frame: pd.DataFrame, offsets: Sequence[OffsetTerm]) -> np.ndarray | None:
    """The sum of the offsets' values (rows,), each checked to be finite on every row; None without offsets."""
    if not offsets:
        return None
    total = np.zeros(len(frame))
    for offset in offsets:
        columns = {name: _offset_column(frame[name], name, offset) for name in offset.variables}
        with np.errstate(all="ignore"):  # non-finite results are reported below, by row
            values = _evaluate_offset(offset.expr, columns, offset, len(frame))
        bad = ~np.isfinite(values)
        if bad.any():
            raise DataError(
                f"`data`: {offset} is not finite at {int(bad.sum())} row(s) (first {float(values[bad][0]):g} at row "
                f"{int(np.argmax(bad))}). An offset must be finite on every row: drop or fix those rows."
            )
        total += values
    return total


def _offset_column(series: pd.Series, name: str, offset: OffsetTerm) -> np.ndarray:
    if not _is_numeric(series):
        raise DataError(
            f"`data`: column {name!r} of {offset} must be numeric, got dtype {series.dtype} (first value "
            f"{series.iloc[0]!r}). Convert it to numbers, e.g. data[{name!r}] = data[{name!r}].astype(float)."
        )
    values = series.to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(
            f"`data`: column {name!r} of {offset} has {int(bad.sum())} infinite value(s) (first "
            f"{float(values[bad][0]):g} at row {int(np.argmax(bad))}). An offset must be finite on every row: "
            "remove or fix those rows."
        )
    return values


def _evaluate_offset(node: tuple, columns: Mapping[str, np.ndarray], offset: OffsetTerm, rows: int) -> np.ndarray:
    """The values (rows,) of an offset's expression tree (`OffsetTerm.expr`)."""
    kind = node[0]
    if kind == "num":
        return np.full(rows, node[1])
    if kind == "var":
        return columns[node[1]]
    if kind == "neg":
        return -_evaluate_offset(node[1], columns, offset, rows)
    if kind == "op":
        left, right = (_evaluate_offset(child, columns, offset, rows) for child in node[2:])
        return _OFFSET_OPS[node[1]](left, right)
    function, argument = node[1], _evaluate_offset(node[2], columns, offset, rows)
    outside, need = _OFFSET_DOMAINS.get(function, (lambda v: np.zeros(v.shape, dtype=bool), ""))
    bad = outside(argument)
    if bad.any():
        raise DataError(
            f"`data`: {offset} takes {function}() of {int(bad.sum())} value(s) that are not {need} (first "
            f"{float(argument[bad][0]):g} at row {int(np.argmax(bad))}). An offset must be finite on every row: drop "
            "or fix those rows."
        )
    return _OFFSET_UFUNCS[function](argument)


# --- columns -----------------------------------------------------------------------------------------------


def _predictors(terms: FormulaTerms) -> tuple[str, ...]:
    """Variables of X and Z, in formula order (`Intercept` of `0 + Intercept` is no variable)."""
    crossed = tuple(t for c in terms.crossed for t in c.terms)
    names = (v for term in terms.terms + terms.group_terms + crossed if term != (INTERCEPT,) for v in term)
    return tuple(dict.fromkeys(names))


def _plans(
    terms: FormulaTerms, levels: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[tuple[str, _Column], ...], tuple[tuple[str, _Column], ...]]:
    """(name, column) lists of X (without the default intercept) and Z (with "Intercept" first if varying)."""
    # brms codes factors beside `0 + Intercept` as with an intercept (treatment contrasts, no cell means)
    x_plan = _plan(terms.intercept or terms.intercept_coef, terms.terms, levels)
    return x_plan, _term_plan(terms.group_intercept, terms.group_terms, levels)


def _term_plan(
    intercept: bool, terms: Sequence[tuple[str, ...]], levels: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[str, _Column], ...]:
    """(name, column) list of a group-level term, with "Intercept" first if varying."""
    plan = _plan(intercept, terms, levels)
    return (("Intercept", ()),) + plan if intercept else plan


def _plan(
    intercept: bool, terms: Sequence[tuple[str, ...]], levels: Mapping[str, tuple[str, ...]]
) -> tuple[tuple[str, _Column], ...]:
    """The columns of one model part, coded and named as R's model.matrix does."""
    full = _full_dummies(intercept, terms, levels)
    plan: list[tuple[str, _Column]] = []
    for term, dummies in zip(terms, full):
        columns: list[tuple[str, _Column]] = [("", ())]
        for var in term:
            if var in levels:
                kept = levels[var] if var in dummies else levels[var][1:]
                options = [(f"{var}{level}", (var, level)) for level in kept]
            else:
                options = [(var, (var, None))]
            # earlier variables vary fastest, as in model.matrix
            columns = [(f"{n}:{o}" if n else o, c + (p,)) for o, p in options for n, c in columns]
        plan.extend(columns)
    return tuple(plan)


def _full_dummies(
    intercept: bool, terms: Sequence[tuple[str, ...]], levels: Mapping[str, tuple[str, ...]]
) -> list[set[str]]:
    """Per term, the factors coded by an indicator for every level instead of contrasts."""
    full: list[set[str]] = []
    for k, term in enumerate(terms):
        rest_in_earlier = {
            var: not (set(term) - {var}) or any(set(term) - {var} <= set(terms[i]) for i in range(k))
            for var in term
            if var in levels
        }
        full.append({var for var, contrast in rest_in_earlier.items() if not contrast})
    if not intercept:
        for term, dummies in zip(terms, full):
            first = next((var for var in term if var in levels), None)
            if first is not None:
                dummies.add(first)
                break
    return full


def _evaluate(
    plan: Sequence[tuple[str, _Column]],
    values: Mapping[str, np.ndarray],
    levels: Mapping[str, tuple[str, ...]],
    rows: int,
) -> np.ndarray:
    """(rows, columns) matrix of a plan: products of numeric values and level indicators."""
    out = np.ones((rows, len(plan)), dtype=np.float64)
    for j, (_, column) in enumerate(plan):
        for var, level in column:
            out[:, j] *= values[var] if level is None else values[var] == levels[var].index(level)
    return out
