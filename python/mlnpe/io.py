"""Saved estimators: a directory with config.json (JSON) and weights.pt (tensors only, read with
``torch.load(weights_only=True)``); no pickled modules.

Format versions (``config.json``'s ``format_version``):

- 3: the nested `NetworkConfig` (one config per part); the shifts' coefficients under ``global_shift.`` and
  ``local_shift.`` in the weights.
- 2: a flat network config of up to 31 keys (files written before a key existed lack it: it then takes the value
  that reproduces them, off for every statistic and shift option), and the shifts' coefficients on the estimator.

Files of an older version are mapped to the present one here (`network_from_saved`, `weights_from_saved`), so they
load and give the same log densities as when they were saved.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from .errors import ConfigError, LoadError
from .networks.config import NetworkConfig

__all__ = [
    "FORMAT_VERSION",
    "READABLE_VERSIONS",
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "atomic_write",
    "checksum",
    "read_saved_json",
    "read_config",
    "verify_checksum",
    "write_saved",
    "load_weights",
    "network_from_saved",
    "tensor_bytes",
    "weights_from_saved",
]

FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
CONFIG_FILE, WEIGHTS_FILE = "config.json", "weights.pt"

# Format 2: the flat network config's keys with their defaults, and the keys added while format 2 was current,
# which files written before them lack (they load as False; `shift_max_spread` as None, no limit).
_FLAT_DEFAULTS: dict[str, Any] = {
    "local_summary": "deepset", "global_summary": "deepset", "summary_hidden": 64, "summary_depth": 2,
    "row_hidden": 16, "global_attention": 8, "local_summary_dim": 16, "global_summary_dim": 32,
    "global_transforms": 3, "global_hidden": (64, 64), "local_transforms": 1, "local_hidden": (32, 32), "bins": 8,
    "affine": True, "global_context": 64, "log_inputs": (), "sufficient": "none", "design_only": (),
    "local_extremes": False, "log_response": False,
}  # fmt: skip
_FLAT_ADDED = ("pooled_moments", "between_moments", "profile", "group_moments", "regression_shift", "glm_slopes",
               "log_scale_shift", "scale_statistics", "profile_average", "heteroscedastic_shift")
# Format 2: the estimator's buffers that format 3 keeps in its `GlobalShift` and `LocalShift` modules.
_MOVED_BUFFERS = {
    "stat_loc": "global_shift.stat_loc", "stat_scale": "global_shift.stat_scale",
    "stat_range": "global_shift.stat_range", "shift_coef": "global_shift.coef",
    "shift_range": "global_shift.coef_range", "context_loc": "global_shift.prior_loc",
    "context_scale": "global_shift.prior_scale", "shift_log": "global_shift.log_columns",
    "shift_sd": "global_shift.sd", "scale_coef": "global_shift.scale_coef", "scale_range": "global_shift.scale_range",
    "local_stat_loc": "local_shift.stat_loc", "local_stat_scale": "local_shift.stat_scale",
    "local_stat_range": "local_shift.stat_range", "local_shift_coef": "local_shift.coef",
    "local_shift_range": "local_shift.coef_range",
}  # fmt: skip
# the top-level keys of a format-3 network config that a flat one never has
_NESTED_KEYS = {"summary", "global_flow", "local_flow", "statistics", "shift"}


def read_saved_json(path: Path, filename: str) -> Any:
    """The JSON file `filename` of a save directory, with a LoadError naming the file when it is missing or corrupt."""
    try:
        return json.loads((Path(path) / filename).read_text())
    except FileNotFoundError:
        raise LoadError(f"no {filename} in {str(path)!r}; pass the directory written by `save`.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LoadError(f"{str(Path(path) / filename)!r} is not valid JSON ({e}); the save is corrupt.") from None


def read_config(path: Path) -> tuple[dict[str, Any], NetworkConfig]:
    """A save directory's config.json, checked for a readable format version, and its network config in the
    present format.

    Raises:
        LoadError: a missing or corrupt file, an unreadable format version or a missing network entry.
    """
    config = read_saved_json(path, CONFIG_FILE)
    version = config.get("format_version") if isinstance(config, dict) else None
    if version not in READABLE_VERSIONS:
        raise LoadError(
            f"{str(path)!r} has format_version {version!r}; this mlnpe reads versions {list(READABLE_VERSIONS)}. "
            "Re-save it with a matching mlnpe version."
        )
    if not isinstance(config.get("network"), dict):
        raise LoadError(f"{str(Path(path) / CONFIG_FILE)!r} lacks its `network` entry; the save is corrupt.")
    return config, network_from_saved(config["network"], version)


def checksum(config: Mapping[str, Any], *blobs: bytes) -> str:
    """SHA-256 over a JSON config (without its own "checksum" entry) and the bytes of the files it describes."""
    digest = hashlib.sha256(json.dumps({k: v for k, v in config.items() if k != "checksum"}, sort_keys=True,
                                       default=str).encode())  # fmt: skip
    for blob in blobs:
        digest.update(blob)
    return digest.hexdigest()


def verify_checksum(path: Path, config: Mapping[str, Any], *blobs: bytes, filename: str = CONFIG_FILE) -> None:
    """Checks the "checksum" entry of a saved config against the config and its files (saves written before
    checksums have none and are not checked).

    Raises:
        LoadError: the config or a file changed after saving (an edit, a torn write, a flipped bit).
    """
    expected = config.get("checksum")
    if expected is not None and expected != checksum(config, *blobs):
        raise LoadError(
            f"{str(Path(path) / filename)!r} or the files it describes changed after they were saved (checksum "
            "mismatch): the save is corrupt or was edited. Save or train the model again."
        )


def atomic_write(target: Path, data: bytes) -> None:
    """Writes `data` to `target` through a temporary file in the same directory and a rename, so that a reader sees
    the old file or the new one, never half of one."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def tensor_bytes(tensors: Mapping[str, Tensor]) -> bytes:
    """A mapping of tensors as the bytes of a `torch.save` file (read back with weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(dict(tensors), buffer)
    return buffer.getvalue()


def write_saved(path: Path, config: Mapping[str, Any], estimator: nn.Module) -> Path:
    """Writes a save directory: `config` (with `format_version` FORMAT_VERSION and a checksum over it and the
    weights) as config.json and the estimator's tensors as weights.pt, each file atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    weights = tensor_bytes(estimator.state_dict())
    config = {**config, "format_version": FORMAT_VERSION}
    config["checksum"] = checksum(config, weights)
    atomic_write(path / WEIGHTS_FILE, weights)
    atomic_write(path / CONFIG_FILE, json.dumps(config, indent=1).encode())
    return path


