"""Response families of brms-style formula models: links, simulation, exact log-likelihoods, data checks.

Each family is a small stateless frozen dataclass (`Gaussian`, `Student`, `Bernoulli`, `Binomial`,
`Poisson`, `NegBinomial`, `Lognormal`, `GammaFamily`) with

* ``name``, ``link`` and ``aux``: the family parameters (brms's distributional parameters other than ``mu``)
  with their supports in `mlnpe.core.constraints` syntax, in brms's variable order;
* ``inverse_link(eta)`` and ``link_numpy(y)`` (the latter only for data-based default priors);
* ``simulate(eta, aux, trials, generator)``: vectorized draws of the response;
* ``log_lik(y, eta, aux, trials)``: exact elementwise log density or mass, normalizing constants included;
* ``check_response(y, trials, argument)``: raises `DataError` for responses outside the family's support.

Shapes: ``eta`` is ``(..., groups, rows)`` (typically ``(batch, groups, rows)`` for simulation and
``(draws, batch, groups, rows)`` for log-likelihoods), ``aux`` is ``(..., n_aux)`` with the same leading dims
as ``eta`` minus the last two; column ``a`` of ``aux`` is broadcast as ``aux[..., a, None, None]``.

Parameterizations follow brms: ``negbinomial`` has mean ``mu`` and shape ``phi`` (``var = mu + mu^2 / phi``);
``Gamma`` has mean ``mu`` and shape ``alpha`` (``rate = alpha / mu``); ``student`` is ``y = mu + sigma * t_nu``;
``lognormal``'s ``mu`` and ``sigma`` are the mean and SD of ``log(y)``.

Links: only each family's default link is supported. ``Gamma`` uses the log link (as in the Stan template
``Y ~ gamma(shape, shape ./ exp(mu))``), not brms's default inverse link: with the inverse link, draws of the
linear predictor from the prior give negative means, which cannot be simulated.

Randomness: every sampler takes a ``torch.Generator``; gamma variates, which torch cannot draw from a
generator, come from `standard_gamma`, which seeds a forked RNG from the generator and leaves the global RNG
untouched.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mlnpe.errors import DataError, SpecError

__all__ = [
    "Family",
    "Gaussian",
    "Student",
    "Bernoulli",
    "Binomial",
    "Poisson",
    "NegBinomial",
    "Lognormal",
    "GammaFamily",
    "FAMILIES",
    "get_family",
    "stan_likelihood",
    "standard_gamma",
    "MAX_MEAN",
]

#: Simulated means of log-link families are capped at this value: prior draws of the linear predictor can be
#: huge, and exp(eta) would overflow float32 (exp(89) = inf); counts of 1e8 are already far outside any data.
MAX_MEAN = 1e8
_MAX_LOG_MEAN = math.log(MAX_MEAN)
_LOG_2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------------------------------
# Random variates from a generator
# ----------------------------------------------------------------------------------------------------------


def standard_gamma(alpha: Tensor, generator: torch.Generator) -> Tensor:
    """Draws Gamma(alpha, 1) variates using only ``generator`` for randomness.

    torch's gamma sampler has no generator argument, so a forked global RNG is seeded from ``generator``;
    the global RNG state is restored on exit.

    Args:
        alpha: Shape parameters, any shape, positive, floating point.
        generator: Source of randomness.

    Returns:
        Draws of the same shape and dtype as ``alpha``, clamped below at the smallest positive float so
        that they never equal 0.
    """
    seed = int(torch.randint(2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = torch.distributions.Gamma(alpha, torch.ones_like(alpha), validate_args=False).sample()
    return draws.clamp(min=torch.finfo(draws.dtype).tiny)


def _count_like(values: np.ndarray) -> np.ndarray:
    """Mask of entries that are not non-negative integers."""
    return (values < 0) | (values != np.floor(values))


def _safe_log(y: Tensor) -> tuple[Tensor, Tensor]:
    """``(y > 0, log(y) where y > 0 else 0)``: keeps gradients finite where callers mask rows out (padding)."""
    positive = y > 0
    return positive, torch.log(torch.where(positive, y, torch.ones_like(y)))


def _fmt(value: float) -> str:
    return f"{float(value):g}"


# ----------------------------------------------------------------------------------------------------------
# The family base class
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Family(ABC):
    """A response family with its default link.

    Attributes (class level):
        name: brms's family name.
        link: The link function of ``mu``.
        aux: ``(name, support)`` of each family parameter, in brms's order.
        needs_trials: Whether the family needs the number of trials (binomial).
        expects: What the family expects of the response, used in error messages.
        stan: The Stan sampling statement (template) of the likelihood.
    """

    name: ClassVar[str]
    link: ClassVar[str]
    aux: ClassVar[tuple[tuple[str, str], ...]] = ()
    needs_trials: ClassVar[bool] = False
    expects: ClassVar[str]
    stan: ClassVar[str]

    def __str__(self) -> str:
        return f"Family: {self.name}\n  Link function: {self.link}"

    @property
    def aux_names(self) -> tuple[str, ...]:
        """Names of the family parameters, e.g. ``("sigma", "nu")`` for student."""
        return tuple(name for name, _ in self.aux)

    def inverse_link(self, eta: Tensor) -> Tensor:
        """Maps the linear predictor to the mean ``mu`` (exactly, without caps).

        Args:
            eta: Linear predictor, any shape.

        Returns:
            The mean, same shape.
        """
        if self.link == "identity":
            return eta
        if self.link == "log":
            return torch.exp(eta)
        return torch.sigmoid(eta)

    def link_numpy(self, y: np.ndarray) -> np.ndarray:
        """Applies the link to observed responses, for data-based default priors (brms's convention).

        Log links first replace ``y == 0`` by 0.1 to avoid ``-inf``; logit links return ``logit(y)`` (brms
        does not use data for default priors under a logit link).

        Args:
            y: Responses, any shape.

        Returns:
            ``link(y)`` as float64, same shape.
        """
        y = np.asarray(y, dtype=np.float64)
        if self.link == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.log(np.where(y == 0, 0.1, y))
        if self.link == "logit":
            with np.errstate(divide="ignore", invalid="ignore"):
                return np.log(y) - np.log1p(-y)
        return y

    def stan_likelihood(self) -> str:
        """The Stan sampling statement of the likelihood, e.g. ``"Y ~ poisson_log(mu);"``."""
        return self.stan

    # ---- simulation ------------------------------------------------------------------------------------

    def simulate(
        self,
        eta: Tensor,
        aux: Tensor | None,
        trials: Tensor | None,
        generator: torch.Generator,
    ) -> Tensor:
        """Draws responses given the linear predictor and the family parameters.

        Args:
            eta: Linear predictor, ``(batch, groups, rows)`` (any leading dims work).
            aux: Family parameters, ``(batch, n_aux)`` in the order of ``aux``; None or ``(batch, 0)`` for
                families without parameters.
            trials: Number of trials, ``(batch, groups, rows)``; binomial only, else None.
            generator: Source of randomness; nothing else is used.

        Returns:
            Responses of the shape and floating dtype of ``eta``.

        Raises:
            SpecError: If ``aux`` has the wrong number of columns.
            DataError: If the binomial family gets no ``trials``.
        """
        params = self._split_aux(aux, eta)
        return self._simulate(eta, params, self._trials(trials, eta), generator)

    def log_lik(self, y: Tensor, eta: Tensor, aux: Tensor | None, trials: Tensor | None = None) -> Tensor:
        """Exact elementwise log density (continuous) or log mass (discrete) of the responses.

        Args:
            y: Responses, ``(batch, groups, rows)``.
            eta: Linear predictor, ``(draws, batch, groups, rows)`` or ``(batch, groups, rows)``.
            aux: Family parameters, ``(draws, batch, n_aux)`` (leading dims of ``eta`` minus the last two).
            trials: Number of trials broadcastable to ``y``; binomial only.

        Returns:
            Log-likelihood of every row, the broadcast shape of ``y`` and ``eta``.

        Raises:
            SpecError: If ``aux`` has the wrong number of columns.
            DataError: If the binomial family gets no ``trials``.
        """
        params = self._split_aux(aux, eta)
        return self._log_lik(y.to(eta.dtype), eta, params, self._trials(trials, eta))

    def _split_aux(self, aux: Tensor | None, eta: Tensor) -> list[Tensor]:
        n_aux = len(self.aux)
        if aux is None:
            if n_aux:
                raise SpecError(
                    f"family {self.name!r} needs `aux` with columns {list(self.aux_names)}, got None; "
                    f"pass a tensor of shape (batch, {n_aux})."
                )
            return []
        if aux.shape[-1] != n_aux or aux.dim() != eta.dim() - 1:
            raise SpecError(
                f"family {self.name!r}: `aux` must have shape {tuple(eta.shape[:-2]) + (n_aux,)} "
                f"(columns {list(self.aux_names)}) for eta of shape {tuple(eta.shape)}, got {tuple(aux.shape)}."
            )
        return [aux[..., a, None, None].to(eta.dtype) for a in range(n_aux)]

    def _trials(self, trials: Tensor | None, eta: Tensor) -> Tensor | None:
        if not self.needs_trials:
            return None
        if trials is None:
            raise DataError(
                f"family {self.name!r} needs `trials` (the number of attempts of every row), got None; "
                f"pass a tensor broadcastable to eta's shape {tuple(eta.shape)}."
            )
        return trials.to(eta.dtype)

    @abstractmethod
    def _simulate(self, eta: Tensor, aux: list[Tensor], trials: Tensor | None, g: torch.Generator) -> Tensor:
        """Family-specific simulation with ``aux`` already broadcast to ``(..., 1, 1)``."""

    @abstractmethod
    def _log_lik(self, y: Tensor, eta: Tensor, aux: list[Tensor], trials: Tensor | None) -> Tensor:
        """Family-specific log-likelihood with ``aux`` already broadcast to ``(..., 1, 1)``."""

    # ---- response checks -------------------------------------------------------------------------------

    def check_response(self, y: Any, trials: Any = None, argument: str = "y") -> None:
        """Validates observed responses against the family's support.

        Args:
            y: Responses, any shape (entries are called rows in messages, counted in flattened order).
            trials: Number of trials of every row (binomial only), same shape as ``y``.
            argument: Name of the response in error messages.

        Raises:
            DataError: If ``y`` is not numeric, has non-finite values or values outside the support, if
                ``trials`` is missing (binomial), invalid, or given to a family without trials. The message
                names the family, the number of offending rows, the first offending value and what the
                family expects.
        """
        values = self._as_numeric(y, argument)
        self._fail_if(~np.isfinite(values), values, argument, "non-finite", "remove or impute these rows")
        if self.needs_trials:
            n = self._check_trials(trials, values, argument)
        elif trials is not None:
            raise DataError(
                f"family {self.name!r}: `trials` is only used by the binomial family, got an argument for "
                f"{argument!r}; drop `trials`."
            )
        else:
            n = None
        self._check_support(values, n, argument)

    def _check_support(self, values: np.ndarray, trials: np.ndarray | None, argument: str) -> None:
        """Family-specific support check of finite values (default: any real number)."""

    def _as_numeric(self, y: Any, argument: str) -> np.ndarray:
        arr = np.asarray(y)
        if arr.dtype == np.bool_:
            arr = arr.astype(np.float64)
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(
                f"family {self.name!r}: argument {argument!r} must be numeric, got dtype {arr.dtype}; "
                f"{self.name} expects {self.expects}."
            )
        return arr.astype(np.float64).reshape(-1)

    def _fail_if(self, bad: np.ndarray, values: np.ndarray, argument: str, what: str, fix: str) -> None:
        if not bad.any():
            return
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"family {self.name!r}: argument {argument!r} has {int(bad.sum())} {what} row(s) "
            f"(first: {_fmt(values[first])} at row {first}); {self.name} expects {self.expects}; {fix}."
        )

    def _check_trials(self, trials: Any, values: np.ndarray, argument: str) -> np.ndarray:
        if trials is None:
            raise DataError(
                f"family {self.name!r} needs `trials` (the number of attempts of every row of {argument!r}), "
                f"got None; pass them, e.g. `y | trials(n) ~ ...` in the formula."
            )
        n = np.asarray(trials)
        if not np.issubdtype(n.dtype, np.number) or n.size != values.size:
            raise DataError(
                f"family {self.name!r}: `trials` must be numeric with one entry per row of {argument!r} "
                f"({values.size}), got dtype {n.dtype} with {n.size} entries; pass one count per row."
            )
        n = n.astype(np.float64).reshape(-1)
        bad = ~np.isfinite(n) | _count_like(np.where(np.isfinite(n), n, 0.0))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"family {self.name!r}: `trials` has {int(bad.sum())} row(s) that are not non-negative "
                f"integers (first: {_fmt(n[first])} at row {first}); pass the number of attempts per row."
            )
        return n


def _check_counts(family: Family, values: np.ndarray, argument: str) -> None:
    family._fail_if(_count_like(values), values, argument, "invalid", "fix or remove these rows")


# ----------------------------------------------------------------------------------------------------------
# Continuous families
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gaussian(Family):
    """``y ~ normal(mu, sigma)`` with identity link."""

    name: ClassVar[str] = "gaussian"
    link: ClassVar[str] = "identity"
    aux: ClassVar[tuple[tuple[str, str], ...]] = (("sigma", "positive"),)
    expects: ClassVar[str] = "finite real numbers"
    stan: ClassVar[str] = "Y ~ normal(mu, sigma);"

    def _simulate(self, eta, aux, trials, g):
        (sigma,) = aux
        return eta + sigma * torch.randn(eta.shape, generator=g, dtype=eta.dtype)

    def _log_lik(self, y, eta, aux, trials):
        (sigma,) = aux
        z = (y - eta) / sigma
        return -0.5 * z.square() - torch.log(sigma) - 0.5 * _LOG_2PI


@dataclass(frozen=True)
class Student(Family):
    """``y = mu + sigma * t_nu`` with identity link; ``nu`` is restricted to (1, 1000) as in brms (lb = 1)."""

    name: ClassVar[str] = "student"
    link: ClassVar[str] = "identity"
    aux: ClassVar[tuple[tuple[str, str], ...]] = (("sigma", "positive"), ("nu", "interval:1:1000"))
    expects: ClassVar[str] = "finite real numbers"
    stan: ClassVar[str] = "Y ~ student_t(nu, mu, sigma);"

    def _simulate(self, eta, aux, trials, g):
        sigma, nu = aux
        z = torch.randn(eta.shape, generator=g, dtype=eta.dtype)
        # t_nu = z / sqrt(chi2_nu / nu) with chi2_nu = 2 * Gamma(nu / 2, 1)
        chi2 = 2.0 * standard_gamma((nu / 2.0).expand(eta.shape).contiguous(), g)
        return eta + sigma * z * torch.rsqrt(chi2 / nu)

    def _log_lik(self, y, eta, aux, trials):
        sigma, nu = aux
        z = (y - eta) / sigma
        half = 0.5 * (nu + 1.0)
        return (
            torch.lgamma(half)
            - torch.lgamma(0.5 * nu)
            - 0.5 * torch.log(math.pi * nu)
            - torch.log(sigma)
            - half * torch.log1p(z.square() / nu)
        )


@dataclass(frozen=True)
class Lognormal(Family):
    """``log(y) ~ normal(mu, sigma)``; brms calls the link of ``mu`` identity (``mu`` is on the log scale)."""

    name: ClassVar[str] = "lognormal"
    link: ClassVar[str] = "identity"
    aux: ClassVar[tuple[tuple[str, str], ...]] = (("sigma", "positive"),)
    expects: ClassVar[str] = "positive numbers"
    stan: ClassVar[str] = "Y ~ lognormal(mu, sigma);"

    def link_numpy(self, y: np.ndarray) -> np.ndarray:
        """``log(y)`` (brms's ``has_logscale``: data-based priors of lognormal models use the log scale)."""
        y = np.asarray(y, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(np.where(y == 0, 0.1, y))

    def _simulate(self, eta, aux, trials, g):
        (sigma,) = aux
        log_y = eta + sigma * torch.randn(eta.shape, generator=g, dtype=eta.dtype)
        # keep draws finite and positive: exp overflows above ~89 (float32) and underflows to 0 below ~-103
        tiny = math.log(torch.finfo(eta.dtype).tiny)
        return torch.exp(log_y.clamp(min=tiny, max=_MAX_LOG_MEAN))

    def _log_lik(self, y, eta, aux, trials):
        (sigma,) = aux
        positive, log_y = _safe_log(y)
        z = (log_y - eta) / sigma
        out = -0.5 * z.square() - torch.log(sigma) - 0.5 * _LOG_2PI - log_y
        return torch.where(positive, out, -math.inf)

    def _check_support(self, values, trials, argument):
        self._fail_if(values <= 0, values, argument, "non-positive", "fix or remove these rows")


@dataclass(frozen=True)
class GammaFamily(Family):
    """``y ~ gamma(shape, shape / mu)`` with log link (brms's mean-shape parameterization)."""

    name: ClassVar[str] = "Gamma"
    link: ClassVar[str] = "log"
    aux: ClassVar[tuple[tuple[str, str], ...]] = (("shape", "positive"),)
    expects: ClassVar[str] = "positive numbers"
    stan: ClassVar[str] = "Y ~ gamma(shape, shape ./ exp(mu));"

    def _simulate(self, eta, aux, trials, g):
        (shape,) = aux
        mu = torch.exp(eta.clamp(-_MAX_LOG_MEAN, _MAX_LOG_MEAN))  # cap, see MAX_MEAN
        draws = standard_gamma(shape.expand(eta.shape).contiguous(), g) * mu / shape
        # tiny shapes (e.g. from gamma(0.01, 0.01) priors) give variates that underflow to 0
        return draws.clamp(min=torch.finfo(eta.dtype).tiny)

    def _log_lik(self, y, eta, aux, trials):
        (shape,) = aux
        positive, log_y = _safe_log(y)
        log_rate = torch.log(shape) - eta
        out = shape * log_rate - torch.lgamma(shape) + (shape - 1.0) * log_y - torch.exp(log_rate) * y
        return torch.where(positive, out, -math.inf)

    def _check_support(self, values, trials, argument):
        self._fail_if(values <= 0, values, argument, "non-positive", "fix or remove these rows")


# ----------------------------------------------------------------------------------------------------------
# Discrete families
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bernoulli(Family):
    """``y ~ bernoulli(inv_logit(mu))``."""

    name: ClassVar[str] = "bernoulli"
    link: ClassVar[str] = "logit"
    expects: ClassVar[str] = "0 or 1 (or booleans)"
    stan: ClassVar[str] = "Y ~ bernoulli_logit(mu);"

    def _simulate(self, eta, aux, trials, g):
        return torch.bernoulli(torch.sigmoid(eta), generator=g)

    def _log_lik(self, y, eta, aux, trials):
        return y * eta - F.softplus(eta)

    def _check_support(self, values, trials, argument):
        self._fail_if((values != 0) & (values != 1), values, argument, "invalid", "recode the response to 0/1")


@dataclass(frozen=True)
class Binomial(Family):
    """``y ~ binomial(trials, inv_logit(mu))``."""

    name: ClassVar[str] = "binomial"
    link: ClassVar[str] = "logit"
    needs_trials: ClassVar[bool] = True
    expects: ClassVar[str] = "integer successes 0 <= y <= trials"
    stan: ClassVar[str] = "Y ~ binomial_logit(trials, mu);"

    def _simulate(self, eta, aux, trials, g):
        count = trials.expand(eta.shape).contiguous()
        return torch.binomial(count, torch.sigmoid(eta).expand(eta.shape).contiguous(), generator=g)

    def _log_lik(self, y, eta, aux, trials):
        log_choose = torch.lgamma(trials + 1.0) - torch.lgamma(y + 1.0) - torch.lgamma(trials - y + 1.0)
        return log_choose + y * F.logsigmoid(eta) + (trials - y) * F.logsigmoid(-eta)

    def _check_support(self, values, trials, argument):
        _check_counts(self, values, argument)
        above = values > trials
        if above.any():
            first = int(np.flatnonzero(above)[0])
            raise DataError(
                f"family {self.name!r}: argument {argument!r} has {int(above.sum())} row(s) with more successes "
                f"than trials (first: {_fmt(values[first])} > trials = {_fmt(trials[first])} at row {first}); "
                f"{self.name} expects {self.expects}; check that {argument!r} counts successes and `trials` "
                f"the attempts."
            )


@dataclass(frozen=True)
class Poisson(Family):
    """``y ~ poisson(exp(mu))``."""

    name: ClassVar[str] = "poisson"
    link: ClassVar[str] = "log"
    expects: ClassVar[str] = "non-negative integer counts"
    stan: ClassVar[str] = "Y ~ poisson_log(mu);"

    def _simulate(self, eta, aux, trials, g):
        return torch.poisson(torch.exp(eta.clamp(max=_MAX_LOG_MEAN)), generator=g)  # cap, see MAX_MEAN

    def _log_lik(self, y, eta, aux, trials):
        return y * eta - torch.exp(eta) - torch.lgamma(y + 1.0)

    def _check_support(self, values, trials, argument):
        _check_counts(self, values, argument)


@dataclass(frozen=True)
class NegBinomial(Family):
    """``y ~ neg_binomial_2(exp(mu), shape)``: mean ``mu``, variance ``mu + mu^2 / shape``."""

    name: ClassVar[str] = "negbinomial"
    link: ClassVar[str] = "log"
    aux: ClassVar[tuple[tuple[str, str], ...]] = (("shape", "positive"),)
    expects: ClassVar[str] = "non-negative integer counts"
    stan: ClassVar[str] = "Y ~ neg_binomial_2_log(mu, shape);"

    def _simulate(self, eta, aux, trials, g):
        (shape,) = aux
        mu = torch.exp(eta.clamp(max=_MAX_LOG_MEAN))  # cap, see MAX_MEAN
        # gamma-Poisson mixture: rate ~ Gamma(shape, shape / mu) has mean mu and variance mu^2 / shape
        rate = standard_gamma(shape.expand(eta.shape).contiguous(), g) * mu / shape
        # A tiny prior draw of shape (brms's default gamma(0.01, 0.01) gives many) can make 0/0 or inf here.
        rate = torch.nan_to_num(rate, nan=0.0, posinf=MAX_MEAN).clamp(0.0, MAX_MEAN)
        return torch.poisson(rate, generator=g)

    def _log_lik(self, y, eta, aux, trials):
        (shape,) = aux
        log_shape = torch.log(shape)
        log_total = torch.logaddexp(log_shape.expand_as(eta), eta)  # log(shape + mu)
        return (
            torch.lgamma(y + shape)
            - torch.lgamma(shape)
            - torch.lgamma(y + 1.0)
            + shape * (log_shape - log_total)
            + y * (eta - log_total)
        )

    def _check_support(self, values, trials, argument):
        _check_counts(self, values, argument)


# ----------------------------------------------------------------------------------------------------------
# Lookup
# ----------------------------------------------------------------------------------------------------------

#: The supported families by brms name.
FAMILIES: dict[str, Family] = {
    fam.name: fam
    for fam in (Gaussian(), Student(), Bernoulli(), Binomial(), Poisson(), NegBinomial(), Lognormal(), GammaFamily())
}
_BY_LOWER = {name.lower(): fam for name, fam in FAMILIES.items()}


def get_family(spec: str | Mapping[str, Any] | Family) -> Family:
    """Resolves a family from its brms name or a ``{"family": ..., "link": ...}`` dict.

    Args:
        spec: A family name (case-insensitive: ``"gaussian"``, ``"student"``, ``"bernoulli"``, ``"binomial"``,
            ``"poisson"``, ``"negbinomial"``, ``"lognormal"``, ``"Gamma"``), a dict with key ``"family"`` and
            optional ``"link"``, or a `Family` (returned as is).

    Returns:
        The family.

    Raises:
        SpecError: If the family is unknown (the message lists the supported ones), the dict has other keys,
            or the link is not the family's default link.

    Example:
        >>> get_family({"family": "poisson", "link": "log"}).stan_likelihood()
        'Y ~ poisson_log(mu);'
    """
    if isinstance(spec, Family):
        return spec
    link = None
    if isinstance(spec, Mapping):
        extra = sorted(set(spec) - {"family", "link"})
        if extra or "family" not in spec:
            raise SpecError(
                f"family dict must have key 'family' and optionally 'link', got keys {sorted(spec)}; "
                f"pass e.g. {{'family': 'poisson', 'link': 'log'}}."
            )
        link = spec.get("link")
        spec = spec["family"]
    if not isinstance(spec, str) or spec.lower() not in _BY_LOWER:
        raise SpecError(f"unknown family {spec!r}; supported families are {list(FAMILIES)}.")
    family = _BY_LOWER[spec.lower()]
    if link is not None and link != family.link:
        raise SpecError(
            f"family {family.name!r} supports only its default link {family.link!r} in mlnpe, got link {link!r}; "
            f"drop `link` or set it to {family.link!r}."
        )
    return family


def stan_likelihood(name: str | Mapping[str, Any] | Family) -> str:
    """The Stan sampling statement of a family's likelihood, e.g. ``"Y ~ bernoulli_logit(mu);"``.

    Args:
        name: Anything `get_family` accepts.

    Returns:
        The statement, with ``Y`` the response, ``mu`` the linear predictor and the family parameters by name.

    Raises:
        SpecError: If the family is unknown.
    """
    return get_family(name).stan_likelihood()
