"""Every config field and every argument of the entry points (sample, fit, train, logo, sbc, the R bridge) is checked
for type and range: a wrong value is a ConfigError (DataError for the array diagnostics) that names the argument,
the value and the allowed range; never a truncation (2.5 -> 2), a truthy string taken as True, a raw TypeError
or a NaN that trains into garbage. Whole numbers given as floats (R's and JSON's 1000) are accepted as integers."""

import math
import re
import warnings

import numpy as np
import pandas as pd
import pytest

from mlnpe import GroupedData, MultilevelNPE, TrainConfig
from mlnpe.checks import Bound, check_choice, check_flag, check_float, check_int, check_seed
from mlnpe.core.models import NormalHierarchical
from mlnpe.errors import ConfigError, DataError, SpecError
from mlnpe.formula import FormulaNPE
from mlnpe.inference.refine import RefineConfig
from mlnpe.interop import FitControl
from mlnpe.networks.config import (
    FlowConfig, NetworkConfig, ShiftConfig, StatisticsConfig, SufficientConfig, SummaryConfig,
)

NAN, INF = float("nan"), float("inf")
# values that are never an integer count: a fraction, a bool, a string, NaN, infinity, None
NOT_COUNTS = (2.5, True, "10", NAN, INF, None)
NET = {"summary": {"hidden": 8, "row_hidden": 4}, "global_flow": {"hidden": (8,), "transforms": 1},
       "local_flow": {"hidden": (8,)}}


def _message(name, value):
    """The start and end of every check's message: "`name` must be ..., got <repr>."."""
    return f"`{re.escape(name)}` must be .*got {re.escape(repr(value))}\\.$"


# ---- the shared checks ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [3, 3.0, np.int64(3), np.float32(3.0)])
def test_whole_numbers_are_counts_in_any_numeric_type(value):
    assert check_int(value, "n") == 3 and type(check_int(value, "n")) is int


@pytest.mark.parametrize("value", [*NOT_COUNTS, 0, -1, np.bool_(True), [3], "3"])
def test_anything_else_is_not_a_count(value):
    with pytest.raises(ConfigError, match=_message("n_draws", value)):
        check_int(value, "n_draws")


def test_messages_state_the_range():
    with pytest.raises(ConfigError, match=r"^`n_draws` must be an integer >= 1, got 2\.5\.$"):
        check_int(2.5, "n_draws")
    with pytest.raises(ConfigError, match=r"^`k` must be an integer from 0 to 5, got 6\.$"):
        check_int(6, "k", 0, 5)
    with pytest.raises(ConfigError, match=r"^Cfg `p` must be a number in \(0, 1\], got 0\.0\.$"):
        check_float(0.0, "p", 0, 1, open_low=True, owner="Cfg")
    assert Bound(float, 0, open_low=True).describe() == "a number > 0"
    assert Bound(float).describe() == "a finite number"
    assert Bound(int, 2, meaning="at least 2 draws").describe() == "at least 2 draws"


def test_numbers_flags_seeds_and_choices():
    assert check_float(1, "x") == 1.0 and check_float(INF, "x", 0, infinite=True) == INF
    for bad in (NAN, INF, "1", True, None):
        with pytest.raises(ConfigError, match=_message("x", bad)):
            check_float(bad, "x")
    assert check_flag(np.bool_(False), "psis") is False
    for bad in ("yes", 1, 0.0, None):
        with pytest.raises(ConfigError, match=r"`psis` must be True or False \(TRUE or FALSE in R\)"):
            check_flag(bad, "psis")
    assert check_seed(None) is None and check_seed(7.0) == 7
    for bad in (-1, 1.5, "1", True):
        with pytest.raises(ConfigError, match=_message("seed", bad)):
            check_seed(bad)
    with pytest.raises(ConfigError, match=r"`seed` must be an integer >= 0, got None"):
        check_seed(None, none=False)
    assert check_choice("auto", "refine", (True, False, "auto")) == "auto"
    with pytest.raises(ConfigError, match=r"`refine` must be one of \[True, False, 'auto'\], got 1\."):
        check_choice(1, "refine", (True, False, "auto"))


# ---- configs ------------------------------------------------------------------------------------------------------

