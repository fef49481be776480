"""Case studies of Habermann et al. (arXiv 2408.13230, section 3): ready-made models with their estimators,
Stan references and helpers.

Each case study is a submodule, imported on demand (``from mlnpe.case_studies import ar1``); importing this
package imports none of them.
"""

__all__: list[str] = []
