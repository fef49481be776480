"""Simulation studies and power analysis with a trained amortizer: it trains once, then only samples.

`simulate_study(npe, truths, groups, rows, n_datasets)` simulates `n_datasets` datasets at every grid point (a
vector of true global parameters) and every combination of the numbers of groups J and rows per group N, draws
from the amortized posterior of each, and returns a :class:`StudyResult`:
- per grid point, J, N and global parameter: the bias and RMSE of the posterior mean, the mean posterior sd, the
  coverage of the central 50/90/95 % intervals, and the power: the share of datasets whose central `level`
  interval excludes zero (`power_interval`) or whose posterior probability of the sign the truth has (positive
  for a truth of zero) reaches `threshold` (`power_prob`);
- per dataset: the PSIS Pareto k-hat of its amortized draws against the model's exact joint density (models with
  a likelihood), with the datasets above 0.7 flagged (`reliable` False) and counted per row of the summary.

A study's datasets are independent draws of the same design: the local parameters come from their prior given the
grid point's globals, the covariates from the model's design (`TwoLevelModel.sample_design` with J and N fixed).
The amortizer's accuracy sets the study's: a k-hat above 0.7 says the amortized draws of that dataset are off, and
the summary's coverage then measures the amortizer as much as the design.

`sample_many(npe, datasets, n_draws)` is the batched inference underneath: it streams any number of datasets in
chunks through one sampling pass each and returns per-dataset posterior summaries.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from .checks import check_float, check_int, check_seed
from .consistency import has_likelihood, log_joint
from .core.data import GroupedBatch, GroupedData, collate
from .errors import ConfigError, RangeError
from .inference.policy import KHAT_REFINE
from .inference.certificate import ratio_khat

__all__ = ["StudyResult", "sample_many", "simulate_study", "study_client"]

# (global values (..., G)) -> the same in the names the user sees (..., P)
Transform = Callable[[np.ndarray], np.ndarray]

LEVELS = (0.5, 0.9, 0.95)


def _check_sizes(values: Any, name: str, trained: tuple[int, int]) -> list[int]:
    """A list of sizes (integers) inside the amortizer's trained range."""
    items = list(np.atleast_1d(np.asarray(values)).ravel()) if not isinstance(values, (list, tuple)) else list(values)
    if not items:
        raise ConfigError(f"`{name}` must name at least one size, got {values!r}.")
    sizes = [check_int(v, name) for v in items]
    outside = [s for s in sizes if not trained[0] <= s <= trained[1]]
    if outside:
        raise RangeError(
            f"`{name}` = {outside} lies outside the amortizer's trained range [{trained[0]}, {trained[1]}]: its "
            f"posteriors there would be extrapolations. Choose sizes in that range, or retrain with a range that "
            f"covers them (e.g. `{'groups' if name == 'n_groups' else 'rows'}=({min(min(sizes), trained[0])}, "
            f"{max(max(sizes), trained[1])})`)."
        )
    return sizes


def _summaries(draws: np.ndarray, truth: np.ndarray | None, levels: Sequence[float]) -> dict[str, np.ndarray]:
    """Per-dataset summaries of draws (B, S, P): mean, sd, the central intervals' ends per level, P(> 0); with
    `truth` (B, P), whether each interval covers it."""
    out = {"mean": draws.mean(1), "sd": draws.std(1, ddof=1), "p_positive": (draws > 0).mean(1)}
    for level in levels:
        lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=1)
        out[f"lower_{level:g}"], out[f"upper_{level:g}"] = lo, hi
        if truth is not None:
            out[f"covered_{level:g}"] = (lo <= truth) & (truth <= hi)
    return out


def _khats(npe: Any, batch: GroupedBatch, g: torch.Tensor, l: torch.Tensor, lq: torch.Tensor) -> np.ndarray:
    """PSIS k-hat per dataset of draws g (S, B, G), l (S, B, J, L) with log q (S, B)."""
    ratio = (log_joint(npe.model, batch, g, l).double() - lq.double()).numpy()
    return np.array([ratio_khat(ratio[:, i]) for i in range(ratio.shape[1])])


