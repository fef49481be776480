"""Proper prior distributions with Stan's parameterizations, and brms's prior strings.

* `PriorDist`: a proper prior distribution (``normal``, ``student_t``, ``cauchy``, ``exponential``, ``gamma``,
  ``lognormal``, ``beta``, ``lkj``, ``uniform``, ``inv_gamma``) with optional truncation bounds; it samples from a
  ``torch.Generator``, evaluates log densities including the truncation normalizer, and writes brms-style Stan
  statements.
* `parse_prior`: brms prior strings such as ``"student_t(3, 0, 2.5)"``.

Every prior must be proper, because mlnpe simulates parameters from the prior to train its networks: flat priors
(``""``, ``"flat"``) are errors. Which prior applies to which parameter is :mod:`mlnpe.formula.priors`'s concern.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..core.constraints import corr_vector_to_matrix
from ..errors import SpecError
from .families import standard_gamma

__all__ = [
    "PRIOR_FAMILIES",
    "REAL_FAMILIES",
    "PriorDist",
    "format_number",
    "natural_support",
    "parse_prior",
]

#: Supported prior families and their parameters (Stan's parameterizations).
PRIOR_FAMILIES: dict[str, tuple[str, ...]] = {
    "normal": ("mu", "sigma"),
    "student_t": ("nu", "mu", "sigma"),
    "cauchy": ("mu", "sigma"),
    "exponential": ("lambda",),
    "gamma": ("alpha", "beta"),
    "lognormal": ("mu", "sigma"),
    "beta": ("alpha", "beta"),
    "lkj": ("eta",),
    "uniform": ("alpha", "beta"),
    "inv_gamma": ("alpha", "beta"),
}

#: Parameter classes, as in brms.
_EXAMPLES = {
    "normal": "normal(0, 10)",
    "student_t": "student_t(3, 0, 2.5)",
    "cauchy": "cauchy(0, 5)",
    "exponential": "exponential(1)",
    "gamma": "gamma(2, 0.1)",
    "lognormal": "lognormal(0, 1)",
    "beta": "beta(2, 2)",
    "lkj": "lkj(2)",
    "uniform": "uniform(0, 5)",
    "inv_gamma": "inv_gamma(2, 1)",
}
# indices of the arguments that must be positive
_POSITIVE_ARGS = {
    "normal": (1,),
    "student_t": (0, 2),
    "cauchy": (1,),
    "exponential": (0,),
    "gamma": (0, 1),
    "lognormal": (1,),
    "beta": (0, 1),
    "lkj": (0,),
    "uniform": (),
    "inv_gamma": (0, 1),
}
_SYMMETRIC = ("normal", "student_t", "cauchy")  # symmetric around their location argument
#: Families usable for real-valued parameters (classes b and Intercept).
REAL_FAMILIES: tuple[str, ...] = ("normal", "student_t", "cauchy", "uniform")
_MIN_MASS = 1e-10
# mlnpe simulates parameters and evaluates densities in float32 (numbers from 1.2e-38 to 3.4e38): arguments and the
# prior's mass must stay well inside that range, or draws overflow to inf, round to 0 or lose their density.
_MAX_MAGNITUDE = 1e30
_MIN_SCALE = 1e-30
_TAIL = 1e-9  # the prior mass allowed beyond that range, at each end
_MAX_LKJ_ETA = 1e6  # larger eta: the identity matrix for any purpose, and a normalizing constant that cancels badly
_CORR_EDGE = 1e-4  # simulated partial correlations stay this far from +-1, where float32 matrices turn singular
_LKJ_EDGE_MASS = 0.01  # the largest mass an LKJ partial correlation may put there (lkj(0.5): 0.009)
_LOG_2PI = math.log(2.0 * math.pi)
_FLAT = ("", "flat", "(flat)")


def format_number(x: float) -> str:
    """Formats a number as brms prints it: integers without a decimal point, else the shortest repr."""
    x = float(x)
    if x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def _lbeta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


# ----------------------------------------------------------------------------------------------------------
# Truncation numerics (scipy.special, imported lazily; constants depend only on the prior's arguments)
# ----------------------------------------------------------------------------------------------------------


def _cdf(family: str, args: tuple[float, ...], x: float, upper: bool) -> float:
    """CDF (or survival function when ``upper``) of the untruncated family at ``x``."""
    import scipy.special as sp

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if family in ("normal", "lognormal"):
            mu, s = args
            if family == "lognormal":
                x = math.log(x) if x > 0 else -math.inf
            z = (x - mu) / s
            return float(sp.ndtr(-z if upper else z))
        if family == "student_t":
            nu, mu, s = args
            z = (x - mu) / s
            return float(sp.stdtr(nu, -z if upper else z))
        if family == "cauchy":
            mu, s = args
            z = (x - mu) / s
            return math.atan2(1.0, z if upper else -z) / math.pi
        if family == "exponential":
            (rate,) = args
            return math.exp(-rate * x) if upper else -math.expm1(-rate * x)
        if family == "gamma":
            a, b = args
            return float(sp.gammaincc(a, b * x) if upper else sp.gammainc(a, b * x))
        if family == "inv_gamma":
            a, b = args
            t = b / x if x > 0 else math.inf
            return float(sp.gammainc(a, t) if upper else sp.gammaincc(a, t))
        if family == "beta":
            a, b = args
            return float(sp.betainc(b, a, 1.0 - x) if upper else sp.betainc(a, b, x))
        a, b = args  # uniform
        return (b - x) / (b - a) if upper else (x - a) / (b - a)


def _icdf(family: str, args: tuple[float, ...], p: np.ndarray, upper: bool) -> np.ndarray:
    """Inverse CDF (or inverse survival function when ``upper``) of the untruncated family."""
    import scipy.special as sp

    sign = -1.0 if upper else 1.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if family in ("normal", "lognormal"):
            mu, s = args
            z = mu + sign * s * sp.ndtri(p)
            return np.exp(z) if family == "lognormal" else z
        if family == "student_t":
            nu, mu, s = args
            return mu + sign * s * sp.stdtrit(nu, p)
        if family == "cauchy":
            mu, s = args
            return mu - sign * s / np.tan(math.pi * p)
        if family == "exponential":
            (rate,) = args
            return -np.log(p) / rate if upper else -np.log1p(-p) / rate
        if family == "gamma":
            a, b = args
            return (sp.gammainccinv(a, p) if upper else sp.gammaincinv(a, p)) / b
        if family == "inv_gamma":
            a, b = args
            return b / (sp.gammaincinv(a, p) if upper else sp.gammainccinv(a, p))
        if family == "beta":
            a, b = args
            return 1.0 - sp.betaincinv(b, a, p) if upper else sp.betaincinv(a, b, p)
        a, b = args  # uniform
        return b - (b - a) * p if upper else a + (b - a) * p


@lru_cache(maxsize=512)
def _truncation(family: str, args: tuple[float, ...], lo: float, hi: float) -> tuple[bool, float, float, float]:
    """Probability-space interval of a truncation ``[lo, hi]``.

    Works in survival space when the interval lies in the upper tail, so that tail truncations keep their
    relative precision.

    Returns:
        ``(upper, p_lo, p_hi, log_mass)``: the draws are ``icdf(U(p_lo, p_hi), upper)``.
    """
    nat_lo, nat_hi = natural_support(family, args)
    upper = lo > nat_lo and _cdf(family, args, lo, upper=False) > 0.5
    if upper:
        p_lo = 0.0 if hi >= nat_hi else _cdf(family, args, hi, upper=True)
        p_hi = 1.0 if lo <= nat_lo else _cdf(family, args, lo, upper=True)
    else:
        p_lo = 0.0 if lo <= nat_lo else _cdf(family, args, lo, upper=False)
        p_hi = 1.0 if hi >= nat_hi else _cdf(family, args, hi, upper=False)
    mass = p_hi - p_lo
    return upper, p_lo, p_hi, (math.log(mass) if mass > 0 else -math.inf)


def natural_support(family: str, args: tuple[float, ...]) -> tuple[float, float]:
    """The interval ``(low, high)`` of the untruncated family's support (``lkj``: that of one correlation)."""
    if family in ("exponential", "gamma", "lognormal", "inv_gamma"):
        return 0.0, math.inf
    if family == "beta":
        return 0.0, 1.0
    if family == "uniform":
        return args[0], args[1]
    if family == "lkj":
        return -1.0, 1.0
    return -math.inf, math.inf


