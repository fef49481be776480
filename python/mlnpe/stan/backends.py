"""Running a Stan program: one sampler entry point over PyStan 3 and cmdstanpy, and the fit it returns.

:func:`sample` compiles a Stan program and samples it with NUTS, by cmdstanpy when CmdStan is installed and
PyStan 3 otherwise (or the back-end named). It returns a :class:`StanFit`: the draws of the requested Stan
variables as ``(chains, draws, *dims)`` arrays and as a flat table, and convergence diagnostics (divergent
transitions, R-hat and ESS from :mod:`mlnpe.inference.convergence`); it warns with
:class:`StanDiagnosticWarning` when the draws may be biased. PyStan runs in a worker thread when the calling
thread runs an event loop (Jupyter), since it calls ``asyncio.run``; cmdstanpy executables are cached by the
hash of their program under ``$MLNPE_STAN_CACHE`` (default ``~/.cache/mlnpe/stan``).

Example:
    >>> program = "parameters { real mu; } model { mu ~ normal(1, 2); }"
    >>> fit = sample(program, {}, chains=2, warmup=200, draws=200, seed=1)      # doctest: +SKIP
    >>> fit.stan_variables["mu"].shape, fit.diagnostics["max_rhat"]              # doctest: +SKIP
    ((2, 200), 1.0...)
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

from ..errors import ConfigError
from ..inference.convergence import ess_bulk, ess_tail, rhat, summarise_draws

__all__ = [
    "StanDiagnosticWarning",
    "StanFit",
    "sample",
    "draws_frame",
    "warn_if_unreliable",
    "outside_event_loop",
    "pystan_chains_first",
]

_PYSTAN_INSTALL = 'pip install pystan "setuptools<81"'
_CMDSTANPY_INSTALL = 'pip install cmdstanpy && python -c "import cmdstanpy; cmdstanpy.install_cmdstan()"'
_BACKENDS = ("auto", "cmdstanpy", "pystan")
_BOOKKEEPING = (".chain", ".iteration")
# a backend run: Stan variables (chains, draws, *dims), divergent (chains, draws), compile and sample seconds
_RunResult = tuple[dict[str, np.ndarray], np.ndarray, float, float]


class StanDiagnosticWarning(UserWarning):
    """A Stan reference fit has divergent transitions or an R-hat above 1.01: its draws may be biased."""


@dataclass
class StanFit:
    """A Stan fit: draws and convergence diagnostics.

    Attributes:
        draws: pandas DataFrame, one row per draw: one column per scalar, then ``.chain`` and ``.iteration``
            (both 1-based). :func:`sample` names the scalars as Stan does (``mu``, ``b[2]``, ``r_1[3,1]``,
            1-based, first index fastest); :func:`mlnpe.stan.fit_stan` uses brms's names in brms's order.
        diagnostics: ``divergences`` (count), ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail`` (over all
            variables), ``seconds`` (compile + sample), ``compile_seconds``, ``sample_seconds``, ``backend``.
        program: the Stan program.
        data: the Stan data dict.
        stan_variables: Stan variable name -> ``(chains, draws, *dims)`` draws.
    """

    draws: Any
    diagnostics: dict[str, Any]
    program: str = field(repr=False, default="")
    data: dict[str, Any] = field(repr=False, default_factory=dict)
    stan_variables: dict[str, np.ndarray] = field(repr=False, default_factory=dict)

    @property
    def variables(self) -> list[str]:
        """The variable names (draws columns without the bookkeeping columns)."""
        return [c for c in self.draws.columns if c not in _BOOKKEEPING]

    def chains_array(self, variable: str) -> np.ndarray:
        """(chains, draws) draws of one variable."""
        d = self.draws
        return np.stack([d.loc[d[".chain"] == c, variable].to_numpy() for c in sorted(d[".chain"].unique())])

    def summary(self) -> Any:
        """mean, sd, q2.5, q97.5, rhat, ess_bulk, ess_tail per variable, as a DataFrame indexed by variable."""
        return summarise_draws({v: self.chains_array(v) for v in self.variables})


def sample(
    program: str,
    data: dict[str, Any],
    *,
    variables: Sequence[str] | None = None,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 1,
    adapt_delta: float = 0.9,
    backend: str = "auto",
    warn: bool = True,
) -> StanFit:
    """Compiles a Stan program and samples it with Stan's NUTS.

    Arguments:
        program: the Stan program.
        data: its data dict (numbers, lists or numpy arrays).
        variables: the Stan variables to keep (parameters, transformed parameters, generated quantities);
            None keeps all of them. The diagnostics cover every scalar of the kept variables.
        chains: number of chains.
        warmup: warmup iterations per chain.
        draws: post-warmup draws per chain.
        seed: random seed of the sampler.
        adapt_delta: target acceptance rate of step-size adaptation, in (0, 1).
        backend: "auto" (cmdstanpy when CmdStan is installed, else PyStan), "cmdstanpy" or "pystan".
        warn: whether to warn about divergences and large R-hat (:func:`warn_if_unreliable`).

    Returns:
        A :class:`StanFit` with Stan-named draws, ``stan_variables`` and diagnostics.

    Raises:
        ConfigError: an argument is out of range or `backend` is unknown (checked before compiling).
        ImportError: neither PyStan nor cmdstanpy with CmdStan is installed (the message gives the install
            command).

    Warns:
        StanDiagnosticWarning: with `warn`, when there are divergent transitions or the largest R-hat exceeds 1.01.

    Example:
        >>> fit = sample("parameters { real mu; } model { mu ~ std_normal(); }", {}, chains=2)   # doctest: +SKIP
        >>> fit.summary().loc["mu", "rhat"]                                                       # doctest: +SKIP
    """
    chains = _check_int(chains, "chains", 1)
    warmup = _check_int(warmup, "warmup", 1)
    draws = _check_int(draws, "draws", 4)
    seed = _check_int(seed, "seed", 0)
    if not isinstance(adapt_delta, (int, float)) or not 0.0 < float(adapt_delta) < 1.0:
        raise ConfigError(f"`adapt_delta` must be in (0, 1), e.g. 0.9 or 0.99, got {adapt_delta!r}.")
    chosen = _pick_backend(backend)
    runner = _run_cmdstanpy if chosen == "cmdstanpy" else _run_pystan
    names = None if variables is None else list(variables)
    stan_variables, divergent, compile_s, sample_s = runner(
        program, data, names, chains=chains, warmup=warmup, draws=draws, seed=seed, adapt_delta=float(adapt_delta),
    )
    columns = _scalar_columns(stan_variables)
    diagnostics = _diagnostics(columns, divergent)
    diagnostics.update(seconds=compile_s + sample_s, compile_seconds=compile_s, sample_seconds=sample_s,
                       backend=chosen)  # fmt: skip
    if warn:
        warn_if_unreliable(diagnostics)
    return StanFit(draws_frame(columns, chains, draws), diagnostics, program, data, stan_variables)


def _scalar_columns(variables: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stan variables ``(chains, draws, *dims)`` -> one ``(chains, draws)`` column per scalar, named as Stan
    names them (1-based indices, the first one varying fastest)."""
    columns = {}
    for name, values in variables.items():
        dims = values.shape[2:]
        if not dims:
            columns[name] = values
            continue
        for reverse in np.ndindex(*dims[::-1]):
            index = reverse[::-1]
            columns[f"{name}[{','.join(str(i + 1) for i in index)}]"] = values[(..., *index)]
    return columns