BAD_FIELDS = [
    (SummaryConfig, "hidden", 0), (SummaryConfig, "hidden", 2.5), (SummaryConfig, "hidden", "64"),
    (SummaryConfig, "hidden", True), (SummaryConfig, "depth", NAN), (SummaryConfig, "attention", -1),
    (SummaryConfig, "embedding", 1.5), (SummaryConfig, "local_dim", INF), (SummaryConfig, "extremes", "yes"),
    (FlowConfig, "transforms", 0), (FlowConfig, "bins", 0.5), (FlowConfig, "hidden", [64, 0]),
    (FlowConfig, "hidden", [64.5]), (FlowConfig, "hidden", "64"), (FlowConfig, "hidden", [True]),
    (FlowConfig, "affine", 2), (StatisticsConfig, "floor", 0.0), (StatisticsConfig, "floor", INF),
    (StatisticsConfig, "floor", "1e-8"), (StatisticsConfig, "between", "no"), (ShiftConfig, "max_spread", 0.5),
    (ShiftConfig, "max_spread", NAN), (ShiftConfig, "max_spread", "2"), (NetworkConfig, "log_inputs", [-1]),
    (NetworkConfig, "log_inputs", [1.5]), (NetworkConfig, "log_response", "yes"),
]  # fmt: skip


@pytest.mark.parametrize("cls, field, value", BAD_FIELDS)
def test_every_network_setting_is_checked_for_type_and_range(cls, field, value):
    with pytest.raises(ConfigError, match=f"{cls.__name__} {_message(field, value)}"):
        cls(**{field: value})


@pytest.mark.parametrize("field, value", [("floor", 0.0), ("floor", NAN), ("design_only", [0]), ("family", 1)])
def test_sufficient_config_fields(field, value):
    with pytest.raises(ConfigError, match=f"SufficientConfig {_message(field, value)}"):
        SufficientConfig(**{"family": "gaussian", field: value})


def test_network_settings_take_whole_floats_and_numpy_integers():
    config = NetworkConfig.from_dict({"summary": {"hidden": 32.0, "depth": np.int64(3)},
                                      "global_flow": {"hidden": [64.0, np.int32(32)]}, "log_inputs": 1.0})  # fmt: skip
    assert (config.summary.hidden, config.summary.depth, config.global_flow.hidden, config.log_inputs) == (
        32, 3, (64, 32), (1,))
    assert type(config.summary.hidden) is int and ShiftConfig(max_spread=INF).spread_limit == INF


def test_nested_names_are_checked_before_building():
    with pytest.raises(ConfigError, match=r"SummaryConfig got unknown keys \['hiden'\]"):
        NetworkConfig.check_names({"summary": {"hiden": 3}})
    NetworkConfig.check_names({"summary": {"hidden": 3, "sufficient": {"family": "gaussian"}}, "shift": None})


@pytest.mark.parametrize(
    "field, value",
    [("chains", 1), ("chains", 2.5), ("chains", "4"), ("chains", True), ("warmup", 10), ("warmup", NAN),
     ("target_accept", 1.0), ("target_accept", 0.3), ("target_accept", NAN), ("target_accept", "0.8"),
     ("trajectory", 0.0), ("trajectory", INF), ("trajectory", -1), ("max_leapfrog", 0), ("pool", 1),
     ("seed", -1), ("seed", 1.5), ("seed", "1")],
)  # fmt: skip
def test_every_refine_setting_is_checked(field, value):
    with pytest.raises(ConfigError, match=f"RefineConfig {_message(field, value)}"):
        RefineConfig(**{field: value})


def test_refine_config_takes_whole_floats_and_is_frozen():
    config = RefineConfig(chains=8.0, warmup=np.int64(50), pool=16.0, seed=3.0, target_accept=np.float32(0.9))
    assert (config.chains, config.warmup, config.pool, config.seed) == (8, 50, 16, 3)
    assert all(type(v) is int for v in (config.chains, config.warmup, config.pool, config.seed))
    with pytest.raises(Exception, match="cannot assign"):
        config.chains = 4


@pytest.mark.parametrize("field, value", [("mode", 1), ("observed_loss", "kl"), ("device", 0), ("progress", 1),
                                          ("num_threads", 2.5), ("check_every", -1)])  # fmt: skip
def test_train_config_non_numeric_fields(field, value):
    with pytest.raises(ConfigError, match=f"TrainConfig `{field}`"):
        TrainConfig(**{field: value})


# ---- MultilevelNPE ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def npe():
    return MultilevelNPE(NormalHierarchical(), groups=(3, 8), rows=(2, 10), network=NET, pilot_size=64)


def _data():
    rng = np.random.default_rng(0)
    return GroupedData.from_groups([rng.normal(size=4) for _ in range(5)])