# ----------------------------------------------------------------------------------------------------------
# Untruncated sampling and densities (torch, generator-based)
# ----------------------------------------------------------------------------------------------------------


def _base_sample(family: str, args: tuple[float, ...], shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    """Float64 draws from the untruncated family."""
    f64 = torch.float64

    def randn() -> Tensor:
        return torch.randn(shape, generator=g, dtype=f64)

    def rand() -> Tensor:
        return torch.rand(shape, generator=g, dtype=f64)

    def gamma(a: float) -> Tensor:
        return standard_gamma(torch.full(shape, a, dtype=f64), g)

    if family == "normal":
        return args[0] + args[1] * randn()
    if family == "student_t":
        nu, mu, s = args
        z = randn()
        return mu + s * z * torch.rsqrt(2.0 * gamma(nu / 2.0) / nu)
    if family == "cauchy":
        return args[0] + args[1] * torch.tan(math.pi * (rand() - 0.5))
    if family == "exponential":
        return -torch.log1p(-rand()) / args[0]
    if family == "gamma":
        return gamma(args[0]) / args[1]
    if family == "lognormal":
        return torch.exp(args[0] + args[1] * randn())
    if family == "beta":
        x, y = gamma(args[0]), gamma(args[1])
        return x / (x + y)
    if family == "uniform":
        return args[0] + (args[1] - args[0]) * rand()
    return args[1] / gamma(args[0])  # inv_gamma


def _base_log_prob(family: str, args: tuple[float, ...], x: Tensor) -> Tensor:
    """Log density of the untruncated family (``-inf`` outside its natural support)."""
    lo, hi = natural_support(family, args)
    inside = (x >= lo) & (x <= hi) if family == "uniform" else (x > lo) & (x < hi)
    if lo == -math.inf and hi == math.inf:
        inside = ~torch.isnan(x)
    # evaluate at a safe point outside the support so that no NaN leaks into gradients
    inner = 0.5 if family == "beta" else (lo + 1.0 if lo > -math.inf else 0.0)
    safe = torch.where(inside, x, torch.full_like(x, inner))
    if family == "normal":
        mu, s = args
        out = -0.5 * ((safe - mu) / s).square() - math.log(s) - 0.5 * _LOG_2PI
    elif family == "student_t":
        nu, mu, s = args
        z = (safe - mu) / s
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi) - math.log(s)
        out = const - (nu + 1) / 2 * torch.log1p(z.square() / nu)
    elif family == "cauchy":
        mu, s = args
        out = -math.log(math.pi * s) - torch.log1p(((safe - mu) / s).square())
    elif family == "exponential":
        (rate,) = args
        out = math.log(rate) - rate * safe
    elif family == "gamma":
        a, b = args
        out = a * math.log(b) - math.lgamma(a) + (a - 1) * torch.log(safe) - b * safe
    elif family == "lognormal":
        mu, s = args
        log_x = torch.log(safe)
        out = -0.5 * ((log_x - mu) / s).square() - math.log(s) - 0.5 * _LOG_2PI - log_x
    elif family == "beta":
        a, b = args
        out = (a - 1) * torch.log(safe) + (b - 1) * torch.log1p(-safe) - _lbeta(a, b)
    elif family == "uniform":
        a, b = args
        out = torch.full_like(safe, -math.log(b - a))
    else:  # inv_gamma
        a, b = args
        out = a * math.log(b) - math.lgamma(a) - (a + 1) * torch.log(safe) - b / safe
    return torch.where(inside, out, torch.full_like(out, -math.inf))


