"""Parameter supports: bijections between an unconstrained space and the constrained parameter space.

Normalizing flows model densities on the unconstrained space ``R^D_u``; users see parameters in their
constrained space (standard deviations are positive, correlations form a correlation matrix, ...). A
`Support` describes one block of parameters and the smooth bijection between the two spaces:

* `Real` - identity, 1 scalar.
* `Positive` - ``exp`` / ``log``, 1 scalar.
* `UnitInterval` - ``sigmoid`` / ``logit``, 1 scalar.
* `Interval` - ``low + (high - low) * sigmoid``, 1 scalar.
* `Correlation` - the ``k(k-1)/2`` strictly upper-triangular entries (row-major: ``r12, r13, ..., r23, ...``)
  of a ``k x k`` correlation matrix, through canonical partial correlations (Stan's construction).

A `Bijector` concatenates supports and maps a flat unconstrained vector to a flat constrained vector.

Conventions: every map works on arbitrary leading batch dims, in float32 and float64, and is
differentiable. ``forward`` contains numerical guards (clamps) so that it never returns values on the
boundary of the support (0, 1, inf, |r| = 1) for moderate inputs; ``log_abs_det_jacobian`` is the exact,
numerically stable log-Jacobian of the mathematical (unclamped) bijection. ``inverse`` of a value outside
the support returns NaN or inf; use ``check`` or ``check_and_inverse`` to validate user input.
"""

from __future__ import annotations

import math
import operator
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mlnpe.errors import DataError, SpecError

__all__ = [
    "Support",
    "Real",
    "Positive",
    "UnitInterval",
    "Interval",
    "Correlation",
    "Bijector",
    "SUPPORT_SPECS",
    "get_support",
    "support_from_dict",
    "corr_vector_to_matrix",
    "corr_matrix_to_vector",
    "cholesky_from_unconstrained",
]

#: The string forms accepted by `get_support`.
SUPPORT_SPECS: tuple[str, ...] = (
    "real",
    "positive",
    "unit_interval",
    "correlation:<k>",
    "interval:<low>:<high>",
)

_LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------------------
# Small numerical helpers
# ----------------------------------------------------------------------------------------------------------


def _check_tensor(x: Any, dim: int, arg_name: str, owner: str) -> None:
    """Validates that ``x`` is a floating-point tensor of shape ``(..., dim)``.

    Args:
        x: The object to validate.
        dim: Required size of the last dimension.
        arg_name: Name of the argument, used in the error message.
        owner: Description of the support or bijector, used in the error message.

    Raises:
        DataError: If ``x`` is not a tensor, not floating point, or has the wrong last dimension.
    """
    if not isinstance(x, Tensor):
        raise DataError(
            f"{arg_name} of {owner} must be a torch.Tensor, got {type(x).__name__}; "
            f"convert it with torch.as_tensor(..., dtype=torch.float32)."
        )
    if not x.is_floating_point():
        raise DataError(
            f"{arg_name} of {owner} must be a floating-point tensor, got dtype {x.dtype}; "
            f"convert it with .float() or .double()."
        )
    if x.dim() == 0 or x.shape[-1] != dim:
        raise DataError(
            f"{arg_name} of {owner} must have shape (..., {dim}), got shape {tuple(x.shape)}; "
            f"pass a tensor whose last dimension has size {dim}."
        )


def _log1m_tanh_sq(z: Tensor) -> Tensor:
    """Stable ``log(1 - tanh(z)^2) = -2 log cosh(z)``, finite for every finite ``z``.

    Args:
        z: Tensor of any shape.

    Returns:
        Tensor of the same shape as ``z``.
    """
    a = z.abs()
    return 2.0 * (_LOG2 - a - F.softplus(-2.0 * a))


def _clamped_sigmoid(u: Tensor) -> Tensor:
    """Sigmoid clamped to ``[tiny, 1 - eps]`` of the dtype, so it never returns exactly 0 or 1.

    Args:
        u: Tensor of any shape.

    Returns:
        Tensor of the same shape as ``u`` with values strictly inside (0, 1).
    """
    finfo = torch.finfo(u.dtype)
    return torch.sigmoid(u).clamp(min=finfo.tiny, max=1.0 - finfo.eps)


def _log_sigmoid_jacobian(u: Tensor) -> Tensor:
    """Stable ``log(sigmoid(u) * (1 - sigmoid(u)))``, the log-derivative of the sigmoid.

    Args:
        u: Tensor of any shape.

    Returns:
        Tensor of the same shape as ``u``.
    """
    return -(F.softplus(u) + F.softplus(-u))


def _exp_input_bounds(dtype: torch.dtype) -> tuple[float, float]:
    """Range of inputs for which ``exp`` is finite and nonzero in ``dtype``.

    Args:
        dtype: A floating-point dtype.

    Returns:
        ``(low, high)`` bounds for the input of ``exp``.
    """
    finfo = torch.finfo(dtype)
    return math.log(finfo.tiny), math.log(finfo.max) - 1.0