@pytest.mark.parametrize("kwargs, name, value", [
    *[({"n_draws": v}, "n_draws", v) for v in (*NOT_COUNTS[:-1], 0, -3)],
    ({"seed": -1}, "seed", -1), ({"seed": 1.5}, "seed", 1.5), ({"seed": "1"}, "seed", "1"),
    ({"allow_extrapolation": "yes"}, "allow_extrapolation", "yes"), ({"log_prob": 1}, "log_prob", 1),
])  # fmt: skip
def test_sample_arguments(npe, kwargs, name, value):
    with pytest.raises(ConfigError, match=_message(name, value)):
        npe.sample(_data(), **{"n_draws": 5, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"groups": (0, 3)}, "`groups` must be a \\(min, max\\) pair of integers with 1 <= min <= max"),
    ({"groups": (2.5, 3)}, "`groups` must be .*got \\(2.5, 3\\)"), ({"groups": (5, 3)}, "`groups`"),
    ({"groups": 5}, "`groups`"), ({"groups": "ab"}, "`groups`"), ({"rows": (1, 2, 3)}, "`rows`"),
    ({"seed": "0"}, "`seed` must be an integer >= 0, got '0'"), ({"seed": None}, "`seed`"),
    ({"pilot_size": 1}, "`pilot_size` must be an integer >= 2, got 1"),
    ({"network": "small"}, "`network` must be a NetworkConfig, a dict of its parts"),
])  # fmt: skip
def test_constructor_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        MultilevelNPE(NormalHierarchical(), **{"groups": (3, 8), "rows": (2, 10), "pilot_size": 64, **kwargs})


def test_train_arguments(npe):
    with pytest.raises(ConfigError, match="`config` must be a TrainConfig, a dict of its fields or None, got str"):
        npe.train("fast")
    with pytest.raises(ConfigError, match=r"TrainConfig `steps` must be a positive number of steps, got 2\.5"):
        npe.train(steps=2.5)
    with pytest.raises(ConfigError, match=r"TrainConfig got unknown keys \['stepz'\]"):
        npe.train({"stepz": 3})
    with pytest.raises(DataError, match="`observed` must be a GroupedData, a non-empty list of them or None, got dict"):
        npe.train(TrainConfig(steps=1, progress=False), observed={"y": [1.0]})
    with pytest.raises(ConfigError, match="`monitor` must be a function"):
        npe.train(TrainConfig(steps=1, progress=False), monitor=3)


def test_local_proposal_arguments(npe):
    group = _data().subset([0])
    draws = np.ones((4, len(npe.global_names)))
    import torch

    with pytest.raises(ConfigError, match=_message("flow_fraction", 1.5)):
        npe.local_proposal(group, draws, 5, torch.Generator(), flow_fraction=1.5)
    with pytest.raises(ConfigError, match=_message("n_local", 0)):
        npe.local_proposal(group, draws, 0, torch.Generator())


# ---- FormulaNPE -------------------------------------------------------------------------------------------------


def _df():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 5)
    return pd.DataFrame({"y": rng.normal(size=30), "x": rng.normal(size=30), "g": [f"s{j}" for j in g]})


@pytest.fixture(scope="module")
def formula_model():
    return FormulaNPE("y ~ x + (1 | g)", _df(), network=NET)


@pytest.mark.parametrize("kwargs, match", [
    ({"groups": (1.5, 4)}, "`groups` must be"), ({"rows": "x"}, "`rows` must be"), ({"seed": -1}, "`seed`"),
    ({"seed": 1.5}, "`seed` must be an integer >= 0, got 1.5"), ({"network": "big"}, "`network` must be"),
    ({"network": {"summary": {"hidden": 0}}}, "SummaryConfig `hidden` must be an integer >= 1, got 0"),
])  # fmt: skip
def test_formula_constructor_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        FormulaNPE("y ~ x + (1 | g)", _df(), **kwargs)


def test_formula_must_be_text():
    with pytest.raises(SpecError, match="`formula` must be a string"):
        FormulaNPE(123, _df())


