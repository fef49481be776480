"""Two-level model specification: parameters with supports, priors and a vectorized simulator.

A model has global parameters (hyperparameters tau and shared parameters omega), local parameters lambda_j
of every group j, and a simulator of each group's rows given (lambda_j, omega, covariates). Subclass
:class:`TwoLevelModel` to bring your own simulator; nothing here needs a tractable likelihood.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from .data import GroupedBatch, make_masks
from ..checks import check_int
from ..errors import ConfigError, SpecError
from .constraints import Bijector, get_support

__all__ = ["ParamSpec", "TwoLevelModel", "SimulatedBatch", "simulate_batch", "check_range", "check_sizes"]


@dataclass(frozen=True)
class ParamSpec:
    """One parameter block.

    Attributes:
        name: the parameter's name (e.g. "mu", "tau", "alpha").
        support: "real", "positive", "unit_interval", "interval:a:b", "correlation:k", or a Support.
        labels: names of the scalars of a multi-dimensional block (default name[1], name[2], ...).
    """

    name: str
    support: Any = "real"
    labels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise SpecError(f"ParamSpec `name` must be a non-empty string, got {self.name!r}.")
        object.__setattr__(self, "support", get_support(self.support))
        dim = self.support.constrained_dim()
        labels = tuple(self.labels) or ((self.name,) if dim == 1 else tuple(f"{self.name}[{i + 1}]" for i in range(dim)))
        if len(labels) != dim:
            raise SpecError(f"ParamSpec {self.name!r}: `labels` has {len(labels)} names for {dim} scalars.")
        object.__setattr__(self, "labels", labels)

    @property
    def dim(self) -> int:
        return self.support.constrained_dim()

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "support": self.support.to_dict(), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ParamSpec":
        return cls(d["name"], d["support"], tuple(d.get("labels", ())))


def bijector_of(params: Sequence[ParamSpec]) -> Bijector:
    """The bijector of a list of parameter blocks, in order."""
    return Bijector([p.support for p in params])


def labels_of(params: Sequence[ParamSpec]) -> list[str]:
    """Scalar names of a list of parameter blocks, in order."""
    return [label for p in params for label in p.labels]


class TwoLevelModel(abc.ABC):
    """A two-level generative model, vectorized over datasets and groups in torch.

    Subclasses set ``global_params``, ``local_params``, ``y_dim`` (and ``x_dim`` with ``sample_covariates``
    when rows have covariates) and implement the three sampling methods. Shapes use B datasets, J groups
    (padded), N rows (padded), G global scalars and L local scalars; all values are on the constrained scale.

    Example:
        >>> from mlnpe.core.models import NormalHierarchical
        >>> model = NormalHierarchical()
        >>> sims = simulate_batch(model, 4, (2, 5), (1, 10), torch.Generator().manual_seed(0))
        >>> sims.batch.y.shape[0]
        4
    """

    global_params: tuple[ParamSpec, ...] = ()
    local_params: tuple[ParamSpec, ...] = ()
    y_dim: int = 1
    x_dim: int = 0
    y_names: tuple[str, ...] = ()
    x_names: tuple[str, ...] = ()
    ordered_rows: bool = False
    #: (global scalar, covariate column) per global parameter with real support that enters the model as
    #: covariate * parameter on every row (the effects of a formula model's other grouping factors); the networks
    #: then see those covariates only through `mlnpe.networks.effects`
    level_effects: tuple[tuple[int, int], ...] = ()
    #: (anchor, effect scalars) per block of real global scalars whose mean the anchor absorbs (the intercept and a
    #: crossed factor's intercepts): the global flow models them centred (`MultilevelEstimator`'s `centring`)
    effect_centring: tuple[tuple[int, tuple[int, ...]], ...] = ()

    @abc.abstractmethod
    def sample_global(self, n: int, generator: torch.Generator) -> Tensor:
        """Draws global parameters from their prior: (n, G)."""

    @abc.abstractmethod
    def sample_local(self, global_params: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        """Draws local parameters given the global ones: (B, G) -> (B, J, L)."""

    @abc.abstractmethod
    def simulate(
        self, global_params: Tensor, local_params: Tensor, design: GroupedBatch, generator: torch.Generator
    ) -> Tensor:
        """Simulates responses: (B, G), (B, J, L) and a design with masks and covariates -> (B, J, N, y_dim)."""

    def sample_covariates(self, row_mask: Tensor, generator: torch.Generator) -> Tensor | None:
        """Per-row covariates (B, J, N, x_dim) for simulated datasets, or None when the model has none."""
        if self.x_dim:
            raise SpecError(
                f"{type(self).__name__} has x_dim={self.x_dim} but does not implement `sample_covariates`."
            )
        return None

    def sample_sizes(
        self, n: int, groups: tuple[int, int], rows: tuple[int, int], generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Numbers of groups (n,) and rows per group (n, J_max), uniform over the given inclusive ranges."""
        n_groups = torch.randint(groups[0], groups[1] + 1, (n,), generator=generator)
        n_rows = torch.randint(rows[0], rows[1] + 1, (n, int(n_groups.max())), generator=generator)
        return n_groups, n_rows

    def sample_design(
        self, n: int, groups: tuple[int, int], rows: tuple[int, int], generator: torch.Generator
    ) -> GroupedBatch:
        """Sizes, masks and covariates of n simulated datasets (no responses yet).

        The default draws sizes with `sample_sizes` and covariates with `sample_covariates`; override it when
        the covariates and the sizes must be drawn together (e.g. resampling groups of observed data).
        """
        n_groups, n_rows = self.sample_sizes(n, groups, rows, generator)
        group_mask, row_mask = make_masks(n_groups, n_rows)
        return GroupedBatch(None, row_mask, group_mask, self.sample_covariates(row_mask, generator))

    # Optional exact densities, used for importance-sampling certificates and tests.
    def log_prior_global(self, global_params: Tensor) -> Tensor:
        """log p(tau, omega): (..., G) -> (...)."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable global prior density.")

    def log_prior_local(self, local_params: Tensor, global_params: Tensor) -> Tensor:
        """log p(lambda_j | tau): (..., J, L), (..., G) -> (..., J)."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable local prior density.")

    def log_likelihood(
        self, batch: GroupedBatch, global_params: Tensor, local_params: Tensor
    ) -> Tensor:
        """log p(x_j | lambda_j, omega) summed over each group's rows: (S, B, J)."""
        raise NotImplementedError(f"{type(self).__name__} has no tractable likelihood.")

    def to_config(self) -> dict[str, Any]:
        """JSON description of the model (stored with saved estimators)."""
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}"}

    # Helpers derived from the declaration.
    @property
    def global_bijector(self) -> Bijector:
        return bijector_of(self.global_params)

    @property
    def local_bijector(self) -> Bijector:
        return bijector_of(self.local_params)

    @property
    def global_names(self) -> list[str]:
        return labels_of(self.global_params)

    @property
    def local_names(self) -> list[str]:
        return labels_of(self.local_params)


