"""Exception and warning classes of mlnpe.

Every error raised on bad user input is one of these classes, and its message names the argument, the
value that was received and how to fix it.
"""

from __future__ import annotations

__all__ = [
    "MlnpeError",
    "DataError",
    "SpecError",
    "ConfigError",
    "RangeError",
    "RangeWarning",
    "LoadError",
    "NumericalError",
]


class MlnpeError(Exception):
    """Base class of all mlnpe errors."""


class DataError(MlnpeError, ValueError):
    """Observed or simulated data are malformed (NaN, empty group, missing column, wrong dtype, ...)."""


class SpecError(MlnpeError, ValueError):
    """A model specification (parameters, supports, priors, simulator output) is inconsistent."""


class ConfigError(MlnpeError, ValueError):
    """A configuration value (network sizes, training budget, ranges) is invalid."""


class RangeError(MlnpeError, ValueError):
    """A dataset lies far outside the range of numbers of groups or rows that the estimator was trained on."""


class LoadError(MlnpeError, OSError):
    """A saved estimator cannot be loaded: missing files, corrupt content, or a mismatched configuration."""


class NumericalError(MlnpeError, ArithmeticError):
    """Non-finite posterior draws or densities: mlnpe never returns them as a posterior."""


class RangeWarning(UserWarning):
    """A dataset lies (slightly) outside the range of numbers of groups or rows seen in training."""
