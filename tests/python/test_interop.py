"""The R bridge: its one control list, the resample="auto" policy it applies, LOGO and SBC through saved models,
and the inverse of brms naming it uses for predictions."""

import warnings
from types import SimpleNamespace

import pytest

from mlnpe.errors import ConfigError, DataError
from mlnpe.inference.policy import use_resampling
from mlnpe.interop import FitControl


def _fit(khat, refinement=None):
    return SimpleNamespace(psis=None if khat is None else SimpleNamespace(pareto_k=khat, khat_threshold=0.7),
                           refinement=refinement)


def test_auto_resamples_only_when_the_weights_are_reliable():
    assert use_resampling(_fit(0.3), "auto") is True
    assert use_resampling(_fit(0.7), "auto") is True
    assert use_resampling(_fit(0.71), "auto") is False
    assert use_resampling(_fit(None), "auto") is False  # no PSIS, no weights
    assert use_resampling(_fit(2.0), True) is True and use_resampling(_fit(0.1), False) is False


def test_refined_draws_are_never_resampled():
    refined = _fit(2.0, refinement=object())
    assert use_resampling(refined, "auto") is False and use_resampling(refined, False) is False
    with pytest.raises(ConfigError, match="refine = FALSE"):
        use_resampling(refined, True)


def _refine(value):
    return FitControl.from_r({"refine": value}).refine


def _refine_config(values, seed):
    return FitControl.from_r({"refine_control": values, "seed": seed}).refine_control


def test_refine_flag_and_control():
    assert _refine("auto") == "auto" and _refine(True) is True and _refine(False) is False
    with pytest.raises(ConfigError, match="`refine` must be TRUE, FALSE or \"auto\""):
        _refine("yes")
    config = _refine_config({"chains": 8.0, "warmup": 50.0, "trajectory": 2}, seed=3)
    assert (config.chains, config.warmup, config.trajectory, config.seed) == (8, 50, 2.0, 3)
    assert _refine_config({"seed": 9}, seed=3).seed == 9 and _refine_config([], seed=None).seed is None
    with pytest.raises(ConfigError, match="unknown settings \\['chainz'\\]"):
        _refine_config({"chainz": 8}, seed=None)


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_resample_flag_rejects_other_values(bad):
    with pytest.raises(ConfigError, match="`resample` must be TRUE, FALSE or \"auto\""):
        FitControl.from_r({"resample": bad})


def test_control_list_is_coerced_field_by_field():
    """R's numbers arrive as floats, length-1 vectors as scalars and empty lists as []: one list, coerced in one
    place, with R's names; a name an entry point does not take is an error that lists the known ones."""
    control = FitControl.from_r({"groups": [2.0, 9.0], "rows": None, "network": [], "train": {"steps": 50.0},
                                 "cache": False, "ndraws": 100.0, "seed": 4.0, "psis": True, "resample": False,
                                 "focus": 2, "refine": "auto", "refine_control": []})
    assert (control.groups, control.rows, control.network, control.cache) == ((2, 9), None, {}, False)
    assert (control.ndraws, control.seed, control.psis, control.resample, control.focus) == (100, 4, True, False, 2)
    assert control.train.steps == 50 and control.refine_control.seed == 4
    defaults = FitControl.from_r([])
    assert (defaults.ndraws, defaults.seed, defaults.resample, defaults.refine, defaults.focus) == (4000, None, "auto",
                                                                                                     "auto", 1)
    with pytest.raises(ConfigError, match="`ndraws` must be an integer >= 1, got 1.5"):
        FitControl.from_r({"ndraws": 1.5})
    with pytest.raises(ConfigError, match="unknown settings \\['focus'\\]; known: \\['ndraws'"):
        FitControl.from_r({"focus": 1}, ["ndraws", "seed"])


def test_draws_from_brms_inverts_brms_names():
    """brms-named draws (the columns R holds) map back to the model's layout, the centred intercept included."""
    import numpy as np
    import pandas as pd

    from mlnpe.core.draws import PosteriorDraws
    from mlnpe.formula import FormulaNPE, brms_names_and_values
    from mlnpe.formula.names import draws_from_brms

    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(4), 5)
    df = pd.DataFrame({"g": [f"g {j}" for j in g], "x": rng.normal(size=20), "y": rng.normal(size=20)})
    model = FormulaNPE("y ~ x + (1 + x | g)", df, "gaussian")
    levels = ("g 0", "g 1", "g 2", "g 3")
    n_global = sum(len(slot.labels) for slot in model.slots)
    raw = PosteriorDraws(rng.normal(size=(7, n_global)), rng.normal(size=(7, 4, 2)),
                         tuple(label for slot in model.slots for label in slot.labels), tuple(model.z_names), levels)
    names, values = brms_names_and_values(model, raw, levels)
    back = draws_from_brms(model, pd.DataFrame(values[:, ::-1], columns=names[::-1]), levels)
    np.testing.assert_allclose(back.global_draws, raw.global_draws, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(back.local_draws, raw.local_draws)
    assert back.levels == levels and back.global_names == raw.global_names
    with pytest.raises(DataError, match="lack the variables \\['b_x'\\]"):
        draws_from_brms(model, pd.DataFrame(values, columns=names).drop(columns="b_x"), levels)


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
                       network={"summary": {"hidden": 16, "embedding": 16}, "global_flow": {"transforms": 1, "hidden": [16]},
                                "local_flow": {"hidden": [16]}}, seed=1)
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
    from mlnpe.formula.logo import formula_logo
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
    # R's entry point is the Python API's formula_logo, value for value
    python = formula_logo(model, df, n_draws=20, n_local=5, seed=1)
    assert python.elpd_j.tolist() == result["value"]["elpd"] and python.ess_j.tolist() == result["value"]["ess_local"]
    assert python.nobs_j.tolist() == [8] * 5 and python.posterior == "amortized"
    assert model.logo(n_draws=20, n_local=5, seed=1).elpd_j.tolist() == python.elpd_j.tolist()  # the method


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
    assert not bad["ok"] and "`ndatasets` must be an integer >= 10, got 3" in bad["error"]["message"]
