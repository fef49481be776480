"""brms-style formula models: formula -> terms -> design -> two-level model specification.

Example:
    >>> from mlnpe.formula import FormulaNPE, prior
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df, "gaussian", prior("normal(0, 1)", "b"))   # doctest: +SKIP
"""

from .api import FormulaFit, FormulaNPE, cache_dir, check_focus, default_ranges, trained_model
from .design import Design, DesignInfo, build_design
from .families import get_family
from .priors import PriorDist, PriorSpec, parse_prior, prior
from .terms import FormulaTerms, parse_formula

__all__ = [
    "FormulaFit",
    "FormulaNPE",
    "cache_dir",
    "check_focus",
    "default_ranges",
    "trained_model",
    "Design",
    "DesignInfo",
    "build_design",
    "get_family",
    "PriorDist",
    "PriorSpec",
    "parse_prior",
    "prior",
    "FormulaTerms",
    "parse_formula",
]
