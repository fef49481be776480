"""Simulation studies and power analysis of a formula model in brms's names (`FormulaNPE.simulate_study`).

A grid of true values names brms's global parameters (`b_x`, `sd_g__Intercept`, `sigma`, ...; `b_Intercept` is the
uncentred intercept); the parameters the grid leaves out take the base values (by default the posterior means of
the training data's amortized fit). Every grid point must lie where the amortizer was trained: inside each prior's
support and, for a focused amortizer (`train(focus=k)`, `mlnpe()`'s default), inside the box its last round trained
in (`FormulaNPE.region`); otherwise a RangeError names the parameter, the value and the fix (an amortizer trained
with focus=0 covers the whole prior).

`FormulaNPE.sample_many` fits many datasets given as one long table (a `dataset` column; a pandas DataFrame or a
Parquet file read in batches) and returns, or writes as Parquet parts (one per chunk, each complete before the
next begins), brms-named posterior summaries per dataset.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, DataError, LoadError, RangeError
from ..study import StudyResult, simulate_study, study_client
from .names import brms_globals

if TYPE_CHECKING:
    from .api import FormulaNPE

__all__ = ["formula_sample_many", "formula_study"]


def _base(
    model: FormulaNPE, truth: Mapping[str, float] | None, names: list[str], seed: int,
    means: Mapping[str, float] | None = None,
) -> dict[str, float]:
    """The base truth in brms's names: `truth` over `means` (a fit's posterior means, e.g. R's fit) or else the
    posterior means of the training data's amortized fit."""
    base: dict[str, float] = {}
    if means is not None:
        base = {name: float(means[name]) for name in names if name in means}
    if set(names) - set(truth or {}) - set(base):
        if model.data is None:
            missing = sorted(set(names) - set(truth or {}))
            raise ConfigError(
                f"`truth` lacks {missing} and the model has no training data whose posterior means could fill them: "
                f"pass every global parameter ({names}) in `truth`."
            )
        fit = model.fit(n_draws=2000, seed=seed, psis=False, refine=False)
        fitted = fit.draws[names].mean()
        base = {name: float(fitted[name]) for name in names}
    for name, value in dict(truth or {}).items():
        if name not in names:
            raise ConfigError(f"`truth` names {name!r}, which is not a global parameter of the model; its global "
                              f"parameters: {names}.")  # fmt: skip
        base[name] = float(value)
    return base


def _grid(grid: Mapping[str, Sequence[float]] | None, names: list[str]) -> tuple[list[str], list[tuple[float, ...]]]:
    """The grid's names and its points (the cartesian product of the values, in the order given)."""
    if grid is None or not len(grid):
        return [], [()]
    if not isinstance(grid, Mapping):
        raise ConfigError(f"`grid` must be a dict (R: a named list) of parameter -> values, got {type(grid).__name__}.")
    unknown = [name for name in grid if name not in names]
    if unknown:
        raise ConfigError(f"`grid` names {unknown}, which are not global parameters of the model; its global "
                          f"parameters: {names}.")  # fmt: skip
    values = []
    for name, v in grid.items():
        items = np.atleast_1d(np.asarray(v, dtype=np.float64))
        if items.size == 0 or not np.isfinite(items).all():
            raise ConfigError(f"`grid` values of {name!r} must be finite numbers, got {v!r}.")
        values.append(items.tolist())
    return list(grid), list(itertools.product(*values))


def _layout(model: FormulaNPE, point: Mapping[str, float]) -> np.ndarray:
    """A brms-named point -> the model's global layout (the intercept of centred predictors)."""
    b = np.array([point[slot.labels[0]] for slot in model.slots if slot.kind == "b"], dtype=np.float64)
    out = []
    for slot in model.slots:
        if slot.kind == "Intercept":
            out.append(point["b_Intercept"] + (float(b @ model.x_means) if b.size else 0.0))
        else:
            out += [point[label] for label in slot.labels]
    return np.asarray(out, dtype=np.float64)


def _check_point(model: FormulaNPE, point: dict[str, float], layout: np.ndarray) -> None:
    """A grid point inside every prior's support and the focusing box (RangeError otherwise)."""
    offset = 0
    for slot in model.slots:
        width = len(slot.labels)
        values = layout[offset : offset + width]
        offset += width
        if slot.kind in ("cor", "r"):
            continue
        value = float(values[0])
        low, high = slot.prior.support
        box = model.region.get(slot.labels[0])
        name = "b_Intercept (as the intercept of centred predictors)" if slot.kind == "Intercept" else slot.labels[0]
        if not low <= value <= high:
            raise RangeError(f"the grid point {point} puts {name} at {value:.4g}, outside its prior's support "
                             f"[{low:g}, {high:g}]: choose a value inside it.")  # fmt: skip
        if box is not None and not box[0] <= value <= box[1]:
            raise RangeError(
                f"the grid point {point} puts {name} at {value:.4g}, outside [{box[0]:.4g}, {box[1]:.4g}], the box "
                "this amortizer was focused on (`train(focus=k)`; mlnpe()'s default): its posteriors there would be "
                "extrapolations. Train an amortizer over the whole prior for the study (focus=0; R: mlnpe(..., "
                "focus = 0)), or keep the grid inside the box."
            )


