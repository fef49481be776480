"""Fitting models with Stan: one sampler entry point over PyStan and cmdstanpy, and reference fits.

:func:`sample` runs any Stan program (:mod:`mlnpe.stan.backends`); :func:`fit_stan` fits a formula model with
the Stan program of :mod:`mlnpe.formula.stancode` and returns brms-named draws (:mod:`mlnpe.stan.reference`).
The case studies' Stan fits (:func:`mlnpe.case_studies.ar1.fit_ar1_stan`,
:func:`mlnpe.case_studies.ddm.fit_stan_ddm`) call :func:`sample` too. Stan is imported only when a fit runs.
"""

from .backends import StanDiagnosticWarning, StanFit, sample, warn_if_unreliable
from .reference import fit_stan

__all__ = ["StanDiagnosticWarning", "StanFit", "sample", "warn_if_unreliable", "fit_stan"]
