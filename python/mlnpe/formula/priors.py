"""Priors of brms-style formula models: which proper prior applies to which parameter, as in brms.

* `PriorSpec` / `prior` / `priors_from_table` / `as_prior_specs`: user priors per class, coefficient and group,
  as in ``brms::prior()`` / ``set_prior()`` and ``brmsprior`` tables.
* `ParamSlot` / `param_slots`: one parameter (block) of a model that needs a prior, with its brms name.
* `default_priors`: brms 2.18's data-based defaults, except for class ``b``.
* `resolve_priors` / `design_priors` / `prior_table`: the prior in force for every slot, with brms's precedence,
  and a ``prior_summary``-like table.

The distributions themselves (`PriorDist`, `parse_prior`) are in :mod:`mlnpe.formula.distributions`.

Differences from brms, because mlnpe simulates parameters from the prior to train its networks:

* Every prior must be proper: flat priors (``""``, ``"flat"``) are errors.
* brms's default for class ``b`` is flat. mlnpe uses rstanarm's autoscaled ``normal(0, 2.5 * sd_y / sd_x)``
  on the link scale (``sd_y = 1`` for non-identity links; ``sd_y = sd(log y)`` for lognormal).
* brms's default ``shape ~ gamma(0.01, 0.01)`` (negbinomial, Gamma) is proper but puts about 80% of its
  mass below 1e-6: simulations from it are degenerate (all zeros, or overflowing counts), so a network trained
  on them learns nothing about the shapes that real data support. mlnpe's default is ``gamma(2, 0.1)`` (mean
  20, 99% between 1.5 and 66), the same as brms's default for ``nu``; set your own with
  ``prior("gamma(...)", class_="shape")``. The Stan reference uses the same prior, so comparisons stay exact.
* ``nu ~ gamma(2, 0.1)`` with ``lb = 1`` (student) is brms's default and is kept.
* With brms's ``0 + Intercept`` the intercept is the class ``b`` coefficient ``Intercept`` (as in brms: priors on
  class ``b`` apply to it, ``coef = "Intercept"`` targets it alone, and there is no ``Intercept`` class). Its
  default (flat in brms) is the data-based default of the ``Intercept`` class, ``student_t(3, loc, scale)``; as
  the predictors are not centred, set your own when they are far from 0.

Scale classes (``sd``, ``sigma``, ``shape``) get ``lb = 0`` and ``nu`` gets ``lb = 1`` automatically, so that
e.g. ``student_t(3, 0, 2.5)`` on ``sd`` is a half-Student-t, as in brms.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError, SpecError
from .distributions import REAL_FAMILIES, PriorDist, format_number, natural_support, parse_prior
from .families import Family, get_family
from .names import brms_rename

if TYPE_CHECKING:
    from .design import Design
    from .terms import FormulaTerms

__all__ = [
    "PRIOR_CLASSES",
    "PriorSpec",
    "prior",
    "priors_from_table",
    "as_prior_specs",
    "ParamSlot",
    "param_slots",
    "default_priors",
    "resolve_priors",
    "design_priors",
    "prior_table",
]

#: Parameter classes, as in brms.
PRIOR_CLASSES: tuple[str, ...] = ("Intercept", "b", "sd", "cor", "sigma", "shape", "nu")

_LOWER_BOUNDS = {"sd": 0.0, "sigma": 0.0, "shape": 0.0, "nu": 1.0}


# ----------------------------------------------------------------------------------------------------------
# User specifications
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorSpec:
    """A user prior for a class of parameters, optionally restricted to a coefficient and/or a group.

    Mirrors ``brms::set_prior``; the target parameters are selected by ``class_``, ``coef`` and ``group``.

    Attributes:
        prior: A prior string, e.g. ``"normal(0, 5)"``.
        class_: One of `PRIOR_CLASSES`.
        coef: Coefficient name (``b`` and ``sd``), or ``""`` for all.
        group: Grouping factor (``sd`` and ``cor``), or ``""`` for all.
        lb: Lower truncation bound or None (scale classes get their natural bound automatically).
        ub: Upper truncation bound or None.

    Raises:
        SpecError: If the prior does not parse, the class is unknown, or ``coef``/``group`` are given for a
            class that has none.
    """

    prior: str
    class_: str = "b"
    coef: str = ""
    group: str = ""
    lb: float | None = None
    ub: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.class_, str) or self.class_ not in PRIOR_CLASSES:
            raise SpecError(f"unknown prior class {self.class_!r}; valid classes are {list(PRIOR_CLASSES)}.")
        for field_name in ("coef", "group"):
            value = getattr(self, field_name)
            if not isinstance(value, str):
                raise SpecError(f"prior `{field_name}` must be a string, got {type(value).__name__}: {value!r}.")
        if self.coef and self.class_ not in ("b", "sd"):
            raise SpecError(
                f"prior class {self.class_!r} takes no `coef`, got coef={self.coef!r}; coefficients are "
                f"selected only for classes 'b' and 'sd'."
            )
        if self.group and self.class_ not in ("sd", "cor"):
            raise SpecError(
                f"prior class {self.class_!r} takes no `group`, got group={self.group!r}; groups are selected "
                f"only for classes 'sd' and 'cor'."
            )
        _ = self.dist  # validates the prior text and the bounds

    @property
    def dist(self) -> PriorDist:
        """The parsed prior with this spec's bounds."""
        return parse_prior(self.prior).with_bounds(self.lb, self.ub)

    @property
    def key(self) -> tuple[str, str, str]:
        """``(class, coef, group)``."""
        return self.class_, self.coef, self.group

    def __str__(self) -> str:
        parts = [f"class = {self.class_}"] + [
            f"{n} = {v}" for n, v in (("coef", self.coef), ("group", self.group)) if v
        ]
        return f"prior({self.prior}, {', '.join(parts)})"


