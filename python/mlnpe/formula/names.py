"""brms's names for the parameters of a formula model, in brms's order: one home for every brms name mlnpe writes.

* :func:`brms_rename`: brms's renaming of coefficient names (spaces and ``()[],"'?`` removed; ``+ - * / ^ =``
  become ``P M MU D E EQ``, so the factor level "fa b" gives `b_fab`).
* :func:`brms_names`: the names of a :class:`~mlnpe.formula.design.Design`'s parameters, by class.
* :func:`uncenter_intercept`: brms's `b_Intercept` from the intercept of centred predictors.
* :func:`brms_globals`, :func:`brms_local_names`, :func:`brms_names_and_values`, :func:`brms_draws`: the draws of
  a :class:`~mlnpe.formula.api.FormulaNPE` as brms names them (`b_Intercept`, `b_*`, `sd_*`, `cor_*`, family
  parameters, `r_<g>[level,coef]`), with whitespace in group levels written as ".".
* :func:`draws_from_brms`: the inverse, brms-named draws back to the model's layout (R's draws, for predictions).

This module needs neither torch nor the other stages at run time: the design stage uses :func:`brms_rename` to
reject factor levels whose brms names collide.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import DataError

if TYPE_CHECKING:
    from ..core.draws import PosteriorDraws
    from .api import FormulaNPE
    from .design import Design

__all__ = [
    "brms_draws",
    "draws_from_brms",
    "brms_globals",
    "brms_local_names",
    "brms_names",
    "brms_names_and_values",
    "brms_rename",
    "uncenter_intercept",
]

_BRMS_RENAME = (
    (" ", ""), ("(", ""), (")", ""), ("[", ""), ("]", ""), (",", ""), ('"', ""), ("'", ""), ("?", ""),
    ("+", "P"), ("-", "M"), ("*", "MU"), ("/", "D"), ("^", "E"), ("=", "EQ"),
)  # fmt: skip


def brms_rename(name: str) -> str:
    """brms's renaming of coefficient names (spaces and brackets dropped, operators spelled out)."""
    for old, new in _BRMS_RENAME:
        name = name.replace(old, new)
    return name


def brms_names(design: Design) -> dict[str, tuple[str, ...]]:
    """The brms names of the model's parameters, by class, in brms's order.

    Arguments:
        design: a design from :func:`~mlnpe.formula.design.build_design`.

    Returns:
        A dict with keys "b" (`b_Intercept` if there is an intercept, then `b_<column>`), "sd"
        (`sd_<group>__<coef>`), "cor" (`cor_<group>__<ci>__<cj>` for i < j in column-major upper-triangle
        order, only for correlated terms with 2 or more coefficients) and "r" (`r_<group>[<level>,<coef>]`,
        all levels of the first coefficient, then of the second, ...). Coefficient names pass through
        brms's renaming; whitespace in group levels becomes ".".

    Example:
        >>> from mlnpe.formula.design import build_design
        >>> from mlnpe.formula.terms import parse_formula
        >>> data = {"y": [1.0, 2, 3], "x": [0.0, 1, 2], "g": ["a", "a", "b"]}
        >>> d = build_design(parse_formula("y ~ x + (x | g)"), data)
        >>> brms_names(d)["cor"], brms_names(d)["r"][:2]
        (('cor_g__Intercept__x',), ('r_g[a,Intercept]', 'r_g[b,Intercept]'))
    """
    terms = design.info.terms
    group = terms.group
    coefs = [brms_rename(name) for name in design.z_names]
    b = (("b_Intercept",) if design.intercept else ()) + tuple(f"b_{brms_rename(n)}" for n in design.x_names)
    sd = tuple(f"sd_{group}__{c}" for c in coefs)
    cor: tuple[str, ...] = ()
    if terms.correlated:
        cor = tuple(f"cor_{group}__{coefs[i]}__{coefs[j]}" for j in range(len(coefs)) for i in range(j))
    levels = ["".join("." if ch.isspace() else ch for ch in level) for level in design.levels]
    r = tuple(f"r_{group}[{level},{c}]" for c in coefs for level in levels)
    return {"b": b, "sd": sd, "cor": cor, "r": r}


