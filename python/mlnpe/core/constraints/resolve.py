"""`get_support`: a support from its string form (see `SUPPORT_SPECS`), its dict form or a `Support`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlnpe.errors import SpecError

from .base import Support, support_from_dict
from .correlation import Correlation
from .scalar import Interval, Positive, Real, UnitInterval

__all__ = ["SUPPORT_SPECS", "get_support"]

#: The string forms accepted by `get_support`.
SUPPORT_SPECS: tuple[str, ...] = (
    "real",
    "positive",
    "unit_interval",
    "correlation:<k>",
    "interval:<low>:<high>",
)

_PARAMETER_FREE: dict[str, type[Support]] = {"real": Real, "positive": Positive, "unit_interval": UnitInterval}


def _support_from_string(spec: str) -> Support:
    """Parses a support string; see `SUPPORT_SPECS` for the valid forms.

    Args:
        spec: The spec string (case-insensitive, surrounding whitespace ignored).

    Returns:
        The support.

    Raises:
        SpecError: If the string is not one of the valid forms.
    """
    parts = [part.strip() for part in spec.strip().lower().split(":")]
    head, args = parts[0], parts[1:]
    invalid = SpecError(f"unknown support {spec!r}; valid supports are {list(SUPPORT_SPECS)}.")
    if head in _PARAMETER_FREE and not args:
        return _PARAMETER_FREE[head]()
    if head == "correlation" and len(args) == 1:
        try:
            k = int(args[0])
        except ValueError:
            raise SpecError(
                f"support {spec!r} has a non-integer size {args[0]!r}; "
                f"write 'correlation:<k>', e.g. 'correlation:3'."
            ) from None
        return Correlation(k)
    if head == "interval" and len(args) == 2:
        try:
            low, high = float(args[0]), float(args[1])
        except ValueError:
            raise SpecError(
                f"support {spec!r} has non-numeric bounds; "
                f"write 'interval:<low>:<high>', e.g. 'interval:0:1'."
            ) from None
        return Interval(low, high)
    raise invalid


def get_support(spec: str | Support | Mapping[str, Any]) -> Support:
    """Resolves a support from a string, a dict or a `Support`.

    Args:
        spec: One of ``"real"``, ``"positive"``, ``"unit_interval"``, ``"correlation:<k>"``,
            ``"interval:<low>:<high>"``, a `Support` (returned as is), or a dict from `Support.to_dict`.

    Returns:
        The support.

    Raises:
        SpecError: If ``spec`` is not recognised; the message lists the valid forms.
    """
    if isinstance(spec, Support):
        return spec
    if isinstance(spec, Mapping):
        return support_from_dict(spec)
    if isinstance(spec, str):
        return _support_from_string(spec)
    raise SpecError(
        f"support must be a string, a dict or a Support, got {type(spec).__name__}: {spec!r}; "
        f"valid strings are {list(SUPPORT_SPECS)}."
    )
