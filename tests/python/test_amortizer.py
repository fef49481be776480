import json
import re
import warnings

import numpy as np
import pytest
import torch

from mlnpe import FlowConfig, GroupedData, MultilevelNPE, NetworkConfig, SummaryConfig, TrainConfig
from mlnpe.errors import ConfigError, DataError, LoadError, RangeError, RangeWarning
from mlnpe.core.models import NormalHierarchical
from mlnpe.io import FORMAT_VERSION

SMALL = NetworkConfig(summary=SummaryConfig(hidden=16, row_hidden=8, local_dim=4, global_dim=8),
                      global_flow=FlowConfig(transforms=2, hidden=(16,)), local_flow=FlowConfig(transforms=1, hidden=(16,)))
QUICK = TrainConfig(steps=15, batch_size=16, progress=False, seed=4)


def _npe(**kw):
    return MultilevelNPE(NormalHierarchical(), groups=(3, 8), rows=(2, 10), network=SMALL, pilot_size=64, **kw)


@pytest.fixture(scope="module")
def trained():
    npe = _npe()
    npe.train(QUICK)
    return npe


def _data(j=5, n=6, seed=0):
    rng = np.random.default_rng(seed)
    return GroupedData.from_groups([rng.normal(size=n) for _ in range(j)], levels=[f"s{i}" for i in range(j)])


def test_training_is_reproducible_from_seed(trained):
    other = _npe()
    other.train(QUICK)
    assert other.history.loss == trained.history.loss
    a = trained.sample(_data(), 50, seed=1)
    b = other.sample(_data(), 50, seed=1)
    assert np.array_equal(a.global_draws, b.global_draws)
    assert trained.history.datasets_seen == 15 * 16 and trained.history.train_seconds > 0


def test_training_does_not_touch_global_rng():
    state = torch.random.get_rng_state()
    _npe().train(QUICK)
    assert torch.equal(state, torch.random.get_rng_state())


def test_structured_draws_and_names(trained):
    d = trained.sample(_data(), 100, seed=2)
    assert d.global_draws.shape == (100, 2) and d.local_draws.shape == (100, 5, 1)
    assert d.names[:4] == ["mu", "tau", "alpha[s0]", "alpha[s1]"]
    df = d.to_dataframe()
    assert list(df.columns) == d.names and len(df) == 100
    assert d["alpha"].shape == (100, 5) and d["tau"].min() > 0
    s = d.summary()
    assert list(s.columns) == ["mean", "sd", "q2.5", "q50", "q97.5"]
    assert set(d.to_dict()) == set(d.names)
    many = trained.sample([_data(), _data(j=3, seed=1)], 10, seed=3)
    assert [m.local_draws.shape[1] for m in many] == [5, 3]


def test_log_prob_matches_sampling_density(trained):
    data = _data()
    d = trained.sample(data, 20, seed=5)
    assert np.allclose(trained.log_prob(d, data), d.log_q, atol=1e-3)


