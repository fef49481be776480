"""Memory is estimated before large allocations (`mlnpe.memory`): a request that cannot fit fails at once with an
mlnpe error naming the argument, the estimate and the available memory, instead of inside the allocator."""

import warnings

import numpy as np
import pandas as pd
import pytest

from mlnpe import memory
from mlnpe.errors import ConfigError, DataError
from mlnpe.formula import FormulaNPE
from mlnpe.inference.psis import psis
from mlnpe.inference.refine import refine

NET = {"summary": {"hidden": 16, "row_hidden": 8, "attention": 2}, "global_flow": {"transforms": 1, "hidden": (16,)},
       "local_flow": {"transforms": 1, "hidden": (16,)}}
NEEDS = r"would need about [\d.]+ [kMGTP]?B of memory, but [\d.]+ [kMGTP]?B are available"


def _data(groups=5, rows=4):
    rng = np.random.default_rng(0)
    g = np.repeat([f"s{k}" for k in range(groups)], rows)
    return pd.DataFrame({"y": rng.normal(size=len(g)), "x": rng.normal(size=len(g)), "g": g})


@pytest.fixture(scope="module")
def model():
    return FormulaNPE("y ~ x + (1 | g)", _data(), "gaussian", network=NET)  # untrained: sampling is what is tested


@pytest.fixture
def little_memory(monkeypatch):
    """Pretends that 10 MB are available."""
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000_000)


def test_available_memory_is_a_positive_number_of_bytes_where_the_platform_says():
    available = memory.available_memory()
    assert available is None or (isinstance(available, int) and available > 0)


def test_format_bytes():
    assert [memory.format_bytes(n) for n in (512, 1536, 2.5e9, 8e15, 3e18)] == ["512 B", "1.54 kB", "2.5 GB", "8 PB",
                                                                              "3e+03 PB"]


def test_check_memory_passes_what_fits_and_names_the_request_the_estimate_and_the_fix(monkeypatch):
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000_000)
    memory.check_memory(8.0, 1000, "`n`=1000 things", "Ask for at most {most}.")
    with pytest.raises(ConfigError, match=r"^`n`=10000000 things would need about 80 MB of memory, but 10 MB are "
                                          r"available\. Ask for at most 1250000\.$"):
        memory.check_memory(8.0, 10**7, "`n`=10000000 things", "Ask for at most {most}.")
    with pytest.raises(DataError, match="Not even one fits"):
        memory.check_memory(1e8, 1, "one big thing", "Ask for at most {most}.", error=DataError,
                            fix_none="Not even one fits.")
    monkeypatch.setattr(memory, "available_memory", lambda: None)  # a platform that does not say: no check
    memory.check_memory(1e30, 10**9, "anything", "")


def test_fit_with_ten_billion_draws_fails_at_once_naming_n_draws(model):
    with pytest.raises(ConfigError, match=r"^`n_draws`=10000000000 draws of a dataset of 5 groups and 20 rows \(with "
                                          rf"PSIS\) {NEEDS}\. Ask for at most \d+ draws, or fit with psis=False\.$"):
        model.fit(n_draws=10**10)
    with pytest.raises(ConfigError, match=rf"^`n_draws`=1000000000 draws of a dataset of 5 groups and 20 rows {NEEDS}"):
        model.fit(n_draws=10**9, psis=False)


def test_an_enormous_dataset_fails_before_sampling(model, little_memory):
    with pytest.raises(ConfigError, match=rf"draws of a dataset of 5 groups and 20000 rows \(with PSIS\) {NEEDS}"):
        model.fit(_data(rows=4000), n_draws=4000, allow_extrapolation=True)


@pytest.mark.filterwarnings("ignore:this estimator has not been trained")
def test_sampling_refinement_psis_and_resampling_check_their_memory(model):
    grouped, _ = model.grouped_data(_data())
    with pytest.raises(ConfigError, match=rf"^`n_draws`=10000000000 draws of 1 dataset\(s\) of up to 5 groups {NEEDS}"):
        model.npe.sample(grouped, 10**10)
    with pytest.raises(ConfigError, match=rf"^`n_draws`=100000000000 refined draws of \d+ parameters {NEEDS}"):
        refine(model.npe.estimator, model.model, grouped, 10**11)
    huge = np.lib.stride_tricks.as_strided(np.zeros(1), shape=(10**12,), strides=(0,))  # no memory of its own
    with pytest.raises(DataError, match=rf"^PSIS of `log_ratios` with 1000000000000 draws {NEEDS}\. Thin the draws"):
        psis(huge)
    result = psis(np.random.default_rng(0).normal(size=100), warn=False)
    with pytest.raises(DataError, match=rf"^`n`=10000000000000 resampled draws {NEEDS}\. Pass n <= \d+\.$"):
        result.resample(10**13)


def test_predictions_for_many_rows_check_their_memory(model, little_memory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(n_draws=200, refine=False)
    assert fit.log_lik().shape == (200, 20)
    with pytest.raises(ConfigError, match=rf"^predictions of 200 draws for 20000 rows {NEEDS}\. Pass ndraws <= \d+"):
        fit.log_lik(_data(rows=4000))
