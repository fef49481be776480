"""Input checks shared by the array diagnostics: numeric arrays, masks, probabilities, counts, ranks, generators.

Each check returns the converted value or raises :class:`~mlnpe.errors.DataError` with a message that names the
argument, what it got and the fix. Axis conventions are those of :mod:`mlnpe.inference.calibration`.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..checks import check_float, check_int
from ..errors import ConfigError, DataError

__all__ = [
    "as_float",
    "as_mask",
    "check_prob",
    "is_integer",
    "check_n_draws",
    "check_ranks",
    "as_generator",
]


def as_float(values: Any, argument: str, ndims: Sequence[int]) -> np.ndarray:
    """Converts to a finite float64 array whose number of dimensions is one of `ndims`.

    Arguments:
        values: numeric or boolean array-like.
        argument: the argument's name, for the error message.
        ndims: the accepted numbers of dimensions.

    Returns:
        A float64 array.

    Raises:
        DataError: a non-numeric dtype, another number of dimensions, no values, or a non-finite value.
    """
    array = np.asarray(values)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise DataError(f"`{argument}` must be numeric, got dtype {array.dtype}. Pass a numeric numpy array.")
    array = array.astype(np.float64)
    if array.ndim not in ndims:
        wanted = " or ".join(str(d) for d in ndims)
        raise DataError(
            f"`{argument}` must have {wanted} dimensions, got shape {array.shape}. Check the axis order in the "
            "docstring (sims, draws, [groups,] params)."
        )
    if array.size == 0:
        raise DataError(f"`{argument}` is empty (shape {array.shape}). Pass at least one value per axis.")
    bad = ~np.isfinite(array)
    if bad.any():
        raise DataError(
            f"`{argument}` has {int(bad.sum())} non-finite values (first at index "
            f"{tuple(int(i) for i in np.argwhere(bad)[0])}). Remove or replace them; use a mask for padding."
        )
    return array


def as_mask(mask: Any, shape: tuple[int, ...], argument: str = "mask") -> np.ndarray:
    """Checks a boolean mask of the given shape.

    Arguments:
        mask: (sims, groups) boolean, True where a group exists.
        shape: the shape it must have.
        argument: the argument's name, for the error message.

    Returns:
        The mask as a numpy array.

    Raises:
        DataError: a dtype other than bool, or another shape.
    """
    array = np.asarray(mask)
    if array.dtype != np.bool_:
        raise DataError(f"`{argument}` must be boolean, got dtype {array.dtype}. Pass e.g. `{argument} == 1`.")
    if array.shape != shape:
        raise DataError(f"`{argument}` must have shape (sims, groups) = {shape}, got {array.shape}.")
    return array


def check_prob(prob: float) -> float:
    """Checks a probability `prob` strictly between 0 and 1 and returns it as a float.

    Raises:
        DataError: `prob` outside (0, 1).
    """
    return check_float(prob, "prob", 0, 1, open_low=True, open_high=True, meaning="a probability in (0, 1), e.g. 0.99",
                       error=DataError)  # fmt: skip


def is_integer(value: Any, minimum: int) -> bool:
    """True for an integer-valued number (not a bool) of at least `minimum`."""
    try:
        check_int(value, "value", minimum)
    except ConfigError:
        return False
    return True


def check_n_draws(n_draws: int) -> int:
    """Checks the number of posterior draws per simulation (a positive integer) and returns it as an int.

    Raises:
        DataError: anything but a positive integer.
    """
    if not is_integer(n_draws, 1):
        raise DataError(f"`n_draws` must be a positive integer (posterior draws per simulation), got {n_draws!r}.")
    return int(n_draws)


def check_ranks(ranks: Any, n_draws: int) -> np.ndarray:
    """Checks pooled ranks (n, params): integers in [0, n_draws].

    Arguments:
        ranks: (n,) or (n, params) integer ranks; integer-valued floats are accepted.
        n_draws: posterior draws per simulation, the largest possible rank.

    Returns:
        (n, params) int ranks.

    Raises:
        DataError: another shape, non-integer values, or values outside [0, n_draws].
    """
    array = np.asarray(ranks)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2 or array.size == 0:
        raise DataError(
            f"`ranks` must have shape (n, params), got {array.shape}. Pool local ranks (sims, groups, params) "
            "with pool_local_ranks(ranks, mask) first."
        )
    if not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(array == np.round(array)):
            raise DataError(f"`ranks` must hold integers, got dtype {array.dtype}. Pass the output of sbc_ranks().")
        array = array.astype(np.int64)
    if array.min() < 0 or array.max() > n_draws:
        raise DataError(
            f"`ranks` must lie in [0, n_draws] = [0, {n_draws}], got values in [{array.min()}, {array.max()}]. "
            "Ranks of -1 mark padded groups: drop them with pool_local_ranks(ranks, mask); otherwise check "
            "`n_draws`."
        )
    return array


def as_generator(rng: np.random.Generator | None) -> np.random.Generator:
    """Returns `rng`, or a fresh numpy Generator when it is None.

    Raises:
        DataError: anything but a numpy Generator or None.
    """
    if rng is None:
        return np.random.default_rng()
    if not isinstance(rng, np.random.Generator):
        raise DataError(
            f"`rng` must be a numpy Generator or None, got {type(rng).__name__}. Use np.random.default_rng(seed)."
        )
    return rng
