"""Focusing a formula amortizer on datasets like its training data: truncated-prior rounds around the data.

`FormulaNPE.train(focus=k)` runs :func:`train_focused`: a first box around the training data's posterior from
regression on pooled statistics (:func:`regression_region`, no training), then k + 1 rounds, each simulating from
the prior truncated to the box (`FormulaModel.set_region`) and each after the first in the box that the last
round's posterior sets (:func:`posterior_region`), where PSIS finds that posterior covering the data's
(:func:`narrow_region`).
:func:`region_edges` names the parameters whose draws crowd an edge of the box, for `fit()` to warn. The truncated prior only changes where the simulations are; densities stay
the full prior's (Deistler et al. 2022, truncated proposals).

The functions take the :class:`~mlnpe.formula.api.FormulaNPE` and use its parts: `npe` (the MultilevelNPE, which
training rounds replace), `model` (the FormulaModel and its region), `slots`, `data`, `rounds`, `grouped_data`.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..amortizer import MultilevelNPE
from ..core.constraints import Positive, get_support
from ..core.draws import PosteriorDraws
from ..checks import check_float, check_int, check_seed
from ..errors import ConfigError, DataError, RangeError
from ..consistency import has_likelihood
from ..core.data import collate
from ..inference.certificate import Certificate, observed_khat
from ..train import TrainConfig, TrainHistory

if TYPE_CHECKING:
    from .api import FormulaNPE

__all__ = [
    "check_focus", "narrow_region", "posterior_region", "record_round", "region_edges", "regression_region",
    "train_focused", "training_data",
]


# The share of the training budget that the focusing rounds before the last one take together.
FOCUS_SHARE = 0.4

# A round's posterior box narrows the region only when the PSIS k-hat of that posterior for the training data is
# below this: under 1 the importance ratios have a finite mean, so q covers the bulk of the posterior, and a box of
# quartiles -+ 4 IQRs around q's draws holds it. Above 1, q misses posterior mass, and its box can exclude the
# posterior for every later round (speed_acc, round k-hat 1.91: sd_stim and sd_id 3-30 Stan sds outside the box).
# At 0.7 instead (the threshold for PSIS-corrected estimates) Pastes' round (0.92) lost its box, and its amortized
# sd ratios fell from 95 % to 80 % in [0.9, 1.1] (BENCHMARKS.md, several grouping factors).
BOX_KHAT = 1.0


def check_focus(focus: Any) -> int:
    """The number of focusing rounds: an integer from 0 to 5 (True means 1, False 0)."""
    if isinstance(focus, (bool, np.bool_)):
        return int(focus)
    if isinstance(focus, (float, np.floating)) and float(focus).is_integer():
        focus = int(focus)
    if not isinstance(focus, (int, np.integer)) or not 0 <= focus <= 5:
        raise ConfigError(
            f"`focus` must be a whole number of focusing rounds from 0 to 5 (or TRUE/FALSE), got {focus!r}; use 0 "
            "to amortize over the whole prior and 1 to focus on datasets like the training data."
        )
    return int(focus)


def training_data(model: FormulaNPE, config: TrainConfig, certify: bool = True) -> dict[str, Any]:
    """The training data's part in training `model.npe` (the keyword arguments of `MultilevelNPE.train`): the
    observed data for self-consistency (with `config.observed_weight` > 0) and the PSIS certificate as the
    monitor (with `config.check_every` > 0 and `certify`). {} without training data; data outside the trained
    ranges of J and N_j warn and take no part."""
    if model.data is None or (not config.observed_weight and not (certify and config.check_every)):
        return {}
    grouped, _ = model.grouped_data(model.data)
    try:
        model.npe.check_design(grouped)
    except RangeError as e:
        warnings.warn(f"the training data take no part in training (no self-consistency, no certificate): {e}",
                      stacklevel=3)  # fmt: skip
        return {}
    out: dict[str, Any] = {}
    if config.observed_weight:
        out["observed"] = grouped
    if certify and config.check_every:
        out["monitor"] = Certificate(model.npe, grouped, seed=config.seed)
    return out


def train_focused(model: FormulaNPE, config: TrainConfig, focus: int) -> TrainHistory:
    """Retrains `model` in focus + 1 rounds on the budget of `config` (see `FormulaNPE.train`).

    The first `focus` rounds share `FOCUS_SHARE` (40 %) of the steps (and time limit), the last round the rest.
    Every round starts from freshly initialized and standardized networks.

    Returns:
        the training history of the last round.

    Raises:
        DataError: the model has no training data.
    """
    if model.data is None:
        raise DataError("`focus` needs the training data: load the model with `data=` or train with focus=0.")
    model.model.set_region(None)
    model.rounds = []
    region = regression_region(model, seed=config.seed + 999)
    if region:
        model.model.set_region(region)
        model.npe = MultilevelNPE(model.model, model.groups, model.rows, model.network, seed=model.seed)
    for k in range(focus + 1):
        fraction = 1 - FOCUS_SHARE if k == focus else FOCUS_SHARE / focus
        budget = {"steps": max(1, int(round(config.steps * fraction))), "seed": config.seed + k}
        if config.time_limit is not None:
            budget["time_limit"] = config.time_limit * fraction
        box: dict[str, Any] = {"box": "regression" if region else "prior", "box_khat": None}
        if k > 0:
            box = narrow_region(model, seed=config.seed + 1000 + k)
            model.npe = MultilevelNPE(model.model, model.groups, model.rows, model.network, seed=model.seed + k)
        round_config = TrainConfig.from_dict({**config.to_dict(), **budget})
        history = model.npe.train(round_config, **training_data(model, round_config, certify=k == focus))
        record_round(model, history, continued=False)
        model.rounds[-1].update(box)
    return history


def narrow_region(model: FormulaNPE, seed: int = 0, n_draws: int = 1000) -> dict[str, Any]:
    """Narrows the model's region to the current amortizer's posterior box of the training data
    (:func:`posterior_region`) where PSIS finds that posterior covering the data's (k-hat of `n_draws` draws below
    `BOX_KHAT`, 1); otherwise the region stays as it is. An overconfident round's box can exclude the posterior (a crossed model's group-level
    sds 3-30 posterior sds outside it, BENCHMARKS.md), and no later round can leave the box again.

    Returns:
        how the round's box came about: {"box": "posterior" or "kept", "box_khat": the k-hat}.
    """
    grouped, _ = model.grouped_data(model.data)
    khat = observed_khat(model.npe, collate([grouped]), n_draws, seed) if has_likelihood(model.model) else 0.0
    if khat < BOX_KHAT:
        model.model.set_region(posterior_region(model, seed=seed))
        return {"box": "posterior", "box_khat": khat}
    return {"box": "kept", "box_khat": khat}


def record_round(model: FormulaNPE, history: Any, continued: bool) -> None:
    """Appends a training round (its region, training time and datasets) to `model.rounds`; with `continued`,
    replaces the last one (training that goes on in the same region)."""
    entry = {"region": {k: list(v) for k, v in model.model.region.items()},
             "train_seconds": float(history.train_seconds), "datasets": int(history.datasets_seen)}
    if continued and model.rounds:
        model.rounds[-1] = entry  # the history of the last round goes on
    else:
        model.rounds.append(entry)


def posterior_region(
    model: FormulaNPE, data: Any = None, n_draws: int = 8000, seed: int | None = 0, reach: float = 4.0
) -> dict[str, tuple[float, float]]:
    """A box around the current posterior of `data` (default: the training data), for focusing.

    Every scalar global parameter except correlations gets, on the flow's unconstrained scale, the box from
    its lower posterior quartile minus `reach` interquartile ranges to its upper quartile plus `reach` IQRs
    (for a normal posterior: mean +- 6.1 sd), mapped back to the natural scale and intersected with the
    current region. Quartiles are robust to the stray far-tail draws of an undertrained flow.
    """
    reach = check_float(reach, "reach", 0, open_low=True)
    data = model.data if data is None else data
    grouped, _ = model.grouped_data(data)
    draws = model.npe.sample(grouped, n_draws, seed=seed, allow_extrapolation=True)
    region = {}
    for i, slot in enumerate(model.slots):
        if slot.kind == "cor":
            continue
        support, u = _unconstrained(model, draws, i)
        u = u.numpy()
        q1, q3 = np.quantile(u, [0.25, 0.75])
        lo, hi = q1 - reach * (q3 - q1), q3 + reach * (q3 - q1)
        box = support.forward(torch.tensor([[lo], [hi]], dtype=torch.float64))[:, 0].tolist()
        previous = model.model.region.get(slot.labels[0])
        if previous is not None:
            box = [max(box[0], previous[0]), min(box[1], previous[1])]
        region[slot.labels[0]] = (float(box[0]), float(box[1]))
    return region


def regression_region(
    model: FormulaNPE, seed: int = 0, n_sims: int = 2000, reach: float = 6.0, max_iterations: int = 6
) -> dict[str, tuple[float, float]]:
    """A box around the training data's posterior from linear regression on pooled statistics (no training).

    Each iteration simulates `n_sims` datasets from the prior truncated to the current box, regresses every
    scalar global parameter (positive ones on the log scale, others on the flow's unconstrained scale) on the
    statistics of the data (`MultilevelEstimator.shift_statistics`: pooled moments, between-group fits, the
    profile of the group-level sd, and the spread over groups of per-group fits), and keeps prediction -+ `reach`
    residual sds for the training data (the spread among the quarter of held-out simulations whose prediction is
    nearest), intersected with the current box. It stops when no width shrinks by more than a quarter. The data's
    statistics are clipped to 10 sds of the simulated ones, so a statistic the simulations barely vary cannot
    throw the prediction far out. This is the regression adjustment of approximate Bayesian computation
    (Beaumont et al. 2002) used only to choose where to simulate: the first focusing round then trains inside
    this box, not on a prior that may be hundreds of posterior sds wide. The model's own region is left as it was.

    Returns:
        {scalar name: (low, high)} on the natural scale, or {} when the model has no pooled statistics.
    """
    seed, n_sims = check_seed(seed, none=False), check_int(n_sims, "n_sims", 8)
    reach, max_iterations = check_float(reach, "reach", 0, open_low=True), check_int(max_iterations, "max_iterations")
    estimator = model.npe.estimator
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # an untrained estimator's batch: only its inputs matter
        observed, _ = model.npe.batch(model.grouped_data(model.data)[0], allow_extrapolation=True)
    target = estimator.shift_statistics(observed)
    if target is None:
        return {}
    slots = [i for i, slot in enumerate(model.slots) if slot.kind != "cor"]
    generator = torch.Generator().manual_seed(seed)
    saved = dict(model.model.region)
    region: dict[str, tuple[float, float]] = dict(saved)
    try:
        for _ in range(max_iterations):
            chunks = [model.npe.simulate(min(250, n_sims - k), generator) for k in range(0, n_sims, 250)]
            features = torch.cat([estimator.shift_statistics(c.batch) for c in chunks]).double()
            theta = torch.cat([c.global_params for c in chunks]).double()
            ok = torch.isfinite(features).all(1)
            features, theta = features[ok], theta[ok]
            loc, scale = features.mean(0), features.std(0).clamp_min(1e-8)
            x = torch.cat([torch.ones(len(features), 1, dtype=torch.float64), (features - loc) / scale], 1)
            z_obs = ((target[0].double() - loc) / scale).clamp(-10.0, 10.0)
            x_obs = torch.cat([torch.ones(1, dtype=torch.float64), z_obs])
            half = len(x) // 2
            gram = x[:half].T @ x[:half] + 1e-3 * torch.eye(x.shape[1], dtype=torch.float64)
            shrunk = False
            new_region = dict(region)
            for i in slots:
                slot = model.slots[i]
                support = get_support(slot.support)
                # positive parameters on the log scale, where they are close to linear in log variances
                log_scale = isinstance(support, Positive)
                value = theta[:, model.model.offsets[i], None]
                u = (torch.log(value) if log_scale else support.inverse(value))[:, 0]
                beta = torch.linalg.solve(gram, x[:half].T @ u[:half])
                centre = float(x_obs @ beta)
                predicted = x[half:] @ beta
                # the residual spread of the held-out datasets whose prediction is nearest the data's: the
                # regression is much sharper in some parts of the prior than in others
                near = torch.argsort((predicted - centre).abs())[: max(100, len(predicted) // 4)]
                spread = float((u[half:][near] - predicted[near]).std())
                lo_u, hi_u = centre - reach * spread, centre + reach * spread
                ends = torch.tensor([[lo_u], [hi_u]], dtype=torch.float64)
                box = (torch.exp(ends) if log_scale else support.forward(ends))[:, 0].tolist()
                previous = region.get(slot.labels[0])
                if previous is not None:
                    box = [max(box[0], previous[0]), min(box[1], previous[1])]
                    if box[0] >= box[1]:  # the data's prediction left the box: keep the box
                        box = list(previous)
                old_u = support.inverse(torch.tensor(previous or [np.nan, np.nan], dtype=torch.float64)[:, None])
                old_width = float(old_u[1, 0] - old_u[0, 0]) if previous is not None else np.inf
                new_u = support.inverse(torch.tensor(box, dtype=torch.float64)[:, None])
                if float(new_u[1, 0] - new_u[0, 0]) < 0.75 * old_width:
                    shrunk = True
                new_region[slot.labels[0]] = (float(box[0]), float(box[1]))
            region = model.model.set_region(new_region)
            if not shrunk:
                break
    finally:
        model.model.set_region(saved)
    return region


def _unconstrained(model: FormulaNPE, draws: PosteriorDraws, i: int) -> tuple[Any, torch.Tensor]:
    """Slot i's support and its draws on the flow's unconstrained scale (scalar slots only): (S,)."""
    support = get_support(model.slots[i].support)
    theta = torch.as_tensor(draws.global_draws[:, model.model.offsets[i], None], dtype=torch.float64)
    return support, support.inverse(theta)[:, 0]


def region_edges(model: FormulaNPE, draws: PosteriorDraws, margin: float = 0.05, threshold: float = 0.01) -> list[str]:
    """Global parameters whose draws crowd the edge of the focusing box (more than `threshold` of the draws
    within `margin` of its width from a bound that cuts the prior)."""
    margin = check_float(margin, "margin", 0, 0.5)
    threshold = check_float(threshold, "threshold", 0, 1)
    out = []
    for i, slot in enumerate(model.slots):
        box = model.model.region.get(slot.labels[0])
        if box is None:
            continue
        support, u = _unconstrained(model, draws, i)
        ends = torch.tensor(box, dtype=torch.float64)[:, None]
        if isinstance(support, Positive):  # on the log scale: a wide box's edges are far apart there, as its widths
            u = torch.log(support.forward(u[:, None])[:, 0])
            ulo, uhi = torch.log(ends)[:, 0].tolist()
        else:
            ulo, uhi = support.inverse(ends)[:, 0].tolist()
        width = uhi - ulo
        low, high = slot.prior.support
        crowd = 0.0
        if box[0] > low:
            crowd += float((u < ulo + margin * width).double().mean())
        if box[1] < high:
            crowd += float((u > uhi - margin * width).double().mean())
        if crowd > threshold:
            name = "Intercept (of centred predictors)" if slot.kind == "Intercept" else slot.labels[0]
            out.append(f"{name} ({crowd:.1%} of draws near the edge of [{box[0]:.4g}, {box[1]:.4g}])")
    return out
