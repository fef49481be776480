"""FormulaNPE: a brms-style multilevel formula model with its amortized posterior, staged as brms stages it.

formula -> terms (`terms.parse_formula`) -> design (`design.build_design`) -> family and priors
(`families.get_family`, `priors.design_priors`) -> two-level model (`model.FormulaModel`) -> amortizer
(`MultilevelNPE`). `FormulaNPE` builds the stages and hands on each verb: `train` (with focusing,
`mlnpe.formula.focus`), `fit` (`mlnpe.formula.fit`: a `FormulaFit` of brms-named draws), `sbc`, `save` / `load`
(`mlnpe.formula.saved`). The on-disk cache of trained models is `mlnpe.formula.cache.trained_model`.

Example:
    >>> from mlnpe.formula import FormulaNPE, prior
    >>> model = FormulaNPE("y ~ x + (1 + x | g)", df, family="gaussian",
    ...                    prior=[prior("normal(0, 1)", "b")])                      # doctest: +SKIP
    >>> model.train(steps=3000)                                                    # doctest: +SKIP
    >>> fit = model.fit()             # brms-named draws, PSIS k-hat and ESS       # doctest: +SKIP
    >>> fit.draws[["b_Intercept", "b_x", "sd_g__Intercept", "sigma"]].describe()   # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..amortizer import MultilevelNPE
from ..io import network_from_saved, read_saved_json
from ..networks.config import (
    NetworkConfig, ShiftConfig, StatisticsConfig, SufficientConfig, SummaryConfig, network_changes,
)
from ..core.data import GroupedData
from ..core.draws import PosteriorDraws
from ..checks import check_path, check_seed
from ..core.spec import check_sizes
from ..errors import LoadError, SpecError
from ..train import TrainConfig, train_config
from . import saved
from .design import Design, DesignInfo, build_design
from .families import get_family
from .fit import FormulaFit, design_features, fit_dataset, log_joint
from .focus import (
    check_focus, posterior_region, record_round, region_edges, regression_region, train_focused, training_data,
)
from .model import CovariatePool, FormulaModel, crossed_factors, global_slots
from .names import brms_globals, brms_local_names
from .priors import as_prior_specs, design_priors, prior_table
from .terms import FormulaTerms, parse_formula

__all__ = ["FormulaNPE", "default_ranges"]

# Families whose likelihood depends on y only through sum y x (and sum y^2; lognormal: of log y): see
# `SufficientConfig` and `NetworkConfig.log_response`.
_SUFFICIENT = {"gaussian": "gaussian", "lognormal": "gaussian", "poisson": "poisson", "bernoulli": "binomial",
               "binomial": "binomial"}


def default_ranges(n_groups: int, n_rows: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Trained J and N_j ranges from the data: J from about half to 1.5 times the observed J (leave-one-group-out
    and smaller or larger refits stay inside), N_j from 1 to 1.5 times the largest observed group."""
    groups = (max(2, n_groups // 2), max(n_groups + 2, math.ceil(1.5 * n_groups)))
    rows = (1, max(2, math.ceil(1.5 * int(np.max(n_rows)))))
    return groups, rows


class FormulaNPE:
    """An amortized posterior of a brms-style multilevel formula model.

    Arguments:
        formula: brms/lme4 formula with one or more grouping factors, e.g. "y ~ x + (1 + x | g)" or
            "y ~ x + (1 | subject) + (1 | item)" (see `mlnpe.formula.model` for several factors).
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
        if not isinstance(formula, str):
            raise SpecError(
                f"`formula` must be a string such as \"y ~ x + (1 | g)\", got {type(formula).__name__}: {formula!r}."
            )
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
        self.terms = design.info.terms  # with several grouping factors, the one with the most levels first
        self.family.check_response(design.y, design.trials, argument=self.terms.response)
        self.info: DesignInfo = design.info
        # brms centres predictors only when the model has the default intercept (the Intercept prior is then the
        # intercept of centred predictors; not with `0 + Intercept`); the centring is fixed here, at training time.
        self.x_means = np.asarray(design.x_means, dtype=float) * (1.0 if design.intercept else 0.0)
        self.user_priors = as_prior_specs(prior)
        self.resolved = design_priors(design, self.terms, self.family, self.user_priors)
        features = design_features(design, design.trials is not None)
        self.feature_names, self.x_source, self.z_source = features.names, features.x_source, features.z_source
        self.trials_column, self.offset_column = features.trials_column, features.offset_column
        self.crossed = crossed_factors(self.info, self.feature_names)
        self.slots = global_slots(self.resolved, self.family, self.crossed)
        self.pool = CovariatePool.from_rows(features.x, design.group, len(design.levels))
        self.z_names = tuple(design.z_names)
        default_groups, default_rows = default_ranges(len(design.levels), np.bincount(design.group))
        self.groups = default_groups if groups is None else check_sizes("groups", groups)
        self.rows = default_rows if rows is None else check_sizes("rows", rows)
        self.network = self._network(network)
        self.seed = check_seed(seed, none=False)
        self.model = self._model()
        self.npe = MultilevelNPE(self.model, self.groups, self.rows, self.network, seed=seed)
        self.data = data
        self.rounds: list[dict[str, Any]] = []

    # ---- specification ------------------------------------------------------------------------------------
    def _network(self, network: NetworkConfig | dict[str, Any] | None) -> NetworkConfig:
        """The network config: a NetworkConfig as it is; otherwise the formula models' defaults, changed by the
        parts a nested dict names (`NetworkConfig.merged`).

        Families with a canonical link and finite sufficient statistics (gaussian, poisson, bernoulli, binomial)
        get a local summary of those statistics (`SufficientConfig`): the amortized posterior then depends on the
        data only as the exact one does. Other families get the deep set, with counts and positive responses on a
        log scale. Trials reach the networks on a log scale. The shift keeps one residual scale per parameter and
        the profile's plain features (`ShiftConfig.heteroscedastic` and `StatisticsConfig.profile_average` off
        unless given): against Stan they were mixed on formula models (BENCHMARKS.md, Stan agreement).
        """
        changes = network_changes(network)
        if isinstance(changes, NetworkConfig):
            return changes
        trials = () if self.trials_column is None else (1 + self.trials_column,)
        family = _SUFFICIENT.get(self.family.name)
        defaults = NetworkConfig(
            summary=SummaryConfig(sufficient=None if family is None else SufficientConfig(family, design_only=trials)),
            statistics=StatisticsConfig(profile_average=False),
            shift=ShiftConfig(heteroscedastic=False),
            log_response=self.family.name == "lognormal",  # log y is gaussian: its sufficient statistics
        )
        config = defaults.merged(changes)
        if "log_inputs" not in changes:
            logged = () if config.summary.sufficient is not None else (
                (0,) if self.family.link == "log" or self.family.name in ("binomial",) else ()
            )
            config = config.merged({"log_inputs": logged + trials})
        return config

    def _model(self) -> FormulaModel:
        return FormulaModel(
            self.slots, self.z_names, self.z_source, self.family.name, self.x_means, self.x_source,
            self.feature_names, self.trials_column, self.pool, self.terms.response, self.offset_column, self.crossed,
        )

    def prior_summary(self) -> Any:
        """The priors in force, as a brms-like table (prior, class, coef, group, lb, ub, source)."""
        return prior_table(self.resolved)

    # ---- training ---------------------------------------------------------------------------------------------
    def train(self, config: TrainConfig | None = None, *, focus: int = 0, **overrides: Any):
        """Trains the amortizer on simulations (see MultilevelNPE.train), and on the training data when it has them.

        With the training data (`data`), every step also adds an unlabeled loss of the data, their
        leave-one-group-out subsets and bootstrap resamples of their groups (`TrainConfig.observed_loss` and
        `observed_weight`; `mlnpe.consistency`), and every `TrainConfig.check_every` steps the PSIS certificate of the data's amortized
        posterior is checked: training stops once k-hat is below 0.7 and the held-out loss has stopped improving
        (`mlnpe.inference.certificate`; `self.npe.history.stopped` says why training ended).

        Arguments:
            config: training settings; keyword overrides replace single fields (e.g. `steps=500`).
            focus: number of focusing rounds. 0 (the default) trains (or continues training) one amortizer over
                the whole prior: right for simulation studies and for data of any scale. With focus = k >= 1,
                training restarts and runs k + 1 rounds on the same total budget (steps and time limit): the
                first k rounds share 40 % of it, the last round 60 %. The first round trains in a box from
                regression on pooled statistics (`regression_region`). After each round whose posterior of the
                training data PSIS finds covering it (k-hat < 1; otherwise the box stays), that posterior sets a box
                around every scalar global parameter (quartiles -+ 4 interquartile ranges on the flow's
                unconstrained scale; `posterior_region`; `rounds` records each box and its k-hat), and the next
                round simulates
                from the prior truncated to that box (correlations stay unrestricted), with freshly initialized
                and standardized networks. The amortizer then stays amortized over datasets like the training
                data (refits of new data of the same design, leave-one-group-out) and is much more accurate for
                them, because the simulations concentrate where their posteriors are (Deistler et al. 2022,
                truncated proposals). `fit()` warns when a dataset's posterior reaches the edge of the box.
        Returns:
            the training history of the last round.
        """
        config = train_config(config, overrides)
        focus = check_focus(focus)
        if focus == 0:
            history = self.npe.train(config, **training_data(self, config))
            record_round(self, history, continued=True)
            return history
        return train_focused(self, config, focus)

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
        """A box around the current posterior of `data` (default: the training data), for focusing: quartiles -+
        `reach` interquartile ranges on the flow's unconstrained scale (`mlnpe.formula.focus.posterior_region`)."""
        return posterior_region(self, data, n_draws, seed, reach)

    def regression_region(
        self, seed: int = 0, n_sims: int = 2000, reach: float = 6.0, max_iterations: int = 6
    ) -> dict[str, tuple[float, float]]:
        """A box around the training data's posterior from linear regression on pooled statistics, without
        training (`mlnpe.formula.focus.regression_region`). Returns {} when the model has no pooled statistics."""
        return regression_region(self, seed, n_sims, reach, max_iterations)

    def region_edges(self, draws: PosteriorDraws, margin: float = 0.05, threshold: float = 0.01) -> list[str]:
        """Global parameters whose draws crowd the edge of the focusing box (`mlnpe.formula.focus.region_edges`)."""
        return region_edges(self, draws, margin, threshold)

    # ---- fitting ----------------------------------------------------------------------------------------------
    def grouped_data(self, data: Any) -> tuple[GroupedData, Design]:
        """Builds the network input of a dataset with the stored design information (factor levels, columns)."""
        design = build_design(self.terms, data, reference=self.info)
        self.family.check_response(design.y, design.trials, argument=self.terms.response)
        x = design_features(design, design.trials is not None).x
        ys = [design.y[design.group == j][:, None] for j in range(len(design.levels))]
        xs = [x[design.group == j] for j in range(len(design.levels))]
        names = {"y_names": (self.terms.response,)}
        if x.shape[1] == len(self.feature_names):
            names["x_names"] = tuple(self.feature_names)
        return GroupedData.from_groups(ys, xs, list(design.levels), **names), design

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
        return fit_dataset(self, newdata, n_draws, seed, psis, allow_extrapolation, refine, refine_config)

    def logo(
        self, data: Any = None, n_draws: int = 1000, n_local: int = 20, seed: int | None = None,
        group: str | None = None,
    ) -> Any:
        """Leave-one-group-out elpd of `data` (default: the training data), one instant refit per level of the
        grouping factor `group` (default: the primary one) (`mlnpe.formula.logo.formula_logo`); returns an
        `mlnpe.inference.logo.LogoResult`."""
        from .logo import formula_logo

        return formula_logo(self, self.data if data is None else data, n_draws, n_local, seed, group=group)

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

    def simulate_study(
        self,
        grid: Any = None,
        truth: Any = None,
        n_groups: Any = None,
        n_rows: Any = None,
        n_datasets: int = 200,
        n_draws: int = 1000,
        seed: int = 0,
        *,
        level: float = 0.95,
        threshold: float = 0.975,
        progress: bool = False,
        client: Any = None,
        checkpoint: Any = None,
        means: Any = None,
    ) -> Any:
        """A simulation study or power analysis with this amortizer: it only samples (`mlnpe.study`).

        Arguments:
            grid: brms-named global parameters -> values to study (e.g. {"b_x": [0, 0.2, 0.5]}); every
                combination is a grid point.
            truth: brms-named values of the other global parameters (default: `means`).
            means: brms-named values for the parameters neither `grid` nor `truth` names (a fit's posterior
                means; default: those of the training data's amortized fit).
            n_groups, n_rows: the numbers of groups and of rows per group to study, every combination (default:
                the training data's number of groups and median group size); inside the trained ranges.
            n_datasets: datasets per grid point and design; n_draws: posterior draws per dataset.
            seed: seed of the simulations and draws.
            level: the interval level of `power_interval`; threshold: the posterior probability of `power_prob`.
            progress: show a progress bar.
            client: where the study's cells run (`mlnpe.study.study_client`): None (here), a number of local
                worker processes, a dask scheduler's address, or a dask.distributed Client.
            checkpoint: a directory that keeps every finished cell; a rerun with it resumes an interrupted study.

        Returns:
            an `mlnpe.study.StudyResult` (bias, RMSE, coverage, power per parameter, grid point and design; each
            dataset's PSIS k-hat).

        Raises:
            RangeError: a grid point outside a prior's support or the focused amortizer's box, or sizes outside
                the trained ranges.
        """
        from .study import formula_study

        return formula_study(self, grid, truth, n_groups, n_rows, n_datasets, n_draws, seed, level=level,
                             threshold=threshold, progress=progress, client=client, checkpoint=checkpoint,
                             means=means)  # fmt: skip

    def sample_many(
        self,
        data: Any,
        n_draws: int = 1000,
        seed: int = 0,
        *,
        dataset: str = "dataset",
        chunk: int = 256,
        output: Any = None,
        allow_extrapolation: bool = False,
    ) -> Any:
        """Posterior summaries of many datasets of this model, streamed in chunks (batched inference).

        Arguments:
            data: one long table of all datasets: a pandas DataFrame or the path of a Parquet file (read in
                batches; each dataset's rows contiguous), with the formula's columns and `dataset`.
            n_draws: posterior draws per dataset (only their summaries are kept).
            seed: seed of the draws (chunk k uses seed + k).
            dataset: the column naming each row's dataset.
            chunk: datasets per sampling pass (and per Parquet part).
            output: None (return the summaries) or a directory to write them to as Parquet, one file per chunk
                (`part-00000.parquet`, ...), each complete before the next begins; a rerun of the same call
                resumes after the parts already there.
            allow_extrapolation: accept datasets outside the trained numbers of groups and rows.

        Returns:
            a pandas DataFrame in long form (`dataset`, `parameter` in brms's names, `mean`, `sd`, `p_positive`,
            `lower_<level>` and `upper_<level>` for 0.5, 0.9 and 0.95), or the output directory.

        Raises:
            DataError: a dataset with bad data (its id named), a missing `dataset` column; LoadError: a part that
                could not be written (disk full), with the finished parts intact.
        """
        from .study import formula_sample_many

        return formula_sample_many(self, data, n_draws, seed, dataset=dataset, chunk=chunk, output=output,
                                   allow_extrapolation=allow_extrapolation)  # fmt: skip

    def log_joint(self, draws: PosteriorDraws, data: GroupedData) -> np.ndarray:
        """log p(theta, y) of every draw: (draws,)."""
        return log_joint(self, draws, data)

    # ---- save / load ------------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """The JSON specification saved as formula.json (`mlnpe.formula.saved.config_dict`)."""
        return saved.config_dict(self)

    def spec_hash(self, config: TrainConfig | None = None, focus: int = 0) -> str:
        """A key of everything that determines the trained amortizer (for the on-disk cache)."""
        return saved.spec_hash(self, config, focus)

    def save(self, path: str | os.PathLike) -> Path:
        """Saves to a directory: formula.json, pool.pt (tensors) and the amortizer (config.json, weights.pt)."""
        return saved.save(self, check_path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, data: Any = None) -> "FormulaNPE":
        """Loads a saved formula model (no pickle). `data` optionally re-attaches the training data."""
        path = check_path(path)
        config = read_saved_json(path, saved.FORMULA_FILE)
        try:
            state = dict(config, pool=saved.load_pool(path, config), data=data)
            obj = cls(config["formula"], None, config["family"], _state=state)
        except FileNotFoundError:
            raise LoadError(f"no {saved.POOL_FILE} in {str(path)!r}; the save is incomplete.") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise LoadError(f"{str(path)!r} holds an inconsistent formula model ({type(e).__name__}: {e}).") from None
        obj.npe = MultilevelNPE.load(path / saved.AMORTIZER_DIR, model=obj.model)
        return obj

    def _restore(self, state: dict[str, Any]) -> None:
        self.info = DesignInfo.from_dict(state["design_info"])
        self.x_means = np.asarray(state["x_means"], dtype=float)
        self.user_priors = saved.saved_user_priors(state["user_priors"])
        self.resolved = saved.saved_priors(state["priors"])
        self.feature_names = list(state["feature_names"])
        self.crossed = crossed_factors(self.info, self.feature_names)
        self.slots = global_slots(self.resolved, self.family, self.crossed)
        self.z_names = tuple(state["z_names"])
        self.z_source = list(state["z_source"])
        self.x_source = list(state.get("x_source", range(len(self.x_means))))  # saved only when not 0..K-1
        self.trials_column = state["trials_column"]
        self.offset_column = state.get("offset_column")  # saved only with an offset
        self.pool = state["pool"]
        self.groups, self.rows = tuple(state["groups"]), tuple(state["rows"])
        self.network = network_from_saved(state["network"])
        self.seed = int(state["seed"])
        self.model = self._model()
        self.model.set_region(state.get("region"))
        self.rounds = list(state.get("rounds", []))
        self.data = state.get("data")
