"""One-call simulation-based calibration (mlnpe.inference.sbc) for engine and formula amortizers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe import MultilevelNPE
from mlnpe.errors import ConfigError
from mlnpe.formula import FormulaNPE
from mlnpe.core.models import NormalHierarchical
from mlnpe.inference.sbc import sbc


class PriorPosterior:
    """A stand-in amortizer whose 'posterior' is the prior, optionally shifted: the prior is calibrated exactly,
    a shifted prior is not, so SBC must pass the first and fail the second whatever the data."""

    def __init__(self, shift: float = 0.0):
        self.npe = MultilevelNPE(NormalHierarchical(), groups=(5, 8), rows=(3, 6), pilot_size=16)
        self.shift = shift
        self.global_names, self.local_names = self.npe.global_names, self.npe.local_names

    def simulate(self, n, generator):
        return self.npe.simulate(n, generator)

    def sample_batch(self, batch, n_draws, generator):
        model, b, j = self.npe.model, batch.group_mask.shape[0], batch.group_mask.shape[1]
        g = model.sample_global(n_draws * b, generator)
        l = model.sample_local(g, j, generator)
        g, l = g.reshape(n_draws, b, -1), l.reshape(n_draws, b, j, -1)
        return g + self.shift, l + self.shift


def test_sbc_passes_the_prior_and_fails_a_shifted_prior():
    good = sbc(PriorPosterior(), n_datasets=200, n_draws=100, seed=3)
    assert good.passed and good.n_datasets == 200
    assert [r["parameter"] for r in good.table()] == good.global_names + good.local_names
    assert all(r["pooled_inside_band"] for r in good.table() if r["kind"] == "local")
    bad = sbc(PriorPosterior(shift=0.5), n_datasets=200, n_draws=100, seed=3)
    rows = {r["parameter"]: r for r in bad.table()}
    assert not bad.passed
    assert not rows["mu"]["inside_band"] and rows["mu"]["pvalue"] < 1e-3
    for r in good.table():  # prior draws: 95 % intervals cover the truth 95 % of the time
        assert 0.9 <= r["coverage"] <= 0.99


def test_sbc_rejects_bad_settings():
    stand_in = PriorPosterior()
    with pytest.raises(ConfigError, match="n_datasets"):
        sbc(stand_in, n_datasets=5)
    with pytest.raises(ConfigError, match="n_draws"):
        sbc(stand_in, n_draws=1)
    with pytest.raises(ConfigError, match="prob"):
        sbc(stand_in, prob=1.0)


def test_formula_sbc_uses_brms_names_and_writes_pngs(tmp_path):
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(12), 8)
    x = rng.normal(size=g.size)
    y = 1 + 0.5 * x + rng.normal(0, 0.7, 12)[g] + rng.normal(size=g.size)
    frame = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    model = FormulaNPE("y ~ x + (1 | g)", frame)
    model.train(steps=200, progress=False, seed=0)
    result = model.sbc(n_datasets=30, n_draws=40, seed=1)
    assert result.names == ["b_Intercept", "b_x", "sd_g__Intercept", "sigma", "r_g[,Intercept]"]
    assert result.global_truth.shape == (30, 4) and result.local_draws.shape[:2] == (30, 40)
    # b_Intercept is brms's uncentred intercept: the simulated centred one minus b_x times the mean of x
    raw = model.npe.simulate(30, torch.Generator().manual_seed(1)).global_params.double().numpy()
    np.testing.assert_allclose(result.global_truth[:, 0], raw[:, 0] - raw[:, 1] * model.x_means[0], rtol=1e-6)
    result.plot_ecdf(tmp_path / "sbc.png")
    result.plot_recovery(tmp_path / "recovery.png")
    assert (tmp_path / "sbc.png").stat().st_size > 0 and (tmp_path / "recovery.png").stat().st_size > 0