@pytest.mark.parametrize("kwargs, name, value", [
    *[({"n_draws": v}, "n_draws", v) for v in (0, 2.5, "10", True, NAN)],
    ({"seed": -1}, "seed", -1), ({"seed": "1"}, "seed", "1"), ({"psis": "yes"}, "psis", "yes"),
    ({"allow_extrapolation": 1}, "allow_extrapolation", 1), ({"refine": "yes"}, "refine", "yes"),
    ({"refine": 1}, "refine", 1),
])  # fmt: skip
def test_fit_arguments(formula_model, kwargs, name, value):
    with pytest.raises(ConfigError, match=_message(name, value)):
        formula_model.fit(**{"n_draws": 20, "refine": False, **kwargs})


@pytest.mark.parametrize("kwargs, name, value", [
    ({"n_draws": 0}, "n_draws", 0), ({"n_draws": "5"}, "n_draws", "5"), ({"n_local": 2.5}, "n_local", 2.5),
    ({"seed": -2}, "seed", -2),
])  # fmt: skip
def test_logo_arguments(formula_model, kwargs, name, value):
    with pytest.raises(ConfigError, match=_message(name, value)):
        formula_model.logo(**{"n_draws": 10, "n_local": 2, **kwargs})


@pytest.mark.parametrize("kwargs, name, value", [
    ({"n_datasets": 5}, "n_datasets", 5), ({"n_datasets": 10.5}, "n_datasets", 10.5),
    ({"n_draws": 1}, "n_draws", 1), ({"prob": 1.0}, "prob", 1.0), ({"prob": "0.9"}, "prob", "0.9"),
    ({"seed": -1}, "seed", -1), ({"seed": None}, "seed", None),
])  # fmt: skip
def test_sbc_arguments(formula_model, kwargs, name, value):
    with pytest.raises(ConfigError, match=_message(name, value)):
        formula_model.sbc(**{"n_datasets": 10, "n_draws": 5, **kwargs})


def test_train_and_focus_arguments(formula_model):
    with pytest.raises(ConfigError, match="`config` must be a TrainConfig"):
        formula_model.train("fast")
    with pytest.raises(ConfigError, match=r"TrainConfig `batch_size` must be .*got 2\.5"):
        formula_model.train(batch_size=2.5)
    for bad in (1.5, 9, "1", -1):
        with pytest.raises(ConfigError, match="`focus` must be a whole number of focusing rounds from 0 to 5"):
            formula_model.train(TrainConfig(steps=1, progress=False), focus=bad)


def test_region_and_prediction_arguments(formula_model):
    with pytest.raises(ConfigError, match=_message("reach", 0.0)):
        formula_model.posterior_region(reach=0.0)
    with pytest.raises(ConfigError, match=_message("n_sims", 2)):
        formula_model.regression_region(n_sims=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = formula_model.fit(n_draws=20, seed=1, refine=False)
    with pytest.raises(ConfigError, match=_message("margin", 0.9)):
        formula_model.region_edges(fit.raw, margin=0.9)
    with pytest.raises(ConfigError, match=_message("ndraws", 0)):
        fit.posterior_predict(ndraws=0)
    with pytest.raises(ConfigError, match=_message("seed", -1)):
        fit.log_lik(seed=-1)
    with pytest.raises(ConfigError, match=_message("probs", 1.5)):
        fit.summary(probs=(0.5, 1.5))
    assert list(fit.summary(probs=0.5).columns) == ["Estimate", "Est.Error", "Q50"]
    assert fit.posterior_epred(ndraws=5.0, seed=2.0).shape == (5, 30)


# ---- the R bridge -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("control, match", [
    ({"ndraws": 2.5}, "`ndraws` must be an integer >= 1, got 2.5"), ({"ndraws": INF}, "`ndraws`"),
    ({"seed": -1.0}, "`seed` must be an integer >= 0 or None, got -1.0"), ({"psis": "yes"}, "`psis` must be True"),
    ({"cache": 1}, "`cache` must be TRUE, FALSE or a directory"), ({"focus": 1.5}, "`focus` must be a whole"),
    ({"groups": [1.0, 2.5]}, "`groups` must be"), ({"rows": [3.0]}, "`rows` must be"),
    ({"train": {"steps": 2.5}}, r"`train`: TrainConfig `steps` must be a positive number of steps, got 2.5"),
    ({"train": {"progress": "no"}}, r"`train`: TrainConfig `progress` must be True or False"),
    ({"train": {"stepz": 1.0}}, r"`train`: TrainConfig got unknown keys \['stepz'\]"),
    ({"train": "fast"}, "`train` must be a named list of settings, got 'fast'"),
    ({"network": {"summary": {"hiden": 3.0}}}, r"`network`: SummaryConfig got unknown keys \['hiden'\]"),
    ({"network": {"sumary": {}}}, r"`network`: NetworkConfig got unknown keys \['sumary'\]"),
    ({"refine_control": {"chains": 2.5}}, r"`refine_control`: RefineConfig `chains` must be an integer >= 2"),
])  # fmt: skip
def test_r_control_list_is_checked_before_any_model_is_built(control, match):
    with pytest.raises(ConfigError, match=match):
        FitControl.from_r(control)