def prior(
    text: str,
    class_: str = "b",
    coef: str = "",
    group: str = "",
    lb: float | None = None,
    ub: float | None = None,
) -> PriorSpec:
    """Builds a `PriorSpec`, mirroring ``brms::prior()`` / ``set_prior()``.

    Example:
        >>> prior("normal(0, 5)", coef="Days")
        PriorSpec(prior='normal(0, 5)', class_='b', coef='Days', group='', lb=None, ub=None)
    """
    return PriorSpec(text, class_, coef, group, lb, ub)


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() == ""


def _is_column(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, Mapping))


def _bound(row: Mapping[str, Any], name: str, i: int) -> float | None:
    """A prior table row's `lb` or `ub`: None when empty, else a number."""
    value = row.get(name)
    if _missing(value):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise SpecError(f"prior table row {i}: `{name}` must be a number or empty, got {value!r}.") from None


def priors_from_table(table: Any) -> list[PriorSpec]:
    """Reads user priors from a ``brmsprior``-shaped table.

    Args:
        table: A pandas DataFrame, a dict of columns, or an iterable of row dicts, with columns ``prior``,
            ``class`` and optionally ``coef``, ``group``, ``lb``, ``ub`` (empty, None or NaN = none). Columns
            ``resp``, ``dpar`` and ``nlpar`` must be empty if present; ``source`` is ignored.

    Returns:
        One `PriorSpec` per row.

    Raises:
        SpecError: If a column is missing or a row is invalid (the message names the row).
    """
    if hasattr(table, "to_dict") and hasattr(table, "columns"):
        rows = table.to_dict("records")
    elif isinstance(table, Mapping):
        # a scalar is a column of one row (R's length-1 vectors arrive as scalars)
        columns = {k: list(v) if _is_column(v) else [v] for k, v in table.items()}
        lengths = {len(v) for v in columns.values()}
        if len(lengths) > 1:
            sizes = {k: len(v) for k, v in columns.items()}
            raise SpecError(f"prior table columns must have equal lengths, got {sizes}; pass a rectangular table.")
        n = lengths.pop() if lengths else 0
        rows = [{k: v[i] for k, v in columns.items()} for i in range(n)]
    elif isinstance(table, Iterable) and not isinstance(table, (str, bytes)):
        rows = list(table)
    else:
        raise SpecError(
            f"prior table must be a DataFrame, a dict of columns or a list of row dicts, got {type(table).__name__}."
        )
    specs = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping) or "prior" not in row or "class" not in row:
            raise SpecError(
                f"prior table row {i} must have columns 'prior' and 'class', got {row!r}; use brms's column names."
            )
        for unsupported in ("resp", "dpar", "nlpar"):
            if not _missing(row.get(unsupported)):
                raise SpecError(
                    f"prior table row {i}: column {unsupported!r} = {row[unsupported]!r} is not supported by mlnpe; "
                    f"leave it empty."
                )
        bounds = [_bound(row, b, i) for b in ("lb", "ub")]
        text = row["prior"]
        try:
            specs.append(
                PriorSpec(
                    "" if _missing(text) else str(text),
                    str(row["class"]),
                    "" if _missing(row.get("coef")) else str(row["coef"]),
                    "" if _missing(row.get("group")) else str(row["group"]),
                    *bounds,
                )
            )
        except SpecError as err:
            raise SpecError(f"prior table row {i}: {err}") from None
    return specs


