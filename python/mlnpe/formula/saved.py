"""The saved form of a formula model: a JSON specification, the covariate pool's tensors and the amortizer.

A saved FormulaNPE is a directory: `formula.json` (:func:`config_dict`: formula (with `0 + Intercept` and offsets),
family, priors in force, user priors, design information, features, ranges, network, seed, focusing region and
rounds), `pool.pt` (the
covariate pool, loaded with `weights_only=True`) and `amortizer/` (`MultilevelNPE.save`). No pickle.
:func:`spec_hash` keys the on-disk cache (`mlnpe.formula.cache`) by everything that determines the trained
amortizer.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch

from ..io import atomic_write, checksum, tensor_bytes, verify_checksum
from ..train import TrainConfig
from ..version import __version__
from .distributions import PriorDist, parse_prior
from .model import CovariatePool
from .priors import ParamSlot, PriorSpec

if TYPE_CHECKING:
    from .api import FormulaNPE

__all__ = [
    "AMORTIZER_DIR",
    "FORMULA_FILE",
    "POOL_FILE",
    "config_dict",
    "load_pool",
    "saved_priors",
    "saved_user_priors",
    "save",
    "spec_hash",
]

FORMULA_FILE, POOL_FILE, AMORTIZER_DIR = "formula.json", "pool.pt", "amortizer"


def config_dict(model: FormulaNPE) -> dict[str, Any]:
    """The JSON specification of a formula model (`formula.json`), training results (region, rounds) included.

    The formula covers `0 + Intercept` and the offsets' expressions (the offsets' values are a column of the pool);
    "x_source" and "offset_column" are written only where they differ from a model without them, so that the
    saves and cache keys (`spec_hash`) of such models stay what they were.
    """
    config = {
        "mlnpe_version": __version__,
        "formula": model.terms.formula,
        "family": model.family.name,
        "priors": [
            {"class": s.class_, "coef": s.coef, "group": s.group, "name": s.name, "lb": s.lb,
             "prior": str(d), "dist": d.to_dict() if hasattr(d, "to_dict") else str(d), "source": src}
            for s, d, src in model.resolved
        ],
        "user_priors": [{"prior": p.prior, "class_": p.class_, "coef": p.coef, "group": p.group,
                         "lb": p.lb, "ub": p.ub} for p in model.user_priors],
        "design_info": model.info.to_dict(),
        "x_means": model.x_means.tolist(),
        "feature_names": list(model.feature_names),
        "z_names": list(model.z_names),
        "z_source": list(model.z_source),
        "trials_column": model.trials_column,
        "groups": list(model.groups),
        "rows": list(model.rows),
        "network": model.network.to_dict(),
        "seed": model.seed,
        "region": {k: list(v) for k, v in model.model.region.items()},
        "rounds": model.rounds,
    }
    if list(model.x_source) != list(range(len(model.x_source))):
        config["x_source"] = list(model.x_source)
    if model.offset_column is not None:
        config["offset_column"] = model.offset_column
    return config


def spec_hash(model: FormulaNPE, config: TrainConfig | None = None, focus: int = 0) -> str:
    """A key of everything that determines the trained amortizer (for the on-disk cache).

    When training depends on the data themselves (`focus` > 0, the observed data's loss, the certificate), the key
    covers the response, the trials and the grouping as well as the covariate pool; otherwise it covers the
    covariate pool only, and data that differ in the response share one amortizer.
    """
    payload = config_dict(model)
    del payload["region"], payload["rounds"]  # results of training, not part of the specification
    payload["focus"] = int(focus)
    payload["pool"] = hashlib.sha256(model.pool.x.numpy().tobytes() + model.pool.n.numpy().tobytes()).hexdigest()
    config = config or TrainConfig()
    payload["train"] = config.to_dict()
    for setting in ("progress", "num_threads", "device"):  # how training runs, not what it learns
        payload["train"].pop(setting, None)
    uses_data = model.data is not None and (config.observed_weight > 0 or config.check_every > 0)
    if focus > 0 or uses_data:  # training learns around the data's posterior: the response and grouping matter too
        _, design = model.grouped_data(model.data)
        trials = b"" if design.trials is None else design.trials.astype("int64").tobytes()
        arrays = design.y.astype("float64").tobytes() + trials + design.group.astype("int64").tobytes()
        payload["data"] = hashlib.sha256(arrays).hexdigest()
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]


def save(model: FormulaNPE, path: str | os.PathLike) -> Path:
    """Saves to a directory: formula.json (with a checksum over it and the pool), pool.pt (tensors) and the
    amortizer (config.json, weights.pt), each file atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pool = tensor_bytes({"x": model.pool.x, "n": model.pool.n})
    config = config_dict(model)
    config["checksum"] = checksum(config, pool)
    model.npe.save(path / AMORTIZER_DIR)
    atomic_write(path / POOL_FILE, pool)
    atomic_write(path / FORMULA_FILE, json.dumps(config, indent=1).encode())  # last: a complete save has it
    return path


def load_pool(path: Path, config: dict[str, Any] | None = None) -> CovariatePool:
    """The covariate pool saved in `path` (tensors only), checked against the checksum of `config` (formula.json).

    Raises:
        FileNotFoundError: there is no pool.pt.
        KeyError: pool.pt lacks a tensor.
        LoadError: a checksum mismatch.
    """
    data = (path / POOL_FILE).read_bytes()
    if config is not None:
        verify_checksum(path, config, data, filename=FORMULA_FILE)
    pool = torch.load(io.BytesIO(data), weights_only=True)
    return CovariatePool(pool["x"], pool["n"])


def saved_priors(entries: Sequence[dict[str, Any]]) -> list[tuple[ParamSlot, PriorDist, str]]:
    """The priors in force, (slot, prior, source) per parameter, from `config_dict`'s "priors"."""
    return [(ParamSlot(p["class"], p["coef"], p["group"], p["name"], p["lb"]), _dist_from(p), p["source"])
            for p in entries]


def saved_user_priors(entries: Sequence[dict[str, Any]]) -> list[PriorSpec]:
    """The user's priors from `config_dict`'s "user_priors"."""
    return [PriorSpec(**p) for p in entries]


def _dist_from(p: dict[str, Any]) -> Any:
    d = p.get("dist")
    if isinstance(d, dict) and hasattr(PriorDist, "from_dict"):
        return PriorDist.from_dict(d)
    dist = parse_prior(p["prior"])
    return dist
