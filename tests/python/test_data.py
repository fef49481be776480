import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe.core.data import GroupedBatch, GroupedData, collate, make_masks
from mlnpe.errors import DataError


def test_from_arrays_orders_groups_and_keeps_row_order():
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    g = np.array(["b", "a", "b", "a", "c"])
    d = GroupedData.from_arrays(y, g)
    assert d.levels == ("a", "b", "c")
    assert d.n_rows.tolist() == [2, 2, 1]
    assert d.group(0)[0][:, 0].tolist() == [2.0, 4.0]
    assert d.group(1)[0][:, 0].tolist() == [1.0, 3.0]


def test_from_dataframe_with_covariates():
    df = pd.DataFrame({"y": [1.0, 2, 3, 4], "x": [0.1, 0.2, 0.3, 0.4], "g": [2, 1, 2, 1]})
    d = GroupedData.from_dataframe(df, "y", "g", ["x"])
    assert d.levels == ("1", "2") and d.x_dim == 1 and d.x_names == ("x",)
    assert d.group(0)[1][:, 0].tolist() == [0.2, 0.4]


def test_memory_grows_with_rows_present():
    d = GroupedData.from_groups([np.zeros(1000), np.zeros(1)])
    assert d.y.shape == (1001, 1)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: GroupedData.from_arrays([1.0, np.nan], [1, 2]), "`y` has 1 NaN"),
        (lambda: GroupedData.from_arrays([1.0, np.inf], [1, 2]), "1 infinite"),
        (lambda: GroupedData.from_groups([np.zeros(2), np.zeros(0)]), "has no rows"),
        (lambda: GroupedData.from_groups([]), "no groups"),
        (lambda: GroupedData.from_arrays(["a", "b"], [1, 2]), "must be numeric"),
        (lambda: GroupedData.from_arrays([1.0, 2.0], [1]), "one label per row"),
        (lambda: GroupedData.from_arrays([1.0, 2.0], [1.0, np.nan]), "missing labels"),
    ],
)
def test_bad_input_errors(build, match):
    with pytest.raises(DataError, match=match):
        build()


def test_dataframe_errors_name_column_and_count():
    df = pd.DataFrame({"y": [1.0, None, 3.0], "g": [1, 1, 2]})
    with pytest.raises(DataError, match="'y' has 1 missing"):
        GroupedData.from_dataframe(df, "y", "g")
    with pytest.raises(DataError, match=r"\['grp'\] not found"):
        GroupedData.from_dataframe(df, "y", "grp")


def test_collate_masks_and_zero_padding():
    a = GroupedData.from_groups([np.ones(3), np.ones(1)])
    b = GroupedData.from_groups([2 * np.ones(2)])
    batch = collate([a, b])
    assert batch.y.shape == (2, 2, 3, 1)
    assert batch.group_mask.tolist() == [[True, True], [True, False]]
    assert batch.n_rows.tolist() == [[3, 1], [2, 0]]
    assert torch.isfinite(batch.y).all()
    assert float(batch.y[~batch.row_mask].abs().sum()) == 0.0
    back = batch.to_datasets()
    assert back[0].n_rows.tolist() == [3, 1] and back[1].n_rows.tolist() == [2]


def test_collate_rejects_mixed_dimensions():
    a = GroupedData.from_groups([np.ones(3)])
    b = GroupedData.from_groups([np.ones((3, 2))])
    with pytest.raises(DataError, match="all datasets must share"):
        collate([a, b])


def test_make_masks_and_index_trims_padding():
    gm, rm = make_masks(torch.tensor([1, 3]), torch.tensor([[2, 9, 9], [1, 2, 3]]))
    assert gm.tolist() == [[True, False, False], [True, True, True]]
    assert rm.shape == (2, 3, 3) and rm[0].sum() == 2
    batch = GroupedBatch(torch.zeros(2, 3, 3, 1), rm, gm)
    small = batch.index(slice(0, 1))
    assert small.y.shape == (1, 1, 2, 1)


def test_subset_for_leave_one_group_out():
    d = GroupedData.from_arrays([1.0, 2, 3], ["a", "b", "c"])
    s = d.subset([0, 2])
    assert s.levels == ("a", "c") and s.y[:, 0].tolist() == [1.0, 3.0]
