"""Stan reference fits of formula models: the Stan program of exactly the model mlnpe simulates, run by NUTS.

:func:`fit_stan` writes the program and data of a :class:`~mlnpe.formula.api.FormulaNPE` with
:mod:`mlnpe.formula.stancode`, samples them with :func:`mlnpe.stan.backends.sample` (cmdstanpy when CmdStan is
installed, else PyStan 3) and returns brms-named draws with convergence diagnostics.

Example:
    >>> from mlnpe.formula import FormulaNPE                                           # doctest: +SKIP
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df)                                   # doctest: +SKIP
    >>> ref = fit_stan(model, chains=4)                                                 # doctest: +SKIP
    >>> ref.draws[["b_Intercept", "b_x", "sd_g__x", "cor_g__Intercept__x"]].mean()     # doctest: +SKIP
    >>> ref.diagnostics["max_rhat"], ref.summary().loc["b_x"]                           # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from .backends import StanFit, draws_frame, sample, warn_if_unreliable

if TYPE_CHECKING:  # the formula layer imports torch: annotations only, imported where fit_stan runs
    from ..formula.api import FormulaNPE

__all__ = ["fit_stan"]


def fit_stan(
    model: FormulaNPE,
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
        A :class:`~mlnpe.stan.backends.StanFit` whose draws have brms's names in brms's order
        (:func:`mlnpe.formula.stancode.brms_variable_names`), with diagnostics.

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
    from ..formula.stancode import brms_columns, design_stan_data, stan_design, stan_program, stan_variables

    design = stan_design(model, data)
    program = stan_program(model)
    sdata = design_stan_data(model, design)
    fit = sample(
        program, sdata, variables=stan_variables(model), chains=chains, warmup=warmup, draws=draws, seed=seed,
        adapt_delta=adapt_delta, backend=backend, warn=False,
    )
    columns = brms_columns(model, tuple(design.levels), fit.stan_variables)
    frame = draws_frame(columns, int(chains), int(draws))  # both checked by sample()
    warn_if_unreliable(fit.diagnostics)
    return replace(fit, draws=frame)
