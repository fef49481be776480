"""When to go past the amortized draws: the refine="auto" decision from a PSIS result.

`psis_unreliable(result, n_draws)` is True when PSIS rejects the amortized draws (k-hat above `KHAT_REFINE`) or its
weights leave fewer than `ESS_REFINE * n_draws` effective draws; the caller then refines by HMC.
`use_resampling(fit, resample)` is the resample="auto" decision: importance-resample the amortized draws when
their PSIS weights are reliable.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError

__all__ = ["ESS_REFINE", "KHAT_REFINE", "psis_unreliable", "use_resampling"]

KHAT_REFINE = 0.7  # refine="auto" refines above this k-hat (PSIS's "bad" threshold)
ESS_REFINE = 0.1  # ... or when the PSIS weights' ESS is below this share of the draws


def psis_unreliable(result: Any, n_draws: int) -> bool:
    """refine="auto": PSIS rejects the amortized draws (k-hat > 0.7) or leaves too few effective draws.

    Resampling 4000 draws by weights whose ESS is 76 (sleepstudy at k-hat 0.67) repeats few draws many times:
    the Monte Carlo error of a mean is then about 0.1 posterior sds, of an sd more than 0.05.

    Arguments:
        result: a PSIS result with `pareto_k` and `ess`, or None (no PSIS, no verdict: False).
        n_draws: the number of amortized draws the weights are over.

    Returns:
        True when the draws should be refined.
    """
    if result is None:
        return False
    return bool(result.pareto_k > KHAT_REFINE or result.ess < ESS_REFINE * n_draws)


def use_resampling(fit: Any, resample: bool | str) -> bool:
    """Whether to return a fit's draws importance-resampled by their PSIS weights.

    "auto" resamples exactly when PSIS says the weights are reliable (k-hat at most its threshold). Refined draws
    are never resampled: they are HMC draws of the exact posterior, and the PSIS weights belong to the amortized
    draws they replaced.

    Arguments:
        fit: a `FormulaFit` (its `psis` and `refinement`).
        resample: True, False or "auto".

    Returns:
        True when the draws should be resampled (`FormulaFit.resampled`).

    Raises:
        ConfigError: `resample` is True for refined draws.
    """
    if fit.refinement is not None:
        if resample is True:
            raise ConfigError("`resample = TRUE` does not apply to refined draws; use `refine = FALSE` to resample.")
        return False
    if resample != "auto":
        return bool(resample)
    return fit.psis is not None and float(fit.psis.pareto_k) <= float(fit.psis.khat_threshold)