@dataclass
class StudyResult:
    """A simulation study's results.

    Attributes:
        summary: a pandas DataFrame, one row per grid point, J, N and parameter: `point` (the grid point's index)
            and its grid columns, `n_groups`, `n_rows`, `parameter`, `truth`, `bias` and `rmse` (of the posterior
            mean), `mean_sd`, `coverage_50`, `coverage_90`, `coverage_95`, `power_interval`, `power_prob`,
            `n_datasets`, `n_unreliable` (datasets with k-hat > 0.7).
        datasets: a pandas DataFrame, one row per dataset: `point`, `n_groups`, `n_rows`, `dataset`, `khat` (NaN
            for models without a likelihood), `reliable`.
        level: the interval level of `power_interval`; threshold: the posterior probability of `power_prob`.
        seconds: wall time of the simulations and sampling.
    """

    summary: Any
    datasets: Any
    level: float
    threshold: float
    seconds: float

    @property
    def n_unreliable(self) -> int:
        """Datasets whose amortized draws PSIS does not certify (k-hat > 0.7)."""
        return int((~self.datasets["reliable"]).sum())

    def plot_power(self, parameter: str, x: str = "n_groups", kind: str = "interval", ax: Any = None) -> Any:
        """Power of `parameter` against `x` ("n_groups" or "n_rows"), one line per other setting (grid point and
        the other size); `kind` "interval" or "prob". Returns the matplotlib Axes."""
        return self._plot(parameter, x, f"power_{kind}", "power", ax, (0.0, 1.0))

    def plot_coverage(self, parameter: str, x: str = "n_groups", level: float = 0.95, ax: Any = None) -> Any:
        """Coverage of the central `level` interval of `parameter` against `x`, with the nominal level dashed."""
        ax = self._plot(parameter, x, f"coverage_{round(100 * level)}", f"coverage of the {level:.0%} interval", ax,
                        (0.0, 1.0))  # fmt: skip
        ax.axhline(level, color="grey", linestyle="--", linewidth=1)
        return ax

    def _plot(self, parameter: str, x: str, column: str, label: str, ax: Any, ylim: tuple[float, float]) -> Any:
        import matplotlib.pyplot as plt

        if x not in ("n_groups", "n_rows"):
            raise ConfigError(f"`x` must be 'n_groups' or 'n_rows', got {x!r}.")
        rows = self.summary[self.summary["parameter"] == parameter]
        if rows.empty:
            raise ConfigError(
                f"`parameter` {parameter!r} is not in the study; its parameters: {sorted(set(self.summary['parameter']))}."
            )
        if column not in rows:
            raise ConfigError(f"the study has no column {column!r}; levels: {list(LEVELS)}.")
        ax = ax or plt.subplots(figsize=(5, 3.5))[1]
        other = "n_rows" if x == "n_groups" else "n_groups"
        for (point, size), part in rows.groupby(["point", other]):
            part = part.sort_values(x)
            ax.plot(part[x], part[column], marker="o", label=f"point {point}, {other} {size}")
        ax.set(xlabel=x, ylabel=label, ylim=ylim, title=parameter)
        ax.legend(fontsize=7)
        return ax


class study_client:
    """A context manager for the `client` of :func:`simulate_study`: a dask.distributed Client as it is; an address
    ("tcp://host:8786", the scheduler of an existing cluster: `dask-scheduler` / `dask-worker` on Slurm or
    Kubernetes, or dask-jobqueue's and dask-kubernetes's clusters) connected to and closed after; a number of
    workers, a local cluster of that many single-threaded processes started and stopped; None, no client."""

    def __init__(self, client: Any):
        self.given, self.owned = client, []

    def __enter__(self) -> Any:
        c = self.given
        if isinstance(c, bool):
            raise ConfigError(f"`client` must be a dask Client, a scheduler address or a number of workers, got {c!r}.")
        if not isinstance(c, (str, int, np.integer)):
            return c  # None or a Client
        try:
            import distributed
        except ImportError:
            raise ConfigError("a study on workers needs dask.distributed: pip install 'mlnpe[distributed]'.") from None
        if isinstance(c, str):
            client = distributed.Client(c)
        else:
            workers = check_int(c, "workers")
            cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                               dashboard_address=None)  # fmt: skip
            self.owned.append(cluster)
            client = distributed.Client(cluster)
        self.owned.insert(0, client)
        return client

    def __exit__(self, *exc: Any) -> None:
        for thing in self.owned:
            thing.close()


