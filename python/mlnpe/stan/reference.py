"""Stan reference fits of formula models: the Stan program of exactly the model mlnpe simulates, run by MCMC.

mlnpe's amortized posteriors are checked against NUTS on the same model. :func:`stan_program` writes the
Stan program of a :class:`~mlnpe.formula.api.FormulaNPE` (its formula, family and resolved priors),
:func:`stan_data` the data dict of a dataset, and :func:`fit_stan` compiles and samples it with cmdstanpy
(when CmdStan is installed) or PyStan 3, returning brms-named draws and convergence diagnostics.

The model is mlnpe's, which follows brms's Stan program (``make_stancode``):

* ``eta = Intercept + (X - x_means) * b + sum_m Z[, m] .* r[group, m]``, where ``x_means`` are the centring
  means **stored in the model** (fixed when it was built), passed as data and never recomputed, so that
  ``Intercept`` means the same as in the amortizer; ``b_Intercept = Intercept - dot_product(x_means, b)``;
* non-centred group-level effects: ``z ~ std_normal()``; correlated effects
  ``r = (diag_pre_multiply(sd, L) * z)'`` with ``L ~ lkj_corr_cholesky(eta)`` (the LKJ(eta) prior on the
  correlation matrix ``L L'``), uncorrelated ones ``r[, m] = sd[m] * z[m]'``;
* every prior exactly as in ``model.resolved``, truncation terms included (half-distributions on scales);
  parameters are declared with the bounds of their prior's support (``sd``, ``sigma``, ``shape``
  ``<lower=0>``, ``nu`` ``<lower=1>``);
* the family's likelihood from :func:`mlnpe.formula.families.stan_likelihood`.

Diagnostics are pure array functions over ``(chains, draws)`` arrays: :func:`rhat` (rank-normalized split
R-hat, the maximum of the bulk and the folded-tail versions), :func:`ess_bulk` and :func:`ess_tail`
(Vehtari, Gelman, Simpson, Carpenter and Bürkner, 2021, *Rank-normalization, folding, and localization: an
improved R-hat for assessing convergence of MCMC*, Bayesian Analysis 16(2)).

Example:
    >>> from mlnpe.formula import FormulaNPE                                           # doctest: +SKIP
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df)                                   # doctest: +SKIP
    >>> print(stan_program(model))                                                      # doctest: +SKIP
    >>> ref = fit_stan(model, chains=4)                                                 # doctest: +SKIP
    >>> ref.draws[["b_Intercept", "b_x", "sd_g__x", "cor_g__Intercept__x"]].mean()     # doctest: +SKIP
    >>> ref.diagnostics["max_rhat"], ref.summary().loc["b_x"]                           # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ConfigError, DataError, SpecError

__all__ = [
    "StanDiagnosticWarning",
    "StanFit",
    "stan_program",
    "stan_data",
    "fit_stan",
    "brms_variable_names",
    "rhat",
    "ess_bulk",
    "ess_tail",
    "summarise_draws",
]

_PYSTAN_INSTALL = 'pip install pystan "setuptools<81"'
_CMDSTANPY_INSTALL = 'pip install cmdstanpy && python -c "import cmdstanpy; cmdstanpy.install_cmdstan()"'
_BACKENDS = ("auto", "cmdstanpy", "pystan")
_DISCRETE = {"bernoulli": "<lower=0, upper=1>", "binomial": "<lower=0>", "poisson": "<lower=0>",
             "negbinomial": "<lower=0>"}  # fmt: skip
_BOOKKEEPING = (".chain", ".iteration")
# a backend run: Stan variables (chains, draws, *dims), divergent (chains, draws), compile and sample seconds
_RunResult = tuple[dict[str, np.ndarray], np.ndarray, float, float]


class StanDiagnosticWarning(UserWarning):
    """A Stan reference fit has divergent transitions or an R-hat above 1.01: its draws may be biased."""


# ----------------------------------------------------------------------------------------------------------
# The Stan program
# ----------------------------------------------------------------------------------------------------------


def _num(x: float) -> str:
    """A finite number as a Stan literal (integers without a decimal point, else the shortest repr)."""
    x = float(x)
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


def _real(x: float) -> str:
    """A number as a Stan real literal, infinities as Stan functions."""
    x = float(x)
    if math.isinf(x):
        return "positive_infinity()" if x > 0 else "negative_infinity()"
    return repr(x)


def _bounds(lo: float, hi: float) -> str:
    """``<lower=lo, upper=hi>`` for the finite ends of an interval, or ``""``."""
    parts = ([f"lower={_num(lo)}"] if math.isfinite(lo) else []) + ([f"upper={_num(hi)}"] if math.isfinite(hi) else [])
    return f"<{', '.join(parts)}>" if parts else ""


def _slots(model: Any, class_: str) -> list[tuple[Any, Any]]:
    """(slot, prior) pairs of one parameter class, in the model's order."""
    return [(slot, dist) for slot, dist, _ in model.resolved if slot.class_ == class_]