def _corr_z_bound(dtype: torch.dtype) -> float:
    """Largest |z| used by the correlation map in ``dtype``, so that ``tanh(z)`` stays clearly below 1.

    For float32 this is about 6 (|cpc| <= 0.99999), for float64 about 13.5.

    Args:
        dtype: A floating-point dtype.

    Returns:
        The clamp bound for unconstrained correlation coordinates.
    """
    return 0.375 * -math.log(torch.finfo(dtype).eps)


def _exclusive_cumsum(x: Tensor) -> Tensor:
    """Exclusive cumulative sum along the last dim: ``out[..., j] = sum_{m<j} x[..., m]``.

    Args:
        x: Tensor of shape ``(..., n)``.

    Returns:
        Tensor of shape ``(..., n)``.
    """
    return F.pad(torch.cumsum(x[..., :-1], dim=-1), (1, 0))


def _exclusive_reverse_cumsum(x: Tensor) -> Tensor:
    """Exclusive reverse cumulative sum along the last dim: ``out[..., j] = sum_{m>j} x[..., m]``.

    Args:
        x: Tensor of shape ``(..., n)``.

    Returns:
        Tensor of shape ``(..., n)``.
    """
    return _exclusive_cumsum(x.flip(-1)).flip(-1)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype for Cholesky decompositions: at least float64, so float32 near-singular matrices are judged well.

    Args:
        dtype: The dtype of the input.

    Returns:
        ``torch.float64`` unless ``dtype`` is already at least as precise.
    """
    return torch.promote_types(dtype, torch.float64)


# ----------------------------------------------------------------------------------------------------------
# Correlation helpers
# ----------------------------------------------------------------------------------------------------------


def _n_pairs(k: int) -> int:
    """Number of strictly upper-triangular entries of a ``k x k`` matrix."""
    return k * (k - 1) // 2


def _validate_k(k: Any, arg_name: str = "k") -> int:
    """Validates a correlation matrix size.

    Args:
        k: The candidate size.
        arg_name: Name of the argument, used in the error message.

    Returns:
        ``k`` as a Python int.

    Raises:
        SpecError: If ``k`` is not an integer >= 2.
    """
    if isinstance(k, bool):
        raise SpecError(
            f"{arg_name} must be an integer >= 2, got {k!r}; pass the number of correlated variables."
        )
    try:
        k_int = operator.index(k)
    except TypeError:
        raise SpecError(
            f"{arg_name} must be an integer >= 2, got {k!r} of type {type(k).__name__}; "
            f"pass the number of correlated variables."
        ) from None
    if k_int < 2:
        raise SpecError(
            f"{arg_name} must be an integer >= 2, got {k_int}; a correlation block needs k >= 2 variables."
        )
    return k_int


@lru_cache(maxsize=64)
def _upper_indices(k: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Row and column indices of the strictly upper-triangular entries, row-major.

    Args:
        k: Matrix size.
        device: Device of the returned indices.

    Returns:
        ``(rows, cols)``, each of shape ``(pairs,)`` with ``pairs = k(k-1)/2`` and ``rows < cols``.
    """
    idx = torch.triu_indices(k, k, offset=1, device=device)
    return idx[0], idx[1]


def _scatter_lower(values: Tensor, k: int) -> Tensor:
    """Places pair values into the strictly lower triangle of a zero matrix.

    The p-th value, belonging to the p-th upper-triangular pair ``(i, j)`` with ``i < j``, goes to
    position ``(j, i)``.

    Args:
        values: Tensor of shape ``(..., pairs)``.
        k: Matrix size.

    Returns:
        Tensor of shape ``(..., k, k)``, zero on and above the diagonal.
    """
    rows, cols = _upper_indices(k, values.device)
    out = values.new_zeros(values.shape[:-1] + (k, k))
    out[..., cols, rows] = values
    return out


def _k_from_pairs(n: int, arg_name: str) -> int:
    """Infers ``k`` from the number of pairs ``n = k(k-1)/2``.

    Args:
        n: Number of upper-triangular entries.
        arg_name: Name of the argument, used in the error message.

    Returns:
        The matrix size ``k``.

    Raises:
        SpecError: If ``n`` is not of the form ``k(k-1)/2`` with ``k >= 2``.
    """
    k = int(round((1.0 + math.sqrt(1.0 + 8.0 * n)) / 2.0))
    if k < 2 or _n_pairs(k) != n:
        raise SpecError(
            f"{arg_name} must have a last dimension of the form k(k-1)/2 (1, 3, 6, 10, ...), got {n}; "
            f"pass the strictly upper-triangular entries of a k x k correlation matrix, or pass k explicitly."
        )
    return k


