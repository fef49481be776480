"""MCMC refinement of amortized draws: Hamiltonian Monte Carlo through the amortized posterior (neural transport).

The amortized posterior draws each group's local parameters as lambda_j = T(z_j; tau, omega, x_j), the shared
local flow applied to standard normal noise z_j given the globals (eq. 14). When the model's joint density
p(theta, x) is tractable, HMC can sample the exact posterior in the coordinates (u, z): u the unconstrained
globals, z every group's base noise. There the target is

    pi(u, z) ∝ p(theta(u, z), x) |d theta / d(u, lambda_u)| prod_j N(z_j; 0, I) / q(lambda_u,j | u, x_j),

which is the exact posterior carried through the local flow. When the local flow is close to the exact
conditional posterior of the group effects, the z_j are close to independent standard normals whatever the
globals: the flow takes over what makes hierarchical posteriors hard for HMC (the funnel between a
group-level sd and its group effects, different scales per group). This is neural transport HMC (Hoffman et al.
2019, "NeuTra-lizing bad geometry in Hamiltonian Monte Carlo using neural transport"), with the local flow as
the transport. The globals are few and close to Gaussian on the unconstrained scale; an affine map fitted to
the amortized draws (then to the chains) preconditions them, which keeps the global flow, whose inverse is
autoregressive over its dimensions, out of the loop. The draws follow the exact posterior however inaccurate
the amortizer is; its accuracy only sets how fast the chains mix. Importance sampling (PSIS) cannot correct a
posterior approximation whose k-hat exceeds 0.7, but the same approximation still straightens the geometry.

The sampler: many short chains, vectorized; starting points drawn without replacement from a pool of amortized
draws with probabilities proportional to their importance weights; a shared step size tuned by dual averaging
(Hoffman & Gelman 2014) to a target acceptance rate; a dense metric (a diagonal one above `_DENSE_MAX`
dimensions) estimated from the chains in two warm-up windows, regularized as Stan does; a jittered number of
leapfrog steps covering a fixed integration time. Diagnostics are Stan's: rank-normalized split R-hat and bulk
ESS per parameter (mlnpe.inference.convergence), divergent transitions and the mean acceptance rate. With many short chains
R-hat is noisier than with 4 long ones, so `problems()` flags R-hat above 1.05 rather than 1.01.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..checks import Bound, check_int, check_seed
from ..core.data import GroupedData, collate
from ..errors import ConfigError, DataError
from ..memory import check_memory
from .convergence import ess_bulk, rhat

__all__ = ["RefineConfig", "RefineResult", "RefineWarning", "refine"]

_DIVERGENCE = 1000.0  # energy error (nats) that Stan calls a divergent transition
_RHAT_MAX = 1.05  # many short chains: R-hat above this flags chains that have not mixed


class RefineWarning(UserWarning):
    """The HMC refinement's diagnostics (R-hat, ESS, divergences) object to its draws."""


# The range of every numeric field of RefineConfig (`mlnpe.checks.Bound`).
_RANGES: dict[str, Bound] = {
    "chains": Bound(int, 2),
    "warmup": Bound(int, 20),
    "target_accept": Bound(float, 0.5, 1, open_high=True),
    "trajectory": Bound(float, 0, open_low=True),
    "max_leapfrog": Bound(int, 1),
    "pool": Bound(int, 2),
}


@dataclass(frozen=True)
class RefineConfig:
    """Settings of the HMC refinement.

    Attributes:
        chains: parallel chains (vectorized).
        warmup: warm-up iterations per chain (step size and metric adaptation; discarded).
        target_accept: target mean acceptance probability of the step size adaptation.
        trajectory: integration time of one iteration in the preconditioned (unit-scale) coordinates; the number of
            leapfrog steps is about trajectory / step size, jittered.
        max_leapfrog: upper bound on leapfrog steps per iteration.
        pool: number of amortized draws the chains' starting points are chosen from.
        seed: seed (None: fresh randomness).
    """

    chains: int = 32
    warmup: int = 120
    target_accept: float = 0.8
    trajectory: float = 1.5
    max_leapfrog: int = 24
    pool: int = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        for name, bound in _RANGES.items():
            object.__setattr__(self, name, bound.check(getattr(self, name), name, "RefineConfig"))
        object.__setattr__(self, "seed", check_seed(self.seed, owner="RefineConfig"))
        if self.pool < self.chains:
            raise ConfigError(f"RefineConfig `pool` ({self.pool}) must be at least `chains` ({self.chains}).")


