"""The regression shift of the flows (`ShiftConfig`): linear predictions of the parameters from fixed statistics
of the data, fitted once to the pilot simulations, that the flows then model the residuals of.

The regression adjustment of approximate Bayesian computation (Beaumont et al. 2002) and its heteroscedastic
version (Blum and Francois 2010), with ridge regressions checked on held-out pilot datasets. `GlobalShift` and
`LocalShift` hold the fitted coefficients as buffers; the functions fit them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core.constraints import Bijector, Positive
from .config import SHIFT_MAX_SPREAD, ShiftConfig
from .statistics import masked_moments

__all__ = [
    "GlobalShift",
    "LocalShift",
    "ridge_fit",
    "ridge_penalty",
    "held_out_check",
    "predict_mean_where",
    "heteroscedastic_fit",
    "residual_spread",
    "positive_columns",
    "log_view",
    "fit_regressors",
    "fitted_range",
    "LOG_CHI2_BIAS",
    "VARIANCE_PENALTIES",
]

# E log(z^2) for z ~ N(0, 1): the log of a squared residual underestimates its log variance by this much
LOG_CHI2_BIAS = -1.2703628454614782
# ridge penalties of `heteroscedastic_fit`'s variance regression, per pilot row; inf: a constant variance
VARIANCE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, math.inf)


def ridge_fit(
    x: Tensor, y: Tensor, loc: Tensor, scale: Tensor, ridge: float = 1.0, max_spread: float = SHIFT_MAX_SPREAD
) -> tuple[Tensor, Tensor]:
    """Ridge regression of targets y (P, K) on a design x (P, 1 + F) whose column 0 is the (unpenalized)
    intercept. Returns the coefficients (1 + F, K) and each target's residual sd on held-out rows (fitted on the
    first half, measured on the second). A target the design predicts poorly (held-out residual variance above
    0.9 of its variance `scale`^2) or unevenly (held-out residual spreads of the lowest and the highest third of the
    predictions more than `max_spread` apart) gets coefficients that predict its mean `loc` and keeps
    `scale`."""
    penalty = ridge_penalty(x, ridge)
    held_out, useful = held_out_check(x, y, scale, penalty, max_spread)
    coef = predict_mean_where(torch.linalg.solve(x.T @ x + penalty, x.T @ y), ~useful, loc)
    return coef, torch.where(useful, held_out.to(scale.dtype), scale).clamp_min(1e-6)


def ridge_penalty(x: Tensor, ridge: float) -> Tensor:
    """The ridge penalty matrix of a design x (P, 1 + F) whose column 0, the intercept, is not penalized."""
    penalty = ridge * torch.eye(x.shape[1], dtype=x.dtype)
    penalty[0, 0] = 0.0
    return penalty


def held_out_check(x: Tensor, y: Tensor, scale: Tensor, penalty: Tensor, max_spread: float) -> tuple[Tensor, Tensor]:
    """The plain ridge fit on the first half of the rows, measured on the second: each target's held-out residual
    sd (K,), and whether a shift may use the design (K,): it predicts the target well (held-out residual variance
    under 0.9 of `scale`^2) and evenly (residual spreads of the lowest and highest third of the predictions at most
    `max_spread` apart)."""
    half = len(x) // 2
    coef_half = torch.linalg.solve(x[:half].T @ x[:half] + penalty, x[:half].T @ y[:half])
    predicted = x[half:] @ coef_half
    residual = y[half:] - predicted
    held_out = residual.std(0)
    useful = (held_out**2 < 0.9 * scale.double() ** 2) & (residual_spread(predicted, residual) <= max_spread)
    return held_out, useful


def predict_mean_where(coef: Tensor, columns: Tensor, loc: Tensor) -> Tensor:
    """Regression coefficients (1 + F, K) with the targets in `columns` (K,) predicted by their mean `loc` alone."""
    coef[:, columns] = 0.0
    coef[0, columns] = loc.double()[columns]
    return coef


def heteroscedastic_fit(
    x: Tensor, y: Tensor, loc: Tensor, scale: Tensor, ridge: float = 1.0, rounds: int = 2,
    max_spread: float = SHIFT_MAX_SPREAD,
) -> tuple[Tensor, Tensor, Tensor]:
    """Regression adjustment with a residual scale of its own per dataset (Blum and Francois's non-linear
    adjustment for ABC, with linear models): targets y (P, K) on a design x (P, 1 + F) whose column 0 is the
    intercept. The location is fitted by weighted ridge regression, the log residual variance by a ridge
    regression of log r^2 (plus the bias of a log chi-square), alternately, weighting each pilot dataset by the
    inverse of its predicted variance. A log r^2 is a noisy target (its variance is 4.9), so the variance
    regression's penalty is chosen per target among `VARIANCE_PENALTIES` times the number of rows, or a constant
    variance, by the Gaussian log-likelihood of held-out rows (fitted on the first half, measured on the second):
    a target whose residual scale the statistics do not predict keeps the plain homoscedastic fit. A target that
    the unweighted fit predicts poorly or unevenly (as in `ridge_fit`: held-out R^2 under 0.1, or residual
    spreads more than `max_spread` apart) keeps its mean `loc` and `scale` and a constant variance.

    Returns the location coefficients (1 + F, K), the log-variance coefficients (1 + F, K) relative to the
    returned scale, and that scale (K,): a dataset's residual sd is scale * exp(x @ log_var / 2). The scale is
    calibrated on the held-out rows so that the standardized held-out residuals have unit root mean square."""
    penalty = ridge_penalty(x, ridge)

    def fit(rows: slice, strength: float) -> tuple[Tensor, Tensor]:
        xs, ys = x[rows], y[rows]
        coef = torch.linalg.solve(xs.T @ xs + penalty, xs.T @ ys)
        log_var = torch.zeros_like(coef)
        for _ in range(rounds):
            r = ys - xs @ coef
            target = torch.log(r**2 + 1e-12 * ys.var(0)) - LOG_CHI2_BIAS
            if math.isinf(strength):  # a constant variance: the plain fit
                log_var[0] = target.mean(0)
                break
            shrink = ridge_penalty(x, strength * len(xs))
            log_var = torch.linalg.solve(xs.T @ xs + shrink, xs.T @ target)  # (1 + F, K)
            w = torch.exp(-(xs @ log_var).clamp(-30.0, 30.0))  # (P, K)
            w = w / w.mean(0)
            coef = torch.stack([
                torch.linalg.solve((xs * w[:, k, None]).T @ xs + penalty, (xs * w[:, k, None]).T @ ys[:, k])
                for k in range(ys.shape[1])
            ], -1)  # fmt: skip
        return coef, log_var

    half = len(x) // 2
    useful = held_out_check(x, y, scale, penalty, max_spread)[1]
    held_out = []  # per penalty: (calibration (K,), held-out negative log-likelihood (K,))
    for strength in VARIANCE_PENALTIES:
        coef_half, log_var_half = fit(slice(0, half), strength)
        log_v = x[half:] @ log_var_half
        z2 = (y[half:] - x[half:] @ coef_half) ** 2 * torch.exp(-log_v)
        calibration = z2.mean(0)
        held_out.append((calibration, 0.5 * (log_v.mean(0) + torch.log(calibration) + 1.0)))
    best = torch.stack([nll for _, nll in held_out]).argmin(0)  # (K,)
    coef, log_var = (x.new_zeros(x.shape[1], y.shape[1]) for _ in range(2))
    for i, strength in enumerate(VARIANCE_PENALTIES):
        chosen = best == i
        if chosen.any():
            c, v = fit(slice(None), strength)
            coef[:, chosen], log_var[:, chosen] = c[:, chosen], v[:, chosen]
            log_var[0, chosen] += torch.log(held_out[i][0][chosen])
    scale_out = torch.exp(0.5 * log_var[0])
    log_var[0] = 0.0
    coef = predict_mean_where(coef, ~useful, loc)
    log_var[:, ~useful] = 0.0
    scale_out = torch.where(useful, scale_out.to(scale.dtype), scale).clamp_min(1e-6)
    return coef, log_var, scale_out


def residual_spread(predicted: Tensor, residual: Tensor) -> Tensor:
    """(K,) ratio (>= 1) of the residuals' spreads among the lowest and the highest third of the predictions (P, K);
    the spread is the median absolute residual, which a few extreme pilot datasets do not move."""
    order = predicted.argsort(0)
    third = max(len(order) // 3, 2)
    low = residual.gather(0, order[:third]).abs().median(0).values
    high = residual.gather(0, order[-third:]).abs().median(0).values
    return torch.maximum(low, high) / torch.minimum(low, high).clamp_min(1e-12)


def positive_columns(bijector: Bijector) -> Tensor:
    """(G,) bool: the unconstrained columns of a bijector's positive (softplus) scalars."""
    return torch.tensor(
        [isinstance(s, Positive) for s in bijector.supports for _ in range(s.unconstrained_dim())], dtype=torch.bool
    )