def load_weights(
    estimator: nn.Module, path: Path, format_version: int = FORMAT_VERSION, config: Mapping[str, Any] | None = None
) -> None:
    """Loads weights.pt of a save directory (of `format_version`) into `estimator`, after checking them against the
    checksum of `config` (the save's config.json) when it has one.

    Raises:
        LoadError: a missing or unreadable file, a checksum mismatch, non-finite weights, or weights that do not
            match the estimator's configuration.
    """
    path = Path(path)
    try:
        data = (path / WEIGHTS_FILE).read_bytes()
    except FileNotFoundError:
        raise LoadError(f"no {WEIGHTS_FILE} in {str(path)!r}; the save is incomplete.") from None
    if config is not None:
        verify_checksum(path, config, data)
    try:
        with warnings.catch_warnings():  # torch's warnings about a foreign file: the LoadError below says it
            warnings.simplefilter("ignore", UserWarning)
            state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as e:  # torch raises several types for corrupt archives
        # torch's first sentence only: its advice to load with weights_only=False would run arbitrary code
        reason = str(e).strip().splitlines()[0].split(". ")[0] if str(e).strip() else type(e).__name__
        raise LoadError(
            f"{str(path / WEIGHTS_FILE)!r} cannot be read as tensors ({type(e).__name__}: {reason}); the file is "
            "corrupt or not an mlnpe save. Save the model again (it is never loaded through pickle)."
        ) from None
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise LoadError(f"{str(path / WEIGHTS_FILE)!r} holds no mapping of tensors; the save is corrupt.")
    broken = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if broken:
        raise LoadError(
            f"{str(path / WEIGHTS_FILE)!r} has non-finite values in {broken[:3]}; the save is corrupt: retrain it."
        )
    try:
        estimator.load_state_dict(weights_from_saved(state, format_version))
    except (RuntimeError, TypeError, AttributeError) as e:
        raise LoadError(
            f"the weights in {str(path)!r} do not match its configuration: {str(e).splitlines()[0]}"
        ) from None


