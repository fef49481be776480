"""Hierarchical diffusion decision model (DDM) of Habermann et al. (arXiv 2408.13230, section 3.3, eqs. 23-26).

Parameterization (the same as Stan's ``wiener_lpdf``):

- Evidence starts at ``beta * alpha`` between a LOWER boundary at 0 and an UPPER boundary at ``alpha``; the
  diffusion coefficient is 1 and time is in seconds. ``beta`` is the relative starting point measured from the
  lower boundary (beta > 0.5: closer to the upper boundary).
- Drift ``nu`` > 0 pushes towards the UPPER boundary.
- A trial is ``y = (rt, response)``: rt in seconds (decision time + non-decision time ``t0``) and response 1 for
  the upper boundary, 0 for the lower one.
- For the lexical decision data we use stimulus (response) coding: upper = "word", lower = "nonword". The
  model has one drift per subject, so drift measures a bias towards "word" and ``beta`` a starting-point bias,
  as in the paper's Figure 7. (Accuracy coding would need drifts near 3 to give the data's 95.6 % correct
  responses, eight prior sds above the paper's prior mean of 0.5; with stimulus coding the data's 47.8 % "word"
  responses need a drift near -0.1, within two prior sds.)

Priors (:class:`DDMPriors`; the paper's eq. 23 prints the threshold and non-decision time priors without the
log; on the natural scale Normal(0, 0.05) would make thresholds of about 0 and is impossible):

- ``nu_j ~ Normal(mu_nu, sigma_nu)``, ``mu_nu ~ Normal(0.5, 0.3)``, ``log sigma_nu ~ Normal(-1, 1)``
- ``log alpha_j ~ Normal(mu_log_alpha, sigma_log_alpha)``, ``mu_log_alpha ~ Normal(0, 0.05)``,
  ``log sigma_log_alpha ~ Normal(-3, 1)``
- ``log t0_j ~ Normal(mu_log_t0, sigma_log_t0)``, ``mu_log_t0 ~ Normal(-1, 0.3)``,
  ``log sigma_log_t0 ~ Normal(-1, 0.3)``
- shared model: ``beta ~ Beta(50, 50)``; subject-level model (eq. 25): ``beta_j ~ BetaProportion(mu_beta, xi)``,
  ``mu_beta ~ Beta(50, 50)``, ``xi ~ Gamma(shape 5, scale 3)`` (mean 15). Read as shape 5 and RATE 3 (mean 1.67)
  the prior would make beta_j U-shaped (30 % of subjects with beta_j outside [0.1, 0.9], i.e. nearly
  instantaneous responses at one key; 0.5 % under the scale reading) and would cap xi near 5, which these data
  contradict (every subject gives 45-51 % "word" responses); the scale reading is the plausible one. Either
  is one argument away: ``DDMPriors(xi=(5, 1 / 3))`` is the rate reading.

Training: ``MultilevelNPE(model, groups, rows, network=ddm_network())``, trained on simulations and, for the data
at hand, ``train(config, observed=data)``: the Wiener density gives the exact joint density, so every step adds the
reverse KL of the amortized posterior for the data, their leave-one-subject-out subsets and bootstrap resamples
(block 4 against Stan: 0.04 median and 0.13 worst Stan sds off, against 0.24 and 1.78 on simulations alone).

Contents: the two models, the lexical decision data (:func:`load_speed_acc`) with validation
(:func:`check_ddm_data`), Stan programs and a PyStan fit (:func:`fit_stan_ddm`), and leave-one-group-out
cross-validation (:func:`logo_elpd`, :func:`compare_logo`). The exact first-passage sampler
(:func:`sample_wiener`), the exact Wiener first-passage-time log density (:func:`wiener_log_density`, Navarro &
Fuss 2009 series) and the analytic moments live in :mod:`mlnpe.case_studies.ddm_wiener` and are re-exported
here.
"""

from __future__ import annotations

import csv
import math
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.data import GroupedBatch, GroupedData
from ..core.draws import PosteriorDraws
from ..errors import ConfigError, DataError
from ..networks.config import FlowConfig, NetworkConfig, ShiftConfig, StatisticsConfig, SummaryConfig
from ..inference.logo import LogoRefit, LogoResult, compare_logo, logo
from ..inference.refine import RefineConfig, refine
from ..core.spec import ParamSpec, TwoLevelModel
from .ddm_wiener import mean_decision_time, sample_wiener, upper_probability, wiener_log_density

__all__ = [
    "DDMPriors",
    "HierarchicalDDM",
    "HierarchicalDDMBeta",
    "DDMDataWarning",
    "sample_wiener",
    "wiener_log_density",
    "upper_probability",
    "mean_decision_time",
    "ddm_data",
    "check_ddm_data",
    "load_speed_acc",
    "ddm_network",
    "stan_program_ddm",
    "stan_data_ddm",
    "fit_stan_ddm",
    "LogoResult",
    "logo_elpd",
    "compare_logo",
    "MIN_RT",
]

MIN_RT = 0.15
"""Default minimum plausible reaction time (s): faster responses are anticipations that no plausible
non-decision time (encoding plus motor time, rarely below 0.15-0.2 s) explains."""

