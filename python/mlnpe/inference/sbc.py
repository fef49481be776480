"""Simulation-based calibration and recovery of a trained amortizer, in one call.

`sbc(npe)` simulates datasets from the model's prior over the trained ranges of J and N_j, draws from the amortized
posterior of each, and returns an :class:`SBCResult`: the rank of every true value among its draws, the pass/fail
decision of the ECDF-difference band that holds simultaneously with probability `prob` (Säilynoja, Bürkner and
Vehtari 2022; mlnpe.inference.calibration), the chi-square p-values, and recovery (posterior median and central interval
against the truth: correlation and coverage). Plots: :meth:`SBCResult.plot_ecdf` and :meth:`SBCResult.plot_recovery`.

Local parameters are checked twice: once with the first group of each dataset (independent ranks, so the band's
sample size is the number of datasets) and once pooled over every group (many more ranks, but dependent within a
dataset, so the pooled band is a screen rather than a test).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from os import PathLike
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..checks import check_float, check_int, check_seed
from .calibration import pool_local_ranks, sbc_check, sbc_ranks
from .plots import plot_recovery, plot_sbc_ecdf
from .recovery import recovery

__all__ = ["SBCResult", "sbc"]

# (global draws (..., G), local draws (..., J, L)) -> the same in the names the user sees
Transform = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass
class SBCResult:
    """Simulation-based calibration of an amortizer.

    Attributes:
        global_names, local_names: parameter labels.
        global_draws: (sims, draws, G); global_truth: (sims, G).
        local_draws: (sims, draws, J, L); local_truth: (sims, J, L); mask: (sims, J) True for real groups.
        n_draws: posterior draws per dataset.
        prob: simultaneous coverage of the ECDF band.
        seed: the seed of the simulations and draws.
    """

    global_names: list[str]
    local_names: list[str]
    global_draws: np.ndarray
    global_truth: np.ndarray
    local_draws: np.ndarray
    local_truth: np.ndarray
    mask: np.ndarray
    n_draws: int
    prob: float
    seed: int

    @property
    def names(self) -> list[str]:
        return [*self.global_names, *self.local_names]

    @property
    def n_datasets(self) -> int:
        return int(self.global_truth.shape[0])

    def _first_group(self) -> np.ndarray:
        first = np.zeros_like(self.mask)
        first[:, 0] = True
        return first

    def ranks(self) -> np.ndarray:
        """(sims, G + L): the globals' ranks, then each local parameter's rank in the first group of each dataset."""
        return self._ranks.copy()

    @cached_property
    def _ranks(self) -> np.ndarray:  # computed once: the table, the pass/fail and the plot use the same ranks
        rng = np.random.default_rng(self.seed)
        g = sbc_ranks(self.global_draws, self.global_truth, rng=rng)
        if not self.local_names:
            return g
        first = self._first_group()
        l = pool_local_ranks(sbc_ranks(self.local_draws, self.local_truth, mask=first, rng=rng), first)
        return np.concatenate([g, l], 1)

    def pooled_local_ranks(self) -> np.ndarray:
        """(cases, L): each local parameter's rank in every real group of every dataset."""
        rng = np.random.default_rng(self.seed + 1)
        return pool_local_ranks(sbc_ranks(self.local_draws, self.local_truth, mask=self.mask, rng=rng), self.mask)

    def table(self) -> list[dict[str, Any]]:
        """One row per parameter: name, kind ("global" or "local"), inside_band (the pass/fail decision), pvalue
        (chi-square uniformity of the ranks), for locals pooled_inside_band (every group's ranks), and recovery's
        correlation (posterior median against the truth) and coverage of the 95 % central interval."""
        return [dict(row) for row in self._table]

    @cached_property
    def _table(self) -> list[dict[str, Any]]:
        check = sbc_check(self.ranks(), self.n_draws, prob=self.prob, rng=np.random.default_rng(self.seed + 2))
        rec_g = recovery(self.global_draws, self.global_truth)
        rows = [
            {"parameter": name, "kind": "global", "inside_band": bool(check["inside_band"][i]),
             "pvalue": float(check["pvalue"][i]), "pooled_inside_band": None,
             "correlation": float(rec_g["correlation"][i]), "coverage": float(rec_g["coverage"][i])}
            for i, name in enumerate(self.global_names)
        ]  # fmt: skip
        if self.local_names:
            pooled = sbc_check(self.pooled_local_ranks(), self.n_draws, prob=self.prob,
                               rng=np.random.default_rng(self.seed + 3))  # fmt: skip
            rec_l = recovery(self.local_draws, self.local_truth, mask=self.mask)
            g = len(self.global_names)
            rows += [
                {"parameter": name, "kind": "local", "inside_band": bool(check["inside_band"][g + k]),
                 "pvalue": float(check["pvalue"][g + k]), "pooled_inside_band": bool(pooled["inside_band"][k]),
                 "correlation": float(rec_l["correlation"][k]), "coverage": float(rec_l["coverage"][k])}
                for k, name in enumerate(self.local_names)
            ]  # fmt: skip
        return rows

    @property
    def passed(self) -> bool:
        """True when every parameter's ECDF difference stays inside its band (globals, and locals' first groups)."""
        return all(row["inside_band"] for row in self.table())

    def plot_ecdf(self, path: str | PathLike[str] | None = None) -> Any:
        """ECDF-difference plot with the simultaneous band, one panel per parameter (PNG for a .png `path`)."""
        return plot_sbc_ecdf(self.ranks(), self.n_draws, self.names, prob=self.prob,
                             rng=np.random.default_rng(self.seed + 2), path=path)  # fmt: skip

    def plot_recovery(self, path: str | PathLike[str] | None = None, local: bool = False) -> Any:
        """Posterior medians and 95 % intervals against the true values: globals, or with `local=True` every
        real group's local parameters."""
        if local:
            return plot_recovery(self.local_draws, self.local_truth, self.local_names, mask=self.mask, path=path)
        return plot_recovery(self.global_draws, self.global_truth, self.global_names, path=path)