def test_save_load_round_trip_gives_identical_densities(trained, tmp_path):
    trained.save(tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION and config["specs"]["global_params"][1]["name"] == "tau"
    loaded = MultilevelNPE.load(tmp_path / "m")
    data = _data()
    d = trained.sample(data, 30, seed=6)
    assert np.allclose(loaded.log_prob(d, data), trained.log_prob(d, data), atol=1e-6)
    assert np.array_equal(loaded.sample(data, 30, seed=6).global_draws, d.global_draws)
    assert loaded.history.loss == trained.history.loss
    loaded.train(QUICK)  # the built-in model is rebuilt from JSON, so training can continue


def test_load_errors(trained, tmp_path):
    with pytest.raises(LoadError, match="no config.json"):
        MultilevelNPE.load(tmp_path / "missing")
    path = trained.save(tmp_path / "m")
    (path / "weights.pt").write_bytes(b"not a torch file")
    with pytest.raises(LoadError, match="changed after they were saved \\(checksum mismatch\\)"):
        MultilevelNPE.load(path)
    # without a checksum (saves that predate them) the file itself is checked
    config = json.loads((path / "config.json").read_text())
    del config["checksum"]
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match="cannot be read as tensors") as err:
        MultilevelNPE.load(path)
    assert "weights_only=False" not in str(err.value)  # torch's advice would run arbitrary code
    # a pickled object (not tensors) is refused without running it, and without torch's advice
    (path / "weights.pt").write_bytes(b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93\x94.")  # os.system
    with pytest.raises(LoadError, match="cannot be read as tensors") as err:
        MultilevelNPE.load(path)
    assert "weights_only" not in str(err.value)
    # weights that load but are not finite (bits flipped on disk) are rejected, not sampled into NaN draws
    good = trained.save(tmp_path / "m3")
    state = torch.load(good / "weights.pt", weights_only=True)
    key = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[key] = state[key].clone().fill_(float("nan"))
    torch.save(state, good / "weights.pt")
    config = json.loads((good / "config.json").read_text())
    del config["checksum"]
    (good / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadError, match=f"non-finite values in \\['{re.escape(key)}'\\]"):
        MultilevelNPE.load(good)
    (path / "config.json").write_text("{oops")
    with pytest.raises(LoadError, match="not valid JSON"):
        MultilevelNPE.load(path)
    # Weights of a different architecture do not match the configuration.
    path2 = trained.save(tmp_path / "m2")
    cfg = json.loads((path2 / "config.json").read_text())
    cfg["network"]["summary"]["hidden"] = 32
    (path2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="checksum mismatch"):  # an edited config is caught first
        MultilevelNPE.load(path2)
    del cfg["checksum"]
    (path2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="do not match its configuration"):
        MultilevelNPE.load(path2)
    cfg["format_version"] = 99
    (path2 / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(LoadError, match="format_version 99"):
        MultilevelNPE.load(path2)


def test_range_checks(trained):
    with pytest.warns(RangeWarning, match=r"groups in \[10, 10\] but the estimator was trained on \[3, 8\]"):
        trained.sample(_data(j=10), 5, seed=0)
    with pytest.raises(RangeError, match="allow_extrapolation=True"):
        trained.sample(_data(j=40), 5, seed=0)
    with pytest.raises(RangeError, match="rows per group"):
        trained.sample(_data(n=100), 5, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RangeWarning)
        trained.sample(_data(j=40), 5, seed=0, allow_extrapolation=True)


def test_bad_inputs(trained):
    with pytest.raises(DataError, match="must be a GroupedData"):
        trained.sample(np.zeros(5), 5)
    two_col = GroupedData.from_groups([np.zeros((4, 2))] * 3)
    with pytest.raises(DataError, match="2 response and 0 covariate columns; the model expects 1 and 0"):
        trained.sample(two_col, 5)
    for bad in (0, 2.7, "10", True, float("nan")):
        with pytest.raises(ConfigError, match=f"`n_draws` must be an integer >= 1, got {re.escape(repr(bad))}"):
            trained.sample(_data(), bad)
    assert trained.sample(_data(), 3.0).n_draws == 3
    with pytest.raises(ConfigError, match="groups"):
        MultilevelNPE(NormalHierarchical(), groups=(0, 3))
    with pytest.raises(ConfigError, match="TwoLevelModel"):
        MultilevelNPE("normal")
    with pytest.raises(ConfigError, match="mode"):
        TrainConfig(mode="batch")


def test_offline_training_with_validation_and_early_stopping():
    npe = _npe()
    # 4 chunks of 16 datasets: 3 to train on, 1 to validate; the tiny budget overfits, so training stops early.
    h = npe.train(TrainConfig(mode="offline", n_simulations=64, batch_size=16, steps=3000, patience=3,
                              progress=False))
    assert len(h.val_loss) >= 4 and all(np.isfinite(h.val_loss))
    assert h.step[-1] < 3000
    best = int(np.argmin(h.val_loss))
    assert len(h.val_loss) - 1 - best == 3  # stopped after `patience` epochs without improvement


def test_weight_averaging_keeps_the_exponential_average_of_the_trajectory(monkeypatch):
    """With `ema_decay`, the trained weights are the exponential moving average of the weights after each step
    (early steps weighted (1 + n) / (10 + n)), recomputed here from the recorded trajectory."""
    from mlnpe import train as train_module

    trajectory = []
    step = train_module._step

    def recording_step(estimator, *args, **kwargs):
        loss = step(estimator, *args, **kwargs)
        trajectory.append([p.detach().clone() for p in estimator.parameters() if p.requires_grad])
        return loss

    monkeypatch.setattr(train_module, "_step", recording_step)
    npe = _npe()
    average = [p.detach().clone() for p in npe.estimator.parameters() if p.requires_grad]
    npe.train(TrainConfig(steps=12, batch_size=16, progress=False, seed=4, ema_decay=0.8))
    for n, weights in enumerate(trajectory, start=1):
        decay = min(0.8, (1 + n) / (10 + n))
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]
    final = [p.detach() for p in npe.estimator.parameters() if p.requires_grad]
    assert all(torch.allclose(a, f, atol=1e-6) for a, f in zip(average, final))
    assert not all(torch.allclose(w, f) for w, f in zip(trajectory[-1], final))  # not the last step's weights
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


class MeanSummary(torch.nn.Module):
    """A user-written local summary: mean and log count of the rows (follows mlnpe.networks.summaries's interface)."""

    out_features = 2

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x, mask):
        m = mask.to(x.dtype)
        n = m.sum(-1, keepdim=True)
        return torch.cat([self.scale * (x[..., 0] * m).sum(-1, keepdim=True) / n, torch.log(n)], -1)


