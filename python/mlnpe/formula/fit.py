"""Posterior draws of one dataset under a formula model, and the predictions brms makes from them.

* :func:`design_features`: the per-row features the networks see beside y (X columns, extra Z columns, trials,
  offset), and where the model finds its columns among them.
* :func:`fit_dataset`: amortized draws of a dataset, certified by PSIS and refined by HMC where PSIS finds them
  unreliable (`mlnpe.inference.policy.psis_unreliable`); what `FormulaNPE.fit` runs.
* :class:`FormulaFit`: the draws in brms's names, with brms's verbs `linear_predictor`, `posterior_epred`,
  `posterior_predict`, `log_lik`, `summary` and importance resampling (`resampled`). All the numerics of the
  predictions are here, so R never re-implements them.

Shapes: draws (S, ...) first; predictions are (draws, rows) with rows in the order of the data.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Sequence

import numpy as np
import torch

from ..core.data import GroupedData
from ..core.draws import PosteriorDraws
from ..checks import check_choice, check_flag, check_float, check_int, check_seed
from ..errors import ConfigError, DataError, NumericalError, RangeWarning
from ..memory import check_memory
from ..inference.policy import psis_unreliable
from .design import Design, build_design
from .focus import region_edges
from .names import brms_draws
from .terms import INTERCEPT

if TYPE_CHECKING:
    from .api import FormulaNPE

__all__ = [
    "DesignFeatures",
    "FormulaFit",
    "design_features",
    "fit_dataset",
    "log_joint",
    "prediction_frame",
    "with_new_levels",
]


class DesignFeatures(NamedTuple):
    """The per-row features the networks see beside y, and where the model finds its columns among them.

    Attributes:
        x: (rows, d_x) the features: the columns of X (but the ones of `0 + Intercept`), the columns of Z that are
            not in X, the trials, the offset.
        names: (d_x,) their names.
        x_source: (K,) for each column of X the feature it is, -1 for the column of ones of `0 + Intercept`.
        z_source: (M,) for each column of Z the feature it is, -1 for the varying intercept.
        trials_column: the trials feature, or None.
        offset_column: the offset feature, or None.
        crossed: per crossed grouping factor, its effects' feature columns z_m * [level == k], level-major (the
            last features).
    """

    x: np.ndarray
    names: list[str]
    x_source: list[int]
    z_source: list[int]
    trials_column: int | None
    offset_column: int | None
    crossed: tuple[tuple[int, ...], ...] = ()


def design_features(design: Design, trials: bool) -> DesignFeatures:
    """The per-row features the networks see beside y (see :class:`DesignFeatures`). A column of ones tells the
    networks nothing, so the intercept of `0 + Intercept` is no feature."""
    ones = design.info.terms.intercept_coef  # then the column Intercept of X is brms's column of ones
    columns, names, x_source = [], [], []
    for k, name in enumerate(design.x_names):
        if ones and name == INTERCEPT:
            x_source.append(-1)
            continue
        x_source.append(len(names))
        names.append(name)
        columns.append(design.X[:, k])
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
    trials_column = offset_column = None
    if trials:
        trials_column = len(names)
        names.append("trials")
        columns.append(design.trials.astype(float))
    if design.offset is not None:
        offset_column = len(names)
        names.append(" + ".join(str(offset) for offset in design.info.terms.offsets))
        columns.append(design.offset)
    crossed = []
    for factor in design.crossed:
        first = len(names)
        for k, level in enumerate(factor.levels):
            here = factor.codes == k
            for m, z in enumerate(factor.z_names):
                names.append(f"{factor.group}[{level},{z}]")
                columns.append(factor.Z[:, m] * here)
        crossed.append(tuple(range(first, len(names))))
    x = np.stack(columns, 1) if columns else np.zeros((len(design.y), 0))
    return DesignFeatures(x, names, x_source, z_source, trials_column, offset_column, tuple(crossed))


def fit_dataset(
    model: FormulaNPE,
    newdata: Any = None,
    n_draws: int = 4000,
    seed: int | None = None,
    psis: bool = True,
    allow_extrapolation: bool = False,
    refine: bool | str = "auto",
    refine_config: Any = None,
) -> FormulaFit:
    """Posterior draws for a dataset (the training data when `newdata` is None): see `FormulaNPE.fit`.

    Warnings point at the caller of `FormulaNPE.fit`.
    """
    from ..inference.refine import RefineConfig

    n_draws, seed = check_int(n_draws, "n_draws"), check_seed(seed)
    psis, allow_extrapolation = check_flag(psis, "psis"), check_flag(allow_extrapolation, "allow_extrapolation")
    refine = check_choice(refine, "refine", (True, False, "auto"))
    if refine_config is not None and not isinstance(refine_config, RefineConfig):
        raise ConfigError(f"`refine_config` must be a mlnpe.inference.refine.RefineConfig, got {type(refine_config).__name__}.")
    data = model.data if newdata is None else newdata
    if data is None:
        raise DataError("`newdata` is required: this model was loaded without its training data.")
    grouped, design = model.grouped_data(data)
    _check_fit_memory(model, grouped, n_draws, psis)
    t = time.perf_counter()
    draws = model.npe.sample(grouped, n_draws, seed=seed, allow_extrapolation=allow_extrapolation)
    seconds = time.perf_counter() - t
    edges = region_edges(model, draws)
    result = None
    if psis and draws.n_draws >= 10:  # PSIS needs a tail to fit; fewer draws come without a certificate
        result = _psis(model, draws, grouped, warn=refine is False)
    refinement = None
    if refine is True or (refine == "auto" and psis_unreliable(result, draws.n_draws)):
        try:
            refinement, draws = _refine(model, grouped, draws, n_draws, refine_config, seed)
        except DataError as error:  # no starting points: "auto" keeps the amortized draws and says why
            if refine is True:
                raise
            from ..inference.refine import RefineWarning

            warnings.warn(
                f"the amortized draws are unreliable for this dataset (Pareto k-hat {result.pareto_k:.2f}, PSIS ESS "
                f"{result.ess:.0f}) "
                f"and could not be refined: {error} These are the amortized draws.", RefineWarning, stacklevel=3,
            )
    if edges and refinement is None:  # refined draws follow the exact posterior under the full prior
        warnings.warn(
            "the posterior of this dataset reaches the edge of the region the amortizer was focused on: "
            + "; ".join(edges) + ". Its draws may be cut off there. Refine them (refine=True), train on this "
            "dataset (mlnpe() / FormulaNPE(..., data=this dataset).train(focus=1)) or train with focus=0 "
            "(amortized over the whole prior).", RangeWarning, stacklevel=3,
        )
    return FormulaFit(model, draws, design, result, seconds, refinement=refinement)


def _check_fit_memory(model: FormulaNPE, data: GroupedData, n_draws: int, psis: bool) -> None:
    """Fails fast when the fit's draws would not fit in memory (`mlnpe.memory`): per draw, the amortizer's
    sampling, the brms-named draws (float64, twice) and, for PSIS, the exact log density of every row."""
    n_groups, n_rows = data.n_groups, int(data.n_rows.sum())
    n_global, n_local = len(model.npe.global_names), len(model.npe.local_names)
    per_draw = model.npe.estimator.sample_bytes(1, n_groups) + 16.0 * (n_global + n_groups * n_local)
    if psis:
        per_draw += 4.0 * n_rows * (n_local + len(model.family.aux) + 3)
    check_memory(
        per_draw, n_draws, f"`n_draws`={n_draws} draws of a dataset of {n_groups} groups and {n_rows} rows"
        + (" (with PSIS)" if psis else ""),
        "Ask for at most {most} draws" + (", or fit with psis=False." if psis else "."),
    )


def _refine(
    model: FormulaNPE, grouped: GroupedData, draws: PosteriorDraws, n_draws: int, config: Any, seed: int | None
) -> tuple[Any, PosteriorDraws]:
    """HMC draws of the exact posterior through the amortized posterior's map (mlnpe.inference.refine)."""
    from ..inference.refine import RefineConfig, RefineWarning, refine

    if config is None:
        config = RefineConfig(seed=seed)
    result = refine(
        model.npe.estimator, model.model, grouped, n_draws, config, labels=(model.npe.global_names, model.npe.local_names)
    )
    problems = result.problems()
    if problems:
        warnings.warn(
            "the HMC refinement of the amortized draws did not converge cleanly: " + "; ".join(problems) + ". "
            "Its draws may still be closer to the exact posterior than the amortized ones, but check them: "
            "run it longer (RefineConfig(warmup=..., chains=...); in R `refine_control`), or train the "
            "amortizer longer or focused on these data (focus=1 or 2) so that it starts closer.",
            RefineWarning, stacklevel=4,
        )
    refined = PosteriorDraws(
        result.global_draws[:n_draws], result.local_draws[:n_draws], draws.global_names, draws.local_names,
        draws.levels, None,
    )
    return result, refined


