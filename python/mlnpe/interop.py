"""The entry points that the R package calls through reticulate, and nothing else crosses the bridge.

This module only coerces R's values into the Python API's arguments and wraps the answers; every algorithm it
calls is public Python (`mlnpe.formula`, `mlnpe.inference.policy`, `mlnpe.formula.logo`, ...).

reticulate 1.28 cannot convert NumPy 2 arrays or pandas frames, so every function here takes and returns only
plain Python types: dict, list, str, float, int, bool and None.

Conventions:

* Data come from R as ``{column: list}``. A factor comes as ``{"codes": [0-based ints], "levels": [str]}`` and
  becomes a pandas Categorical, so R's level order is kept.
* The settings of a fit come as one list ``control`` (:class:`FitControl`), with R's argument names; each field
  is checked here, before any model is built, by the checks the Python API uses (`mlnpe.checks`, the configs),
  which accept R's whole numbers as floats.
* Draws travel as ``{"variables": [V names], "shape": [S, V], "data": [S * V floats, column-major]}``.
  Prediction matrices use the same layout: ``{"shape": [S, N], "data": [...]}``.
* A saved model directory (``FormulaNPE.save``) is the handle of a trained amortizer. R keeps only the path and
  its own copy of the draws, so R objects survive R sessions. A small memo avoids re-reading a directory.
* Every entry point returns an envelope ``{"ok", "value", "error", "warnings"}``. ``error`` is None or
  ``{"type", "message", "mlnpe", "traceback"}``; ``warnings`` lists ``{"type", "message"}`` of the warnings raised
  by mlnpe. R turns the error into a condition of class ``mlnpe_error`` and re-emits the warnings.

Example:
    >>> out = sitrep()
    >>> out["ok"], sorted(out["value"])[:2]
    (True, ['cache_dir', 'executable'])
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
import traceback
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .checks import check_choice, check_flag, check_float, check_int, check_seed
from .errors import ConfigError, DataError, MlnpeError, RangeError
from .version import __version__

__all__ = ["FitControl", "sitrep", "fit_model", "refit", "predict", "logo", "sbc", "save_model", "load_model"]

_KINDS = ("predict", "epred", "linpred", "log_lik")
_MEMO_SIZE = 4
_MEMO: "OrderedDict[str, tuple[tuple[float, ...], Any]]" = OrderedDict()


# ---- envelope -----------------------------------------------------------------------------------------------


def _from_mlnpe(category: type, filename: str) -> bool:
    """Whether a warning was raised by mlnpe itself (torch's and pandas's own warnings stay in Python)."""
    package = str(Path(__file__).parent)
    return category.__module__.startswith("mlnpe") or str(filename).startswith(package)


def _entry(fn: Callable[..., Any]) -> Callable[..., dict[str, Any]]:
    """Wraps an entry point: errors and warnings become data that R turns into conditions."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> dict[str, Any]:
        value, error = None, None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                value = fn(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - every failure must reach R as a condition, not a crash
                error = {
                    "type": type(e).__name__,
                    "message": str(e),
                    "mlnpe": isinstance(e, MlnpeError),
                    "traceback": "".join(traceback.format_exception(type(e), e, e.__traceback__)),
                }
        forwarded = [
            {"type": w.category.__name__, "message": str(w.message)}
            for w in caught
            if _from_mlnpe(w.category, w.filename)
        ]
        # keep the order of first appearance, drop repeats (the same range warning for every held-out group)
        unique = list({(w["type"], w["message"]): w for w in forwarded}.values())
        return {"ok": error is None, "value": value, "error": error, "warnings": unique}

    return wrapper


# ---- conversions from R ---------------------------------------------------------------------------------------


def _as_list(x: Any) -> list[Any]:
    """reticulate turns length-1 R vectors into scalars: make every column a list again."""
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _frame(data: Mapping[str, Any], argument: str = "data") -> Any:
    """A pandas DataFrame from R's ``{column: list | {"codes", "levels"}}``."""
    import pandas as pd

    if not isinstance(data, Mapping) or not data:
        raise DataError(f"`{argument}` must be a named list of columns with at least one column, got {data!r}.")
    columns: dict[str, Any] = {}
    for name, column in data.items():
        if isinstance(column, Mapping):
            codes = np.asarray(_as_list(column.get("codes")), dtype=np.int64)
            levels = [str(v) for v in _as_list(column.get("levels"))]
            if codes.size and (codes.min() < 0 or codes.max() >= len(levels)):
                raise DataError(f"`{argument}` column {name!r} has factor codes outside its {len(levels)} levels.")
            columns[str(name)] = pd.Categorical.from_codes(codes, categories=levels)
        else:
            columns[str(name)] = _as_list(column)
    lengths = {name: len(v) for name, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"`{argument}` columns must have equal lengths, got {lengths}.")
    return pd.DataFrame(columns)


def _settings(values: Any, argument: str) -> dict[str, Any]:
    """A named list of settings from R (an empty R list arrives as []) as a dict. The values pass unchanged: the
    configs accept R's whole numbers as floats and check every field's type and range themselves."""
    if values is None or (isinstance(values, list) and not values):
        return {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"`{argument}` must be a named list of settings, got {values!r}.")
    return dict(values)


def _train_config(train: Mapping[str, Any] | None) -> Any:
    from .formula.cache import training_config

    with _argument("train"):
        return training_config(_settings(train, "train"))


def _network(network: Mapping[str, Any] | None) -> dict[str, Any]:
    """R's `network` list as the nested dict that `NetworkConfig.merged` reads and checks (R's numbers and vectors
    included); an empty R list for a part arrives as [] and changes nothing."""
    parts = {"summary", "sufficient", "global_flow", "local_flow", "statistics", "shift"}

    def nested(values: Any) -> Any:
        if isinstance(values, list) and not values:
            return {}
        if not isinstance(values, Mapping):
            return values
        return {key: nested(value) if key in parts else value for key, value in values.items()}

    from .networks.config import NetworkConfig

    out = nested(_settings(network, "network"))
    with _argument("network"):
        NetworkConfig.check_names(out)  # names now; values when the model is built (its defaults depend on it)
    return out


@contextlib.contextmanager
def _argument(name: str) -> Iterator[None]:
    """Prefixes a ConfigError with the R argument it came from (`train`, `network`, `refine_control`)."""
    try:
        yield
    except ConfigError as error:
        raise ConfigError(f"`{name}`: {error}") from None


def _range(value: Any, name: str) -> tuple[int, int] | None:
    from .core.spec import check_sizes

    return None if value is None else check_sizes(name, _as_list(value))


def _priors(priors: Any) -> list[Any]:
    """PriorSpecs from R's rows ``{"prior", "class", "coef", "group", "lb", "ub"}`` (brms's column names)."""
    from .formula.priors import priors_from_table

    rows = []
    for row in _as_list(priors):
        if not isinstance(row, Mapping):
            raise DataError(f"`prior` rows must be named lists, got {row!r}.")
        rows.append({k: (None if v is None else v) for k, v in row.items()})
    return priors_from_table(rows)


def _auto_flag(value: Any, name: str) -> bool | str:
    if isinstance(value, str) and value == "auto":
        return "auto"
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise ConfigError(f"`{name}` must be TRUE, FALSE or \"auto\", got {value!r}.")


def _cache(value: Any) -> bool | str:
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, str) and value):
        return value if isinstance(value, str) else bool(value)
    raise ConfigError(f"`cache` must be TRUE, FALSE or a directory, got {value!r}.")