def uncenter_intercept(intercept_c: Any, b: Any, x_means: Any) -> np.ndarray:
    """brms's `b_Intercept = Intercept - dot(means_X, b)`, over any leading (draw) dimensions.

    Arguments:
        intercept_c: (...,) intercepts of the centred predictors.
        b: (..., K) population-level coefficients.
        x_means: (K,) column means of X (:attr:`~mlnpe.formula.design.Design.x_means`).

    Returns:
        (...,) intercepts on the scale of the uncentred predictors.

    Raises:
        DataError: the last dimension of `b` does not match `x_means`.
    """
    intercept_c = np.asarray(intercept_c, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    x_means = np.asarray(x_means, dtype=np.float64)
    if x_means.ndim != 1 or b.ndim < 1 or b.shape[-1] != x_means.shape[0]:
        raise DataError(
            f"`b` must have shape (..., K) with K = len(`x_means`) = {x_means.shape}, got b.shape = {b.shape}. "
            "Pass one coefficient per column of X."
        )
    return intercept_c - b @ x_means


def brms_names_and_values(model: FormulaNPE, raw: PosteriorDraws, levels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Columns in brms order: b_Intercept, b_*, sd_*, cor_*, family parameters, r_<g>[level,coef]."""
    g = model.terms.group
    names, cols = brms_globals(model, raw.global_draws)
    cols = list(np.moveaxis(cols, -1, 0))
    for m, z in enumerate(model.z_names):
        for j, level in enumerate(levels):
            names.append(f"r_{g}[{str(level).replace(' ', '.')},{brms_rename(z)}]")
            cols.append(raw.local_draws[:, j, m])
    return names, np.stack(cols, 1)


def brms_local_names(model: FormulaNPE) -> list[str]:
    """The group effects' names with the level left out, `r_<g>[,coef]` (one per coefficient)."""
    return [f"r_{model.terms.group}[,{brms_rename(z)}]" for z in model.z_names]


def brms_globals(model: FormulaNPE, gd: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The global parameters (..., G) in brms's names and order (b_Intercept uncentred, b_*, sd_*, cor_*, family
    parameters, the effects r_<f>[level,coef] of the non-primary grouping factors): (names, values (..., P))."""
    cols, names = [], []
    offset = 0
    by_kind: dict[str, list[tuple[str, np.ndarray]]] = {"b": [], "sd": [], "cor": [], "aux": [], "r": []}
    intercept = None
    for slot in model.slots:
        width = len(slot.labels)
        block = gd[..., offset : offset + width]
        offset += width
        if slot.kind == "Intercept":
            intercept = block[..., 0]
        elif slot.kind == "cor":
            m = int(slot.support.split(":")[1])
            pairs = [(i, j) for i in range(m) for j in range(i + 1, m)]
            # brms orders correlations column-major over the upper triangle: (1,2), (1,3), (2,3), (1,4), ...
            order = sorted(range(len(pairs)), key=lambda p: (pairs[p][1], pairs[p][0]))
            by_kind["cor"] += [(slot.labels[p], block[..., p]) for p in order]
        else:
            by_kind[slot.kind] += [(slot.labels[0], block[..., 0])]
    b = np.stack([v for _, v in by_kind["b"]], -1) if by_kind["b"] else np.zeros((*gd.shape[:-1], 0))
    if intercept is not None:
        names.append("b_Intercept")
        cols.append(intercept - b @ model.x_means if b.shape[-1] else intercept)
    for kind in ("b", "sd", "cor", "aux", "r"):
        for name, v in by_kind[kind]:
            names.append(name)
            cols.append(v)
    return names, np.stack(cols, -1)


def brms_draws(model: FormulaNPE, raw: PosteriorDraws, design: Design) -> Any:
    """The draws as a pandas DataFrame with brms's column names, in brms's order (`brms_names_and_values`)."""
    import pandas as pd

    names, values = brms_names_and_values(model, raw, design.levels)
    return pd.DataFrame(values, columns=names)


def draws_from_brms(model: FormulaNPE, draws: Any, levels: Sequence[str]) -> PosteriorDraws:
    """The inverse of :func:`brms_names_and_values`: brms-named draws back to the model's global and local layout.

    Arguments:
        model: the FormulaNPE the draws belong to.
        draws: a pandas DataFrame (e.g. `FormulaFit.draws`, or a subset of its rows), or a mapping of brms name
            -> (S,) values; columns beyond the model's are ignored.
        levels: the group levels of the `r_<g>[level,coef]` columns, in the design's order.

    Returns:
        PosteriorDraws with the globals on the model's scale (the intercept of centred predictors).

    Raises:
        DataError: the draws lack some of the model's brms names.
    """
    from ..core.draws import PosteriorDraws

    n_global = sum(len(slot.labels) for slot in model.slots)
    n_local = len(model.z_names)
    labels = [label for slot in model.slots for label in slot.labels]
    empty = PosteriorDraws(
        np.zeros((1, n_global)), np.zeros((1, len(levels), n_local)), tuple(labels), tuple(model.z_names),
        tuple(levels),
    )
    names, _ = brms_names_and_values(model, empty, levels)
    missing = [name for name in names if name not in draws]
    if missing:
        raise DataError(
            f"the draws lack the variables {missing[:5]}{' ...' if len(missing) > 5 else ''}; pass the draws of "
            "a fit of this model (variables must keep their brms names)."
        )

    def column(name: str) -> np.ndarray:
        return np.asarray(draws[name], dtype=np.float64)

    n_draws = len(column(names[0]))
    b_labels = [slot.labels[0] for slot in model.slots if slot.kind == "b"]
    b = np.stack([column(name) for name in b_labels], 1) if b_labels else np.zeros((n_draws, 0))
    blocks = []
    for slot in model.slots:
        if slot.kind == "Intercept":  # back to the intercept of centred predictors
            intercept = column("b_Intercept")
            blocks.append((intercept + b @ model.x_means if b.shape[1] else intercept)[:, None])
        else:
            blocks.append(np.stack([column(label) for label in slot.labels], 1))
    local_names = names[len(names) - n_local * len(levels):]
    local = np.stack([column(name) for name in local_names], 1).reshape(n_draws, n_local, len(levels))
    return PosteriorDraws(
        np.concatenate(blocks, 1), np.transpose(local, (0, 2, 1)).copy(), tuple(labels), tuple(model.z_names),
        tuple(levels),
    )