_LOG_2PI = math.log(2 * math.pi)


class DDMDataWarning(UserWarning):
    """Trials were excluded while loading DDM data (the warning says how many and why)."""


# ----------------------------------------------------------------------------------------------------------
# Priors and models


@dataclass(frozen=True)
class DDMPriors:
    """Hyperprior parameters of eqs. 23 and 25; pairs are (mean, sd) of a normal, Beta (a, b), Gamma (shape, scale).

    Attributes:
        mu_nu: prior of the population mean drift.
        mu_log_alpha: prior of the population mean log threshold.
        mu_log_t0: prior of the population mean log non-decision time (seconds).
        log_sigma_nu, log_sigma_log_alpha, log_sigma_log_t0: normal priors of the log population sds.
        beta: Beta prior of the shared starting point (shared model).
        mu_beta: Beta prior of the mean starting point (subject-level model).
        xi: Gamma (shape, SCALE) prior of the concentration of beta_j (subject-level model); see the module
            docstring for why scale and not rate.
    """

    mu_nu: tuple[float, float] = (0.5, 0.3)
    mu_log_alpha: tuple[float, float] = (0.0, 0.05)
    mu_log_t0: tuple[float, float] = (-1.0, 0.3)
    log_sigma_nu: tuple[float, float] = (-1.0, 1.0)
    log_sigma_log_alpha: tuple[float, float] = (-3.0, 1.0)
    log_sigma_log_t0: tuple[float, float] = (-1.0, 0.3)
    beta: tuple[float, float] = (50.0, 50.0)
    mu_beta: tuple[float, float] = (50.0, 50.0)
    xi: tuple[float, float] = (5.0, 3.0)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            pair = tuple(float(x) for x in value)
            if len(pair) != 2 or not all(math.isfinite(x) for x in pair) or pair[1] <= 0:
                raise ConfigError(f"DDMPriors `{name}` must be a pair of finite numbers with a positive second, got {value!r}.")
            if name in ("beta", "mu_beta", "xi") and pair[0] <= 0:
                raise ConfigError(f"DDMPriors `{name}` must have positive parameters, got {value!r}.")
            object.__setattr__(self, name, pair)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in asdict(self).items()}


def _normal_lpdf(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(torch.as_tensor(scale, dtype=x.dtype)) - 0.5 * _LOG_2PI


def _lognormal_lpdf(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    return _normal_lpdf(torch.log(x), loc, scale) - torch.log(x)


def _beta_lpdf(x: Tensor, a: Tensor | float, b: Tensor | float) -> Tensor:
    a, b = torch.as_tensor(a, dtype=x.dtype), torch.as_tensor(b, dtype=x.dtype)
    return (a - 1) * torch.log(x) + (b - 1) * torch.log1p(-x) - (torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b))


def _gamma_lpdf(x: Tensor, shape: float, scale: float) -> Tensor:
    return (shape - 1) * torch.log(x) - x / scale - math.lgamma(shape) - shape * math.log(scale)


def _numpy_rng(generator: torch.Generator) -> np.random.Generator:
    """A numpy generator seeded from the torch one (torch's Beta and Gamma samplers take no generator)."""
    return np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))