def as_prior_specs(prior: Any) -> list[PriorSpec]:
    """User priors from any accepted form: None, a `PriorSpec`, a dict of its fields, a prior string (class ``b``,
    as ``brms::set_prior("normal(0, 1)")``), a ``brmsprior``-like data frame (see `priors_from_table`), or a list
    of these.

    Raises:
        SpecError: anything else, named with its type.
    """
    if prior is None:
        return []
    if isinstance(prior, PriorSpec):
        return [prior]
    if isinstance(prior, str):
        return [PriorSpec(prior)]
    if isinstance(prior, dict):
        try:
            return [PriorSpec(**prior)]
        except TypeError as e:
            raise SpecError(f"`prior` entry {prior!r} is not a prior's fields ({e}); use prior('normal(0, 1)', 'b').") from None
    if hasattr(prior, "to_dict") and hasattr(prior, "columns"):  # a brmsprior-like data frame
        return list(priors_from_table(prior))
    if not isinstance(prior, (list, tuple)):
        raise SpecError(
            f"`prior` must be prior() objects, prior strings, a brmsprior-like table or a list of them, got "
            f"{type(prior).__name__} {prior!r}; e.g. prior=[prior('normal(0, 5)', 'b')]."
        )
    out = []
    for p in prior:
        out.extend(as_prior_specs(p))
    return out