def _aux_slots(model: Any) -> list[tuple[Any, Any]]:
    names = [name for name, _ in model.family.aux]
    by_name = {slot.class_: (slot, dist) for slot, dist, _ in model.resolved}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise SpecError(
            f"`model.resolved` has no prior for the family parameter(s) {missing} of family "
            f"{model.family.name!r}; build the model with FormulaNPE so that every parameter has a prior."
        )
    return [by_name[n] for n in names]


def _support(dist: Any, slot: Any) -> tuple[float, float]:
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
        tdata.append(f"vector[{size}] {name}_lower = [{', '.join(_real(v) for v in lows)}]';")
        parts.append(f"lower={name}_lower")
    if any(math.isfinite(v) for v in highs):
        tdata.append(f"vector[{size}] {name}_upper = [{', '.join(_real(v) for v in highs)}]';")
        parts.append(f"upper={name}_upper")
    return f"vector<{', '.join(parts)}>[{size}] {name};"


def _vector_priors(name: str, dists: list[Any]) -> list[str]:
    """Prior statements of a vector: one vectorized statement when all elements share the prior."""
    if dists and all(d == dists[0] for d in dists):
        return [dists[0].to_stan(name, n=len(dists))]
    return [d.to_stan(f"{name}[{k + 1}]") for k, d in enumerate(dists)]


@dataclass(frozen=True)
class _Layout:
    """What the Stan program of a model contains (derived once from the model)."""

    intercept: tuple[Any, Any] | None
    b: list[tuple[Any, Any]]
    sd: list[tuple[Any, Any]]
    cor: tuple[Any, Any] | None
    aux: list[tuple[Any, Any]]
    discrete: bool
    trials: bool

    @property
    def K(self) -> int:
        return len(self.b)

    @property
    def M(self) -> int:
        return len(self.sd)


def _layout(model: Any) -> _Layout:
    intercept = _slots(model, "Intercept")
    b, sd, cor = _slots(model, "b"), _slots(model, "sd"), _slots(model, "cor")
    x_means = np.asarray(model.x_means, dtype=float).reshape(-1)
    if len(x_means) != len(b):
        raise SpecError(
            f"`model.x_means` has {len(x_means)} entries but the model has {len(b)} population-level "
            f"coefficients ({[s.coef for s, _ in b]}); pass a model built by FormulaNPE."
        )
    if len(sd) != len(model.z_names) or not sd:
        raise SpecError(
            f"`model.z_names` {list(model.z_names)} does not match the group-level sd priors "
            f"{[s.coef for s, _ in sd]}; pass a model built by FormulaNPE."
        )
    if cor and len(sd) < 2:
        raise SpecError(f"the model has a correlation prior but only {len(sd)} group-level coefficient.")
    name = model.family.name
    return _Layout(
        intercept=intercept[0] if intercept else None,
        b=b,
        sd=sd,
        cor=cor[0] if cor else None,
        aux=_aux_slots(model),
        discrete=name in _DISCRETE,
        trials=bool(getattr(model.family, "needs_trials", name == "binomial")),
    )


