"""The R bridge's choice of draws: resample="auto" follows the PSIS diagnostic."""

import warnings
from types import SimpleNamespace

import pytest

from mlnpe.errors import ConfigError
from mlnpe.interop import _refine_config, _refine_flag, _resample_flag, _use_resampling


def _fit(khat, refinement=None):
    return SimpleNamespace(psis=None if khat is None else SimpleNamespace(pareto_k=khat, khat_threshold=0.7),
                           refinement=refinement)


def test_auto_resamples_only_when_the_weights_are_reliable():
    assert _use_resampling(_fit(0.3), "auto") is True
    assert _use_resampling(_fit(0.7), "auto") is True
    assert _use_resampling(_fit(0.71), "auto") is False
    assert _use_resampling(_fit(None), "auto") is False  # no PSIS, no weights
    assert _use_resampling(_fit(2.0), True) is True and _use_resampling(_fit(0.1), False) is False


def test_refined_draws_are_never_resampled():
    refined = _fit(2.0, refinement=object())
    assert _use_resampling(refined, "auto") is False and _use_resampling(refined, False) is False
    with pytest.raises(ConfigError, match="refine = FALSE"):
        _use_resampling(refined, True)


def test_refine_flag_and_control():
    assert _refine_flag("auto") == "auto" and _refine_flag(True) is True and _refine_flag(False) is False
    with pytest.raises(ConfigError, match="`refine` must be TRUE, FALSE or \"auto\""):
        _refine_flag("yes")
    config = _refine_config({"chains": 8.0, "warmup": 50.0, "trajectory": 2}, seed=3)
    assert (config.chains, config.warmup, config.trajectory, config.seed) == (8, 50, 2.0, 3)
    assert _refine_config({"seed": 9}, seed=3).seed == 9 and _refine_config([], seed=None).seed is None
    with pytest.raises(ConfigError, match="unknown settings \\['chainz'\\]"):
        _refine_config({"chainz": 8}, seed=None)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_resample_flag_rejects_other_values(bad):
    with pytest.raises(ConfigError, match="`resample` must be TRUE, FALSE or \"auto\""):
        _resample_flag(bad)


def test_logo_matches_the_closed_form_predictive_density(tmp_path):
    """Gaussian `y ~ 1 + (1 | g)`: p(y_j | theta) = MVN(y_j; mu 1, sigma^2 I + tau^2 11'). The importance-sampled
    elpd of every held-out group equals the closed form over the same refit draws and weights."""
    import math

    import numpy as np
    import pandas as pd
    import torch

    from mlnpe import TrainConfig
    from mlnpe.formula import FormulaNPE, prior
    from mlnpe.interop import _remember, logo

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(6), 25)
    df = pd.DataFrame({"g": [f"g{j}" for j in g], "y": 1.0 + rng.normal(0, 1.0, 6)[g] + rng.normal(0, 0.5, len(g))})
    model = FormulaNPE("y ~ 1 + (1 | g)", df, "gaussian",
                       [prior("normal(0, 2)", "Intercept"), prior("normal(0, 1)", "sd"), prior("normal(0, 1)", "sigma")],
                       network={"summary_hidden": 16, "global_transforms": 1, "global_hidden": [16],
                                "local_hidden": [16], "global_context": 16}, seed=1)
    torch.set_num_threads(1)
    model.train(TrainConfig(steps=300, batch_size=32, learning_rate=3e-3, progress=False))
    path = model.save(tmp_path / "m")
    _remember(path, model)
    result = logo(str(path), {"g": df["g"].tolist(), "y": df["y"].tolist()}, n_draws=200, n_local=400, seed=5)
    assert result["ok"], result["error"]
    value = result["value"]
    assert value["levels"] == [f"g{j}" for j in range(6)] and value["nobs"] == [25] * 6
    for j in range(6):
        held = df["y"].to_numpy()[g == j]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = model.fit(df[g != j].reset_index(drop=True), n_draws=200, seed=5 + j, refine=False)
        draws = fit.draws
        mu, tau, sigma = (draws[k].to_numpy() for k in ("b_Intercept", "sd_g__Intercept", "sigma"))
        n = len(held)
        # closed form: det = sigma^(2(n-1)) (sigma^2 + n tau^2); quadratic form via Sherman-Morrison
        dev = held[None, :] - mu[:, None]
        s2, t2 = sigma**2, tau**2
        quad = (dev**2).sum(1) / s2 - t2 * dev.sum(1) ** 2 / (s2 * (s2 + n * t2))
        logdet = (n - 1) * np.log(s2) + np.log(s2 + n * t2)
        log_p = -0.5 * (quad + logdet + n * math.log(2 * math.pi))
        reliable = fit.psis.pareto_k <= fit.psis.khat_threshold
        log_w = fit.psis.log_weights if reliable else np.full(200, -math.log(200))
        top = np.max(log_p + log_w)
        exact = top + math.log(np.sum(np.exp(log_p + log_w - top)))
        assert value["elpd"][j] == pytest.approx(exact, abs=0.05)
        assert value["ess_local"][j] > 100  # of the 200 x 400 joint importance weights


def test_logo_with_correlated_group_effects(tmp_path):
    """Two correlated effects per group: the proposal's prior half draws MVN(0, Sigma) in the draws' dtype."""
    import numpy as np
    import pandas as pd

    from mlnpe import TrainConfig
    from mlnpe.formula import FormulaNPE
    from mlnpe.interop import _remember, logo

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(5), 8)
    df = pd.DataFrame({"g": [f"g{j}" for j in g], "x": rng.normal(size=40), "y": rng.normal(size=40)})
    model = FormulaNPE("y ~ x + (1 + x | g)", df, "gaussian")
    model.train(TrainConfig(steps=5, batch_size=4, progress=False))
    path = model.save(tmp_path / "m")
    _remember(path, model)
    result = logo(str(path), {c: df[c].tolist() for c in df}, n_draws=20, n_local=5, seed=1)
    assert result["ok"], result["error"]
    assert len(result["value"]["elpd"]) == 5 and all(np.isfinite(result["value"]["elpd"]))


def test_sbc_entry_from_a_saved_model(tmp_path):
    """R's sbc() goes through this entry: a saved (reloaded, not memoized) amortizer simulates from its stored
    covariates, and the table comes back as plain columns with the PNGs written where asked."""
    import numpy as np
    import pandas as pd

    from mlnpe import TrainConfig
    from mlnpe.formula import FormulaNPE
    from mlnpe.interop import sbc

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 6)
    df = pd.DataFrame({"g": [f"g{j}" for j in g], "x": rng.normal(size=48), "y": rng.normal(size=48)})
    model = FormulaNPE("y ~ x + (1 | g)", df, "gaussian", seed=1)
    model.train(TrainConfig(steps=30, batch_size=16, progress=False))
    path = model.save(tmp_path / "m")
    result = sbc(str(path), n_datasets=20, n_draws=30, seed=2, plot_dir=str(tmp_path / "plots"))
    assert result["ok"], result["error"]
    value = result["value"]
    assert value["parameter"] == ["b_Intercept", "b_x", "sd_g__Intercept", "sigma", "r_g[,Intercept]"]
    assert value["kind"][-1] == "local" and value["pooled_inside_band"][0] is None
    assert all(isinstance(v, bool) for v in value["inside_band"]) and value["seed"] == 2
    assert [p.rsplit("/", 1)[-1] for p in value["plots"]] == ["sbc_ecdf.png", "recovery_global.png", "recovery_local.png"]
    bad = sbc(str(path), n_datasets=3)
    assert not bad["ok"] and "n_datasets" in bad["error"]["message"]
