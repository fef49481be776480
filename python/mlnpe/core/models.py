"""Ready-made two-level models.

:class:`NormalHierarchical` is the model whose posterior :mod:`mlnpe.examples.exact` computes exactly; it is the
ground truth of mlnpe's tests and benchmarks.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .data import GroupedBatch
from ..errors import SpecError
from .spec import ParamSpec, TwoLevelModel

__all__ = ["NormalHierarchical", "MODELS", "model_from_config"]

_LOG_2PI = math.log(2 * math.pi)


def _normal_logpdf(x: Tensor, loc: Tensor | float, scale: Tensor | float) -> Tensor:
    z = (x - loc) / scale
    return -0.5 * z * z - torch.log(torch.as_tensor(scale, dtype=x.dtype)) - 0.5 * _LOG_2PI


class NormalHierarchical(TwoLevelModel):
    """y_ij ~ Normal(alpha_j, sigma), sigma known; alpha_j ~ Normal(mu, tau); mu ~ Normal(mu_loc, mu_scale);
    tau ~ HalfNormal(tau_scale).

    Arguments:
        sigma: the known residual sd.
        mu_loc, mu_scale: prior of mu.
        tau_scale: scale of the half-normal prior of tau.
    """

    global_params = (ParamSpec("mu", "real"), ParamSpec("tau", "positive"))
    local_params = (ParamSpec("alpha", "real"),)
    y_dim = 1

    def __init__(self, sigma: float = 1.0, mu_loc: float = 0.0, mu_scale: float = 1.0, tau_scale: float = 1.0):
        for name, value in (("sigma", sigma), ("mu_scale", mu_scale), ("tau_scale", tau_scale)):
            if not value > 0:
                raise SpecError(f"NormalHierarchical `{name}` must be positive, got {value!r}.")
        self.sigma, self.mu_loc, self.mu_scale, self.tau_scale = float(sigma), float(mu_loc), float(mu_scale), float(tau_scale)

    def sample_global(self, n: int, generator: torch.Generator) -> Tensor:
        mu = self.mu_loc + self.mu_scale * torch.randn(n, generator=generator)
        tau = self.tau_scale * torch.randn(n, generator=generator).abs()
        return torch.stack([mu, tau], -1)

    def sample_local(self, global_params: Tensor, n_groups: int, generator: torch.Generator) -> Tensor:
        mu, tau = global_params[:, 0:1], global_params[:, 1:2]
        z = torch.randn(global_params.shape[0], n_groups, generator=generator)
        return (mu + tau * z)[..., None]

    def simulate(
        self, global_params: Tensor, local_params: Tensor, design: GroupedBatch, generator: torch.Generator
    ) -> Tensor:
        noise = torch.randn(design.row_mask.shape, generator=generator)
        return (local_params[..., 0:1] + self.sigma * noise)[..., None]

    def log_prior_global(self, global_params: Tensor) -> Tensor:
        mu, tau = global_params[..., 0], global_params[..., 1]
        return _normal_logpdf(mu, self.mu_loc, self.mu_scale) + _normal_logpdf(tau, 0.0, self.tau_scale) + math.log(2)

    def log_prior_local(self, local_params: Tensor, global_params: Tensor) -> Tensor:
        return _normal_logpdf(local_params[..., 0], global_params[..., 0:1], global_params[..., 1:2])

    def log_likelihood(self, batch: GroupedBatch, global_params: Tensor, local_params: Tensor) -> Tensor:
        y = batch.y[..., 0]  # (B, J, N)
        lp = _normal_logpdf(y, local_params[..., 0:1], self.sigma)  # (S, B, J, N) by broadcasting
        return (lp * batch.row_mask).sum(-1)

    def to_config(self) -> dict[str, Any]:
        return {
            "class": "NormalHierarchical",
            "kwargs": {"sigma": self.sigma, "mu_loc": self.mu_loc, "mu_scale": self.mu_scale, "tau_scale": self.tau_scale},
        }


MODELS: dict[str, type[TwoLevelModel]] = {"NormalHierarchical": NormalHierarchical}


def model_from_config(config: dict[str, Any]) -> TwoLevelModel | None:
    """Rebuilds a registered model from its JSON config; None for user models (pass them to `load`)."""
    if str(config.get("module", "")).startswith("mlnpe.case_studies."):  # a case study registers itself on import
        __import__(str(config["module"]))
    cls = MODELS.get(str(config.get("class")))
    return None if cls is None else cls(**config.get("kwargs", {}))
