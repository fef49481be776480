"""The pooling factor of each group (Habermann et al., 2024, eq. 15): how far its estimate is pulled to the mean.

A pure function of numpy arrays; its plot is :func:`mlnpe.inference.plots.plot_pooling`.
"""

from __future__ import annotations

import numpy as np

from ..errors import DataError
from .arrays import as_float

__all__ = ["pooling_factor"]


def pooling_factor(
    local_draws: np.ndarray,
    hyper_mean_draws: np.ndarray,
    hyper_sd_draws: np.ndarray | float,
) -> np.ndarray:
    """Pooling factor of each group (Habermann et al., 2024, eq. 15, after Gelman and Pardoe, 2006).

    For a local parameter eta_j ~ Normal(mu_eta, sigma_eta)::

        kappa_j = Var(eta_j - mu_eta) / sigma_eta^2

    where Var is the posterior variance over draws of the difference eta_j - mu_eta (taken draw by draw) and
    sigma_eta^2 is the squared hierarchical standard deviation, summarized by its posterior mean E[sigma_eta^2].
    The paper prints the numerator as Var(eta_j - mu_eta)^2; the square belongs to the standard deviation of the
    source, (sd(eta_j - mu_eta))^2 = Var(eta_j - mu_eta) (Gelman and Hill, 2007, sec. 21.6), which keeps kappa
    dimensionless. kappa_j -> 1 is complete pooling (the data say nothing about the group's deviation, whose
    posterior then equals its prior Normal(0, sigma_eta)); kappa_j -> 0 is no pooling (the group's own data
    determine eta_j). In the normal-normal model with known mu, sigma_eta and residual sd sigma_y with n_j rows,
    kappa_j = (sigma_y^2 / n_j) / (sigma_y^2 / n_j + sigma_eta^2).

    Arguments:
        local_draws: (draws, groups) or (draws, groups, params) posterior draws of eta_j.
        hyper_mean_draws: (draws,) or (draws, params) draws of mu_eta, jointly with ``local_draws``.
        hyper_sd_draws: (draws,) or (draws, params) draws of sigma_eta, or a known scalar sigma_eta.

    Returns:
        (groups,) or (groups, params) pooling factors.

    Raises:
        DataError: mismatched shapes, fewer than 2 draws, non-finite values or a non-positive sigma_eta.
    """
    local = as_float(local_draws, "local_draws", (2, 3))
    n_draws = local.shape[0]
    param_shape = local.shape[2:]
    mean = as_float(hyper_mean_draws, "hyper_mean_draws", (1, 2))
    if mean.shape != (n_draws, *param_shape):
        raise DataError(
            f"`hyper_mean_draws` must have shape (draws{', params' if param_shape else ''}) = "
            f"{(n_draws, *param_shape)} to match `local_draws` {local.shape}, got {mean.shape}."
        )
    sd = np.asarray(hyper_sd_draws, dtype=np.float64)
    if sd.ndim == 0:
        sd = np.full((n_draws, *param_shape), float(sd))
    sd = as_float(sd, "hyper_sd_draws", (1, 2))
    if sd.shape != (n_draws, *param_shape):
        raise DataError(
            f"`hyper_sd_draws` must be a scalar or have shape {(n_draws, *param_shape)} to match `local_draws` "
            f"{local.shape}, got {sd.shape}."
        )
    if n_draws < 2:
        raise DataError(f"`local_draws` needs at least 2 draws to estimate a variance, got {n_draws}.")
    if np.any(sd <= 0):
        raise DataError(f"`hyper_sd_draws` must be positive (a standard deviation), got minimum {sd.min()}.")
    deviation = local - mean[:, None]
    return deviation.var(axis=0, ddof=1) / (sd**2).mean(axis=0)