def corr_vector_to_matrix(r: Tensor, k: int | None = None) -> Tensor:
    """Builds correlation matrices from their strictly upper-triangular entries.

    Args:
        r: Correlations of shape ``(..., pairs)``, row-major upper-triangular order
            (``r12, r13, ..., r1k, r23, ...``), ``pairs = k(k-1)/2``.
        k: Matrix size; inferred from ``pairs`` when None.

    Returns:
        Symmetric matrices of shape ``(..., k, k)`` with unit diagonal (positive definiteness is not
        checked).

    Raises:
        SpecError: If ``k`` is invalid or does not match the last dimension of ``r``.
        DataError: If ``r`` is not a floating-point tensor.
    """
    if not isinstance(r, Tensor) or r.dim() == 0:
        raise DataError(
            f"r must be a torch.Tensor of shape (..., k(k-1)/2), got {type(r).__name__} "
            f"{tuple(r.shape) if isinstance(r, Tensor) else ''}; pass the upper-triangular correlations."
        )
    k = _k_from_pairs(r.shape[-1], "r") if k is None else _validate_k(k)
    _check_tensor(r, _n_pairs(k), "r", f"corr_vector_to_matrix(k={k})")
    rows, cols = _upper_indices(k, r.device)
    out = r.new_zeros(r.shape[:-1] + (k, k))
    out[..., rows, cols] = r
    out[..., cols, rows] = r
    return out + torch.eye(k, dtype=r.dtype, device=r.device)


def corr_matrix_to_vector(R: Tensor) -> Tensor:
    """Extracts the strictly upper-triangular entries of square matrices, row-major.

    Args:
        R: Matrices of shape ``(..., k, k)``.

    Returns:
        Tensor of shape ``(..., k(k-1)/2)`` holding ``R[..., i, j]`` for ``i < j`` in row-major order.

    Raises:
        DataError: If ``R`` is not a tensor of square matrices with ``k >= 2``.
    """
    if not isinstance(R, Tensor) or R.dim() < 2 or R.shape[-1] != R.shape[-2] or R.shape[-1] < 2:
        shape = tuple(R.shape) if isinstance(R, Tensor) else type(R).__name__
        raise DataError(
            f"R must be a tensor of square matrices of shape (..., k, k) with k >= 2, got {shape}; "
            f"pass correlation matrices."
        )
    rows, cols = _upper_indices(R.shape[-1], R.device)
    return R[..., rows, cols]


def _cholesky_from_z(z: Tensor, k: int) -> Tensor:
    """Cholesky factor of a correlation matrix from unconstrained coordinates, without input validation.

    Row ``i`` of ``L`` is built from its canonical partial correlations ``c_ij = tanh(z_ij)``:
    ``L[i, j] = c_ij * sqrt(prod_{m<j} (1 - c_im^2))`` and ``L[i, i] = sqrt(prod_{m<i} (1 - c_im^2))``,
    computed in log space so that rows never lose their norm to rounding.

    Args:
        z: Tensor of shape ``(..., pairs)``.
        k: Matrix size.

    Returns:
        Lower-triangular tensor of shape ``(..., k, k)`` with unit-norm rows and positive diagonal.
    """
    bound = _corr_z_bound(z.dtype)
    zc = z.clamp(-bound, bound)
    cpc = _scatter_lower(torch.tanh(zc), k)
    log_rem = _exclusive_cumsum(_scatter_lower(_log1m_tanh_sq(zc), k))
    eye = torch.eye(k, dtype=z.dtype, device=z.device)
    return (cpc + eye) * torch.exp(0.5 * log_rem)


def cholesky_from_unconstrained(z: Tensor, k: int) -> Tensor:
    """Cholesky factor ``L`` of the correlation matrix ``L L^T`` that `Correlation(k).forward(z)` describes.

    Cheap for simulators: a covariance ``diag(sd) L L^T diag(sd)`` is sampled as ``sd * (L @ eps)``.

    Args:
        z: Unconstrained coordinates of shape ``(..., pairs)``, ``pairs = k(k-1)/2``.
        k: Matrix size (>= 2).

    Returns:
        Lower-triangular tensor of shape ``(..., k, k)`` with positive diagonal and unit-norm rows.

    Raises:
        SpecError: If ``k`` is not an integer >= 2.
        DataError: If ``z`` is not a floating-point tensor of shape ``(..., pairs)``.
    """
    k = _validate_k(k)
    _check_tensor(z, _n_pairs(k), "z", f"cholesky_from_unconstrained(k={k})")
    return _cholesky_from_z(z, k)


# ----------------------------------------------------------------------------------------------------------
# Supports
# ----------------------------------------------------------------------------------------------------------


