"""The factorized ML-NPE estimator: q(tau, omega | h_global) * prod_j q(lambda_j | tau, omega, h_local(x_j)).

Eqs. 11-14 of Habermann et al. (arXiv 2408.13230): a local summary network per group, a permutation-invariant
global summary over groups, a global conditional flow and ONE shared local conditional flow. In training the
local flow is conditioned on the true global parameters (eq. 13); sampling is ancestral (eq. 14).
Flows work on unconstrained parameters; draws and log densities are on the constrained scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from .core.data import GroupedBatch
from .errors import ConfigError
from .networks.flows import ConditionalFlow
from .networks.summaries import MLP, DeepSet, SufficientSummary, build_summary
from .core.constraints import Bijector, Positive

__all__ = ["NetworkConfig", "MultilevelEstimator"]


# The default `NetworkConfig.shift_max_spread`. A shift is used only for parameters whose linear prediction errs
# about equally across the pilot: the held-out residuals' spread (median absolute value) among the third of pilot
# datasets with the lowest predictions and among the third with the highest may differ by at most this factor.
# The flow sees the residual in units of one residual sd per parameter (on the log scale for positive parameters,
# `log_scale_shift`), so where that sd changes by more across datasets, the unit is off by as much at one end,
# which the flow must learn to undo. Group-level sds fail the test: a sd near zero is barely identified on the log
# scale and a large one is pinned down (ratios 1.6-2.7 on the exact normal model, sleepstudy and the AR(1));
# residual sds, coefficients and hyper-means pass it (1.0-1.3). On the exact normal model the group-level sd tau's
# mean error was 0.20 exact sds with the shift and 0.11 without it, over 4 seeds each, and the two harder radon
# models' Pareto k-hat fell from 0.89 and 1.61 to 0.57 and 0.60 (BENCHMARKS.md sections 1 and 3b, session 9);
# sleepstudy's sigma needs its shift (1.7 brms sds low without it). The diffusion model, whose summaries are
# learned rather than sufficient, does better with every parameter shifted (`ddm_network`).
SHIFT_MAX_SPREAD = 1.5


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the networks.

    Attributes:
        local_summary: "deepset", "set_transformer", "lstm" or "gru" (rows of a group).
        global_summary: "deepset" or "set_transformer" (groups of a dataset).
        summary_hidden: width of the summary networks.
        summary_depth: hidden layers (deep set) or attention blocks (set transformer).
        row_hidden: width of the deep set's per-row network (it runs once per row: keep it narrow).
        global_attention: attention-weighted pools in the global deep set (0: plain mean pooling).
        local_summary_dim: learned dimension of h_local.
        global_summary_dim: learned dimension of h_global.
        global_transforms, global_hidden: spline transforms and conditioner widths of the global flow.
        local_transforms, local_hidden: the same for the shared local flow.
        bins: spline bins.
        affine: start each flow with a conditional affine map (see `ConditionalFlow`).
        global_context: width of the learned embedding of h_global that the global flow sees (0: none). The
            raw global summary is wide (hundreds of pooled moments); embedding it once per dataset keeps the
            flow's per-draw cost low.
        log_inputs: row columns (0 = first response column, covariates after the responses) that the networks
            see as sign(v) log(1 + |v|): counts and other heavy-tailed inputs, whose raw scale would let a few
            huge simulated values dominate the standardization.
        pooled_moments: append the dataset's pooled within-group statistics to the global summary (rows with at
            most 8 columns): the grand mean, the pooled within-group covariance, the within-group least-squares
            fit of the first column on the others and the log of its residual variance, log(sum N_j - J) and
            log J. Summed over all rows, they carry what every group says about a shared residual scale or a
            shared slope, which a learned pool over groups of very different sizes recovers only roughly.
            Saved models without the key load with False (`from_saved`).
        between_moments: with `pooled_moments`, also append between-group statistics of the group means: their
            covariance across groups (upper triangle), the least-squares fit of the first column's group means
            on the others' (group-level covariates and between-group slopes), the log of its residual variance,
            the log of the sampling noise it contains (pooled within residual variance times the mean 1/N_j),
            and the signed log of their difference, a moment estimate of the group-level variance. With
            hundreds of groups the hyper-sd's posterior is a few percent wide; a learned pool over groups finds
            that spread only roughly. Saved models without the key load with False.
        sufficient: "none" (the default), "gaussian", "poisson" or "binomial" (bernoulli too): the local
            summary is a `mlnpe.networks.summaries.SufficientSummary`, which sees the response (row column 0) only through sum
            y x per group (and sum y^2 for "gaussian"), the sufficient statistics of a canonical-link GLM, and the
            covariates through a deep set of their own. For "poisson" and "binomial" the response is
            standardized by its scale only and the pooled statistics leave out every term with y^2. The
            amortized posterior then depends on the data only as the exact one does; formula models of these
            families use it. `local_summary` is not used, and `log_inputs` must not include column 0.
        design_only: with `sufficient`, covariate columns outside the linear predictor (binomial trials).
        profile: with `pooled_moments`, append the restricted (REML) log-likelihood profile of a random-intercept
            model for the group means, at 16 values of the group-level sd, relative to its maximum: the group
            means regressed on the group means of the covariates by weighted least squares, with sampling
            variances from the pooled residual variance (gaussian and other responses: sd ratios tau / sigma of
            0.01 to 30) or from each group's sum of counts on the link scale ("poisson": log, "binomial": logit;
            tau of 0.01 to 5), and the signed-log weighted least-squares coefficients at the best of these sds.
            This is what the data say about a group-level sd, which otherwise must be learned from a few percent
            of the spread of hundreds of group summaries, and about the intercept on the link scale. Saved models
            without the key load with False.
        group_moments: when the global summary is not a deep set (which appends them itself), append the mean
            and variance over groups of the local summaries to its output. Hyper-means and hyper-sds are close to
            these moments of per-group estimates (the AR(1) summary's least-squares fits), which attention
            blocks otherwise learn to compute slowly. Saved models without the key load with False.
        local_extremes: the local deep set also sees each row column's minimum and maximum over the group's rows
            (`DeepSet(extremes=True)`): for models whose parameters bound the data, such as a diffusion model's
            non-decision time, which must lie below every reaction time of its subject.
        glm_slopes: with `pooled_moments` and `sufficient` "poisson" or "binomial", also append the one-step
            estimate of the covariates' within-group slopes on the link scale: one Newton step from the model
            with a free intercept per group and no slopes (score over Fisher information, pooled over groups; log
            link for counts, logit for proportions, weighted by trials), and the log of that information. The
            slope of the counts themselves on a covariate is the link-scale slope times the level of the counts,
            which a network must untangle; this estimate needs no untangling. Saved models without the key load
            with False.
        log_response: the networks see log y instead of the response y (row column 0; positive responses, for
            which a non-positive value, such as padding, is seen as 0). With `sufficient="gaussian"` the summaries
            are then the sufficient statistics of a lognormal model (sum log y x, sum (log y)^2).
        regression_shift: with `pooled_moments`, the global flow models each unconstrained global parameter
            minus its linear prediction, in units of the prediction's held-out residual sd. The prediction is a
            ridge regression, fitted once to the pilot simulations (`set_standardization`), on the pooled
            statistics and on the mean and log variance over groups of the local summary's fixed features
            (`fixed_features` / `fixed_columns` in mlnpe.networks.summaries: moments, least-squares fits, sufficient statistics):
            the regression adjustment of approximate Bayesian computation (Beaumont et al. 2002). The flow then
            starts near the posterior and learns the residual, which can be much narrower than the prior (a
            group-level covariate's coefficient, for example). Parameters that the statistics predict poorly
            (held-out R^2 under 0.1) or unevenly (the residual spread differs more than `shift_max_spread` times
            between low and high predictions: group-level sds, typically) keep the prior's standardization. The
            statistics are clipped to the range of the pilot's and the prediction to the range of the pilot's
            predictions, so data unlike the simulations (a misspecified model) cannot throw the shift out by linear
            extrapolation. When the local summary has fixed features, the local flow is shifted the same way, by a
            regression of each group's locals on its features, the standardized globals and their products. Saved
            models without the key load with False.
        log_scale_shift: with `regression_shift`, positive global parameters (sds, sigma, shapes) are regressed
            on the log scale, where a scale parameter is close to linear in the log variance statistics over a
            prior that spans orders of magnitude, and the global flow models (u - shift(x)) / scale(x) with the
            log-scale prediction and its held-out residual sd carried to the flow's softplus scale u by the local
            derivative of u in log theta: a per-dataset affine map whose width follows the parameter's size. Saved
            models without the key load with False.
        scale_statistics: the variance statistics keep small scales: log variances are floored at 1e-8 of the
            pilot's squared row scale (1e-4 before; a vague prior's pilot can be several times wider than a dataset,
            so the old floor masked residual sds below a tenth of the data's sd); the pooled statistics gain the log
            residual variance of separate least-squares fits per group (sum of residual sums of squares over their
            degrees of freedom: the estimate of sigma under random slopes, which the common-slope fit inflates by
            the slopes' variance) and moment estimates of the group-level variance of each coefficient of those
            fits (`_group_fits`); and the sufficient-statistic summary places each group's intercept at the
            covariates' origin on the data's scale, where brms's group-level intercepts are, instead of at their
            pilot median. Saved models without the key load with False.
        shift_max_spread: with `regression_shift`, the largest ratio between the held-out residual spreads of
            the pilot datasets with the lowest and the highest third of a parameter's predictions for which that
            parameter is shifted (`SHIFT_MAX_SPREAD`, 1.5, by default; None: no limit, every parameter that the
            statistics predict is shifted, as before this key existed). Saved models keep the shift they were
            trained with whatever this says; their configs without the key load with None. With
            `heteroscedastic_shift` too: on the exact normal model a shifted tau erred by 0.13 exact sds even with
            a per-dataset scale, against 0.10 unshifted (BENCHMARKS.md section 1).
        profile_average: with `profile`, also append the coefficients averaged over the profile's grid of sds with
            weights proportional to its likelihoods (a posterior mean under a flat prior on the log sd), the log of
            their averaged sampling variances v, each averaged coefficient times sigmoid(c - log v) at c = -6, -4,
            -2, 0 and 2, and the averaged log sd ratio. The posterior mean of an intercept is close to the averaged
            coefficient shrunk towards the prior by v0 / (v + v0), with v0 its prior variance; those products let a
            linear shift (`regression_shift`) represent that shrinkage for any v0. Saved models without the key
            load with False.
        heteroscedastic_shift: with `log_scale_shift`, the shift's residual scale is a dataset's own: a ridge
            regression of the log squared residuals on the same statistics (corrected for the bias of a log
            chi-square), alternated with a location fit weighted by the inverse of the predicted variances (Blum
            and Francois's non-linear regression adjustment for ABC, with linear models), and calibrated on
            held-out pilot datasets. The global flow then models (u - shift(x)) / scale(x), which is close to a
            standard normal for narrow and wide posteriors alike (with a constant scale, a posterior twenty times
            narrower than the pilot's residual spread must be learned by the flow). Which parameters are shifted
            is decided as without it (held-out R^2 and `shift_max_spread`). Saved models without the key load
            with False.
    """

    local_summary: str = "deepset"
    global_summary: str = "deepset"
    summary_hidden: int = 64
    summary_depth: int = 2
    row_hidden: int = 16
    global_attention: int = 8
    local_summary_dim: int = 16
    global_summary_dim: int = 32
    global_transforms: int = 3
    global_hidden: tuple[int, ...] = (64, 64)
    local_transforms: int = 1
    local_hidden: tuple[int, ...] = (32, 32)
    bins: int = 8
    affine: bool = True
    global_context: int = 64
    log_inputs: tuple[int, ...] = ()
    pooled_moments: bool = True
    between_moments: bool = True
    sufficient: str = "none"
    design_only: tuple[int, ...] = ()
    profile: bool = True
    group_moments: bool = True
    glm_slopes: bool = True
    local_extremes: bool = False
    log_response: bool = False
    regression_shift: bool = True
    log_scale_shift: bool = True
    scale_statistics: bool = True
    shift_max_spread: float | None = SHIFT_MAX_SPREAD
    profile_average: bool = True
    heteroscedastic_shift: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "log_inputs", tuple(int(i) for i in self.log_inputs))
        object.__setattr__(self, "design_only", tuple(int(i) for i in self.design_only))
        if self.shift_max_spread is not None and not float(self.shift_max_spread) >= 1.0:
            raise ConfigError(
                "NetworkConfig `shift_max_spread` must be a ratio >= 1 or None (no limit), got "
                f"{self.shift_max_spread!r}."
            )
        if self.sufficient not in ("none", "gaussian", "poisson", "binomial"):
            raise ConfigError(
                f"NetworkConfig `sufficient` must be 'none', 'gaussian', 'poisson' or 'binomial', got "
                f"{self.sufficient!r}."
            )
        if self.sufficient != "none" and 0 in self.log_inputs:
            raise ConfigError(
                "NetworkConfig `log_inputs` must not include the response (column 0) with `sufficient`: its "
                "statistics must stay linear in y. Drop 0 from `log_inputs`."
            )
        if self.log_response and 0 in self.log_inputs:
            raise ConfigError(
                "NetworkConfig `log_response` and `log_inputs` both transform the response (column 0): drop 0 from "
                "`log_inputs`."
            )
        object.__setattr__(self, "global_hidden", tuple(int(h) for h in self.global_hidden))
        object.__setattr__(self, "local_hidden", tuple(int(h) for h in self.local_hidden))
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int):
                continue
            if value < (0 if f.name in ("global_attention", "global_context") else 1):
                raise ConfigError(f"NetworkConfig `{f.name}` must be a positive integer, got {value!r}.")
        if self.global_summary not in ("deepset", "set_transformer"):
            raise ConfigError(
                f"NetworkConfig `global_summary` must be 'deepset' or 'set_transformer' (groups are exchangeable), "
                f"got {self.global_summary!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "NetworkConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"NetworkConfig got unknown keys {unknown}; known keys: {sorted(known)}.")
        return cls(**d)

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> "NetworkConfig":
        """The config of a saved model: keys added since it was saved take the value that reproduces it."""
        added = ("pooled_moments", "between_moments", "profile", "group_moments", "regression_shift", "glm_slopes",
                 "log_scale_shift", "scale_statistics", "profile_average", "heteroscedastic_shift")
        return cls.from_dict({**{key: False for key in added}, "shift_max_spread": None, **d})