def log_view(gu: Tensor, columns: Tensor) -> Tensor:
    """Unconstrained globals (..., G) with the positive `columns` replaced by log(softplus(u)) = log theta."""
    log_theta = torch.nn.functional.softplus(gu).clamp_min(torch.finfo(gu.dtype).tiny).log()
    return torch.where(columns.to(gu.device), log_theta, gu)


def fit_regressors(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, sd (floored at 1e-6) and the (F, 2) range of the standardized values (P, F), for a shift's regressors."""
    loc, scale = values.mean(0), values.std(0).clamp_min(1e-6)
    z = (values - loc) / scale
    return loc, scale, torch.stack([z.amin(0), z.amax(0)], -1)


def fitted_range(design: Tensor, coef: Tensor) -> Tensor:
    """(K, 2) range of a regression's fitted values over its design rows."""
    fitted = design @ coef
    return torch.stack([fitted.amin(0), fitted.amax(0)], -1)


class GlobalShift(nn.Module):
    """The global flow's shift: a ridge regression of the unconstrained globals on F statistics of the dataset.

    The statistics are clipped to the range of the pilot's and the prediction to the range of the pilot's
    predictions, so data unlike the simulations (a misspecified model) cannot throw the shift out by linear
    extrapolation. With `log_scale`, positive parameters are regressed on the log scale and the flow's unit
    follows each dataset's predicted size; with `heteroscedastic`, each dataset's residual sd is predicted too.

    Arguments:
        n_stats: F, the regressors per dataset.
        bijector: the globals' bijector (G unconstrained columns).
        config: the shift's settings.
    """

    def __init__(self, n_stats: int, bijector: Bijector, config: ShiftConfig):
        super().__init__()
        g = bijector.unconstrained_dim()
        self.config, self.log_scale, self.heteroscedastic = config, config.log_scale, config.heteroscedastic
        # fixed by `fit`; the defaults give a zero shift
        self.register_buffer("stat_loc", torch.zeros(n_stats))
        self.register_buffer("stat_scale", torch.ones(n_stats))
        self.register_buffer("stat_range", torch.tensor([-10.0, 10.0]).repeat(n_stats, 1))  # (F, 2) of the pilot
        self.register_buffer("coef", torch.zeros(n_stats + 1, g))
        self.register_buffer("coef_range", torch.tensor([-1e6, 1e6]).repeat(g, 1))
        self.register_buffer("prior_loc", torch.zeros(g))  # the prior's moments, for the local flow's context
        self.register_buffer("prior_scale", torch.ones(g))
        if self.log_scale:
            self.register_buffer("log_columns", positive_columns(bijector))
            self.register_buffer("sd", torch.ones(g))
        if self.heteroscedastic:  # the regression of each shifted parameter's log residual variance
            self.register_buffer("scale_coef", torch.zeros(n_stats + 1, g))
            self.register_buffer("scale_range", torch.zeros(g, 2))

    @property
    def width(self) -> int:
        """Columns that `forward` appends to h_global: the shift, and with `log_scale` its log scales."""
        return self.coef.shape[1] * (2 if self.log_scale else 1)

    def fit(self, stats: Tensor, gu: Tensor, loc: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        """Fits the regression to the pilot's statistics (P, F) and unconstrained globals gu (P, G), whose robust
        moments are `loc` and `scale` (G,), and returns the global flow's standardization (loc, scale)."""
        self.prior_loc.copy_(loc)
        self.prior_scale.copy_(scale.clamp_min(1e-6))
        target = gu
        if self.log_scale:  # positive parameters on the log scale, with that scale's prior moments
            target = log_view(gu, self.log_columns)
            loc, scale = masked_moments(target, torch.ones(gu.shape[0], dtype=torch.bool))
        scale = self._fit(stats, target, loc, scale)
        loc = torch.zeros_like(loc)
        if self.log_scale:  # the width travels with the shift (`forward`); the flow's own map is the identity
            self.sd.copy_(scale)
            scale = torch.ones_like(scale)
        return loc, scale

    def _fit(self, stats: Tensor, gu: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """The regression of gu (P, G) on stats (P, F); returns the residual scale (see `ridge_fit`)."""
        stats, gu = stats.double(), gu.double()
        ok = torch.isfinite(stats).all(1) & torch.isfinite(gu).all(1)
        stats, gu = stats[ok], gu[ok]
        for buffer, value in zip(("loc", "scale", "range"), fit_regressors(stats)):
            getattr(self, f"stat_{buffer}").copy_(value)
        design = self.design(stats)
        if self.heteroscedastic:
            coef, log_var, flow_scale = heteroscedastic_fit(design, gu, loc, scale, max_spread=self.config.spread_limit)
            self.scale_coef.copy_(log_var)
            self.scale_range.copy_(fitted_range(design, log_var))
        else:
            coef, flow_scale = ridge_fit(design, gu, loc, scale, max_spread=self.config.spread_limit)
        self.coef.copy_(coef)
        self.coef_range.copy_(fitted_range(design, coef))
        return flow_scale

    def design(self, stats: Tensor) -> Tensor:
        """(B, F) statistics -> (B, 1 + F) standardized regressors, clipped to the pilot's range."""
        z = ((stats - self.stat_loc.to(stats.dtype)) / self.stat_scale.to(stats.dtype)).nan_to_num(0.0)
        bounds = self.stat_range.to(stats.dtype)
        return torch.cat([torch.ones_like(z[:, :1]), torch.clamp(z, bounds[:, 0], bounds[:, 1])], 1)

    def forward(self, stats: Tensor) -> Tensor:
        """(B, F) statistics -> (B, G) shift, and with `log_scale` also (B, G) log scales beside it (float64).

        A positive parameter's prediction m of log theta, with held-out residual sd s, becomes the shift
        softplus^-1(e^m) and the scale s * d u / d log theta = s * theta / (1 - e^-theta) at theta = e^m."""
        design = self.design(stats.double())
        bounds = self.coef_range.double()
        shift = torch.clamp(design @ self.coef.double(), bounds[:, 0], bounds[:, 1])
        if not self.log_scale:
            return shift
        columns = self.log_columns
        theta = shift.exp()
        gap = torch.log(-torch.expm1(-theta))  # softplus^-1(theta) = theta + gap (`Positive.inverse`)
        sd = self.sd.double().log()
        if self.heteroscedastic:  # the dataset's own residual sd, relative to `sd`
            bounds = self.scale_range.double()
            sd = sd + 0.5 * torch.clamp(design @ self.scale_coef.double(), bounds[:, 0], bounds[:, 1])
        return torch.cat([torch.where(columns, theta + gap, shift), torch.where(columns, sd + shift - gap, sd)], -1)


class LocalShift(nn.Module):
    """The local flow's shift: a ridge regression of each group's unconstrained locals on the k fixed features of
    its local summary, the G standardized globals and their products (the products let the prediction weigh a
    group's own estimate against the hyper-mean by the group-level sd, as shrinkage does).

    Arguments:
        k: fixed features per group; g: global scalars G; l: local scalars L.
    """

    def __init__(self, k: int, g: int, l: int):
        super().__init__()
        self.register_buffer("stat_loc", torch.zeros(k))
        self.register_buffer("stat_scale", torch.ones(k))
        self.register_buffer("stat_range", torch.tensor([-10.0, 10.0]).repeat(k, 1))
        self.register_buffer("coef", torch.zeros(1 + k + g + k * g, l))
        self.register_buffer("coef_range", torch.tensor([-1e6, 1e6]).repeat(l, 1))

    def fit(
        self, features: Tensor, g: Tensor, lu: Tensor, loc: Tensor, scale: Tensor, max_spread: float
    ) -> tuple[Tensor, Tensor]:
        """Fits the regression to the pilot's real groups: fixed features (P, k), standardized globals (P, G),
        unconstrained locals lu (P, L) with robust moments `loc`, `scale`; returns the local flow's standardization."""
        for buffer, value in zip(("loc", "scale", "range"), fit_regressors(features.double())):
            getattr(self, f"stat_{buffer}").copy_(value)
        design = self.design(features, g).double()
        coef, scale = ridge_fit(design, lu.double(), loc, scale, max_spread=max_spread)
        self.coef.copy_(coef)
        self.coef_range.copy_(fitted_range(design, coef))
        return torch.zeros_like(loc), scale

    def regressors(self, features: Tensor) -> Tensor:
        """(..., k) fixed features -> the same standardized and clipped to the pilot's range."""
        z = ((features - self.stat_loc.to(features.dtype)) / self.stat_scale.to(features.dtype)).nan_to_num(0.0)
        bounds = self.stat_range.to(z.dtype)
        return torch.clamp(z, bounds[:, 0], bounds[:, 1])

    def design(self, features: Tensor, g: Tensor) -> Tensor:
        """(..., k) fixed features and (..., G) standardized globals -> (..., 1 + k + G + k G) regressors."""
        z = self.regressors(features).to(g.dtype)
        products = (z[..., :, None] * g[..., None, :]).flatten(-2)
        return torch.cat([torch.ones_like(g[..., :1]), z, g, products], -1)

    def forward(self, features: Tensor, g: Tensor) -> Tensor:
        """The shift (..., B, J, L) from the fixed features (B, J, k) and the standardized globals (..., B, 1, G)."""
        # design @ coef = (c0 + z Cz) + g (Cg + z Cgz): the group's terms once per group, not once per draw
        z = self.regressors(features).to(g.dtype)  # (B, J, k)
        k, n_g = z.shape[-1], g.shape[-1]
        coef = self.coef.to(g.dtype)
        base = coef[0] + z @ coef[1 : 1 + k]  # (B, J, L)
        slope = coef[1 + k : 1 + k + n_g] + torch.einsum("bjk,kgl->bjgl", z, coef[1 + k + n_g :].reshape(k, n_g, -1))
        shift = base + (g.unsqueeze(-2) @ slope).squeeze(-2)  # (..., B, 1, 1, G) @ (B, J, G, L)
        bounds = self.coef_range.to(g.dtype)
        return torch.clamp(shift, bounds[:, 0], bounds[:, 1])