def stan_program(model: Any) -> str:
    """The Stan program of exactly the model that mlnpe simulates for a formula model.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE` (used: ``terms``, ``family``, ``resolved``,
            ``x_means``, ``z_names``).

    Returns:
        The Stan program text. Its data block declares exactly the keys of :func:`stan_data`: ``N``, ``Y``,
        ``trials`` (binomial), ``K``, ``X``, ``x_means`` (when K > 0), ``M``, ``Z``, ``J``, ``group``
        (1-based). Parameters: ``Intercept`` (centred intercept), ``b``, ``sd_1``, ``z_1``, ``L_1``
        (correlated effects), the family parameters; transformed parameters ``r_1`` (J x M); generated
        quantities ``b_Intercept`` and ``cor_1`` (upper triangle of ``L_1 L_1'``, column-major as brms).

    Raises:
        SpecError: the model's priors, centring means and group-level names are inconsistent.

    Example:
        >>> print(stan_program(FormulaNPE("y ~ x + (1 | g)", df)))                     # doctest: +SKIP
    """
    lay = _layout(model)
    K, M = lay.K, lay.M
    terms = model.terms
    y_decl = f"array[N] int{_DISCRETE[model.family.name]} Y;" if lay.discrete else "vector[N] Y;"
    data = ["int<lower=1> N;  // rows", y_decl]
    if lay.trials:
        data.append("array[N] int<lower=0> trials;  // binomial trials")
    data.append("int<lower=0> K;  // population-level coefficients (without the intercept)")
    if K:
        data += ["matrix[N, K] X;  // population-level design, uncentred",
                 "vector[K] x_means;  // mlnpe's stored centring means"]  # fmt: skip
    data += [
        "int<lower=1> M;  // group-level coefficients",
        "matrix[N, M] Z;  // group-level design",
        "int<lower=1> J;  // groups",
        "array[N] int<lower=1, upper=J> group;  // group of every row",
    ]
    tdata = ["matrix[N, K] Xc = X - rep_matrix(x_means', N);  // centred with the model's means"] if K else []
    params = []
    if lay.intercept:
        params.append(f"real{_bounds(*_support(lay.intercept[1], lay.intercept[0]))} Intercept;  // centred intercept")
    if K:
        params.append(_vector_declaration("b", "K", [_support(d, s) for s, d in lay.b], tdata))
    params.append(_vector_declaration("sd_1", "M", [_support(d, s) for s, d in lay.sd], tdata))
    params.append("matrix[M, J] z_1;  // standardized group-level effects")
    if lay.cor:
        params.append("cholesky_factor_corr[M] L_1;  // Cholesky factor of the group-level correlations")
    for slot, dist in lay.aux:
        params.append(f"real{_bounds(*_support(dist, slot))} {slot.class_};")
    if lay.cor:
        r_def = "r_1 = (diag_pre_multiply(sd_1, L_1) * z_1)';"
    else:
        r_def = "r_1 = diag_pre_multiply(sd_1, z_1)';  // r_1[, m] = sd_1[m] * z_1[m]'"
    tparams = ["matrix[J, M] r_1;  // group-level effects", r_def]
    mu = "Intercept" if lay.intercept else "rep_vector(0.0, N)"
    if lay.intercept and not K:
        mu = "rep_vector(Intercept, N)"
    if K:
        mu = f"{mu} + Xc * b" if lay.intercept else "Xc * b"
    model_block = [f"vector[N] mu = {mu};", "mu += rows_dot_product(Z, r_1[group]);"]
    if lay.intercept:
        model_block.append(lay.intercept[1].to_stan("Intercept"))
    if K:
        model_block += _vector_priors("b", [d for _, d in lay.b])
    model_block += _vector_priors("sd_1", [d for _, d in lay.sd])
    if lay.cor:
        model_block.append(lay.cor[1].to_stan("L_1"))
    for slot, dist in lay.aux:
        model_block.append(dist.to_stan(slot.class_))
    model_block += ["target += std_normal_lpdf(to_vector(z_1));", model.family.stan_likelihood()]
    gq = []
    if lay.intercept:
        gq.append("real b_Intercept = Intercept - dot_product(x_means, b);" if K else "real b_Intercept = Intercept;")
    if lay.cor:
        gq += [
            f"vector[{M * (M - 1) // 2}] cor_1;  // upper triangle, column-major (brms's order)",
            "{",
            "  matrix[M, M] Cor_1 = multiply_lower_tri_self_transpose(L_1);",
            "  int k = 0;",
            "  for (j in 2:M) {",
            "    for (i in 1:(j - 1)) {",
            "      k += 1;",
            "      cor_1[k] = Cor_1[i, j];",
            "    }",
            "  }",
            "}",
        ]
    blocks = [("data", data), ("transformed data", tdata), ("parameters", params),
              ("transformed parameters", tparams), ("model", model_block), ("generated quantities", gq)]  # fmt: skip
    head = [
        f"// mlnpe reference model: {terms.formula}",
        f"// family: {model.family.name} (link: {model.family.link}); group-level effects of {terms.group!r}:"
        f" {', '.join(model.z_names)} ({'correlated' if lay.cor else 'uncorrelated'})",
    ]
    body = [f"{name} {{\n" + "".join(f"  {line}\n" for line in lines) + "}" for name, lines in blocks if lines]
    return "\n".join(head) + "\n" + "\n".join(body) + "\n"