class Support(ABC):
    """A block of parameters and the bijection between its unconstrained and constrained spaces.

    Subclasses define ``name``, the dims and the four maps. Instances are immutable value objects: two
    supports are equal when their ``to_dict()`` are equal.
    """

    name: str = ""
    _param_names: tuple[str, ...] = ()

    @abstractmethod
    def constrained_dim(self) -> int:
        """Number of constrained scalars this block occupies."""

    @abstractmethod
    def unconstrained_dim(self) -> int:
        """Number of unconstrained scalars this block occupies."""

    @abstractmethod
    def forward(self, u: Tensor) -> Tensor:
        """Maps unconstrained values to the support.

        Args:
            u: Tensor of shape ``(..., d_u)``.

        Returns:
            Tensor of shape ``(..., d_c)``, inside the support.
        """

    @abstractmethod
    def inverse(self, theta: Tensor) -> Tensor:
        """Maps constrained values to the unconstrained space; NaN or inf outside the support.

        Args:
            theta: Tensor of shape ``(..., d_c)``.

        Returns:
            Tensor of shape ``(..., d_u)``.
        """

    @abstractmethod
    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """Log absolute determinant of the Jacobian of ``forward`` at ``u``.

        Args:
            u: Tensor of shape ``(..., d_u)``.

        Returns:
            Tensor of shape ``(...,)``.
        """

    @abstractmethod
    def check(self, theta: Tensor) -> Tensor:
        """Whether each constrained value lies inside the support.

        Args:
            theta: Tensor of shape ``(..., d_c)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """

    def check_and_inverse(self, theta: Tensor, arg_name: str = "theta") -> Tensor:
        """Validates ``theta`` and maps it to the unconstrained space.

        Args:
            theta: Tensor of shape ``(..., d_c)``.
            arg_name: Name of the argument in the caller, used in the error message.

        Returns:
            Tensor of shape ``(..., d_u)``.

        Raises:
            SpecError: If any value lies outside the support.
        """
        _raise_outside(self.check(theta), theta, arg_name, repr(self))
        return self.inverse(theta)

    def params(self) -> dict[str, Any]:
        """The constructor arguments of this support.

        Returns:
            A JSON-serializable dict (empty for parameter-free supports).
        """
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description, inverted by `Support.from_dict`.

        Returns:
            ``{"name": name, **params}``.
        """
        return {"name": self.name, **self.params()}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Support:
        """Rebuilds a support from `to_dict` output.

        Args:
            d: Mapping with a ``"name"`` key and the support's parameters.

        Returns:
            The support.

        Raises:
            SpecError: If the name is unknown or parameters are missing, unexpected or invalid.
        """
        return support_from_dict(d)

    def spec(self) -> str:
        """The string form accepted by `get_support`, e.g. ``"correlation:3"``.

        Returns:
            The spec string.
        """
        return ":".join([self.name, *(repr(v) for v in self.params().values())])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Support) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(self.spec())

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.params().items())
        return f"{type(self).__name__}({args})"


class _ScalarSupport(Support):
    """Base of one-dimensional supports."""

    def constrained_dim(self) -> int:
        """Number of constrained scalars (1)."""
        return 1

    def unconstrained_dim(self) -> int:
        """Number of unconstrained scalars (1)."""
        return 1

    def _validate(self, x: Tensor, arg_name: str) -> None:
        """Validates a tensor of shape ``(..., 1)``."""
        _check_tensor(x, 1, arg_name, repr(self))


class Real(_ScalarSupport):
    """The real line: identity map."""

    name = "real"

    def forward(self, u: Tensor) -> Tensor:
        """Identity.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            ``u``, shape ``(..., 1)``.
        """
        self._validate(u, "u")
        return u

    def inverse(self, theta: Tensor) -> Tensor:
        """Identity.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            ``theta``, shape ``(..., 1)``.
        """
        self._validate(theta, "theta")
        return theta

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """Zero.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Zeros of shape ``(...,)``.
        """
        self._validate(u, "u")
        return u.new_zeros(u.shape[:-1])

    def check(self, theta: Tensor) -> Tensor:
        """Finite values.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        self._validate(theta, "theta")
        return torch.isfinite(theta).all(-1)


class Positive(_ScalarSupport):
    """The positive half-line: ``theta = softplus(u) = log(1 + exp(u))``.

    Below 1 softplus behaves like ``exp`` (a log scale near zero, where hierarchical scales pile up); above 1
    it is nearly the identity. A flow with Gaussian tails in ``u`` then has Gaussian tails in ``theta``,
    like the half-normal, exponential and half-t priors of scale parameters. With ``exp`` the same flow has
    log-normal right tails: for a small number of groups it put far too much mass on huge scales (sd ratios
    of 3 to 8 for tau in the exact benchmark).
    """

    name = "positive"

    def forward(self, u: Tensor) -> Tensor:
        """``softplus(u)``, with ``u`` clamped so the result is finite and nonzero.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(..., 1)``, strictly positive and finite.
        """
        self._validate(u, "u")
        low, high = _exp_input_bounds(u.dtype)
        return torch.nn.functional.softplus(u.clamp(min=low, max=torch.finfo(u.dtype).max / 2))

    def inverse(self, theta: Tensor) -> Tensor:
        """``log(exp(theta) - 1) = theta + log(1 - exp(-theta))``, stable for tiny and huge theta.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(..., 1)``.
        """
        self._validate(theta, "theta")
        return theta + torch.log(-torch.expm1(-theta))

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """``log|d softplus(u)/du| = log sigmoid(u)``.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(...,)``.
        """
        self._validate(u, "u")
        return torch.nn.functional.logsigmoid(u).sum(-1)

    def check(self, theta: Tensor) -> Tensor:
        """Finite and strictly positive.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        self._validate(theta, "theta")
        return (torch.isfinite(theta) & (theta > 0)).all(-1)


class UnitInterval(_ScalarSupport):
    """The open unit interval: ``theta = sigmoid(u)``."""

    name = "unit_interval"

    def forward(self, u: Tensor) -> Tensor:
        """``sigmoid(u)``, clamped so the result is never exactly 0 or 1.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(..., 1)``, inside (0, 1).
        """
        self._validate(u, "u")
        return _clamped_sigmoid(u)

    def inverse(self, theta: Tensor) -> Tensor:
        """``logit(theta) = log(theta) - log(1 - theta)``.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(..., 1)``.
        """
        self._validate(theta, "theta")
        return torch.log(theta) - torch.log1p(-theta)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """``log(sigmoid(u) (1 - sigmoid(u)))``.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(...,)``.
        """
        self._validate(u, "u")
        return _log_sigmoid_jacobian(u).sum(-1)

    def check(self, theta: Tensor) -> Tensor:
        """Strictly between 0 and 1.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        self._validate(theta, "theta")
        return ((theta > 0) & (theta < 1)).all(-1)


