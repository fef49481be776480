"""brms-style formula models: formula -> terms -> design -> families and priors -> model, one module per stage.

* `terms`: formula text -> `FormulaTerms`; `design`: data -> `Design` (R's coding); `names`: brms's names;
  `families`: response families; `distributions`: proper prior distributions; `priors`: which prior applies
  to which parameter; `model`: the two-level simulator; `stancode`: the Stan program of the same model.
* `api`: `FormulaNPE`, the model with its amortized posterior; `focus`: focused training; `fit`: `FormulaFit`
  and brms's prediction verbs; `saved`: save/load and the specification's hash; `cache`: `trained_model`.

Example:
    >>> from mlnpe.formula import FormulaNPE, prior
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df, "gaussian", prior("normal(0, 1)", "b"))   # doctest: +SKIP
"""

from .api import FormulaNPE, default_ranges
from .cache import cache_dir, trained_model
from .design import Design, DesignInfo, build_design
from .distributions import PriorDist, parse_prior
from .families import get_family
from .fit import FormulaFit, design_features
from .focus import check_focus
from .names import (
    brms_draws,
    brms_globals,
    brms_local_names,
    brms_names,
    brms_names_and_values,
    brms_rename,
    uncenter_intercept,
)
from .priors import PriorSpec, prior
from .terms import FormulaTerms, parse_formula

__all__ = [
    "FormulaFit",
    "FormulaNPE",
    "cache_dir",
    "check_focus",
    "default_ranges",
    "design_features",
    "trained_model",
    "Design",
    "DesignInfo",
    "build_design",
    "brms_draws",
    "brms_globals",
    "brms_local_names",
    "brms_names",
    "brms_names_and_values",
    "brms_rename",
    "uncenter_intercept",
    "get_family",
    "PriorDist",
    "PriorSpec",
    "parse_prior",
    "prior",
    "FormulaTerms",
    "parse_formula",
]
