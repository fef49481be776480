"""The Stan program and data of a formula model: exactly the model that mlnpe simulates, for reference fits.

mlnpe's amortized posteriors are checked against NUTS on the same model. :func:`stan_program` writes the
Stan program of a :class:`~mlnpe.formula.api.FormulaNPE` (its formula, family and resolved priors),
:func:`stan_data` the data dict of a dataset, and :func:`brms_variable_names` the brms names of the draws;
:func:`mlnpe.stan.fit_stan` compiles and samples the program.

The model is mlnpe's, which follows brms's Stan program (``make_stancode``):

* ``eta = Intercept + (X - x_means) * b + sum_i sum_m Z_i[, m] .* r_i[group_i, m] + offsets`` (i over the grouping
  factors, 1 the primary one), where ``x_means`` are the
  centring means **stored in the model** (fixed when it was built), passed as data and never recomputed, so that
  ``Intercept`` means the same as in the amortizer; ``b_Intercept = Intercept - dot_product(x_means, b)``. With
  ``0 + Intercept`` there is no ``Intercept``: X holds a column of ones, ``b_Intercept`` is an element of ``b`` and
  ``x_means`` are 0. ``offsets`` (data, the sum of the formula's ``offset()`` terms) is added to ``mu`` as brms adds it;
* non-centred group-level effects: ``z ~ std_normal()``; correlated effects
  ``r = (diag_pre_multiply(sd, L) * z)'`` with ``L ~ lkj_corr_cholesky(eta)`` (the LKJ(eta) prior on the
  correlation matrix ``L L'``), uncorrelated ones ``r[, m] = sd[m] * z[m]'``;
* every prior exactly as in ``model.resolved``, truncation terms included (half-distributions on scales);
  parameters are declared with the bounds of their prior's support (``sd``, ``sigma``, ``shape``
  ``<lower=0>``, ``nu`` ``<lower=1>``);
* the family's likelihood from :func:`mlnpe.formula.families.stan_likelihood`.

Example:
    >>> from mlnpe.formula import FormulaNPE                                           # doctest: +SKIP
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df)                                   # doctest: +SKIP
    >>> print(stan_program(model))                                                      # doctest: +SKIP
    >>> stan_data(model)["N"], brms_variable_names(model, ["a", "b"])[:2]               # doctest: +SKIP
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import DataError, SpecError

if TYPE_CHECKING:  # FormulaNPE imports the estimator (torch): annotations only
    from .api import FormulaNPE
    from .design import Design
    from .priors import ParamSlot, PriorDist

__all__ = [
    "stan_program",
    "stan_data",
    "stan_design",
    "design_stan_data",
    "stan_variables",
    "brms_variable_names",
    "brms_columns",
    "stan_real",
]

_DISCRETE = {"bernoulli": "<lower=0, upper=1>", "binomial": "<lower=0>", "poisson": "<lower=0>",
             "negbinomial": "<lower=0>"}  # fmt: skip


# ----------------------------------------------------------------------------------------------------------
# The Stan program
# ----------------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """A finite number as a Stan literal (integers without a decimal point, else the shortest repr)."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def stan_real(x: float) -> str:
    """A number as a Stan real literal, infinities as Stan functions."""
    x = float(x)
    if math.isinf(x):
        return "positive_infinity()" if x > 0 else "negative_infinity()"
    return repr(x)


def _bounds(lo: float, hi: float) -> str:
    """``<lower=lo, upper=hi>`` for the finite ends of an interval, or ``""``."""
    parts = ([f"lower={_num(lo)}"] if math.isfinite(lo) else []) + ([f"upper={_num(hi)}"] if math.isfinite(hi) else [])
    return f"<{', '.join(parts)}>" if parts else ""


def _slots(model: FormulaNPE, class_: str) -> list[tuple[ParamSlot, PriorDist]]:
    """(slot, prior) pairs of one parameter class, in the model's order."""
    return [(slot, dist) for slot, dist, _ in model.resolved if slot.class_ == class_]


def _aux_slots(model: FormulaNPE) -> list[tuple[ParamSlot, PriorDist]]:
    names = [name for name, _ in model.family.aux]
    by_name = {slot.class_: (slot, dist) for slot, dist, _ in model.resolved}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SpecError(
            f"`model.resolved` has no prior for the family parameter(s) {missing} of family "
            f"{model.family.name!r}; build the model with FormulaNPE so that every parameter has a prior."
        )
    return [by_name[n] for n in names]


