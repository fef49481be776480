"""Structured posterior draws of a two-level model: global (draws x G) and local (draws x J x L), with names."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..errors import DataError

__all__ = ["PosteriorDraws"]


@dataclass(frozen=True)
class PosteriorDraws:
    """Posterior draws for one dataset.

    Attributes:
        global_draws: (draws, G) global parameters.
        local_draws: (draws, J, L) local parameters of every group.
        global_names: G scalar names.
        local_names: L scalar names of one group.
        levels: J group labels.
        log_q: (draws,) optional log density of each joint draw under the estimator.
    """

    global_draws: np.ndarray
    local_draws: np.ndarray
    global_names: tuple[str, ...]
    local_names: tuple[str, ...]
    levels: tuple[str, ...]
    log_q: np.ndarray | None = None

    def __post_init__(self) -> None:
        s, g = self.global_draws.shape
        s2, j, l = self.local_draws.shape
        if s != s2 or g != len(self.global_names) or l != len(self.local_names) or j != len(self.levels):
            raise DataError(
                f"inconsistent draws: global {self.global_draws.shape} for {len(self.global_names)} names, local "
                f"{self.local_draws.shape} for {len(self.levels)} levels x {len(self.local_names)} names."
            )

    @property
    def n_draws(self) -> int:
        return int(self.global_draws.shape[0])

    def local_name(self, name: str, level: str) -> str:
        """Name of one local scalar of one group: `name[level]`."""
        return f"{name}[{level}]"

    @property
    def names(self) -> list[str]:
        """All scalar names: globals, then locals parameter by parameter, each over all groups."""
        local = [self.local_name(n, lev) for n in self.local_names for lev in self.levels]
        return [*self.global_names, *local]

    def to_matrix(self) -> np.ndarray:
        """(draws, G + L * J), columns in the order of `names`."""
        local = np.transpose(self.local_draws, (0, 2, 1)).reshape(self.n_draws, -1)
        return np.concatenate([self.global_draws, local], axis=1)

    def to_dict(self) -> dict[str, np.ndarray]:
        """{name: (draws,)} for every scalar."""
        return dict(zip(self.names, self.to_matrix().T))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """{"global": (draws, G), "local": (draws, J, L)}."""
        return {"global": self.global_draws, "local": self.local_draws}

    def to_dataframe(self) -> Any:
        """A pandas DataFrame, one column per scalar parameter, one row per draw."""
        import pandas as pd

        return pd.DataFrame(self.to_matrix(), columns=self.names)

    def __getitem__(self, name: str) -> np.ndarray:
        """Draws of one global scalar (draws,) or of one local parameter over groups (draws, J)."""
        if name in self.global_names:
            return self.global_draws[:, self.global_names.index(name)]
        if name in self.local_names:
            return self.local_draws[:, :, self.local_names.index(name)]
        raise KeyError(f"no parameter {name!r}; known: {list(self.global_names) + list(self.local_names)}")

    def summary(self, probs: Sequence[float] = (0.025, 0.5, 0.975)) -> Any:
        """A DataFrame with mean, sd and quantiles per scalar parameter."""
        import pandas as pd

        m = self.to_matrix()
        table = {"mean": m.mean(0), "sd": m.std(0, ddof=1)}
        for p, q in zip(probs, np.quantile(m, probs, axis=0)):
            table[f"q{100 * p:g}"] = q
        return pd.DataFrame(table, index=self.names)

    def resample(self, indices: np.ndarray) -> "PosteriorDraws":
        """Draws picked by index (e.g. importance resampling)."""
        return PosteriorDraws(
            self.global_draws[indices],
            self.local_draws[indices],
            self.global_names,
            self.local_names,
            self.levels,
            None if self.log_q is None else self.log_q[indices],
        )