@dataclass
class RefineResult:
    """Refined draws and their diagnostics.

    Attributes:
        global_draws: (S, G) constrained, S = chains x draws per chain, chain-major.
        local_draws: (S, J, L) constrained.
        chains: number of chains.
        rhat: parameter label -> rank-normalized split R-hat.
        ess_bulk: parameter label -> bulk ESS.
        divergences: divergent transitions after warm-up.
        accept_rate: mean acceptance probability after warm-up.
        step_size: the adapted step size.
        leapfrog: mean leapfrog steps per iteration.
        pool_ess: importance-sampling ESS of the starting pool (how far q is from the posterior).
        seconds: wall time.
    """

    global_draws: np.ndarray
    local_draws: np.ndarray
    chains: int
    rhat: dict[str, float] = field(default_factory=dict)
    ess_bulk: dict[str, float] = field(default_factory=dict)
    divergences: int = 0
    accept_rate: float = float("nan")
    step_size: float = float("nan")
    leapfrog: float = float("nan")
    pool_ess: float = float("nan")
    seconds: float = 0.0

    @property
    def max_rhat(self) -> float:
        values = [v for v in self.rhat.values() if np.isfinite(v)]
        return max(values) if values else float("nan")

    @property
    def min_ess(self) -> float:
        values = [v for v in self.ess_bulk.values() if np.isfinite(v)]
        return min(values) if values else float("nan")

    def problems(self) -> list[str]:
        """What the diagnostics object to, in words (empty when the chains look converged)."""
        out = []
        if self.max_rhat > _RHAT_MAX:
            worst = max(self.rhat, key=lambda k: self.rhat[k] if np.isfinite(self.rhat[k]) else -1.0)
            out.append(f"R-hat up to {self.max_rhat:.3f} ({worst}; above {_RHAT_MAX}: the chains have not mixed)")
        if self.divergences > 0:
            out.append(f"{self.divergences} divergent transitions after warm-up")
        if self.min_ess < 100:
            out.append(f"bulk ESS as low as {self.min_ess:.0f} (below 100)")
        return out


