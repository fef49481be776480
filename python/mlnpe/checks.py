"""Checks of user-given settings and arguments: type and range, with an error that names the argument, its value
and the allowed range.

Every config (`TrainConfig`, `NetworkConfig` and its parts, `RefineConfig`) and every public entry point (`sample`,
`fit`, `train`, `logo`, `sbc`, the R bridge) checks its numbers here, so that all of them accept and reject the
same values:

* an integer count is an int, a NumPy integer or an integer-valued float (R and JSON give whole numbers as floats);
  2.5, True, "10", NaN and infinity are not;
* a number is an int or float (NumPy's too), finite unless the range says otherwise; a bool or string is not;
* a flag is True or False (NumPy's bool too).

A `Bound` is one allowed range; tables of bounds check a whole config (`TrainConfig`).

Example:
    >>> check_int(3.0, "n_draws")
    3
    >>> check_int(2.5, "n_draws")
    Traceback (most recent call last):
    ...
    mlnpe.errors.ConfigError: `n_draws` must be an integer >= 1, got 2.5.
    >>> Bound(float, 0, 1, open_low=True, open_high=True).describe()
    'a number in (0, 1)'
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

__all__ = ["Bound", "SEED", "check_int", "check_float", "check_flag", "check_seed", "check_choice", "check_path"]


def _show(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Bound:
    """An allowed range of a number.

    Attributes:
        kind: int (an integer count; integer-valued floats are accepted and returned as int) or float.
        low, high: the bounds, inclusive unless `open_low` / `open_high`.
        infinite: accept +infinity (floats whose `high` is infinite: "no limit").
        meaning: what the number is, for the message (default: the range in words, e.g. "an integer >= 1").
    """

    kind: type = float
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    infinite: bool = False
    meaning: str | None = None

    def describe(self) -> str:
        """The range in words: "an integer >= 1", "a number in (0, 1]", ..."""
        if self.meaning:
            return self.meaning
        what = "an integer" if self.kind is int else "a number"
        low, high = math.isfinite(self.low), math.isfinite(self.high)
        if low and high:
            if self.kind is int:
                return f"{what} from {_show(self.low)} to {_show(self.high)}"
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{what} in {left}{_show(self.low)}, {_show(self.high)}{right}"
        if low:
            return f"{what} {'>' if self.open_low else '>='} {_show(self.low)}"
        if high:
            return f"{what} {'<' if self.open_high else '<='} {_show(self.high)}"
        return what if self.kind is int else "a finite number"

    def check(self, value: Any, name: str, owner: str = "", error: type[Exception] = ConfigError) -> int | float:
        """`value` as an int or float inside the range, or `error` naming `owner` `name`, the value and the range."""
        where = f"{owner} `{name}`" if owner else f"`{name}`"
        bad = error(f"{where} must be {self.describe()}, got {value!r}.")
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise bad
        if isinstance(value, (int, np.integer)):
            number: int | float = int(value)
        else:
            number = float(value)
            if math.isnan(number) or (math.isinf(number) and not (self.infinite and number == math.inf)):
                raise bad
            if self.kind is int:
                if not number.is_integer():
                    raise bad
                number = int(number)
        if self.kind is float:
            number = float(number)
        if number < self.low or number > self.high:
            raise bad
        if (self.open_low and number == self.low) or (self.open_high and number == self.high):
            raise bad
        return number


SEED = Bound(int, 0, 2**63 - 1, meaning="an integer >= 0")  # torch's and NumPy's generators take any of them


def check_int(
    value: Any, name: str, low: float = 1, high: float = math.inf, *, owner: str = "", meaning: str | None = None,
    error: type[Exception] = ConfigError,
) -> int:
    """An integer count in [low, high] (integer-valued floats accepted).

    Raises:
        ConfigError (or `error`): anything else, naming the argument, its value and the range.
    """
    return int(Bound(int, low, high, meaning=meaning).check(value, name, owner, error))


def check_float(
    value: Any, name: str, low: float = -math.inf, high: float = math.inf, *, open_low: bool = False,
    open_high: bool = False, infinite: bool = False, owner: str = "", meaning: str | None = None,
    error: type[Exception] = ConfigError,
) -> float:
    """A finite number in [low, high] (open where asked; +inf only with `infinite`).

    Raises:
        ConfigError (or `error`): anything else, naming the argument, its value and the range.
    """
    bound = Bound(float, low, high, open_low, open_high, infinite, meaning)
    return float(bound.check(value, name, owner, error))


def check_flag(value: Any, name: str, *, owner: str = "", error: type[Exception] = ConfigError) -> bool:
    """True or False (NumPy's bool too); never a truthy string or number.

    Raises:
        ConfigError (or `error`): anything else.
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    where = f"{owner} `{name}`" if owner else f"`{name}`"
    raise error(f"{where} must be True or False (TRUE or FALSE in R), got {value!r}.")


def check_seed(value: Any, name: str = "seed", *, owner: str = "", none: bool = True) -> int | None:
    """A seed: an integer >= 0, or None (fresh randomness) where `none`.

    Raises:
        ConfigError: anything else.
    """
    if value is None and none:
        return None
    meaning = "an integer >= 0 or None" if none else SEED.meaning
    return int(Bound(int, SEED.low, SEED.high, meaning=meaning).check(value, name, owner))


def check_path(value: Any, name: str = "path") -> Path:
    """A file system path: a non-empty string or an os.PathLike (pathlib.Path).

    Raises:
        ConfigError: anything else.
    """
    if isinstance(value, os.PathLike) or (isinstance(value, str) and value):
        return Path(value)
    raise ConfigError(f"`{name}` must be a directory path (a string or pathlib.Path), got {value!r}.")


def _same(value: Any, option: Any) -> bool:
    """Whether `value` is the choice `option` (a string, a bool or None)."""
    if isinstance(option, bool) or option is None:
        return value is option or (option is not None and isinstance(value, np.bool_) and bool(value) is option)
    return isinstance(value, str) and value == option


def check_choice(value: Any, name: str, allowed: Sequence[Any], *, owner: str = "") -> Any:
    """One of `allowed` (compared by equality, never by truthiness: True is not 1 here).

    Raises:
        ConfigError: anything else, listing the allowed values.
    """
    for option in allowed:
        if _same(value, option):
            return option
    where = f"{owner} `{name}`" if owner else f"`{name}`"
    raise ConfigError(f"{where} must be one of {list(allowed)}, got {value!r}.")