def _validate_bound(value: Any, arg_name: str) -> float:
    """Validates a finite real interval bound.

    Args:
        value: The candidate bound.
        arg_name: Name of the argument, used in the error message.

    Returns:
        The bound as a Python float.

    Raises:
        SpecError: If ``value`` is not a finite real number.
    """
    if isinstance(value, bool):
        raise SpecError(f"{arg_name} of Interval must be a finite real number, got {value!r}; pass a float.")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise SpecError(
            f"{arg_name} of Interval must be a finite real number, got {value!r}; pass a float."
        ) from None
    if not math.isfinite(out):
        raise SpecError(
            f"{arg_name} of Interval must be finite, got {out!r}; for half-infinite ranges use "
            f"'positive' (and shift/scale in the simulator) or 'real'."
        )
    return out


@lru_cache(maxsize=64)
def _interval_interior(low: float, high: float, dtype: torch.dtype) -> tuple[float, float]:
    """Smallest and largest numbers of ``dtype`` strictly inside ``(low, high)``.

    Args:
        low: Lower bound.
        high: Upper bound.
        dtype: A floating-point dtype.

    Returns:
        ``(inner_low, inner_high)``.
    """
    low_t = torch.tensor(low, dtype=dtype)
    high_t = torch.tensor(high, dtype=dtype)
    return torch.nextafter(low_t, high_t).item(), torch.nextafter(high_t, low_t).item()