def draws_frame(columns: dict[str, np.ndarray], chains: int, draws: int) -> Any:
    """A draws table: one column per ``(chains, draws)`` entry of `columns`, then ``.chain`` and ``.iteration``.

    Arguments:
        columns: variable name -> (chains, draws) draws.
        chains, draws: the number of chains and of draws per chain.

    Returns:
        A pandas DataFrame with ``chains * draws`` rows, chain-major.
    """
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


def warn_if_unreliable(diagnostics: dict[str, Any], stacklevel: int = 2) -> None:
    """Warns when a fit has divergent transitions or a largest R-hat above 1.01.

    Arguments:
        diagnostics: with ``divergences`` and ``max_rhat`` (as in :attr:`StanFit.diagnostics`).
        stacklevel: as in :func:`warnings.warn`, counted from the caller of this function.

    Warns:
        StanDiagnosticWarning: saying which problem and how to fix it.
    """
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
            stacklevel=stacklevel + 1,
        )


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


def outside_event_loop(fn: Callable[[], Any]) -> Any:
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
    program: str, data: dict[str, Any], names: list[str] | None, *, chains: int, warmup: int, draws: int, seed: int,
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
    fit, t0, t1, t2 = outside_event_loop(build_and_sample)
    variables = {}
    for name in list(fit.param_names) if names is None else names:
        values = pystan_chains_first(fit[name], chains)
        # PyStan returns scalars as (1, draws * chains): drop that axis, keep length-1 vectors
        scalar = len(fit.dims[fit.param_names.index(name)]) == 0
        variables[name] = values[:, :, 0] if scalar else values
    divergent = pystan_chains_first(fit["divergent__"], chains)[:, :, 0]
    return variables, divergent, t1 - t0, t2 - t1


def pystan_chains_first(values: Any, chains: int) -> np.ndarray:
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
    program: str, data: dict[str, Any], names: list[str] | None, *, chains: int, warmup: int, draws: int, seed: int,
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
    for name in list(fit.stan_variables()) if names is None else names:
        values = np.asarray(fit.stan_variable(name), dtype=np.float64)  # (chains * draws, *dims), chain-major
        variables[name] = values.reshape((chains, draws) + values.shape[1:])
    divergent = np.asarray(fit.method_variables()["divergent__"], dtype=np.float64).T  # (draws, chains) -> T
    return variables, divergent, t1 - t0, t2 - t1