def _refine_config(control: Mapping[str, Any] | None, seed: int | None) -> Any:
    from .inference.refine import RefineConfig

    values = _settings(control, "refine_control")
    known = [f.name for f in dataclasses.fields(RefineConfig)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"`refine_control` has unknown settings {unknown}; known: {known}.")
    if values.get("seed") is None:
        values["seed"] = seed
    with _argument("refine_control"):
        return RefineConfig(**values)


@dataclasses.dataclass(frozen=True)
class FitControl:
    """The settings of R's ``mlnpe()`` and ``update()``: R's one list ``control``, checked field by field.

    Each field is checked here, before any model is built, with the checks of the API that uses it: `groups` and
    `rows` as `FormulaNPE` checks them, `focus` as `FormulaNPE.train`, `train` by `TrainConfig`, `refine_control`
    by `RefineConfig`, `ndraws`, `seed` and `psis` as `FormulaNPE.fit` (`mlnpe.checks`); `network` is checked
    by `NetworkConfig` when the model is built. R checks the types of its arguments before Python loads.

    Attributes:
        groups, rows: trained (min, max) ranges of groups and of rows per group, or None for data-based ones.
        network: NetworkConfig overrides (a nested dict of the parts to change).
        train: the TrainConfig (steps, batch_size, seed, progress, ...).
        cache: True (the default cache directory), False (train every time) or a cache directory.
        ndraws: posterior draws.
        seed: seed of the draws.
        psis: compute the PSIS k-hat and ESS.
        resample: return draws importance-resampled by their PSIS weights: True, False, or "auto" (resample
            when k-hat is at most its threshold, so the reweighted draws are the better approximation).
        focus: focusing rounds of training (`FormulaNPE.train`): 0 amortizes over the whole prior, k >= 1
            concentrates the simulations on datasets like `data`.
        refine: replace the amortized draws by HMC draws of the exact posterior (`FormulaNPE.fit`): True,
            False, or "auto" (when k-hat is above 0.7 or the PSIS ESS below 10 % of the draws).
        refine_control: the RefineConfig (chains, warmup, target_accept, trajectory, max_leapfrog, pool); its
            seed defaults to `seed`.

    Example:
        >>> control = FitControl.from_r({"ndraws": 100.0, "refine": False, "train": {"steps": 50.0}})
        >>> control.ndraws, control.refine, control.train.steps
        (100, False, 50)
    """

    groups: tuple[int, int] | None = None
    rows: tuple[int, int] | None = None
    network: dict[str, Any] = dataclasses.field(default_factory=dict)
    train: Any = None
    cache: bool | str = True
    ndraws: int = 4000
    seed: int | None = None
    psis: bool = True
    resample: bool | str = "auto"
    focus: Any = 1
    refine: bool | str = "auto"
    refine_control: Any = None

    @classmethod
    def from_r(cls, control: Mapping[str, Any] | None, fields: Sequence[str] | None = None) -> "FitControl":
        """Coerces R's `control` list (an empty R list arrives as []).

        Arguments:
            control: ``{name: value}`` with the names of the attributes; missing names take their defaults.
            fields: the names this entry point accepts (default: all).

        Raises:
            ConfigError: a name outside `fields`, or a value that R's types cannot give (e.g. `ndraws = 1.5`).
        """
        from .formula.focus import check_focus

        values = _settings(control, "control")
        allowed = [f.name for f in dataclasses.fields(cls)] if fields is None else list(fields)
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ConfigError(f"`control` has unknown settings {unknown}; known: {allowed}.")
        seed = check_seed(values.get("seed"))
        return cls(
            groups=_range(values.get("groups"), "groups"),
            rows=_range(values.get("rows"), "rows"),
            network=_network(values.get("network")),
            train=_train_config(values.get("train")),
            cache=_cache(values.get("cache", True)),
            ndraws=check_int(values.get("ndraws", 4000), "ndraws"),
            seed=seed,
            psis=check_flag(values.get("psis", True), "psis"),
            resample=_auto_flag(values.get("resample", "auto"), "resample"),
            focus=check_focus(values.get("focus", 1)),
            refine=_auto_flag(values.get("refine", "auto"), "refine"),
            refine_control=_refine_config(values.get("refine_control"), seed),
        )


