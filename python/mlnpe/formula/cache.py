"""The on-disk cache of trained formula amortizers: the same specification is trained once.

`trained_model(formula, data, ...)` keys the cache by `FormulaNPE.spec_hash` (`mlnpe.formula.saved.spec_hash`:
formula, family, priors in force, design information, covariate pool, ranges, network, training settings and
`focus`) under :func:`cache_dir`, loads a stored amortizer of that key, or trains and stores one. An entry is
written to a temporary directory and renamed into place, under a lock per key: a second process asking for the
same specification waits for the first and loads its entry; a corrupt entry is retrained with a warning.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterator

from ..errors import LoadError
from ..train import TrainConfig
from .api import FormulaNPE
from .saved import FORMULA_FILE

__all__ = ["TRAINING", "cache_dir", "trained_model", "training_config"]

# The training budget of a fit (`mlnpe()`, `trained_model`): 1500 steps of 64 datasets at a peak learning rate of
# 2e-3, which on sleepstudy, seeds and radon reach the targets against Stan within 3 minutes on 2 CPU cores
# (BENCHMARKS.md, real data); the certificate may stop training earlier.
TRAINING = {"steps": 1500, "batch_size": 64, "learning_rate": 2e-3}


def training_config(train: TrainConfig | dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of a fit: a TrainConfig as it is; otherwise `TRAINING` changed by the fields `train` names."""
    if isinstance(train, TrainConfig):
        return train
    return TrainConfig.from_dict({**TRAINING, **dict(train or {})})


def cache_dir() -> Path:
    """The on-disk cache of trained amortizers: $MLNPE_CACHE_DIR, else ~/.cache/mlnpe."""
    return Path(os.environ.get("MLNPE_CACHE_DIR") or Path.home() / ".cache" / "mlnpe")


def trained_model(
    formula: str,
    data: Any,
    family: Any = "gaussian",
    prior: Any = None,
    *,
    train: TrainConfig | dict[str, Any] | None = None,
    cache: bool | str | os.PathLike = True,
    focus: int = 1,
    **kwargs: Any,
) -> tuple[FormulaNPE, bool]:
    """A trained FormulaNPE for this specification, from the cache when the same one was trained before.

    The cache key covers everything that determines the amortizer: formula, family, priors in force, design
    information, covariate pool, ranges, network, training settings and `focus` (see `FormulaNPE.train`; 1 by
    default, as in R's `mlnpe()`: this entry point fits the user's data), and the data themselves where training
    uses them. `train` changes single fields of `TRAINING` (or is a full TrainConfig). The first call trains and
    stores it.

    Returns:
        (model, from_cache).
    """
    config = training_config(train)
    model = FormulaNPE(formula, data, family, prior, **kwargs)
    if cache is False:
        model.train(config, focus=focus)
        return model, False
    root = cache_dir() if cache is True else Path(cache)
    key = model.spec_hash(config, focus)
    path = root / key
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):  # a second process with the same spec waits here, then loads
        if (path / FORMULA_FILE).exists():
            try:
                return FormulaNPE.load(path, data=data), True
            except LoadError as e:
                warnings.warn(f"retraining a corrupt cache entry: {e}", stacklevel=2)
        model.train(config, focus=focus)
        staging = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
        try:
            model.save(staging)
            if path.exists():
                shutil.rmtree(path)
            os.replace(staging, path)  # readers see no entry or a whole one
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return model, False


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An exclusive lock on `lock` across processes (POSIX advisory locks; where the platform has none, no lock)."""
    try:
        import fcntl
    except ImportError:  # Windows: no fcntl; concurrent first fits then both train, and the last rename wins
        yield
        return
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