@dataclass
class SimulatedBatch:
    """Simulated parameters and data.

    Attributes:
        global_params: (B, G) constrained.
        local_params: (B, J, L) constrained; padded groups hold prior draws that no loss uses.
        batch: the data, with masks.
    """

    global_params: Tensor
    local_params: Tensor
    batch: GroupedBatch
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> "SimulatedBatch":
        """A copy on `device` (the extras stay where they are)."""
        return SimulatedBatch(self.global_params.to(device), self.local_params.to(device), self.batch.to(device),
                              self.extra)  # fmt: skip


def check_sizes(name: str, value: tuple[int, int], minimum: int = 1) -> tuple[int, int]:
    """Validates a (min, max) pair of sizes: integers (integer-valued floats too) with minimum <= min <= max."""
    pair = None if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__") else list(value)
    bad = ConfigError(
        f"`{name}` must be a (min, max) pair of integers with {minimum} <= min <= max (c(min, max) in R), got "
        f"{value!r}."
    )
    if pair is None or len(pair) != 2:
        raise bad
    try:
        low, high = (check_int(v, name, minimum) for v in pair)
    except ConfigError:
        raise bad from None
    if high < low:
        raise bad
    return low, high


def simulate_batch(
    model: TwoLevelModel,
    n: int,
    groups: tuple[int, int],
    rows: tuple[int, int],
    generator: torch.Generator,
) -> SimulatedBatch:
    """Simulates n datasets with J and N_j drawn per dataset from the given inclusive ranges.

    Arguments:
        model: the two-level model.
        n: number of datasets B.
        groups: (J_min, J_max).
        rows: (N_min, N_max).
        generator: the source of randomness.
    """
    groups = check_sizes("groups", groups, 1)
    rows = check_sizes("rows", rows, 1)
    design = model.sample_design(n, groups, rows, generator)
    row_mask = design.row_mask
    global_params = model.sample_global(n, generator)
    local_params = model.sample_local(global_params, design.group_mask.shape[1], generator)
    y = model.simulate(global_params, local_params, design, generator)
    expected = (*row_mask.shape, model.y_dim)
    if tuple(y.shape) != expected:
        raise SpecError(f"{type(model).__name__}.simulate returned shape {tuple(y.shape)}, expected {expected}.")
    if not torch.isfinite(y[row_mask]).all():
        raise SpecError(
            f"{type(model).__name__}.simulate returned non-finite values; check the simulator and its priors."
        )
    return SimulatedBatch(global_params, local_params, design.with_y(y))


def check_range(
    what: str, values: Sequence[int], trained: tuple[int, int], hard_factor: float = 2.0, allow: bool = False
) -> None:
    """Warns when sizes leave the trained range, raises when they are far outside (beyond a factor).

    Arguments:
        what: "groups" or "rows per group", used in the message.
        values: observed sizes.
        trained: the (min, max) range seen in training.
        hard_factor: sizes below min / factor or above max * factor raise RangeError unless allow is True.
    """
    import warnings

    from ..errors import RangeError, RangeWarning

    low, high = min(values), max(values)
    if trained[0] <= low and high <= trained[1]:
        return
    message = (
        f"the data have {what} in [{low}, {high}] but the estimator was trained on [{trained[0]}, {trained[1]}]"
    )
    if not allow and (low < trained[0] / hard_factor or high > trained[1] * hard_factor):
        raise RangeError(
            f"{message}, far outside it: the posterior would be an extrapolation. Retrain with a range that covers "
            f"the data (e.g. `{'groups' if what == 'groups' else 'rows'}=({min(low, trained[0])}, "
            f"{max(high, trained[1])})`), or pass `allow_extrapolation=True` to accept the risk."
        )
    warnings.warn(f"{message}; the posterior may be less accurate there.", RangeWarning, stacklevel=3)
