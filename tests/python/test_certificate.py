"""Tests of training to a certificate (mlnpe.inference.certificate) and of the training device."""

from __future__ import annotations

import math

import pytest
import torch

from mlnpe import MultilevelNPE, NetworkConfig, TrainConfig
from mlnpe.core.data import GroupedData
from mlnpe.core.models import NormalHierarchical
from mlnpe.errors import ConfigError
from mlnpe.inference.certificate import Certificate
from mlnpe.train import resolve_device

SMALL = NetworkConfig.from_dict({"summary": {"hidden": 16, "row_hidden": 8, "local_dim": 4, "global_dim": 8},
                                 "global_flow": {"transforms": 1, "hidden": [16]},
                                 "local_flow": {"hidden": [16]}})  # fmt: skip


def _data() -> GroupedData:
    gen = torch.Generator().manual_seed(5)
    return GroupedData.from_groups([(0.3 + torch.randn(6, generator=gen)).numpy() for _ in range(6)])


def _npe() -> MultilevelNPE:
    return MultilevelNPE(NormalHierarchical(), groups=(4, 10), rows=(2, 10), network=SMALL, seed=0)


def test_training_stops_at_the_certificate_and_records_every_check():
    npe, data = _npe(), _data()
    certificate = Certificate(npe, data, n_draws=400, validation=32, patience=0)
    history = npe.train(TrainConfig(steps=3000, batch_size=32, learning_rate=3e-3, progress=False, check_every=100),
                        observed=data, monitor=certificate)  # fmt: skip
    assert history.stopped == "certificate" and history.step[-1] < 3000
    assert history.checks == certificate.records and len(history.checks) >= 1
    last = history.checks[-1]
    assert last["khat"] < 0.7 and last["step"] % 100 == 0 and last["seconds"] > 0
    # the certificate is the amortized posterior's own: k-hat of fresh draws agrees
    assert certificate.khat() < 0.7


def test_without_a_verdict_the_budget_ends_training_and_says_which():
    npe = _npe()
    never = lambda step: None  # noqa: E731
    assert npe.train(TrainConfig(steps=30, batch_size=8, progress=False, check_every=10), monitor=never).stopped == "steps"
    history = npe.train(TrainConfig(steps=10**6, batch_size=8, progress=False, time_limit=0.5))
    assert history.stopped == "time limit"
    assert npe.train(TrainConfig(steps=5, batch_size=8, progress=False, check_every=0),
                     monitor=lambda step: "certificate").stopped == "steps"  # check_every=0: no checks


def test_wsd_holds_the_peak_rate_then_cools_down_over_the_last_fifth():
    npe = _npe()
    history = npe.train(TrainConfig(steps=200, batch_size=8, learning_rate=1e-3, progress=False, schedule="wsd",
                                    warmup_fraction=0.05, min_lr_fraction=0.01))  # fmt: skip
    lr = dict(zip(history.step, history.lr))  # the rate of the last step of each logged block
    assert lr[20] == pytest.approx(1e-3) and lr[160] == pytest.approx(1e-3)
    assert lr[180] == pytest.approx(1e-3 * (0.01 + 0.99 * (1 - 19 / 40)))
    assert history.stopped == "steps" and history.step[-1] == 200


def test_under_wsd_a_verdict_starts_the_cooldown_and_training_stops_at_its_end():
    npe, calls = _npe(), []

    def monitor(step):
        calls.append(step)
        return "certificate" if step >= 100 else None

    history = npe.train(TrainConfig(steps=1000, batch_size=8, progress=False, schedule="wsd", check_every=50),
                        monitor=monitor)  # fmt: skip
    assert calls == [50, 100]  # no checks after the verdict
    assert history.stopped == "certificate" and history.step[-1] == 100 + 200  # a cooldown of 20 % of 1000 steps
    lr = dict(zip(history.step, history.lr))
    assert lr[100] == pytest.approx(1e-3) and lr[300] < 0.03 * 1e-3
    # under the cosine schedule the verdict stops training at once
    cosine = _npe().train(TrainConfig(steps=1000, batch_size=8, progress=False, check_every=50),
                          monitor=lambda step: "certificate" if step >= 100 else None)  # fmt: skip
    assert cosine.stopped == "certificate" and cosine.step[-1] == 100
    # a verdict inside the budget's own cooldown lets it run to the end
    late = _npe().train(TrainConfig(steps=100, batch_size=8, progress=False, schedule="wsd", check_every=90),
                        monitor=lambda step: "certificate")  # fmt: skip
    assert late.stopped == "certificate" and late.step[-1] == 100
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="linear")


def test_a_certificate_needs_densities_and_enough_draws():
    with pytest.raises(ConfigError, match="at least 100"):
        Certificate(_npe(), _data(), n_draws=20)
    with pytest.raises(ConfigError, match="`check_every` must be"):
        TrainConfig(check_every=-1)


def test_device_auto_trains_where_torch_finds_a_gpu_and_returns_to_the_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="finds no CUDA GPU"):
            resolve_device("cuda:0")
    with pytest.raises(ConfigError, match="`device` must be"):
        TrainConfig(device="gpu")
    npe = _npe()
    history = npe.train(TrainConfig(steps=3, batch_size=8, progress=False, device="auto"), observed=_data())
    assert history.device == str(resolve_device("auto"))
    assert all(p.device.type == "cpu" for p in npe.estimator.parameters())
    # the same seed on the CPU gives the same weights as "auto" on a CPU-only machine
    other = _npe()
    other.train(TrainConfig(steps=3, batch_size=8, progress=False, device="cpu"), observed=_data())
    if not torch.cuda.is_available():
        for a, b in zip(npe.estimator.parameters(), other.estimator.parameters()):
            torch.testing.assert_close(a, b)


def test_the_held_out_loss_must_stop_improving_before_the_certificate_stops_training():
    """A k-hat below 0.7 alone does not stop training while the held-out loss still improves by more than 0.1 %."""
    cert = Certificate(_npe(), _data(), n_draws=100, validation=8, patience=1)
    losses = iter([10.0, 9.0, 8.995, 8.0])
    cert.khat, cert.held_out_loss = (lambda: 0.3), (lambda: (next(losses), 0.1))
    assert [cert(step) for step in (1, 2, 3, 4)] == [None, None, "certificate", None]
    assert [r["held_out_loss"] for r in cert.records] == [10.0, 9.0, 8.995, 8.0]
    loss, se = Certificate(_npe(), _data(), n_draws=100, validation=16).held_out_loss()
    assert math.isfinite(loss) and 0 < se < abs(loss) + 10