_PROFILE_POINTS = 16
# log sampling variances (standardized rows) at which `profile_average`'s shrinkage features turn over
_SHRINK_POINTS = (-6.0, -4.0, -2.0, 0.0, 2.0)


def _signed_log(v: Tensor) -> Tensor:
    return torch.sign(v) * torch.log1p(v.abs())


def _fixed_columns(summary: nn.Module, width: int) -> list[int]:
    """The columns of a local summary's output that are fixed functions of the rows (see mlnpe.networks.summaries):
    `fixed_columns` if it has them, else its last `fixed_features` columns, else none."""
    columns = getattr(summary, "fixed_columns", None)
    if columns is not None:
        return [int(c) for c in columns]
    k = int(getattr(summary, "fixed_features", 0))
    return list(range(width - k, width))


def _ridge_fit(
    x: Tensor, y: Tensor, loc: Tensor, scale: Tensor, ridge: float = 1.0, max_spread: float = SHIFT_MAX_SPREAD
) -> tuple[Tensor, Tensor]:
    """Ridge regression of targets y (P, K) on a design x (P, 1 + F) whose column 0 is the (unpenalized)
    intercept. Returns the coefficients (1 + F, K) and each target's residual sd on held-out rows (fitted on the
    first half, measured on the second). A target the design predicts poorly (held-out residual variance above
    0.9 of its variance `scale`^2) or unevenly (held-out residual spreads of the lowest and the highest third of the
    predictions more than `max_spread` apart) gets coefficients that predict its mean `loc` and keeps
    `scale`."""
    penalty = _ridge_penalty(x, ridge)
    held_out, useful = _held_out_check(x, y, scale, penalty, max_spread)
    coef = _predict_mean_where(torch.linalg.solve(x.T @ x + penalty, x.T @ y), ~useful, loc)
    return coef, torch.where(useful, held_out.to(scale.dtype), scale).clamp_min(1e-6)


def _ridge_penalty(x: Tensor, ridge: float) -> Tensor:
    """The ridge penalty matrix of a design x (P, 1 + F) whose column 0, the intercept, is not penalized."""
    penalty = ridge * torch.eye(x.shape[1], dtype=x.dtype)
    penalty[0, 0] = 0.0
    return penalty


def _held_out_check(x: Tensor, y: Tensor, scale: Tensor, penalty: Tensor, max_spread: float) -> tuple[Tensor, Tensor]:
    """The plain ridge fit on the first half of the rows, measured on the second: each target's held-out residual
    sd (K,), and whether a shift may use the design (K,): it predicts the target well (held-out residual variance
    under 0.9 of `scale`^2) and evenly (residual spreads of the lowest and highest third of the predictions at most
    `max_spread` apart)."""
    half = len(x) // 2
    coef_half = torch.linalg.solve(x[:half].T @ x[:half] + penalty, x[:half].T @ y[:half])
    predicted = x[half:] @ coef_half
    residual = y[half:] - predicted
    held_out = residual.std(0)
    useful = (held_out**2 < 0.9 * scale.double() ** 2) & (_residual_spread(predicted, residual) <= max_spread)
    return held_out, useful


def _predict_mean_where(coef: Tensor, columns: Tensor, loc: Tensor) -> Tensor:
    """Regression coefficients (1 + F, K) with the targets in `columns` (K,) predicted by their mean `loc` alone."""
    coef[:, columns] = 0.0
    coef[0, columns] = loc.double()[columns]
    return coef


# E log(z^2) for z ~ N(0, 1): the log of a squared residual underestimates its log variance by this much
_LOG_CHI2_BIAS = -1.2703628454614782
# ridge penalties of `_heteroscedastic_fit`'s variance regression, per pilot row; inf: a constant variance
_VARIANCE_PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, math.inf)