# ----------------------------------------------------------------------------------------------------------
# Parameter slots
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamSlot:
    """One parameter (or, for ``cor``, one correlation matrix) that needs a prior.

    Attributes:
        class_: One of `PRIOR_CLASSES`.
        coef: Coefficient (``b``, ``sd``), else ``""``.
        group: Grouping factor (``sd``, ``cor``), else ``""``.
        name: brms name; derived when empty: ``b_Intercept``, ``b_<coef>``, ``sd_<group>__<coef>``,
            ``cor_<group>``, ``sigma``, ``shape``, ``nu``.
        lb: Natural lower bound; derived when None: 0 for ``sd``, ``sigma``, ``shape``, 1 for ``nu``.

    Raises:
        SpecError: If the class is unknown or ``coef``/``group`` are missing or not allowed.
    """

    class_: str
    coef: str = ""
    group: str = ""
    name: str = ""
    lb: float | None = None

    def __post_init__(self) -> None:
        if self.class_ not in PRIOR_CLASSES:
            raise SpecError(f"unknown parameter class {self.class_!r}; valid classes are {list(PRIOR_CLASSES)}.")
        needs_coef = self.class_ in ("b", "sd")
        needs_group = self.class_ in ("sd", "cor")
        if bool(self.coef) != needs_coef or bool(self.group) != needs_group:
            raise SpecError(
                f"parameter class {self.class_!r} needs "
                f"{'a coef' if needs_coef else 'no coef'} and {'a group' if needs_group else 'no group'}, "
                f"got coef={self.coef!r}, group={self.group!r}."
            )
        if not self.name:
            name = {
                "Intercept": "b_Intercept",
                "b": f"b_{self.coef}",
                "sd": f"sd_{self.group}__{self.coef}",
                "cor": f"cor_{self.group}",
            }.get(self.class_, self.class_)
            object.__setattr__(self, "name", name)
        if self.lb is None and self.class_ in _LOWER_BOUNDS:
            object.__setattr__(self, "lb", _LOWER_BOUNDS[self.class_])

    def matches(self, spec: PriorSpec) -> bool:
        """Whether a user prior applies to this slot."""
        return (
            spec.class_ == self.class_ and spec.coef in ("", self.coef) and spec.group in ("", self.group)
        )

    def keys(self) -> list[tuple[str, str, str]]:
        """The ``(class, coef, group)`` keys a user prior may use to reach this slot."""
        out = [(self.class_, "", "")]
        if self.coef:
            out.append((self.class_, self.coef, ""))
        if self.group:
            out.append((self.class_, "", self.group))
        if self.coef and self.group:
            out.append((self.class_, self.coef, self.group))
        return out


def param_slots(design: Design, terms: FormulaTerms, family: Family) -> list[ParamSlot]:
    """The parameters of a formula model that need a prior, in brms's order: ``Intercept``, ``b`` per column of X,
    ``sd`` per column of Z of every grouping factor (the primary one first), ``cor`` (correlated terms with 2 or
    more coefficients), the family's parameters."""
    slots = []
    if design.intercept:
        slots.append(ParamSlot("Intercept", "", "", "Intercept"))
    slots += [ParamSlot("b", x, "", f"b_{brms_rename(x)}") for x in design.x_names]
    factors = [(terms.group, design.z_names, terms.correlated)]
    factors += [(c.group, d.z_names, c.correlated) for c, d in zip(terms.crossed, design.crossed)]
    for g, z_names, _ in factors:
        slots += [ParamSlot("sd", z, g, f"sd_{g}__{brms_rename(z)}") for z in z_names]
    for g, z_names, correlated in factors:
        if correlated and len(z_names) > 1:
            slots.append(ParamSlot("cor", "", g, f"cor_{g}"))
    slots += [ParamSlot(name) for name, _ in family.aux]
    return slots


# ----------------------------------------------------------------------------------------------------------
# Defaults
# ----------------------------------------------------------------------------------------------------------

_DATA_LINKS = ("identity", "log", "inverse", "sqrt", "1/mu^2")


def _mad(x: np.ndarray) -> float:
    """R's ``mad``: 1.4826 * median absolute deviation from the median."""
    return 1.4826 * float(np.median(np.abs(x - np.median(x))))


def _signif(x: float, digits: int) -> float:
    return float(f"{x:.{digits}g}")


def _like_factor(y: np.ndarray) -> bool:
    """brms's ``is_like_factor``: booleans, strings, categoricals and other objects."""
    return y.dtype.kind in "bOUS" or str(y.dtype) == "category"


