"""Saved estimators (`mlnpe.io`): the present format round-trips, and saves of format version 2 (a flat network
config, possibly lacking keys added later, and the shifts' buffers on the estimator) load with identical log
densities."""

import json

import numpy as np
import pytest
import torch

from mlnpe import FlowConfig, GroupedData, MultilevelNPE, NetworkConfig, SummaryConfig, TrainConfig
from mlnpe.core.models import NormalHierarchical
from mlnpe.errors import ConfigError
from mlnpe.io import FORMAT_VERSION, network_from_saved

SMALL = NetworkConfig(summary=SummaryConfig(hidden=16, row_hidden=8, local_dim=4, global_dim=8),
                      global_flow=FlowConfig(transforms=2, hidden=(16,)), local_flow=FlowConfig(transforms=1, hidden=(16,)))
# SMALL as format version 2 wrote it
SMALL_FLAT = {
    "local_summary": "deepset", "global_summary": "deepset", "summary_hidden": 16, "summary_depth": 2,
    "row_hidden": 8, "global_attention": 8, "local_summary_dim": 4, "global_summary_dim": 8,
    "global_transforms": 2, "global_hidden": [16], "local_transforms": 1, "local_hidden": [16], "bins": 8,
    "affine": True, "global_context": 64, "log_inputs": [], "pooled_moments": True, "between_moments": True,
    "sufficient": "none", "design_only": [], "profile": True, "group_moments": True, "glm_slopes": True,
    "local_extremes": False, "log_response": False, "regression_shift": True, "log_scale_shift": True,
    "scale_statistics": True, "shift_max_spread": 1.5, "profile_average": True, "heteroscedastic_shift": True,
}  # fmt: skip
# the keys added while format 2 was current: files written before them lack them
ADDED = ("pooled_moments", "between_moments", "profile", "group_moments", "regression_shift", "glm_slopes",
         "log_scale_shift", "scale_statistics", "profile_average", "heteroscedastic_shift", "shift_max_spread")
# format 2's names of the shifts' buffers
OLD_NAMES = {
    "global_shift.stat_loc": "stat_loc", "global_shift.stat_scale": "stat_scale",
    "global_shift.stat_range": "stat_range", "global_shift.coef": "shift_coef",
    "global_shift.coef_range": "shift_range", "global_shift.prior_loc": "context_loc",
    "global_shift.prior_scale": "context_scale", "global_shift.log_columns": "shift_log",
    "global_shift.sd": "shift_sd", "global_shift.scale_coef": "scale_coef", "global_shift.scale_range": "scale_range",
    "local_shift.stat_loc": "local_stat_loc", "local_shift.stat_scale": "local_stat_scale",
    "local_shift.stat_range": "local_stat_range", "local_shift.coef": "local_shift_coef",
    "local_shift.coef_range": "local_shift_range",
}  # fmt: skip


def _data(j=5, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return GroupedData.from_groups([rng.normal(size=n) for _ in range(j)], levels=[f"s{i}" for i in range(j)])


def _trained(network):
    npe = MultilevelNPE(NormalHierarchical(), groups=(3, 8), rows=(2, 10), network=network, pilot_size=64)
    npe.train(TrainConfig(steps=10, batch_size=16, progress=False, seed=4))
    return npe


def _as_format_2(path, flat):
    """Rewrites a save directory as format version 2 wrote it: the flat network config and the old buffer names."""
    config = json.loads((path / "config.json").read_text())
    config["format_version"], config["network"] = 2, flat
    config.pop("checksum", None)  # format 2 had none
    (path / "config.json").write_text(json.dumps(config))
    state = torch.load(path / "weights.pt", weights_only=True)
    torch.save({OLD_NAMES.get(key, key): value for key, value in state.items()}, path / "weights.pt")


def _same_densities(npe, loaded):
    data = _data()
    draws = npe.sample(data, 30, seed=6)
    assert np.array_equal(loaded.log_prob(draws, data), npe.log_prob(draws, data))
    assert np.array_equal(loaded.sample(data, 30, seed=6).global_draws, draws.global_draws)


def test_present_format_is_nested_and_round_trips(tmp_path):
    npe = _trained(SMALL)
    npe.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION == 3
    assert config["network"]["summary"]["hidden"] == 16 and config["network"]["shift"]["heteroscedastic"] is True
    assert any(key.startswith("global_shift.") for key in torch.load(tmp_path / "m" / "weights.pt", weights_only=True))
    loaded = MultilevelNPE.load(tmp_path / "m")
    assert loaded.network == SMALL
    _same_densities(npe, loaded)


def test_format_2_save_loads_with_identical_densities(tmp_path):
    """A flat config with every key and the shifts' buffers on the estimator: the mapping rebuilds the estimator."""
    assert network_from_saved(SMALL_FLAT, 2) == SMALL
    npe = _trained(SMALL)
    assert npe.estimator.global_shift is not None and npe.estimator.local_shift is not None
    path = npe.save(tmp_path / "m")
    _as_format_2(path, SMALL_FLAT)
    loaded = MultilevelNPE.load(path)
    assert loaded.network == SMALL
    _same_densities(npe, loaded)


def test_format_2_save_without_the_later_keys_loads_as_it_was_trained(tmp_path):
    """A flat config saved before the statistics and shift options existed: they were off, and stay off."""
    flat = {key: value for key, value in SMALL_FLAT.items() if key not in ADDED}
    network = network_from_saved(flat, 2)
    assert network.statistics is None and network.shift is None and not network.summary.group_moments
    npe = _trained(network)
    path = npe.save(tmp_path / "m")
    _as_format_2(path, flat)
    loaded = MultilevelNPE.load(path)
    assert loaded.network == network
    _same_densities(npe, loaded)


def test_format_2_scale_statistics_and_sufficient_keys_map_to_their_parts():
    old = network_from_saved({**SMALL_FLAT, "sufficient": "binomial", "design_only": [2], "scale_statistics": False}, 2)
    assert old.summary.sufficient.family == "binomial" and old.summary.sufficient.design_only == (2,)
    assert old.summary.sufficient.floor == 1e-3 and old.summary.sufficient.origin is False
    assert old.statistics.floor == 1e-4 and old.statistics.group_fits is False
    assert network_from_saved({**SMALL_FLAT, "bins": 4}, 2).local_flow.bins == 4
    # without a version the shape tells: flat is format 2, nested is the present one
    assert network_from_saved(SMALL_FLAT) == SMALL and network_from_saved(SMALL.to_dict()) == SMALL
    with pytest.raises(ConfigError, match="unknown keys"):
        network_from_saved({"width": 3}, 2)