# ---- conversions to R -------------------------------------------------------------------------------------------


def _matrix(values: np.ndarray) -> dict[str, Any]:
    values = np.asarray(values, dtype=np.float64)
    return {"shape": [int(s) for s in values.shape], "data": values.ravel(order="F").tolist()}


def _float(x: Any) -> float | None:
    return None if x is None else float(x)


def _prior_table(model: Any) -> dict[str, list[str]]:
    table = model.prior_summary()
    return {str(c): [str(v) for v in table[c].tolist()] for c in table.columns}


def _describe(model: Any, path: Path) -> dict[str, Any]:
    """Everything R shows about an amortizer (no draws)."""
    from .formula.names import brms_rename

    family = model.family
    return {
        "formula": model.terms.formula,
        "response": model.terms.response,
        "group": model.terms.group,
        "family": family.name,
        "link": family.link,
        "aux": list(family.aux_names),
        "x_names": [brms_rename(x) for x in model.info.x_names],
        "z_names": [brms_rename(z) for z in model.z_names],
        "crossed": [{"group": c.group, "levels": [str(v) for v in c.levels], "z_names": [brms_rename(z) for z in c.z_names]}
                    for c in model.crossed],  # fmt: skip
        "intercept": bool(model.terms.intercept),
        "groups": [int(g) for g in model.groups],
        "rows": [int(r) for r in model.rows],
        "network": {k: (list(v) if isinstance(v, tuple) else v) for k, v in model.network.to_dict().items()},
        "trained": bool(model.npe.trained),
        "train_seconds": float(model.train_seconds or model.npe.history.train_seconds),
        "focus": max(len(model.rounds) - 1, 0),
        "training": _training(model.npe.history),
        "region": {k: [float(a), float(b)] for k, (a, b) in model.region.items()},
        "prior_summary": _prior_table(model),
        "model_path": str(path),
        "versions": _versions(),
    }