def default_priors(
    family_name: str,
    link: str | None,
    y: Any,
    sd_x: Mapping[str, float] | None = None,
    trials: Any = None,
) -> dict[str, PriorDist]:
    """Default priors per class, following brms 2.18 except for class ``b``.

    * ``Intercept``: ``student_t(3, loc, scale)`` with ``loc = round(median(link(y)), 1)`` and
      ``scale = max(2.5, round(mad(link(y)), 1))`` for identity/log links and non-factor-like ``y`` (log links
      replace ``y == 0`` by 0.1 first; lognormal uses ``log y``), else ``student_t(3, 0, 2.5)``. The intercept
      is that of mean-centred predictors.
    * ``sd``, ``sigma``: ``student_t(3, 0, scale)`` with ``lb = 0``; ``cor``: ``lkj(1)``;
      ``shape``: ``gamma(2, 0.1)`` with ``lb = 0`` (brms: gamma(0.01, 0.01), see the module docstring); ``nu``: ``gamma(2, 0.1)`` with ``lb = 1``.
    * ``b`` (brms: flat): ``normal(0, 2.5 * sd_y)``, the prior of a coefficient of a predictor with unit SD;
      `resolve_priors` divides the scale by each predictor's SD. ``sd_y`` is the SD of ``link(y)`` for
      identity links (``log y`` for lognormal) and 1 otherwise. With ``sd_x``, entries ``b_<coef>`` hold
      the scaled prior ``normal(0, 2.5 * sd_y / sd_x[coef])`` of each coefficient. Scales of ``b`` priors are
      rounded to 3 significant digits.

    Args:
        family_name: A family name accepted by `get_family`.
        link: The link (only the family's default is supported) or None.
        y: The observed responses, any shape.
        sd_x: Standard deviations of the population-level predictors by coefficient name (optional).
        trials: Binomial trials; accepted for a uniform call signature but unused, because brms's defaults
            under the logit link do not depend on the data.

    Returns:
        Priors keyed by class (``Intercept``, ``b``, ``sd``, ``cor`` and the family's parameters), plus
        ``b_<coef>`` keys when ``sd_x`` is given.

    Raises:
        SpecError: If the family or link is not supported.

    Example:
        >>> str(default_priors("bernoulli", "logit", [0, 1, 1])["Intercept"])
        'student_t(3, 0, 2.5)'
    """
    family = get_family({"family": family_name, "link": link} if link is not None else family_name)
    y_arr = np.asarray(y)
    loc, scale, sd_y = 0.0, 2.5, 1.0
    data_based = (family.link in _DATA_LINKS or family.name == "lognormal") and not _like_factor(y_arr)
    if data_based:
        y_link = family.link_numpy(y_arr.astype(np.float64)).reshape(-1)
        y_link = y_link[np.isfinite(y_link)]
        if y_link.size:
            loc = round(float(np.median(y_link)), 1) + 0.0  # + 0.0 turns -0.0 into 0.0
            scale_y = round(_mad(y_link), 1)
            if math.isfinite(scale_y):
                scale = max(2.5, scale_y)
        if family.link == "identity" and y_link.size > 1:
            sd = float(np.std(y_link, ddof=1))
            sd_y = sd if math.isfinite(sd) and sd > 0 else 1.0
    out = {
        "Intercept": PriorDist("student_t", (3.0, loc, scale)),
        "b": PriorDist("normal", (0.0, _signif(2.5 * sd_y, 3))),
        "sd": PriorDist("student_t", (3.0, 0.0, scale), lb=0.0),
        "cor": PriorDist("lkj", (1.0,)),
    }
    aux_defaults = {
        "sigma": PriorDist("student_t", (3.0, 0.0, scale), lb=0.0),
        "shape": PriorDist("gamma", (2.0, 0.1), lb=0.0),
        "nu": PriorDist("gamma", (2.0, 0.1), lb=1.0),
    }
    for name in family.aux_names:
        out[name] = aux_defaults[name]
    for coef, sd in (sd_x or {}).items():
        out[f"b_{coef}"] = _scaled_b(out["b"], coef, sd)
    return out


def _scaled_b(unit: PriorDist, coef: str, sd_x: float) -> PriorDist:
    """Divides the scale of a unit-predictor ``b`` prior by the predictor's SD."""
    sd_x = float(sd_x)
    # a constant predictor (sd 0) has no scale to adapt to: keep the unit-scale prior
    if not math.isfinite(sd_x) or sd_x <= 0:
        return unit
    return PriorDist("normal", (0.0, _signif(unit.args[1] / sd_x, 3)))


