"""Structured draws with brms's names as an ``arviz.InferenceData``, for ArviZ's summaries, LOO and plots.

:func:`to_inference_data` takes a draws table whose columns carry brms's names (``b_Intercept``, ``sd_g__x``,
``sigma``, ``r_g[a,Intercept]``) and builds the ``posterior`` group, with every bracketed family of columns as one
array variable with named dimensions and coordinates (``r_g`` with dims ``("g", "g_coef")``); pointwise
log-likelihoods, posterior predictive draws and the observed response become the ``log_likelihood``,
``posterior_predictive`` and ``observed_data`` groups. ArviZ is imported when the function is called
(``pip install arviz``); importing this module imports neither ArviZ nor torch.

For a formula fit (``FormulaFit``), whose draws, pointwise log-likelihood and predictions cover all its draws::

    idata = to_inference_data(fit.draws, log_likelihood=fit.log_lik(), posterior_predictive=fit.posterior_predict(),
                              observed_data=fit.design.y, response=fit.model.terms.response)
    arviz.loo(idata)
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import DataError
from ..version import __version__

__all__ = ["to_inference_data"]

_INDEXED = re.compile(r"^(?P<base>[^\[\]]+)\[(?P<index>[^\[\]]*)\]$")  # name[i,j]: one element of a variable


def _columns(draws: Any) -> dict[str, np.ndarray]:
    """The draws table as {column name: (draws,) float array}, in column order."""
    if hasattr(draws, "columns"):  # a pandas DataFrame
        items = [(str(name), draws[name].to_numpy()) for name in draws.columns]
    elif isinstance(draws, Mapping):
        items = [(str(name), values) for name, values in draws.items()]
    else:
        raise DataError(
            f"`draws` must be a pandas DataFrame or a mapping of column name to draws, got {type(draws).__name__}. "
            "Pass e.g. `fit.draws`."
        )
    if not items:
        raise DataError("`draws` has no columns. Pass a draws table with one column per parameter.")
    columns = {}
    for name, values in items:
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise DataError(f"column {name!r} of `draws` must be numeric: {error}.") from None
        if array.ndim != 1:
            raise DataError(f"column {name!r} of `draws` must be one value per draw, got shape {array.shape}.")
        columns[name] = array
    lengths = {array.shape[0] for array in columns.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise DataError(f"the columns of `draws` must hold the same positive number of draws, got {sorted(lengths)}.")
    return columns


def _default_dims(base: str, n_index: int) -> list[str]:
    """Dimension names of a bracketed variable: (group, group_coef) for brms's r_<group>[level,coef]."""
    if base.startswith("r_") and len(base) > 2 and n_index == 2:
        group = base[2:]
        return [group, f"{group}_coef"]
    return [f"{base}_dim_{i}" for i in range(n_index)]


def _variables(
    columns: dict[str, np.ndarray], dims: Mapping[str, Sequence[str]]
) -> tuple[dict[str, np.ndarray], dict[str, list[str]], dict[str, list[str]]]:
    """Groups the columns into variables: {name: (draws, *shape)}, {name: dims}, {dim: coordinate labels}."""
    scalars: dict[str, np.ndarray] = {}
    elements: dict[str, dict[tuple[str, ...], np.ndarray]] = {}
    for name, values in columns.items():
        match = _INDEXED.match(name)
        if match is None:
            scalars[name] = values
            continue
        index = tuple(part.strip() for part in match["index"].split(","))
        elements.setdefault(match["base"], {})[index] = values
    variables: dict[str, np.ndarray] = {}
    var_dims: dict[str, list[str]] = {}
    coords: dict[str, list[str]] = {}
    for name in columns:
        match = _INDEXED.match(name)
        base = name if match is None else match["base"]
        if base in variables:
            continue
        if base in scalars and base in elements:
            raise DataError(f"`draws` has both a column {base!r} and indexed columns {base}[...]; rename one of them.")
        if base in scalars:
            variables[base] = scalars[base]
            continue
        cells = elements[base]
        n_index = {len(index) for index in cells}
        if len(n_index) != 1:
            raise DataError(f"the columns {base}[...] of `draws` have different numbers of indices: {sorted(n_index)}.")
        labels = [list(dict.fromkeys(index[i] for index in cells)) for i in range(n_index.pop())]
        shape = tuple(len(axis) for axis in labels)
        array = np.empty((next(iter(cells.values())).shape[0], *shape))
        for position in np.ndindex(*shape):
            index = tuple(labels[i][j] for i, j in enumerate(position))
            if index not in cells:
                raise DataError(
                    f"`draws` lacks the column {base}[{','.join(index)}]: the columns {base}[...] must cover every "
                    "combination of their indices."
                )
            array[(slice(None), *position)] = cells[index]
        names = [str(d) for d in dims[base]] if base in dims else _default_dims(base, len(labels))
        if len(names) != len(labels):
            raise DataError(
                f"`dims[{base!r}]` must name {len(labels)} dimensions (the indices of {base}[...]), got {names}."
            )
        for dim, axis in zip(names, labels):
            if coords.setdefault(dim, axis) != axis:
                raise DataError(
                    f"dimension {dim!r} has the coordinates {coords[dim][:5]} in one variable and {axis[:5]} in "
                    f"{base!r}; give the variables different dimension names with `dims`."
                )
        variables[base], var_dims[base] = array, names
    return variables, var_dims, coords