def _training(history: Any) -> dict[str, Any]:
    """How the last training ended: `stopped` ("certificate", "steps", "time limit", ...), its steps, device and
    last certificate check (k-hat of the training data at that step), for R's messages and summary()."""
    last = history.checks[-1] if history.checks else None
    return {
        "stopped": str(history.stopped or ""),
        "steps": int(history.step[-1]) if history.step else 0,
        "device": str(history.device),
        "khat": None if last is None else float(last["khat"]),
        "khat_step": None if last is None else int(last["step"]),
    }


def _diagnostics(fit: Any, resampled: bool) -> dict[str, Any]:
    """A fit's PSIS and refinement diagnostics under the names R's fit object keeps them."""
    return {
        "pareto_k": _float(fit.pareto_k),
        "ess": _float(fit.ess),
        "khat_threshold": None if fit.psis is None else float(fit.psis.khat_threshold),
        "diagnosis": None if fit.psis is None else fit.psis.diagnosis(),
        "resampled": bool(resampled),
        "refined": fit.refinement is not None,
        "refine": None if fit.refinement is None else _refine_summary(fit.refinement),
    }


def _refine_summary(result: Any) -> dict[str, Any]:
    return {
        "chains": int(result.chains),
        "rhat_max": _float(result.max_rhat),
        "ess_bulk_min": _float(result.min_ess),
        "divergences": int(result.divergences),
        "accept_rate": _float(result.accept_rate),
        "step_size": _float(result.step_size),
        "seconds": float(result.seconds),
        "problems": list(result.problems()),
    }


def _fit_result(model: Any, path: Path, newdata: Any, control: FitControl) -> dict[str, Any]:
    """Fits `newdata` (None: the model's training data) and describes the fit and its draws for R."""
    from .inference.policy import use_resampling

    fit = model.fit(newdata, n_draws=control.ndraws, seed=control.seed, psis=control.psis, refine=control.refine,
                    refine_config=control.refine_control)  # fmt: skip
    resample = use_resampling(fit, control.resample)
    draws = fit.resampled(control.ndraws, control.seed) if resample else fit.draws
    result = _describe(model, path)
    result.update(
        {
            "variables": [str(c) for c in draws.columns],
            **_matrix(draws.to_numpy()),
            "diagnostics": _diagnostics(fit, resample),
            "seconds": float(fit.seconds),
            "levels": [str(level) for level in fit.design.levels],
            "nobs": int(len(fit.design.y)),
        }
    )
    return result


# ---- model handles -------------------------------------------------------------------------------------------


def _stamp(path: Path) -> tuple[float, ...]:
    files = [path / "formula.json", path / "amortizer" / "weights.pt"]
    return tuple(f.stat().st_mtime if f.exists() else -1.0 for f in files)


def _load(model_path: str) -> Any:
    """The FormulaNPE saved at `model_path`, memoized while its files are unchanged."""
    from .errors import LoadError
    from .formula import FormulaNPE

    path = Path(str(model_path)).expanduser().resolve()
    if not path.is_dir():
        raise LoadError(
            f"no saved amortizer at {str(path)!r}: the directory is gone (a cache that was cleared, or a temporary "
            "directory of an ended R session). Refit with mlnpe(), or save amortizers with save_amortizer()."
        )
    key, stamp = str(path), _stamp(path)
    hit = _MEMO.get(key)
    if hit is not None and hit[0] == stamp:
        _MEMO.move_to_end(key)
        return hit[1]
    model = FormulaNPE.load(path)
    _MEMO[key] = (stamp, model)
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return model


