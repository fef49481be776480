"""Memory estimated before large allocations: a request that cannot fit fails at once, saying how much it needs.

Sampling, PSIS, refinement and predictions allocate arrays that grow with the number of draws times the size of
the data (draws x groups x parameters, draws x rows). A request far beyond the machine (`n_draws=10**9`, or
predictions for a huge data frame) would otherwise fail after minutes inside the allocator, or be killed by the
operating system. Entry points estimate the bytes they will allocate per draw and call :func:`check_memory` first.

:func:`available_memory` reads MemAvailable from /proc/meminfo, lowered to the room left under the control
group's limit where one is set (containers). Where neither exists (macOS, Windows) it returns None and nothing is
checked.

Example:
    >>> check_memory(8.0, 10**15, "`n_draws`=1000000000000000 draws", "Ask for at most {most} draws.")
    Traceback (most recent call last):
    ...
    mlnpe.errors.ConfigError: `n_draws`=1000000000000000 draws would need about 8 PB of memory, ...
"""

from __future__ import annotations

import math
from pathlib import Path

from .errors import ConfigError, MlnpeError

__all__ = ["available_memory", "check_memory", "format_bytes"]

# cgroup v2, then v1: (limit, usage); a v1 limit of about 2**63 means "no limit"
_CGROUP_FILES = (
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
    ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
)


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": no limit


def _meminfo_available() -> int | None:
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024  # kB
    return None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, or None where the platform does not say.

    MemAvailable of /proc/meminfo, or less where the process's control group has a lower limit (its limit minus
    its usage).
    """
    available = _meminfo_available()
    for limit_file, usage_file in _CGROUP_FILES:
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 2**60:
            room = max(limit - usage, 0)
            available = room if available is None else min(available, room)
            break
    return available


def format_bytes(n: float) -> str:
    """Bytes in words: "512 B", "1.5 GB", "8 PB" (powers of 1000)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000.0
    return f"{n:.3g} PB"


def check_memory(
    per_unit: float,
    units: int,
    request: str,
    fix: str,
    *,
    fixed: float = 0.0,
    error: type[MlnpeError] = ConfigError,
    fix_none: str | None = None,
) -> None:
    """Raises `error` when an allocation of about `fixed + per_unit * units` bytes would not fit in the available
    memory (`available_memory`); does nothing where the platform does not report it.

    Arguments:
        per_unit: estimated bytes per unit of the request (per draw).
        units: the number of units asked for (draws).
        request: what was asked for, naming the argument and its value, e.g. "`n_draws`=10000000000 draws of a
            dataset of 8 groups and 48 rows".
        fix: how to ask for less; "{most}" in it becomes the most units that fit.
        fixed: estimated bytes that do not grow with `units`.
        error: the error class (ConfigError for a setting, DataError for data).
        fix_none: the fix when not even one unit fits (default: `fix`).

    Raises:
        `error`: the estimate exceeds the available memory; the message names the request, the estimate, the
        available memory and the fix.
    """
    need = float(fixed) + float(per_unit) * float(units)
    available = available_memory()
    if available is None or need <= available:
        return
    most = max(0, math.floor((available - fixed) / per_unit)) if per_unit > 0 else 0
    raise error(
        f"{request} would need about {format_bytes(need)} of memory, but {format_bytes(available)} are available. "
        + (fix if most or fix_none is None else fix_none).format(most=most)
    )