def test_r_whole_numbers_arrive_as_floats_and_become_integers():
    control = FitControl.from_r({"train": {"steps": 1000.0, "seed": 3.0, "num_threads": 2.0, "time_limit": 60.0},
                                 "refine_control": {"chains": 8.0, "seed": 5.0}, "ndraws": 1000.0,
                                 "groups": [2.0, 10.0], "focus": 0.0})  # fmt: skip
    train = control.train
    assert (train.steps, train.seed, train.num_threads, train.time_limit) == (1000, 3, 2, 60.0)
    assert all(type(v) is int for v in (train.steps, train.seed, train.num_threads, control.ndraws))
    assert (control.refine_control.chains, control.refine_control.seed, control.groups, control.focus) == (
        8, 5, (2, 10), 0)


def test_r_entry_points_check_arguments_before_loading(tmp_path):
    from mlnpe.interop import logo, predict, sbc

    missing = str(tmp_path / "none")
    for out, match in (
        (logo(missing, {}, n_draws=2.5), "`ndraws` must be an integer >= 1, got 2.5"),
        (logo(missing, {}, n_local=0.0), "`nsim` must be an integer >= 1, got 0.0"),
        (sbc(missing, n_datasets=3.0), "`ndatasets` must be an integer >= 10, got 3.0"),
        (sbc(missing, prob=math.nan), "`prob` must be a number in \\(0, 1\\), got nan"),
        (predict(missing, {}, {}, kind="fitted"), "`kind` must be one of"),
        (predict(missing, {}, {}, allow_new_levels="yes"), "`allow_new_levels` must be True or False"),
    ):
        assert not out["ok"] and out["error"]["type"] == "ConfigError" and out["error"]["mlnpe"]
        assert re.search(match, out["error"]["message"]), out["error"]["message"]


def test_array_diagnostics_report_data_errors_not_crashes():
    from mlnpe.inference.calibration import ecdf_bands

    for bad in ("0.99", None, NAN):
        with pytest.raises(DataError, match="`prob` must be a probability in"):
            ecdf_bands(100, prob=bad)


# ---- data and paths: a DataError or ConfigError, never a TypeError from pandas or pathlib --------------------------


@pytest.mark.parametrize("column, match", [
    ([[1.0]] * 30, r"column 'x' holds lists \(row 0: \[1.0\]\); mlnpe needs one value per row"),
    (pd.date_range("2020-01-01", periods=30), r"column 'x' holds dates \(dtype datetime64"),
    (pd.to_timedelta(np.arange(30), unit="h"), r"column 'x' holds time spans"),
    ([1.0] * 29 + ["a"], r"column 'x' mixes numbers and other values \(row 29: 'a'\)"),
])  # fmt: skip
def test_columns_of_the_wrong_kind_are_data_errors(column, match):
    with pytest.raises(DataError, match=match):
        FormulaNPE("y ~ x + (1 | g)", _df().assign(x=column), network=NET)


def test_a_date_grouping_factor_is_allowed():
    days = pd.to_datetime([f"2020-01-0{1 + j}" for j in np.repeat(np.arange(6), 5)])
    model = FormulaNPE("y ~ x + (1 | g)", _df().assign(g=days), network=NET)
    assert len(model.grouped_data(_df().assign(g=days))[0].levels) == 6


def test_paths_and_objects_of_the_wrong_type(formula_model, tmp_path):
    with pytest.raises(ConfigError, match="`path` must be a directory path .*got 3"):
        formula_model.save(3)
    with pytest.raises(ConfigError, match="`path` must be a directory path .*got None"):
        FormulaNPE.load(None)
    with pytest.raises(ConfigError, match="`path` must be a directory path .*got ''"):
        MultilevelNPE.load("")
    with pytest.raises(DataError, match="`data` must be a pandas DataFrame or a dict of columns, got int"):
        formula_model.logo(5, n_draws=10, n_local=2)
    with pytest.raises(DataError, match="`draws` must be PosteriorDraws and `data` GroupedData"):
        formula_model.log_joint(3, 4)
