"""The hierarchical AR(1) model of the air-passenger case study (Habermann et al., arXiv 2408.13230, sec. 3.2).

Model (eqs. 16-17), for series j = 1..J and times t = 1..T_j, with per-row covariates u_t, v_t::

    y[t+1, j] ~ Normal(alpha_j + beta_j * y[t, j] + gamma_j * u[t, j] + delta_j * v[t, j], sigma_j)
    alpha_j, beta_j, gamma_j, delta_j ~ Normal(mu_*, sd_*),  mu_* ~ Normal(0, 0.3),  sd_* ~ Normal+(0, 0.25)
    log(sigma_j) ~ Normal(mu_log_sigma, sd_log_sigma),  mu_log_sigma ~ Normal(-1, 0.5),  sd_log_sigma ~ Normal+(0, 1)

Row t of a series holds (y_t, u_t, v_t); the covariates of row t predict y at t + 1, so the last row's
covariates enter no likelihood term. Simulated covariates are standard normal draws, standardized within each
series to mean 0 and sd 1 (population sd, over the series' T_j rows), as in the paper.

**The first observation.** The likelihood is conditional on each series' first observation y_1: ``log_likelihood``
sums the T_j - 1 transition densities. Eq. 20 draws the start from "the stationary distribution"
Normal(0, sigma_j / (1 - beta_j^2)), but the untruncated prior of beta_j (eq. 17) gives |beta_j| >= 1, where no
stationary distribution exists, in about 1 % of groups, and a start whose law depends on (beta_j, sigma_j)
would carry information that the conditional likelihood (and a Stan fit of it) ignores. The simulator therefore
draws y_1 ~ Normal(0, init_scale), free of parameters, so the conditional likelihood is exactly the simulator's
likelihood and ML-NPE targets the same posterior as the Stan program of :func:`ar1_stan_program`. For the same
reason the prior of beta_j is kept untruncated: explosive simulated series are legal; the estimator scales its
inputs robustly (median and interquartile range, as every mlnpe estimator does) and its local summary
(:class:`AR1Summary`) compresses them with a signed log, so that such series cannot dominate training.

Parameters use the names of :data:`GLOBAL_NAMES` and :data:`LOCAL_NAMES` everywhere: mlnpe draws, Stan draws,
diagnostics and figures.

Example:
    >>> from mlnpe.case_studies.ar1 import HierarchicalAR1, ar1_data, ar1_estimator
    >>> npe = ar1_estimator(seed=1)                                   # doctest: +SKIP
    >>> npe.train(TrainConfig(time_limit=300))                         # doctest: +SKIP
    >>> data = ar1_data(df, group="country", time="year", y="dy", covariates=("u", "v"))  # doctest: +SKIP
    >>> draws = npe.sample(data, n_draws=2000, seed=1)                 # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..amortizer import MultilevelNPE
from ..core.data import GroupedBatch, GroupedData
from ..core.draws import PosteriorDraws
from ..errors import ConfigError, DataError, SpecError
from ..io import read_config
from ..networks.config import FlowConfig, NetworkConfig, SummaryConfig
from ..core.models import MODELS
from ..networks.summaries import RecurrentSummary
from ..core.spec import ParamSpec, TwoLevelModel

__all__ = [
    "HierarchicalAR1",
    "GLOBAL_NAMES",
    "LOCAL_NAMES",
    "validate_ar1_data",
    "ar1_data",
    "ar1_network",
    "ar1_estimator",
    "load_ar1_estimator",
    "AR1Summary",
    "posterior_predictive",
    "ar1_stan_program",
    "ar1_stan_data",
    "fit_ar1_stan",
    "AR1StanFit",
]

_LOG_2PI = math.log(2 * math.pi)
_LOG_2 = math.log(2.0)

# Local parameters, in order; "sigma" is modelled on the log scale.
LOCAL_NAMES: tuple[str, ...] = ("alpha", "beta", "gamma", "delta", "sigma")
_HYPER = ("alpha", "beta", "gamma", "delta", "log_sigma")  # the normal variable behind each local parameter
# Global parameters: (mean, sd) of each local parameter, in the order of LOCAL_NAMES.
GLOBAL_NAMES: tuple[str, ...] = tuple(name for h in _HYPER for name in (f"mu_{h}", f"sd_{h}"))
# Eq. 17, the one source of the prior constants: (location, scale) of each mean's Normal prior and the scale of
# each sd's half-normal prior.
_MEAN_PRIORS = ((0.0, 0.3), (0.0, 0.3), (0.0, 0.3), (0.0, 0.3), (-1.0, 0.5))
_SD_PRIOR_SCALES = (0.25, 0.25, 0.25, 0.25, 1.0)


def _normal_logpdf(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(torch.as_tensor(scale, dtype=x.dtype)) - 0.5 * _LOG_2PI


# ------------------------------------------------------------------------------------------------------------
# the model


class HierarchicalAR1(TwoLevelModel):
    """Hierarchical AR(1) with two covariates (eqs. 16-17); see the module docstring for the first observation.

    Global parameters (G = 10): ``mu_alpha, sd_alpha, mu_beta, sd_beta, mu_gamma, sd_gamma, mu_delta, sd_delta,
    mu_log_sigma, sd_log_sigma``. Local parameters (L = 5): ``alpha, beta, gamma, delta, sigma``. Rows are
    (y_t) with covariates (u_t, v_t), ordered in time.

    Arguments:
        init_scale: sd of the parameter-free Normal(0, init_scale) law of each series' first observation.

    Example:
        >>> from mlnpe.core.spec import simulate_batch
        >>> sims = simulate_batch(HierarchicalAR1(), 4, (10, 30), (5, 30), torch.Generator().manual_seed(0))
        >>> sims.local_params.shape[-1], sims.batch.x.shape[-1]
        (5, 2)
    """

    global_params = tuple(
        ParamSpec(name, "real" if name.startswith("mu_") else "positive") for name in GLOBAL_NAMES
    )
    local_params = tuple(ParamSpec(name, "positive" if name == "sigma" else "real") for name in LOCAL_NAMES)
    y_dim = 1
    x_dim = 2
    y_names = ("y",)
    x_names = ("u", "v")
    ordered_rows = True

    def __init__(self, init_scale: float = 1.0):
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
            raise SpecError(f"HierarchicalAR1 `init_scale` must be a positive finite number, got {init_scale!r}.")
        self.init_scale = float(init_scale)

    # ---- priors -------------------------------------------------------------------------------------------
    def sample_global(self, n: int, generator: torch.Generator) -> Tensor:
        """(n, G) draws of eq. 17's hyperpriors, columns in the order of GLOBAL_NAMES."""
        loc = torch.tensor([m for m, _ in _MEAN_PRIORS])
        scale = torch.tensor([s for _, s in _MEAN_PRIORS])
        mean = loc + scale * torch.randn(n, 5, generator=generator)
        sd = torch.tensor(_SD_PRIOR_SCALES) * torch.randn(n, 5, generator=generator).abs()
        return torch.stack([mean, sd], -1).reshape(n, 10)

    def sample_local(self, global_params: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        """(B, G) -> (B, J, L) local parameters; sigma_j = exp(Normal(mu_log_sigma, sd_log_sigma))."""
        mean, sd = global_params[:, None, 0::2], global_params[:, None, 1::2]
        eta = mean + sd * torch.randn(global_params.shape[0], n_groups, 5, generator=generator)
        return torch.cat([eta[..., :4], eta[..., 4:].exp()], -1)

    def log_prior_global(self, global_params: Tensor) -> Tensor:
        """log p(tau): (..., G) -> (...), normalized (half-normal densities include log 2)."""
        mean, sd = global_params[..., 0::2], global_params[..., 1::2]
        loc = mean.new_tensor([m for m, _ in _MEAN_PRIORS])
        lp = _normal_logpdf(mean, loc, mean.new_tensor([s for _, s in _MEAN_PRIORS])).sum(-1)
        return lp + (_normal_logpdf(sd, 0.0, sd.new_tensor(_SD_PRIOR_SCALES)) + _LOG_2).sum(-1)

    def log_prior_local(self, local_params: Tensor, global_params: Tensor) -> Tensor:
        """log p(lambda_j | tau) on the constrained scale: (..., J, L), (..., G) -> (..., J).

        sigma_j is log-normal, so its density includes the Jacobian -log(sigma_j).
        """
        mean, sd = global_params[..., None, 0::2], global_params[..., None, 1::2]
        log_sigma = local_params[..., 4:].log()
        eta = torch.cat([local_params[..., :4], log_sigma], -1)
        return _normal_logpdf(eta, mean, sd).sum(-1) - log_sigma[..., 0]

    # ---- data ---------------------------------------------------------------------------------------------
    def sample_covariates(self, row_mask: Tensor, generator: torch.Generator) -> Tensor:
        """(B, J, N) -> (B, J, N, 2) standard normal u, v, standardized within each series (zeros in padding)."""
        x = torch.randn(*row_mask.shape, 2, generator=generator)
        return _standardize_series(x, row_mask)

    def simulate(
        self, global_params: Tensor, local_params: Tensor, design: GroupedBatch, generator: torch.Generator
    ) -> Tensor:
        """(B, G), (B, J, L), design with x (B, J, N, 2) -> y (B, J, N, 1), vectorized over time.

        With c_1 = y_1 and c_t = alpha + gamma u_{t-1} + delta v_{t-1} + sigma eps_t, the recursion
        y_t = beta y_{t-1} + c_t unrolls to y_t = sum_{s <= t} beta^(t - s) c_s: one batched matrix product.
        """
        if design.x is None:
            raise SpecError("HierarchicalAR1.simulate needs covariates `design.x` (B, J, N, 2); none were given.")
        alpha, beta, gamma, delta, sigma = local_params.unbind(-1)  # (B, J) each
        n = design.row_mask.shape[-1]
        noise = torch.randn(design.row_mask.shape, generator=generator)
        u, v = design.x[..., :-1, 0], design.x[..., :-1, 1]
        steps = alpha[..., None] + gamma[..., None] * u + delta[..., None] * v + sigma[..., None] * noise[..., 1:]
        c = torch.cat([self.init_scale * noise[..., :1], steps], -1)  # (B, J, N)
        lag = torch.arange(n)[:, None] - torch.arange(n)[None, :]  # t - s
        powers = beta[..., None, None] ** lag.clamp_min(0).to(beta.dtype) * (lag >= 0)  # (B, J, N, N)
        return (powers @ c[..., None]) * design.row_mask[..., None].to(c.dtype)

    def log_likelihood(self, batch: GroupedBatch, global_params: Tensor, local_params: Tensor) -> Tensor:
        """Conditional log likelihood of each series given its first observation: sum over t of
        log Normal(y_{t+1} | alpha_j + beta_j y_t + gamma_j u_t + delta_j v_t, sigma_j).

        Arguments:
            batch: y (B, J, N, 1), x (B, J, N, 2), masks; real rows first in every group.
            global_params: (..., B, G) (unused: the likelihood depends on the local parameters only).
            local_params: (..., B, J, L), e.g. (S, B, J, L) for S draws.
        Returns:
            (..., B, J) log densities (0 for padded groups and for series of one row).
        """
        if batch.y is None or batch.x is None:
            raise DataError("`batch` needs responses `y` and covariates `x` (u, v) for the AR(1) likelihood.")
        y, x = batch.y[..., 0], batch.x
        alpha, beta, gamma, delta, sigma = (p[..., None] for p in local_params.unbind(-1))
        mean = alpha + beta * y[..., :-1] + gamma * x[..., :-1, 0] + delta * x[..., :-1, 1]
        lp = _normal_logpdf(y[..., 1:], mean, sigma)
        return (lp * batch.row_mask[..., 1:].to(lp.dtype)).sum(-1)

    def to_config(self) -> dict[str, Any]:
        # "module" lets mlnpe.core.models.model_from_config import this file, which registers the class in MODELS.
        return {"class": "HierarchicalAR1", "module": __name__, "kwargs": {"init_scale": self.init_scale}}


MODELS.setdefault("HierarchicalAR1", HierarchicalAR1)


def _standardize_series(x: Tensor, row_mask: Tensor) -> Tensor:
    """Per-series mean 0, population sd 1 of each column over the real rows: (B, J, N, d), (B, J, N) -> same."""
    w = row_mask[..., None].to(x.dtype)
    n = w.sum(-2, keepdim=True).clamp_min(1.0)
    centred = (x - (x * w).sum(-2, keepdim=True) / n) * w
    sd = ((centred * centred).sum(-2, keepdim=True) / n).sqrt()
    return centred / sd.clamp_min(1e-12)  # a one-row series is all zeros


# ------------------------------------------------------------------------------------------------------------
# observed data


def _first_row(frame: Any, bad: Any) -> Any:
    return frame.index[np.flatnonzero(np.asarray(bad))[0]]


def validate_ar1_data(
    df: Any, group: str = "group", time: str = "time", y: str = "y", covariates: Sequence[str] = ("u", "v")
) -> Any:
    """Checks a long data frame of AR(1) series; returns it unchanged when it is valid.

    Requirements: the columns exist; no missing values; y and the covariates numeric; time integer-valued (e.g.
    years); within every group the times increase by exactly 1 from row to row (rows of different groups may be
    interleaved); every series has at least 2 rows. Nothing is dropped or reordered silently.

    Arguments:
        df: pandas DataFrame with one row per (group, time).
        group, time, y: column names.
        covariates: the names of the two covariate columns (u, v); row t's values predict y at t + 1.
    Returns:
        df.
    Raises:
        DataError: naming the column (argument), the offending value and group, and the fix.
    """
    if not hasattr(df, "columns"):
        raise DataError(f"`df` must be a pandas DataFrame, got {type(df).__name__}. Build one with pd.DataFrame(...).")
    covariates = list(covariates)
    if len(covariates) != 2:
        raise DataError(
            f"`covariates` must name exactly two columns (u, v) as in the model, got {covariates!r}. Add a column "
            "of zeros for a missing covariate."
        )
    wanted = {"group": group, "time": time, "y": y, "covariates[0]": covariates[0], "covariates[1]": covariates[1]}
    missing = [f"`{arg}` = {col!r}" for arg, col in wanted.items() if col not in df.columns]
    if missing:
        raise DataError(f"column(s) not found: {', '.join(missing)}; available columns: {list(df.columns)}.")
    for arg, col in wanted.items():
        na = df[col].isna().to_numpy()
        if na.any():
            raise DataError(
                f"column {col!r} (`{arg}`) has {int(na.sum())} missing values (first at row {_first_row(df, na)!r}). "
                "mlnpe never drops rows silently, and a dropped row would leave a gap in the series: impute them "
                "or split the series."
            )
    for arg in ("y", "covariates[0]", "covariates[1]", "time"):
        col = wanted[arg]
        if df[col].dtype == object or df[col].dtype.kind not in "biuf":
            raise DataError(f"column {col!r} (`{arg}`) must be numeric, got dtype {df[col].dtype}. Convert it first.")
    times = df[time].to_numpy(dtype=np.float64)
    fractional = times != np.round(times)
    if fractional.any():
        raise DataError(
            f"column {time!r} (`time`) must hold integer time points (e.g. years), got {times[fractional][0]:g} at "
            f"row {_first_row(df, fractional)!r}. Recode time as consecutive integers."
        )
    step = df.groupby(group, sort=False)[time].diff().to_numpy(dtype=np.float64)  # NaN at each group's first row
    for bad, what, fix in (
        (step == 0, "a repeated time", "keep one row per (group, time)"),
        (step < 0, "time running backwards (unsorted rows)", f"sort the rows: df.sort_values([{group!r}, {time!r}])"),
        (step > 1, "a gap in time", "impute the missing time points, or split the series at the gap"),
    ):
        if bad.any():
            i = np.flatnonzero(bad)[0]
            raise DataError(
                f"column {time!r} (`time`) has {what} in group {df[group].iloc[i]!r}: time {times[i]:g} at row "
                f"{df.index[i]!r} follows time {times[i] - step[i]:g}. The AR(1) likelihood needs consecutive "
                f"times 1 apart within each group: {fix}."
            )
    sizes = df.groupby(group, sort=True).size()
    short = sizes[sizes < 2]
    if len(short):
        raise DataError(
            f"column {group!r} (`group`): {len(short)} series with fewer than 2 rows (first: group "
            f"{short.index[0]!r}); an AR(1) series needs at least one transition y_t -> y_t+1. Drop those groups."
        )
    return df


def ar1_data(
    df: Any,
    group: str = "group",
    time: str = "time",
    y: str = "y",
    covariates: Sequence[str] = ("u", "v"),
    standardize: bool = True,
) -> GroupedData:
    """Builds the GroupedData of AR(1) series from a long data frame (checked by :func:`validate_ar1_data`).

    Groups are ordered by their sorted labels; rows keep their time order.

    Arguments:
        df: pandas DataFrame with one row per (group, time).
        group, time, y: column names.
        covariates: the two covariate columns (u, v).
        standardize: standardize each covariate within each series (mean 0, population sd 1), as the simulated
            training covariates are; with False the covariates are used as given.
    Returns:
        GroupedData with y (rows, 1) and x (rows, 2), ready for ``npe.sample`` and :func:`fit_ar1_stan`.
    Raises:
        DataError: see :func:`validate_ar1_data`; also a covariate constant within a series when standardizing.
    """
    validate_ar1_data(df, group, time, y, covariates)
    covariates = list(covariates)
    ys, xs, levels = [], [], []
    for level, rows in df.groupby(group, sort=True):
        x = rows[covariates].to_numpy(dtype=np.float64)
        if standardize:
            sd = x.std(axis=0)
            if (sd == 0).any():
                col = covariates[int(np.argmin(sd))]
                raise DataError(
                    f"column {col!r} (`covariates`) is constant within group {level!r}, so it cannot be standardized. "
                    "Pass `standardize=False` (the model was trained on standardized covariates) or drop the group."
                )
            x = (x - x.mean(axis=0)) / sd
        ys.append(rows[y].to_numpy(dtype=np.float64))
        xs.append(x)
        levels.append(level)
    return GroupedData.from_groups(ys, xs, levels, y_names=(y,), x_names=tuple(covariates))


# ------------------------------------------------------------------------------------------------------------
# the estimator


def _signed_log(x: Tensor) -> Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


class AR1Summary(nn.Module):
    """Local summary of one series: a recurrent network (mlnpe.networks.summaries.RecurrentSummary) beside the moments of its
    transitions and the least-squares fit they imply.

    The moments are the means and the centred covariance (upper triangle) of (y_t+1, y_t, u_t, v_t) over the
    series' transitions: given the count, these are the sufficient statistics of the conditional likelihood,
    which a recurrent network alone learns slowly on a CPU budget. From them the summary also solves the series'
    regression of y_t+1 on (1, y_t, u_t, v_t) (ridge 1e-2, as the moments are of standardized rows): the
    intercept, the three slopes, the log residual variance on its T - 5 degrees of freedom and log(T - 1). Those
    are the estimates a posterior of (alpha_j, beta_j, gamma_j, delta_j, sigma_j) shrinks; an MLP finds them
    from the moments (a matrix inverse) only after long training. Everything is signed-log compressed
    (sign(v) log(1 + |v|)), so explosive simulated series (|beta_j| > 1, legal under the prior) stay bounded.
    These moments and fits are the summary's `fixed_features` (mlnpe.networks.summaries): the estimator's regression shift
    regresses the hyperparameters on their mean and variance over series. The last 2 x 4 outputs are the
    coefficients unclipped but bounded to [-10, 10], then the log of their sampling variances (`group_estimates`):
    the estimator turns their spread over series minus the mean sampling variance into a moment estimate of each
    group-level variance, which the spread alone overstates for short series.

    Arguments:
        in_features: row dimension (3: y, u, v; standardized by the estimator).
        summary_dim: output dimension of the recurrent part (before its log n).
        hidden: recurrent state size.
        cell: "lstm" or "gru".
    """

    def __init__(self, in_features: int = 3, summary_dim: int = 16, hidden: int = 32, cell: str = "gru"):
        super().__init__()
        self.rnn = RecurrentSummary(in_features, summary_dim, hidden, cell)
        pairs = torch.triu_indices(in_features + 1, in_features + 1)
        self.register_buffer("pair_a", pairs[0], persistent=False)
        self.register_buffer("pair_b", pairs[1], persistent=False)
        k = in_features + 1  # coefficients of the series' regression: intercept and slopes
        self.fixed_features = k + pairs.shape[1] + k + 2 + 2 * k  # everything after the network
        self.out_features = self.rnn.out_features + self.fixed_features
        # the raw coefficients (the last 2k outputs but k) beside their log sampling variances (the last k)
        first = self.out_features - 2 * k
        self.group_estimates = [(first + i, first + k + i) for i in range(k)]

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """x: (sets, steps, d), mask: (sets, steps), real steps first -> (sets, out_features)."""
        h = self.rnn(_signed_log(x), mask)
        pairs = torch.cat([x[:, 1:, :1], x[:, :-1]], -1)  # (sets, steps - 1, d + 1): y_t+1, then row t
        w = mask[:, 1:, None].to(x.dtype)
        n = w.sum(1).clamp_min(1.0)
        mean = (pairs * w).sum(1) / n
        dev = (pairs - mean[:, None]) * w
        cov = (dev[..., self.pair_a] * dev[..., self.pair_b]).sum(1) / n
        full = torch.einsum("snd,sne->sde", dev, dev) / n[..., None]
        d = full.shape[-1] - 1
        cxx = full[:, 1:, 1:] + 1e-2 * torch.eye(d, dtype=x.dtype, device=x.device)
        inverse = torch.linalg.inv(cxx)
        slopes = (inverse @ full[:, 1:, :1])[..., 0]
        intercept = mean[:, :1] - (slopes * mean[:, 1:]).sum(-1, keepdim=True)
        residual = (full[:, 0, 0] - (full[:, 0, 1:] * slopes).sum(-1)).clamp_min(0.0)
        residual = residual * n[:, 0] / (n[:, 0] - d - 1).clamp_min(1.0)
        fit = [intercept, slopes, torch.log(residual + 1e-4)[:, None], torch.log(n)]
        # sampling variances of the coefficients (residual variance times the diagonal of (X'X)^-1), for the
        # estimator's moment estimates of the group-level variances (`group_estimates`, mlnpe.networks.summaries)
        x_mean = mean[:, 1:]
        unit = torch.cat([(1.0 + torch.einsum("sd,sde,se->s", x_mean, inverse, x_mean))[:, None],
                          torch.diagonal(inverse, dim1=-2, dim2=-1)], -1) / n
        raw = torch.cat(fit[:2], -1).clamp(-10.0, 10.0)
        log_var = torch.log(residual[:, None] * unit + 1e-6)
        return torch.cat([h, _signed_log(torch.cat([mean, cov], -1)), _signed_log(torch.cat(fit[:2], -1)), *fit[2:],
                          raw, log_var], -1)


def ar1_network(**overrides: Any) -> NetworkConfig:
    """Network sizes for the AR(1) case study: recurrent local summary (:class:`AR1Summary`, with
    `summary.local_kind` its cell and `summary.row_hidden` its state size), set-transformer global summary (width
    `summary.hidden`), neural spline flows.

    Arguments:
        overrides: parts to change, as in `NetworkConfig.merged` (e.g. ``summary={"hidden": 16}``).
    """
    base = NetworkConfig(
        summary=SummaryConfig(local_kind="gru", global_kind="set_transformer", hidden=32, depth=2, row_hidden=32,
                              local_dim=16, global_dim=32),
        global_flow=FlowConfig(transforms=4, hidden=(64, 64)),
        local_flow=FlowConfig(transforms=3, hidden=(64, 64)),
    )
    return base.merged(overrides)


def _local_summary(network: NetworkConfig) -> AR1Summary:
    kind = network.summary.local_kind
    if kind not in ("lstm", "gru"):
        raise ConfigError(
            f"`network.summary.local_kind` must be 'lstm' or 'gru' for time series (rows are ordered), got {kind!r}."
        )
    if network.log_inputs:
        raise ConfigError("`network.log_inputs` must be empty: AR1Summary applies its own signed-log transform.")
    return AR1Summary(3, network.summary.local_dim, network.summary.row_hidden, kind)


def ar1_estimator(
    model: HierarchicalAR1 | None = None,
    groups: tuple[int, int] = (10, 30),
    rows: tuple[int, int] = (5, 30),
    network: NetworkConfig | None = None,
    seed: int = 0,
    pilot_size: int = 1024,
) -> MultilevelNPE:
    """An untrained ML-NPE for the hierarchical AR(1), amortized over J in `groups` and T_j in `rows` (eq. 22).

    Arguments:
        model: the model (default HierarchicalAR1()).
        groups: (min, max) number of series per simulated dataset (paper: 10 to 30).
        rows: (min, max) length of each simulated series (paper: 5 to 30); at least 2.
        network: network sizes (default :func:`ar1_network`).
        seed: seed of the network initialization and the pilot simulations.
        pilot_size: pilot datasets for the standardization.
    Returns:
        A MultilevelNPE; reload a saved one with :func:`load_ar1_estimator`.
    Raises:
        ConfigError: a series length below 2, or a network without a recurrent local summary.
    """
    model = model or HierarchicalAR1()
    network = network or ar1_network()
    if int(rows[0]) < 2:
        raise ConfigError(f"`rows` must start at 2 or more (an AR(1) series needs a transition), got {rows!r}.")
    with torch.random.fork_rng():  # seeded summary initialization without touching the global RNG
        torch.manual_seed(seed)
        summary = _local_summary(network)
    npe = MultilevelNPE(model, groups, rows, network, local_summary=summary, seed=seed, pilot_size=pilot_size)
    return npe


def load_ar1_estimator(path: str | os.PathLike) -> MultilevelNPE:
    """Loads an estimator saved from :func:`ar1_estimator` (the model is rebuilt from the saved config).

    Raises:
        LoadError: missing or corrupt files (see MultilevelNPE.load).
    """
    network = read_config(Path(path))[1]
    return MultilevelNPE.load(path, local_summary=_local_summary(network))


# ------------------------------------------------------------------------------------------------------------
# posterior predictive


def _transitions(data: GroupedData) -> dict[str, np.ndarray]:
    """Every transition y_t -> y_t+1 of every series: group index, position of y_t+1, y_t+1, y_t, u_t, v_t."""
    if data.x is None or data.x_dim != 2 or data.y_dim != 1:
        raise DataError(
            f"`data` must have one response and two covariates (u, v), got y_dim={data.y_dim}, x_dim={data.x_dim}. "
            "Build it with ar1_data(df, ...)."
        )
    sizes = data.n_rows
    if (sizes < 2).any():
        j = int(np.argmax(sizes < 2))
        raise DataError(f"group {data.levels[j]!r} of `data` has {sizes[j]} row; an AR(1) series needs at least 2.")
    group = np.repeat(np.arange(data.n_groups), sizes - 1)
    step = np.concatenate([np.arange(1, n) for n in sizes])
    row = data.offsets[group] + step  # index of y_t+1 among all rows
    return {
        "group": group, "step": step, "y": data.y[row, 0], "y_lag": data.y[row - 1, 0],
        "u_lag": data.x[row - 1, 0], "v_lag": data.x[row - 1, 1],
    }  # fmt: skip


def posterior_predictive(
    draws: PosteriorDraws, data: GroupedData, *, seed: int | None = None
) -> dict[str, np.ndarray]:
    """One-step-ahead posterior predictive draws, as in the paper's Figure 2.

    y_rep[s, m] ~ Normal(alpha_j + beta_j y_t + gamma_j u_t + delta_j v_t, sigma_j) with draw s's parameters,
    given the OBSERVED y_t, for every transition m (series j, y_t -> y_t+1).

    Arguments:
        draws: posterior draws of the dataset (from mlnpe or :func:`fit_ar1_stan`).
        data: the dataset.
        seed: seed of the predictive noise.
    Returns:
        dict with ``y_rep`` (draws, M), ``y`` (M,) observed y_t+1, ``group`` (M,) series index and ``step`` (M,)
        the position of y_t+1 within its series (1 = second row).
    """
    if tuple(draws.local_names) != LOCAL_NAMES or len(draws.levels) != data.n_groups:
        raise DataError(
            f"`draws` must hold the AR(1) local parameters {list(LOCAL_NAMES)} for the {data.n_groups} groups of "
            f"`data`, got {list(draws.local_names)} for {len(draws.levels)} groups."
        )
    t = _transitions(data)
    p = draws.local_draws[:, t["group"]]  # (draws, M, L)
    mean = p[..., 0] + p[..., 1] * t["y_lag"] + p[..., 2] * t["u_lag"] + p[..., 3] * t["v_lag"]
    y_rep = mean + p[..., 4] * np.random.default_rng(seed).standard_normal(mean.shape)
    return {"y_rep": y_rep, "y": t["y"], "group": t["group"], "step": t["step"]}


# ------------------------------------------------------------------------------------------------------------
# Stan reference


def ar1_stan_program(model: HierarchicalAR1 | None = None) -> str:
    """The Stan program of the model: same priors (eq. 17), non-centred local effects, likelihood conditional
    on each series' first observation. Local vectors carry a ``_j`` suffix in Stan (``gamma`` and ``beta`` are
    Stan function names); :func:`fit_ar1_stan` renames them.
    """
    del model  # the priors are fixed by eq. 17; the argument keeps the signature open for variants
    from ..formula.stancode import stan_real

    means = "\n".join(f"  real mu_{h};\n  real<lower=0> sd_{h};" for h in _HYPER)
    locals_ = "\n".join(
        f"  vector[J] {name} = mu_{h} + sd_{h} * z[{k + 1}]';"
        for k, (h, name) in enumerate(zip(_HYPER, ("alpha_j", "beta_j", "gamma_j", "delta_j", "log_sigma_j")))
    )
    priors = "\n".join(
        f"  mu_{h} ~ normal({stan_real(m)}, {stan_real(s)});\n  sd_{h} ~ normal(0, {stan_real(sd)});"
        for h, (m, s), sd in zip(_HYPER, _MEAN_PRIORS, _SD_PRIOR_SCALES)
    )
    return f"""// Hierarchical AR(1) of Habermann et al. (2024), eqs. 16-17, written by mlnpe.case_studies.ar1.
// Non-centred local effects; the likelihood is conditional on each series' first observation.
data {{
  int<lower=1> J;                         // series
  int<lower=1> M;                         // transitions y[t] -> y[t + 1] over all series
  array[M] int<lower=1, upper=J> group;   // series of each transition
  vector[M] y;                            // y[t + 1]
  vector[M] y_lag;                        // y[t]
  vector[M] u_lag;                        // u[t]
  vector[M] v_lag;                        // v[t]
}}
parameters {{
{means}
  matrix[5, J] z;
}}
transformed parameters {{
{locals_}
}}
model {{
{priors}
  to_vector(z) ~ std_normal();
  y ~ normal(alpha_j[group] + beta_j[group] .* y_lag + gamma_j[group] .* u_lag + delta_j[group] .* v_lag,
             exp(log_sigma_j[group]));
}}
generated quantities {{
  vector[J] sigma_j = exp(log_sigma_j);
}}
"""


def ar1_stan_data(data: GroupedData) -> dict[str, Any]:
    """The Stan data dict of a dataset: its transitions, with 1-based series indices."""
    t = _transitions(data)
    return {
        "J": int(data.n_groups), "M": int(t["y"].size), "group": (t["group"] + 1).tolist(), "y": t["y"].tolist(),
        "y_lag": t["y_lag"].tolist(), "u_lag": t["u_lag"].tolist(), "v_lag": t["v_lag"].tolist(),
    }  # fmt: skip


@dataclass
class AR1StanFit:
    """A Stan fit of the hierarchical AR(1).

    Attributes:
        draws: PosteriorDraws with mlnpe's names (chains stacked, chain-major).
        diagnostics: ``divergences``, ``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``, ``compile_seconds``,
            ``sample_seconds``, ``seconds``, ``backend``, ``chains``.
        program: the Stan program.
    """

    draws: PosteriorDraws
    diagnostics: dict[str, Any]
    program: str = field(repr=False, default="")


def fit_ar1_stan(
    data: GroupedData,
    model: HierarchicalAR1 | None = None,
    *,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 1,
    adapt_delta: float = 0.9,
    backend: str = "auto",
) -> AR1StanFit:
    """Samples the AR(1) posterior of a dataset with Stan's NUTS (PyStan or cmdstanpy, by :func:`mlnpe.stan.sample`).

    Arguments:
        data: the dataset (see :func:`ar1_data`).
        model: the model (its priors are eq. 17's).
        chains, warmup, draws: chains, warm-up and kept iterations per chain.
        seed: sampler seed.
        adapt_delta: target acceptance rate in (0, 1).
        backend: "auto", "pystan" or "cmdstanpy".
    Returns:
        An AR1StanFit whose draws have the names of the mlnpe draws.
    Raises:
        ConfigError: bad sampler settings. DataError: data that do not fit the model.
        ImportError: no Stan backend (the message gives the install command).
    Warns:
        StanDiagnosticWarning: divergences or R-hat > 1.01.
    """
    from ..stan.backends import sample, warn_if_unreliable

    program, sdata = ar1_stan_program(model), ar1_stan_data(data)
    stan_locals = ["alpha_j", "beta_j", "gamma_j", "delta_j", "sigma_j"]
    fit = sample(
        program, sdata, variables=[*GLOBAL_NAMES, *stan_locals], chains=chains, warmup=warmup, draws=draws,
        seed=seed, adapt_delta=adapt_delta, backend=backend, warn=False,
    )
    variables = fit.stan_variables
    global_draws = np.stack([variables[name].reshape(-1) for name in GLOBAL_NAMES], -1)
    local_draws = np.stack([variables[name].reshape(-1, data.n_groups) for name in stan_locals], -1)
    result = PosteriorDraws(global_draws, local_draws, GLOBAL_NAMES, LOCAL_NAMES, tuple(data.levels))
    diagnostics = {**fit.diagnostics, "chains": int(chains)}  # chains was checked by sample()
    warn_if_unreliable(diagnostics)
    return AR1StanFit(result, diagnostics, program)