class _Target:
    """The refinement's target density for one dataset and its gradient.

    The state is (w, z): standardized unconstrained globals u = m + C w (m, C from the amortized draws; global
    parameters are few and close to Gaussian on the unconstrained scale, so an affine map suffices and the
    global flow, whose inverse is autoregressive over G dimensions, stays out of the loop), and every group's
    base noise z_j of the local flow, so that lambda_j = T(z_j; u, x_j) follows the globals as the
    amortized posterior does (the funnel between group-level sds and group effects is the local flow's job).
    log pi(w, z) = log p(theta, x) + log|d theta / d(u, lambda_u)| + sum_j [log N(z_j) - log q(lambda_u,j | u, x_j)]
    + const, which is the exact posterior carried to (w, z).
    """

    def __init__(self, estimator: Any, model: Any, data: GroupedData):
        self.est = estimator.eval()
        self.model = model
        self.batch = collate([data])
        # The likelihood in float64 (a sum over every row, compared across leapfrog steps), over groups bucketed
        # by size (powers of 2): padding all groups to the largest one would multiply the work (radon: 919
        # rows padded to 85 x 116).
        sizes = np.asarray(data.n_rows)
        bucket = np.ceil(np.log2(np.maximum(sizes, 1))).astype(int)
        self.buckets = [
            (torch.as_tensor(idx), data.subset(idx.tolist()).to_batch(torch.float64))
            for idx in (np.flatnonzero(bucket == b) for b in np.unique(bucket))
        ]
        with torch.no_grad():
            self.h_local, self.h_global = self.est.summarize(self.batch)
        self.n_global = self.est.global_flow.features
        self.n_groups = int(self.batch.group_mask.shape[1])
        self.n_local = self.est.local_flow.features
        self.dim = self.n_global + self.n_groups * self.n_local
        self.loc = torch.zeros(self.n_global)
        self.chol = torch.eye(self.n_global)

    def set_affine(self, gu: Tensor) -> None:
        """The globals' affine map from draws of unconstrained globals (N, G): their mean and covariance."""
        gu = gu.detach().double()
        cov = torch.atleast_2d(torch.cov(gu.T)) + 1e-8 * torch.eye(self.n_global, dtype=torch.float64)
        self.loc = gu.mean(0).float()
        self.chol = torch.linalg.cholesky(cov).float()

    def state(self, gu: Tensor, zl: Tensor) -> Tensor:
        """(N, G) unconstrained globals and (N, J, L) local base noise -> (N, D) states."""
        w = torch.linalg.solve_triangular(self.chol, (gu - self.loc).T, upper=False).T
        return torch.cat([w, zl.reshape(zl.shape[0], -1)], -1)

    def params(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(N, D) states -> unconstrained globals (N, 1, G), unconstrained locals (N, 1, J, L) and
        log|det d lu_j / d z_j| (N, 1, J), the local flow's map from the base noise z_j."""
        n = x.shape[0]
        gu = (self.loc + x[:, : self.n_global] @ self.chol.T)[:, None]
        zl = x[:, self.n_global :].reshape(n, 1, self.n_groups, self.n_local)
        return gu, *self.est.local_from_noise(zl, self.h_local, gu, log_det=True)

    def constrained(self, x: Tensor) -> tuple[Tensor, Tensor]:
        gu, lu, _ = self.params(x)
        return self.est.global_bijector.forward(gu)[:, 0], self.est.local_bijector.forward(lu)[:, 0]

    def log_density(self, x: Tensor) -> Tensor:
        """(N, D) -> (N,) log pi in float64, up to a constant (-inf where the model's density is zero)."""
        gu, lu, log_det = self.params(x)
        mask = self.batch.group_mask
        g = self.est.global_bijector.forward(gu).double()
        l = self.est.local_bijector.forward(lu).double()
        log_p = (
            self.model.log_prior_global(g)
            + torch.where(mask, self.model.log_prior_local(l, g), 0.0).sum(-1)
        )
        for idx, batch in self.buckets:
            log_p = log_p + self.model.log_likelihood(batch, g, l[..., idx, :]).sum(-1)
        jacobian = self.est.global_bijector.log_abs_det_jacobian(gu).double() + torch.where(
            mask, self.est.local_bijector.log_abs_det_jacobian(lu), 0.0
        ).double().sum(-1)
        # log N(z_j) - log q(lu_j | u, x_j) = log|det d lu_j / d z_j|: the flow's Jacobian, from its inverse pass
        transport = torch.where(mask, log_det, 0.0).double().sum(-1)
        out = (log_p + jacobian + transport)[:, 0]
        return torch.where(torch.isnan(out), torch.full_like(out, -math.inf), out)

    def value_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().requires_grad_(True)
        lp = self.log_density(x)
        finite = torch.isfinite(lp)
        (grad,) = torch.autograd.grad(torch.where(finite, lp, 0.0).sum(), x)
        grad = torch.where(finite[:, None] & torch.isfinite(grad), grad, torch.zeros_like(grad))
        return lp.detach(), grad.detach()


class _DualAveraging:
    """Nesterov dual averaging of the log step size (Hoffman & Gelman 2014, Stan's constants)."""

    def __init__(self, step: float, target: float):
        self.mu = math.log(10.0 * step)
        self.target = target
        self.h_bar = 0.0
        self.log_bar = math.log(step)
        self.t = 0

    def update(self, accept: float) -> float:
        self.t += 1
        eta = 1.0 / (self.t + 10.0)
        self.h_bar = (1.0 - eta) * self.h_bar + eta * (self.target - accept)
        log_step = self.mu - math.sqrt(self.t) / 0.05 * self.h_bar
        weight = self.t ** -0.75
        self.log_bar = weight * log_step + (1.0 - weight) * self.log_bar
        return math.exp(log_step)

    @property
    def final(self) -> float:
        return math.exp(self.log_bar)


def _starts(target: _Target, config: RefineConfig, generator: torch.Generator) -> tuple[Tensor, float]:
    """Sets the globals' affine map from `pool` amortized draws and picks `chains` of them, without
    replacement, with probabilities proportional to their importance weights p(theta, x) / q(theta | x)."""
    est = target.est
    with torch.no_grad():
        gu = est.global_sample(config.pool, target.h_global, generator)  # (P, 1, G)
        zl = torch.randn(config.pool, 1, target.n_groups, target.n_local, generator=generator)
        target.set_affine(gu[:, 0])
        x = target.state(gu[:, 0], zl[:, 0])
        # q's density of (w, z) is q_global(u) |C| N(z): log w = log pi(x) - log q_global(u) - log N(z) + const
        lq_g = est.global_log_prob(gu, target.h_global)[:, 0].double()
        log_normal = -0.5 * (zl[:, 0].double() ** 2).sum((-1, -2))
        lw = torch.cat([target.log_density(part) for part in x.split(256)]) - lq_g - log_normal
    finite = torch.isfinite(lw)
    if int(finite.sum()) < config.chains:
        raise DataError(
            f"only {int(finite.sum())} of {config.pool} amortized draws have a positive exact density for this "
            f"dataset, fewer than the {config.chains} chains need: the amortizer is far from this posterior. "
            "Train longer or on data like these (focus=1), or raise `pool`."
        )
    weights = torch.exp(lw - lw[finite].max()).where(finite, torch.zeros_like(lw))
    ess = float(weights.sum() ** 2 / (weights * weights).sum())
    gumbel = -torch.log(-torch.log(torch.rand(config.pool, generator=generator, dtype=torch.float64)))
    keys = torch.where(finite, lw + gumbel, torch.full_like(lw, -math.inf))
    return x[keys.topk(config.chains).indices], ess


_DENSE_MAX = 600  # states of at most this dimension get a dense metric, larger ones a diagonal one


class _Metric:
    """The affine preconditioner x = loc + scale @ y (a dense or diagonal metric): HMC runs on y."""

    def __init__(self, dim: int):
        self.loc = torch.zeros(dim)
        self.scale = torch.eye(dim) if dim <= _DENSE_MAX else torch.ones(dim)

    def to_x(self, y: Tensor) -> Tensor:
        return self.loc + (y @ self.scale.T if self.scale.dim() == 2 else y * self.scale)

    def to_y(self, x: Tensor) -> Tensor:
        if self.scale.dim() == 1:
            return (x - self.loc) / self.scale
        return torch.linalg.solve_triangular(self.scale, (x - self.loc).T, upper=False).T

    def grad_y(self, grad_x: Tensor) -> Tensor:
        return grad_x @ self.scale if self.scale.dim() == 2 else grad_x * self.scale

    def fit(self, xs: Tensor) -> None:
        """Stan's regularized metric from states (N, D): the covariance shrunk towards 1e-3 I."""
        n, d = xs.shape
        xs = xs.double()
        self.loc = xs.mean(0).float()
        shrink = 1e-3 * 5.0 / (n + 5.0)
        if self.scale.dim() == 2 and n > d:
            cov = (n / (n + 5.0)) * torch.cov(xs.T) + shrink * torch.eye(d, dtype=torch.float64)
            self.scale = torch.linalg.cholesky(cov).float()
        else:
            self.scale = ((n / (n + 5.0)) * xs.var(0) + shrink).sqrt().float()
            self.scale = torch.diag(self.scale) if d <= _DENSE_MAX else self.scale


def _hmc(target: _Target, x: Tensor, config: RefineConfig, draws: int, generator: torch.Generator) -> dict[str, Any]:
    """Vectorized HMC over chains with a shared step size.

    Warm-up (Stan's schedule, shortened): the step size alone for the first 15 %; then two windows (to 45 % and
    85 %) whose chain states each set the metric (dense up to `_DENSE_MAX` dimensions), the step size adapting
    afresh after each; the last 15 % tune the step size for the final metric.
    """
    c, d = x.shape
    metric = _Metric(d)

    def f(y: Tensor) -> tuple[Tensor, Tensor]:
        lp, grad = target.value_and_grad(metric.to_x(y))
        return lp, metric.grad_y(grad)

    y = metric.to_y(x)
    lp, grad = f(y)
    step = 0.5 / d ** 0.25
    adapt = _DualAveraging(step, config.target_accept)
    ends = (int(0.45 * config.warmup), int(0.85 * config.warmup))
    starts = (int(0.15 * config.warmup), ends[0])
    window: list[Tensor] = []
    kept = torch.empty(draws, c, d)
    accepts, divergent, leapfrogs = [], 0, []
    for it in range(config.warmup + draws):
        eps = step * (0.9 + 0.2 * torch.rand((), generator=generator).item())
        n_steps = int(min(config.max_leapfrog, max(1, math.ceil(config.trajectory / eps))))
        p = torch.randn(c, d, generator=generator)
        h0 = -lp + 0.5 * (p * p).sum(-1).double()
        y_new, p_new = y, p + 0.5 * eps * grad
        for i in range(n_steps):
            y_new = y_new + eps * p_new
            lp_new, grad_new = f(y_new)
            p_new = p_new + (eps if i < n_steps - 1 else 0.5 * eps) * grad_new
        h1 = -lp_new + 0.5 * (p_new * p_new).sum(-1).double()
        delta = (h0 - h1).nan_to_num(nan=-math.inf)
        accept_prob = torch.exp(delta.clamp(max=0.0))
        take = torch.rand(c, generator=generator, dtype=torch.float64) < accept_prob
        y = torch.where(take[:, None], y_new, y)
        lp = torch.where(take, lp_new, lp)
        grad = torch.where(take[:, None], grad_new, grad)
        if it < config.warmup:
            step = adapt.update(float(accept_prob.mean()))
            if any(a <= it < b for a, b in zip(starts, ends)):
                window.append(metric.to_x(y))
            if it + 1 in ends and window:
                x_now = metric.to_x(y)
                metric.fit(torch.stack(window).reshape(-1, d))
                window = []
                y = metric.to_y(x_now)
                lp, grad = f(y)
                adapt = _DualAveraging(adapt.final, config.target_accept)
            if it == config.warmup - 1:
                step = adapt.final
            continue
        kept[it - config.warmup] = metric.to_x(y)
        accepts.append(float(accept_prob.mean()))
        divergent += int((-delta > _DIVERGENCE).sum())
        leapfrogs.append(n_steps)
    return {
        "z": kept.permute(1, 0, 2),  # (chains, draws, D)
        "accept_rate": float(np.mean(accepts)),
        "divergences": divergent,
        "step_size": step,
        "leapfrog": float(np.mean(leapfrogs)),
    }


def refine(
    estimator: Any,
    model: Any,
    data: GroupedData,
    n_draws: int = 4000,
    config: RefineConfig | None = None,
    labels: tuple[list[str], list[str]] | None = None,
) -> RefineResult:
    """Exact-posterior draws by HMC in the amortized posterior's base space (see the module docstring).

    Arguments:
        estimator: a trained MultilevelEstimator (MultilevelNPE.estimator).
        model: the TwoLevelModel with the exact densities (log_prior_global, log_prior_local, log_likelihood).
        data: one observed dataset.
        n_draws: total draws kept (rounded up to a multiple of `config.chains`).
        config: RefineConfig.
        labels: (global labels, local labels) for the diagnostics; locals are named `label[level]`.
    Returns:
        RefineResult.
    """
    config = config or RefineConfig()
    if not isinstance(config, RefineConfig):
        raise ConfigError(f"`config` must be a RefineConfig or None, got {type(config).__name__}.")
    if not isinstance(data, GroupedData):
        raise DataError(f"`data` must be a GroupedData, got {type(data).__name__}.")
    n_draws = check_int(n_draws, "n_draws")
    t0 = time.perf_counter()
    generator = torch.Generator()
    generator.manual_seed(config.seed) if config.seed is not None else generator.seed()
    target = _Target(estimator, model, data)
    # the kept states (float32), their constrained copies (float64) and the pool of starting points
    check_memory(
        24.0 * target.dim, n_draws, f"`n_draws`={n_draws} refined draws of {target.dim} parameters",
        "Ask for at most {most} draws.", fixed=16.0 * config.pool * target.dim,
    )
    z0, pool_ess = _starts(target, config, generator)
    per_chain = max(4, math.ceil(int(n_draws) / config.chains))
    out = _hmc(target, z0, config, per_chain, generator)
    with torch.no_grad():
        g, l = target.constrained(out["z"].reshape(-1, target.dim))
    g, l = g.double().numpy(), l.double().numpy()
    c = config.chains
    g_names, l_names = labels or ([f"global[{i}]" for i in range(g.shape[1])], [f"local[{i}]" for i in range(l.shape[2])])
    chains_g = g.reshape(c, per_chain, -1)
    chains_l = l.reshape(c, per_chain, l.shape[1], l.shape[2])
    r_hat, ess = {}, {}
    for i, name in enumerate(g_names):
        r_hat[name], ess[name] = rhat(chains_g[..., i]), ess_bulk(chains_g[..., i])
    for j, level in enumerate(data.levels):
        for k, name in enumerate(l_names):
            key = f"{name}[{level}]"
            r_hat[key], ess[key] = rhat(chains_l[:, :, j, k]), ess_bulk(chains_l[:, :, j, k])
    return RefineResult(
        global_draws=g, local_draws=l, chains=c, rhat=r_hat, ess_bulk=ess, divergences=out["divergences"],
        accept_rate=out["accept_rate"], step_size=out["step_size"], leapfrog=out["leapfrog"], pool_ess=pool_ess,
        seconds=time.perf_counter() - t0,
    )