# ----------------------------------------------------------------------------------------------------------
# Resolution
# ----------------------------------------------------------------------------------------------------------


def _specificity(spec: PriorSpec) -> int:
    """brms precedence: class+coef+group (3) > class+group (2) > class+coef (1) > class (0)."""
    return 3 if spec.coef and spec.group else 2 if spec.group else 1 if spec.coef else 0


def _apply_slot(slot: ParamSlot, dist: PriorDist, source: str) -> PriorDist:
    """Applies the slot's natural bound and checks that the prior's support fits the parameter."""
    where = f"{source} prior {dist} for {slot.name} (class {slot.class_!r})"
    if (slot.class_ == "cor") != (dist.family == "lkj"):
        fix = "use lkj(eta), e.g. lkj(2)" if slot.class_ == "cor" else "lkj priors are only for class 'cor'"
        raise SpecError(f"{where} does not fit the parameter's support; {fix}.")
    if slot.class_ in ("b", "Intercept") and dist.family not in REAL_FAMILIES:
        lo, hi = natural_support(dist.family, dist.args)
        raise SpecError(
            f"{where} has support ({format_number(lo)}, {format_number(hi)}) but the parameter is real-valued; use one of "
            f"{', '.join(REAL_FAMILIES)} (with lb/ub for a bounded prior)."
        )
    if slot.lb is not None:
        lb = slot.lb if dist.lb is None else max(slot.lb, dist.lb)
        try:
            dist = dist.with_bounds(lb, dist.ub)
        except SpecError as err:
            raise SpecError(f"{where} conflicts with the parameter's lower bound {format_number(slot.lb)}: {err}") from None
    dist.check_float32(where)  # the parameter is simulated from it
    return dist


def _default_for(
    slot: ParamSlot, defaults: Mapping[str, PriorDist], sd_x: Mapping[str, float] | None
) -> PriorDist:
    if slot.class_ == "b" and slot.name in defaults:
        return defaults[slot.name]
    if slot.class_ not in defaults:
        raise SpecError(
            f"no default prior for {slot.name} (class {slot.class_!r}); defaults cover {sorted(defaults)}; "
            f"set one with prior(..., class_={slot.class_!r})."
        )
    dist = defaults[slot.class_]
    if slot.class_ == "b" and sd_x is not None:
        if slot.coef not in sd_x:
            raise SpecError(
                f"`sd_x` has no entry for coefficient {slot.coef!r}; pass the standard deviation of every "
                f"population-level predictor (got {sorted(sd_x)})."
            )
        dist = _scaled_b(dist, slot.coef, sd_x[slot.coef])
    return dist