# ----------------------------------------------------------------------------------------------------------
# PriorDist
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PriorDist:
    """A proper prior distribution with optional truncation to ``[lb, ub]``.

    Parameterizations are Stan's: ``normal(mu, sigma)``, ``student_t(nu, mu, sigma)``, ``cauchy(mu, sigma)``,
    ``exponential(rate)``, ``gamma(shape, rate)``, ``lognormal(mu, sigma)``, ``beta(a, b)``, ``lkj(eta)``,
    ``uniform(lower, upper)``, ``inv_gamma(shape, scale)``.

    Attributes:
        family: One of `PRIOR_FAMILIES`.
        args: The family's arguments.
        lb: Lower truncation bound or None.
        ub: Upper truncation bound or None.

    Raises:
        SpecError: On an unknown family, a wrong number of arguments, invalid values (non-finite, a
            non-positive scale, ``uniform`` with lower >= upper), ``lb >= ub``, bounds on ``lkj``, or a
            truncation that leaves (almost) no probability mass.

    Example:
        >>> d = PriorDist("student_t", (3, 0, 2.5), lb=0.0)
        >>> d.to_stan("sigma")
        'target += student_t_lpdf(sigma | 3, 0, 2.5) - 1 * student_t_lccdf(0 | 3, 0, 2.5);'
    """

    family: str
    args: tuple[float, ...]
    lb: float | None = None
    ub: float | None = None

    def __post_init__(self) -> None:
        if self.family not in PRIOR_FAMILIES:
            raise SpecError(
                f"unknown prior family {self.family!r}; supported families are {list(PRIOR_FAMILIES)}."
            )
        try:
            args = tuple(float(a) for a in self.args)
        except (TypeError, ValueError):
            raise SpecError(
                f"prior {self.family}: `args` must be numbers, got {self.args!r}; e.g. {_EXAMPLES[self.family]}."
            ) from None
        object.__setattr__(self, "args", args)
        _validate_args(self.family, args)
        for bound in ("lb", "ub"):
            value = getattr(self, bound)
            if value is not None:
                number = _number(value)
                if number is None or math.isnan(number):
                    raise SpecError(f"prior {self}: `{bound}` must be a number or None, got {value!r}.")
                object.__setattr__(self, bound, number)
        if self.family == "lkj" and (self.lb is not None or self.ub is not None):
            raise SpecError(f"prior {self}: lkj priors take no bounds, got lb={self.lb}, ub={self.ub}; drop them.")
        if self.lb is not None and self.ub is not None and not self.lb < self.ub:
            raise SpecError(f"prior {self}: `lb` must be below `ub`, got lb={format_number(self.lb)}, ub={format_number(self.ub)}.")
        if self.is_truncated and self.log_normalizer < math.log(_MIN_MASS):
            lo, hi = self.support
            raise SpecError(
                f"prior {self} truncated to [{format_number(lo)}, {format_number(hi)}] keeps a probability mass of "
                f"{math.exp(self.log_normalizer):.3g}; choose a prior with its mass inside the bounds."
            )

    def check_float32(self, where: str = "") -> None:
        """Checks that float32 simulations represent the prior's draws: its mass, but for 1e-9 at each end, lies
        within +-1e30, and above 1e-30 where the support starts at 0 (positive parameters, modelled on the log scale).
        Every prior of a model's parameter is checked (`mlnpe.formula.priors.resolve_priors`); brms's gamma(0.01,
        0.01), whose draws round to 0, or inv_gamma(0.001, 0.001), whose draws overflow, are valid priors for Stan
        but not for simulations.

        Arguments:
            where: what the prior is for, opening the message (default: the prior).

        Raises:
            SpecError: the prior's mass lies beyond that range, naming the range it lies in.
        """
        if self.family == "lkj":
            self._check_lkj_float32(where)
            return
        lo, hi = self.support
        with np.errstate(all="ignore"):
            if not self.is_truncated:
                ends = [_icdf(self.family, self.args, np.array(_TAIL), upper) for upper in (False, True)]
            else:
                upper, p_lo, p_hi, _ = _truncation(self.family, self.args, lo, hi)
                p = np.array([p_lo + (p_hi - p_lo) * _TAIL, p_hi - (p_hi - p_lo) * _TAIL])
                ends = _icdf(self.family, self.args, p, upper)
        ends = np.clip(np.asarray(ends, dtype=np.float64), lo, hi)
        low, high = float(np.min(ends)), float(np.max(ends))
        if np.isnan(ends).any() or max(abs(low), abs(high)) > _MAX_MAGNITUDE or (lo == 0.0 and low < _MIN_SCALE):
            bounds = [f", {b} = {format_number(v)}" for b, v in (("lb", self.lb), ("ub", self.ub)) if v is not None]
            what = where or f"prior {self}{''.join(bounds)}"
            raise SpecError(
                f"{what} puts mass where mlnpe's float32 simulations cannot represent it: all but {2 * _TAIL:g} of it "
                f"lies in [{low:.3g}, {high:.3g}], which must lie within +-{_MAX_MAGNITUDE:g} (and above "
                f"{_MIN_SCALE:g} for a positive parameter). Choose a prior on the parameter's scale, e.g. "
                f"{_EXAMPLES[self.family]}."
            )

    def _check_lkj_float32(self, where: str) -> None:
        """Simulated partial correlations (Beta(eta, eta) on [-1, 1] at the last vine level) are kept `_CORR_EDGE`
        from +-1, where float32 correlation matrices turn singular; LKJ(eta) below about 0.5 puts more than
        `_LKJ_EDGE_MASS` there, so that keeping them off the edge would change the prior noticeably."""
        import scipy.special as sp

        eta = self.args[0]
        edge = 2.0 * float(sp.betainc(eta, eta, _CORR_EDGE / 2.0))
        if edge > _LKJ_EDGE_MASS:
            raise SpecError(
                f"{where or f'prior {self}'} puts a mass of {edge:.2g} on correlations within {_CORR_EDGE:g} of +-1, "
                "which mlnpe's float32 simulations cannot represent; use eta >= 0.5 (lkj(1) is uniform "
                "over correlation matrices), e.g. lkj(2)."
            )

    def __str__(self) -> str:
        return f"{self.family}({', '.join(format_number(a) for a in self.args)})"

    @property
    def is_proper(self) -> bool:
        """Whether the prior integrates to 1: always true for a validated `PriorDist`."""
        return True

    @property
    def support(self) -> tuple[float, float]:
        """The interval ``(low, high)`` of the (truncated) distribution's support."""
        lo, hi = natural_support(self.family, self.args)
        if self.lb is not None:
            lo = max(lo, self.lb)
        if self.ub is not None:
            hi = min(hi, self.ub)
        return lo, hi

    @property
    def is_truncated(self) -> bool:
        """Whether the bounds cut into the family's natural support (e.g. ``lb = 0`` on a normal)."""
        return self.support != natural_support(self.family, self.args)

    @property
    def is_half(self) -> bool:
        """Whether this is the half-distribution of a family symmetric around 0 (``lb = 0``, no ``ub``)."""
        return self.family in _SYMMETRIC and self.args[-2] == 0.0 and self.support == (0.0, math.inf)

    @property
    def log_normalizer(self) -> float:
        """``log P(lb <= X <= ub)`` of the untruncated distribution (0 without truncation)."""
        if not self.is_truncated:
            return 0.0
        if self.is_half:
            return -math.log(2.0)
        return _truncation(self.family, self.args, *self.support)[3]

    def with_bounds(self, lb: float | None = None, ub: float | None = None) -> PriorDist:
        """A copy with the given truncation bounds."""
        return replace(self, lb=lb, ub=ub)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, inverted by `from_dict`."""
        return {"family": self.family, "args": list(self.args), "lb": self.lb, "ub": self.ub}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PriorDist:
        """Rebuilds a prior from `to_dict` output."""
        return cls(d["family"], tuple(d["args"]), d.get("lb"), d.get("ub"))

    # ---- scalar priors ---------------------------------------------------------------------------------

    def _require_scalar(self, method: str) -> None:
        if self.family == "lkj":
            raise SpecError(
                f"prior {self} is a distribution over correlation matrices; use `{method}_corr(...)` instead "
                f"of `{method}(...)`."
            )

    def sample(
        self, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Draws from the (truncated) prior.

        Half-distributions of symmetric families are drawn as absolute values; other truncations by the
        inverse CDF applied to uniforms drawn from ``generator`` (in the upper tail through the survival
        function, so that tail truncations stay accurate).

        Args:
            shape: Output shape, e.g. ``(batch,)``.
            generator: Source of randomness; nothing else is used.
            dtype: Floating dtype of the draws (they are computed in float64).

        Returns:
            Draws of shape ``shape``.

        Raises:
            SpecError: For ``lkj`` priors (use `sample_corr`).
        """
        self._require_scalar("sample")
        shape = tuple(int(s) for s in shape)
        if not self.is_truncated:
            draws = _base_sample(self.family, self.args, shape, generator)
        elif self.is_half:
            draws = _base_sample(self.family, self.args, shape, generator).abs()
        else:
            lo, hi = self.support
            upper, p_lo, p_hi, _ = _truncation(self.family, self.args, lo, hi)
            u = torch.rand(shape, generator=generator, dtype=torch.float64).numpy()
            x = _icdf(self.family, self.args, p_lo + (p_hi - p_lo) * u, upper)
            draws = torch.from_numpy(np.clip(np.asarray(x, dtype=np.float64), lo, hi))
        return draws.to(dtype)

    def log_prob(self, x: Tensor) -> Tensor:
        """Log density of the (truncated) prior, including the truncation normalizer.

        Args:
            x: Values, any shape, floating point.

        Returns:
            Log densities of the same shape and dtype; ``-inf`` outside the support.

        Raises:
            SpecError: For ``lkj`` priors (use `log_prob_corr`).
        """
        self._require_scalar("log_prob")
        out = _base_log_prob(self.family, self.args, x)
        if not self.is_truncated:
            return out
        lo, hi = self.support
        inside = (x >= lo) & (x <= hi)
        return torch.where(inside, out - self.log_normalizer, torch.full_like(out, -math.inf))

    # ---- LKJ ---------------------------------------------------------------------------------------------

    def _require_lkj(self, method: str, k: int) -> int:
        if self.family != "lkj":
            raise SpecError(f"`{method}` needs an lkj prior, got {self}; use `{method.replace('_corr', '')}`.")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
            raise SpecError(f"`{method}`: `k` must be an integer >= 2 (the matrix size), got {k!r}.")
        return int(k)

    def sample_corr(
        self, k: int, shape: tuple[int, ...], generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        """Draws ``k x k`` correlation matrices from LKJ(eta) by the C-vine method.

        Canonical partial correlations at vine level ``i`` (0-based) are ``2 * Beta(a_i, a_i) - 1`` with
        ``a_i = eta + (k - 2 - i) / 2`` (Lewandowski, Kurowicka and Joe, 2009); they fill a Cholesky factor
        row by row.

        Args:
            k: Matrix size, >= 2.
            shape: Batch shape of the draws.
            generator: Source of randomness; nothing else is used.
            dtype: Floating dtype of the draws (computed in float64).

        Returns:
            Strictly upper-triangular correlations, row-major (``r12, r13, r23`` for ``k = 3``), of shape
            ``(*shape, k(k-1)/2)``.

        Raises:
            SpecError: If the prior is not lkj or ``k`` is invalid.
        """
        k = self._require_lkj("sample_corr", k)
        n = math.prod(int(s) for s in shape)
        f64 = torch.float64
        cpc = torch.zeros(n, k, k, dtype=f64)  # cpc[:, i, j]: partial correlation of (i, j) given 0..i-1
        for i in range(k - 1):
            a = self.args[0] + (k - 2 - i) / 2.0
            x = standard_gamma(torch.full((n, k - 1 - i), a, dtype=f64), generator)
            y = standard_gamma(torch.full((n, k - 1 - i), a, dtype=f64), generator)
            cpc[:, i, i + 1 :] = (2.0 * x / (x + y) - 1.0).clamp(-1.0 + _CORR_EDGE, 1.0 - _CORR_EDGE)
        L = torch.zeros(n, k, k, dtype=f64)
        L[:, 0, 0] = 1.0
        for j in range(1, k):
            remaining = torch.ones(n, dtype=f64)  # 1 - sum of squares of row j so far
            for i in range(j):
                L[:, j, i] = cpc[:, i, j] * remaining.sqrt()
                remaining = remaining - L[:, j, i].square()
            L[:, j, j] = remaining.clamp(min=0.0).sqrt()
        omega = L @ L.transpose(-1, -2)
        rows, cols = torch.triu_indices(k, k, offset=1)
        return omega[:, rows, cols].clamp(-1.0, 1.0).reshape(tuple(shape) + (k * (k - 1) // 2,)).to(dtype)

    def lkj_log_normalizer(self, k: int) -> float:
        """``log`` of the LKJ(eta) normalizing constant for ``k x k`` matrices (density = exp(this) det^(eta-1)).

        The closed form of Lewandowski, Kurowicka and Joe (2009):
        ``c_k = prod_{i=1}^{k-1} [2^{(2 eta - 2 + k - i)} B(eta + (k-i-1)/2, eta + (k-i-1)/2)]^{k-i}``,
        and the density is ``det(Omega)^(eta-1) / c_k``.
        """
        k = self._require_lkj("log_prob_corr", k)
        eta = self.args[0]
        log_c = 0.0
        for i in range(1, k):
            b = eta + (k - i - 1) / 2.0
            log_c += (k - i) * ((2 * eta - 2 + k - i) * math.log(2.0) + _lbeta(b, b))
        return -log_c

    def log_prob_corr(self, r: Tensor, k: int) -> Tensor:
        """LKJ(eta) log density ``(eta - 1) log det(Omega) + log normalizer`` of correlation matrices.

        Args:
            r: Strictly upper-triangular correlations, row-major, ``(..., k(k-1)/2)``.
            k: Matrix size, >= 2.

        Returns:
            Log densities of shape ``(...)``; ``-inf`` where ``Omega`` is not positive definite.

        Raises:
            SpecError: If the prior is not lkj, ``k`` is invalid or ``r`` has the wrong last dimension.
        """
        k = self._require_lkj("log_prob_corr", k)
        omega = corr_vector_to_matrix(r, k)
        chol, info = torch.linalg.cholesky_ex(omega)
        ok = info == 0
        log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        out = (self.args[0] - 1.0) * torch.where(ok, log_det, torch.zeros_like(log_det))
        out = out + self.lkj_log_normalizer(k)
        return torch.where(ok, out, torch.full_like(out, -math.inf))

    # ---- Stan --------------------------------------------------------------------------------------------

    def to_stan(self, var: str, n: int = 1, target: str = "target") -> str:
        """The Stan statement adding this prior to the log density, with brms's truncation correction.

        Args:
            var: The Stan variable, e.g. ``"sd_1"``; for lkj priors the Cholesky factor, e.g. ``"L_1"``.
            n: Number of elements of ``var`` sharing the prior (multiplies the truncation correction).
            target: The accumulator (``"target"`` or brms's ``"lprior"``).

        Returns:
            E.g. ``target += student_t_lpdf(sd_1 | 3, 0, 2.5) - 2 * student_t_lccdf(0 | 3, 0, 2.5);``.
        """
        if self.family == "lkj":
            return f"{target} += lkj_corr_cholesky_lpdf({var} | {format_number(self.args[0])});"
        args = ", ".join(format_number(a) for a in self.args)
        stmt = f"{target} += {self.family}_lpdf({var} | {args})"
        nat_lo, nat_hi = natural_support(self.family, self.args)
        lo, hi = self.support
        cut_lo, cut_hi = lo > nat_lo, hi < nat_hi
        if cut_lo and cut_hi:
            stmt += (
                f" - {n} * log_diff_exp({self.family}_lcdf({format_number(hi)} | {args}), "
                f"{self.family}_lcdf({format_number(lo)} | {args}))"
            )
        elif cut_lo:
            stmt += f" - {n} * {self.family}_lccdf({format_number(lo)} | {args})"
        elif cut_hi:
            stmt += f" - {n} * {self.family}_lcdf({format_number(hi)} | {args})"
        return stmt + ";"


def _number(value: Any) -> float | None:
    """`value` as a float (numbers and numeric strings, as R and tables give them), or None."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return None


def _validate_args(family: str, args: tuple[float, ...]) -> None:
    names = PRIOR_FAMILIES[family]
    text = f"{family}({', '.join(format_number(a) for a in args)})"
    if len(args) != len(names):
        raise SpecError(
            f"prior {text!r} has {len(args)} argument(s) but {family} takes {len(names)} "
            f"({', '.join(names)}); write e.g. {_EXAMPLES[family]}."
        )
    for i, a in enumerate(args):
        if not (math.isfinite(a) and abs(a) <= _MAX_MAGNITUDE):
            raise SpecError(
                f"prior {text!r}: argument {names[i]} must be finite and at most {_MAX_MAGNITUDE:g} in absolute value "
                f"(mlnpe simulates in float32), got {a}; e.g. {_EXAMPLES[family]}."
            )
    for i in _POSITIVE_ARGS[family]:
        if args[i] <= 0:
            raise SpecError(
                f"prior {text!r}: argument {names[i]} must be positive, got {format_number(args[i])}; "
                f"e.g. {_EXAMPLES[family]}."
            )
        if args[i] < _MIN_SCALE:
            raise SpecError(
                f"prior {text!r}: argument {names[i]} must be at least {_MIN_SCALE:g} (mlnpe simulates in float32), "
                f"got {format_number(args[i])}; e.g. {_EXAMPLES[family]}."
            )
    if family == "lkj" and args[0] > _MAX_LKJ_ETA:
        raise SpecError(
            f"prior {text!r}: argument eta must be at most {_MAX_LKJ_ETA:g} (a larger eta fixes the correlations at 0 "
            f"just as well, and its density loses its precision), got {format_number(args[0])}; e.g. "
            f"{_EXAMPLES[family]}."
        )
    if family == "uniform" and not args[0] < args[1]:
        raise SpecError(
            f"prior {text!r}: the lower limit must be below the upper limit, got {format_number(args[0])} >= "
            f"{format_number(args[1])}; e.g. {_EXAMPLES[family]}."
        )


# ----------------------------------------------------------------------------------------------------------
# Parsing
# ----------------------------------------------------------------------------------------------------------

_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.DOTALL)
_ALIASES = {"lkj_corr": "lkj", "lkj_corr_cholesky": "lkj"}


def parse_prior(text: str) -> PriorDist:
    """Parses a brms prior string.

    Args:
        text: E.g. ``"normal(0, 10)"``, ``"student_t(3, 0, 2.5)"``, ``"lkj(2)"`` (also ``lkj_corr_cholesky(2)``
            as printed by brms); names are case-insensitive.

    Returns:
        The untruncated prior.

    Raises:
        SpecError: For flat priors (``""``, ``"flat"``), unknown families (the message lists the supported
            ones), malformed text, wrong argument counts or invalid values.

    Example:
        >>> str(parse_prior("student_t(3,0,2.5)"))
        'student_t(3, 0, 2.5)'
    """
    if not isinstance(text, str):
        raise SpecError(f"prior must be a string such as 'normal(0, 10)', got {type(text).__name__}: {text!r}.")
    if text.strip().lower() in _FLAT:
        raise SpecError(
            f"prior {text!r} is flat (improper); mlnpe simulates parameters from the prior, so every prior must be "
            f"proper; use a weakly informative one such as 'normal(0, 2.5)' for b or 'student_t(3, 0, 2.5)' for "
            f"sd and sigma."
        )
    match = _CALL.match(text)
    if match is None:
        raise SpecError(
            f"cannot parse prior {text!r}; write a distribution call such as 'normal(0, 10)' or "
            f"'student_t(3, 0, 2.5)'."
        )
    name = match.group(1).lower()
    name = _ALIASES.get(name, name)
    if name not in PRIOR_FAMILIES:
        raise SpecError(
            f"unknown prior family {match.group(1)!r} in {text!r}; supported families are "
            f"{', '.join(PRIOR_FAMILIES)}."
        )
    body = match.group(2).strip()
    parts = [p.strip() for p in body.split(",")] if body else []
    try:
        args = tuple(float(p) for p in parts)
    except ValueError:
        raise SpecError(
            f"prior {text!r}: arguments must be numbers, got {parts}; write e.g. {_EXAMPLES[name]}."
        ) from None
    return PriorDist(name, args)
