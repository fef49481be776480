"""The Wiener diffusion of the decision model: exact first-passage sampler, exact density, analytic moments.

Parameterization (the same as Stan's ``wiener_lpdf``): evidence starts at ``w * a`` between a LOWER boundary
at 0 and an UPPER boundary at ``a``, with drift ``v`` (towards the upper boundary), unit diffusion coefficient
and non-decision time ``t0``; a trial is ``(rt, response)`` with response 1 for the upper boundary.

:func:`sample_wiener` draws trials exactly ("walk on intervals"); :func:`wiener_log_density` is the exact
first-passage-time log density (Navarro & Fuss 2009 series); :func:`upper_probability` and
:func:`mean_decision_time` are the closed-form choice probability and mean decision time. The hierarchical
models of :mod:`mlnpe.case_studies.ddm` simulate and evaluate trials with them.

Example:
    >>> import torch
    >>> rt, response = sample_wiener(0.5, 1.0, 0.5, 0.3, torch.Generator().manual_seed(0))
    >>> bool(rt > 0.3)
    True
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
from torch import Tensor

from ..errors import SpecError

__all__ = ["sample_wiener", "wiener_log_density", "upper_probability", "mean_decision_time"]

_LOG_2PI = math.log(2 * math.pi)
_PI = math.pi


# ----------------------------------------------------------------------------------------------------------
# Analytic moments


def upper_probability(v: Tensor, a: Tensor, w: Tensor) -> Tensor:
    """P(response = upper) for drift v, boundary separation a and relative start w (unit diffusion)."""
    v, a, w = (torch.as_tensor(t, dtype=torch.float64) for t in (v, a, w))
    small = v.abs() * a < 1e-8
    vs = torch.where(small, torch.ones_like(v), v)
    p = torch.expm1(-2 * vs * a * w) / torch.expm1(-2 * vs * a)
    return torch.where(small, w.expand_as(p), p)


def mean_decision_time(v: Tensor, a: Tensor, w: Tensor) -> Tensor:
    """E[decision time] over both responses: (a P(upper) - a w) / v, and a^2 w (1 - w) at v = 0."""
    v, a, w = (torch.as_tensor(t, dtype=torch.float64) for t in (v, a, w))
    small = v.abs() * a < 1e-6
    vs = torch.where(small, torch.ones_like(v), v)
    m = (a * upper_probability(vs, a, w) - a * w) / vs
    return torch.where(small, (a * a * w * (1 - w)).expand_as(m), m)


# ----------------------------------------------------------------------------------------------------------
# Exact first-passage sampler


@lru_cache(maxsize=1)
def _exit_time_table(n: int = 8193, tail: float = 1e-3) -> tuple[Tensor, float]:
    """Inverse CDF of the exit time of a driftless unit Brownian motion from (-1, 1) started at 0.

    Returns log(tau) at n equally spaced probabilities on [0, 1 - tail]; beyond, the first large-time term
    S(tau) = (4 / pi) exp(-pi^2 tau / 8) is exact to about exp(-pi^2 tau) relative error.
    """
    tau = np.exp(np.linspace(np.log(0.01), np.log(12.0), 40000))
    k = np.arange(12)[:, None]
    from scipy.special import erfc

    small = 2 * np.sum((-1.0) ** k * erfc((2 * k + 1) / np.sqrt(2 * tau)), axis=0)
    large = 1 - 4 / _PI * np.sum((-1.0) ** k / (2 * k + 1) * np.exp(-((2 * k + 1) ** 2) * _PI**2 * tau / 8), axis=0)
    cdf = np.maximum.accumulate(np.where(tau < 1.0, small, large))
    u = np.linspace(0.0, 1.0 - tail, n)
    log_tau = np.interp(u, cdf, np.log(tau))
    return torch.as_tensor(log_tau, dtype=torch.float64), 1.0 - tail


def _driftless_exit_times(u: Tensor) -> Tensor:
    """Exit times from (-1, 1) for uniform draws u (float64) by the tabulated inverse CDF."""
    table, top = _exit_time_table()
    n = table.shape[0]
    pos = (u / top * (n - 1)).clamp(max=n - 1 - 1e-9)
    i = pos.floor().long()
    frac = pos - i
    inside = torch.exp(table[i] * (1 - frac) + table[(i + 1).clamp(max=n - 1)] * frac)
    beyond = 8 / _PI**2 * torch.log(4 / (_PI * (1 - u).clamp_min(1e-300)))
    return torch.where(u < top, inside, beyond)


def _exit_times(v: Tensor, r: Tensor, generator: torch.Generator) -> Tensor:
    """Exit times from (x - r, x + r) with drift v, by rejection from the driftless ones.

    With drift the density is cosh(v r) exp(-v^2 t / 2) f_0(t), so a driftless time t is accepted with
    probability exp(-v^2 t / 2) (overall rate 1 / cosh(v r), at least 0.65 as |v| r <= 1 here).
    """
    def draw(vp: Tensor, rp: Tensor) -> tuple[Tensor, Tensor]:
        t = rp * rp * _driftless_exit_times(torch.rand(rp.shape, generator=generator, dtype=torch.float64))
        return t, torch.rand(rp.shape, generator=generator, dtype=torch.float64) < torch.exp(-0.5 * vp * vp * t)

    out, accept = draw(v, r)  # the first pass needs no indexing
    pending = (~accept).nonzero().squeeze(-1)
    while pending.numel():
        t, accept = draw(v[pending], r[pending])
        out[pending[accept]] = t[accept]
        pending = pending[~accept]
    return out


def sample_wiener(
    v: Tensor, a: Tensor, w: Tensor, t0: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Exact draws of (rt, response) of the Wiener diffusion, vectorized over trials.

    The path moves by exits from symmetric intervals around its position ("walk on intervals"): the exit
    side and the exit time of a symmetric interval are independent, the side is +r with probability
    sigmoid(2 v r) and the time comes from the tabulated driftless law by rejection. The radius is the distance
    to the nearer boundary (capped at 1 / |v|), so every step ends at a boundary with probability of order one
    and a few vectorized steps finish all trials. Exact up to the interpolation of the inverse-CDF table.

    Arguments:
        v, a, w, t0: drift, boundary separation, relative start (from the lower boundary) and non-decision
            time, broadcastable to one shape (trials,) or any shape.
        generator: the source of randomness.

    Returns:
        rt (float64, seconds) and response (float64, 1 = upper, 0 = lower), of the broadcast shape.
    """
    v, a, w, t0 = torch.broadcast_tensors(*(torch.as_tensor(t, dtype=torch.float64) for t in (v, a, w, t0)))
    shape = v.shape
    v, a, w, t0 = (t.reshape(-1) for t in (v, a, w, t0))
    if not ((a > 0).all() and (w > 0).all() and (w < 1).all()):
        raise SpecError("sample_wiener needs a > 0 and 0 < w < 1 for every trial.")
    x = w * a
    t = torch.zeros_like(x)
    response = torch.zeros_like(x)
    idx = torch.arange(x.shape[0])
    while idx.numel():
        xa, aa, va = x[idx], a[idx], v[idx]
        r = torch.minimum(torch.minimum(xa, aa - xa), 1.0 / va.abs().clamp_min(1e-12))
        t[idx] += _exit_times(va, r, generator)
        up = torch.rand(idx.shape, generator=generator, dtype=torch.float64) < torch.sigmoid(2 * va * r)
        hit_upper = up & (aa - xa <= r)
        hit_lower = ~up & (xa <= r)
        x[idx] = torch.where(up, xa + r, xa - r)
        done = hit_upper | hit_lower
        response[idx[hit_upper]] = 1.0
        idx = idx[~done]
    return (t + t0).reshape(shape), response.reshape(shape)