def resolve_priors(
    slots: Sequence[ParamSlot],
    user: Sequence[PriorSpec],
    defaults: Mapping[str, PriorDist],
    sd_x: Mapping[str, float] | None = None,
) -> list[tuple[ParamSlot, PriorDist, str]]:
    """The prior in force for every parameter slot.

    A user prior applies to a slot when its class matches and its ``coef``/``group`` are empty or equal to the
    slot's; among several, brms's precedence picks class+coef+group, then class+group, then class+coef,
    then class. Slots without a user prior get their class default; for class ``b`` the default is
    ``defaults["b_<coef>"]`` if present, else ``defaults["b"]`` with its scale divided by ``sd_x[coef]``.
    Natural lower bounds of scale classes are applied (half-distributions), as in brms.

    Args:
        slots: The model's parameters.
        user: User priors.
        defaults: Priors by class, e.g. from `default_priors`.
        sd_x: Predictor SDs by coefficient name, or None to use ``defaults["b"]`` unscaled.

    Returns:
        ``(slot, prior, source)`` per slot in order, ``source`` being ``"user"`` or ``"default"``.

    Raises:
        SpecError: If a user prior matches no slot (the message lists the valid ``(class, coef, group)``
            combinations), two user priors have the same target, a prior's support conflicts with its
            parameter (e.g. beta for ``b``, lkj for ``sd``, non-lkj for ``cor``), a default is missing, or
            ``sd_x`` lacks a coefficient.
    """
    seen: dict[tuple[str, str, str], PriorSpec] = {}
    for spec in user:
        if not isinstance(spec, PriorSpec):
            raise SpecError(
                f"user priors must be PriorSpec objects (see `prior()`), got {type(spec).__name__}: {spec!r}."
            )
        if spec.key in seen:
            raise SpecError(
                f"two user priors target class={spec.key[0]!r}, coef={spec.key[1]!r}, group={spec.key[2]!r}: "
                f"{seen[spec.key]} and {spec}; keep one."
            )
        seen[spec.key] = spec
        if not any(slot.matches(spec) for slot in slots):
            valid = sorted({key for slot in slots for key in slot.keys()})
            listing = ", ".join(f"(class={c!r}, coef={k!r}, group={g!r})" for c, k, g in valid)
            hint = ""
            if spec.class_ == "Intercept" and ("b", "Intercept", "") in valid:
                hint = (" With `0 + Intercept` the intercept is the class 'b' coefficient 'Intercept', as in brms: use "
                        "prior(..., class_='b', coef='Intercept').")  # fmt: skip
            raise SpecError(
                f"user {spec} matches no parameter of the model; valid combinations are: {listing}.{hint}"
            )
    out = []
    for slot in slots:
        candidates = [spec for spec in user if slot.matches(spec)]
        if candidates:
            best = max(candidates, key=_specificity)
            dist, source = _apply_slot(slot, best.dist, "user"), "user"
        else:
            dist, source = _apply_slot(slot, _default_for(slot, defaults, sd_x), "default"), "default"
        out.append((slot, dist, source))
    return out


def design_priors(
    design: Design, terms: FormulaTerms, family: Family, user: Sequence[PriorSpec]
) -> list[tuple[ParamSlot, PriorDist, str]]:
    """The prior in force for every parameter of a formula model: `resolve_priors` over `param_slots`, with the
    data-based `default_priors` of the design's response and the SDs of its population-level columns (the
    coefficient Intercept of `0 + Intercept` gets the default of the Intercept class)."""
    sd_x = {name: float(np.std(design.X[:, k], ddof=1)) if len(design.y) > 1 else 1.0
            for k, name in enumerate(design.x_names)}
    try:
        defaults = default_priors(family.name, family.link, design.y, sd_x=sd_x, trials=design.trials)
    except SpecError as error:  # the defaults scale with the data: data beyond float32 give no proper default
        raise DataError(
            f"the scale of the data gives no default prior that mlnpe can simulate from ({error}) Rescale the response "
            f"{terms.response!r} and the covariates (e.g. other units)."
        ) from None
    if terms.intercept_coef:  # `0 + Intercept`: the Intercept class's default, not a slope's (see the module doc)
        defaults["b_Intercept"] = defaults["Intercept"]
    return resolve_priors(param_slots(design, terms, family), user, defaults, sd_x)


def prior_table(resolved: Sequence[tuple[ParamSlot, PriorDist, str]]) -> Any:
    """A ``prior_summary``-like table of resolved priors.

    Args:
        resolved: Output of `resolve_priors`.

    Returns:
        A pandas DataFrame with one row per slot and columns ``prior, class, coef, group, lb, ub, source``;
        bounds are strings as in brms (``""`` for none).
    """
    import pandas as pd

    rows = [
        {
            "prior": str(dist),
            "class": slot.class_,
            "coef": slot.coef,
            "group": slot.group,
            "lb": "" if dist.lb is None else format_number(dist.lb),
            "ub": "" if dist.ub is None else format_number(dist.ub),
            "source": source,
        }
        for slot, dist, source in resolved
    ]
    return pd.DataFrame(rows, columns=["prior", "class", "coef", "group", "lb", "ub", "source"])
