"""Ragged grouped data: one dataset of J groups with N_j rows each, and batches of many datasets.

A :class:`GroupedData` stores rows contiguously (values + offsets + group levels), so its memory grows with
the rows actually present. :func:`collate` pads many datasets into one :class:`GroupedBatch` of tensors with
explicit boolean masks for groups and rows. Padding is zeros, never NaN; every consumer must use the masks.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["GroupedData", "GroupedBatch", "collate", "make_masks"]


def _as_2d_float(values: Any, argument: str) -> np.ndarray:
    """Converts values to a float64 array of shape (rows, features), checking dtype and finiteness."""
    array = np.asarray(values)
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise DataError(
            f"`{argument}` must be numeric, got dtype {array.dtype}. Convert it to numbers (factors to "
            "indicator columns) before building the data."
        )
    array = array.astype(np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DataError(f"`{argument}` must have shape (rows,) or (rows, features), got {array.shape}.")
    bad = ~np.isfinite(array)
    if bad.any():
        n_nan = int(np.isnan(array).sum())
        n_inf = int(bad.sum()) - n_nan
        raise DataError(
            f"`{argument}` has {n_nan} NaN and {n_inf} infinite values (first at row "
            f"{int(np.argwhere(bad)[0, 0])}). mlnpe never drops rows silently: remove or impute them first."
        )
    return array


@dataclass(frozen=True)
class GroupedData:
    """One dataset: J groups, N_j rows in group j, rows of a group stored contiguously.

    Attributes:
        y: (rows, y_dim) responses, rows ordered by group.
        offsets: (J + 1,) row offsets; group j holds rows offsets[j]:offsets[j + 1].
        x: (rows, x_dim) per-row covariates, or None.
        levels: group labels, one per group, as strings.
        y_names: names of the response columns.
        x_names: names of the covariate columns.
    """

    y: np.ndarray
    offsets: np.ndarray
    x: np.ndarray | None = None
    levels: tuple[str, ...] = ()
    y_names: tuple[str, ...] = ()
    x_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        y = _as_2d_float(self.y, "y")
        offsets = np.asarray(self.offsets, dtype=np.int64)
        if offsets.ndim != 1 or offsets.size < 2 or offsets[0] != 0 or offsets[-1] != y.shape[0]:
            raise DataError(
                f"`offsets` must run from 0 to the number of rows ({y.shape[0]}), got {offsets.tolist()[:10]}."
            )
        sizes = np.diff(offsets)
        if (sizes <= 0).any():
            empty = int(np.argmax(sizes <= 0))
            label = self.levels[empty] if len(self.levels) == sizes.size else str(empty)
            raise DataError(
                f"group {label!r} has no rows. Every group needs at least one row: drop the empty group "
                "(for a factor, drop its unused levels) before building the data."
            )
        x = None if self.x is None else _as_2d_float(self.x, "x")
        if x is not None and x.shape[0] != y.shape[0]:
            raise DataError(f"`x` has {x.shape[0]} rows but `y` has {y.shape[0]}; they must match row for row.")
        levels = tuple(str(level) for level in self.levels) or tuple(str(j + 1) for j in range(sizes.size))
        if len(levels) != sizes.size:
            raise DataError(f"`levels` has {len(levels)} labels for {sizes.size} groups.")
        y_names = tuple(self.y_names) or tuple(f"y{i + 1}" if y.shape[1] > 1 else "y" for i in range(y.shape[1]))
        x_dim = 0 if x is None else x.shape[1]
        x_names = tuple(self.x_names) or tuple(f"x{i + 1}" for i in range(x_dim))
        if len(y_names) != y.shape[1] or len(x_names) != x_dim:
            raise DataError("`y_names` and `x_names` must name every column of `y` and `x`.")
        object.__setattr__(self, "y", y)
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "y_names", y_names)
        object.__setattr__(self, "x_names", x_names)

    # ---- constructors -------------------------------------------------------------------------------------
    @classmethod
    def from_groups(
        cls,
        y: Sequence[Any],
        x: Sequence[Any] | None = None,
        levels: Sequence[Any] | None = None,
        **names: Any,
    ) -> "GroupedData":
        """Builds a dataset from one array of rows per group.

        Arguments:
            y: J arrays, each (N_j,) or (N_j, y_dim).
            x: optional J arrays (N_j, x_dim) of covariates.
            levels: optional group labels.

        Example:
            >>> data = GroupedData.from_groups([np.zeros(3), np.ones(2)])
            >>> data.n_groups, data.n_rows.tolist()
            (2, [3, 2])
        """
        if len(y) == 0:
            raise DataError("`y` holds no groups. Pass at least one group of rows.")
        blocks = [_as_2d_float(block, f"y[{j}]") for j, block in enumerate(y)]
        for j, block in enumerate(blocks):
            if block.shape[0] == 0:
                label = str(levels[j]) if levels is not None else str(j)
                raise DataError(f"group {label!r} (`y[{j}]`) has no rows. Drop the empty group first.")
        offsets = np.concatenate([[0], np.cumsum([b.shape[0] for b in blocks])])
        x_all = None
        if x is not None:
            if len(x) != len(blocks):
                raise DataError(f"`x` has {len(x)} groups but `y` has {len(blocks)}.")
            x_all = np.concatenate([_as_2d_float(block, f"x[{j}]") for j, block in enumerate(x)])
        return cls(np.concatenate(blocks), offsets, x_all, tuple(levels or ()), **names)

    @classmethod
    def from_arrays(
        cls,
        y: Any,
        group: Any,
        x: Any | None = None,
        **names: Any,
    ) -> "GroupedData":
        """Builds a dataset from row-wise arrays and a group label per row.

        Groups are ordered by their sorted labels (as R orders factor levels); rows keep their order within a
        group, which matters for time series.

        Arguments:
            y: (rows,) or (rows, y_dim) responses.
            group: (rows,) group labels.
            x: optional (rows, x_dim) covariates.
        """
        y2 = _as_2d_float(y, "y")
        group = np.asarray(group)
        if group.ndim != 1 or group.shape[0] != y2.shape[0]:
            raise DataError(f"`group` must have one label per row ({y2.shape[0]}), got shape {group.shape}.")
        if group.dtype.kind in "fc" and np.isnan(group.astype(np.complex128).real).any():
            raise DataError(f"`group` has {int(np.isnan(group).sum())} missing labels; every row needs a group.")
        if group.dtype == object and any(g is None for g in group):
            raise DataError("`group` has missing (None) labels; every row needs a group.")
        levels, codes = np.unique(group, return_inverse=True)
        order = np.argsort(codes, kind="stable")
        offsets = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=levels.size))])
        x2 = None if x is None else _as_2d_float(x, "x")
        if x2 is not None and x2.shape[0] != y2.shape[0]:
            raise DataError(f"`x` has {x2.shape[0]} rows but `y` has {y2.shape[0]}.")
        return cls(y2[order], offsets, None if x2 is None else x2[order], tuple(levels.tolist()), **names)

    @classmethod
    def from_dataframe(
        cls,
        df: Any,
        response: str | Sequence[str],
        group: str,
        covariates: Sequence[str] = (),
    ) -> "GroupedData":
        """Builds a dataset from a pandas DataFrame with one row per observation and a group column.

        Arguments:
            df: the data frame.
            response: response column name(s).
            group: name of the grouping column.
            covariates: names of numeric per-row covariate columns.

        Raises:
            DataError: a column is missing, not numeric, or has missing values.
        """
        responses = [response] if isinstance(response, str) else list(response)
        wanted = [*responses, group, *covariates]
        missing = [c for c in wanted if c not in df.columns]
        if missing:
            raise DataError(
                f"column(s) {missing} not found in the data frame; available columns: {list(df.columns)}."
            )
        for column in wanted:
            n_missing = int(df[column].isna().sum())
            if n_missing:
                raise DataError(
                    f"column {column!r} has {n_missing} missing values. mlnpe never drops rows silently: "
                    "remove or impute them first."
                )
        x = df[list(covariates)].to_numpy() if covariates else None
        return cls.from_arrays(
            df[responses].to_numpy(),
            df[group].to_numpy(),
            x,
            y_names=tuple(responses),
            x_names=tuple(covariates),
        )

    # ---- accessors ----------------------------------------------------------------------------------------
    @property
    def n_groups(self) -> int:
        return int(self.offsets.size - 1)

    @property
    def n_rows(self) -> np.ndarray:
        """(J,) number of rows in each group."""
        return np.diff(self.offsets)

    @property
    def y_dim(self) -> int:
        return int(self.y.shape[1])

    @property
    def x_dim(self) -> int:
        return 0 if self.x is None else int(self.x.shape[1])

    def group(self, j: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Rows of group j: (y_j (N_j, y_dim), x_j (N_j, x_dim) or None)."""
        rows = slice(self.offsets[j], self.offsets[j + 1])
        return self.y[rows], None if self.x is None else self.x[rows]

    def subset(self, groups: Sequence[int]) -> "GroupedData":
        """A dataset holding only the given groups (by position), e.g. for leave-one-group-out."""
        groups = list(groups)
        if not groups:
            raise DataError("`groups` is empty; a dataset needs at least one group.")
        ys, xs = zip(*(self.group(j) for j in groups))
        return GroupedData.from_groups(
            list(ys),
            None if self.x is None else list(xs),
            [self.levels[j] for j in groups],
            y_names=self.y_names,
            x_names=self.x_names,
        )

    def to_batch(self, dtype: torch.dtype = torch.float32) -> "GroupedBatch":
        """This dataset as a batch of one."""
        return collate([self], dtype=dtype)


