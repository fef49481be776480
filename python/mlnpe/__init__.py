"""mlnpe: amortized Bayesian multilevel models (multilevel neural posterior estimation, ML-NPE).

Train once on simulations of a two-level model; afterwards every dataset of that model is fitted in
milliseconds. See `MultilevelNPE` for the entry point and `TwoLevelModel` for bringing your own simulator.
"""

from .version import __version__  # noqa: E402

from .core.data import GroupedBatch, GroupedData, collate  # noqa: E402
from .core.draws import PosteriorDraws  # noqa: E402
from .errors import ConfigError, DataError, LoadError, MlnpeError, RangeError, RangeWarning, SpecError  # noqa: E402
from .networks.config import (  # noqa: E402
    FlowConfig,
    NetworkConfig,
    ShiftConfig,
    StatisticsConfig,
    SufficientConfig,
    SummaryConfig,
)
from .estimator import MultilevelEstimator  # noqa: E402
from .core.spec import ParamSpec, TwoLevelModel, simulate_batch  # noqa: E402
from .train import TrainConfig, TrainHistory  # noqa: E402
from .amortizer import MultilevelNPE  # noqa: E402

__all__ = [
    "__version__",
    "GroupedBatch",
    "GroupedData",
    "collate",
    "PosteriorDraws",
    "MlnpeError",
    "DataError",
    "SpecError",
    "ConfigError",
    "RangeError",
    "RangeWarning",
    "LoadError",
    "MultilevelEstimator",
    "NetworkConfig",
    "SummaryConfig",
    "SufficientConfig",
    "FlowConfig",
    "StatisticsConfig",
    "ShiftConfig",
    "ParamSpec",
    "TwoLevelModel",
    "simulate_batch",
    "TrainConfig",
    "TrainHistory",
    "MultilevelNPE",
]