class _Bar:
    """A minimal progress bar on stderr."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.start, self.last = total, 0, enabled, time.perf_counter(), 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and (now - self.last > 0.5 or self.done >= self.total):
            self.last = now
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} datasets "
                             f"{now - self.start:6.1f}s")  # fmt: skip
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def simulate_study(
    npe: Any,
    truths: Any,
    groups: Any,
    rows: Any,
    n_datasets: int = 200,
    n_draws: int = 1000,
    seed: int = 0,
    *,
    level: float = 0.95,
    threshold: float = 0.975,
    transform: Transform | None = None,
    names: Sequence[str] | None = None,
    grid: Any = None,
    chunk: int = 100,
    progress: bool = False,
    client: Any = None,
    checkpoint: Any = None,
) -> StudyResult:
    """A simulation study of a trained MultilevelNPE: bias, RMSE, coverage and power per grid point and design.

    Arguments:
        npe: a trained MultilevelNPE with its model (it simulates and, with a likelihood, certifies by PSIS).
        truths: (points, G) true global parameters in the model's layout, one row per grid point (constrained).
        groups: numbers of groups J to study (inside the trained range).
        rows: numbers of rows per group N to study (inside the trained range).
        n_datasets: datasets per grid point, J and N.
        n_draws: posterior draws per dataset.
        seed: seed of the simulations and draws.
        level: the interval level of `power_interval` (one of 0.5, 0.9, 0.95).
        threshold: the posterior probability of `power_prob`.
        transform: maps global values (..., G) to the parameters to report (..., P) (e.g. brms's names);
            applied to draws and truths alike.
        names: the reported parameters' names (default: the model's global names).
        grid: a pandas DataFrame with one row per grid point, whose columns label the summary's rows.
        chunk: datasets per sampling pass.
        progress: show a progress bar.
        client: a `dask.distributed` Client: the cells (grid point, J, N) run as tasks on its workers, which get
            the amortizer once (scattered); a task whose worker dies is rerun elsewhere (twice at most). None: in
            this process.
        checkpoint: a directory where every finished cell is written (atomically, one JSON file per cell); a
            rerun of the same study with the same checkpoint reads the finished cells instead of recomputing them,
            so an interrupted study resumes where it stopped, and no cell is counted twice.

    Raises:
        ConfigError: bad arguments; RangeError: sizes outside the trained ranges.
    """
    import pandas as pd

    model = npe.model
    if model is None:
        raise ConfigError("a study needs the amortizer's model (its simulator): load it with its model.")
    truths = np.atleast_2d(np.asarray(truths, dtype=np.float64))
    g_dim = len(npe.global_names)
    if truths.shape[1] != g_dim or not np.isfinite(truths).all():
        raise ConfigError(f"`truths` must be finite, one row of {g_dim} global values per grid point, got shape "
                          f"{truths.shape}.")  # fmt: skip
    groups = _check_sizes(groups, "n_groups", npe.groups)
    rows = _check_sizes(rows, "n_rows", npe.rows)
    n_datasets, n_draws = check_int(n_datasets, "n_datasets", 2), check_int(n_draws, "n_draws", 10)
    seed, chunk = check_seed(seed, none=False), check_int(chunk, "chunk")
    threshold = check_float(threshold, "threshold", 0.5, 1, open_high=True)
    if level not in LEVELS:
        raise ConfigError(f"`level` must be one of {list(LEVELS)}, got {level!r}.")
    transform = transform or (lambda g: g)
    names = list(names or npe.global_names)
    labels = grid.reset_index(drop=True) if grid is not None else None
    cells = [(p, j, n) for p in range(len(truths)) for j in groups for n in rows]
    settings = dict(n_datasets=n_datasets, n_draws=n_draws, seed=seed, chunk=chunk, level=level, threshold=threshold,
                    transform=transform, names=names)  # fmt: skip
    folder = None if checkpoint is None else Path(checkpoint).expanduser()
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    bar = _Bar(len(cells) * n_datasets, progress)
    results: dict[tuple[int, int, int], tuple[list[dict], list[dict]]] = {}
    todo = []
    for cell in cells:  # cells a checkpoint holds are read, not recomputed
        saved = _read_cell(folder, cell)
        if saved is not None:
            results[cell] = saved
            bar.update(n_datasets)
        else:
            todo.append(cell)
    if client is None:
        for cell in todo:
            results[cell] = _finish_cell(folder, cell, _run_cell(npe, truths[cell[0]], cell, **settings))
            bar.update(n_datasets)
    else:
        from distributed import as_completed

        shared = client.scatter(npe, broadcast=True)
        futures = {client.submit(_run_cell, shared, truths[cell[0]], cell, **settings, key=f"mlnpe-study-{seed}-{cell}",
                                 retries=2): cell for cell in todo}  # fmt: skip
        for future in as_completed(futures):
            cell = futures[future]
            results[cell] = _finish_cell(folder, cell, future.result())
            bar.update(n_datasets)
    bar.close()
    summary, per_dataset = [], []
    for cell in cells:  # in grid order, whatever order the cells finished in
        extra = {} if labels is None else labels.iloc[cell[0]].to_dict()
        summary += [{"point": cell[0], **extra, **row} for row in results[cell][0]]
        per_dataset += [{"point": cell[0], **extra, **row} for row in results[cell][1]]
    return StudyResult(pd.DataFrame(summary), pd.DataFrame(per_dataset), float(level), float(threshold),
                       time.perf_counter() - start)  # fmt: skip


def _cell_path(folder: Path, cell: tuple[int, int, int]) -> Path:
    return folder / "cell-{}-{}-{}.json".format(*cell)


def _read_cell(folder: Path | None, cell: tuple[int, int, int]) -> tuple[list[dict], list[dict]] | None:
    if folder is None or not _cell_path(folder, cell).exists():
        return None
    saved = json.loads(_cell_path(folder, cell).read_text())
    return saved["summary"], saved["datasets"]


def _finish_cell(folder: Path | None, cell: tuple[int, int, int], result: tuple[list[dict], list[dict]]):
    """Writes a finished cell to the checkpoint (atomically: a cell is there whole or not at all)."""
    if folder is not None:
        partial = _cell_path(folder, cell).with_suffix(".partial")
        partial.write_text(json.dumps({"summary": result[0], "datasets": result[1]}))
        partial.replace(_cell_path(folder, cell))
    return result


def _run_cell(
    npe: Any, truth: np.ndarray, cell: tuple[int, int, int], *, n_datasets: int, n_draws: int, seed: int, chunk: int,
    level: float, threshold: float, transform: Transform, names: list[str],
) -> tuple[list[dict], list[dict]]:
    """One grid point and design of a study: its summary rows and its datasets' rows. The cell's random stream
    depends on the seed and the cell alone, so a study gives the same numbers however its cells are spread."""
    p, j, n = cell
    model = npe.model
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, p, j, n]).generate_state(1)[0]))
    likelihood = has_likelihood(model)
    truth_user = np.asarray(transform(truth[None]))[0]
    stats: dict[str, list[np.ndarray]] = {}
    khats = []
    npe.estimator.eval()
    for start_i in range(0, n_datasets, chunk):
        b = min(chunk, n_datasets - start_i)
        design = model.sample_design(b, (j, j), (n, n), generator)
        g_true = torch.as_tensor(truth, dtype=torch.float32).expand(b, -1).clone()
        l_true = model.sample_local(g_true, design.group_mask.shape[1], generator)
        batch = design.with_y(model.simulate(g_true, l_true, design, generator))
        with torch.no_grad():
            g, l, lq_g, lq_l = npe.estimator.sample(n_draws, batch, generator, return_log_prob=True)
        khats.append(_khats(npe, batch, g, l, lq_g + lq_l.sum(-1)) if likelihood else np.full(b, np.nan))
        draws = np.asarray(transform(g.transpose(0, 1).double().numpy()))
        for key, value in _summaries(draws, np.broadcast_to(truth_user, (b, len(truth_user))), LEVELS).items():
            stats.setdefault(key, []).append(value)
    s = {key: np.concatenate(v) for key, v in stats.items()}
    k = np.concatenate(khats)
    reliable = ~(k > KHAT_REFINE)  # NaN (no likelihood) counts as reliable: nothing says otherwise
    p_sign = np.where(truth_user >= 0, s["p_positive"], 1 - s["p_positive"])
    lo, hi = s[f"lower_{level:g}"], s[f"upper_{level:g}"]
    error = s["mean"] - truth_user
    summary = [{
        "n_groups": j, "n_rows": n, "parameter": name, "truth": float(truth_user[i]),
        "bias": float(error[:, i].mean()), "rmse": float(np.sqrt((error[:, i] ** 2).mean())),
        "mean_sd": float(s["sd"][:, i].mean()),
        **{f"coverage_{round(100 * lv)}": float(s[f"covered_{lv:g}"][:, i].mean()) for lv in LEVELS},
        "power_interval": float(((lo[:, i] > 0) | (hi[:, i] < 0)).mean()),
        "power_prob": float((p_sign[:, i] >= threshold).mean()),
        "n_datasets": n_datasets, "n_unreliable": int((~reliable).sum()),
    } for i, name in enumerate(names)]  # fmt: skip
    datasets = [{"n_groups": j, "n_rows": n, "dataset": d, "khat": None if np.isnan(k[d]) else float(k[d]),
                 "reliable": bool(reliable[d])} for d in range(n_datasets)]  # fmt: skip
    return summary, datasets


def sample_many(
    npe: Any,
    datasets: Iterable[GroupedData],
    n_draws: int = 1000,
    seed: int = 0,
    *,
    chunk: int = 256,
    transform: Transform | None = None,
    names: Sequence[str] | None = None,
    levels: Sequence[float] = LEVELS,
    allow_extrapolation: bool = False,
) -> Any:
    """Posterior summaries of the globals of many datasets, streamed in chunks of `chunk` datasets (one pass of the
    summaries and the global flow per chunk; the local flow does not run, and the draws are not kept).

    Arguments:
        npe: a trained MultilevelNPE.
        datasets: any iterable of GroupedData (a generator too: it is consumed chunk by chunk).
        n_draws: posterior draws per dataset.
        seed: seed of the draws.
        chunk: datasets per sampling pass.
        transform, names: as in :func:`simulate_study`.
        levels: central interval levels to report.
        allow_extrapolation: accept datasets outside the trained J and N_j ranges.

    Returns:
        a pandas DataFrame in long form: `dataset` (its position in `datasets`), `parameter`, `mean`, `sd`,
        `p_positive` and `lower_<level>`, `upper_<level>` per level.
    """
    import pandas as pd

    n_draws, seed, chunk = check_int(n_draws, "n_draws", 2), check_seed(seed, none=False), check_int(chunk, "chunk")
    transform = transform or (lambda g: g)
    names = list(names or npe.global_names)
    generator = torch.Generator().manual_seed(int(seed))
    frames, offset = [], 0
    iterator = iter(datasets)
    npe.estimator.eval()
    while True:
        part = list(itertools.islice(iterator, chunk))
        if not part:
            break
        for i, d in enumerate(part):
            if not isinstance(d, GroupedData):
                raise ConfigError(f"`datasets` item {offset + i} must be a GroupedData, got {type(d).__name__}.")
            npe.check_design(d, allow_extrapolation, argument=f"`datasets` item {offset + i}")
        batch = collate(part)
        with torch.no_grad():  # the globals' draws alone: no group's local flow runs
            h_global = npe.estimator.summarize(batch)[1]
            g = npe.estimator.global_bijector.forward(npe.estimator.global_sample(n_draws, h_global, generator))
        draws = np.asarray(transform(g.transpose(0, 1).double().numpy()))
        b, p = draws.shape[0], draws.shape[2]
        frame = {"dataset": np.repeat(np.arange(offset, offset + b), p), "parameter": np.tile(names, b)}
        frame.update({k: v.reshape(-1) for k, v in _summaries(draws, None, levels).items()})
        frames.append(pd.DataFrame(frame))
        offset += b
    if not frames:
        raise ConfigError("`datasets` is empty: pass at least one GroupedData.")
    return pd.concat(frames, ignore_index=True)