def make_masks(n_groups: Tensor, n_rows: Tensor) -> tuple[Tensor, Tensor]:
    """Boolean masks from sizes.

    Arguments:
        n_groups: (batch,) number of groups per dataset.
        n_rows: (batch, groups) rows per group (entries beyond n_groups are ignored).

    Returns:
        group_mask (batch, groups) and row_mask (batch, groups, rows) with rows = max(n_rows).
    """
    j_max = n_rows.shape[1]
    group_mask = torch.arange(j_max, device=n_rows.device)[None, :] < n_groups[:, None]
    n_rows = torch.where(group_mask, n_rows, torch.zeros_like(n_rows))
    n_max = int(n_rows.max()) if n_rows.numel() else 0
    row_mask = torch.arange(max(n_max, 1), device=n_rows.device)[None, None, :] < n_rows[..., None]
    return group_mask, row_mask


@dataclass
class GroupedBatch:
    """Many datasets padded to common shapes, with masks.

    Attributes:
        y: (batch, groups, rows, y_dim) responses; zeros where padded.
        row_mask: (batch, groups, rows) True for real rows.
        group_mask: (batch, groups) True for real groups.
        x: (batch, groups, rows, x_dim) covariates, or None.
    """

    y: Tensor | None
    row_mask: Tensor
    group_mask: Tensor
    x: Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.group_mask.shape[0])

    @property
    def n_groups(self) -> Tensor:
        """(batch,) number of groups."""
        return self.group_mask.sum(-1)

    @property
    def n_rows(self) -> Tensor:
        """(batch, groups) number of rows; 0 for padded groups."""
        return self.row_mask.sum(-1)

    def rows(self) -> Tensor:
        """(batch, groups, rows, y_dim + x_dim): responses and covariates side by side, as networks see them."""
        if self.y is None:
            raise DataError("this batch has no responses yet (`y` is None); simulate or attach them first.")
        return self.y if self.x is None else torch.cat([self.y, self.x], dim=-1)

    def with_y(self, y: Tensor) -> "GroupedBatch":
        """A copy with the responses replaced (padded entries are zeroed)."""
        return replace(self, y=y * self.row_mask[..., None].to(y.dtype))

    def to(self, device: torch.device | str) -> "GroupedBatch":
        return GroupedBatch(
            None if self.y is None else self.y.to(device),
            self.row_mask.to(device),
            self.group_mask.to(device),
            None if self.x is None else self.x.to(device),
            dict(self.meta),
        )

    def to_datasets(self) -> list[GroupedData]:
        """Unpads the batch into one GroupedData per dataset (e.g. simulated datasets, to fit them as data)."""
        if self.y is None:
            raise DataError("this batch has no responses yet (`y` is None); simulate or attach them first.")
        out = []
        for i in range(self.batch_size):
            real = self.group_mask[i]
            rows = self.row_mask[i][real]
            y = self.y[i][real][rows].double().numpy()
            x = None if self.x is None else self.x[i][real][rows].double().numpy()
            offsets = np.concatenate([[0], np.cumsum(rows.sum(-1).numpy())])
            out.append(GroupedData(y, offsets, x))
        return out

    def index(self, idx: Tensor | slice) -> "GroupedBatch":
        """Selects datasets (first dimension), trimming padding that is no longer needed."""
        group_mask = self.group_mask[idx]
        row_mask = self.row_mask[idx]
        j = max(int(group_mask.sum(-1).max()), 1)
        n = max(int(row_mask.sum(-1).max()), 1)

        def cut(t: Tensor | None) -> Tensor | None:
            return None if t is None else t[idx][:, :j, :n]

        return GroupedBatch(cut(self.y), row_mask[:, :j, :n], group_mask[:, :j], cut(self.x), dict(self.meta))


