"""Fit brms-style formula models with ML-NPE: `FormulaNPE(formula, data, family, prior)`, then `fit(newdata)`.

Example:
    >>> from mlnpe.formula import FormulaNPE, prior
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df, family="gaussian",
    ...                    prior=[prior("normal(0, 1)", "b")])                      # doctest: +SKIP
    >>> model.train(steps=3000)                                                    # doctest: +SKIP
    >>> fit = model.fit()             # brms-named draws, PSIS k-hat and ESS       # doctest: +SKIP
    >>> fit.draws[["b_Intercept", "b_x", "sd_g__Intercept", "sigma"]].describe()   # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..version import __version__
from ..amortizer import MultilevelNPE, read_saved_json
from ..core.data import GroupedData
from ..core.draws import PosteriorDraws
from ..errors import ConfigError, DataError, LoadError, RangeWarning, SpecError
from ..estimator import NetworkConfig
from ..core.constraints import Positive, get_support
from ..train import TrainConfig
from .design import Design, DesignInfo, _brms_rename, build_design
from .families import get_family
from .model import CovariatePool, FormulaModel, GlobalSlot
from .priors import ParamSlot, PriorSpec, default_priors, parse_prior, prior_table, resolve_priors
from .terms import FormulaTerms, parse_formula

__all__ = ["FormulaNPE", "FormulaFit", "check_focus", "default_ranges", "cache_dir", "trained_model"]

_FORMULA_FILE, _POOL_FILE, _AMORTIZER_DIR = "formula.json", "pool.pt", "amortizer"

# Families whose likelihood depends on y only through sum y x (and sum y^2; lognormal: of log y): see
# `NetworkConfig.sufficient` and `log_response`.
_SUFFICIENT = {"gaussian": "gaussian", "lognormal": "gaussian", "poisson": "poisson", "bernoulli": "binomial",
               "binomial": "binomial"}


def default_ranges(n_groups: int, n_rows: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Trained J and N_j ranges from the data: J from about half to 1.5 times the observed J (leave-one-group-out
    and smaller or larger refits stay inside), N_j from 1 to 1.5 times the largest observed group."""
    groups = (max(2, n_groups // 2), max(n_groups + 2, math.ceil(1.5 * n_groups)))
    rows = (1, max(2, math.ceil(1.5 * int(np.max(n_rows)))))
    return groups, rows


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


def _as_prior_specs(prior: Any) -> list[PriorSpec]:
    if prior is None:
        return []
    if isinstance(prior, PriorSpec):
        return [prior]
    if isinstance(prior, dict):
        return [PriorSpec(**prior)]
    if hasattr(prior, "to_dict") and hasattr(prior, "columns"):  # a brmsprior-like data frame
        from .priors import priors_from_table

        return list(priors_from_table(prior))
    out = []
    for p in prior:
        out.extend(_as_prior_specs(p))
    return out


def _features(design: Design, trials: bool) -> tuple[np.ndarray, list[str], list[int], int | None]:
    """Per-row features the networks see beside y: X columns, extra Z columns, trials.

    Returns the feature matrix, its column names, the Z-source index of every Z column (-1 = intercept) and the
    trials column index.
    """
    columns = [design.X[:, k] for k in range(design.X.shape[1])]
    names = list(design.x_names)
    z_source = []
    for m, z in enumerate(design.z_names):
        if z == "Intercept":
            z_source.append(-1)
        elif z in names:
            z_source.append(names.index(z))
        else:
            z_source.append(len(names))
            names.append(z)
            columns.append(design.Z[:, m])
    trials_column = None
    if trials:
        trials_column = len(names)
        names.append("trials")
        columns.append(design.trials.astype(float))
    x = np.stack(columns, 1) if columns else np.zeros((len(design.y), 0))
    return x, names, z_source, trials_column


class FormulaNPE:
    """An amortized posterior of a brms-style multilevel formula model.

    Arguments:
        formula: brms/lme4 formula with one grouping factor, e.g. "y ~ x + (1 + x | g)".
        data: the data (pandas DataFrame or dict of columns): sets default priors, centring, covariates for training.
        family: "gaussian", "bernoulli", "binomial", "poisson", "negbinomial", "lognormal", "Gamma", "student".
        prior: PriorSpec(s) from `prior()`, a brmsprior-like table, or None for the defaults.
        groups: trained (min, max) number of groups; default from the data (see `default_ranges`).
        rows: trained (min, max) rows per group; default from the data.
        network: NetworkConfig or dict of overrides.
        seed: seed of initialization and pilot simulations.
    """

    def __init__(
        self,
        formula: str,
        data: Any,
        family: Any = "gaussian",
        prior: Any = None,
        *,
        groups: tuple[int, int] | None = None,
        rows: tuple[int, int] | None = None,
        network: NetworkConfig | dict[str, Any] | None = None,
        seed: int = 0,
        _state: dict[str, Any] | None = None,
    ):
        self.terms: FormulaTerms = parse_formula(formula)
        if self.terms.group is None:
            raise SpecError(
                f"formula {formula!r} has no group-level term; mlnpe fits multilevel models: add one such as "
                "`(1 | g)`."
            )
        self.family = get_family(family)
        if _state is not None:
            self._restore(_state)
            return
        design = build_design(self.terms, data)
        self.family.check_response(design.y, design.trials, argument=self.terms.response)
        self.info: DesignInfo = design.info
        # brms centres predictors only when the model has an intercept (the Intercept prior is then the
        # intercept of centred predictors); the centring is fixed here, at training time.
        self.x_means = np.asarray(design.x_means, dtype=float) * (1.0 if design.intercept else 0.0)
        self.user_priors = _as_prior_specs(prior)
        self.resolved = self._resolve_priors(design)
        self.slots = self._global_slots()
        x, self.feature_names, self.z_source, self.trials_column = _features(design, design.trials is not None)
        self.pool = CovariatePool.from_rows(x, design.group, len(design.levels))
        self.z_names = tuple(design.z_names)
        default_groups, default_rows = default_ranges(len(design.levels), np.bincount(design.group))
        self.groups = tuple(groups or default_groups)
        self.rows = tuple(rows or default_rows)
        self.network = self._network(network)
        self.seed = seed
        self.model = self._model()
        self.npe = MultilevelNPE(self.model, self.groups, self.rows, self.network, seed=seed)
        self.data = data
        self.rounds: list[dict[str, Any]] = []

    # ---- specification ------------------------------------------------------------------------------------
    def _param_slots(self, design: Design) -> list[ParamSlot]:
        g = self.terms.group
        slots = []
        if design.intercept:
            slots.append(ParamSlot("Intercept", "", "", "Intercept"))
        slots += [ParamSlot("b", x, "", f"b_{_brms_rename(x)}") for x in design.x_names]
        slots += [ParamSlot("sd", z, g, f"sd_{g}__{_brms_rename(z)}") for z in design.z_names]
        if self.terms.correlated and len(design.z_names) > 1:
            slots.append(ParamSlot("cor", "", g, f"cor_{g}"))
        slots += [ParamSlot(name) for name, _ in self.family.aux]
        return slots

    def _resolve_priors(self, design: Design) -> list[tuple[ParamSlot, Any, str]]:
        sd_x = {name: float(np.std(design.X[:, k], ddof=1)) if len(design.y) > 1 else 1.0
                for k, name in enumerate(design.x_names)}
        defaults = default_priors(self.family.name, self.family.link, design.y, sd_x=sd_x, trials=design.trials)
        return resolve_priors(self._param_slots(design), self.user_priors, defaults, sd_x)

    def _global_slots(self) -> list[GlobalSlot]:
        g = self.terms.group
        out = []
        for slot, dist, _ in self.resolved:
            if slot.class_ == "Intercept":
                out.append(GlobalSlot("Intercept", "Intercept", dist, ("Intercept",), "real"))
            elif slot.class_ == "b":
                out.append(GlobalSlot(slot.name, "b", dist, (slot.name,), "real"))
            elif slot.class_ == "sd":
                out.append(GlobalSlot(slot.name, "sd", dist, (slot.name,), "positive"))
            elif slot.class_ == "cor":
                z = self._z_names_from_resolved()
                z = [_brms_rename(name) for name in z]
                labels = tuple(f"cor_{g}__{z[i]}__{z[j]}" for i in range(len(z)) for j in range(i + 1, len(z)))
                out.append(GlobalSlot(slot.name, "cor", dist, labels, f"correlation:{len(z)}"))
            else:
                support = dict(self.family.aux)[slot.class_]
                out.append(GlobalSlot(slot.name, "aux", dist, (slot.name,), support))
        return out

    def _network(self, network: NetworkConfig | dict[str, Any] | None) -> NetworkConfig:
        """The network config.

        Families with a canonical link and finite sufficient statistics (gaussian, poisson, bernoulli, binomial)
        get a local summary of those statistics (`NetworkConfig.sufficient`): the amortized posterior then depends
        on the data only as the exact one does. Other families get the deep set, with counts and positive
        responses on a log scale. Trials reach the networks on a log scale. The shift keeps one residual scale
        per parameter and the profile's plain features (`heteroscedastic_shift` and `profile_average` off unless
        given): against Stan they were mixed on formula models (BENCHMARKS.md section 3, session 10).
        """
        config = network.to_dict() if isinstance(network, NetworkConfig) else dict(network or {})
        for key in ("heteroscedastic_shift", "profile_average"):
            config.setdefault(key, False)
        trials = [] if self.trials_column is None else [1 + self.trials_column]
        if "sufficient" not in config:
            config["sufficient"] = _SUFFICIENT.get(self.family.name, "none")
            if config["sufficient"] != "none" and "design_only" not in config:
                config["design_only"] = tuple(trials)
            if self.family.name == "lognormal" and "log_response" not in config:
                config["log_response"] = True  # log y is gaussian: its sufficient statistics
        if "log_inputs" not in config:
            logged = [] if config["sufficient"] != "none" else (
                [0] if self.family.link == "log" or self.family.name in ("binomial",) else []
            )
            config["log_inputs"] = tuple(logged + trials)
        return NetworkConfig.from_dict(config)

    def _z_names_from_resolved(self) -> list[str]:
        return [s.coef for s, _, _ in self.resolved if s.class_ == "sd"]

    def _model(self) -> FormulaModel:
        return FormulaModel(
            self.slots, self.z_names, self.z_source, self.family.name, self.x_means, len(self.x_means),
            self.feature_names, self.trials_column, self.pool, self.terms.response,
        )

    def prior_summary(self) -> Any:
        """The priors in force, as a brms-like table (prior, class, coef, group, lb, ub, source)."""
        return prior_table(self.resolved)

    # ---- training ---------------------------------------------------------------------------------------------
    def train(self, config: TrainConfig | None = None, *, focus: int = 0, **overrides: Any):
        """Trains the amortizer on simulations (see MultilevelNPE.train).

        Arguments:
            config: training settings; keyword overrides replace single fields (e.g. `steps=500`).
            focus: number of focusing rounds. 0 (the default) trains (or continues training) one amortizer over
                the whole prior: right for simulation studies and for data of any scale. With focus = k >= 1,
                training restarts and runs k + 1 rounds on the same total budget (steps and time limit): the
                first k rounds share 40 % of it, the last round 60 %. After each round, the posterior of the
                training data sets a box around every scalar global parameter (quartiles -+ 4 interquartile
                ranges on the flow's unconstrained scale; `posterior_region`), and the next round simulates
                from the prior truncated to that box (correlations stay unrestricted), with freshly initialized
                and standardized networks. The amortizer then stays amortized over datasets like the training
                data (refits of new data of the same design, leave-one-group-out) and is much more accurate for
                them, because the simulations concentrate where their posteriors are (Deistler et al. 2022,
                truncated proposals). `fit()` warns when a dataset's posterior reaches the edge of the box.
        Returns:
            the training history of the last round.
        """
        config = config or TrainConfig()
        if overrides:
            config = TrainConfig.from_dict({**config.to_dict(), **overrides})
        focus = check_focus(focus)
        if focus == 0:
            history = self.npe.train(config)
            self._note_round(history, continued=True)
            return history
        if self.data is None:
            raise DataError("`focus` needs the training data: load the model with `data=` or train with focus=0.")
        self.model.set_region(None)
        self.rounds = []
        region = self.regression_region(seed=config.seed + 999)
        if region:
            self.model.set_region(region)
            self.npe = MultilevelNPE(self.model, self.groups, self.rows, self.network, seed=self.seed)
        for k in range(focus + 1):
            fraction = 0.6 if k == focus else 0.4 / focus
            budget = {"steps": max(1, int(round(config.steps * fraction))), "seed": config.seed + k}
            if config.time_limit is not None:
                budget["time_limit"] = config.time_limit * fraction
            if k > 0:
                region = self.posterior_region(seed=config.seed + 1000 + k)
                self.model.set_region(region)
                self.npe = MultilevelNPE(self.model, self.groups, self.rows, self.network, seed=self.seed + k)
            history = self.npe.train(TrainConfig.from_dict({**config.to_dict(), **budget}))
            self._note_round(history, continued=False)
        return history

    def _note_round(self, history: Any, continued: bool) -> None:
        entry = {"region": {k: list(v) for k, v in self.model.region.items()},
                 "train_seconds": float(history.train_seconds), "datasets": int(history.datasets_seen)}
        if continued and self.rounds:
            self.rounds[-1] = entry  # the history of the last round goes on
        else:
            self.rounds.append(entry)

    @property
    def train_seconds(self) -> float:
        """Training time of all rounds."""
        return float(sum(r["train_seconds"] for r in self.rounds))

    @property
    def region(self) -> dict[str, tuple[float, float]]:
        """The box the global parameters were simulated in by the last training round ({} without focusing)."""
        return dict(self.model.region)

    def posterior_region(
        self, data: Any = None, n_draws: int = 8000, seed: int | None = 0, reach: float = 4.0
    ) -> dict[str, tuple[float, float]]:
        """A box around the current posterior of `data` (default: the training data), for focusing.

        Every scalar global parameter except correlations gets, on the flow's unconstrained scale, the box from
        its lower posterior quartile minus `reach` interquartile ranges to its upper quartile plus `reach` IQRs
        (for a normal posterior: mean +- 6.1 sd), mapped back to the natural scale and intersected with the
        current region. Quartiles are robust to the stray far-tail draws of an undertrained flow.
        """
        data = self.data if data is None else data
        grouped, _ = self.grouped_data(data)
        draws = self.npe.sample(grouped, n_draws, seed=seed, allow_extrapolation=True)
        region = {}
        for i, slot in enumerate(self.slots):
            if slot.kind == "cor":
                continue
            support, u = self._unconstrained(draws, i)
            u = u.numpy()
            q1, q3 = np.quantile(u, [0.25, 0.75])
            lo, hi = q1 - reach * (q3 - q1), q3 + reach * (q3 - q1)
            box = support.forward(torch.tensor([[lo], [hi]], dtype=torch.float64))[:, 0].tolist()
            previous = self.model.region.get(slot.labels[0])
            if previous is not None:
                box = [max(box[0], previous[0]), min(box[1], previous[1])]
            region[slot.labels[0]] = (float(box[0]), float(box[1]))
        return region

    def regression_region(
        self, seed: int = 0, n_sims: int = 2000, reach: float = 6.0, max_iterations: int = 6
    ) -> dict[str, tuple[float, float]]:
        """A box around the training data's posterior from linear regression on pooled statistics (no training).

        Each iteration simulates `n_sims` datasets from the prior truncated to the current box, regresses every
        scalar global parameter (positive ones on the log scale, others on the flow's unconstrained scale) on the
        statistics of the data (`MultilevelEstimator.shift_statistics`: pooled moments, between-group fits, the
        profile of the group-level sd, and the spread over groups of per-group fits), and keeps prediction -+ `reach` residual sds for the training data (the spread among the quarter of
        held-out simulations whose prediction is nearest), intersected with the current box. It stops when no
        width shrinks by more than a quarter. The data's statistics are clipped to 10 sds of the simulated ones, so
        a statistic the simulations barely vary cannot throw the prediction far out. This is the regression
        adjustment of approximate Bayesian computation (Beaumont et al. 2002) used only to choose where to
        simulate: the first focusing round then trains inside this box, not on a prior that may be hundreds of
        posterior sds wide.

        Returns:
            {scalar name: (low, high)} on the natural scale, or {} when the model has no pooled statistics.
        """
        estimator = self.npe.estimator
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # an untrained estimator's batch: only its inputs matter
            observed, _ = self.npe._batch(self.grouped_data(self.data)[0], allow_extrapolation=True)
        target = estimator.shift_statistics(observed)
        if target is None:
            return {}
        slots = [i for i, slot in enumerate(self.slots) if slot.kind != "cor"]
        generator = torch.Generator().manual_seed(seed)
        saved = dict(self.model.region)
        region: dict[str, tuple[float, float]] = dict(saved)
        try:
            for _ in range(max_iterations):
                chunks = [self.npe.simulate(min(250, n_sims - k), generator) for k in range(0, n_sims, 250)]
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
                    slot = self.slots[i]
                    support = get_support(slot.support)
                    # positive parameters on the log scale, where they are close to linear in log variances
                    log_scale = isinstance(support, Positive)
                    value = theta[:, self.model._offsets[i], None]
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
                region = self.model.set_region(new_region)
                if not shrunk:
                    break
        finally:
            self.model.set_region(saved)
        return region

    def _unconstrained(self, draws: PosteriorDraws, i: int) -> tuple[Any, torch.Tensor]:
        """Slot i's support and its draws on the flow's unconstrained scale (scalar slots only): (S,)."""
        support = get_support(self.slots[i].support)
        theta = torch.as_tensor(draws.global_draws[:, self.model._offsets[i], None], dtype=torch.float64)
        return support, support.inverse(theta)[:, 0]

    def region_edges(self, draws: PosteriorDraws, margin: float = 0.05, threshold: float = 0.01) -> list[str]:
        """Global parameters whose draws crowd the edge of the focusing box (more than `threshold` of the draws
        within `margin` of its width from a bound that cuts the prior)."""
        out = []
        for i, slot in enumerate(self.slots):
            box = self.model.region.get(slot.labels[0])
            if box is None:
                continue
            support, u = self._unconstrained(draws, i)
            ulo, uhi = support.inverse(torch.tensor(box, dtype=torch.float64)[:, None])[:, 0].tolist()
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

    # ---- fitting ----------------------------------------------------------------------------------------------
    def grouped_data(self, data: Any) -> tuple[GroupedData, Design]:
        """Builds the network input of a dataset with the stored design information (factor levels, columns)."""
        design = build_design(self.terms, data, reference=self.info)
        self.family.check_response(design.y, design.trials, argument=self.terms.response)
        x, _, _, _ = _features(design, design.trials is not None)
        ys = [design.y[design.group == j][:, None] for j in range(len(design.levels))]
        xs = [x[design.group == j] for j in range(len(design.levels))]
        return GroupedData.from_groups(ys, xs, list(design.levels)), design

    def fit(
        self,
        newdata: Any = None,
        n_draws: int = 4000,
        seed: int | None = None,
        psis: bool = True,
        allow_extrapolation: bool = False,
        refine: bool | str = "auto",
        refine_config: Any = None,
    ) -> "FormulaFit":
        """Posterior draws for a dataset (the training data when `newdata` is None), brms-named.

        With `psis=True` (and at least 10 draws) the draws are reweighted by the exact joint density: the
        Pareto k-hat and the importance-sampling ESS come with the fit.

        `refine` replaces the amortized draws by HMC draws of the exact posterior, run in the amortized
        posterior's base space (mlnpe.inference.refine: neural transport; seconds to a minute instead of milliseconds,
        diagnosed by R-hat, bulk ESS and divergences like Stan's): True always, "auto" (the default) exactly
        when PSIS finds the amortized draws unreliable (k-hat above 0.7) or its weights leave too few effective
        draws for stable summaries (ESS below 10 % of the draws), False never (a k-hat above 0.7
        then warns). `refine_config` is a RefineConfig (chains, warm-up, ...); its seed defaults to `seed`.
        """
        from ..inference.refine import RefineConfig

        if not (refine == "auto" or isinstance(refine, bool)):
            raise ConfigError(f"`refine` must be True, False or \"auto\", got {refine!r}.")
        if refine_config is not None and not isinstance(refine_config, RefineConfig):
            raise ConfigError(f"`refine_config` must be a mlnpe.inference.refine.RefineConfig, got {type(refine_config).__name__}.")
        data = self.data if newdata is None else newdata
        if data is None:
            raise DataError("`newdata` is required: this model was loaded without its training data.")
        grouped, design = self.grouped_data(data)
        t = time.perf_counter()
        draws = self.npe.sample(grouped, n_draws, seed=seed, allow_extrapolation=allow_extrapolation)
        seconds = time.perf_counter() - t
        edges = self.region_edges(draws)
        result = None
        if psis and draws.n_draws >= 10:  # PSIS needs a tail to fit; fewer draws come without a certificate
            result = self._psis(draws, grouped, warn=refine is False)
        refinement = None
        if refine is True or (refine == "auto" and _psis_unreliable(result, draws.n_draws)):
            try:
                refinement, draws = self._refine(grouped, draws, n_draws, refine_config, seed)
            except DataError as error:  # no starting points: "auto" keeps the amortized draws and says why
                if refine is True:
                    raise
                from ..inference.refine import RefineWarning

                warnings.warn(
                    f"the amortized draws are unreliable for this dataset (Pareto k-hat {result.pareto_k:.2f}, PSIS ESS "
                    f"{result.ess:.0f}) "
                    f"and could not be refined: {error} These are the amortized draws.", RefineWarning, stacklevel=2,
                )
        if edges and refinement is None:  # refined draws follow the exact posterior under the full prior
            warnings.warn(
                "the posterior of this dataset reaches the edge of the region the amortizer was focused on: "
                + "; ".join(edges) + ". Its draws may be cut off there. Refine them (refine=True), train on this "
                "dataset (mlnpe() / FormulaNPE(..., data=this dataset).train(focus=1)) or train with focus=0 "
                "(amortized over the whole prior).", RangeWarning, stacklevel=2,
            )
        return FormulaFit(self, draws, design, result, seconds, refinement=refinement)

    def sbc(self, n_datasets: int = 200, n_draws: int = 250, seed: int = 0, prob: float = 0.99) -> Any:
        """Simulation-based calibration of the amortizer in brms's names (`mlnpe.inference.sbc.sbc`).

        Datasets are simulated as in training: designs resampled from the training data's covariates, J and N_j
        over the trained ranges, globals from the prior (from the last focusing round's truncated prior after
        `train(focus=k)`, which is what that amortizer learned). Globals are checked as brms reports them (the
        uncentred b_Intercept included), group effects as r_<g>[,coef].

        Returns:
            An `mlnpe.inference.sbc.SBCResult` (`table()`, `passed`, `plot_ecdf()`, `plot_recovery()`).
        """
        from ..inference.sbc import sbc

        global_names, _ = brms_globals(self, np.zeros((1, len(self.npe.global_names))))
        return sbc(self.npe, n_datasets, n_draws, seed, prob, transform=lambda g, l: (brms_globals(self, g)[1], l),
                   names=(global_names, brms_local_names(self)))  # fmt: skip

    def _refine(
        self, grouped: GroupedData, draws: PosteriorDraws, n_draws: int, config: Any, seed: int | None
    ) -> tuple[Any, PosteriorDraws]:
        """HMC draws of the exact posterior through the amortized posterior's map (mlnpe.inference.refine)."""
        from ..inference.refine import RefineConfig, RefineWarning, refine

        if config is None:
            config = RefineConfig(seed=seed)
        result = refine(
            self.npe.estimator, self.model, grouped, n_draws, config, labels=(self.npe.global_names, self.npe.local_names)
        )
        problems = result.problems()
        if problems:
            warnings.warn(
                "the HMC refinement of the amortized draws did not converge cleanly: " + "; ".join(problems) + ". "
                "Its draws may still be closer to the exact posterior than the amortized ones, but check them: "
                "run it longer (RefineConfig(warmup=..., chains=...); in R `refine_control`), or train the "
                "amortizer longer or focused on these data (focus=1 or 2) so that it starts closer.",
                RefineWarning, stacklevel=3,
            )
        refined = PosteriorDraws(
            result.global_draws[:n_draws], result.local_draws[:n_draws], draws.global_names, draws.local_names,
            draws.levels, None,
        )
        return result, refined

    def log_joint(self, draws: PosteriorDraws, data: GroupedData) -> np.ndarray:
        """log p(theta, y) of every draw: (draws,)."""
        batch = data.to_batch()
        g = torch.as_tensor(draws.global_draws, dtype=torch.float32)[:, None]
        l = torch.as_tensor(draws.local_draws, dtype=torch.float32)[:, None]
        with torch.no_grad():
            lp = (
                self.model.log_prior_global(g).double()
                + self.model.log_prior_local(l, g).double().sum(-1)
                + self.model.log_likelihood(batch, g, l).double().sum(-1)
            )
        return lp[:, 0].numpy()

    def _psis(self, draws: PosteriorDraws, data: GroupedData, warn: bool = True):
        from ..inference.psis import psis

        log_ratio = self.log_joint(draws, data) - draws.log_q
        return psis(log_ratio, warn=warn)

    # ---- save / load ------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {
            "mlnpe_version": __version__,
            "formula": self.terms.formula,
            "family": self.family.name,
            "priors": [
                {"class": s.class_, "coef": s.coef, "group": s.group, "name": s.name, "lb": s.lb,
                 "prior": str(d), "dist": d.to_dict() if hasattr(d, "to_dict") else str(d), "source": src}
                for s, d, src in self.resolved
            ],
            "user_priors": [{"prior": p.prior, "class_": p.class_, "coef": p.coef, "group": p.group,
                             "lb": p.lb, "ub": p.ub} for p in self.user_priors],
            "design_info": self.info.to_dict(),
            "x_means": self.x_means.tolist(),
            "feature_names": list(self.feature_names),
            "z_names": list(self.z_names),
            "z_source": list(self.z_source),
            "trials_column": self.trials_column,
            "groups": list(self.groups),
            "rows": list(self.rows),
            "network": self.network.to_dict(),
            "seed": self.seed,
            "region": {k: list(v) for k, v in self.model.region.items()},
            "rounds": self.rounds,
        }

    def spec_hash(self, config: TrainConfig | None = None, focus: int = 0) -> str:
        """A key of everything that determines the trained amortizer (for the on-disk cache)."""
        payload = self.config_dict()
        del payload["region"], payload["rounds"]  # results of training, not part of the specification
        payload["focus"] = int(focus)
        payload["pool"] = hashlib.sha256(self.pool.x.numpy().tobytes() + self.pool.n.numpy().tobytes()).hexdigest()
        payload["train"] = (config or TrainConfig()).to_dict()
        payload["train"].pop("progress", None)
        payload["train"].pop("num_threads", None)
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def save(self, path: str | os.PathLike) -> Path:
        """Saves to a directory: formula.json, pool.pt (tensors) and the amortizer (config.json, weights.pt)."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / _FORMULA_FILE).write_text(json.dumps(self.config_dict(), indent=1))
        torch.save({"x": self.pool.x, "n": self.pool.n}, path / _POOL_FILE)
        self.npe.save(path / _AMORTIZER_DIR)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, data: Any = None) -> "FormulaNPE":
        """Loads a saved formula model (no pickle). `data` optionally re-attaches the training data."""
        path = Path(path)
        config = read_saved_json(path, _FORMULA_FILE)
        try:
            pool = torch.load(path / _POOL_FILE, weights_only=True)
            state = dict(config, pool=CovariatePool(pool["x"], pool["n"]), data=data)
            obj = cls(config["formula"], None, config["family"], _state=state)
        except FileNotFoundError:
            raise LoadError(f"no {_POOL_FILE} in {str(path)!r}; the save is incomplete.") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise LoadError(f"{str(path)!r} holds an inconsistent formula model ({type(e).__name__}: {e}).") from None
        obj.npe = MultilevelNPE.load(path / _AMORTIZER_DIR, model=obj.model)
        return obj

    def _restore(self, state: dict[str, Any]) -> None:
        self.info = DesignInfo.from_dict(state["design_info"])
        self.x_means = np.asarray(state["x_means"], dtype=float)
        self.user_priors = [PriorSpec(**p) for p in state["user_priors"]]
        self.resolved = [
            (ParamSlot(p["class"], p["coef"], p["group"], p["name"], p["lb"]), _dist_from(p), p["source"])
            for p in state["priors"]
        ]
        self.slots = self._global_slots()
        self.feature_names = list(state["feature_names"])
        self.z_names = tuple(state["z_names"])
        self.z_source = list(state["z_source"])
        self.trials_column = state["trials_column"]
        self.pool = state["pool"]
        self.groups, self.rows = tuple(state["groups"]), tuple(state["rows"])
        self.network = NetworkConfig.from_saved(state["network"])
        self.seed = int(state["seed"])
        self.model = self._model()
        self.model.set_region(state.get("region"))
        self.rounds = list(state.get("rounds", []))
        self.data = state.get("data")


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
    default, as in R's `mlnpe()`: this entry point fits the user's data). The first call trains and stores it.

    Returns:
        (model, from_cache).
    """
    config = train if isinstance(train, TrainConfig) else TrainConfig.from_dict(dict(train or {}))
    model = FormulaNPE(formula, data, family, prior, **kwargs)
    if cache is False:
        model.train(config, focus=focus)
        return model, False
    root = cache_dir() if cache is True else Path(cache)
    path = root / model.spec_hash(config, focus)
    if (path / _FORMULA_FILE).exists():
        try:
            return FormulaNPE.load(path, data=data), True
        except LoadError:
            pass  # a corrupt cache entry is retrained and overwritten
    model.train(config, focus=focus)
    model.save(path)
    return model, False


def _dist_from(p: dict[str, Any]) -> Any:
    from .priors import PriorDist

    d = p.get("dist")
    if isinstance(d, dict) and hasattr(PriorDist, "from_dict"):
        return PriorDist.from_dict(d)
    dist = parse_prior(p["prior"])
    return dist


@dataclass
class FormulaFit:
    """Posterior draws of one dataset, named as brms names them, with the PSIS certificate.

    Attributes:
        model: the FormulaNPE that produced it.
        raw: the structured draws (globals on the centred-intercept scale, group-level effects).
        design: the dataset's design.
        psis: the PsisResult (k-hat, ESS, smoothed weights) of the amortized draws, or None.
        seconds: time taken by sampling (the refinement's time is in `refinement.seconds`).
        refinement: the mlnpe.inference.refine.RefineResult when the draws were refined by HMC (then `raw` holds the
            refined draws, and the PSIS result describes the amortized draws they replaced), else None.
    """

    model: FormulaNPE
    raw: PosteriorDraws
    design: Design
    psis: Any = None
    seconds: float = 0.0
    refinement: Any = None
    _draws: Any = field(default=None, repr=False)

    @property
    def draws(self) -> Any:
        """A pandas DataFrame of draws with brms's variable names, in brms's order."""
        if self._draws is None:
            self._draws = brms_draws(self.model, self.raw, self.design)
        return self._draws

    @property
    def pareto_k(self) -> float | None:
        return None if self.psis is None else float(self.psis.pareto_k)

    @property
    def ess(self) -> float | None:
        return None if self.psis is None else float(self.psis.ess)

    def resampled(self, n: int | None = None, seed: int | None = None) -> Any:
        """Draws resampled by their PSIS weights (importance resampling), as a brms-named DataFrame."""
        if self.refinement is not None:
            raise ConfigError(
                "this fit's draws were refined by HMC: they are exact-posterior draws already, and the PSIS weights "
                "belong to the amortized draws they replaced; use `draws` (or fit with `refine=False`)."
            )
        if self.psis is None:
            raise ConfigError("this fit has no PSIS weights; fit with `psis=True`.")
        idx = self.psis.resample(n, rng=np.random.default_rng(seed))
        return self.draws.iloc[idx].reset_index(drop=True)

    # ---- predictions (all numerics here, so R never re-implements them) ------------------------------------
    def _components(self, ndraws: int | None, seed: int | None) -> tuple[np.ndarray, ...]:
        """Draw-wise (centred intercept (S,), b (S, K), r (S, J, M), aux (S, A)), optionally subsampled."""
        g = torch.as_tensor(self.raw.global_draws, dtype=torch.float64)
        idx = np.arange(self.raw.n_draws)
        if ndraws is not None and ndraws < len(idx):
            idx = np.sort(np.random.default_rng(seed).choice(len(idx), int(ndraws), replace=False))
        g = g[idx]
        m = self.model.model
        return (m.intercept(g).numpy(), m.coefficients(g).numpy(), self.raw.local_draws[idx], m.aux(g).numpy(), idx)

    def _design_for(self, newdata: Any) -> Design:
        if newdata is None:
            return self.design
        from .design import build_design

        design = build_design(self.model.terms, newdata, reference=self.model.info, min_groups=1)
        unknown = sorted(set(design.levels) - set(self.design.levels))
        if unknown:
            raise DataError(
                f"`newdata` has levels {unknown[:5]} of {self.model.terms.group!r} that this fit has no group-level "
                "effects for; fit the new data with `model.fit(newdata)` instead."
            )
        return design

    def linear_predictor(self, newdata: Any = None, ndraws: int | None = None, seed: int | None = None) -> np.ndarray:
        """eta (draws, rows) on the link scale, rows in the order of the data."""
        design = self._design_for(newdata)
        intercept, b, r, _, _ = self._components(ndraws, seed)
        eta = np.repeat(intercept[:, None], len(design.y), 1)
        if b.shape[1]:
            eta = eta + b @ (design.X - self.model.x_means).T
        codes = np.array([self.design.levels.index(level) for level in design.levels])[design.group]
        eta = eta + np.einsum("nm,snm->sn", design.Z, r[:, codes, :])
        return eta

    def posterior_epred(self, newdata: Any = None, ndraws: int | None = None, seed: int | None = None) -> np.ndarray:
        """Expected response (draws, rows): inverse link of eta (times trials for binomial, as brms)."""
        design = self._design_for(newdata)
        eta = torch.as_tensor(self.linear_predictor(newdata, ndraws, seed))
        mu = self.model.family.inverse_link(eta).numpy()
        return mu * design.trials if design.trials is not None else mu

    def posterior_predict(self, newdata: Any = None, ndraws: int | None = None, seed: int | None = None) -> np.ndarray:
        """Posterior predictive draws (draws, rows)."""
        design = self._design_for(newdata)
        _, _, _, aux, _ = self._components(ndraws, seed)
        eta = torch.as_tensor(self.linear_predictor(newdata, ndraws, seed), dtype=torch.float32)[:, None, :]
        trials = None if design.trials is None else torch.as_tensor(design.trials, dtype=torch.float32).expand_as(eta)
        gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
        y = self.model.family.simulate(eta, torch.as_tensor(aux, dtype=torch.float32), trials, gen)
        return y[:, 0].double().numpy()

    def log_lik(self, newdata: Any = None, ndraws: int | None = None, seed: int | None = None) -> np.ndarray:
        """Pointwise log-likelihood (draws, rows), as brms's log_lik (for loo)."""
        design = self._design_for(newdata)
        _, _, _, aux, _ = self._components(ndraws, seed)
        eta = torch.as_tensor(self.linear_predictor(newdata, ndraws, seed))[:, None, :]
        y = torch.tensor(design.y, dtype=torch.float64).expand_as(eta)
        trials = None if design.trials is None else torch.as_tensor(design.trials, dtype=torch.float64).expand_as(eta)
        return self.model.family.log_lik(y, eta, torch.as_tensor(aux), trials)[:, 0].numpy()

    def summary(self, probs: Sequence[float] = (0.025, 0.975)) -> Any:
        """Estimate (mean), Est.Error (sd) and quantiles per variable, brms style."""
        import pandas as pd

        d = self.draws
        table = {"Estimate": d.mean(0), "Est.Error": d.std(0, ddof=1)}
        for p in probs:
            table[f"Q{100 * p:g}"] = d.quantile(p)
        return pd.DataFrame(table)


_KHAT_REFINE = 0.7  # refine="auto" refines above this k-hat (PSIS's "bad" threshold)
_ESS_REFINE = 0.1  # ... or when the PSIS weights' ESS is below this share of the draws


def _psis_unreliable(result: Any, n_draws: int) -> bool:
    """refine="auto": PSIS rejects the amortized draws (k-hat > 0.7) or leaves too few effective draws.

    Resampling 4000 draws by weights whose ESS is 76 (sleepstudy at k-hat 0.67) repeats few draws many times:
    the Monte Carlo error of a mean is then about 0.1 posterior sds, of an sd more than 0.05."""
    if result is None:
        return False
    return bool(result.pareto_k > _KHAT_REFINE or result.ess < _ESS_REFINE * n_draws)


def brms_names_and_values(model: FormulaNPE, raw: PosteriorDraws, levels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Columns in brms order: b_Intercept, b_*, sd_*, cor_*, family parameters, r_<g>[level,coef]."""
    g = model.terms.group
    names, cols = brms_globals(model, raw.global_draws)
    cols = list(np.moveaxis(cols, -1, 0))
    for m, z in enumerate(model.z_names):
        for j, level in enumerate(levels):
            names.append(f"r_{g}[{str(level).replace(' ', '.')},{_brms_rename(z)}]")
            cols.append(raw.local_draws[:, j, m])
    return names, np.stack(cols, 1)


def brms_local_names(model: FormulaNPE) -> list[str]:
    """The group effects' names with the level left out, `r_<g>[,coef]` (one per coefficient)."""
    return [f"r_{model.terms.group}[,{_brms_rename(z)}]" for z in model.z_names]


def brms_globals(model: FormulaNPE, gd: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The global parameters (..., G) in brms's names and order (b_Intercept uncentred, b_*, sd_*, cor_*, family
    parameters): (names, values (..., P))."""
    cols, names = [], []
    offset = 0
    by_kind: dict[str, list[tuple[str, np.ndarray]]] = {"b": [], "sd": [], "cor": [], "aux": []}
    intercept = None
    for slot in model.slots:
        width = len(slot.labels)
        block = gd[..., offset : offset + width]
        offset += width
        if slot.kind == "Intercept":
            intercept = block[..., 0]
        elif slot.kind == "cor":
            pairs = [(i, j) for i in range(len(model.z_names)) for j in range(i + 1, len(model.z_names))]
            # brms orders correlations column-major over the upper triangle: (1,2), (1,3), (2,3), (1,4), ...
            order = sorted(range(len(pairs)), key=lambda p: (pairs[p][1], pairs[p][0]))
            by_kind["cor"] += [(slot.labels[p], block[..., p]) for p in order]
        else:
            by_kind[slot.kind] += [(slot.labels[0], block[..., 0])]
    b = np.stack([v for _, v in by_kind["b"]], -1) if by_kind["b"] else np.zeros((*gd.shape[:-1], 0))
    if intercept is not None:
        names.append("b_Intercept")
        cols.append(intercept - b @ model.x_means if b.shape[-1] else intercept)
    for kind in ("b", "sd", "cor", "aux"):
        for name, v in by_kind[kind]:
            names.append(name)
            cols.append(v)
    return names, np.stack(cols, -1)


def brms_draws(model: FormulaNPE, raw: PosteriorDraws, design: Design) -> Any:
    import pandas as pd

    names, values = brms_names_and_values(model, raw, design.levels)
    return pd.DataFrame(values, columns=names)
