"""The R package and the Python API give the same draws, value for value, for one trained amortizer and seed.

The R side runs through rpy2 when it is installed: in a child Python process that embeds R, where reticulate
then uses that same Python; the child ends with os._exit because rpy2's shutdown of R aborts the interpreter
once reticulate has held Python objects. Without rpy2 (not a dependency of the project; rpy2 >= 3.6 needs
R >= 4.4, so use rpy2==3.5.17 with R 4.2), the script runs in `Rscript`, where draws agree only to float32
rounding (see `_assert_same_draws`). Either way RETICULATE_PYTHON points to this Python. The R package is
installed from this repository into a temporary library first, so the test checks the current R code. Draws come
back from R as raw doubles (writeBin), so the comparison is exact.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlnpe.formula import trained_model
from mlnpe.formula.cache import training_config
from mlnpe.inference.psis import ParetoKWarning

REPO = Path(__file__).resolve().parents[2]
TRAIN = {"steps": 20, "batch_size": 8, "progress": False}
NETWORK = {"summary": {"hidden": 16, "row_hidden": 8}, "global_flow": {"hidden": (32, 32), "transforms": 2},
           "local_flow": {"hidden": (16, 16), "transforms": 1}}
SEED, NDRAWS = 7, 100


def _data() -> pd.DataFrame:
    rng = np.random.default_rng(3)
    groups, rows = 6, 5
    g = np.repeat(np.arange(groups), rows)
    x = rng.normal(size=groups * rows)
    y = 1.0 + 0.5 * x + rng.normal(0, 0.5, groups)[g] + rng.normal(0, 0.7, groups * rows)
    return pd.DataFrame({"y": y, "x": x, "g": [f"grp {k}" for k in g]})


def _r_script(paths: dict[str, str]) -> str:
    def r_list(values: dict) -> str:  # NETWORK's nested dict as the R list mlnpe() takes
        return ", ".join(f"{k} = list({r_list(v)})" if isinstance(v, dict) else
                         f"{k} = {('c(%s)' % ', '.join(map(str, v))) if isinstance(v, tuple) else v}"
                         for k, v in values.items())

    network = r_list(NETWORK)
    train = ", ".join(f"{k} = {'FALSE' if v is False else v}" for k, v in TRAIN.items())
    return textwrap.dedent(f"""
        .libPaths(c("{paths['lib']}", .libPaths()))
        suppressPackageStartupMessages(library(mlnpe))
        d <- read.csv("{paths['csv']}", stringsAsFactors = FALSE)
        quiet <- function(expr) suppressWarnings(suppressMessages(expr))
        amortizer <- load_amortizer("{paths['model']}")
        fit <- quiet(update(amortizer, newdata = d, ndraws = {NDRAWS}, seed = {SEED}, refine = FALSE))
        m <- unclass(posterior::as_draws_matrix(fit))
        writeBin(as.numeric(m), "{paths['refit_bin']}")
        writeLines(colnames(m), "{paths['names']}")
        fit2 <- quiet(mlnpe(y ~ x + (1 + x | g), data = d, train = list({train}), network = list({network}),
                            cache = "{paths['cache']}", ndraws = {NDRAWS}, seed = {SEED}, refine = FALSE))
        writeLines(c(as.character(fit2$amortizer$from_cache), fit2$amortizer$path), "{paths['fit_info']}")
        writeBin(as.numeric(unclass(posterior::as_draws_matrix(fit2))), "{paths['fit_bin']}")
    """)


_RPY2_CHILD = """
import os, sys, traceback
try:
    import rpy2.robjects as ro
    ro.r(open(sys.argv[1]).read())
    code = 0
except Exception:
    traceback.print_exc()
    code = 1
sys.stdout.flush(); sys.stderr.flush()
os._exit(code)  # skips rpy2's atexit R shutdown, which crashes once reticulate has run Python objects in R
"""


def _has_rpy2() -> bool:
    try:
        import rpy2.robjects  # noqa: F401
    except Exception:  # ImportError, or an rpy2 built for another R
        return False
    return True


def _run_r(script: str, tmp: Path) -> str:
    """Runs the R script through rpy2 (in a child Python, so that R's shutdown cannot abort pytest) or, without
    rpy2, through Rscript; returns which."""
    path = tmp / "bridge.R"
    path.write_text(script)
    env = dict(os.environ, RETICULATE_PYTHON=sys.executable)
    if _has_rpy2():
        command, how = [sys.executable, "-c", _RPY2_CHILD, str(path)], "rpy2"
    else:
        command, how = ["Rscript", str(path)], "Rscript"
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"R via {how} failed:\n{done.stdout}\n{done.stderr}"
    return how


@pytest.fixture(scope="module")
def r_library(tmp_path_factory) -> Path:
    if shutil.which("R") is None:
        pytest.skip("R is not installed")
    lib = tmp_path_factory.mktemp("rlib")
    done = subprocess.run(["R", "CMD", "INSTALL", "--no-test-load", f"--library={lib}", str(REPO)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "there is no package called" in done.stderr:
        pytest.skip(f"an R dependency of mlnpe is missing: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr[-2000:]
    return lib


@pytest.mark.slow
def test_r_draws_equal_python_draws(r_library, tmp_path):
    data = _data()
    cache = tmp_path / "cache"
    model, from_cache = trained_model("y ~ x + (1 + x | g)", data, "gaussian", None, train=TRAIN, cache=cache,
                                      network=NETWORK)
    assert not from_cache
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        expected = model.fit(data, n_draws=NDRAWS, seed=SEED, refine=False).draws
    saved = model.save(tmp_path / "model")
    csv = tmp_path / "data.csv"
    data.to_csv(csv, index=False, float_format="%.17g")
    paths = {name: str(tmp_path / name) for name in ("refit_bin", "names", "fit_info", "fit_bin")}
    paths.update(lib=str(r_library), csv=str(csv), model=str(saved), cache=str(cache))

    how = _run_r(_r_script(paths), tmp_path)
    print(f"R driven through {how}")

    names = Path(paths["names"]).read_text().split("\n")[:-1]
    assert names == list(expected.columns)
    shape = (len(names), NDRAWS)
    refit = np.fromfile(paths["refit_bin"], dtype="<f8").reshape(shape).T
    _assert_same_draws(refit, expected.to_numpy(), how)

    # mlnpe() in R with the same specification finds the amortizer that Python trained: R's data encoding
    # (factor codes, numbers) gives the same cache key, and the draws are again identical.
    from_cache_r, path_r = Path(paths["fit_info"]).read_text().split("\n")[:2]
    assert from_cache_r == "TRUE"
    assert Path(path_r).resolve() == (cache / model.spec_hash(training_config(TRAIN), focus=1)).resolve()
    fitted = np.fromfile(paths["fit_bin"], dtype="<f8").reshape(shape).T
    _assert_same_draws(fitted, expected.to_numpy(), how)


def _assert_same_draws(actual: np.ndarray, expected: np.ndarray, how: str) -> None:
    """Identical draws through rpy2. Through Rscript, the R executable has loaded R's BLAS into the global symbol
    namespace, and torch's float32 matrix products inside R bind to it (Debian's reference BLAS): the draws then
    differ from Python's at float32 rounding level, amplified by the flows."""
    if how == "rpy2":
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, rtol=1e-2, atol=1e-3)