def collate(datasets: Sequence[GroupedData], dtype: torch.dtype = torch.float32) -> GroupedBatch:
    """Pads datasets into one batch with explicit masks (zeros in padding, never NaN).

    Arguments:
        datasets: B datasets with the same response and covariate dimensions.

    Returns:
        A GroupedBatch with y (B, J_max, N_max, y_dim), masks, and x if the datasets have covariates.
    """
    if len(datasets) == 0:
        raise DataError("`datasets` is empty; collate needs at least one dataset.")
    first = datasets[0]
    for i, d in enumerate(datasets):
        if not isinstance(d, GroupedData):
            raise DataError(f"`datasets[{i}]` is a {type(d).__name__}, expected GroupedData.")
        if d.y_dim != first.y_dim or d.x_dim != first.x_dim:
            raise DataError(
                f"`datasets[{i}]` has y_dim={d.y_dim}, x_dim={d.x_dim} but `datasets[0]` has "
                f"y_dim={first.y_dim}, x_dim={first.x_dim}; all datasets must share them."
            )
    b = len(datasets)
    j_max = max(d.n_groups for d in datasets)
    n_max = max(int(d.n_rows.max()) for d in datasets)
    y = np.zeros((b, j_max, n_max, first.y_dim))
    x = np.zeros((b, j_max, n_max, first.x_dim)) if first.x_dim else None
    row_mask = np.zeros((b, j_max, n_max), dtype=bool)
    for i, d in enumerate(datasets):
        # Scatter contiguous rows into (group, position) slots in one vectorized step.
        group_of_row = np.repeat(np.arange(d.n_groups), d.n_rows)
        pos_of_row = np.arange(d.y.shape[0]) - d.offsets[group_of_row]
        y[i, group_of_row, pos_of_row] = d.y
        if x is not None:
            x[i, group_of_row, pos_of_row] = d.x
        row_mask[i, group_of_row, pos_of_row] = True
    group_mask = row_mask.any(-1)
    return GroupedBatch(
        torch.as_tensor(y, dtype=dtype),
        torch.as_tensor(row_mask),
        torch.as_tensor(group_mask),
        None if x is None else torch.as_tensor(x, dtype=dtype),
        {"levels": [d.levels for d in datasets]},
    )