def _support(dist: PriorDist, slot: ParamSlot) -> tuple[float, float]:
    """The support of a parameter: its prior's support, within the slot's natural lower bound."""
    lo, hi = dist.support
    if slot.lb is not None:
        lo = max(lo, float(slot.lb))
    return float(lo), float(hi)


def _vector_declaration(name: str, size: str, supports: list[tuple[float, float]], tdata: list[str]) -> str:
    """Declares a vector parameter; per-element bounds go to transformed data when they differ."""
    if len(set(supports)) <= 1:
        lo, hi = supports[0] if supports else (-math.inf, math.inf)
        return f"vector{_bounds(lo, hi)}[{size}] {name};"
    lows, highs = [lo for lo, _ in supports], [hi for _, hi in supports]
    parts = []
    if any(math.isfinite(v) for v in lows):
        tdata.append(f"vector[{size}] {name}_lower = [{', '.join(stan_real(v) for v in lows)}]';")
        parts.append(f"lower={name}_lower")
    if any(math.isfinite(v) for v in highs):
        tdata.append(f"vector[{size}] {name}_upper = [{', '.join(stan_real(v) for v in highs)}]';")
        parts.append(f"upper={name}_upper")
    return f"vector<{', '.join(parts)}>[{size}] {name};"


def _vector_priors(name: str, dists: list[PriorDist]) -> list[str]:
    """Prior statements of a vector: one vectorized statement when all elements share the prior."""
    if dists and all(d == dists[0] for d in dists):
        return [dists[0].to_stan(name, n=len(dists))]
    return [d.to_stan(f"{name}[{k + 1}]") for k, d in enumerate(dists)]


@dataclass(frozen=True)
class _Factor:
    """A grouping factor in the Stan program: number i (1 the primary), its sds' and correlations' priors."""

    group: str
    sd: list[tuple[ParamSlot, PriorDist]]
    cor: tuple[ParamSlot, PriorDist] | None

    @property
    def M(self) -> int:
        return len(self.sd)


@dataclass(frozen=True)
class _Layout:
    """What the Stan program of a model contains (derived once from the model)."""

    intercept: tuple[ParamSlot, PriorDist] | None
    b: list[tuple[ParamSlot, PriorDist]]
    factors: list[_Factor]
    aux: list[tuple[ParamSlot, PriorDist]]
    discrete: bool
    trials: bool
    offset: bool

    @property
    def K(self) -> int:
        return len(self.b)


def _layout(model: FormulaNPE) -> _Layout:
    intercept = _slots(model, "Intercept")
    b, sd, cor = _slots(model, "b"), _slots(model, "sd"), _slots(model, "cor")
    x_means = np.asarray(model.x_means, dtype=float).reshape(-1)
    if len(x_means) != len(b):
        raise SpecError(
            f"`model.x_means` has {len(x_means)} entries but the model has {len(b)} population-level "
            f"coefficients ({[s.coef for s, _ in b]}); pass a model built by FormulaNPE."
        )
    factors = []
    z_names = [model.z_names] + [c.z_names for c in model.crossed]
    for group, z in zip(model.terms.groups, z_names):
        mine = [(slot, dist) for slot, dist in sd if slot.group == group]
        if [slot.coef for slot, _ in mine] != list(z) or not mine:
            raise SpecError(
                f"the group-level columns {list(z)} of {group!r} do not match its sd priors "
                f"{[s.coef for s, _ in mine]}; pass a model built by FormulaNPE."
            )
        own_cor = [(slot, dist) for slot, dist in cor if slot.group == group]
        if own_cor and len(mine) < 2:
            raise SpecError(f"{group!r} has a correlation prior but only {len(mine)} group-level coefficient.")
        factors.append(_Factor(group, mine, own_cor[0] if own_cor else None))
    name = model.family.name
    return _Layout(
        intercept=intercept[0] if intercept else None,
        b=b,
        factors=factors,
        aux=_aux_slots(model),
        discrete=name in _DISCRETE,
        trials=bool(getattr(model.family, "needs_trials", name == "binomial")),
        offset=bool(model.terms.offsets),
    )