def formula_study(
    model: FormulaNPE,
    grid: Mapping[str, Sequence[float]] | None = None,
    truth: Mapping[str, float] | None = None,
    n_groups: Any = None,
    n_rows: Any = None,
    n_datasets: int = 200,
    n_draws: int = 1000,
    seed: int = 0,
    *,
    level: float = 0.95,
    threshold: float = 0.975,
    progress: bool = False,
    client: Any = None,
    checkpoint: Any = None,
    means: Mapping[str, float] | None = None,
) -> StudyResult:
    """A simulation study of a trained formula model: see `FormulaNPE.simulate_study`."""
    import pandas as pd

    g_dim = sum(len(slot.labels) for slot in model.slots)
    names, _ = brms_globals(model, np.zeros((1, g_dim)))
    base = _base(model, truth, names, seed, means)
    grid_names, points = _grid(grid, names)
    observed = None if model.data is None else model.grouped_data(model.data)[0]
    if n_groups is None:  # the training data's design, else the largest trained one
        n_groups = [model.npe.groups[1] if observed is None else observed.n_groups]
    if n_rows is None:
        n_rows = [model.npe.rows[1] if observed is None else int(np.median(observed.n_rows))]
    truths, labels = [], []
    for values in points:
        point = {**base, **dict(zip(grid_names, values))}
        layout = _layout(model, point)
        _check_point(model, dict(zip(grid_names, values)), layout)
        truths.append(layout)
        labels.append(dict(zip(grid_names, values)))
    frame = pd.DataFrame(labels) if grid_names else None
    with study_client(client) as c:
        return simulate_study(
            model.npe, np.stack(truths), n_groups, n_rows, n_datasets, n_draws, seed, level=level, threshold=threshold,
            transform=lambda g: brms_globals(model, g)[1], names=names, grid=frame, progress=progress, client=c,
            checkpoint=checkpoint,
        )


def _frames_of(data: Any, dataset: str) -> Iterator[tuple[Any, Any]]:
    """(id, rows) per dataset of a pandas DataFrame or a Parquet file (read in batches; each dataset's rows must be
    contiguous)."""
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        if dataset not in data:
            raise DataError(f"`data` has no column {dataset!r} naming each row's dataset; its columns: "
                            f"{list(data.columns)}. Pass `dataset=` the column that does.")  # fmt: skip
        yield from data.groupby(dataset, sort=False)
        return
    import pyarrow.parquet as pq

    path = Path(data).expanduser()
    if not path.is_file():
        raise DataError(f"`data` {str(path)!r} is neither a pandas DataFrame nor a Parquet file.")
    source = pq.ParquetFile(path)
    if dataset not in source.schema_arrow.names:
        raise DataError(f"the Parquet file {str(path)!r} has no column {dataset!r} naming each row's dataset; its "
                        f"columns: {source.schema_arrow.names}. Pass `dataset=` the column that does.")  # fmt: skip
    seen: set[Any] = set()

    def first(key: Any) -> Any:
        if key in seen:
            raise DataError(f"the rows of dataset {key!r} in {str(path)!r} are not contiguous: sort the file by "
                            f"{dataset!r} (each dataset's rows together) and rerun.")  # fmt: skip
        seen.add(key)
        return key

    pending = None
    for record_batch in source.iter_batches(batch_size=1 << 16):
        frame = record_batch.to_pandas()
        frame = frame if pending is None else pd.concat([pending, frame], ignore_index=True)
        ids = frame[dataset].to_numpy()
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        for a, b in zip(starts[:-1], starts[1:]):  # the last run may go on in the next batch
            yield first(ids[a]), frame.iloc[a:b]
        pending = frame.iloc[starts[-1]:]
    if pending is not None and len(pending):
        yield first(pending[dataset].iloc[0]), pending


def formula_sample_many(
    model: FormulaNPE,
    data: Any,
    n_draws: int = 1000,
    seed: int = 0,
    *,
    dataset: str = "dataset",
    chunk: int = 256,
    output: Any = None,
    allow_extrapolation: bool = False,
) -> Any:
    """Posterior summaries of many datasets in brms's names: see `FormulaNPE.sample_many`."""
    import pandas as pd

    from ..checks import check_int, check_seed
    from ..study import sample_many

    n_draws, seed, chunk = check_int(n_draws, "n_draws", 2), check_seed(seed, none=False), check_int(chunk, "chunk")
    g_dim = sum(len(slot.labels) for slot in model.slots)
    names, _ = brms_globals(model, np.zeros((1, g_dim)))
    folder = None
    if output is not None:
        folder = Path(output).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
    frames = []
    datasets = _frames_of(data, dataset)
    for index in itertools.count():
        part = list(itertools.islice(datasets, chunk))
        if not part:
            break
        target = None if folder is None else folder / f"part-{index:05d}.parquet"
        if target is not None and target.exists():  # written by an earlier run of the same call: resume after it
            continue
        grouped = []
        for key, rows in part:
            try:
                grouped.append(model.grouped_data(rows)[0])
            except (DataError, RangeError) as error:
                raise type(error)(f"dataset {key!r}: {error}") from None
        table = sample_many(model.npe, grouped, n_draws, seed + index, chunk=len(grouped),
                            transform=lambda g: brms_globals(model, g)[1], names=names,
                            allow_extrapolation=allow_extrapolation)  # fmt: skip
        keys = [key for key, _ in part]
        table = table.drop(columns="dataset")  # positions in the chunk -> the datasets' own ids
        table.insert(0, dataset, np.repeat(keys, len(names)))
        if target is None:
            frames.append(table)
            continue
        partial = target.with_suffix(".partial")
        try:
            table.to_parquet(partial, index=False)
            partial.replace(target)
        except OSError as error:
            partial.unlink(missing_ok=True)
            done = sorted(folder.glob("part-*.parquet"))
            raise LoadError(
                f"writing {target.name} in {str(folder)!r} failed ({error.strerror or error}); the {len(done)} parts "
                "written before it are complete there. Free space (or choose another `output`) and rerun the same "
                "call: it resumes after the finished parts."
            ) from None
    if folder is not None:
        return folder
    if not frames:
        raise DataError("`data` holds no datasets.")
    return pd.concat(frames, ignore_index=True)