def _heteroscedastic_fit(
    x: Tensor, y: Tensor, loc: Tensor, scale: Tensor, ridge: float = 1.0, rounds: int = 2,
    max_spread: float = SHIFT_MAX_SPREAD,
) -> tuple[Tensor, Tensor, Tensor]:
    """Regression adjustment with a residual scale of its own per dataset (Blum and Francois's non-linear
    adjustment for ABC, with linear models): targets y (P, K) on a design x (P, 1 + F) whose column 0 is the
    intercept. The location is fitted by weighted ridge regression, the log residual variance by a ridge
    regression of log r^2 (plus the bias of a log chi-square), alternately, weighting each pilot dataset by the
    inverse of its predicted variance. A log r^2 is a noisy target (its variance is 4.9), so the variance
    regression's penalty is chosen per target among `_VARIANCE_PENALTIES` times the number of rows, or a constant
    variance, by the Gaussian log-likelihood of held-out rows (fitted on the first half, measured on the second):
    a target whose residual scale the statistics do not predict keeps the plain homoscedastic fit. A target that
    the unweighted fit predicts poorly or unevenly (as in `_ridge_fit`: held-out R^2 under 0.1, or residual
    spreads more than `max_spread` apart) keeps its mean `loc` and `scale` and a constant variance.

    Returns the location coefficients (1 + F, K), the log-variance coefficients (1 + F, K) relative to the
    returned scale, and that scale (K,): a dataset's residual sd is scale * exp(x @ log_var / 2). The scale is
    calibrated on the held-out rows so that the standardized held-out residuals have unit root mean square."""
    penalty = _ridge_penalty(x, ridge)

    def fit(rows: slice, strength: float) -> tuple[Tensor, Tensor]:
        xs, ys = x[rows], y[rows]
        coef = torch.linalg.solve(xs.T @ xs + penalty, xs.T @ ys)
        log_var = torch.zeros_like(coef)
        for _ in range(rounds):
            r = ys - xs @ coef
            target = torch.log(r**2 + 1e-12 * ys.var(0)) - _LOG_CHI2_BIAS
            if math.isinf(strength):  # a constant variance: the plain fit
                log_var[0] = target.mean(0)
                break
            shrink = _ridge_penalty(x, strength * len(xs))
            log_var = torch.linalg.solve(xs.T @ xs + shrink, xs.T @ target)  # (1 + F, K)
            w = torch.exp(-(xs @ log_var).clamp(-30.0, 30.0))  # (P, K)
            w = w / w.mean(0)
            coef = torch.stack([
                torch.linalg.solve((xs * w[:, k, None]).T @ xs + penalty, (xs * w[:, k, None]).T @ ys[:, k])
                for k in range(ys.shape[1])
            ], -1)  # fmt: skip
        return coef, log_var

    half = len(x) // 2
    useful = _held_out_check(x, y, scale, penalty, max_spread)[1]
    held_out = []  # per penalty: (calibration (K,), held-out negative log-likelihood (K,))
    for strength in _VARIANCE_PENALTIES:
        coef_half, log_var_half = fit(slice(0, half), strength)
        log_v = x[half:] @ log_var_half
        z2 = (y[half:] - x[half:] @ coef_half) ** 2 * torch.exp(-log_v)
        calibration = z2.mean(0)
        held_out.append((calibration, 0.5 * (log_v.mean(0) + torch.log(calibration) + 1.0)))
    best = torch.stack([nll for _, nll in held_out]).argmin(0)  # (K,)
    coef, log_var = (x.new_zeros(x.shape[1], y.shape[1]) for _ in range(2))
    for i, strength in enumerate(_VARIANCE_PENALTIES):
        chosen = best == i
        if chosen.any():
            c, v = fit(slice(None), strength)
            coef[:, chosen], log_var[:, chosen] = c[:, chosen], v[:, chosen]
            log_var[0, chosen] += torch.log(held_out[i][0][chosen])
    scale_out = torch.exp(0.5 * log_var[0])
    log_var[0] = 0.0
    coef = _predict_mean_where(coef, ~useful, loc)
    log_var[:, ~useful] = 0.0
    scale_out = torch.where(useful, scale_out.to(scale.dtype), scale).clamp_min(1e-6)
    return coef, log_var, scale_out