def test_custom_summary_module_plugs_in_and_must_be_passed_on_load(tmp_path):
    npe = MultilevelNPE(NormalHierarchical(), groups=(3, 8), rows=(2, 10), network=SMALL, pilot_size=64,
                        local_summary=MeanSummary())
    npe.train(QUICK)
    npe.save(tmp_path / "c")
    with pytest.raises(LoadError, match="custom summary networks"):
        MultilevelNPE.load(tmp_path / "c")
    loaded = MultilevelNPE.load(tmp_path / "c", local_summary=MeanSummary())
    data = _data()
    d = npe.sample(data, 10, seed=0)
    assert np.allclose(loaded.log_prob(d, data), npe.log_prob(d, data), atol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [("clip_norm", 0.0), ("clip_norm", -1.0), ("min_lr_fraction", 0.0), ("min_lr_fraction", 1.5),
     ("warmup_fraction", -0.1), ("warmup_fraction", 0.0), ("batch_size", 2.5), ("steps", "10"), ("seed", "abc"),
     ("seed", -1), ("steps", True), ("learning_rate", float("nan")), ("time_limit", 0.0), ("num_threads", 0),
     ("observed_draws", 1), ("progress", "yes"), ("patience", 1.5), ("batch_size", float("inf"))],
)  # fmt: skip
def test_every_train_setting_is_checked_for_type_and_range(field, value):
    """A setting of the wrong type or outside its range is a ConfigError that names the field and the value, never
    a silent truncation, a raw TypeError or training into garbage."""
    with pytest.raises(ConfigError, match=f"TrainConfig `{field}` must be .*got {re.escape(repr(value))}"):
        TrainConfig(**{field: value})


def test_integral_numbers_are_accepted_as_integers():
    config = TrainConfig(steps=10.0, batch_size=np.int64(8), seed=np.int32(3), time_limit=5, min_lr_fraction=1)
    assert (config.steps, config.batch_size, config.seed) == (10, 8, 3)
    assert all(type(v) is int for v in (config.steps, config.batch_size, config.seed))


def test_data_beyond_the_float32_range_and_non_finite_draws_are_errors(trained):
    """A huge but finite response once gave all-NaN draws without a word; broken weights gave NaN posteriors."""
    from mlnpe.errors import NumericalError

    huge = GroupedData.from_groups([np.full(4, 3e17), np.zeros(4), np.ones(4)], y_names=("rt",))
    with pytest.raises(DataError, match="column 'rt' has values up to 3e\\+17, beyond 1e\\+15"):
        trained.sample(huge, 10)
    broken = MultilevelNPE(NormalHierarchical(), groups=(3, 8), rows=(2, 10), pilot_size=64)
    broken.trained = True
    with torch.no_grad():
        next(broken.estimator.global_flow.parameters()).fill_(float("nan"))
    with pytest.raises(NumericalError, match="non-finite draws or densities"):
        broken.sample(_data(), 10, seed=0)