def weights_from_saved(state: Mapping[str, Tensor], format_version: int) -> dict[str, Tensor]:
    """An estimator's saved tensors (of `format_version`) under the present names."""
    if format_version >= 3:
        return dict(state)
    return {_MOVED_BUFFERS.get(key, key): value for key, value in state.items()}


def network_from_saved(network: Mapping[str, Any], format_version: int | None = None) -> NetworkConfig:
    """The network config of a saved model in the present format.

    Arguments:
        network: the saved network entry.
        format_version: the format it was saved in; None infers it from the keys (a flat config is format 2).
    Raises:
        ConfigError: keys that no format knows.
    """
    if format_version is None:
        format_version = 3 if _NESTED_KEYS & set(network) else 2
    if format_version >= 3:
        return NetworkConfig.from_dict(network)
    return _network_from_flat(network)


def _network_from_flat(network: Mapping[str, Any]) -> NetworkConfig:
    """A format-2 flat network config -> the NetworkConfig that builds the same estimator."""
    unknown = sorted(set(network) - set(_FLAT_DEFAULTS) - set(_FLAT_ADDED) - {"shift_max_spread"})
    if unknown:
        raise ConfigError(f"the saved (format 2) network config has unknown keys {unknown}.")
    flat = {**_FLAT_DEFAULTS, **{key: False for key in _FLAT_ADDED}, "shift_max_spread": None, **network}
    scale_statistics = bool(flat["scale_statistics"])
    sufficient = None
    if flat["sufficient"] != "none":
        sufficient = {"family": flat["sufficient"], "design_only": flat["design_only"],
                      "floor": 1e-6 if scale_statistics else 1e-3, "origin": scale_statistics}
    elif flat["design_only"]:
        raise ConfigError("the saved (format 2) network config has `design_only` without `sufficient`; it cannot be read.")
    summary = {
        "local_kind": flat["local_summary"], "global_kind": flat["global_summary"], "hidden": flat["summary_hidden"],
        "depth": flat["summary_depth"], "row_hidden": flat["row_hidden"], "attention": flat["global_attention"],
        "local_dim": flat["local_summary_dim"], "global_dim": flat["global_summary_dim"],
        "embedding": flat["global_context"], "extremes": flat["local_extremes"],
        "group_moments": flat["group_moments"], "sufficient": sufficient,
    }  # fmt: skip
    statistics = shift = None
    if flat["pooled_moments"]:
        statistics = {
            "between": flat["between_moments"], "profile": flat["profile"],
            "profile_average": bool(flat["profile"] and flat["profile_average"]), "glm_slopes": flat["glm_slopes"],
            "group_fits": scale_statistics, "floor": 1e-8 if scale_statistics else 1e-4,
        }  # fmt: skip
        if flat["regression_shift"]:
            shift = {"log_scale": flat["log_scale_shift"],
                     "heteroscedastic": bool(flat["log_scale_shift"] and flat["heteroscedastic_shift"]),
                     "max_spread": flat["shift_max_spread"]}  # fmt: skip
    return NetworkConfig.from_dict({
        "summary": summary,
        "global_flow": {"transforms": flat["global_transforms"], "hidden": flat["global_hidden"],
                        "bins": flat["bins"], "affine": flat["affine"]},
        "local_flow": {"transforms": flat["local_transforms"], "hidden": flat["local_hidden"],
                       "bins": flat["bins"], "affine": flat["affine"]},
        "statistics": statistics, "shift": shift,
        "log_inputs": flat["log_inputs"], "log_response": flat["log_response"],
    })  # fmt: skip