def stan_program(model: FormulaNPE) -> str:
    """The Stan program of exactly the model that mlnpe simulates for a formula model.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE` (used: ``terms``, ``family``, ``resolved``,
            ``x_means``, ``z_names``).

    Returns:
        The Stan program text. Its data block declares exactly the keys of :func:`stan_data`: ``N``, ``Y``,
        ``trials`` (binomial), ``K``, ``X``, ``x_means`` (when K > 0), ``offsets`` (with offsets), and per grouping
        factor i (1 the primary one, then `terms.crossed`) ``M_i``, ``Z_i``, ``J_i``, ``group_i`` (1-based).
        Parameters: ``Intercept`` (centred intercept), ``b``, ``sd_i``, ``z_i``, ``L_i`` (correlated effects), the
        family parameters; transformed parameters ``r_i`` (J_i x M_i); generated quantities ``b_Intercept`` and
        ``cor_i`` (upper triangle of ``L_i L_i'``, column-major as brms).

    Raises:
        SpecError: the model's priors, centring means and group-level names are inconsistent.

    Example:
        >>> print(stan_program(FormulaNPE("y ~ x + (1 | g)", df)))                     # doctest: +SKIP
    """
    lay = _layout(model)
    K = lay.K
    terms = model.terms
    y_decl = f"array[N] int{_DISCRETE[model.family.name]} Y;" if lay.discrete else "vector[N] Y;"
    data = ["int<lower=1> N;  // rows", y_decl]
    if lay.trials:
        data.append("array[N] int<lower=0> trials;  // binomial trials")
    data.append("int<lower=0> K;  // population-level coefficients (without the default intercept)")
    if K:
        data += ["matrix[N, K] X;  // population-level design, uncentred",
                 "vector[K] x_means;  // mlnpe's stored centring means"]  # fmt: skip
    if lay.offset:
        data.append("vector[N] offsets;  // the formula's offsets, coefficient 1")
    for i, f in enumerate(lay.factors, 1):
        data += [
            f"int<lower=1> M_{i};  // group-level coefficients of {f.group}",
            f"matrix[N, M_{i}] Z_{i};  // their design",
            f"int<lower=1> J_{i};  // levels of {f.group}",
            f"array[N] int<lower=1, upper=J_{i}> group_{i};  // level of every row",
        ]
    tdata = ["matrix[N, K] Xc = X - rep_matrix(x_means', N);  // centred with the model's means"] if K else []
    params = []
    if lay.intercept:
        params.append(f"real{_bounds(*_support(lay.intercept[1], lay.intercept[0]))} Intercept;  // centred intercept")
    if K:
        params.append(_vector_declaration("b", "K", [_support(d, s) for s, d in lay.b], tdata))
    tparams = []
    for i, f in enumerate(lay.factors, 1):
        params.append(_vector_declaration(f"sd_{i}", f"M_{i}", [_support(d, s) for s, d in f.sd], tdata))
        params.append(f"matrix[M_{i}, J_{i}] z_{i};  // standardized group-level effects")
        if f.cor:
            params.append(f"cholesky_factor_corr[M_{i}] L_{i};  // Cholesky factor of the group-level correlations")
            r_def = f"r_{i} = (diag_pre_multiply(sd_{i}, L_{i}) * z_{i})';"
        else:
            r_def = f"r_{i} = diag_pre_multiply(sd_{i}, z_{i})';  // r_{i}[, m] = sd_{i}[m] * z_{i}[m]'"
        tparams += [f"matrix[J_{i}, M_{i}] r_{i};  // group-level effects of {f.group}", r_def]
    for slot, dist in lay.aux:
        params.append(f"real{_bounds(*_support(dist, slot))} {slot.class_};")
    mu = "Intercept" if lay.intercept else "rep_vector(0.0, N)"
    if lay.intercept and not K:
        mu = "rep_vector(Intercept, N)"
    if K:
        mu = f"{mu} + Xc * b" if lay.intercept else "Xc * b"
    if lay.offset:
        mu = f"{mu} + offsets" if lay.intercept or K else "offsets"
    model_block = [f"vector[N] mu = {mu};"]
    model_block += [f"mu += rows_dot_product(Z_{i}, r_{i}[group_{i}]);" for i in range(1, len(lay.factors) + 1)]
    if lay.intercept:
        model_block.append(lay.intercept[1].to_stan("Intercept"))
    if K:
        model_block += _vector_priors("b", [d for _, d in lay.b])
    for i, f in enumerate(lay.factors, 1):
        model_block += _vector_priors(f"sd_{i}", [d for _, d in f.sd])
        if f.cor:
            model_block.append(f.cor[1].to_stan(f"L_{i}"))
    for slot, dist in lay.aux:
        model_block.append(dist.to_stan(slot.class_))
    model_block += [f"target += std_normal_lpdf(to_vector(z_{i}));" for i in range(1, len(lay.factors) + 1)]
    model_block.append(model.family.stan_likelihood())
    gq = []
    if lay.intercept:
        gq.append("real b_Intercept = Intercept - dot_product(x_means, b);" if K else "real b_Intercept = Intercept;")
    for i, f in enumerate(lay.factors, 1):
        if f.cor:
            gq += [
                f"vector[{f.M * (f.M - 1) // 2}] cor_{i};  // upper triangle, column-major (brms's order)",
                "{",
                f"  matrix[M_{i}, M_{i}] Cor_{i} = multiply_lower_tri_self_transpose(L_{i});",
                "  int k = 0;",
                f"  for (j in 2:M_{i}) {{",
                "    for (i in 1:(j - 1)) {",
                "      k += 1;",
                f"      cor_{i}[k] = Cor_{i}[i, j];",
                "    }",
                "  }",
                "}",
            ]
    blocks = [("data", data), ("transformed data", tdata), ("parameters", params),
              ("transformed parameters", tparams), ("model", model_block), ("generated quantities", gq)]  # fmt: skip
    head = [
        f"// mlnpe reference model: {terms.formula}",
        f"// family: {model.family.name} (link: {model.family.link}); group-level effects"
        + "; ".join(f" of {f.group!r} (r_{i}): {', '.join(s.coef for s, _ in f.sd)} "
                    f"({'correlated' if f.cor else 'uncorrelated'})" for i, f in enumerate(lay.factors, 1)),
    ]
    body = [f"{name} {{\n" + "".join(f"  {line}\n" for line in lines) + "}" for name, lines in blocks if lines]
    return "\n".join(head) + "\n" + "\n".join(body) + "\n"