# ----------------------------------------------------------------------------------------------------------
# Exact first-passage-time density


def _log_fpt_lower_standard(u: Tensor, w: Tensor) -> Tensor:
    """log f(u | v=0, a=1, w) at the lower boundary (Navarro & Fuss 2009), u > 0; float64, same shapes.

    Small times (u < 1): (2 pi u^3)^(-1/2) sum_k (w + 2k) exp(-(w + 2k)^2 / (2u)), k = -4..4; large times:
    pi sum_k k exp(-k^2 pi^2 u / 2) sin(k pi w), k = 1..6. Both truncations err below 1e-15 relative in their
    ranges; the dominant term is factored out so the logs are accurate far into the tails.
    """
    out = torch.empty_like(u)
    small = u < 1.0
    if small.any():
        us, ws = u[small][..., None], w[small][..., None]
        c = ws + 2 * torch.arange(-4, 5, dtype=u.dtype)
        inner = (c * torch.exp(-(c * c - ws * ws) / (2 * us))).sum(-1).clamp_min(1e-300)
        us, ws = us[..., 0], ws[..., 0]
        out[small] = -0.5 * (_LOG_2PI + 3 * torch.log(us)) - ws * ws / (2 * us) + torch.log(inner)
    large = ~small
    if large.any():
        ul, wl = u[large][..., None], w[large][..., None]
        k = torch.arange(1, 7, dtype=u.dtype)
        inner = (k * torch.exp(-(k * k - 1) * _PI**2 * ul / 2) * torch.sin(k * _PI * wl)).sum(-1).clamp_min(1e-300)
        out[large] = math.log(_PI) - _PI**2 * ul[..., 0] / 2 + torch.log(inner)
    return out


def wiener_log_density(rt: Tensor, response: Tensor, v: Tensor, a: Tensor, w: Tensor, t0: Tensor) -> Tensor:
    """Exact log density of (rt, response) under the Wiener diffusion (Stan's ``wiener_lpdf`` for response 1,
    ``wiener_lpdf(rt | a, t0, 1 - w, -v)`` for response 0).

    Arguments:
        rt: reaction times in seconds; response: 1 (upper) or 0 (lower); v, a, w, t0 as in
            :func:`sample_wiener`. All broadcastable to one shape.

    Returns:
        float64 log densities of the broadcast shape; -inf where rt <= t0 (the density is zero there).
    """
    rt, response, v, a, w, t0 = torch.broadcast_tensors(
        *(torch.as_tensor(x, dtype=torch.float64) for x in (rt, response, v, a, w, t0))
    )
    upper = response > 0.5
    v = torch.where(upper, -v, v)  # the upper boundary is the lower one of the mirrored process
    w = torch.where(upper, 1 - w, w)
    t = rt - t0
    ok = t > 0
    tt = torch.where(ok, t, torch.ones_like(t))
    u = tt / (a * a)
    log_f = -2 * torch.log(a) - v * a * w - 0.5 * v * v * tt + _log_fpt_lower_standard(u.reshape(-1), w.reshape(-1)).reshape(u.shape)
    return torch.where(ok, log_f, torch.full_like(log_f, -math.inf))

