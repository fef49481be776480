"""The cache of trained formula models (`mlnpe.formula.cache.trained_model`) under concurrent processes.

Processes started with the spawn context (a fresh interpreter each, as separate R sessions or jobs would be) ask for
one specification at the same moment (a barrier): exactly one trains, the others wait for its lock and load its
entry, and every process ends with a working amortizer with the same weights. A corrupt entry is retrained by one
process while the others wait and load the new one. A process that loads a save directory without the cache's lock
while another re-saves it gets a whole model or a LoadError, never a foreign exception or a mixture of weights.
"""

import hashlib
import multiprocessing
import time
import warnings

import numpy as np
import pandas as pd
import torch

from mlnpe import TrainConfig
from mlnpe.errors import LoadError, MlnpeError
from mlnpe.formula import FormulaNPE, trained_model

FORMULA = "y ~ x + (1 | g)"
NET = {"summary": {"hidden": 16, "row_hidden": 8, "attention": 2}, "global_flow": {"transforms": 1, "hidden": (16,)},
       "local_flow": {"transforms": 1, "hidden": (16,)}}
TRAIN = TrainConfig(steps=5, batch_size=8, progress=False, check_every=0)
TIMEOUT = 240  # seconds a process may take: a failure, not a hang


def _data():
    rng = np.random.default_rng(0)
    g = np.repeat([f"s{k}" for k in range(5)], 4)
    return pd.DataFrame({"y": rng.normal(size=20), "x": rng.normal(size=20), "g": g})


def _digest(model):
    """A hash of the amortizer's weights."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.npe.estimator.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def _cached(cache):
    return trained_model(FORMULA, _data(), "gaussian", train=TRAIN, cache=cache, focus=0, network=NET)


def _report(queue, name, body):
    """Runs body() in a worker and puts its result, or the exception it raised, on the queue."""
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    try:
        queue.put({"name": name, **body()})
    except BaseException as error:  # everything goes back to the test, which tells mlnpe's errors from others
        queue.put({"name": name, "error": f"{type(error).__module__}.{type(error).__name__}: {error}",
                   "mlnpe": isinstance(error, MlnpeError)})


def _ask_cache(cache, barrier, queue, name):
    """Worker: waits for the others, asks the cache for the model and fits the data with it."""

    def body():
        barrier.wait(timeout=TIMEOUT)
        start = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model, hit = _cached(cache)
        end = time.time()
        draws = model.fit(n_draws=20, seed=1, refine=False).draws.to_numpy()
        retrained = any("retraining a corrupt cache entry" in str(w.message) for w in caught)
        return {"hit": hit, "start": start, "end": end, "draws": draws, "weights": _digest(model),
                "retrained": retrained}

    _report(queue, name, body)


def _resave(path, sources, seconds, barrier, done, queue, name):
    """Worker: saves the models saved in `sources` into `path`, alternately, for `seconds`."""

    def body():
        models = [FormulaNPE.load(source) for source in sources]
        barrier.wait(timeout=TIMEOUT)
        saves, end = 0, time.time() + seconds
        while time.time() < end:
            models[saves % len(models)].save(path)
            saves += 1
        done.set()
        return {"saves": saves}

    _report(queue, name, body)


def _load_while_saved(path, barrier, done, queue, name):
    """Worker: loads `path` without the cache's lock until the saver is done: whole models or LoadErrors."""

    def body():
        digests, load_errors = [], 0
        barrier.wait(timeout=TIMEOUT)
        while not done.is_set() or not digests:
            try:
                model = FormulaNPE.load(path, data=_data())
            except LoadError:
                load_errors += 1
                continue
            draws = model.fit(n_draws=10, seed=0, psis=False, refine=False).draws.to_numpy()
            if not np.isfinite(draws).all():
                raise AssertionError("a loaded model gave non-finite draws")
            digests.append(_digest(model))
        return {"digests": digests, "load_errors": load_errors}

    _report(queue, name, body)


def _run(workers):
    """Starts (target, args) workers with the spawn context and returns their results by name."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, queue, f"w{i}")) for i, (target, args) in enumerate(workers)]
    for p in procs:
        p.start()
    try:
        results = {r["name"]: r for r in (queue.get(timeout=TIMEOUT) for _ in procs)}
    finally:
        for p in procs:
            p.join(timeout=TIMEOUT)
            if p.is_alive():
                p.kill()
    foreign = [r["error"] for r in results.values() if "error" in r]
    assert not foreign, f"workers failed: {foreign}"
    return [results[f"w{i}"] for i in range(len(procs))]


def _check_one_trained_and_all_agree(results):
    trainers = [r for r in results if not r["hit"]]
    assert len(trainers) == 1, [r["hit"] for r in results]
    assert all(r["weights"] == results[0]["weights"] for r in results)  # one model: the trainer's
    for r in results:
        assert np.isfinite(r["draws"]).all()
        np.testing.assert_array_equal(r["draws"], results[0]["draws"])  # same weights, same seed: same draws
    trainer = trainers[0]
    for r in results:
        if r is not trainer:  # they asked while it trained, and got their model after it had saved the entry
            assert r["start"] < trainer["end"] <= r["end"]
    return trainer


def test_processes_asking_for_one_spec_at_once_train_it_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    cache = tmp_path / "cache"
    _check_one_trained_and_all_agree(_run([(_ask_cache, (cache, barrier))] * 4))
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")  # one entry, no staging directory left


def test_a_corrupt_entry_is_retrained_by_one_process_while_the_others_wait_and_load_it(tmp_path):
    cache = tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, hit = _cached(cache)
    assert not hit
    entry = next(p for p in cache.iterdir() if p.is_dir())
    (entry / "amortizer" / "weights.pt").write_bytes(b"torn")
    barrier = multiprocessing.get_context("spawn").Barrier(3)
    trainer = _check_one_trained_and_all_agree(_run([(_ask_cache, (cache, barrier))] * 3))
    assert trainer["retrained"]
    loaded = FormulaNPE.load(entry)  # the re-saved entry is whole
    assert _digest(loaded) == trainer["weights"]


def test_loading_while_another_process_re_saves_gives_a_whole_model_or_a_load_error(tmp_path):
    sources = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for seed in (0, 1):
            model = FormulaNPE(FORMULA, _data(), "gaussian", network=NET, seed=seed)
            model.train(TRAIN)
            sources.append(model.save(tmp_path / f"model{seed}"))
    expected = {_digest(FormulaNPE.load(source)) for source in sources}
    assert len(expected) == 2
    path = FormulaNPE.load(sources[0]).save(tmp_path / "shared")
    ctx = multiprocessing.get_context("spawn")
    barrier, done = ctx.Barrier(2), ctx.Event()
    saver, loader = _run([(_resave, (path, sources, 2.0, barrier, done)), (_load_while_saved, (path, barrier, done))])
    assert saver["saves"] > 10 and len(loader["digests"]) > 5
    assert set(loader["digests"]) <= expected  # each load: one model's weights, never a mixture