class HierarchicalDDM(TwoLevelModel):
    """Eq. 23: subject-level drift, threshold and non-decision time; one shared starting point beta.

    Global parameters (in order): mu_nu, mu_log_alpha, mu_log_t0, sigma_nu, sigma_log_alpha, sigma_log_t0,
    beta. Local parameters of subject j: nu, alpha, t0 (alpha and t0 on the natural scale). Rows: (rt in
    seconds, response 1 = upper / 0 = lower). See the module docstring for the parameterization.

    Arguments:
        priors: hyperprior parameters (default: the paper's, xi read as shape/scale).

    Example:
        >>> from mlnpe.core.spec import simulate_batch
        >>> sims = simulate_batch(HierarchicalDDM(), 2, (10, 12), (5, 8), torch.Generator().manual_seed(0))
        >>> tuple(sims.batch.y.shape[-1:])
        (2,)
    """

    _hyper = (
        ParamSpec("mu_nu", "real"),
        ParamSpec("mu_log_alpha", "real"),
        ParamSpec("mu_log_t0", "real"),
        ParamSpec("sigma_nu", "positive"),
        ParamSpec("sigma_log_alpha", "positive"),
        ParamSpec("sigma_log_t0", "positive"),
    )
    global_params = (*_hyper, ParamSpec("beta", "unit_interval"))
    local_params = (ParamSpec("nu", "real"), ParamSpec("alpha", "positive"), ParamSpec("t0", "positive"))
    y_dim = 2
    y_names = ("rt", "response")

    def __init__(self, priors: DDMPriors | dict[str, Any] | None = None):
        self.priors = priors if isinstance(priors, DDMPriors) else DDMPriors(**(priors or {}))

    # ---- priors -------------------------------------------------------------------------------------------
    def _sample_hyper(self, n: int, generator: torch.Generator) -> Tensor:
        p = self.priors
        z = torch.randn(n, 6, generator=generator, dtype=torch.float64)
        loc = torch.tensor([p.mu_nu[0], p.mu_log_alpha[0], p.mu_log_t0[0], p.log_sigma_nu[0],
                            p.log_sigma_log_alpha[0], p.log_sigma_log_t0[0]], dtype=torch.float64)  # fmt: skip
        scale = torch.tensor([p.mu_nu[1], p.mu_log_alpha[1], p.mu_log_t0[1], p.log_sigma_nu[1],
                              p.log_sigma_log_alpha[1], p.log_sigma_log_t0[1]], dtype=torch.float64)  # fmt: skip
        h = loc + scale * z
        return torch.cat([h[:, :3], h[:, 3:].exp()], -1)

    def _log_prior_hyper(self, g: Tensor) -> Tensor:
        p = self.priors
        lp = _normal_lpdf(g[..., 0], *p.mu_nu) + _normal_lpdf(g[..., 1], *p.mu_log_alpha)
        lp = lp + _normal_lpdf(g[..., 2], *p.mu_log_t0) + _lognormal_lpdf(g[..., 3], *p.log_sigma_nu)
        return lp + _lognormal_lpdf(g[..., 4], *p.log_sigma_log_alpha) + _lognormal_lpdf(g[..., 5], *p.log_sigma_log_t0)

    def _sample_subjects(self, g: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        """(B, G) -> (B, J, 3): nu, alpha, t0."""
        z = torch.randn(g.shape[0], n_groups, 3, generator=generator, dtype=g.dtype)
        nu = g[:, None, 0] + g[:, None, 3] * z[..., 0]
        alpha = torch.exp(g[:, None, 1] + g[:, None, 4] * z[..., 1])
        t0 = torch.exp(g[:, None, 2] + g[:, None, 5] * z[..., 2])
        return torch.stack([nu, alpha, t0], -1)

    def _log_prior_subjects(self, local: Tensor, g: Tensor) -> Tensor:
        """(..., J, >=3), (..., G) -> (..., J)."""
        g = g[..., None, :]
        lp = _normal_lpdf(local[..., 0], g[..., 0], g[..., 3])
        lp = lp + _lognormal_lpdf(local[..., 1], g[..., 1], g[..., 4])
        return lp + _lognormal_lpdf(local[..., 2], g[..., 2], g[..., 5])

    def sample_global(self, n: int, generator: torch.Generator) -> Tensor:
        beta = torch.as_tensor(_numpy_rng(generator).beta(*self.priors.beta, size=n))
        return torch.cat([self._sample_hyper(n, generator), beta[:, None]], -1).float()

    def sample_local(self, global_params: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        return self._sample_subjects(global_params.double(), n_groups, generator).to(global_params.dtype)

    def log_prior_global(self, global_params: Tensor) -> Tensor:
        g = global_params.double()
        return self._log_prior_hyper(g) + _beta_lpdf(g[..., 6], *self.priors.beta)

    def log_prior_local(self, local_params: Tensor, global_params: Tensor) -> Tensor:
        return self._log_prior_subjects(local_params.double(), global_params.double())

    # ---- likelihood ---------------------------------------------------------------------------------------
    def trial_parameters(self, global_params: Tensor, local_params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(v, a, w, t0), each (..., J) from globals (..., G) and locals (..., J, L)."""
        beta = global_params[..., 6:7].expand_as(local_params[..., 0])
        return local_params[..., 0], local_params[..., 1], beta, local_params[..., 2]

    def simulate(
        self, global_params: Tensor, local_params: Tensor, design: GroupedBatch, generator: torch.Generator
    ) -> Tensor:
        mask = design.row_mask
        v, a, w, t0 = (p[..., None].expand(mask.shape)[mask] for p in self.trial_parameters(global_params, local_params))
        rt, response = sample_wiener(v, a, w, t0, generator)
        y = torch.zeros(*mask.shape, 2)
        y[mask] = torch.stack([rt, response], -1).float()
        return y

    def log_likelihood(self, batch: GroupedBatch, global_params: Tensor, local_params: Tensor) -> Tensor:
        """Exact log p(x_j | lambda_j, omega) (Wiener density, -inf if a rt is below t0_j): (S, B, J)."""
        v, a, w, t0 = (p[..., None] for p in self.trial_parameters(global_params.double(), local_params.double()))
        y = batch.y.double()
        lp = wiener_log_density(y[..., 0], y[..., 1], v, a, w, t0)
        return torch.where(batch.row_mask, lp, torch.zeros_like(lp)).sum(-1)

    def to_config(self) -> dict[str, Any]:
        return {"class": f"{type(self).__module__}.{type(self).__qualname__}", "kwargs": {"priors": self.priors.to_dict()}}


class HierarchicalDDMBeta(HierarchicalDDM):
    """Eq. 25: as :class:`HierarchicalDDM` but with subject-level starting points
    beta_j ~ BetaProportion(mu_beta, xi), mu_beta ~ Beta(50, 50), xi ~ Gamma(5, scale 3).

    Global parameters: mu_nu, mu_log_alpha, mu_log_t0, sigma_nu, sigma_log_alpha, sigma_log_t0, mu_beta, xi.
    Local parameters: nu, alpha, t0, beta.
    """

    global_params = (*HierarchicalDDM._hyper, ParamSpec("mu_beta", "unit_interval"), ParamSpec("xi", "positive"))
    local_params = (*HierarchicalDDM.local_params, ParamSpec("beta", "unit_interval"))

    def sample_global(self, n: int, generator: torch.Generator) -> Tensor:
        rng = _numpy_rng(generator)
        mu_beta = torch.as_tensor(rng.beta(*self.priors.mu_beta, size=n))
        xi = torch.as_tensor(rng.gamma(self.priors.xi[0], self.priors.xi[1], size=n))
        return torch.cat([self._sample_hyper(n, generator), mu_beta[:, None], xi[:, None]], -1).float()

    def sample_local(self, global_params: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        g = global_params.double()
        subjects = self._sample_subjects(g, n_groups, generator)
        mu, xi = g[:, 6:7].numpy(), g[:, 7:8].numpy()
        beta = _numpy_rng(generator).beta(mu * xi, (1 - mu) * xi, size=(g.shape[0], n_groups))
        # keep draws strictly inside (0, 1): a start on a boundary has no first-passage density
        beta = torch.as_tensor(beta).clamp(1e-6, 1 - 1e-6)
        return torch.cat([subjects, beta[..., None]], -1).to(global_params.dtype)

    def log_prior_global(self, global_params: Tensor) -> Tensor:
        g = global_params.double()
        return self._log_prior_hyper(g) + _beta_lpdf(g[..., 6], *self.priors.mu_beta) + _gamma_lpdf(g[..., 7], *self.priors.xi)

    def log_prior_local(self, local_params: Tensor, global_params: Tensor) -> Tensor:
        local, g = local_params.double(), global_params.double()
        mu, xi = g[..., None, 6], g[..., None, 7]
        return self._log_prior_subjects(local, g) + _beta_lpdf(local[..., 3], mu * xi, (1 - mu) * xi)

    def trial_parameters(self, global_params: Tensor, local_params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return local_params[..., 0], local_params[..., 1], local_params[..., 3], local_params[..., 2]


def ddm_network(**overrides: Any) -> NetworkConfig:
    """Network sizes that train in minutes on a CPU: deep sets over trials and subjects, rt seen on log scale, and
    each subject's fastest and slowest response (`SummaryConfig.extremes`): the non-decision time must lie below
    the fastest, which no average of trials pins down. Every parameter the pooled statistics predict is shifted
    (`ShiftConfig.max_spread=None`), the drift's group-level sd included: with learned rather than sufficient
    summaries, that shift helps despite its uneven residuals (validation loss -72.2 against -71.0, and sigma_nu
    on block 4 at 0.058 against 0.41 with the default limit; the HMC reference is 0.068; BENCHMARKS.md, DDM
    case study). The shift keeps one residual scale per parameter (`ShiftConfig.heteroscedastic=False`, and
    `StatisticsConfig.profile_average=False`): with a per-dataset scale, block 4 of the lexical decision data, at
    the edge of the prior predictive, got a drift sd 22 times too wide and beta 6.9 Stan sds off, although the
    validation loss was the same (BENCHMARKS.md, DDM case study). The summaries are 32 (per subject) and 64 (per
    dataset) wide: with 16 and 32, block 4's mu_log_t0, sigma_log_alpha and beta were 1.5-1.9 Stan sds off after
    the same training, with these 0.4-1.0 (BENCHMARKS.md, DDM case study).

    Arguments:
        overrides: parts to change, as in `NetworkConfig.merged` (e.g. ``summary={"hidden": 16}``).
    """
    base = NetworkConfig(
        summary=SummaryConfig(hidden=64, row_hidden=32, local_dim=32, global_dim=64, extremes=True),
        global_flow=FlowConfig(transforms=4, hidden=(64, 64)),
        local_flow=FlowConfig(transforms=3, hidden=(64, 64)),
        statistics=StatisticsConfig(profile_average=False),
        shift=ShiftConfig(heteroscedastic=False, max_spread=None),
        log_inputs=(0,),
    )
    return base.merged(overrides)


# ----------------------------------------------------------------------------------------------------------
# Data


def check_ddm_data(data: GroupedData, min_rt: float = MIN_RT) -> GroupedData:
    """Checks DDM data: two columns (rt in seconds, response), rt > min_rt > 0, responses exactly 0 or 1.

    Nothing is dropped: a bad trial raises with its count, first subject and row, and the fix.

    Arguments:
        data: a GroupedData with y = (rt, response) and subjects as groups.
        min_rt: minimum plausible rt (seconds); faster trials are anticipations no non-decision time explains.

    Returns:
        `data`, unchanged.

    Raises:
        DataError: wrong columns, non-positive rt, responses other than 0/1, or rt below `min_rt`.
    """
    if not isinstance(data, GroupedData):
        raise DataError(f"`data` must be a GroupedData, got {type(data).__name__}; build it with ddm_data(...).")
    if data.y_dim != 2 or data.x_dim != 0:
        raise DataError(
            f"DDM data need exactly two response columns (rt, response) and no covariates, got y_dim={data.y_dim}, "
            f"x_dim={data.x_dim}."
        )
    if not min_rt > 0:
        raise ConfigError(f"`min_rt` must be positive seconds, got {min_rt!r}.")
    rt, response = data.y[:, 0], data.y[:, 1]
    group = np.repeat(np.arange(data.n_groups), data.n_rows)

    def where(bad: np.ndarray) -> str:
        i = int(np.argmax(bad))
        return f"{int(bad.sum())} trials (first: subject {data.levels[group[i]]!r}, row {i}, value {data.y[i].tolist()})"

    if (bad := rt <= 0).any():
        raise DataError(f"reaction times must be positive seconds: {where(bad)} have rt <= 0. Fix or remove them.")
    if (bad := (response != 0) & (response != 1)).any():
        raise DataError(
            f"responses must be 0 (lower boundary) or 1 (upper boundary): {where(bad)} have other values. Recode "
            "the two choices as 0/1 and remove uninterpretable responses."
        )
    if (bad := rt < min_rt).any():
        raise DataError(
            f"{where(bad)} have rt below min_rt = {min_rt} s, faster than any plausible non-decision time; the "
            "model cannot explain them (anticipations). Remove them explicitly, or lower `min_rt` if they are real."
        )
    return data


def ddm_data(
    rt: Any, response: Any, subject: Sequence[Any], min_rt: float = MIN_RT
) -> GroupedData:
    """Validated DDM data from per-trial arrays (subjects in order of first appearance).

    Arguments:
        rt: (trials,) reaction times in seconds.
        response: (trials,) 1 for the upper boundary, 0 for the lower one.
        subject: (trials,) subject labels.
        min_rt: see :func:`check_ddm_data`.

    Raises:
        DataError: see :func:`check_ddm_data`; also arrays of different lengths.
    """
    rt, response, subject = np.asarray(rt, dtype=float), np.asarray(response, dtype=float), np.asarray(subject)
    if not rt.shape == response.shape == subject.shape or rt.ndim != 1:
        raise DataError(f"`rt`, `response` and `subject` must be 1-D of one length, got {rt.shape}, {response.shape}, {subject.shape}.")
    levels = list(dict.fromkeys(subject.tolist()))
    groups = [np.stack([rt[subject == s], response[subject == s]], -1) for s in levels]
    data = GroupedData.from_groups(groups, levels=[str(s) for s in levels], y_names=("rt", "response"))
    return check_ddm_data(data, min_rt)


def load_speed_acc(
    path: str | Path,
    block: int = 4,
    condition: str = "accuracy",
    censored: str = "drop",
    min_rt: float = MIN_RT,
    coding: str = "stimulus",
) -> GroupedData:
    """The lexical decision data of Wagenmakers et al. (2008) for one block and condition, subjects as groups.

    Response coding (`coding`): "stimulus" (the default), 1 = "word" (upper boundary), 0 = "nonword"; or
    "accuracy", 1 = correct (the response matches the stimulus category), 0 = error. The table's `censor` flag marks trials that
    rtdists considers uninterpretable (rt < 0.18 s or > 3 s), and response "error" is an uninterpretable key
    press; with ``censored="drop"`` both are removed with a :class:`DDMDataWarning` that counts them, with
    ``censored="error"`` they raise.

    Arguments:
        path: speed_acc.csv (the CSV export of rtdists' speed_acc).
        block: trial block, 1-20 (accuracy instructions are in the even blocks).
        condition: "accuracy" or "speed".
        censored: "drop" or "error".
        min_rt: see :func:`check_ddm_data`.
        coding: "stimulus" or "accuracy" (see above).

    Returns:
        GroupedData with y = (rt, response), levels = subject ids.

    Raises:
        DataError: a missing file or column, an empty selection, censored trials with ``censored="error"``.
    """
    if censored not in ("drop", "error"):
        raise ConfigError(f"`censored` must be 'drop' or 'error', got {censored!r}.")
    if condition not in ("accuracy", "speed"):
        raise ConfigError(f"`condition` must be 'accuracy' or 'speed', got {condition!r}.")
    if coding not in ("stimulus", "accuracy"):
        raise ConfigError(f"`coding` must be 'stimulus' or 'accuracy', got {coding!r}.")
    path = Path(path)
    if not path.exists():
        raise DataError(f"no file {str(path)!r}; pass the path of speed_acc.csv.")
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("condition") == condition and r.get("block") == str(int(block))]
    if not rows:
        raise DataError(f"no trials with block = {block} and condition = {condition!r} in {str(path)!r}; blocks run 1-20.")
    needed = {"id", "rt", "response", "censor"} | ({"stim_cat"} if coding == "accuracy" else set())
    missing = needed - set(rows[0])
    if missing:
        raise DataError(f"{str(path)!r} lacks the columns {sorted(missing)}.")
    flagged = [r for r in rows if r["censor"].upper() == "TRUE"]
    uninterpretable = [r for r in rows if r["response"] not in ("word", "nonword") and r["censor"].upper() != "TRUE"]
    if flagged or uninterpretable:
        message = (
            f"block {block}, {condition}: {len(flagged)} censored trials (rt < 0.18 s or > 3 s) and "
            f"{len(uninterpretable)} uninterpretable responses out of {len(rows)}"
        )
        if censored == "error":
            raise DataError(f"{message}; pass censored='drop' to remove them.")
        warnings.warn(f"{message} were dropped.", DDMDataWarning, stacklevel=2)
    keep = [r for r in rows if r["censor"].upper() != "TRUE" and r["response"] in ("word", "nonword")]
    keep.sort(key=lambda r: int(r["id"]))
    upper = [r["response"] == (r["stim_cat"] if coding == "accuracy" else "word") for r in keep]
    return ddm_data([float(r["rt"]) for r in keep], [float(u) for u in upper], [r["id"] for r in keep], min_rt)


# ----------------------------------------------------------------------------------------------------------
# Stan reference

_STAN_DATA = """
data {
  int<lower=1> J;
  int<lower=1> N;
  array[N] int<lower=1, upper=J> subject;
  vector<lower=0>[N] rt;
  array[N] int<lower=0, upper=1> response;  // 1 = upper boundary
  vector[2] p_mu_nu;
  vector[2] p_mu_log_alpha;
  vector[2] p_mu_log_t0;
  vector[2] p_log_sigma_nu;
  vector[2] p_log_sigma_log_alpha;
  vector[2] p_log_sigma_log_t0;
  vector[2] p_beta;  // Beta(a, b) of beta (shared) or of mu_beta (subject-level)
  vector[2] p_xi;  // Gamma(shape, scale) of xi (subject-level model only)
}
transformed data {
  vector[J] min_rt = rep_vector(positive_infinity(), J);  // each subject's fastest response
  int n_up = sum(response);
  array[n_up] int up;
  array[N - n_up] int lo;
  {
    int i = 1;
    int k = 1;
    for (n in 1:N) {
      if (response[n] == 1) { up[i] = n; i += 1; } else { lo[k] = n; k += 1; }
    }
  }
  for (n in 1:N) min_rt[subject[n]] = fmin(min_rt[subject[n]], rt[n]);
}
"""

_STAN_HYPER = """
  real mu_nu;
  real mu_log_alpha;
  real mu_log_t0;
  real<lower=0> sigma_nu;
  real<lower=0> sigma_log_alpha;
  real<lower=0> sigma_log_t0;
  vector[J] z_nu;
  vector[J] z_alpha;
  // centred, bounded by the fastest response: the likelihood is zero above it, so the bound leaves the posterior
  // as it is and spares the sampler the wall that a non-centred t0 runs into there (step sizes of 0.003)
  vector<lower=0, upper=min_rt>[J] t0;
"""

_STAN_SUBJECTS = """
transformed parameters {
  vector[J] nu = mu_nu + sigma_nu * z_nu;  // non-centred subject effects
  vector<lower=0>[J] alpha = exp(mu_log_alpha + sigma_log_alpha * z_alpha);
}
"""

_STAN_PRIORS = """
  mu_nu ~ normal(p_mu_nu[1], p_mu_nu[2]);
  mu_log_alpha ~ normal(p_mu_log_alpha[1], p_mu_log_alpha[2]);
  mu_log_t0 ~ normal(p_mu_log_t0[1], p_mu_log_t0[2]);
  sigma_nu ~ lognormal(p_log_sigma_nu[1], p_log_sigma_nu[2]);
  sigma_log_alpha ~ lognormal(p_log_sigma_log_alpha[1], p_log_sigma_log_alpha[2]);
  sigma_log_t0 ~ lognormal(p_log_sigma_log_t0[1], p_log_sigma_log_t0[2]);
  z_nu ~ std_normal();
  z_alpha ~ std_normal();
  t0 ~ lognormal(mu_log_t0, sigma_log_t0);
"""

STAN_SHARED = (
    _STAN_DATA
    + "parameters {" + _STAN_HYPER + "  real<lower=0, upper=1> beta;\n}\n"
    + _STAN_SUBJECTS
    + "model {" + _STAN_PRIORS
    + """  beta ~ beta(p_beta[1], p_beta[2]);
  // Stan's wiener_lpdf is the density at the upper boundary; the lower one mirrors start and drift
  target += wiener_lpdf(rt[up] | alpha[subject[up]], t0[subject[up]], beta, nu[subject[up]]);
  target += wiener_lpdf(rt[lo] | alpha[subject[lo]], t0[subject[lo]], 1 - beta, -nu[subject[lo]]);
}
"""
)

STAN_BETA = (
    _STAN_DATA
    + "parameters {" + _STAN_HYPER
    + "  real<lower=0, upper=1> mu_beta;\n  real<lower=0> xi;\n  vector<lower=0, upper=1>[J] beta;\n}\n"
    + _STAN_SUBJECTS
    + "model {" + _STAN_PRIORS
    + """  mu_beta ~ beta(p_beta[1], p_beta[2]);
  xi ~ gamma(p_xi[1], 1 / p_xi[2]);
  beta ~ beta_proportion(mu_beta, xi);
  target += wiener_lpdf(rt[up] | alpha[subject[up]], t0[subject[up]], beta[subject[up]], nu[subject[up]]);
  target += wiener_lpdf(rt[lo] | alpha[subject[lo]], t0[subject[lo]], 1 - beta[subject[lo]], -nu[subject[lo]]);
}
"""
)


def stan_program_ddm(model: HierarchicalDDM) -> str:
    """The Stan program of a DDM variant (same parameterization and priors, hyperpriors passed as data)."""
    return STAN_BETA if isinstance(model, HierarchicalDDMBeta) else STAN_SHARED


def stan_data_ddm(model: HierarchicalDDM, data: GroupedData) -> dict[str, Any]:
    """Stan data of a validated DDM dataset."""
    check_ddm_data(data, min_rt=1e-9)
    p = model.priors
    return {
        "J": data.n_groups,
        "N": int(data.y.shape[0]),
        "subject": (np.repeat(np.arange(data.n_groups), data.n_rows) + 1).tolist(),
        "rt": data.y[:, 0].tolist(),
        "response": data.y[:, 1].astype(int).tolist(),
        "p_mu_nu": list(p.mu_nu),
        "p_mu_log_alpha": list(p.mu_log_alpha),
        "p_mu_log_t0": list(p.mu_log_t0),
        "p_log_sigma_nu": list(p.log_sigma_nu),
        "p_log_sigma_log_alpha": list(p.log_sigma_log_alpha),
        "p_log_sigma_log_t0": list(p.log_sigma_log_t0),
        "p_beta": list(p.mu_beta if isinstance(model, HierarchicalDDMBeta) else p.beta),
        "p_xi": list(p.xi),
    }


def fit_stan_ddm(
    model: HierarchicalDDM,
    data: GroupedData,
    *,
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 1,
    adapt_delta: float = 0.9,
) -> tuple[PosteriorDraws, dict[str, Any]]:
    """Samples a DDM variant with PyStan (NUTS, by :func:`mlnpe.stan.sample`) as the reference posterior.

    Returns:
        PosteriorDraws in the layout of :class:`~mlnpe.amortizer.MultilevelNPE` draws (chains concatenated) and a
        diagnostics dict: max R-hat, min bulk and tail ESS, divergences, compile and sampling seconds, and the
        sampler settings. Problems are reported there, not warned about.

    Raises:
        ConfigError: bad sampler settings.
        ImportError: PyStan is not installed (``pip install pystan "setuptools<81"``).
    """
    from ..stan.backends import sample

    globals_ = [p.name for p in model.global_params]
    locals_ = [p.name for p in model.local_params]
    fit = sample(
        stan_program_ddm(model), stan_data_ddm(model, data), variables=globals_ + locals_, chains=chains,
        warmup=warmup, draws=draws, seed=seed, adapt_delta=adapt_delta, backend="pystan", warn=False,
    )  # fmt: skip
    variables = fit.stan_variables
    g = np.stack([variables[n].reshape(chains * draws) for n in globals_], -1)
    l = np.stack([variables[n].reshape(chains * draws, data.n_groups) for n in locals_], -1)
    keys = ("divergences", "max_rhat", "min_ess_bulk", "min_ess_tail", "compile_seconds", "sample_seconds")
    diagnostics = {key: fit.diagnostics[key] for key in keys}
    diagnostics.update(chains=chains, warmup=warmup, draws=draws)
    return PosteriorDraws(g, l, tuple(globals_), tuple(locals_), data.levels), diagnostics


# ----------------------------------------------------------------------------------------------------------
# Leave-one-group-out cross-validation


def _group_log_likelihood(model: HierarchicalDDM, y: Tensor, g: Tensor, l: Tensor, chunk: int = 4096) -> Tensor:
    """log p(y | lambda, omega) of one subject's trials y (N, 2) for K parameter sets g (K, G), l (K, L): (K,)."""
    out = []
    for i in range(0, g.shape[0], chunk):
        v, a, w, t0 = model.trial_parameters(g[i : i + chunk], l[i : i + chunk, None])  # each (k, 1)
        out.append(wiener_log_density(y[:, 0], y[:, 1], v, a, w, t0).sum(-1))
    return torch.cat(out)


def logo_elpd(
    npe: Any,
    model: HierarchicalDDM,
    data: GroupedData,
    *,
    n_draws: int = 500,
    n_local: int = 100,
    seed: int = 0,
    proposal: str = "flow",
    posterior: str = "amortized",
    refine_config: Any = None,
) -> LogoResult:
    """Leave-one-subject-out elpd by eq. 26 with amortized (or refined) LOGO posteriors (`mlnpe.inference.logo`).

    For each subject j: draw S global parameter sets theta^(s) = (tau, omega) from the amortized posterior of
    the other J - 1 subjects (an instant "refit"), then estimate p(x_j | theta^(s)) = integral of
    p(x_j | lambda_j, omega) p(lambda_j | tau) over lambda_j with M draws per global draw, and
    elpd_j = log mean_s p(x_j | theta^(s)), in log-sum-exp form with the exact Wiener likelihood.

    The lambda_j integral is estimated by importance sampling. With ``proposal="flow"`` (the default) the draws
    come from an even mixture r of the shared local flow q(lambda_j | tau, omega, x_j) (the amortized
    conditional posterior of the held-out subject) and the prior p(lambda_j | tau), with weights
    p(x_j | lambda, omega) p(lambda | tau) / r(lambda). Using x_j in the proposal does not leak it into the
    estimate: the estimator stays unbiased for p(x_j | theta^(s)) whatever the proposal, a proposal close to the
    conditional posterior makes it precise, and the prior half keeps the weights bounded when the flow is
    too narrow. ``proposal="prior"`` draws lambda_j from p(lambda_j | tau) (weights = likelihood): also unbiased,
    but with 96 trials per subject a handful of draws carry all the weight and log(mean) is biased low.

    ``proposal="plugin"`` is not an estimate of eq. 26's predictive density: it draws lambda_j from the local flow
    given x_j alone and ignores the weights, so x_j is used twice (to fit the held-out subject's own parameters,
    then to score them). It is kept to check a reading of the paper: with accuracy coding (upper = correct,
    ``load_speed_acc(coding="accuracy")``) it reproduces the paper's positive elpd difference for the beta_j
    model (+18.1, SE 7.3, against the paper's +13.3, SE 1.5), while the unbiased estimator gives -0.4 (SE 5.2) with
    accuracy coding and -12.3 (SE 2.6) with stimulus coding (BENCHMARKS.md, DDM case study).

    With ``posterior="refined"`` the S global draws of each refit come from HMC on the exact LOGO posterior,
    started and preconditioned by the amortized one (`mlnpe.inference.refine`): a reference for the amortized
    estimate that costs one HMC run per subject (tens of seconds each) instead of a fraction of a second.

    Arguments:
        npe: a trained MultilevelNPE of `model`.
        model: the DDM variant (its priors must be those the estimator was trained with).
        data: validated DDM data (:func:`ddm_data`, :func:`load_speed_acc`).
        n_draws: S global draws per refit.
        n_local: M local draws per global draw.
        seed: seed of all draws (refit j's amortized draws use seed + j; the proposals share one generator).
        proposal: "flow", "prior" or "plugin" (see above).
        posterior: "amortized" or "refined" (see above).
        refine_config: a `mlnpe.RefineConfig` for ``posterior="refined"`` (default: RefineConfig's defaults with
            seed `seed`); subject j's refit uses its seed + j.

    Returns:
        A `mlnpe.inference.logo.LogoResult`; `ess_j` is the importance-sampling effective sample size of each
        subject's S x M weights, `pareto_k` is NaN (the refits have no PSIS).
    """
    check_ddm_data(data, min_rt=1e-9)
    if data.n_groups < 2:
        raise DataError("leave-one-group-out needs at least two subjects.")
    if int(n_draws) < 1 or int(n_local) < 1:
        raise ConfigError(f"`n_draws` and `n_local` must be positive, got {n_draws!r} and {n_local!r}.")
    if proposal not in ("flow", "prior", "plugin"):
        raise ConfigError(f"`proposal` must be 'flow', 'prior' or 'plugin', got {proposal!r}.")
    if posterior not in ("amortized", "refined"):
        raise ConfigError(f"`posterior` must be 'amortized' or 'refined', got {posterior!r}.")
    generator = torch.Generator().manual_seed(seed)

    def refit(j: int) -> LogoRefit:
        rest = data.subset([k for k in range(data.n_groups) if k != j])
        if posterior == "amortized":
            return LogoRefit(npe.sample(rest, n_draws=n_draws, seed=seed + j, log_prob=False).global_draws)
        base = refine_config or RefineConfig(seed=seed)
        config = base if base.seed is None else replace(base, seed=base.seed + j)  # one stream per refit
        fitted = refine(npe.estimator, model, rest, int(n_draws), config)
        return LogoRefit(fitted.global_draws[: int(n_draws)], rhat=fitted.max_rhat)

    def local_proposal(j: int, global_draws: np.ndarray, m: int) -> tuple[Tensor, Tensor]:
        g = torch.as_tensor(global_draws, dtype=torch.float32)  # (S, G)
        if proposal == "flow":
            return npe.local_proposal(data.subset([j]), g, m, generator, model=model)
        if proposal == "plugin":  # the flow alone (a vanishing prior share), weights ignored
            l, _ = npe.local_proposal(data.subset([j]), g, m, generator, flow_fraction=1 - 1e-12, model=model)
            return l, torch.zeros(l.shape[0], dtype=torch.float64)
        l = model.sample_local(g.double(), m, generator)  # (S, M, L)
        return l.reshape(-1, l.shape[-1]), torch.zeros(l.shape[0] * l.shape[1], dtype=torch.float64)

    def held_out_log_lik(j: int, global_draws: np.ndarray, l: Tensor) -> Tensor:
        g = torch.as_tensor(global_draws, dtype=torch.float32).double()
        g = g[:, None].expand(-1, int(n_local), -1).reshape(-1, g.shape[-1])
        return _group_log_likelihood(model, torch.as_tensor(data.group(j)[0], dtype=torch.float64), g, l)

    return logo(data.levels, refit, local_proposal, held_out_log_lik, n_draws=int(n_draws), n_local=int(n_local),
                nobs=data.n_rows, posterior=posterior)  # fmt: skip