def _pointwise(values: Any, argument: str, n_draws: int) -> np.ndarray:
    """Checks a (draws, rows) array of per-observation draws."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n_draws:
        raise DataError(
            f"`{argument}` must have shape (draws, rows) with draws = {n_draws} (the rows of `draws`), got "
            f"{array.shape}. Compute it from all draws of the fit (no `ndraws`)."
        )
    return array


def to_inference_data(
    draws: Any,
    *,
    log_likelihood: np.ndarray | None = None,
    posterior_predictive: np.ndarray | None = None,
    observed_data: np.ndarray | None = None,
    response: str = "y",
    chains: int = 1,
    dims: Mapping[str, Sequence[str]] | None = None,
    obs_dim: str = "obs_id",
) -> Any:
    """Builds an ``arviz.InferenceData`` from brms-named draws and, optionally, pointwise quantities of the data.

    Columns named ``base[i,j,...]`` form one variable ``base`` of shape (chain, draw, n_i, n_j, ...) whose
    coordinates are the index labels in order of first appearance; every combination of labels must be present.
    Other columns are scalar variables. brms's group-level effects ``r_<group>[level,coef]`` get the dimensions
    ``(<group>, <group>_coef)``; other bracketed variables ``(<base>_dim_0, ...)`` unless ``dims`` names them.

    Arguments:
        draws: a pandas DataFrame (or a mapping of column name to values) with one row per draw and brms's names as
            columns, e.g. ``FormulaFit.draws``. With ``chains`` > 1 the rows are chain-major.
        log_likelihood: (draws, rows) pointwise log-likelihood, e.g. ``FormulaFit.log_lik()``.
        posterior_predictive: (draws, rows) replicated responses, e.g. ``FormulaFit.posterior_predict()``.
        observed_data: (rows,) observed response, e.g. ``FormulaFit.design.y``.
        response: the variable name of the response in the last three groups.
        chains: the number of chains the rows of ``draws`` hold (1 for amortized draws, which are independent; ArviZ's
            R-hat needs at least 2 and warns).
        dims: dimension names per bracketed variable, overriding the defaults, e.g. ``{"r_g": ["subject", "term"]}``.
        obs_dim: the dimension name of the rows (observations), with coordinates 0, ..., rows - 1.

    Returns:
        An ``arviz.InferenceData`` with the group ``posterior`` and those of ``log_likelihood``,
        ``posterior_predictive`` and ``observed_data`` that were given.

    Raises:
        ImportError: ArviZ is not installed.
        DataError: a draws table that is not numeric, ragged or missing an indexed column; pointwise arrays whose
            draws or rows do not match; draws that do not split into ``chains`` chains.

    Example:
        >>> idata = to_inference_data(fit.draws, log_likelihood=fit.log_lik(), observed_data=fit.design.y)
        >>> arviz.summary(idata, var_names=["b_Intercept", "r_g"])
    """
    try:
        import arviz
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("to_inference_data needs ArviZ: pip install arviz (or pip install 'mlnpe[arviz]')") from error
    columns = _columns(draws)
    n_draws = next(iter(columns.values())).shape[0]
    if isinstance(chains, bool) or not isinstance(chains, (int, np.integer)) or chains < 1 or n_draws % chains:
        raise DataError(f"`chains` must be a positive integer that divides the {n_draws} draws, got {chains!r}.")
    variables, var_dims, coords = _variables(columns, dims or {})

    def by_chain(array: np.ndarray) -> np.ndarray:
        return array.reshape(int(chains), n_draws // int(chains), *array.shape[1:])

    pointwise = {}
    if log_likelihood is not None:
        pointwise["log_likelihood"] = by_chain(_pointwise(log_likelihood, "log_likelihood", n_draws))
    if posterior_predictive is not None:
        pointwise["posterior_predictive"] = by_chain(_pointwise(posterior_predictive, "posterior_predictive", n_draws))
    if observed_data is not None:
        observed = np.asarray(observed_data)
        if observed.ndim != 1:
            raise DataError(f"`observed_data` must have shape (rows,), got {observed.shape}.")
        pointwise["observed_data"] = observed
    rows = {array.shape[-1] for array in pointwise.values()}
    if len(rows) > 1:
        shapes = {group: array.shape for group, array in pointwise.items()}
        raise DataError(
            f"`log_likelihood`, `posterior_predictive` and `observed_data` must share their rows, got {shapes}."
        )
    if pointwise:
        if response in variables:
            raise DataError(f"`response` {response!r} is also a column of `draws`; pass another name as `response`.")
        if obs_dim in coords:
            raise DataError(f"`obs_dim` {obs_dim!r} is also a dimension of `draws`; pass another name as `obs_dim`.")
        var_dims[response] = [obs_dim]
        coords[obs_dim] = list(range(rows.pop()))
    return arviz.from_dict(
        posterior={name: by_chain(array) for name, array in variables.items()},
        coords=coords,
        dims=var_dims,
        attrs={"inference_library": "mlnpe", "inference_library_version": __version__},
        **{group: {response: array} for group, array in pointwise.items()},
    )