def sbc(
    npe: Any,
    n_datasets: int = 200,
    n_draws: int = 250,
    seed: int = 0,
    prob: float = 0.99,
    *,
    transform: Transform | None = None,
    names: tuple[Sequence[str], Sequence[str]] | None = None,
    chunk: int = 25,
) -> SBCResult:
    """Simulation-based calibration of a trained MultilevelNPE on `n_datasets` prior simulations.

    Arguments:
        npe: a trained MultilevelNPE with its model (it simulates over its trained J and N_j ranges).
        n_datasets: simulated datasets (the paper uses 100-200; the band's power grows with it).
        n_draws: posterior draws per dataset (ranks lie in 0..n_draws).
        seed: seed of the simulations and draws.
        prob: simultaneous coverage of the ECDF band (0.99 as in the paper).
        transform: maps global draws (..., G) and local draws (..., J, L) to the parameters to check (e.g. brms's
            uncentred intercept); SBC holds for any function of the parameters applied to draws and truth alike.
        names: (global names, local names) after `transform` (default: the model's).
        chunk: datasets per sampling pass (bounds the memory of the local flow's activations).
    Returns:
        An :class:`SBCResult`.
    Raises:
        ConfigError: fewer than 10 datasets or 2 draws, a `prob` outside (0, 1), or a `seed` or `chunk` that is not
            an integer (>= 0, >= 1).
    """
    n_datasets, n_draws = check_int(n_datasets, "n_datasets", 10), check_int(n_draws, "n_draws", 2)
    prob = check_float(prob, "prob", 0, 1, open_low=True, open_high=True)
    seed, chunk = check_seed(seed, none=False), check_int(chunk, "chunk")
    generator = torch.Generator().manual_seed(int(seed))
    sims = npe.simulate(int(n_datasets), generator)
    width = sims.batch.group_mask.shape[1]
    parts = []
    with torch.no_grad():
        for i in range(0, int(n_datasets), chunk):
            gd, ld = npe.sample_batch(sims.batch.index(slice(i, i + chunk)), int(n_draws), generator)
            ld = torch.nn.functional.pad(ld, (0, 0, 0, width - ld.shape[2]), value=1.0)
            parts.append((gd.transpose(0, 1).double().numpy(), ld.transpose(0, 1).double().numpy()))
    g_draws, l_draws = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    g_truth, l_truth = sims.global_params.double().numpy(), sims.local_params.double().numpy()
    mask = sims.batch.group_mask.numpy().astype(bool)
    l_draws = np.where(mask[:, None, :, None], l_draws, l_truth[:, None])  # padded groups: any finite value
    if transform is not None:
        g_draws, l_draws = transform(g_draws, l_draws)
        g_truth, l_truth = transform(g_truth, l_truth)
    g_names, l_names = names or (npe.global_names, npe.local_names)
    return SBCResult(list(g_names), list(l_names), g_draws, g_truth, l_draws, l_truth, mask, int(n_draws),
                     float(prob), int(seed))  # fmt: skip