class Interval(_ScalarSupport):
    """The open interval ``(low, high)``: ``theta = low + (high - low) * sigmoid(u)``.

    Args:
        low: Finite lower bound.
        high: Finite upper bound, ``high > low``.

    Raises:
        SpecError: If a bound is not finite or ``low >= high``.
    """

    name = "interval"

    def __init__(self, low: float, high: float) -> None:
        self.low = _validate_bound(low, "low")
        self.high = _validate_bound(high, "high")
        if not self.low < self.high:
            raise SpecError(
                f"Interval needs low < high, got low={self.low!r}, high={self.high!r}; "
                f"swap or widen the bounds."
            )

    def params(self) -> dict[str, Any]:
        """The bounds.

        Returns:
            ``{"low": low, "high": high}``.
        """
        return {"low": self.low, "high": self.high}

    def forward(self, u: Tensor) -> Tensor:
        """``low + (high - low) * sigmoid(u)``, clamped strictly inside the interval.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(..., 1)``, inside (low, high).
        """
        self._validate(u, "u")
        theta = self.low + (self.high - self.low) * _clamped_sigmoid(u)
        inner_low, inner_high = _interval_interior(self.low, self.high, u.dtype)
        return theta.clamp(min=inner_low, max=inner_high)

    def inverse(self, theta: Tensor) -> Tensor:
        """``log(theta - low) - log(high - theta)``.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(..., 1)``.
        """
        self._validate(theta, "theta")
        return torch.log(theta - self.low) - torch.log(self.high - theta)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """``log(high - low) + log(sigmoid(u) (1 - sigmoid(u)))``.

        Args:
            u: Tensor of shape ``(..., 1)``.

        Returns:
            Tensor of shape ``(...,)``.
        """
        self._validate(u, "u")
        return math.log(self.high - self.low) + _log_sigmoid_jacobian(u).sum(-1)

    def check(self, theta: Tensor) -> Tensor:
        """Strictly between ``low`` and ``high``.

        Args:
            theta: Tensor of shape ``(..., 1)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        self._validate(theta, "theta")
        return ((theta > self.low) & (theta < self.high)).all(-1)


class Correlation(Support):
    """Strictly upper-triangular entries of a ``k x k`` correlation matrix (Stan's CPC construction).

    Constrained: ``(r12, r13, ..., r1k, r23, ...)`` row-major, ``pairs = k(k-1)/2`` scalars. Unconstrained:
    ``pairs`` scalars ``z``, where ``tanh(z_p)`` is the canonical partial correlation of the p-th pair
    ``(i, j)``; ``z -> L`` (see `cholesky_from_unconstrained`) ``-> Omega = L L^T -> upper entries``.
    For k = 2 the map is simply ``r = tanh(z)``.

    In ``forward``, ``|z|`` is clamped (about 6 in float32, 13.5 in float64) so that no partial correlation
    rounds to +-1; for k >= 3, large ``|z|`` of the same sign can still
    round to a singular matrix (``|r| = 1`` in float32), which ``check`` reports.

    Args:
        k: Number of correlated variables (>= 2).

    Raises:
        SpecError: If ``k`` is not an integer >= 2.
    """

    name = "correlation"

    def __init__(self, k: int) -> None:
        self.k = _validate_k(k)

    def params(self) -> dict[str, Any]:
        """The matrix size.

        Returns:
            ``{"k": k}``.
        """
        return {"k": self.k}

    def constrained_dim(self) -> int:
        """``k(k-1)/2``."""
        return _n_pairs(self.k)

    def unconstrained_dim(self) -> int:
        """``k(k-1)/2``."""
        return _n_pairs(self.k)

    def _validate(self, x: Tensor, arg_name: str) -> None:
        """Validates a tensor of shape ``(..., pairs)``."""
        _check_tensor(x, _n_pairs(self.k), arg_name, repr(self))

    def forward(self, u: Tensor) -> Tensor:
        """Upper-triangular correlations of ``L L^T`` with ``L = cholesky_from_unconstrained(u, k)``.

        Args:
            u: Tensor of shape ``(..., pairs)``.

        Returns:
            Tensor of shape ``(..., pairs)``.
        """
        self._validate(u, "u")
        L = _cholesky_from_z(u, self.k)
        return corr_matrix_to_vector(L @ L.mT)

    def inverse(self, theta: Tensor) -> Tensor:
        """Correlations -> Cholesky factor -> canonical partial correlations -> ``atanh``.

        Uses ``atanh(c_ij) = asinh(L_ij / sqrt(sum_{m>j} L_im^2))``, which is accurate for |c| near 1. The
        Cholesky decomposition runs in (at least) float64; the result has the dtype of ``theta``.

        Args:
            theta: Tensor of shape ``(..., pairs)``.

        Returns:
            Tensor of shape ``(..., pairs)``; NaN for rows that are not positive definite.
        """
        self._validate(theta, "theta")
        R = corr_vector_to_matrix(theta.to(_work_dtype(theta.dtype)), self.k)
        L, info = torch.linalg.cholesky_ex(R)
        L = torch.where((info == 0)[..., None, None], L, torch.nan)
        rest = _exclusive_reverse_cumsum(L.square())
        rows, cols = _upper_indices(self.k, theta.device)
        z = torch.asinh(L[..., cols, rows] * torch.rsqrt(rest[..., cols, rows]))
        return z.to(theta.dtype)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """Log |det| of the square Jacobian of ``u -> upper-triangular correlations``.

        With ``c = tanh(u)`` and ``rem_ij = prod_{m<j} (1 - c_im^2)`` (so ``L_ii^2 = rem_ii``) it is the
        sum of

        * ``u -> c``: ``sum log(1 - c^2)``;
        * ``c -> L`` (strictly lower entries, row by row triangular): ``1/2 sum_{j<i} log rem_ij``;
        * ``L -> Omega`` (block triangular over rows): ``sum_j (k-1-j) log L_jj`` (0-based j), i.e. the
          LKJ Cholesky-form factor ``prod_{i=2..k} L_ii^{k-i}`` (1-based i).

        Everything is computed from ``log(1 - tanh^2)`` in a stable form, so the result is finite for every
        finite ``u``. It is the log-Jacobian of the unclamped map.

        Args:
            u: Tensor of shape ``(..., pairs)``.

        Returns:
            Tensor of shape ``(...,)``.
        """
        self._validate(u, "u")
        k = self.k
        log_one_minus = _scatter_lower(_log1m_tanh_sq(u), k)
        log_rem = _exclusive_cumsum(log_one_minus)
        strict_lower = torch.ones(k, k, dtype=torch.bool, device=u.device).tril(-1)
        tanh_part = log_one_minus.sum((-2, -1))
        cpc_part = 0.5 * torch.where(strict_lower, log_rem, 0.0).sum((-2, -1))
        weights = torch.arange(k - 1, -1, -1, dtype=u.dtype, device=u.device)
        omega_part = 0.5 * (log_rem.diagonal(dim1=-2, dim2=-1) * weights).sum(-1)
        return tanh_part + cpc_part + omega_part

    def check(self, theta: Tensor) -> Tensor:
        """Finite, ``|r| < 1`` and the matrix is positive definite (Cholesky in at least float64).

        Args:
            theta: Tensor of shape ``(..., pairs)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        self._validate(theta, "theta")
        plausible = (torch.isfinite(theta) & (theta.abs() < 1)).all(-1)
        safe = torch.where(plausible[..., None], theta, 0.0).to(_work_dtype(theta.dtype))
        _, info = torch.linalg.cholesky_ex(corr_vector_to_matrix(safe, self.k))
        return plausible & (info == 0)


_SUPPORT_CLASSES: dict[str, type[Support]] = {
    cls.name: cls for cls in (Real, Positive, UnitInterval, Interval, Correlation)
}
_SUPPORT_PARAMS: dict[str, tuple[str, ...]] = {
    "real": (),
    "positive": (),
    "unit_interval": (),
    "interval": ("low", "high"),
    "correlation": ("k",),
}


def _raise_outside(inside: Tensor, theta: Tensor, arg_name: str, owner: str) -> None:
    """Raises SpecError when some rows of ``theta`` are outside the support.

    Args:
        inside: Bool tensor of shape ``(...,)`` from ``check``.
        theta: The checked tensor of shape ``(..., d_c)``.
        arg_name: Name of the argument, used in the error message.
        owner: Description of the support or bijector, used in the error message.

    Raises:
        SpecError: If any entry of ``inside`` is False.
    """
    if bool(inside.all()):
        return
    bad = (~inside).nonzero()
    first = tuple(int(i) for i in bad[0])
    n_bad = bad.shape[0]
    value = theta[first].tolist()
    raise SpecError(
        f"{arg_name} has {n_bad} value(s) outside the support of {owner}; the first is at batch index "
        f"{first}: {value}; pass values inside the support (use check() to find them)."
    )


def support_from_dict(d: Mapping[str, Any]) -> Support:
    """Rebuilds a support from `Support.to_dict` output.

    Args:
        d: Mapping with a ``"name"`` key and the support's parameters.

    Returns:
        The support.

    Raises:
        SpecError: If ``d`` is not a mapping, the name is unknown, or parameters are missing or unexpected.
    """
    if not isinstance(d, Mapping):
        raise SpecError(
            f"a support dict must be a mapping, got {type(d).__name__}: {d!r}; pass Support.to_dict() output."
        )
    name = d.get("name")
    if name not in _SUPPORT_CLASSES:
        raise SpecError(
            f"support dict has unknown name {name!r} (in {dict(d)!r}); "
            f"valid names are {sorted(_SUPPORT_CLASSES)}."
        )
    expected = set(_SUPPORT_PARAMS[name])
    given = set(d) - {"name"}
    if given != expected:
        raise SpecError(
            f"support dict for {name!r} must have keys {sorted(expected | {'name'})}, got {sorted(d)}; "
            f"pass Support.to_dict() output."
        )
    return _SUPPORT_CLASSES[name](**{key: d[key] for key in _SUPPORT_PARAMS[name]})


def _support_from_string(spec: str) -> Support:
    """Parses a support string; see `SUPPORT_SPECS` for the valid forms.

    Args:
        spec: The spec string (case-insensitive, surrounding whitespace ignored).

    Returns:
        The support.

    Raises:
        SpecError: If the string is not one of the valid forms.
    """
    parts = [part.strip() for part in spec.strip().lower().split(":")]
    head, args = parts[0], parts[1:]
    invalid = SpecError(f"unknown support {spec!r}; valid supports are {list(SUPPORT_SPECS)}.")
    if head in ("real", "positive", "unit_interval") and not args:
        return _SUPPORT_CLASSES[head]()
    if head == "correlation" and len(args) == 1:
        try:
            k = int(args[0])
        except ValueError:
            raise SpecError(
                f"support {spec!r} has a non-integer size {args[0]!r}; "
                f"write 'correlation:<k>', e.g. 'correlation:3'."
            ) from None
        return Correlation(k)
    if head == "interval" and len(args) == 2:
        try:
            low, high = float(args[0]), float(args[1])
        except ValueError:
            raise SpecError(
                f"support {spec!r} has non-numeric bounds; "
                f"write 'interval:<low>:<high>', e.g. 'interval:0:1'."
            ) from None
        return Interval(low, high)
    raise invalid


def get_support(spec: str | Support | Mapping[str, Any]) -> Support:
    """Resolves a support from a string, a dict or a `Support`.

    Args:
        spec: One of ``"real"``, ``"positive"``, ``"unit_interval"``, ``"correlation:<k>"``,
            ``"interval:<low>:<high>"``, a `Support` (returned as is), or a dict from `Support.to_dict`.

    Returns:
        The support.

    Raises:
        SpecError: If ``spec`` is not recognised; the message lists the valid forms.
    """
    if isinstance(spec, Support):
        return spec
    if isinstance(spec, Mapping):
        return support_from_dict(spec)
    if isinstance(spec, str):
        return _support_from_string(spec)
    raise SpecError(
        f"support must be a string, a dict or a Support, got {type(spec).__name__}: {spec!r}; "
        f"valid strings are {list(SUPPORT_SPECS)}."
    )


# ----------------------------------------------------------------------------------------------------------
# Bijector
# ----------------------------------------------------------------------------------------------------------


class Bijector:
    """Concatenation of supports: maps a flat unconstrained vector to a flat constrained vector.

    Unconstrained vectors have shape ``(..., D_u)``, constrained ones ``(..., D_c)``; each block occupies a
    contiguous slice, in the order of ``supports``.

    Args:
        supports: The blocks, in order; each a `Support` or anything `get_support` accepts.

    Raises:
        SpecError: If ``supports`` is empty or holds an invalid spec.
    """

    def __init__(self, supports: Sequence[Support | str | Mapping[str, Any]]) -> None:
        is_list = isinstance(supports, Sequence) and not isinstance(supports, str)
        if not is_list or not supports:
            raise SpecError(
                f"supports must be a non-empty list of supports, got {supports!r}; "
                f"pass e.g. [Real(), Positive(), Correlation(3)] or ['real', 'positive', 'correlation:3']."
            )
        self.supports: tuple[Support, ...] = tuple(get_support(s) for s in supports)
        self._u_sizes = [s.unconstrained_dim() for s in self.supports]
        self._c_sizes = [s.constrained_dim() for s in self.supports]

    @property
    def unconstrained_dim(self) -> int:
        """Total number of unconstrained scalars ``D_u``."""
        return sum(self._u_sizes)

    @property
    def constrained_dim(self) -> int:
        """Total number of constrained scalars ``D_c``."""
        return sum(self._c_sizes)

    @property
    def unconstrained_sizes(self) -> list[int]:
        """Unconstrained size of each block, in order."""
        return list(self._u_sizes)

    @property
    def constrained_sizes(self) -> list[int]:
        """Constrained size of each block, in order."""
        return list(self._c_sizes)

    def __len__(self) -> int:
        return len(self.supports)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bijector) and self.supports == other.supports

    def __hash__(self) -> int:
        return hash(self.supports)

    def __repr__(self) -> str:
        return f"Bijector({list(self.supports)!r})"

    def _split(self, x: Tensor, sizes: list[int], arg_name: str) -> tuple[Tensor, ...]:
        """Validates ``x`` of shape ``(..., sum(sizes))`` and splits its last dim into blocks."""
        _check_tensor(x, sum(sizes), arg_name, repr(self))
        return torch.split(x, sizes, dim=-1)

    def forward(self, u: Tensor) -> Tensor:
        """Applies each block's ``forward``.

        Args:
            u: Tensor of shape ``(..., D_u)``.

        Returns:
            Tensor of shape ``(..., D_c)``.
        """
        parts = self._split(u, self._u_sizes, "u")
        return torch.cat([s.forward(p) for s, p in zip(self.supports, parts)], dim=-1)

    def inverse(self, theta: Tensor) -> Tensor:
        """Applies each block's ``inverse``; NaN or inf where ``theta`` is outside the support.

        Args:
            theta: Tensor of shape ``(..., D_c)``.

        Returns:
            Tensor of shape ``(..., D_u)``.
        """
        parts = self._split(theta, self._c_sizes, "theta")
        return torch.cat([s.inverse(p) for s, p in zip(self.supports, parts)], dim=-1)

    def log_abs_det_jacobian(self, u: Tensor) -> Tensor:
        """Sum of the blocks' log |det Jacobian|.

        Args:
            u: Tensor of shape ``(..., D_u)``.

        Returns:
            Tensor of shape ``(...,)``.
        """
        parts = self._split(u, self._u_sizes, "u")
        terms = [s.log_abs_det_jacobian(p) for s, p in zip(self.supports, parts)]
        return torch.stack(terms, dim=-1).sum(-1)

    def check(self, theta: Tensor) -> Tensor:
        """Whether every block lies inside its support.

        Args:
            theta: Tensor of shape ``(..., D_c)``.

        Returns:
            Bool tensor of shape ``(...,)``.
        """
        parts = self._split(theta, self._c_sizes, "theta")
        return torch.stack([s.check(p) for s, p in zip(self.supports, parts)], dim=-1).all(-1)

    def check_and_inverse(self, theta: Tensor, arg_name: str = "theta") -> Tensor:
        """Validates ``theta`` and maps it to the unconstrained space.

        Args:
            theta: Tensor of shape ``(..., D_c)``.
            arg_name: Name of the argument in the caller, used in the error message.

        Returns:
            Tensor of shape ``(..., D_u)``.

        Raises:
            SpecError: If any value lies outside its support.
        """
        _raise_outside(self.check(theta), theta, arg_name, repr(self))
        return self.inverse(theta)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable description, inverted by `Bijector.from_dict`.

        Returns:
            ``{"supports": [support.to_dict(), ...]}``.
        """
        return {"supports": [s.to_dict() for s in self.supports]}

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Bijector:
        """Rebuilds a bijector from `to_dict` output.

        Args:
            d: Mapping with a ``"supports"`` list of support dicts.

        Returns:
            The bijector.

        Raises:
            SpecError: If ``d`` is malformed.
        """
        if not isinstance(d, Mapping) or "supports" not in d or not isinstance(d["supports"], list):
            raise SpecError(
                f"a bijector dict must be a mapping with a 'supports' list, got {d!r}; "
                f"pass Bijector.to_dict() output."
            )
        return Bijector([support_from_dict(s) for s in d["supports"]])
