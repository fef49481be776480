"""Simulation studies and batched inference (`mlnpe.study`, `FormulaNPE.simulate_study`)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from mlnpe import RangeWarning, TrainConfig
from mlnpe.errors import ConfigError, LoadError, RangeError
from mlnpe.formula import FormulaNPE, prior
from mlnpe.study import sample_many, simulate_study

PRIORS = [prior("normal(0, 5)", "Intercept"), prior("normal(0, 1)", "b"), prior("normal(0, 1)", "sd"),
          prior("normal(0, 1)", "sigma")]  # fmt: skip


def _data(seed: int = 0, n_groups: int = 12, n_rows: int = 8) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), n_rows)
    x = rng.normal(size=len(g))
    a = rng.normal(0.0, 0.5, n_groups)
    return pd.DataFrame({"g": [f"g{j}" for j in g], "x": x, "y": 1.0 + 0.3 * x + a[g] + rng.normal(0.0, 1.0, len(g))})


@pytest.fixture(scope="module")
def model():
    m = FormulaNPE("y ~ x + (1 | g)", _data(), "gaussian", PRIORS, groups=(4, 20), rows=(2, 12), seed=0)
    m.train(TrainConfig(steps=150, batch_size=32, learning_rate=2e-3, progress=False, check_every=0,
                        observed_weight=0.0), focus=0)  # fmt: skip
    return m


def test_formula_study_table(model):
    study = model.simulate_study({"b_x": [0.0, 0.8]}, n_groups=[5, 15], n_rows=6, n_datasets=12, n_draws=100, seed=1)
    s = study.summary
    names = ["b_Intercept", "b_x", "sd_g__Intercept", "sigma"]
    assert len(s) == 2 * 2 * len(names) and sorted(set(s["parameter"])) == sorted(names)
    assert set(s["b_x"]) == {0.0, 0.8} and set(s["n_groups"]) == {5, 15} and set(s["n_rows"]) == {6}
    slope = s[s["parameter"] == "b_x"]
    assert np.allclose(slope["truth"], slope["b_x"])  # the grid's value is the truth of its parameter
    # the other parameters keep the base truth: the training data's posterior means, the same at every point
    assert s[s["parameter"] == "sigma"]["truth"].nunique() == 1
    for column in ("coverage_50", "coverage_90", "coverage_95", "power_interval", "power_prob"):
        assert s[column].between(0, 1).all()
    assert (s["coverage_50"] <= s["coverage_90"] + 1e-12).all() and (s["coverage_90"] <= s["coverage_95"] + 1e-12).all()
    assert (s["rmse"] >= s["bias"].abs() - 1e-12).all()
    # with a true slope of 0, the 95 % interval rarely excludes it (the exact model's test checks the power)
    assert slope.set_index(["b_x", "n_groups"])["power_interval"][(0.0, 15)] <= 0.35
    d = study.datasets
    assert len(d) == 2 * 2 * 12 and d["khat"].notna().all()
    assert study.n_unreliable == int((d["khat"] > 0.7).sum())
    assert (s.groupby(["point", "n_groups"])["n_unreliable"].first().sum()) == study.n_unreliable


def test_study_bias_and_coverage_against_the_draws(model):
    """The table is the summary of the draws against the truth: one dataset at a time, by hand."""
    npe = model.npe
    truth = np.array([[1.0, 0.5, 0.4, 1.0]])
    study = simulate_study(npe, truth, [8], [5], n_datasets=3, n_draws=400, seed=7, chunk=3)
    # each cell (grid point 0, J = 8, N = 5) has its own stream, from the seed and the cell
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([7, 0, 8, 5]).generate_state(1)[0]))
    design = npe.model.sample_design(3, (8, 8), (5, 5), generator)
    g_true = torch.as_tensor(truth, dtype=torch.float32).expand(3, -1).clone()
    l_true = npe.model.sample_local(g_true, 8, generator)
    batch = design.with_y(npe.model.simulate(g_true, l_true, design, generator))
    with torch.no_grad():
        g = npe.estimator.sample(400, batch, generator, return_log_prob=True)[0].double().numpy()
    mean = g.mean(0)  # (3, G)
    s = study.summary.set_index("parameter")
    for i, name in enumerate(npe.global_names):
        assert s.loc[name, "bias"] == pytest.approx(float((mean[:, i] - truth[0, i]).mean()), rel=1e-5, abs=1e-6)
        lo, hi = np.quantile(g[:, :, i], [0.025, 0.975], axis=0)
        assert s.loc[name, "coverage_95"] == pytest.approx(float(((lo <= truth[0, i]) & (truth[0, i] <= hi)).mean()))


def test_study_rejects_points_and_sizes_it_was_not_trained_for(model):
    with pytest.raises(ConfigError, match="b_z.*global parameters"):
        model.simulate_study({"b_z": [1.0]}, n_datasets=2)
    with pytest.raises(RangeError, match="n_groups.*trained range \\[4, 20\\]"):
        model.simulate_study({"b_x": [0.0]}, n_groups=[40], n_datasets=2)
    with pytest.raises(RangeError, match="sigma.*support"):
        model.simulate_study({"sigma": [-1.0]}, n_datasets=2)
    saved = dict(model.model.region)
    try:
        model.model.set_region({"b_x": (-0.2, 0.6)})
        with pytest.raises(RangeError, match="b_x at 0.8.*focus=0"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RangeWarning)  # the base fit's draws crowd this made-up box
            model.simulate_study({"b_x": [0.8]}, n_datasets=2)
    finally:
        model.model.set_region(saved or None)


def test_sample_many_streams_chunks(model):
    datasets = [model.grouped_data(_data(seed=s))[0] for s in range(5)]
    table = sample_many(model.npe, iter(datasets), n_draws=2000, seed=0, chunk=2)
    assert len(table) == 5 * 4 and list(table["dataset"].unique()) == [0, 1, 2, 3, 4]
    direct = model.npe.sample(datasets[3], 2000, seed=1)
    means = table[table["dataset"] == 3].set_index("parameter")["mean"]
    sds = table[table["dataset"] == 3].set_index("parameter")["sd"]
    for i, name in enumerate(model.npe.global_names):
        # the same posterior, other draws: means agree within Monte Carlo error
        assert abs(means[name] - direct.global_draws[:, i].mean()) < 5 * sds[name] / np.sqrt(2000) * 1.5
    with pytest.raises(ConfigError, match="item 0 must be a GroupedData"):
        sample_many(model.npe, [1.0])


def _long(n: int, seed: int = 10) -> pd.DataFrame:
    return pd.concat([_data(seed=seed + s).assign(dataset=f"d{s}") for s in range(n)], ignore_index=True)


def test_formula_sample_many_from_a_frame_and_parquet(model, tmp_path):
    long = _long(5)
    table = model.sample_many(long, n_draws=400, seed=0, chunk=2)
    assert list(table["dataset"].unique()) == [f"d{s}" for s in range(5)]
    assert set(table["parameter"]) == {"b_Intercept", "b_x", "sd_g__Intercept", "sigma"}
    # the same posterior as a single fit of that dataset, within Monte Carlo error
    fit = model.fit(_data(seed=13), n_draws=4000, seed=1, psis=False, refine=False).draws
    row = table[(table["dataset"] == "d3") & (table["parameter"] == "b_x")].iloc[0]
    assert abs(row["mean"] - fit["b_x"].mean()) < 5 * fit["b_x"].std() / np.sqrt(400)
    source = tmp_path / "long.parquet"
    long.to_parquet(source, index=False)
    out = model.sample_many(source, n_draws=400, seed=0, chunk=2, output=tmp_path / "out")
    parts = sorted(out.glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    written = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    pd.testing.assert_frame_equal(written, table)  # the same seeds per chunk: the same summaries
    # a rerun resumes: the finished parts stay as they are
    parts[2].unlink()
    stamp = parts[0].stat().st_mtime_ns
    model.sample_many(source, n_draws=400, seed=0, chunk=2, output=out)
    assert parts[2].exists() and parts[0].stat().st_mtime_ns == stamp


def test_formula_sample_many_names_bad_datasets(model, tmp_path):
    long = _long(3)
    long.loc[long["dataset"] == "d1", "y"] = np.nan
    with pytest.raises(Exception, match="dataset 'd1'"):
        model.sample_many(long, n_draws=50)
    with pytest.raises(Exception, match="no column 'run'"):
        model.sample_many(_long(2), dataset="run")
    shuffled = _long(3).sample(frac=1.0, random_state=0)
    source = tmp_path / "shuffled.parquet"
    shuffled.to_parquet(source, index=False)
    with pytest.raises(Exception, match="not contiguous"):
        model.sample_many(source, n_draws=50)


def test_formula_sample_many_disk_full_keeps_the_finished_parts(model, tmp_path, monkeypatch):
    import errno

    written = []
    original = pd.DataFrame.to_parquet

    def full_after_one(self, path, *args, **kwargs):
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return original(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_parquet", full_after_one)
    out = tmp_path / "out"
    with pytest.raises(LoadError, match="part-00001.parquet.*No space left on device.*1 parts written before it"):
        model.sample_many(_long(4), n_draws=50, chunk=2, output=out)
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet"]  # no partial file left behind
    monkeypatch.setattr(pd.DataFrame, "to_parquet", original)
    model.sample_many(_long(4), n_draws=50, chunk=2, output=out)  # the rerun resumes
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_study_on_a_dask_cluster_and_from_a_checkpoint(model, tmp_path):
    """The cells of a study run as tasks on 2 local worker processes and give the numbers of a run in this process
    (each cell's random stream depends on the seed and the cell alone). A rerun with the same checkpoint reads
    the finished cells; one whose file is gone is computed again, the same as before."""
    import distributed
    truths = np.array([[1.0, 0.0, 0.5, 1.0], [1.0, 0.6, 0.5, 1.0]])
    args = dict(n_datasets=6, n_draws=50, seed=4)
    local = simulate_study(model.npe, truths, [5, 10], [4], **args)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:  # fmt: skip
        spread = simulate_study(model.npe, truths, [5, 10], [4], **args, client=client, checkpoint=tmp_path / "ck")
    pd.testing.assert_frame_equal(spread.summary, local.summary)
    pd.testing.assert_frame_equal(spread.datasets, local.datasets)
    cells = sorted((tmp_path / "ck").glob("cell-*.json"))
    assert len(cells) == 4
    cells[1].unlink()
    stamp = cells[0].stat().st_mtime_ns
    resumed = simulate_study(model.npe, truths, [5, 10], [4], **args, checkpoint=tmp_path / "ck")
    pd.testing.assert_frame_equal(resumed.summary, local.summary)
    assert cells[1].exists() and cells[0].stat().st_mtime_ns == stamp


def _dies_once(flag: str):
    """An identity transform whose first call, in whichever worker runs it, kills that worker's process."""

    def transform(g):
        import os

        if not os.path.exists(flag):
            open(flag, "w").close()
            os._exit(1)
        return g

    return transform


def test_study_survives_a_worker_that_dies(model, tmp_path):
    """A worker killed mid-study: its cell runs again on a fresh worker, and the study gives the numbers of a run in
    this process, each cell counted once."""
    import distributed

    truths = np.array([[1.0, 0.3, 0.5, 1.0]])
    args = dict(n_datasets=4, n_draws=40, seed=8)
    local = simulate_study(model.npe, truths, [5, 6, 7], [4], **args)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:  # fmt: skip
        spread = simulate_study(model.npe, truths, [5, 6, 7], [4], **args, client=client,
                                transform=_dies_once(str(tmp_path / "died")))  # fmt: skip
    assert (tmp_path / "died").exists()
    pd.testing.assert_frame_equal(spread.summary, local.summary)
    assert len(spread.datasets) == 3 * 4


class _ExactEstimator:
    """The exact posterior of the two-level normal model in place of the networks (`estimator.sample`)."""

    def eval(self):
        return self

    def sample(self, n, batch, generator, return_log_prob=False):
        from mlnpe.examples.exact import normal_model_posterior

        rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=generator)))
        g, l = [], []
        for data in batch.to_datasets():
            draws = normal_model_posterior([data.group(j)[0][:, 0] for j in range(data.n_groups)]).sample(n, rng)
            g.append(np.stack([draws["mu"], draws["tau"]], -1))
            l.append(draws["alpha"][..., None])
        width = batch.group_mask.shape[1]
        l = [np.pad(a, ((0, 0), (0, width - a.shape[1]), (0, 0)), constant_values=0.0) for a in l]
        g, l = torch.as_tensor(np.stack(g, 1)), torch.as_tensor(np.stack(l, 1))
        zeros = torch.zeros(n, g.shape[1])
        return g, l, zeros, torch.zeros(n, g.shape[1], width)