def stan_data(model: Any, data: Any = None) -> dict[str, Any]:
    """The data dict of :func:`stan_program` for a dataset.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE`.
        data: a data frame (or dict of columns) with the model's variables; None means ``model.data``.
            Factor levels and design columns are those stored in the model (``model.grouped_data``).

    Returns:
        ``N``, ``Y`` (int array for discrete families), ``trials`` (binomial), ``K``, ``X`` (N, K) and
        ``x_means`` (K,) (only when K > 0; ``x_means`` are the model's stored means), ``M``, ``Z`` (N, M),
        ``J``, ``group`` (N,) 1-based, as numpy arrays and ints.

    Raises:
        DataError: `data` is None and the model holds no data, or the design does not match the model.
    """
    return _stan_data(model, _design(model, data))


def _design(model: Any, data: Any) -> Any:
    _, design = model.grouped_data(_model_data(model, data))
    return design


def _stan_data(model: Any, design: Any) -> dict[str, Any]:
    lay = _layout(model)
    n = len(design.y)
    if design.X.shape[1] != lay.K or design.Z.shape[1] != lay.M:
        raise DataError(
            f"`data` gives a design with {design.X.shape[1]} population-level and {design.Z.shape[1]} group-level "
            f"columns, but the model has {lay.K} and {lay.M}; pass data with the model's variables."
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
    out.update(
        M=lay.M,
        Z=np.asarray(design.Z, dtype=np.float64),
        J=len(design.levels),
        group=np.asarray(design.group, dtype=np.int64) + 1,
    )
    return out


def _model_data(model: Any, data: Any) -> Any:
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


def brms_variable_names(model: Any, levels: Sequence[str]) -> list[str]:
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
    names += [slot.name for slot, _ in lay.sd]
    z = [slot.coef for slot, _ in lay.sd]
    if lay.cor:
        names += [f"cor_{g}__{z[i]}__{z[j]}" for j in range(len(z)) for i in range(j)]
    names += [slot.class_ for slot, _ in lay.aux]
    names += [f"r_{g}[{str(level).replace(' ', '.')},{coef}]" for coef in model.z_names for level in levels]
    return names


def _brms_columns(model: Any, levels: Sequence[str], variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stan variables ``(chains, draws, *dims)`` -> brms-named ``(chains, draws)`` columns, in brms's order."""
    lay = _layout(model)
    cols: list[np.ndarray] = []
    if lay.intercept:
        cols.append(variables["b_Intercept"])
    cols += [variables["b"][..., k] for k in range(lay.K)]
    cols += [variables["sd_1"][..., m] for m in range(lay.M)]
    if lay.cor:
        cols += [variables["cor_1"][..., k] for k in range(lay.M * (lay.M - 1) // 2)]
    cols += [variables[slot.class_] for slot, _ in lay.aux]
    r = variables["r_1"]
    cols += [r[..., j, m] for m in range(lay.M) for j in range(len(levels))]
    names = brms_variable_names(model, levels)
    if len(names) != len(cols):  # pragma: no cover - guards the two orders against drifting apart
        raise SpecError(f"internal: {len(names)} brms names for {len(cols)} Stan columns.")
    return dict(zip(names, cols))


def _stan_variables(model: Any) -> list[str]:
    """The Stan variables that :func:`_brms_columns` reads."""
    lay = _layout(model)
    out = (["b_Intercept"] if lay.intercept else []) + (["b"] if lay.K else []) + ["sd_1"]
    out += (["cor_1"] if lay.cor else []) + [slot.class_ for slot, _ in lay.aux] + ["r_1"]
    return out


# ----------------------------------------------------------------------------------------------------------
# Convergence diagnostics (pure array functions; x: (chains, draws))
# ----------------------------------------------------------------------------------------------------------


def _as_chains(x: Any, argument: str = "x") -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] < 4:
        raise DataError(
            f"`{argument}` must be a (chains, draws) array with at least 4 draws per chain, got shape "
            f"{np.shape(x)}; pass one row per chain."
        )
    return arr


def _split(x: np.ndarray) -> np.ndarray:
    """(chains, n) -> (2 chains, n // 2): first and second halves (the middle draw of odd n is dropped)."""
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def _z_scale(x: np.ndarray) -> np.ndarray:
    """Rank normalization: normal scores of the pooled ranks (average ranks for ties, Blom's offset)."""
    from scipy.special import ndtri
    from scipy.stats import rankdata

    ranks = rankdata(x, method="average").reshape(x.shape)
    return ndtri((ranks - 0.375) / (x.size + 0.25))


def _constant(x: np.ndarray) -> bool:
    return not np.all(np.isfinite(x)) or np.ptp(x) <= 1e-12 * max(1.0, float(np.max(np.abs(x))))


def _rhat_basic(x: np.ndarray) -> float:
    """Classic R-hat of (chains, n) draws (already split)."""
    n = x.shape[1]
    within = float(np.mean(np.var(x, axis=1, ddof=1)))
    between = n * float(np.var(np.mean(x, axis=1), ddof=1))
    if within <= 0:
        return math.nan
    return math.sqrt(((n - 1) / n * within + between / n) / within)


def _autocovariance(x: np.ndarray) -> np.ndarray:
    """Biased autocovariances (divided by n) of every chain, lags 0..n-1, by FFT: (chains, n)."""
    n = x.shape[1]
    centred = x - x.mean(axis=1, keepdims=True)
    size = 1 << (2 * n - 1).bit_length()
    f = np.fft.rfft(centred, n=size, axis=1)
    return np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n


def _ess_basic(x: np.ndarray) -> float:
    """ESS of (chains, n) draws (already split): multi-chain autocorrelations, Geyer's monotone sequence."""
    if _constant(x):
        return math.nan
    m, n = x.shape
    acov = _autocovariance(x)
    chain_var = acov[:, 0] * n / (n - 1)
    mean_var = float(np.mean(chain_var))
    var_plus = mean_var * (n - 1) / n + (float(np.var(np.mean(x, axis=1), ddof=1)) if m > 1 else 0.0)
    rho = 1.0 - (mean_var - np.mean(acov, axis=0)) / var_plus  # combined autocorrelation by lag
    rho[0] = 1.0
    # Geyer's initial positive sequence: keep pairs (lags t, t + 1, t even) while their sum stays positive
    kept = np.zeros(n)
    kept[:2] = rho[:2]
    t, even, odd = 0, rho[0], rho[1]
    while t < n - 5 and even + odd > 0:
        t += 2
        even, odd = rho[t], rho[t + 1]
        if even + odd >= 0:
            kept[t], kept[t + 1] = even, odd
    last = t
    if even > 0:  # the positive even lag of the first negative pair improves the estimate (Geyer 1992)
        kept[last] = even
    # ... made monotone: a pair sum never exceeds the previous one (initial monotone sequence)
    for t in range(2, last - 1, 2):
        previous = kept[t - 2] + kept[t - 1]
        if kept[t] + kept[t + 1] > previous:
            kept[t] = kept[t + 1] = previous / 2.0
    draws = m * n
    tau = -1.0 + 2.0 * float(np.sum(kept[:last])) + float(kept[last])
    tau = max(tau, 1.0 / math.log10(draws))  # caps the ESS of antithetic chains at draws * log10(draws)
    return draws / tau


def rhat(x: Any) -> float:
    """Rank-normalized split R-hat: the maximum of the bulk and the folded (tail) R-hat.

    Arguments:
        x: (chains, draws) draws of one scalar; a 1-D array is one chain.

    Returns:
        R-hat (1 at convergence; above 1.01 suggests that the chains have not mixed); NaN for constant draws.

    Raises:
        DataError: `x` is not (chains, draws) with at least 4 draws per chain.

    Example:
        >>> rhat(np.random.default_rng(0).normal(size=(4, 1000))) < 1.01
        True
    """
    x = _as_chains(x)
    if _constant(x):
        return math.nan
    bulk = _rhat_basic(_z_scale(_split(x)))
    folded = np.abs(x - np.median(x))
    tail = _rhat_basic(_z_scale(_split(folded))) if not _constant(folded) else math.nan
    return float(np.nanmax([bulk, tail]))


def ess_bulk(x: Any) -> float:
    """Bulk effective sample size: the ESS of the rank-normalized split chains.

    Arguments:
        x: (chains, draws) draws of one scalar; a 1-D array is one chain.

    Returns:
        The ESS (about chains * draws for independent draws); NaN for constant draws.

    Raises:
        DataError: `x` is not (chains, draws) with at least 4 draws per chain.
    """
    x = _as_chains(x)
    if _constant(x):
        return math.nan
    return _ess_basic(_z_scale(_split(x)))


def ess_tail(x: Any) -> float:
    """Tail effective sample size: the smaller ESS of the 5% and 95% quantiles (indicators of x <= q).

    Arguments:
        x: (chains, draws) draws of one scalar; a 1-D array is one chain.

    Returns:
        The ESS; NaN for constant draws.

    Raises:
        DataError: `x` is not (chains, draws) with at least 4 draws per chain.
    """
    x = _as_chains(x)
    if _constant(x):
        return math.nan
    out = []
    for prob in (0.05, 0.95):
        indicator = (x <= np.quantile(x, prob)).astype(np.float64)
        out.append(_ess_basic(_split(indicator)))
    return float(np.nanmin(out)) if not np.all(np.isnan(out)) else math.nan


def summarise_draws(columns: dict[str, np.ndarray]) -> Any:
    """Per-variable summary: mean, sd, q2.5, q97.5, rhat, ess_bulk, ess_tail.

    Arguments:
        columns: variable name -> (chains, draws) draws.

    Returns:
        A pandas DataFrame indexed by variable.
    """
    import pandas as pd

    rows = {}
    for name, x in columns.items():
        x = np.asarray(x, dtype=np.float64)
        flat = x.reshape(-1)
        rows[name] = {
            "mean": float(np.mean(flat)),
            "sd": float(np.std(flat, ddof=1)),
            "q2.5": float(np.quantile(flat, 0.025)),
            "q97.5": float(np.quantile(flat, 0.975)),
            "rhat": rhat(x),
            "ess_bulk": ess_bulk(x),
            "ess_tail": ess_tail(x),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


# ----------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------


@dataclass
class StanFit:
    """A Stan reference fit with brms-named draws.

    Attributes:
        draws: pandas DataFrame, one row per draw: brms names in brms's order, then ``.chain`` and
            ``.iteration`` (both 1-based).
        diagnostics: ``divergences`` (count), ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail`` (over all
            variables), ``seconds`` (compile + sample), ``compile_seconds``, ``sample_seconds``, ``backend``.
        program: the Stan program.
        data: the Stan data dict.
    """

    draws: Any
    diagnostics: dict[str, Any]
    program: str = field(repr=False, default="")
    data: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def variables(self) -> list[str]:
        """The brms variable names (draws columns without the bookkeeping columns)."""
        return [c for c in self.draws.columns if c not in _BOOKKEEPING]

    def chains_array(self, variable: str) -> np.ndarray:
        """(chains, draws) draws of one variable."""
        d = self.draws
        return np.stack([d.loc[d[".chain"] == c, variable].to_numpy() for c in sorted(d[".chain"].unique())])

    def summary(self) -> Any:
        """mean, sd, q2.5, q97.5, rhat, ess_bulk, ess_tail per variable, as a DataFrame indexed by variable."""
        return summarise_draws({v: self.chains_array(v) for v in self.variables})


def _check_int(value: Any, argument: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"`{argument}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _cmdstan_available() -> bool:
    try:
        import cmdstanpy
    except ImportError:
        return False
    try:
        return bool(cmdstanpy.cmdstan_path())
    except Exception:  # cmdstanpy raises ValueError (and others) when CmdStan is not installed
        return False


def _pick_backend(backend: str) -> str:
    if backend not in _BACKENDS:
        raise ConfigError(f"`backend` must be one of {list(_BACKENDS)}, got {backend!r}.")
    if backend == "cmdstanpy":
        if not _cmdstan_available():
            raise ImportError(f"backend='cmdstanpy' needs cmdstanpy with CmdStan installed: {_CMDSTANPY_INSTALL}")
        return backend
    if backend == "auto" and _cmdstan_available():
        return "cmdstanpy"
    return "pystan"


def _import_stan() -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PyStan imports pkg_resources, which warns on new setuptools
            import stan
    except ImportError as error:
        raise ImportError(
            f"Stan reference fits need PyStan 3 (or cmdstanpy with CmdStan): {_PYSTAN_INSTALL} ({error})"
        ) from error
    return stan


def _outside_event_loop(fn: Callable[[], Any]) -> Any:
    """Calls `fn` here, or in a worker thread when this thread runs an event loop (Jupyter, async code).

    PyStan calls ``asyncio.run``, which refuses to start inside a running loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return fn()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn).result()


def _run_pystan(
    program: str, data: dict[str, Any], names: list[str], *, chains: int, warmup: int, draws: int, seed: int,
    adapt_delta: float,
) -> _RunResult:
    stan = _import_stan()

    def build_and_sample() -> tuple[Any, float, float, float]:
        t0 = time.perf_counter()
        posterior = stan.build(program, data=data, random_seed=seed)
        t1 = time.perf_counter()
        fit = posterior.sample(num_chains=chains, num_samples=draws, num_warmup=warmup, delta=adapt_delta)
        return fit, t0, t1, time.perf_counter()

    # one thread for both calls: building in one worker thread and sampling in another breaks httpstan's
    # (fork-based) process pool ("BrokenProcessPool")
    fit, t0, t1, t2 = _outside_event_loop(build_and_sample)
    variables = {}
    for name in names:
        values = _pystan_chains_first(fit[name], chains)
        # PyStan returns scalars as (1, draws * chains): drop that axis, keep length-1 vectors
        scalar = len(fit.dims[fit.param_names.index(name)]) == 0
        variables[name] = values[:, :, 0] if scalar else values
    divergent = _pystan_chains_first(fit["divergent__"], chains)[:, :, 0]
    return variables, divergent, t1 - t0, t2 - t1


def _pystan_chains_first(values: Any, chains: int) -> np.ndarray:
    """PyStan's ``fit[name]``, (*dims, draws * chains) with the chain varying fastest -> (chains, draws, *dims)."""
    values = np.asarray(values, dtype=np.float64)
    dims = values.shape[:-1]
    values = values.reshape(dims + (values.shape[-1] // chains, chains))
    return np.moveaxis(values, (-1, -2), (0, 1))


def _stan_cache_dir() -> Path:
    root = os.environ.get("MLNPE_STAN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mlnpe", "stan")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _run_cmdstanpy(
    program: str, data: dict[str, Any], names: list[str], *, chains: int, warmup: int, draws: int, seed: int,
    adapt_delta: float,
) -> _RunResult:
    import cmdstanpy

    # the executable is cached next to a file named by the program's hash: a rerun does not recompile
    stan_file = _stan_cache_dir() / f"model_{hashlib.sha256(program.encode()).hexdigest()[:16]}.stan"
    if not stan_file.exists() or stan_file.read_text() != program:
        stan_file.write_text(program)
    t0 = time.perf_counter()
    compiled = cmdstanpy.CmdStanModel(stan_file=str(stan_file))
    t1 = time.perf_counter()
    fit = compiled.sample(
        data=data, chains=chains, iter_warmup=warmup, iter_sampling=draws, seed=seed, adapt_delta=adapt_delta,
        show_progress=False,
    )
    t2 = time.perf_counter()
    variables = {}
    for name in names:
        values = np.asarray(fit.stan_variable(name), dtype=np.float64)  # (chains * draws, *dims), chain-major
        variables[name] = values.reshape((chains, draws) + values.shape[1:])
    divergent = np.asarray(fit.method_variables()["divergent__"], dtype=np.float64).T  # (draws, chains) -> T
    return variables, divergent, t1 - t0, t2 - t1


def fit_stan(
    model: Any,
    data: Any = None,
    *,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 1,
    adapt_delta: float = 0.9,
    backend: str = "auto",
) -> StanFit:
    """Samples the posterior of a formula model with Stan's NUTS: the reference for mlnpe's posteriors.

    Arguments:
        model: a :class:`~mlnpe.formula.api.FormulaNPE`.
        data: the dataset; None means ``model.data``.
        chains: number of chains.
        warmup: warmup iterations per chain.
        draws: post-warmup draws per chain.
        seed: random seed of the sampler.
        adapt_delta: target acceptance rate of step-size adaptation, in (0, 1).
        backend: "auto" (cmdstanpy when CmdStan is installed, else PyStan), "cmdstanpy" or "pystan".

    Returns:
        A :class:`StanFit` with brms-named draws and diagnostics.

    Raises:
        ConfigError: an argument is out of range or `backend` is unknown.
        DataError: no data, or data that do not fit the model.
        ImportError: neither PyStan nor cmdstanpy with CmdStan is installed (the message gives the install
            command).

    Warns:
        StanDiagnosticWarning: there are divergent transitions or the largest R-hat exceeds 1.01.

    Example:
        >>> ref = fit_stan(model, chains=2, warmup=500, draws=500)                      # doctest: +SKIP
        >>> ref.summary().loc[["b_Intercept", "b_x"]]                                   # doctest: +SKIP
    """
    chains = _check_int(chains, "chains", 1)
    warmup = _check_int(warmup, "warmup", 1)
    draws = _check_int(draws, "draws", 4)
    seed = _check_int(seed, "seed", 0)
    if not isinstance(adapt_delta, (int, float)) or not 0.0 < float(adapt_delta) < 1.0:
        raise ConfigError(f"`adapt_delta` must be in (0, 1), e.g. 0.9 or 0.99, got {adapt_delta!r}.")
    chosen = _pick_backend(backend)
    design = _design(model, data)
    program = stan_program(model)
    sdata = _stan_data(model, design)
    levels = tuple(design.levels)
    runner = _run_cmdstanpy if chosen == "cmdstanpy" else _run_pystan
    variables, divergent, compile_s, sample_s = runner(
        program, sdata, _stan_variables(model), chains=chains, warmup=warmup, draws=draws, seed=seed,
        adapt_delta=float(adapt_delta),
    )
    columns = _brms_columns(model, levels, variables)
    frame = _draws_frame(columns, chains, draws)
    diagnostics = _diagnostics(columns, divergent)
    diagnostics.update(seconds=compile_s + sample_s, compile_seconds=compile_s, sample_seconds=sample_s,
                       backend=chosen)  # fmt: skip
    _warn(diagnostics)
    return StanFit(frame, diagnostics, program, sdata)


def _draws_frame(columns: dict[str, np.ndarray], chains: int, draws: int) -> Any:
    import pandas as pd

    frame = pd.DataFrame({name: x.reshape(-1) for name, x in columns.items()})
    frame[".chain"] = np.repeat(np.arange(1, chains + 1), draws)
    frame[".iteration"] = np.tile(np.arange(1, draws + 1), chains)
    return frame


def _diagnostics(columns: dict[str, np.ndarray], divergent: np.ndarray) -> dict[str, Any]:
    rhats = [rhat(x) for x in columns.values()]
    bulk = [ess_bulk(x) for x in columns.values()]
    tail = [ess_tail(x) for x in columns.values()]

    def agg(fn: Callable[[Any], Any], values: list[float]) -> float:
        arr = np.asarray(values, dtype=np.float64)
        return float(fn(arr)) if np.any(np.isfinite(arr)) else math.nan

    return {
        "divergences": int(np.sum(divergent > 0)),
        "max_rhat": agg(np.nanmax, rhats),
        "min_ess_bulk": agg(np.nanmin, bulk),
        "min_ess_tail": agg(np.nanmin, tail),
    }


def _warn(diagnostics: dict[str, Any]) -> None:
    problems = []
    if diagnostics["divergences"]:
        problems.append(f"{diagnostics['divergences']} divergent transition(s)")
    if diagnostics["max_rhat"] > 1.01:
        problems.append(f"max R-hat {diagnostics['max_rhat']:.3f} > 1.01")
    if problems:
        warnings.warn(
            f"Stan reference fit: {' and '.join(problems)}; the draws may be biased. Increase `adapt_delta` "
            "(e.g. 0.99) and `warmup`, or run more chains and draws.",
            StanDiagnosticWarning,
            stacklevel=3,
        )