def stan_data(model: FormulaNPE, data: Any = None) -> dict[str, Any]:
    """The data dict of :func:`stan_program` for a dataset.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE`.
        data: a data frame (or dict of columns) with the model's variables; None means ``model.data``.
            Factor levels and design columns are those stored in the model (``model.grouped_data``).

    Returns:
        ``N``, ``Y`` (int array for discrete families), ``trials`` (binomial), ``K``, ``X`` (N, K) and
        ``x_means`` (K,) (only when K > 0; ``x_means`` are the model's stored means), ``offsets`` (N,) (with
        offsets), per grouping factor i ``M_i``, ``Z_i`` (N, M_i), ``J_i``, ``group_i`` (N,) 1-based, as numpy
        arrays and ints.

    Raises:
        DataError: `data` is None and the model holds no data, or the design does not match the model.
    """
    return design_stan_data(model, stan_design(model, data))


def stan_design(model: FormulaNPE, data: Any = None) -> Design:
    """The design matrices of a dataset, with the factor levels and columns stored in the model.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE`.
        data: a data frame (or dict of columns) with the model's variables; None means ``model.data``.

    Returns:
        The :class:`~mlnpe.formula.design.Design` of ``model.grouped_data(data)``.

    Raises:
        DataError: `data` is None and the model holds no data.
    """
    _, design = model.grouped_data(_model_data(model, data))
    return design


def design_stan_data(model: FormulaNPE, design: Design) -> dict[str, Any]:
    """The data dict of :func:`stan_program` for the design of a dataset (see :func:`stan_data`).

    Raises:
        DataError: the design's columns do not match the model.
    """
    lay = _layout(model)
    n = len(design.y)
    zs = [design.Z] + [c.Z for c in design.crossed]
    if design.X.shape[1] != lay.K or [z.shape[1] for z in zs] != [f.M for f in lay.factors]:
        raise DataError(
            f"`data` gives a design with {design.X.shape[1]} population-level and {[z.shape[1] for z in zs]} "
            f"group-level columns, but the model has {lay.K} and {[f.M for f in lay.factors]}; pass data with the "
            "model's variables."
        )
    if lay.discrete:
        y: np.ndarray = np.rint(design.y).astype(np.int64)
    else:
        y = np.asarray(design.y, dtype=np.float64)
    out: dict[str, Any] = {"N": n, "Y": y}
    if lay.trials:
        out["trials"] = np.asarray(design.trials, dtype=np.int64)
    out["K"] = lay.K
    if lay.K:
        out["X"] = np.asarray(design.X, dtype=np.float64)
        out["x_means"] = np.asarray(model.x_means, dtype=np.float64).reshape(-1)
    if lay.offset:
        out["offsets"] = np.asarray(design.offset, dtype=np.float64)
    codes = [(design.group, design.levels)] + [(c.codes, c.levels) for c in design.crossed]
    for i, (f, z, (code, levels)) in enumerate(zip(lay.factors, zs, codes), 1):
        out[f"M_{i}"], out[f"Z_{i}"] = f.M, np.asarray(z, dtype=np.float64)
        out[f"J_{i}"], out[f"group_{i}"] = len(levels), np.asarray(code, dtype=np.int64) + 1
    return out