def log_joint(model: FormulaNPE, draws: PosteriorDraws, data: GroupedData) -> np.ndarray:
    """log p(theta, y) of every draw: (draws,)."""
    if not isinstance(draws, PosteriorDraws) or not isinstance(data, GroupedData):
        raise DataError(
            f"`draws` must be PosteriorDraws and `data` GroupedData (e.g. `fit.raw` and `model.grouped_data(df)[0]`), "
            f"got {type(draws).__name__} and {type(data).__name__}."
        )
    batch = data.to_batch()
    g = torch.as_tensor(draws.global_draws, dtype=torch.float32)[:, None]
    l = torch.as_tensor(draws.local_draws, dtype=torch.float32)[:, None]
    with torch.no_grad():
        lp = (
            model.model.log_prior_global(g).double()
            + model.model.log_prior_local(l, g).double().sum(-1)
            + model.model.log_likelihood(batch, g, l).double().sum(-1)
        )
    # A draw on the edge of the support, a group-level sd that underflowed to 0 in float32, gives the group-level
    # effects the density 0 / 0: in the limit it is 0 (they are not all 0), so the draw is impossible (PSIS weight 0).
    lp = lp.nan_to_num(nan=-math.inf)
    return lp[:, 0].numpy()


def _psis(model: FormulaNPE, draws: PosteriorDraws, data: GroupedData, warn: bool = True):
    from ..inference.psis import psis

    log_ratio = log_joint(model, draws, data) - draws.log_q
    if not np.isfinite(log_ratio).any():  # psis() would blame its `log_ratios`, which the user never gave
        raise NumericalError(
            f"the model gives this dataset no probability at any of the {draws.n_draws} amortized draws (its exact log "
            "density is infinite at each), so PSIS cannot weight them: the amortizer is far from this dataset's "
            "posterior, or the data lie beyond what the likelihood evaluates in float32 (check their scale). Train on "
            "data like these (focus=1), or fit with psis=False for the amortized draws without a certificate."
        )
    return psis(log_ratio, warn=warn)


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
        n = None if n is None else check_int(n, "n")
        idx = self.psis.resample(n, rng=np.random.default_rng(check_seed(seed)))
        return self.draws.iloc[idx].reset_index(drop=True)

    # ---- predictions (all numerics here, so R never re-implements them) ------------------------------------
    def _components(self, ndraws: int | None, seed: int | None) -> tuple[np.ndarray, ...]:
        """Draw-wise (centred intercept (S,), b (S, K), r (S, J, M), aux (S, A)), optionally subsampled."""
        ndraws = None if ndraws is None else check_int(ndraws, "ndraws")
        seed = check_seed(seed)
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
        design = build_design(self.model.terms, newdata, reference=self.model.info, min_groups=1)
        unknown = sorted(set(design.levels) - set(self.design.levels))
        if unknown:
            raise DataError(
                f"`newdata` has levels {unknown[:5]} of {self.model.terms.group!r} that this fit has no group-level "
                "effects for; fit the new data with `model.fit(newdata)` instead."
            )
        return design

    def linear_predictor(self, newdata: Any = None, ndraws: int | None = None, seed: int | None = None) -> np.ndarray:
        """eta (draws, rows) on the link scale, rows in the order of the data; the offset included (`newdata`
        needs its columns), as in brms."""
        design = self._design_for(newdata)
        n_draws = self.raw.n_draws if ndraws is None else min(check_int(ndraws, "ndraws"), self.raw.n_draws)
        check_memory(  # eta, its parts and the group-level effects of every row, float64
            8.0 * len(design.y) * (len(self.model.z_names) + sum(len(c.z_names) for c in design.crossed) + 6), n_draws,
            f"predictions of {n_draws} draws for {len(design.y)} rows",
            "Pass ndraws <= {most}, or predict for fewer rows of `newdata` at a time.",
            fix_none="Not even one draw fits: predict for fewer rows of `newdata` at a time.",
        )
        intercept, b, r, _, idx = self._components(ndraws, seed)
        eta = np.repeat(intercept[:, None], len(design.y), 1)
        if b.shape[1]:
            eta = eta + b @ (design.X - self.model.x_means).T
        if design.offset is not None:
            eta = eta + design.offset
        codes = np.array([self.design.levels.index(level) for level in design.levels])[design.group]
        eta = eta + np.einsum("nm,snm->sn", design.Z, r[:, codes, :])
        if design.crossed:  # the other grouping factors' effects are global draws
            g = torch.as_tensor(self.raw.global_draws, dtype=torch.float64)[idx]
            for factor, part in zip(self.model.model.crossed, design.crossed):
                effects = self.model.model.effects(g, factor).numpy()  # (S, K_f, M_f)
                eta = eta + np.einsum("nm,snm->sn", part.Z, effects[:, part.codes, :])
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
        gen = torch.Generator().manual_seed(0 if seed is None else check_seed(seed))
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

        if isinstance(probs, (str, bytes)) or not isinstance(probs, Sequence):
            probs = [probs]
        probs = [check_float(p, "probs", 0, 1) for p in probs]
        d = self.draws
        table = {"Estimate": d.mean(axis=0), "Est.Error": d.std(axis=0, ddof=1)}
        for p in probs:
            table[f"Q{100 * p:g}"] = d.quantile(p)
        return pd.DataFrame(table)

    def to_arviz(self, seed: int | None = None) -> Any:
        """The fit as an ``arviz.InferenceData`` (``pip install arviz``): posterior (brms names), log_likelihood,
        posterior_predictive (drawn with `seed`) and observed_data groups, as PyMC and bambi users plot them.

        Example:
            >>> idata = fit.to_arviz(seed=1)
            >>> arviz.loo(idata)
        """
        from ..inference.arviz import to_inference_data

        return to_inference_data(
            self.draws, log_likelihood=self.log_lik(), posterior_predictive=self.posterior_predict(seed=seed),
            observed_data=self.design.y, response=self.model.terms.response,
        )