def _residual_spread(predicted: Tensor, residual: Tensor) -> Tensor:
    """(K,) ratio (>= 1) of the residuals' spreads among the lowest and the highest third of the predictions (P, K);
    the spread is the median absolute residual, which a few extreme pilot datasets do not move."""
    order = predicted.argsort(0)
    third = max(len(order) // 3, 2)
    low = residual.gather(0, order[:third]).abs().median(0).values
    high = residual.gather(0, order[-third:]).abs().median(0).values
    return torch.maximum(low, high) / torch.minimum(low, high).clamp_min(1e-12)


def _positive_columns(bijector: Bijector) -> Tensor:
    """(G,) bool: the unconstrained columns of a bijector's positive (softplus) scalars."""
    return torch.tensor(
        [isinstance(s, Positive) for s in bijector.supports for _ in range(s.unconstrained_dim())], dtype=torch.bool
    )


def _log_view(gu: Tensor, columns: Tensor) -> Tensor:
    """Unconstrained globals (..., G) with the positive `columns` replaced by log(softplus(u)) = log theta."""
    log_theta = torch.nn.functional.softplus(gu).clamp_min(torch.finfo(gu.dtype).tiny).log()
    return torch.where(columns.to(gu.device), log_theta, gu)


def _fit_regressors(values: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Mean, sd (floored at 1e-6) and the (F, 2) range of the standardized values (P, F), for a shift's regressors."""
    loc, scale = values.mean(0), values.std(0).clamp_min(1e-6)
    z = (values - loc) / scale
    return loc, scale, torch.stack([z.amin(0), z.amax(0)], -1)


def _fitted_range(design: Tensor, coef: Tensor) -> Tensor:
    """(K, 2) range of a regression's fitted values over its design rows."""
    fitted = design @ coef
    return torch.stack([fitted.amin(0), fitted.amax(0)], -1)


def _group_moments(h: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance over the real groups: h (B, J, k), real (B, J) -> (B, k), (B, k)."""
    w = real.to(h.dtype)[..., None]
    count = w.sum(1).clamp_min(1.0)
    mean = (h * w).sum(1) / count
    return mean, (((h - mean[:, None]) * w) ** 2).sum(1) / count


def _masked_moments(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Robust centre and scale over the real entries: values (..., d), mask (...) -> (d,), (d,).

    The median, and the interquartile range / 1.349 (the sd of a normal), falling back to the sd for columns
    whose quartiles coincide (a rare level of a binary column). Pilot simulations under vague priors (brms's
    student_t(3, ...) scales, or explosive AR(1) draws) have a few huge values that would inflate a sd and
    squash every typical dataset and parameter into a sliver around zero.
    """
    real = values[mask]
    if real.shape[0] > 2**20:  # torch.quantile's size limit; an even thinning keeps the quantiles
        real = real[:: -(-real.shape[0] // 2**20)]
    q25, median, q75 = torch.quantile(real, torch.tensor([0.25, 0.5, 0.75], dtype=real.dtype), dim=0)
    iqr = (q75 - q25) / 1.349
    scale = torch.where(iqr > 0, iqr, real.std(0))
    return median, scale.clamp_min(1e-6)


def _log_normal(noise: Tensor) -> Tensor:
    """log N(noise; 0, I) summed over the last dimension."""
    return -0.5 * (noise * noise).sum(-1) - 0.5 * noise.shape[-1] * math.log(2 * math.pi)


class MultilevelEstimator(nn.Module):
    """Two summary networks and two conditional flows, trained jointly.

    Arguments:
        global_bijector: constrained <-> unconstrained map of the G global scalars.
        local_bijector: the same for the L local scalars of a group.
        row_features: dimension of a row as the networks see it (y_dim + x_dim).
        config: network sizes.
        local_summary: optional custom local summary module (see mlnpe.networks.summaries for the interface).
        global_summary: optional custom global summary module.
    """

    def __init__(
        self,
        global_bijector: Bijector,
        local_bijector: Bijector,
        row_features: int,
        config: NetworkConfig = NetworkConfig(),
        local_summary: nn.Module | None = None,
        global_summary: nn.Module | None = None,
    ):
        super().__init__()
        self.global_bijector, self.local_bijector, self.config = global_bijector, local_bijector, config
        g, l = global_bijector.unconstrained_dim, local_bijector.unconstrained_dim
        c = config
        if local_summary is None and c.sufficient != "none":
            local_summary = SufficientSummary(
                row_features, c.local_summary_dim, c.summary_hidden, c.summary_depth, c.row_hidden,
                square=c.sufficient == "gaussian", design_only=c.design_only,
                floor=1e-6 if c.scale_statistics else 1e-3, origin=c.scale_statistics,
            )
        self.local_summary = local_summary or build_summary(
            c.local_summary, row_features, c.local_summary_dim, c.summary_hidden, c.summary_depth, c.row_hidden,
            moments="full" if row_features <= 8 else "diag", extremes=c.local_extremes,
        )
        self.linear_response = c.sufficient in ("poisson", "binomial")
        h_local = self.local_summary.out_features
        self.global_summary = global_summary or build_summary(
            c.global_summary, h_local, c.global_summary_dim, c.summary_hidden, c.summary_depth,
            attention=c.global_attention,
        )
        self.pooled = config.pooled_moments and row_features <= 8
        if self.pooled:
            pairs = torch.triu_indices(row_features, row_features)
            self.register_buffer("_pair_a", pairs[0], persistent=False)
            self.register_buffer("_pair_b", pairs[1], persistent=False)
        pooled_dim = row_features + pairs.shape[1] + row_features + 2 if self.pooled else 0
        self.between = self.pooled and config.between_moments
        if self.between:
            pooled_dim += pairs.shape[1] + row_features - 1 + 3
        self.profile = self.pooled and config.profile
        self._slope_columns = [c for c in range(1, row_features) if c not in set(config.design_only)]
        if self.profile:
            n_coef = row_features - len(set(config.design_only))
            pooled_dim += _PROFILE_POINTS + n_coef
            if config.profile_average:
                pooled_dim += (2 + len(_SHRINK_POINTS)) * n_coef + 1
            if config.sufficient not in ("poisson", "binomial"):
                pooled_dim += (_PROFILE_POINTS + 1) * len(self._slope_columns)
        self.glm_slopes = self.pooled and config.glm_slopes and self.linear_response and bool(self._slope_columns)
        if self.glm_slopes:
            pooled_dim += 2 * len(self._slope_columns)
        self._floor = 1e-8 if config.scale_statistics else 1e-4  # of the log variances (see `scale_statistics`)
        self.group_fits = self.pooled and config.scale_statistics and not self.linear_response and row_features > 1
        if self.group_fits:
            pooled_dim += 3 + 2 * len(self._slope_columns)
        self.group_moments = config.group_moments and not (
            isinstance(self.global_summary, DeepSet) and self.global_summary.moments != "none"
        )
        h_global = self.global_summary.out_features + pooled_dim + (2 * h_local if self.group_moments else 0)
        self.regression_shift = self.pooled and config.regression_shift
        self._fixed_cols = _fixed_columns(self.local_summary, h_local) if self.regression_shift else []
        self._estimate_pairs = [(int(e), int(v)) for e, v in getattr(self.local_summary, "group_estimates", [])]
        if not self._fixed_cols:
            self._estimate_pairs = []
        if self.regression_shift:  # fixed by `set_standardization`; the defaults give a zero shift
            n_stats = pooled_dim + 2 * len(self._fixed_cols) + 2 * len(self._estimate_pairs)
            self.register_buffer("stat_loc", torch.zeros(n_stats))
            self.register_buffer("stat_scale", torch.ones(n_stats))
            self.register_buffer("stat_range", torch.tensor([-10.0, 10.0]).repeat(n_stats, 1))  # (F, 2) of the pilot
            self.register_buffer("shift_coef", torch.zeros(n_stats + 1, g))
            self.register_buffer("shift_range", torch.tensor([-1e6, 1e6]).repeat(g, 1))
            self.register_buffer("context_loc", torch.zeros(g))  # the prior's moments, for the local context
            self.register_buffer("context_scale", torch.ones(g))
        self.log_shift = self.regression_shift and config.log_scale_shift
        if self.log_shift:  # see `_global_shift`
            self.register_buffer("shift_log", _positive_columns(global_bijector))
            self.register_buffer("shift_sd", torch.ones(g))
        self.hetero = self.log_shift and config.heteroscedastic_shift
        if self.hetero:  # the regression of each shifted parameter's log residual variance: see `_fit_shift`
            self.register_buffer("scale_coef", torch.zeros(n_stats + 1, g))
            self.register_buffer("scale_range", torch.zeros(g, 2))
        self.local_shift = bool(self._fixed_cols)
        if self.local_shift:  # the local flow's shift: see `_local_inputs`
            k = len(self._fixed_cols)
            self.register_buffer("local_stat_loc", torch.zeros(k))
            self.register_buffer("local_stat_scale", torch.ones(k))
            self.register_buffer("local_stat_range", torch.tensor([-10.0, 10.0]).repeat(k, 1))
            self.register_buffer("local_shift_coef", torch.zeros(1 + k + g + k * g, l))
            self.register_buffer("local_shift_range", torch.tensor([-1e6, 1e6]).repeat(l, 1))
        self.global_embed = MLP(h_global, [c.summary_hidden], c.global_context) if c.global_context else nn.Identity()
        self.global_flow = ConditionalFlow(
            g, c.global_context or h_global, c.global_transforms, c.global_hidden, c.bins, c.affine
        )
        self.local_flow = ConditionalFlow(l, h_local + g, c.local_transforms, c.local_hidden, c.bins, c.affine)
        if any(not 0 <= i < row_features for i in config.log_inputs):
            raise ConfigError(
                f"NetworkConfig `log_inputs` {list(config.log_inputs)} must index the {row_features} row columns."
            )
        self.log_inputs = list(config.log_inputs)
        self.register_buffer("row_loc", torch.zeros(row_features))
        self.register_buffer("row_scale", torch.ones(row_features))

    # ---- standardization ------------------------------------------------------------------------------------
    @torch.no_grad()
    def set_standardization(self, global_params: Tensor, local_params: Tensor, batch: GroupedBatch) -> None:
        """Fixes input and parameter standardization from pilot simulations (padding ignored)."""
        loc, scale = _masked_moments(self._rows(batch), batch.row_mask)
        if self.linear_response:  # scale only: the response's statistics stay proportional to sum y
            loc[0] = 0.0
        self.row_loc.copy_(loc)
        self.row_scale.copy_(scale)
        if getattr(self.local_summary, "origin", None) is not None:
            self.local_summary.set_origin(self._data_zero(self.local_summary.products))
        gu = self.global_bijector.inverse(global_params)
        loc, scale = _masked_moments(gu, torch.ones(gu.shape[0], dtype=torch.bool))
        if self.regression_shift:
            self.context_loc.copy_(loc)
            self.context_scale.copy_(scale.clamp_min(1e-6))
            h_local, packed, group_of_row = self._local(batch)
            stats = self._pooled_packed(packed, group_of_row, *batch.row_mask.shape[:2])
            target = gu
            if self.log_shift:  # positive parameters on the log scale, with that scale's prior moments
                target = _log_view(gu, self.shift_log)
                loc, scale = _masked_moments(target, torch.ones(gu.shape[0], dtype=torch.bool))
            scale = self._fit_shift(self._shift_statistics(stats, h_local, batch.group_mask), target, loc, scale)
            loc = torch.zeros_like(loc)
            if self.log_shift:  # the width travels with the shift (`_global_shift`); the flow's own map is the identity
                self.shift_sd.copy_(scale)
                scale = torch.ones_like(scale)
        self.global_flow.set_standardization(loc, scale)
        lu = self.local_bijector.inverse(local_params)
        loc, scale = _masked_moments(lu, batch.group_mask)
        if self.local_shift:
            real = batch.group_mask
            for buffer, value in zip(("loc", "scale", "range"), _fit_regressors(h_local[..., self._fixed_cols][real].double())):
                getattr(self, f"local_stat_{buffer}").copy_(value)
            g = ((gu - self.context_loc) / self.context_scale)[:, None].expand(*real.shape, gu.shape[-1])[real]
            design = self._local_design(h_local[real], g).double()
            coef, scale = _ridge_fit(design, lu[real].double(), loc, scale, max_spread=self._max_spread)
            self.local_shift_coef.copy_(coef)
            self.local_shift_range.copy_(_fitted_range(design, coef))
            loc = torch.zeros_like(loc)
        self.local_flow.set_standardization(loc, scale)

    @property
    def _max_spread(self) -> float:
        """`NetworkConfig.shift_max_spread`, with None (no limit) as infinity."""
        limit = self.config.shift_max_spread
        return math.inf if limit is None else float(limit)

    def _fit_shift(self, stats: Tensor, gu: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
        """Fits the `regression_shift` regression of the pilot's unconstrained globals gu (P, G) on their statistics
        (P, F) (`_shift_statistics`) and returns the global flow's scale (see `_ridge_fit`)."""
        stats, gu = stats.double(), gu.double()
        ok = torch.isfinite(stats).all(1) & torch.isfinite(gu).all(1)
        stats, gu = stats[ok], gu[ok]
        for buffer, value in zip(("loc", "scale", "range"), _fit_regressors(stats)):
            getattr(self, f"stat_{buffer}").copy_(value)
        design = self._shift_design(stats)
        if self.hetero:
            coef, log_var, flow_scale = _heteroscedastic_fit(design, gu, loc, scale, max_spread=self._max_spread)
            self.scale_coef.copy_(log_var)
            self.scale_range.copy_(_fitted_range(design, log_var))
        else:
            coef, flow_scale = _ridge_fit(design, gu, loc, scale, max_spread=self._max_spread)
        self.shift_coef.copy_(coef)
        self.shift_range.copy_(_fitted_range(design, coef))
        return flow_scale

    def _shift_design(self, stats: Tensor) -> Tensor:
        """(B, F) pooled statistics -> (B, 1 + F) standardized regressors of the shift, clipped to the pilot's range."""
        z = ((stats - self.stat_loc.to(stats.dtype)) / self.stat_scale.to(stats.dtype)).nan_to_num(0.0)
        bounds = self.stat_range.to(stats.dtype)
        return torch.cat([torch.ones_like(z[:, :1]), torch.clamp(z, bounds[:, 0], bounds[:, 1])], 1)

    def _split_global(self, h_global: Tensor) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """`summarize`'s h_global -> the global flow's context, its shift and its log scale (None when absent)."""
        if not self.regression_shift:
            return h_global, None, None
        g = self.global_flow.features
        if not self.log_shift:
            return h_global[..., :-g], h_global[..., -g:], None
        return h_global[..., : -2 * g], h_global[..., -2 * g : -g], h_global[..., -g:]

    def global_log_prob(self, gu: Tensor, h_global: Tensor) -> Tensor:
        """log q(gu | x) of unconstrained globals gu (..., B, G) given `summarize`'s h_global (B, ...)."""
        context, shift, log_scale = self._split_global(h_global)
        if shift is None:
            return self.global_flow.log_prob(gu, context)
        if log_scale is None:
            return self.global_flow.log_prob(gu - shift, context)
        return self.global_flow.log_prob((gu - shift) * torch.exp(-log_scale), context) - log_scale.sum(-1)

    def global_sample(
        self, n: int, h_global: Tensor, generator: torch.Generator | None = None, log_prob: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n draws of unconstrained globals (n, B, G) given `summarize`'s h_global (B, ...); with `log_prob`,
        also log q(gu | x) (n, B), from the same pass (the flow's log-Jacobian at the draws)."""
        context = self._split_global(h_global)[0]
        noise = torch.randn(n, *context.shape[:-1], self.global_flow.features, generator=generator, dtype=context.dtype)
        if not log_prob:
            return self.global_from_noise(noise, h_global)
        gu, log_det = self.global_from_noise(noise, h_global, log_det=True)
        return gu, _log_normal(noise) - log_det

    def global_from_noise(
        self, noise: Tensor, h_global: Tensor, log_det: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The global flow's map from its standard normal base: noise (..., B, G) -> unconstrained globals; with
        `log_det`, also log|det d gu / d noise| (..., B)."""
        context, shift, log_scale = self._split_global(h_global)
        out = self.global_flow.from_noise(noise, context, log_det=log_det)  # the context broadcasts: its layers run once
        gu, ladj = out if log_det else (out, None)
        if log_scale is not None:
            gu = gu * torch.exp(log_scale)
            ladj = None if ladj is None else ladj + log_scale.sum(-1)
        if shift is not None:
            gu = gu + shift
        return (gu, ladj) if log_det else gu

    def _rows(self, batch: GroupedBatch) -> Tensor:
        """(B, J, N, d) rows as the networks see them, before standardization."""
        return self._log_columns(batch.rows())

    def _log_columns(self, rows: Tensor) -> Tensor:
        """sign(v) log(1 + |v|) of the `log_inputs` columns (the last dimension) and log y of the response with
        `log_response`, on a copy."""
        if not self.log_inputs and not self.config.log_response:
            return rows
        rows = rows.clone()
        if self.log_inputs:
            rows[..., self.log_inputs] = _signed_log(rows[..., self.log_inputs])
        if self.config.log_response:
            y = rows[..., 0]
            rows[..., 0] = torch.where(y > 0, torch.log(y.clamp_min(1e-30)), 0.0)
        return rows

    # ---- networks -------------------------------------------------------------------------------------------
    def _packed(self, batch: GroupedBatch) -> tuple[Tensor, Tensor]:
        """The R real rows, standardized (R, d), and each one's group among the B * J (R,)."""
        flat = batch.row_mask.reshape(-1).nonzero().squeeze(1)
        group_of_row = torch.div(flat, batch.row_mask.shape[-1], rounding_mode="floor")
        return self._packed_rows(batch, flat), group_of_row

    def _packed_rows(self, batch: GroupedBatch, flat: Tensor) -> Tensor:
        """(R, d) standardized real rows, in the order of `flat` (indices into the flattened row mask)."""
        if batch.y is None:
            batch.rows()  # raises the error that names the missing responses
        slots = batch.row_mask.numel()
        parts = [batch.y.reshape(slots, batch.y.shape[-1]).index_select(0, flat)]
        if batch.x is not None and batch.x.shape[-1]:
            parts.append(batch.x.reshape(slots, batch.x.shape[-1]).index_select(0, flat))
        rows = torch.cat(parts, -1) if len(parts) > 1 else parts[0]
        return (self._log_columns(rows) - self.row_loc) / self.row_scale

    def _local(self, batch: GroupedBatch) -> tuple[Tensor, Tensor, Tensor]:
        """h_local (B, J, h_l) (zeros for padded groups), the packed standardized rows and each row's group.

        Summaries that can (`forward_packed`: deep sets, sufficient statistics) see the real rows only; others
        get each group's padded rows and mask.
        """
        real = batch.group_mask
        packed, group_of_row = self._packed(batch)
        if hasattr(self.local_summary, "forward_packed") and getattr(self.local_summary, "scores", None) is None:
            slot = torch.cumsum(real.reshape(-1).long(), 0) - 1  # a real group's position among the real groups
            h_real = self.local_summary.forward_packed(packed, slot[group_of_row], int(real.sum()))
        else:
            rows = (self._rows(batch) - self.row_loc) / self.row_scale
            h_real = self.local_summary(rows[real], batch.row_mask[real])
        h_local = packed.new_zeros(*real.shape, h_real.shape[-1])
        h_local[real] = h_real
        return h_local, packed, group_of_row

    def summarize(self, batch: GroupedBatch) -> tuple[Tensor, Tensor]:
        """Returns h_local (B, J, h_l) (zeros for padded groups) and h_global (B, h_g), embedded once here (with
        `regression_shift`, its last G columns are the global flow's shift: use `global_log_prob`)."""
        real = batch.group_mask
        b, j, _ = batch.row_mask.shape
        h_local, packed, group_of_row = self._local(batch)
        h_global = self.global_summary(h_local, real)
        if self.group_moments:
            h_global = torch.cat([h_global, *_group_moments(h_local, real)], -1)
        if not self.pooled:
            return h_local, self.global_embed(h_global)
        stats = self._pooled_packed(packed, group_of_row, b, j)
        h_global = self.global_embed(torch.cat([h_global, stats], -1))
        if self.regression_shift:  # the flow's shift rides along in the last columns (`_split_global`)
            shift = self._global_shift(self._shift_statistics(stats, h_local, real))
            h_global = torch.cat([h_global, shift.to(h_global.dtype)], -1)
        return h_local, h_global

    def _global_shift(self, stats: Tensor) -> Tensor:
        """(B, F) shift statistics -> (B, G) shift, and with `log_shift` also (B, G) log scales beside it.

        A positive parameter's prediction m of log theta, with held-out residual sd s, becomes the shift
        softplus^-1(e^m) and the scale s * d u / d log theta = s * theta / (1 - e^-theta) at theta = e^m."""
        design = self._shift_design(stats.double())
        bounds = self.shift_range.double()
        shift = torch.clamp(design @ self.shift_coef.double(), bounds[:, 0], bounds[:, 1])
        if not self.log_shift:
            return shift
        columns = self.shift_log
        theta = shift.exp()
        gap = torch.log(-torch.expm1(-theta))  # softplus^-1(theta) = theta + gap (`Positive.inverse`)
        sd = self.shift_sd.double().log()
        if self.hetero:  # the dataset's own residual sd, relative to `shift_sd`
            bounds = self.scale_range.double()
            sd = sd + 0.5 * torch.clamp(design @ self.scale_coef.double(), bounds[:, 0], bounds[:, 1])
        return torch.cat([torch.where(columns, theta + gap, shift), torch.where(columns, sd + shift - gap, sd)], -1)

    def _shift_statistics(self, stats: Tensor, h_local: Tensor, real: Tensor) -> Tensor:
        """The regressors of `regression_shift`: the pooled statistics, then the mean and log variance over groups
        of the local summary's fixed features (its last `fixed_features` outputs, see mlnpe.networks.summaries)."""
        if not self._fixed_cols:
            return stats
        mean, var = _group_moments(h_local[..., self._fixed_cols], real)
        out = [stats, mean, torch.log(var + 1e-4)]
        if self._estimate_pairs:  # moment estimates of the group-level variances (`group_estimates`, mlnpe.networks.summaries)
            est, log_var = (h_local[..., [p[i] for p in self._estimate_pairs]] for i in (0, 1))
            count = real.sum(1, keepdim=True).to(h_local.dtype)
            spread = _group_moments(est, real)[1] * count / (count - 1.0).clamp_min(1.0)
            noise = _group_moments(log_var.exp(), real)[0]
            out += [_signed_log(spread - noise), torch.log(noise + 1e-8)]
        return torch.cat(out, -1)

    @torch.no_grad()
    def pooled_statistics(self, batch: GroupedBatch) -> Tensor | None:
        """(B, F) the fixed pooled statistics the global summary appends (None when `pooled_moments` is off or rows
        are too wide): functions of the data alone, used for regression focusing (`FormulaNPE.train`)."""
        if not self.pooled:
            return None
        b, j, _ = batch.row_mask.shape
        return self._pooled_packed(*self._packed(batch), b, j)

    @torch.no_grad()
    def shift_statistics(self, batch: GroupedBatch) -> Tensor | None:
        """(B, F) the regressors of `regression_shift` (the pooled statistics, then the mean and log variance over
        groups of the local summary's fixed features), or the pooled statistics alone without fixed features; None
        when `pooled_moments` is off. Functions of the data alone (the fixed features have no weights)."""
        if not self.pooled:
            return None
        b, j, _ = batch.row_mask.shape
        h_local, packed, owner = self._local(batch)
        stats = self._pooled_packed(packed, owner, b, j)
        return self._shift_statistics(stats, h_local, batch.group_mask)

    def _pooled_features(self, rows: Tensor, row_mask: Tensor) -> Tensor:
        """Pooled within- and between-group statistics of standardized rows (see `NetworkConfig.pooled_moments`
        and `between_moments`).

        Arguments:
            rows: (B, J, N, d) standardized rows; row_mask: (B, J, N).
        Returns:
            (B, d + pairs + d + 2 [+ pairs + d + 2]): grand mean, signed-log within-group covariance (upper
            triangle), signed-log slopes of column 0 on the others (ridge 1e-2: a covariate constant within
            groups has no within variance), log(residual variance + 1e-4), log(sum N_j - J + 1), log J; then,
            with `between_moments`, the same covariance, slopes and log residual variance for the group means
            across groups, log(noise + 1e-4) with noise = residual variance * mean(1 / N_j), and
            signed_log(between residual variance - noise).
        """
        b, j, n, d = rows.shape
        flat = row_mask.reshape(-1).nonzero().squeeze(1)
        packed = rows.reshape(b * j * n, d).index_select(0, flat)
        return self._pooled_packed(packed, torch.div(flat, n, rounding_mode="floor"), b, j)

    def _pooled_packed(self, packed: Tensor, owner: Tensor, b: int, j: int) -> Tensor:
        """`_pooled_features` from the real rows (R, d) and each row's group among the B * J (R,)."""
        d = packed.shape[-1]
        n_j = torch.bincount(owner, minlength=b * j).to(packed.dtype).reshape(b, j, 1)
        mean_j = packed.new_zeros(b * j, d).index_add_(0, owner, packed).reshape(b, j, d) / n_j.clamp_min(1.0)
        dev = packed - mean_j.reshape(-1, d)[owner]
        dataset = owner // j
        within = packed.new_zeros(b, d, d).index_add_(0, dataset, dev[:, :, None] * dev[:, None, :])
        n_total = n_j.sum((1, 2))
        real = (n_j[..., 0] > 0).to(packed.dtype)  # (B, J)
        n_groups = real.sum(1)
        dof = n_total - n_groups
        cov = within / dof.clamp_min(1.0)[:, None, None]
        grand = (mean_j * n_j).sum(1) / n_total.clamp_min(1.0)[:, None]
        if self.config.design_only:  # sum y * trials is not a sufficient statistic
            cov = cov.clone()
            cols = list(self.config.design_only)
            cov[:, 0, cols] = 0.0
            cov[:, cols, 0] = 0.0
        slopes, residual = self._regress(cov, dof)
        profile = None
        if self.profile:
            profile = self._profile(packed, owner, mean_j, n_j[..., 0], real, residual)
            if not self.linear_response and self._slope_columns:
                profile = torch.cat([profile, self._slope_profile(dev, owner, real, residual)], -1)
        if self.linear_response:  # terms with sum y^2 are not sufficient statistics: leave them out
            cov = cov.clone()
            cov[:, 0, 0] = 0.0
            residual = torch.zeros_like(residual)
        upper = cov[:, self._pair_a, self._pair_b]
        floor = self._floor
        features = [grand, _signed_log(upper), _signed_log(slopes), torch.log(residual + floor)[:, None],
                    torch.log1p(dof.clamp_min(0.0))[:, None], torch.log(n_groups.clamp_min(1.0))[:, None]]
        if self.between:
            centre = (mean_j * real[..., None]).sum(1) / n_groups.clamp_min(1.0)[:, None]
            dev_b = (mean_j - centre[:, None]) * real[..., None]
            dof_b = n_groups - 1.0
            cov_b = torch.einsum("bjd,bje->bde", dev_b, dev_b) / dof_b.clamp_min(1.0)[:, None, None]
            slopes_b, residual_b = self._regress(cov_b, dof_b)
            inv_n = (real / n_j[..., 0].clamp_min(1.0)).sum(1) / n_groups.clamp_min(1.0)
            noise = residual * inv_n  # 0 for a linear response: its noise follows from the mean instead
            features += [_signed_log(cov_b[:, self._pair_a, self._pair_b]), _signed_log(slopes_b),
                         torch.log(residual_b + floor)[:, None], torch.log(noise + floor)[:, None],
                         _signed_log(residual_b - noise)[:, None]]
        if profile is not None:
            features.append(profile)
        if self.glm_slopes:
            features.append(self._glm_slopes(packed, owner, dataset, b, j))
        if self.group_fits:
            features.append(self._group_fits(dev, owner, mean_j, n_j, b, j))
        # a statistic of a degenerate design (no within-group spread at all, say) must not reach the networks as NaN
        return torch.nan_to_num(torch.cat(features, -1), nan=0.0, posinf=50.0, neginf=-50.0)

    def _group_fits(self, dev: Tensor, owner: Tensor, mean_j: Tensor, n_j: Tensor, b: int, j: int) -> Tensor:
        """Separate least-squares fits of column 0 on the covariates in every group with more rows than
        coefficients. A covariate without spread within a group (a group-level covariate) is left out of that
        group's fit; intercepts are taken at the data's zero of the covariates, where brms's group-level intercepts
        are. (B, 1 + 2 (1 + p)): the log residual variance pooled over these groups (the sum of residual sums of
        squares over the sum of their degrees of freedom), then per coefficient the signed log of its variance over
        groups (after a ridge regression on the groups' covariate means, which takes out group-level covariates)
        minus its mean sampling variance, a moment estimate of the group-level variance under random slopes, which
        the group means mix up with the slopes; and the log of that variance.
        """
        cols = self._slope_columns
        p, d = len(cols), mean_j.shape[-1]
        v = torch.cat([dev[:, :1], dev[:, cols]], -1)
        cross = v.new_zeros(b * j, p + 1, p + 1).index_add_(0, owner, v[:, :, None] * v[:, None, :])
        n = n_j.reshape(-1).clamp_min(1.0)
        sxx = cross[:, 1:, 1:]
        varies = (torch.diagonal(sxx, dim1=-2, dim2=-1) > 1e-8 * n[:, None]).to(v.dtype)  # (BJ, p)
        eye = torch.eye(p, dtype=v.dtype, device=v.device)
        # covariates without spread: an identity block, so their slope is 0 and they add no sampling variance
        kept = sxx * varies[:, :, None] * varies[:, None, :] + torch.diag_embed(1.0 - varies)
        inverse = torch.linalg.inv(kept + 1e-6 * n[:, None, None] * eye) * varies[:, :, None] * varies[:, None, :]
        slopes = (inverse @ cross[:, 1:, :1])[..., 0]  # (BJ, p)
        sse = (cross[:, 0, 0] - (cross[:, 1:, 0] * slopes).sum(-1)).clamp_min(0.0)
        dof = (n_j.reshape(-1) - 1.0 - varies.sum(-1)).clamp_min(0.0)
        fitted = (dof > 0).to(v.dtype)
        sigma2 = (sse * fitted).reshape(b, j).sum(1) / dof.reshape(b, j).sum(1).clamp_min(1.0)
        origin = self._data_zero(cols).to(v.dtype)
        means = mean_j.reshape(-1, d)[:, cols]
        at = (means - origin) * varies  # (BJ, p) the group's covariate means from the data's zero
        intercept = mean_j.reshape(-1, d)[:, 0] - (slopes * at).sum(-1)
        unit_var = torch.cat([(1.0 / n + torch.einsum("rp,rpq,rq->r", at, inverse, at))[:, None],
                              torch.diagonal(inverse, dim1=-2, dim2=-1)], -1).reshape(b, j, p + 1)
        coef = torch.cat([intercept[:, None], slopes], -1).reshape(b, j, p + 1)
        w = (fitted[:, None] * torch.cat([torch.ones_like(varies[:, :1]), varies], -1)).reshape(b, j, p + 1)
        count = w.sum(1)  # (B, p + 1)
        # the coefficients' spread after a ridge regression on the covariates' group means, per coefficient
        x = means.reshape(b, j, p)
        rows = w[..., :1]  # the groups with a fit
        x = x - (rows * x).sum(1, keepdim=True) / rows.sum(1, keepdim=True).clamp_min(1.0)
        gram = torch.einsum("bjp,bjq->bpq", rows * x, x) + (1e-2 * rows.sum(1)[..., None] + 1e-6) * eye  # no fit: 0
        centre = (w * coef).sum(1) / count.clamp_min(1.0)
        centred = (coef - centre[:, None]) * w
        beta = torch.linalg.solve(gram, torch.einsum("bjp,bjk->bpk", rows * x, centred))
        residual = (centred - torch.einsum("bjp,bpk->bjk", x, beta)) * w
        spread = (residual**2).sum(1) / (count - 1.0 - p).clamp_min(1.0)
        noise = sigma2[:, None] * (w * unit_var).sum(1) / count.clamp_min(1.0)
        floor = self._floor
        return torch.cat([torch.log(sigma2 + floor)[:, None], _signed_log(spread - noise), torch.log(spread + floor)], -1)

    def _data_zero(self, columns: Sequence[int]) -> Tensor:
        """The standardized image of the data's zero in row `columns` (signed-log inputs map 0 to 0 as well)."""
        return -(self.row_loc / self.row_scale)[list(columns)]

    def _raw_trials(self, packed: Tensor) -> Tensor:
        """(R,) each row's binomial trials on the data's scale (1 without a trials column)."""
        if not self.config.design_only:
            return torch.ones_like(packed[:, 0])
        c = min(self.config.design_only)
        raw = packed[:, c] * self.row_scale[c] + self.row_loc[c]
        if c in self.log_inputs:
            raw = torch.sign(raw) * torch.expm1(raw.abs())
        return raw

    def _glm_slopes(self, packed: Tensor, owner: Tensor, dataset: Tensor, b: int, j: int) -> Tensor:
        """(B, 2 p): the signed-log one-step link-scale slopes of the p = `_slope_columns` and log of the diagonal
        of their Fisher information (see `NetworkConfig.glm_slopes`)."""
        y = packed[:, 0] * self.row_scale[0]  # the raw response (its loc is 0)
        trials = self._raw_trials(packed) if self.config.sufficient == "binomial" else torch.ones_like(y)
        x = packed[:, self._slope_columns]

        def group_sum(v: Tensor) -> Tensor:
            return v.new_zeros(b * j, *v.shape[1:]).index_add_(0, owner, v)

        total = group_sum(trials).clamp_min(1e-8)
        rate = (group_sum(y) / total)[owner]  # the group's fitted mean per trial (no slopes)
        xc = x - (group_sum(trials[:, None] * x) / total[:, None])[owner]
        if self.config.sufficient == "binomial":
            rate = rate.clamp(0.0, 1.0)
            weight = trials * rate * (1.0 - rate)
        else:
            weight = rate
        score = x.new_zeros(b, x.shape[1]).index_add_(0, dataset, xc * (y - trials * rate)[:, None])
        info = x.new_zeros(b, x.shape[1], x.shape[1]).index_add_(0, dataset, weight[:, None, None] * xc[:, :, None] * xc[:, None, :])
        diag = torch.diagonal(info, dim1=-2, dim2=-1)
        ridge = 1e-6 + 1e-4 * diag.mean(-1)
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        slopes = torch.linalg.solve(info + ridge[:, None, None] * eye, score[..., None])[..., 0]
        return torch.cat([_signed_log(slopes), torch.log(diag + 1e-6)], -1)

    def _profile(
        self, packed: Tensor, owner: Tensor, mean_j: Tensor, n_j: Tensor, real: Tensor, residual: Tensor
    ) -> Tensor:
        """REML profile of the group-level sd (see `NetworkConfig.profile`): (B, `_PROFILE_POINTS` + p), each row's
        log-likelihoods minus their maximum, clamped at -50, then the p = 1 + covariates weighted least-squares
        coefficients at the maximum (signed log)."""
        mode = self.config.sufficient
        n = n_j.clamp_min(1.0)
        design_only = set(self.config.design_only)
        products = [c for c in range(1, mean_j.shape[-1]) if c not in design_only]
        if mode in ("poisson", "binomial"):
            s = (mean_j[..., 0] * self.row_scale[0] * n).clamp_min(0.0)  # sum of the raw response (loc is 0)
            if mode == "poisson":
                est, base = torch.log((s + 0.5) / n), 1.0 / (s + 0.5)
            else:
                if design_only:
                    raw = self._raw_trials(packed)
                    trials = raw.new_zeros(n.numel()).index_add_(0, owner, raw).reshape(n.shape)
                else:
                    trials = n
                f = (trials - s).clamp_min(0.0)
                est, base = torch.log((s + 0.5) / (f + 0.5)), 1.0 / (s + 0.5) + 1.0 / (f + 0.5)
            grid = torch.logspace(-2, math.log10(5.0), _PROFILE_POINTS, dtype=packed.dtype, device=packed.device)
            var = grid**2 + base[..., None]  # (B, J, K)
        else:
            grid = torch.logspace(-2, math.log10(30.0), _PROFILE_POINTS, dtype=packed.dtype, device=packed.device)
            est = mean_j[..., 0]
            var = residual.clamp_min(1e-6)[:, None, None] * (grid**2 + 1.0 / n[..., None])
        x = torch.cat([torch.ones_like(est)[..., None], mean_j[..., products]], -1)  # (B, J, p)
        w = real[..., None] / var
        xtwx = torch.einsum("bjp,bjk,bjq->bkpq", x, w, x)
        # a ridge relative to the information too: covariates whose group means coincide in every group (the same
        # design per group) leave xtwx singular, and float32 cancellation would make its determinant negative
        ridge = 1e-4 + 1e-5 * torch.diagonal(xtwx, dim1=-2, dim2=-1).mean(-1)
        xtwx = xtwx + ridge[..., None, None] * torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
        beta = torch.linalg.solve(xtwx, torch.einsum("bjp,bjk,bj->bkp", x, w, est)[..., None])[..., 0]
        r = est[..., None] - torch.einsum("bjp,bkp->bjk", x, beta)
        ll = -0.5 * ((real[..., None] * torch.log(var)).sum(1) + (w * r * r).sum(1) + torch.logdet(xtwx))
        best = ll.argmax(-1)  # the coefficients at the best sd: on the link scale for counts and proportions
        coef = beta[torch.arange(beta.shape[0], device=beta.device), best]
        out = [(ll - ll.amax(-1, keepdim=True)).clamp_min(-50.0), _signed_log(coef)]
        if self.config.profile_average:
            weight = torch.softmax(ll, -1)  # (B, K)
            var = torch.diagonal(torch.linalg.inv(xtwx), dim1=-2, dim2=-1)  # (B, K, p)
            mean = (weight[..., None] * beta).sum(1)
            log_var = torch.log((weight[..., None] * var).sum(1).clamp_min(1e-12))
            points = torch.tensor(_SHRINK_POINTS, dtype=mean.dtype, device=mean.device)
            shrunk = mean[..., None] * torch.sigmoid(points - log_var[..., None])  # (B, p, points)
            out += [mean, log_var, shrunk.flatten(1), (weight * torch.log(grid)).sum(-1, keepdim=True)]
        return torch.cat(out, -1)

    def _slope_profile(self, dev: Tensor, owner: Tensor, real: Tensor, residual: Tensor) -> Tensor:
        """For each covariate, the REML profile of a group-level sd of its slope: every group's least-squares
        slope of the response on it (within the group), with sampling variance sigma^2 / S_xx, at sd / sigma ratios
        of 0.01 to 30; then the weighted mean slope at the best ratio (signed log). Groups in which the covariate
        does not vary carry no information and are left out. (B, (`_PROFILE_POINTS` + 1) * covariates)."""
        b, j = real.shape
        cols = self._slope_columns
        sums = dev.new_zeros(b * j, 2 * len(cols)).index_add_(
            0, owner, torch.cat([dev[:, cols] ** 2, dev[:, cols] * dev[:, :1]], -1)
        ).reshape(b, j, 2, len(cols))
        sxx, sxy = sums[:, :, 0], sums[:, :, 1]  # (B, J, C)
        informative = real[..., None] * (sxx > 1e-6).to(dev.dtype)
        slope = sxy / sxx.clamp_min(1e-6)
        grid = torch.logspace(-2, math.log10(30.0), _PROFILE_POINTS, dtype=dev.dtype, device=dev.device)
        sigma2 = residual.clamp_min(1e-6)[:, None, None, None]
        var = sigma2 * (grid**2 + 1.0 / sxx.clamp_min(1e-6)[..., None])  # (B, J, C, K)
        w = informative[..., None] / var
        total = w.sum(1).clamp_min(1e-12)  # (B, C, K)
        mean = (w * slope[..., None]).sum(1) / total
        r = slope[..., None] - mean[:, None]
        ll = -0.5 * ((informative[..., None] * torch.log(var)).sum(1) + (w * r * r).sum(1) + torch.log(total))
        best = ll.argmax(-1, keepdim=True)
        out = torch.cat([(ll - ll.amax(-1, keepdim=True)).clamp_min(-50.0), _signed_log(mean.gather(-1, best))], -1)
        return out.flatten(1)

    @staticmethod
    def _regress(cov: Tensor, dof: Tensor) -> tuple[Tensor, Tensor]:
        """Least squares of column 0 on the others from a covariance (B, d, d) with `dof` (B,) degrees of freedom.

        Returns the slopes (B, d - 1) (ridge 1e-2) and the residual variance (B,) on its own degrees of freedom.
        """
        d = cov.shape[-1]
        if d == 1:
            return cov.new_zeros(cov.shape[0], 0), cov[:, 0, 0]
        cxx = cov[:, 1:, 1:] + 1e-2 * torch.eye(d - 1, dtype=cov.dtype, device=cov.device)
        cx0 = cov[:, 1:, :1]
        slopes = torch.linalg.solve(cxx, cx0)[..., 0]
        residual = (cov[:, 0, 0] - (cx0[..., 0] * slopes).sum(-1)).clamp_min(0.0)
        return slopes, residual * dof / (dof - (d - 1)).clamp_min(1.0)

    def _local_inputs(
        self, h_local: Tensor, global_u: Tensor, parts: bool = False
    ) -> tuple[Tensor | tuple[Tensor, Tensor], Tensor | None]:
        """The local flow's context (..., B, J, h + G) and shift (..., B, J, L) (None without a local shift).

        With `parts`, the context comes as its two broadcastable parts, h_local (B, J, h) and the standardized
        globals (..., B, 1, G) (`ConditionalFlow.from_noise` then applies the first layers to each once).

        With `regression_shift` and a local summary with fixed features (mlnpe.networks.summaries), the local flow models each
        group's unconstrained locals minus a ridge regression on those features, the standardized globals and
        their products (fitted to the pilot by `set_standardization`): the products let the prediction weigh a
        group's own estimate against the hyper-mean by the group-level sd, as shrinkage does.
        """
        if self.regression_shift:
            g = (global_u - self.context_loc) / self.context_scale
        else:
            g = (global_u - self.global_flow.loc) / self.global_flow.scale
        g = g.unsqueeze(-2)  # (..., B, 1, G)
        if parts:
            context = (h_local, g)
        else:
            shape = torch.broadcast_shapes(g.shape[:-2], h_local.shape[:-2]) + h_local.shape[-2:-1]
            context = torch.cat([h_local.expand(*shape, -1), g.expand(*shape, -1)], -1)
        if not self.local_shift:
            return context, None
        # design @ coef = (c0 + z Cz) + g (Cg + z Cgz): the group's terms once per group, not once per draw
        z = self._local_regressors(h_local).to(g.dtype)  # (B, J, k)
        k, n_g = z.shape[-1], g.shape[-1]
        coef = self.local_shift_coef.to(g.dtype)
        base = coef[0] + z @ coef[1 : 1 + k]  # (B, J, L)
        slope = coef[1 + k : 1 + k + n_g] + torch.einsum("bjk,kgl->bjgl", z, coef[1 + k + n_g :].reshape(k, n_g, -1))
        shift = base + (g.unsqueeze(-2) @ slope).squeeze(-2)  # (..., B, 1, 1, G) @ (B, J, G, L)
        bounds = self.local_shift_range.to(g.dtype)
        return context, torch.clamp(shift, bounds[:, 0], bounds[:, 1])

    def _local_regressors(self, h_local: Tensor) -> Tensor:
        """(..., h) local summaries -> (..., k) their fixed features, standardized and clipped to the pilot's range."""
        f = h_local[..., self._fixed_cols]
        z = ((f - self.local_stat_loc.to(f.dtype)) / self.local_stat_scale.to(f.dtype)).nan_to_num(0.0)
        bounds = self.local_stat_range.to(z.dtype)
        return torch.clamp(z, bounds[:, 0], bounds[:, 1])

    def _local_design(self, h_local: Tensor, g: Tensor) -> Tensor:
        """(..., h) local summaries and (..., G) standardized globals -> (..., 1 + k + G + k G) regressors."""
        z = self._local_regressors(h_local).to(g.dtype)
        products = (z[..., :, None] * g[..., None, :]).flatten(-2)
        return torch.cat([torch.ones_like(g[..., :1]), z, g, products], -1)

    def local_log_prob(self, lu: Tensor, h_local: Tensor, gu: Tensor) -> Tensor:
        """log q(lu_j | gu, x_j) (..., B, J) of unconstrained locals lu (..., B, J, L) given globals gu (..., B, G)."""
        context, shift = self._local_inputs(h_local, gu)
        return self.local_flow.log_prob(lu if shift is None else lu - shift, context)

    def local_sample(
        self, h_local: Tensor, gu: Tensor, generator: torch.Generator | None = None, log_prob: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """One unconstrained local draw per group and global draw: gu (..., B, G) -> (..., B, J, L); with
        `log_prob`, also log q(lu_j | gu, x_j) (..., B, J), from the same pass."""
        shape = torch.broadcast_shapes(gu.shape[:-1], h_local.shape[:-2]) + h_local.shape[-2:-1]
        noise = torch.randn(*shape, self.local_flow.features, generator=generator, dtype=h_local.dtype)
        if not log_prob:
            return self.local_from_noise(noise, h_local, gu)
        lu, log_det = self.local_from_noise(noise, h_local, gu, log_det=True)
        return lu, _log_normal(noise) - log_det

    def local_from_noise(
        self, noise: Tensor, h_local: Tensor, gu: Tensor, log_det: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The local flow's map from its standard normal base: noise (..., B, J, L) given globals gu (..., B, G)
        -> unconstrained locals (..., B, J, L); with `log_det`, also log|det d lu_j / d noise_j| (..., B, J)."""
        context, shift = self._local_inputs(h_local, gu, parts=True)
        out = self.local_flow.from_noise(noise, context, log_det=log_det)
        if shift is None:
            return out
        return (out[0] + shift, out[1]) if log_det else out + shift

    # ---- densities ------------------------------------------------------------------------------------------
    def loss(self, global_params: Tensor, local_params: Tensor, batch: GroupedBatch) -> Tensor:
        """Eq. 13: -log q_global - sum_j log q_local, with the local flow given the TRUE globals.

        Arguments:
            global_params: (B, G) constrained.
            local_params: (B, J, L) constrained.
        Returns:
            (B,) negative log density in unconstrained space.
        """
        h_local, h_global = self.summarize(batch)
        gu = self.global_bijector.inverse(global_params)
        lu = self.local_bijector.inverse(local_params)
        lp_global = self.global_log_prob(gu, h_global)
        lp_local = self.local_log_prob(lu, h_local, gu)
        return -(lp_global + torch.where(batch.group_mask, lp_local, 0.0).sum(-1))

    def log_prob(
        self, global_params: Tensor, local_params: Tensor, batch: GroupedBatch, summaries: tuple[Tensor, Tensor] | None = None
    ) -> tuple[Tensor, Tensor]:
        """Exact log density of given draws on the constrained scale.

        Arguments:
            global_params: (S, B, G).
            local_params: (S, B, J, L).
        Returns:
            log q(tau, omega | x) (S, B) and log q(lambda_j | tau, omega, x_j) (S, B, J) (0 for padded groups).
        """
        h_local, h_global = summaries if summaries is not None else self.summarize(batch)
        gu = self.global_bijector.inverse(global_params)
        lu = self.local_bijector.inverse(local_params)
        return self._log_prob_unconstrained(gu, lu, h_local, h_global, batch.group_mask)

    def _log_prob_unconstrained(
        self, gu: Tensor, lu: Tensor, h_local: Tensor, h_global: Tensor, group_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Constrained-scale log densities from unconstrained draws (flow density minus log-Jacobian)."""
        lq_global, lq_local = self.global_log_prob(gu, h_global), self.local_log_prob(lu, h_local, gu)
        return self._constrained(gu, lu, lq_global, lq_local, group_mask)

    def _constrained(
        self, gu: Tensor, lu: Tensor, lq_global: Tensor, lq_local: Tensor, group_mask: Tensor
    ) -> tuple[Tensor, Tensor]:
        """The flows' log densities of unconstrained draws -> those of the constrained draws (minus each
        bijector's log-Jacobian); padded groups get 0."""
        lp_global = lq_global - self.global_bijector.log_abs_det_jacobian(gu)
        lp_local = torch.where(group_mask, lq_local - self.local_bijector.log_abs_det_jacobian(lu), 0.0)
        return lp_global, lp_local

    @torch.no_grad()
    def sample(
        self, n: int, batch: GroupedBatch, generator: torch.Generator | None = None, return_log_prob: bool = False
    ) -> tuple[Tensor, ...]:
        """Ancestral sampling (eq. 14): globals from the global flow, then every group's locals given them.

        Returns:
            global draws (n, B, G) and local draws (n, B, J, L), constrained (padded groups hold junk); with
            `return_log_prob` also the log densities of `log_prob`.
        """
        h_local, h_global = self.summarize(batch)
        if not return_log_prob:
            gu = self.global_sample(n, h_global, generator)
            lu = self.local_sample(h_local, gu, generator)
            return self.global_bijector.forward(gu), self.local_bijector.forward(lu)
        # The flows' log densities at their own draws come from the sampling pass (base density minus the
        # log-Jacobian of the map from the noise), not from a second, density pass.
        gu, lq_global = self.global_sample(n, h_global, generator, log_prob=True)
        lu, lq_local = self.local_sample(h_local, gu, generator, log_prob=True)
        g, l = self.global_bijector.forward(gu), self.local_bijector.forward(lu)
        return (g, l, *self._constrained(gu, lu, lq_global, lq_local, batch.group_mask))