def _model_data(model: FormulaNPE, data: Any) -> Any:
    if data is None:
        data = getattr(model, "data", None)
        if data is None:
            raise DataError(
                "`data` is None and the model holds no data (it was loaded without them); pass the dataset, "
                "e.g. fit_stan(model, df)."
            )
    return data


# ----------------------------------------------------------------------------------------------------------
# brms names
# ----------------------------------------------------------------------------------------------------------


def brms_variable_names(model: FormulaNPE, levels: Sequence[str]) -> list[str]:
    """brms's variable names of a formula model, in brms's order (as the mlnpe side names its draws).

    ``b_Intercept``, ``b_<x>``..., ``sd_<g>__<z>``..., ``cor_<g>__<zi>__<zj>`` (column-major upper triangle:
    (1,2), (1,3), (2,3), ...), the family parameters, then ``r_<g>[<level>,<z>]`` with all levels of the
    first coefficient first; spaces in levels become ".". Coefficient names are the slot names and coefs of
    ``model.resolved``, the source that :func:`mlnpe.formula.api.brms_names_and_values` uses too.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE`.
        levels: (J,) group levels of the dataset.

    Returns:
        The names.
    """
    lay = _layout(model)
    g = model.terms.group
    names = ["b_Intercept"] if lay.intercept else []
    names += [slot.name for slot, _ in lay.b]
    names += [slot.name for f in lay.factors for slot, _ in f.sd]
    for f in lay.factors:
        z = [slot.coef for slot, _ in f.sd]
        if f.cor:
            names += [f"cor_{f.group}__{z[i]}__{z[j]}" for j in range(len(z)) for i in range(j)]
    names += [slot.class_ for slot, _ in lay.aux]
    names += [label for c in model.crossed for label in c.labels()]
    names += [f"r_{g}[{str(level).replace(' ', '.')},{coef}]" for coef in model.z_names for level in levels]
    return names


def brms_columns(
    model: FormulaNPE, levels: Sequence[str], variables: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """Stan variables ``(chains, draws, *dims)`` -> brms-named ``(chains, draws)`` columns, in brms's order.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE`.
        levels: (J,) group levels of the dataset.
        variables: the Stan variables of :func:`stan_variables`, each ``(chains, draws, *dims)``.

    Returns:
        brms name -> ``(chains, draws)`` draws, in the order of :func:`brms_variable_names`.
    """
    lay = _layout(model)
    cols: list[np.ndarray] = []
    if lay.intercept:
        cols.append(variables["b_Intercept"])
    cols += [variables["b"][..., k] for k in range(lay.K)]
    cols += [variables[f"sd_{i}"][..., m] for i, f in enumerate(lay.factors, 1) for m in range(f.M)]
    for i, f in enumerate(lay.factors, 1):
        if f.cor:
            cols += [variables[f"cor_{i}"][..., k] for k in range(f.M * (f.M - 1) // 2)]
    cols += [variables[slot.class_] for slot, _ in lay.aux]
    for i, (f, c) in enumerate(zip(lay.factors[1:], model.crossed), 2):  # level-major, as `CrossedFactor.labels`
        cols += [variables[f"r_{i}"][..., k, m] for k in range(len(c.levels)) for m in range(f.M)]
    r = variables["r_1"]
    cols += [r[..., j, m] for m in range(lay.factors[0].M) for j in range(len(levels))]
    names = brms_variable_names(model, levels)
    if len(names) != len(cols):  # pragma: no cover - guards the two orders against drifting apart
        raise SpecError(f"internal: {len(names)} brms names for {len(cols)} Stan columns.")
    return dict(zip(names, cols))


def stan_variables(model: FormulaNPE) -> list[str]:
    """The Stan variables of :func:`stan_program` that :func:`brms_columns` reads."""
    lay = _layout(model)
    n = range(1, len(lay.factors) + 1)
    out = (["b_Intercept"] if lay.intercept else []) + (["b"] if lay.K else []) + [f"sd_{i}" for i in n]
    out += [f"cor_{i}" for i, f in zip(n, lay.factors) if f.cor] + [slot.class_ for slot, _ in lay.aux]
    return out + [f"r_{i}" for i in n]