def _remember(path: Path, model: Any) -> None:
    key = str(path.expanduser().resolve())
    _MEMO[key] = (_stamp(path), model)
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


# ---- entry points --------------------------------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import numpy
    import torch

    out = {"python": sys.version.split()[0], "mlnpe": __version__, "torch": str(torch.__version__),
           "numpy": numpy.__version__}
    try:
        import pandas

        out["pandas"] = pandas.__version__
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return out


@_entry
def sitrep() -> dict[str, Any]:
    """Versions and paths of the Python side, for `mlnpe_sitrep()` in R."""
    import torch

    from .formula import cache_dir

    return {
        "versions": _versions(),
        "executable": sys.executable,
        "mlnpe_path": str(Path(__file__).parent),
        "cache_dir": str(cache_dir()),
        "torch_threads": int(torch.get_num_threads()),
    }


@_entry
def fit_model(
    formula: str,
    data: Mapping[str, Any],
    family: Any = "gaussian",
    priors: Any = None,
    control: Mapping[str, Any] | None = None,
    save_to: str | None = None,
) -> dict[str, Any]:
    """Trains (or loads from the cache) the amortizer of a formula model and fits `data` (R's ``mlnpe()``).

    Arguments:
        formula: brms formula text, e.g. "y ~ x + (1 + x | g)".
        data: the data, ``{column: list | {"codes", "levels"}}``.
        family: a family name or ``{"family", "link"}``.
        priors: rows of a brms prior table (``prior, class, coef, group, lb, ub``), or None for the defaults.
        control: the settings (:class:`FitControl`): groups, rows, network, train, cache, ndraws, seed, psis,
            resample, focus, refine, refine_control.
        save_to: where to save the amortizer when `cache` is False (the handle R keeps).

    Returns:
        The draws (see the module docstring), ``diagnostics`` (PSIS and refinement, under R's names),
        ``prior_summary`` (dict of columns), ``levels``, ``from_cache``, ``model_path``, ``train_seconds``,
        ``seconds`` and the model's description.
    """
    from .formula import cache_dir, trained_model

    frame = _frame(data)
    control = FitControl.from_r(control)
    started = time.perf_counter()
    model, from_cache = trained_model(
        str(formula), frame, family, _priors(priors), train=control.train, cache=control.cache, focus=control.focus,
        groups=control.groups, rows=control.rows, network=control.network,
    )
    elapsed = time.perf_counter() - started
    if control.cache is False:
        if not save_to:
            raise ConfigError("`save_to` is required when `cache` is False: the amortizer needs a directory.")
        path = model.save(Path(str(save_to)))
    else:
        root = cache_dir() if control.cache is True else Path(str(control.cache))
        path = root / model.spec_hash(control.train, control.focus)
    _remember(path, model)
    out = _fit_result(model, path, None, control)
    out["from_cache"] = bool(from_cache)
    out["setup_seconds"] = float(elapsed)
    out["train"] = control.train.to_dict()
    return out


_REFIT_CONTROL = ("ndraws", "seed", "psis", "resample", "refine", "refine_control")


