"""The `Correlation` support and its helpers: correlation matrices <-> upper-triangular vectors, and the
Cholesky factor built from canonical partial correlations (Stan's construction, with the LKJ Cholesky-form
Jacobian).
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mlnpe.errors import DataError, SpecError

from .base import Support, check_tensor

__all__ = ["Correlation", "corr_vector_to_matrix", "corr_matrix_to_vector", "cholesky_from_unconstrained"]

_LOG2 = math.log(2.0)


# ----------------------------------------------------------------------------------------------------------
# Numerical helpers
# ----------------------------------------------------------------------------------------------------------


def _log1m_tanh_sq(z: Tensor) -> Tensor:
    """Stable ``log(1 - tanh(z)^2) = -2 log cosh(z)``, finite for every finite ``z``.

    Args:
        z: Tensor of any shape.

    Returns:
        Tensor of the same shape as ``z``.
    """
    a = z.abs()
    return 2.0 * (_LOG2 - a - F.softplus(-2.0 * a))


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
    check_tensor(r, _n_pairs(k), "r", f"corr_vector_to_matrix(k={k})")
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
    check_tensor(z, _n_pairs(k), "z", f"cholesky_from_unconstrained(k={k})")
    return _cholesky_from_z(z, k)


# ----------------------------------------------------------------------------------------------------------
# Supports
# ----------------------------------------------------------------------------------------------------------


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
    param_names = ("k",)

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
        check_tensor(x, _n_pairs(self.k), arg_name, repr(self))

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