def prediction_frame(model: FormulaNPE, frame: Any, need_response: bool, need_group: bool) -> Any:
    """Adds a placeholder response (and group) column to `newdata` where predictions do not use it."""
    terms = model.terms
    frame = frame.copy()
    if terms.response not in frame.columns:
        if need_response:
            raise DataError(
                f"`newdata` lacks the response {terms.response!r}, which log_lik() needs; add the column."
            )
        placeholder = 1.0 if model.family.name in ("lognormal", "Gamma") else 0.0
        frame[terms.response] = placeholder  # a value inside every family's support; predictions ignore it
    if need_group and terms.group not in frame.columns:
        frame[terms.group] = "__mlnpe_none__"
    return frame


def with_new_levels(
    model: FormulaNPE, raw: PosteriorDraws, design: Design, newdata: Any, allow_new_levels: bool, seed: int | None
) -> tuple[PosteriorDraws, Design]:
    """Draws and design extended by the levels of `newdata` that the fit has not seen.

    The effects of a new level are drawn from their prior given each global draw, r ~ MVN(0, Sigma_s), as brms's
    ``sample_new_levels = "gaussian"`` does.
    """
    levels = build_design(model.terms, newdata, reference=model.info, min_groups=1).levels
    new = [level for level in levels if level not in design.levels]
    if not new:
        return raw, design
    if not allow_new_levels:
        raise DataError(
            f"`newdata` has levels {new[:5]} of {model.terms.group!r} that the fit has no group-level effects for; "
            "pass allow_new_levels = TRUE to draw their effects from the prior, or refit with update(fit, newdata =)."
        )
    generator = torch.Generator().manual_seed(0 if seed is None else int(seed) + 1)
    g = torch.as_tensor(raw.global_draws, dtype=torch.float32)
    r_new = model.model.sample_local(g, len(new), generator).double().numpy()
    extended = PosteriorDraws(
        raw.global_draws, np.concatenate([raw.local_draws, r_new], 1), raw.global_names, raw.local_names,
        tuple(design.levels) + tuple(new),
    )
    return extended, dataclasses.replace(design, levels=tuple(design.levels) + tuple(new))
