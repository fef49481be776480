"""Network configuration: one frozen, validated config per part of the estimator, round-tripping through JSON.

A `NetworkConfig` holds the summaries (`SummaryConfig`, with `SufficientConfig` for canonical-link GLMs), the two
flows (`FlowConfig`), the hand-made pooled statistics (`StatisticsConfig`) and the regression shift
(`ShiftConfig`). A part that is None is off. Options that only matter when a part is on live inside it.

Example:
    >>> config = NetworkConfig.from_dict({"summary": {"hidden": 32}, "shift": None})
    >>> config.summary.hidden, config.shift, config.statistics.profile
    (32, None, True)
    >>> NetworkConfig.from_dict(config.to_dict()) == config
    True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, Mapping

import numpy as np

from ..checks import Bound
from ..errors import ConfigError

__all__ = [
    "NetworkConfig",
    "SummaryConfig",
    "SufficientConfig",
    "FlowConfig",
    "StatisticsConfig",
    "ShiftConfig",
    "SHIFT_MAX_SPREAD",
    "network_changes",
]

# The default `ShiftConfig.max_spread`. A shift is used only for parameters whose linear prediction errs about
# equally across the pilot: the held-out residuals' spread (median absolute value) among the third of pilot
# datasets with the lowest predictions and among the third with the highest may differ by at most this factor.
# The flow sees the residual in units of one residual sd per parameter, so where that sd changes by more across
# datasets, the unit is off by as much at one end, which the flow must learn to undo. Group-level sds fail the
# test (a sd near zero is barely identified on the log scale and a large one is pinned down: ratios 1.6-2.7 on the
# exact normal model, sleepstudy and the AR(1)); residual sds, coefficients and hyper-means pass it (1.0-1.3). On
# the exact normal model the group-level sd's mean error was 0.20 exact sds with the shift and 0.11 without it,
# and the harder radon models' Pareto k-hat fell from 0.89 and 1.61 to 0.57 and 0.60 (BENCHMARKS.md, exact
# posterior and Stan agreement). The diffusion model, whose summaries are learned rather than sufficient, does
# better with every parameter shifted (`ddm_network`).
SHIFT_MAX_SPREAD = 1.5

# Where each key of the flat configuration of format version 2 lives now: the hint of the error for an unknown key
# (`mlnpe.io` maps old saves).
_MOVED = {
    "local_summary": "summary.local_kind", "global_summary": "summary.global_kind", "summary_hidden": "summary.hidden",
    "summary_depth": "summary.depth", "row_hidden": "summary.row_hidden", "global_attention": "summary.attention",
    "local_summary_dim": "summary.local_dim", "global_summary_dim": "summary.global_dim",
    "global_context": "summary.embedding", "local_extremes": "summary.extremes",
    "group_moments": "summary.group_moments", "sufficient": "summary.sufficient.family",
    "design_only": "summary.sufficient.design_only", "global_transforms": "global_flow.transforms",
    "global_hidden": "global_flow.hidden", "local_transforms": "local_flow.transforms",
    "local_hidden": "local_flow.hidden", "bins": "global_flow.bins and local_flow.bins",
    "affine": "global_flow.affine and local_flow.affine", "pooled_moments": "statistics (None: off)",
    "between_moments": "statistics.between", "profile": "statistics.profile",
    "profile_average": "statistics.profile_average", "glm_slopes": "statistics.glm_slopes",
    "scale_statistics": "statistics.group_fits and statistics.floor", "regression_shift": "shift (None: off)",
    "log_scale_shift": "shift.log_scale", "heteroscedastic_shift": "shift.heteroscedastic",
    "shift_max_spread": "shift.max_spread",
}  # fmt: skip


def _coerce(owner: str, name: str, default: Any, value: Any, bound: Bound | None) -> Any:
    """A field's value in the type of its default, inside its range (`bound`, `mlnpe.checks`). JSON and R give
    whole numbers as floats, vectors as lists and length-1 vectors as scalars."""
    where = f"{owner} `{name}`"
    if isinstance(default, bool):
        if isinstance(value, (bool, np.bool_)) or (
            isinstance(value, (int, float, np.integer, np.floating)) and value in (0, 1)
        ):
            return bool(value)
        raise ConfigError(f"{where} must be TRUE/FALSE (True/False), got {value!r}.")
    if isinstance(default, (int, float)):
        return (bound or Bound(type(default))).check(value, name, owner)
    if isinstance(default, tuple):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        element = bound or Bound(int)
        bad = ConfigError(f"{where} must be {element.describe().replace('an integer', 'integers')} (a tuple in "
                          f"Python, a vector c(...) in R), got {value!r}.")  # fmt: skip
        try:
            return tuple(int(element.check(v, name, owner)) for v in items)
        except ConfigError:
            raise bad from None
    if isinstance(default, str) or default is dataclasses.MISSING:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where} must be a string, got {value!r}.")
    return value


class _Config:
    """Shared behaviour of the configs: field coercion, validation of unknown keys, nested dicts and merging."""

    # sub-config fields: name -> class (a value of None, or False from R, turns the part off)
    parts: ClassVar[dict[str, type]] = {}
    # fields that may be None
    optional: ClassVar[tuple[str, ...]] = ()
    # the range of each numeric field (of each element of a tuple field); unlisted numbers: any finite value
    bounds: ClassVar[dict[str, Bound]] = {}

    def _coerce_fields(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            if f.name in self.parts:
                object.__setattr__(self, f.name, self._part(f.name, getattr(self, f.name)))
                continue
            if f.name in self.optional and getattr(self, f.name) is None:
                continue
            value = _coerce(type(self).__name__, f.name, f.default, getattr(self, f.name), self.bounds.get(f.name))
            object.__setattr__(self, f.name, value)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict (tuples as lists, parts that are off as None)."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, _Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    def _part(self, name: str, value: Any) -> Any:
        """A sub-config field's value: a config of its class, a dict of its fields (built from the defaults), or
        None / False (off)."""
        part = self.parts[name]
        if value is None or value is False or isinstance(value, part):
            return None if value is False else value
        if isinstance(value, Mapping):
            return part.from_dict(value)  # type: ignore[attr-defined]
        raise ConfigError(
            f"{type(self).__name__} `{name}` must be a {part.__name__}, a dict of its fields or None (off), got "
            f"{value!r}."
        )

    @classmethod
    def _as_changes(cls, d: Any, argument: str) -> dict[str, Any]:
        """A dict copy of a mapping of fields (None: no fields)."""
        if d is None:
            return {}
        if not isinstance(d, Mapping):
            raise ConfigError(
                f"{cls.__name__}: `{argument}` must be a dict of fields, e.g. {{'hidden': 32}} in Python or "
                f"list(hidden = 32) in R, got {type(d).__name__} {d!r}."
            )
        return dict(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None):
        """The config from a (nested, possibly partial) dict; missing keys keep their defaults."""
        d = cls._as_changes(d, "d")
        required = [f.name for f in fields(cls) if f.default is dataclasses.MISSING]  # type: ignore[arg-type]
        missing = [name for name in required if name not in d]
        if missing:
            raise ConfigError(f"{cls.__name__} needs {missing}, got {sorted(d, key=str)}.")
        cls._check_keys(d)
        base = cls(**{name: d.pop(name) for name in required})
        return base.merged(d)

    @classmethod
    def check_names(cls, d: Mapping[str, Any]) -> None:
        """Checks the names of a nested dict of changes, at every depth, before any config is built.

        Raises:
            ConfigError: a name that is no field, naming the known ones.
        """
        cls._check_keys(d)
        for name, part in cls.parts.items():
            value = d.get(name)
            if isinstance(value, Mapping):
                part.check_names(value)  # type: ignore[attr-defined]

    @classmethod
    def _check_keys(cls, d: Mapping[str, Any]) -> None:
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(d) - set(known), key=str)  # keys of any type (R, JSON) are named, not compared
        if not unknown:
            return
        hints = [f"`{key}` is now `{_MOVED[key]}`" for key in unknown if cls is NetworkConfig and key in _MOVED]
        fix = (" The configuration is nested: " + "; ".join(hints) + ", e.g. {'summary': {'hidden': 32}} in Python "
               "or list(summary = list(hidden = 32)) in R.") if hints else ""
        raise ConfigError(f"{cls.__name__} got unknown keys {unknown}; known keys: {known}.{fix}")

    def merged(self, changes: Mapping[str, Any] | None):
        """A copy with `changes` applied: a dict for a part is merged into it (built from its defaults when the
        part is off), None (or False) turns a part off, a config object replaces it."""
        changes = self._as_changes(changes, "changes")
        type(self)._check_keys(changes)
        updates: dict[str, Any] = {}
        for name, value in changes.items():
            part = self.parts.get(name)
            if part is None:
                updates[name] = value
            elif value is None or value is False:
                updates[name] = None
            elif isinstance(value, part):
                updates[name] = value
            elif isinstance(value, Mapping):
                current = getattr(self, name)
                updates[name] = part.from_dict(value) if current is None else current.merged(value)
            else:
                raise ConfigError(
                    f"{type(self).__name__} `{name}` must be a {part.__name__}, a dict of its fields or None (off), "
                    f"got {value!r}."
                )
        return replace(self, **updates) if updates else self  # type: ignore[type-var]


@dataclass(frozen=True)
class SufficientConfig(_Config):
    """A local summary of the sufficient statistics of a canonical-link GLM (`SufficientSummary`): it sees the
    response (row column 0) only through sum y x per group (and sum y^2 for "gaussian"), and the covariates through
    a deep set of their own. The amortized posterior then depends on the data only as the exact one does.

    Attributes:
        family: "gaussian", "poisson" or "binomial" (bernoulli too). For "poisson" and "binomial" the response is
            standardized by its scale only and the pooled statistics leave out every term with y^2.
        design_only: covariate columns outside the linear predictor (binomial trials).
        floor: added to the variances before their log (on the standardized scale).
        origin: take each group's intercept at the data's zero of the covariates, where brms's group-level
            intercepts are (False: at their pilot median).
    """

    family: str
    design_only: tuple[int, ...] = ()
    floor: float = 1e-6
    origin: bool = True

    bounds: ClassVar[dict[str, Bound]] = {
        "design_only": Bound(int, 1, meaning="an integer >= 1 (a covariate column; 0 is the response)"),
        "floor": Bound(float, 0, open_low=True),
    }

    def __post_init__(self) -> None:
        self._coerce_fields()
        if self.family not in ("gaussian", "poisson", "binomial"):
            raise ConfigError(
                f"SufficientConfig `family` must be 'gaussian', 'poisson' or 'binomial', got {self.family!r}."
            )


@dataclass(frozen=True)
class SummaryConfig(_Config):
    """The summary networks: h_local per group (rows of a group) and h_global per dataset (groups of a dataset).

    Attributes:
        local_kind: "deepset", "set_transformer", "lstm" or "gru" (rows in order: time series).
        global_kind: "deepset" or "set_transformer" (groups are exchangeable).
        hidden: width of the summary networks.
        depth: hidden layers (deep set) or attention blocks (set transformer).
        row_hidden: width of the deep set's per-row network (it runs once per row: keep it narrow).
        attention: attention-weighted pools in the global deep set (0: plain mean pooling).
        local_dim: learned dimension of h_local.
        global_dim: learned dimension of h_global.
        embedding: width of the learned embedding of h_global that the global flow sees (0: none). The raw global
            summary is wide (hundreds of pooled statistics); embedding it once per dataset keeps the flow's
            per-draw cost low.
        extremes: the local deep set also sees each row column's minimum and maximum over the group's rows, for
            models whose parameters bound the data (a diffusion model's non-decision time lies below every
            reaction time of its subject).
        group_moments: when the global summary is not a deep set (which appends them itself), append the mean and
            variance over groups of the local summaries: hyper-means and hyper-sds are close to these moments of
            per-group estimates, which attention blocks otherwise learn slowly.
        sufficient: a `SufficientConfig` to summarize each group by its sufficient statistics instead of
            `local_kind` (None: off).
    """

    local_kind: str = "deepset"
    global_kind: str = "deepset"
    hidden: int = 64
    depth: int = 2
    row_hidden: int = 16
    attention: int = 8
    local_dim: int = 16
    global_dim: int = 32
    embedding: int = 64
    extremes: bool = False
    group_moments: bool = True
    sufficient: SufficientConfig | None = None

    parts: ClassVar[dict[str, type]] = {"sufficient": SufficientConfig}
    bounds: ClassVar[dict[str, Bound]] = {
        **{name: Bound(int, 1) for name in ("hidden", "depth", "row_hidden", "local_dim", "global_dim")},
        "attention": Bound(int, 0, meaning="an integer >= 0 (0: plain mean pooling)"),
        "embedding": Bound(int, 0, meaning="an integer >= 0 (0: no embedding)"),
    }

    def __post_init__(self) -> None:
        self._coerce_fields()
        if self.local_kind not in ("deepset", "set_transformer", "lstm", "gru"):
            raise ConfigError(
                f"SummaryConfig `local_kind` must be 'deepset', 'set_transformer', 'lstm' or 'gru', got "
                f"{self.local_kind!r}."
            )
        if self.global_kind not in ("deepset", "set_transformer"):
            raise ConfigError(
                f"SummaryConfig `global_kind` must be 'deepset' or 'set_transformer' (groups are exchangeable), got "
                f"{self.global_kind!r}."
            )


@dataclass(frozen=True)
class FlowConfig(_Config):
    """A conditional neural spline flow (`ConditionalFlow`).

    Attributes:
        transforms: spline transforms.
        hidden: widths of the conditioner's hidden layers.
        bins: spline bins.
        affine: start with a conditional affine map.
    """

    transforms: int = 3
    hidden: tuple[int, ...] = (64, 64)
    bins: int = 8
    affine: bool = True

    bounds: ClassVar[dict[str, Bound]] = {
        "transforms": Bound(int, 1),
        "hidden": Bound(int, 1),
        "bins": Bound(int, 1),
    }

    def __post_init__(self) -> None:
        self._coerce_fields()


@dataclass(frozen=True)
class StatisticsConfig(_Config):
    """Hand-made statistics of the data appended to the global summary (`PooledStatistics`; rows of at most 8
    columns): the grand mean, the pooled within-group covariance, the within-group least-squares fit of the first
    column on the others and the log of its residual variance, log(sum N_j - J) and log J. Summed over all rows,
    they carry what every group says about a shared residual scale or slope, which a learned pool over groups of
    very different sizes recovers only roughly.

    Attributes:
        between: also the between-group statistics of the group means: their covariance, the least-squares fit of
            the first column's group means on the others', the log of its residual variance, the log of the
            sampling noise it contains and the signed log of their difference (a moment estimate of the
            group-level variance).
        profile: also the restricted (REML) log-likelihood profile of a random-intercept model for the group
            means at 16 values of the group-level sd, and the weighted least-squares coefficients at the best of
            them (and, for gaussian-like responses, the same profile per covariate for its slope's sd): what the
            data say about a group-level sd, which otherwise must be learned from the spread of group summaries.
        profile_average: with `profile`, also the coefficients averaged over the profile's grid with weights
            proportional to its likelihoods, the log of their averaged sampling variances v, each averaged
            coefficient times sigmoid(c - log v) at c = -6, -4, -2, 0, 2, and the averaged log sd ratio: the
            products let a linear shift represent a prior's shrinkage for any prior variance.
        glm_slopes: for "poisson" and "binomial" sufficient summaries, also the one-step estimate of the
            covariates' within-group slopes on the link scale (score over Fisher information from the model with
            a free intercept per group) and the log of that information.
        group_fits: for other responses with covariates, also separate least-squares fits per group: the log
            residual variance pooled over groups (sigma under random slopes) and moment estimates of the
            group-level variance of each coefficient.
        floor: added to variances before their log (of standardized rows; small scales stay distinguishable).
    """

    between: bool = True
    profile: bool = True
    profile_average: bool = True
    glm_slopes: bool = True
    group_fits: bool = True
    floor: float = 1e-8

    bounds: ClassVar[dict[str, Bound]] = {"floor": Bound(float, 0, open_low=True)}

    def __post_init__(self) -> None:
        self._coerce_fields()
        if self.profile_average and not self.profile:
            raise ConfigError("StatisticsConfig `profile_average` needs `profile`: pass profile_average=False too.")


@dataclass(frozen=True)
class ShiftConfig(_Config):
    """The regression shift: the global flow models each unconstrained global parameter minus its linear
    prediction from the pooled statistics (and the local summaries' fixed features), in units of the prediction's
    held-out residual sd: the regression adjustment of approximate Bayesian computation (Beaumont et al. 2002),
    fitted once to the pilot simulations. When the local summary has fixed features, the local flow is shifted the
    same way by a regression on them, the standardized globals and their products. Parameters the statistics
    predict poorly (held-out R^2 under 0.1) or unevenly (`max_spread`) keep the prior's standardization.

    Attributes:
        log_scale: positive global parameters are regressed on the log scale, and the flow's unit follows each
            dataset's predicted size (the log-scale residual sd carried to the flow's softplus scale).
        heteroscedastic: with `log_scale`, each dataset gets its own residual scale from a regression of the log
            squared residuals on the same statistics (Blum and Francois's non-linear regression adjustment, with
            linear models), calibrated on held-out pilot datasets.
        max_spread: the largest ratio between the held-out residual spreads of the pilot datasets with the lowest
            and the highest third of a parameter's predictions for which it is shifted (None: no limit).
    """

    log_scale: bool = True
    heteroscedastic: bool = True
    max_spread: float | None = SHIFT_MAX_SPREAD

    optional: ClassVar[tuple[str, ...]] = ("max_spread",)
    bounds: ClassVar[dict[str, Bound]] = {
        "max_spread": Bound(float, 1, infinite=True, meaning="a ratio >= 1 or None (no limit)"),
    }

    def __post_init__(self) -> None:
        self._coerce_fields()
        if self.heteroscedastic and not self.log_scale:
            raise ConfigError("ShiftConfig `heteroscedastic` needs `log_scale`: pass heteroscedastic=False too.")

    @property
    def spread_limit(self) -> float:
        """`max_spread`, with None (no limit) as infinity."""
        return math.inf if self.max_spread is None else float(self.max_spread)


@dataclass(frozen=True)
class NetworkConfig(_Config):
    """The estimator's networks, one config per part; a part that is None is off.

    Attributes:
        summary: the summary networks (`SummaryConfig`).
        global_flow: the flow of the global parameters given h_global (`FlowConfig`).
        local_flow: the one flow shared by every group's local parameters (`FlowConfig`).
        statistics: hand-made statistics appended to the global summary (`StatisticsConfig`; None: off).
        shift: the regression shift of the flows (`ShiftConfig`; needs `statistics`; None: off).
        log_inputs: row columns (0 = first response column, covariates after the responses) that the networks see
            as sign(v) log(1 + |v|): counts and other heavy-tailed inputs, whose raw scale would let a few huge
            simulated values dominate the standardization.
        log_response: the networks see log y instead of the response y (row column 0; positive responses, for
            which a non-positive value, such as padding, is seen as 0). With a gaussian `SufficientConfig` the
            summaries are then the sufficient statistics of a lognormal model.

    Example:
        >>> NetworkConfig.from_dict({"global_flow": {"transforms": 4}}).global_flow
        FlowConfig(transforms=4, hidden=(64, 64), bins=8, affine=True)
    """

    summary: SummaryConfig = SummaryConfig()
    global_flow: FlowConfig = FlowConfig(transforms=3, hidden=(64, 64))
    local_flow: FlowConfig = FlowConfig(transforms=1, hidden=(32, 32))
    statistics: StatisticsConfig | None = StatisticsConfig()
    shift: ShiftConfig | None = ShiftConfig()
    log_inputs: tuple[int, ...] = ()
    log_response: bool = False

    parts: ClassVar[dict[str, type]] = {
        "summary": SummaryConfig,
        "global_flow": FlowConfig,
        "local_flow": FlowConfig,
        "statistics": StatisticsConfig,
        "shift": ShiftConfig,
    }

    bounds: ClassVar[dict[str, Bound]] = {
        "log_inputs": Bound(int, 0, meaning="an integer >= 0 (a row column: 0 is the response)"),
    }

    def __post_init__(self) -> None:
        self._coerce_fields()
        for name in ("summary", "global_flow", "local_flow"):
            if getattr(self, name) is None:
                raise ConfigError(f"NetworkConfig `{name}` cannot be off: pass a {self.parts[name].__name__} or a dict.")
        if self.shift is not None and self.statistics is None:
            raise ConfigError("NetworkConfig `shift` needs `statistics` (its regressors): pass shift=None too.")
        if self.summary.sufficient is not None and 0 in self.log_inputs:
            raise ConfigError(
                "NetworkConfig `log_inputs` must not include the response (column 0) with `summary.sufficient`: its "
                "statistics must stay linear in y. Drop 0 from `log_inputs`."
            )
        if self.log_response and 0 in self.log_inputs:
            raise ConfigError(
                "NetworkConfig `log_response` and `log_inputs` both transform the response (column 0): drop 0 from "
                "`log_inputs`."
            )

    @property
    def sufficient_family(self) -> str:
        """The sufficient summary's family, or "none"."""
        return "none" if self.summary.sufficient is None else self.summary.sufficient.family

    @property
    def design_only(self) -> tuple[int, ...]:
        """Covariate columns outside the linear predictor (those of the sufficient summary; () without one)."""
        return () if self.summary.sufficient is None else self.summary.sufficient.design_only


def network_changes(network: Any) -> NetworkConfig | dict[str, Any]:
    """The `network` argument of the estimators: a NetworkConfig as it is, else a dict of the parts to change ({}
    for None).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(network, NetworkConfig):
        return network
    if network is not None and not isinstance(network, Mapping):
        raise ConfigError(
            f"`network` must be a NetworkConfig, a dict of its parts (e.g. {{'summary': {{'hidden': 32}}}}) or None, "
            f"got {type(network).__name__}."
        )
    return dict(network or {})
