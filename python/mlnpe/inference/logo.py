"""Leave-one-group-out cross-validation (LOGO) by instant refits: one algorithm for every two-level model.

For each group j, a posterior of the data without j gives S global draws theta_s (with normalized log weights
w_s when they are importance weights, e.g. PSIS's), and

    elpd_j = log sum_s w_s p(y_j | theta_s),    p(y_j | theta_s) = int p(y_j | theta_s, r) p(r | theta_s) dr.

The integral over the held-out group's effects r is importance-sampled with M draws per theta_s from a proposal
(`MultilevelNPE.local_proposal`: the even mixture of the local flow q(r | theta_s, y_j) and the prior
p(r | theta_s)), each weighted by p(y_j | theta_s, r) p(r | theta_s) / proposal(r). Using y_j in the proposal does
not leak it into the estimate: the estimator is unbiased for p(y_j | theta_s) whatever the proposal, and a
proposal close to the conditional posterior makes it precise. This is the predictive density of a new group,
brms's ``kfold(group =)`` with one fold per group.

* :func:`logo`: the loop over groups, given a model's three parts (refit, proposal, held-out likelihood).
* :func:`importance_elpd`: elpd_j and the effective sample size of its S x M importance weights.
* :class:`LogoRefit`, :class:`LogoResult`, :func:`compare_logo`.

The drivers: `mlnpe.formula.logo.formula_logo` (formula models) and `mlnpe.case_studies.ddm.logo_elpd` (the DDM).

Example:
    >>> import numpy as np
    >>> elpd, ess = importance_elpd(np.log(np.full(6, 0.5)), n_local=3)
    >>> round(elpd, 6), round(ess, 6)
    (-0.693147, 6.0)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["LogoRefit", "LogoResult", "logo", "importance_elpd", "compare_logo"]

Array = Any  # a NumPy array or a torch tensor; arithmetic stays in the library of the input


@dataclass(frozen=True)
class LogoRefit:
    """The posterior of the data without one group.

    Attributes:
        global_draws: (S, G) global draws.
        log_weights: (S,) normalized log importance weights of the draws (e.g. PSIS's), or None for equal weights.
        pareto_k: the PSIS k-hat of the refit, or None where it has none.
        rhat: the largest R-hat of a refit by HMC, or None for amortized draws.
    """

    global_draws: Any
    log_weights: Array | None = None
    pareto_k: float | None = None
    rhat: float | None = None


@dataclass(frozen=True)
class LogoResult:
    """Leave-one-group-out elpd per group, in the spirit of loo's pointwise table.

    Attributes:
        levels: group labels (J,).
        elpd_j: (J,) log p(y_j | y_-j) estimates.
        ess_j: (J,) effective number of the S * M importance weights behind each elpd_j (small values mean an
            unreliable estimate).
        pareto_k: (J,) the PSIS k-hat of each refit (NaN where a refit has none).
        nobs_j: (J,) rows (observations) of each group.
        refit_seconds: total time of the J posteriors without one group.
        eval_seconds: total time of the predictive densities.
        n_draws, n_local: global draws S per refit and local draws M per global draw.
        posterior: "amortized" (the networks' draws) or "refined" (HMC through the amortizer,
            `mlnpe.inference.refine`).
        max_rhat: the largest R-hat over the J refined refits (NaN for amortized draws).
    """

    levels: tuple[str, ...]
    elpd_j: np.ndarray
    ess_j: np.ndarray
    pareto_k: np.ndarray
    nobs_j: np.ndarray
    refit_seconds: float
    eval_seconds: float
    n_draws: int
    n_local: int
    posterior: str = "amortized"
    max_rhat: float = math.nan

    @property
    def elpd(self) -> float:
        return float(self.elpd_j.sum())

    @property
    def se(self) -> float:
        """sqrt(J var(elpd_j)), the standard error of loo."""
        return float(math.sqrt(self.elpd_j.size * np.var(self.elpd_j, ddof=1))) if self.elpd_j.size > 1 else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "elpd_logo": self.elpd, "se": self.se, "elpd_j": self.elpd_j.tolist(), "ess_j": self.ess_j.tolist(),
            "pareto_k": self.pareto_k.tolist(), "nobs_j": self.nobs_j.tolist(), "levels": list(self.levels),
            "refit_seconds": self.refit_seconds, "eval_seconds": self.eval_seconds, "n_draws": self.n_draws,
            "n_local": self.n_local, "posterior": self.posterior, "max_rhat": self.max_rhat,
        }  # fmt: skip


def _np_logsumexp(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=0, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    return np.squeeze(top, 0) + np.log(np.sum(np.exp(x - top), axis=0))


def importance_elpd(log_w: Array, n_local: int, log_weights: Array | None = None) -> tuple[float, float]:
    """elpd_j and the effective sample size of its importance weights, for one held-out group.

    Arguments:
        log_w: (S * M,) log p(y_j | theta_s, r_sm) + log p(r_sm | theta_s) - log proposal(r_sm), draw s's M
            terms contiguous. A tensor is reduced with torch, an array with NumPy.
        n_local: M.
        log_weights: (S,) normalized log weights of the global draws, or None for equal weights.

    Returns:
        ``(elpd_j, ess)``: log sum_s w_s mean_m exp(log_w[s, m]), and 1 / sum of the squared normalized joint
        weights (0 when the estimate is not finite).
    """
    if isinstance(log_w, Tensor):
        logsumexp, exp = partial(torch.logsumexp, dim=0), torch.exp
    else:
        logsumexp, exp = _np_logsumexp, np.exp
    if log_weights is None:
        joint, norm = log_w, log_w.shape[0]
    else:  # every (theta_s, r_sm)'s share of the estimate
        joint, norm = (log_w.reshape(-1, n_local) + log_weights[:, None]).reshape(-1), n_local
    lse = logsumexp(joint)
    elpd = float(lse - math.log(norm))
    if not math.isfinite(elpd):
        return elpd, 0.0
    share = exp(joint - lse)
    return elpd, float(1.0 / (share * share).sum())


def logo(
    levels: Sequence[str],
    refit: Callable[[int], LogoRefit],
    local_proposal: Callable[[int, Any, int], tuple[Array, Array]],
    held_out_log_lik: Callable[[int, Any, Array], Array],
    *,
    n_draws: int,
    n_local: int,
    nobs: Sequence[int],
    posterior: str = "amortized",
) -> LogoResult:
    """Leave-one-group-out elpd: for each group j a refit without it, then importance sampling of its effects.

    Arguments:
        levels: the J group labels.
        refit: j -> the posterior of the data without group j (:class:`LogoRefit`, S = `n_draws` draws).
        local_proposal: (j, global_draws (S, G), M) -> draws r of group j's effects (S * M, L), draw s's M rows
            contiguous, and log p(r | theta_s) - log proposal(r) (S * M,). It owns its random generator.
        held_out_log_lik: (j, global_draws (S, G), r (S * M, L)) -> log p(y_j | theta_s, r) (S * M,).
        n_draws, n_local: S and M (recorded in the result).
        nobs: rows of each group (recorded in the result).
        posterior: how `refit` draws ("amortized" or "refined"; recorded in the result).

    Returns:
        A :class:`LogoResult`. Group j's randomness is drawn in the order refit, proposal.
    """
    elpd, ess, pareto_k, rhats, refit_seconds, eval_seconds = [], [], [], [], 0.0, 0.0
    for j in range(len(levels)):
        start = time.perf_counter()
        fit = refit(j)
        refit_seconds += time.perf_counter() - start
        start = time.perf_counter()
        local, log_correction = local_proposal(j, fit.global_draws, n_local)
        log_w = held_out_log_lik(j, fit.global_draws, local) + log_correction
        elpd_j, ess_j = importance_elpd(log_w, n_local, fit.log_weights)
        eval_seconds += time.perf_counter() - start
        elpd.append(elpd_j)
        ess.append(ess_j)
        pareto_k.append(math.nan if fit.pareto_k is None else float(fit.pareto_k))
        if fit.rhat is not None:
            rhats.append(fit.rhat)
    return LogoResult(
        tuple(str(level) for level in levels), np.array(elpd), np.array(ess), np.array(pareto_k, dtype=float),
        np.asarray(nobs, dtype=np.int64), refit_seconds, eval_seconds, int(n_draws), int(n_local), posterior,
        max(rhats) if rhats else math.nan,
    )


def compare_logo(a: LogoResult, b: LogoResult) -> dict[str, Any]:
    """elpd_diff = sum_j (elpd_j of a - elpd_j of b) and its standard error sqrt(J var(differences)).

    Raises:
        DataError: the two results are for different groups.
    """
    if a.levels != b.levels:
        raise DataError("the two LOGO results are for different groups; run both on the same data.")
    d = a.elpd_j - b.elpd_j
    return {
        "elpd_diff": float(d.sum()),
        "se_diff": float(math.sqrt(d.size * np.var(d, ddof=1))) if d.size > 1 else math.nan,
        "diff_j": d.tolist(),
    }
