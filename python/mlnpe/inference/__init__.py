"""What is done with a trained amortizer: calibration, recovery, pooling, PSIS, HMC refinement, plots, ArviZ.

One verb, or one family of verbs, per module:

- :mod:`~mlnpe.inference.calibration`: SBC ranks, uniformity tests, simultaneous ECDF bands, ``sbc_check``;
- :mod:`~mlnpe.inference.recovery`: ``recovery`` of the true values (coverage, correlation, contraction);
- :mod:`~mlnpe.inference.pooling`: ``pooling_factor`` (Habermann et al., 2024, eq. 15);
- :mod:`~mlnpe.inference.convergence`: R-hat and bulk/tail ESS of MCMC chains (``rhat``, ``ess_bulk``, ...);
- :mod:`~mlnpe.inference.psis`: Pareto-smoothed importance sampling (``psis``, ``pareto_khat``, ``psis_moments``);
- :mod:`~mlnpe.inference.plots`: every ``plot_*`` (matplotlib is imported when a plot is drawn);
- :mod:`~mlnpe.inference.arviz`: ``to_inference_data``, structured draws as an ``arviz.InferenceData``;
- :mod:`~mlnpe.inference.sbc`: ``sbc``, calibration of a trained amortizer in one call;
- :mod:`~mlnpe.inference.refine`: ``refine``, HMC on the exact posterior through the amortizer;
- :mod:`~mlnpe.inference.logo`: ``logo``, leave-one-group-out elpd for any model (``LogoResult``, ``compare_logo``);
- :mod:`~mlnpe.inference.policy`: when PSIS draws are used and when fits are refined (``psis_unreliable``);
- :mod:`~mlnpe.inference.arrays`: the input checks these modules share.

This package re-exports the public names of those modules, loaded on first use so that importing one module
imports no other (the array diagnostics need neither torch nor matplotlib). A verb named like its module
(``psis``, ``recovery``, ``sbc``, ``refine``) is not re-exported, since ``mlnpe.inference.<name>`` is the module:
import it from there, e.g. ``from mlnpe.inference.recovery import recovery``.

Example:
    >>> from mlnpe.inference import sbc_ranks, sbc_check
    >>> check = sbc_check(sbc_ranks(draws, truth, rng=np.random.default_rng(1)), n_draws=draws.shape[1])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .arviz import to_inference_data
    from .calibration import (
        ecdf_bands,
        ecdf_diff,
        fractional_ranks,
        pool_local_ranks,
        sbc_check,
        sbc_ranks,
        sbc_uniformity_pvalues,
    )
    from .convergence import ess_bulk, ess_tail, rhat, summarise_draws
    from .plots import plot_pooling, plot_ppc, plot_recovery, plot_sbc_ecdf, plot_sbc_histogram
    from .pooling import pooling_factor
    from .psis import ParetoKWarning, PsisResult, gpd_fit, pareto_khat, psis_moments
    from .refine import RefineConfig, RefineResult, RefineWarning
    from .logo import LogoRefit, LogoResult, compare_logo, importance_elpd
    from .policy import psis_unreliable, use_resampling
    from .sbc import SBCResult

__all__ = [
    "sbc_ranks",
    "pool_local_ranks",
    "fractional_ranks",
    "sbc_uniformity_pvalues",
    "ecdf_bands",
    "ecdf_diff",
    "sbc_check",
    "pooling_factor",
    "rhat",
    "ess_bulk",
    "ess_tail",
    "summarise_draws",
    "ParetoKWarning",
    "PsisResult",
    "pareto_khat",
    "gpd_fit",
    "psis_moments",
    "plot_sbc_ecdf",
    "plot_sbc_histogram",
    "plot_recovery",
    "plot_pooling",
    "plot_ppc",
    "to_inference_data",
    "SBCResult",
    "RefineConfig",
    "RefineResult",
    "RefineWarning",
    "LogoRefit",
    "LogoResult",
    "importance_elpd",
    "compare_logo",
    "psis_unreliable",
    "use_resampling",
]

# module -> the names of __all__ that it defines
_MODULES = {
    "calibration": ("sbc_ranks", "pool_local_ranks", "fractional_ranks", "sbc_uniformity_pvalues", "ecdf_bands",
                    "ecdf_diff", "sbc_check"),
    "pooling": ("pooling_factor",),
    "convergence": ("rhat", "ess_bulk", "ess_tail", "summarise_draws"),
    "psis": ("ParetoKWarning", "PsisResult", "pareto_khat", "gpd_fit", "psis_moments"),
    "plots": ("plot_sbc_ecdf", "plot_sbc_histogram", "plot_recovery", "plot_pooling", "plot_ppc"),
    "arviz": ("to_inference_data",),
    "sbc": ("SBCResult",),
    "refine": ("RefineConfig", "RefineResult", "RefineWarning"),
    "logo": ("LogoRefit", "LogoResult", "importance_elpd", "compare_logo"),
    "policy": ("psis_unreliable", "use_resampling"),
}  # fmt: skip
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """Loads a re-exported name from its module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
