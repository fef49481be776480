"""The R bridge's choice of draws: resample="auto" follows the PSIS diagnostic."""

from types import SimpleNamespace

import pytest

from mlnpe.errors import ConfigError
from mlnpe.interop import _resample_flag, _use_resampling


def _fit(khat):
    return SimpleNamespace(psis=None if khat is None else SimpleNamespace(pareto_k=khat, khat_threshold=0.7))


def test_auto_resamples_only_when_the_weights_are_reliable():
    assert _use_resampling(_fit(0.3), "auto") is True
    assert _use_resampling(_fit(0.7), "auto") is True
    assert _use_resampling(_fit(0.71), "auto") is False
    assert _use_resampling(_fit(None), "auto") is False  # no PSIS, no weights
    assert _use_resampling(_fit(2.0), True) is True and _use_resampling(_fit(0.1), False) is False


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_resample_flag_rejects_other_values(bad):
    with pytest.raises(ConfigError, match="`resample` must be TRUE, FALSE or \"auto\""):
        _resample_flag(bad)