def test_study_of_an_exact_posterior_covers_as_claimed():
    """With the exact posterior in place of the networks, the study's intervals cover the truth as often as they
    claim (400 datasets per point: a coverage errs by 0.015-0.025 by chance), bias is nil, and the power is the
    interval's error rate at mu = 0 and about 1 at mu = 1 (6 posterior sds from 0 with 15 groups of 10 rows). A study
    that compared the draws with other truths, or summarized them over the wrong axis, fails these."""
    from types import SimpleNamespace

    from mlnpe.core.models import NormalHierarchical

    npe = SimpleNamespace(model=NormalHierarchical(), global_names=["mu", "tau"], groups=(5, 15), rows=(2, 20),
                          estimator=_ExactEstimator())  # fmt: skip
    study = simulate_study(npe, np.array([[0.0, 0.5], [1.0, 0.5]]), [15], [10], n_datasets=400, n_draws=400, seed=3)
    s = study.summary.set_index(["point", "parameter"])
    for point in (0, 1):
        for name in ("mu", "tau"):
            row = s.loc[(point, name)]
            assert 0.43 <= row["coverage_50"] <= 0.57 and 0.86 <= row["coverage_90"] <= 0.94, study.summary
            assert 0.92 <= row["coverage_95"] <= 0.98, study.summary
        assert abs(s.loc[(point, "mu"), "bias"]) < 0.03  # mu's posterior sd is about 0.15
    assert s.loc[(0, "mu"), "power_interval"] <= 0.09 and s.loc[(1, "mu"), "power_interval"] >= 0.97
    assert s.loc[(1, "mu"), "power_prob"] >= 0.97 and s.loc[(0, "mu"), "power_prob"] <= 0.09


def test_a_model_without_data_takes_its_base_from_means_or_truth(model, tmp_path):
    loaded = FormulaNPE.load(model.save(tmp_path / "m"))  # no training data
    with pytest.raises(ConfigError, match="no training data.*pass every global parameter"):
        loaded.simulate_study({"b_x": [0.0]}, n_datasets=2)
    means = {"b_Intercept": 1.0, "b_x": 0.3, "sd_g__Intercept": 0.5, "sigma": 1.0, "r_g[g0,Intercept]": 0.1}
    study = loaded.simulate_study({"b_x": [0.0]}, n_groups=[5], n_rows=[4], n_datasets=3, n_draws=20, means=means)
    assert study.summary.set_index("parameter").loc["sigma", "truth"] == 1.0