@_entry
def refit(model_path: str, data: Mapping[str, Any], control: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Fits new data with a saved amortizer: no training, a forward pass (and the HMC refinement when `refine`
    asks for it) (R's ``update(fit, newdata =)``). `control` holds ndraws, seed, psis, resample, refine and
    refine_control (:class:`FitControl`)."""
    model = _load(model_path)
    control = FitControl.from_r(control, _REFIT_CONTROL)
    out = _fit_result(model, Path(str(model_path)), _frame(data, "newdata"), control)
    out["from_cache"] = True
    return out


def _draws_frame(draws: Mapping[str, Any]) -> Any:
    """R's draws ``{"variables", "shape", "data"}`` as a pandas DataFrame with the brms names as columns."""
    import pandas as pd

    variables = [str(v) for v in _as_list(draws.get("variables"))]
    shape = [check_int(s, "draws shape", 0) for s in _as_list(draws.get("shape"))]
    values = np.asarray(_as_list(draws.get("data")), dtype=np.float64)
    if len(shape) != 2 or shape[1] != len(variables) or values.size != shape[0] * shape[1]:
        raise DataError(f"`draws` must hold {len(variables)} variables of equal length; got shape {shape}.")
    return pd.DataFrame(values.reshape(shape[1], shape[0]).T, columns=variables)


@_entry
def predict(
    model_path: str,
    data: Mapping[str, Any],
    draws: Mapping[str, Any],
    kind: str = "predict",
    newdata: Mapping[str, Any] | None = None,
    seed: int | None = None,
    allow_new_levels: bool = False,
    include_group_effects: bool = True,
) -> dict[str, Any]:
    """Predictions of a fit: a (draws, rows) matrix in the layout of the module docstring.

    Arguments:
        model_path: the saved amortizer.
        data: the data the draws belong to (their group levels).
        draws: the fit's draws (brms names; any subset of draws, all variables).
        kind: "predict" (posterior predictive draws), "epred" (expected response), "linpred" (linear predictor)
            or "log_lik" (pointwise log-likelihood).
        newdata: other rows to predict (new levels need `allow_new_levels`); None for `data`.
        seed: seed of "predict"'s randomness and of the effects of new levels.
        allow_new_levels: draw the effects of unseen levels from their prior.
        include_group_effects: False leaves out all group-level effects (brms's ``re_formula = NA``).
    """
    from .formula.fit import FormulaFit, prediction_frame, with_new_levels
    from .formula.names import draws_from_brms

    kind, seed = check_choice(kind, "kind", _KINDS), check_seed(seed)
    allow_new_levels = check_flag(allow_new_levels, "allow_new_levels")
    include_group_effects = check_flag(include_group_effects, "include_group_effects")
    model = _load(model_path)
    _, design = model.grouped_data(_frame(data))
    raw = draws_from_brms(model, _draws_frame(draws), design.levels)
    if not include_group_effects:
        raw = dataclasses.replace(raw, local_draws=np.zeros_like(raw.local_draws))
    frame = None
    if newdata is not None:
        frame = prediction_frame(model, _frame(newdata, "newdata"), kind == "log_lik", not include_group_effects)
        raw, design = with_new_levels(model, raw, design, frame, allow_new_levels or not include_group_effects, seed)
        if not include_group_effects:
            raw = dataclasses.replace(raw, local_draws=np.zeros_like(raw.local_draws))
    fit = FormulaFit(model, raw, design)
    method = {
        "predict": fit.posterior_predict,
        "epred": fit.posterior_epred,
        "linpred": fit.linear_predictor,
        "log_lik": fit.log_lik,
    }[kind]
    return _matrix(method(newdata=frame, seed=seed))


@_entry
def logo(
    model_path: str,
    data: Mapping[str, Any],
    n_draws: int = 1000,
    n_local: int = 20,
    seed: int | None = None,
    group: str | None = None,
) -> dict[str, Any]:
    """Leave-one-group-out cross-validation with the amortizer (`mlnpe.formula.logo.formula_logo`), R's ``logo()``;
    `group` names the grouping factor whose levels are left out (None: the primary one).

    Returns:
        ``{"levels", "elpd", "nobs", "pareto_k", "ess_local"}``: per group its elpd, number of rows, the PSIS k-hat
        of the fit without it (None where there is none), and the effective sample size of the estimate's
        S x nsim importance weights.
    """
    from .formula.logo import formula_logo

    n_draws, n_local, seed = check_int(n_draws, "ndraws"), check_int(n_local, "nsim"), check_seed(seed)
    model = _load(model_path)
    result = formula_logo(model, _frame(data), n_draws=n_draws, n_local=n_local, seed=seed,
                          group=None if group is None else str(group))
    return {
        "levels": list(result.levels),
        "elpd": result.elpd_j.tolist(),
        "nobs": result.nobs_j.tolist(),
        "pareto_k": [None if math.isnan(k) else float(k) for k in result.pareto_k],
        "ess_local": result.ess_j.tolist(),
    }


@_entry
def sbc(
    model_path: str,
    n_datasets: int = 200,
    n_draws: int = 250,
    seed: int | None = None,
    prob: float = 0.99,
    plot_dir: str | None = None,
) -> dict[str, Any]:
    """Simulation-based calibration of the amortizer (`FormulaNPE.sbc`) as columns R makes a data frame of.

    With `plot_dir`, also writes `sbc_ecdf.png` (ECDF differences and their simultaneous band),
    `recovery_global.png` and `recovery_local.png` there and returns their paths in `plots`.
    """
    n_datasets, n_draws = check_int(n_datasets, "ndatasets", 10), check_int(n_draws, "ndraws", 2)
    seed, prob = check_seed(seed), check_float(prob, "prob", 0, 1, open_low=True, open_high=True)
    model = _load(model_path)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    result = model.sbc(n_datasets, n_draws, seed, prob)
    rows = result.table()
    out: dict[str, Any] = {key: [row[key] for row in rows] for key in rows[0]}
    out.update(n_datasets=result.n_datasets, n_draws=result.n_draws, prob=result.prob, seed=seed, plots=[])
    if plot_dir is not None:
        folder = Path(str(plot_dir)).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        for name, draw in (("sbc_ecdf.png", result.plot_ecdf), ("recovery_global.png", result.plot_recovery),
                           ("recovery_local.png", lambda path: result.plot_recovery(path, local=True))):  # fmt: skip
            draw(folder / name)
            out["plots"].append(str(folder / name))
    return out


@_entry
def study(
    model_path: str,
    grid: Mapping[str, Any] | None = None,
    truth: Mapping[str, Any] | None = None,
    n_groups: Any = None,
    n_rows: Any = None,
    n_datasets: int = 200,
    n_draws: int = 1000,
    seed: int | None = None,
    level: float = 0.95,
    threshold: float = 0.975,
    progress: bool = False,
    workers: Any = None,
    checkpoint: str | None = None,
    means: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A simulation study with the amortizer (`FormulaNPE.simulate_study`), R's ``simulate_study()``; `workers`
    is its `client` (a number of local worker processes or a dask scheduler's address).

    Returns:
        ``{"summary": columns, "datasets": columns, "level", "threshold", "seconds", "seed"}``.
    """
    n_datasets, n_draws = check_int(n_datasets, "ndatasets", 2), check_int(n_draws, "ndraws", 10)
    seed = check_seed(seed)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (2**31))
    model = _load(model_path)
    sizes = {name: None if v is None else _as_list(v) for name, v in (("ngroups", n_groups), ("nrows", n_rows))}
    means = None if means is None else {str(k): float(v) for k, v in dict(means).items()}
    grid = None if grid is None else {str(k): _as_list(v) for k, v in dict(grid).items()}
    truth = None if truth is None else {str(k): float(v) for k, v in dict(truth).items()}
    try:
        result = model.simulate_study(grid, truth, sizes["ngroups"], sizes["nrows"], n_datasets, n_draws, seed,
                                      level=float(level), threshold=float(threshold), progress=bool(progress),
                                      client=workers, checkpoint=checkpoint,
                                      means=means)  # fmt: skip
    except (ConfigError, RangeError) as error:  # R's argument names
        message = str(error).replace("`n_groups`", "`ngroups`").replace("`n_rows`", "`nrows`")
        raise type(error)(message) from None

    def columns(frame: Any) -> dict[str, list[Any]]:
        return {str(c): [v.item() if hasattr(v, "item") else v for v in frame[c]] for c in frame.columns}

    return {"summary": columns(result.summary), "datasets": columns(result.datasets), "level": result.level,
            "threshold": result.threshold, "seconds": result.seconds, "seed": seed}


@_entry
def save_model(model_path: str, path: str) -> str:
    """Copies a trained amortizer to `path` (a directory; created) and returns the path."""
    model = _load(model_path)
    target = model.save(Path(str(path)).expanduser())
    return str(target)


@_entry
def load_model(path: str) -> dict[str, Any]:
    """Loads a saved amortizer and describes it (formula, family, priors, trained ranges, versions)."""
    resolved = Path(str(path)).expanduser().resolve()
    model = _load(str(resolved))
    return _describe(model, resolved)
