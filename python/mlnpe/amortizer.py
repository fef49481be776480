"""`MultilevelNPE`: train once on simulations of a two-level model, then fit any dataset in milliseconds.

Example:
    >>> from mlnpe import MultilevelNPE, TrainConfig
    >>> from mlnpe.core.models import NormalHierarchical
    >>> npe = MultilevelNPE(NormalHierarchical(), groups=(5, 30), rows=(2, 50))
    >>> history = npe.train(TrainConfig(steps=2000))          # doctest: +SKIP
    >>> draws = npe.sample(data, n_draws=1000, seed=1)         # doctest: +SKIP
    >>> draws.summary()                                        # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .version import __version__
from .checks import check_flag, check_float, check_int, check_path, check_seed
from .core.data import GroupedBatch, GroupedData, collate
from .core.draws import PosteriorDraws
from .errors import ConfigError, DataError, LoadError, NumericalError
from .core.models import model_from_config
from .core.spec import ParamSpec, SimulatedBatch, TwoLevelModel, bijector_of, check_range, check_sizes, labels_of, simulate_batch
from .estimator import MultilevelEstimator
from .io import CONFIG_FILE, FORMAT_VERSION, load_weights, read_config, write_saved
from .memory import check_memory
from .networks.config import NetworkConfig, network_changes
from .consistency import ObservedSets, has_likelihood, reverse_kl, self_consistency
from .train import TrainConfig, TrainHistory, train_config, train_estimator

__all__ = ["MultilevelNPE"]

MAX_INPUT = 1e15  # data beyond this overflow the float32 networks' squared statistics (3.4e38)
OBSERVED_RAMP = (0.1, 0.2)  # training progress where the observed data's loss starts, and where it reaches full weight


class MultilevelNPE:
    """Amortized posterior of a two-level model (ML-NPE).

    Arguments:
        model: the two-level model to learn (its simulator is needed for training only).
        groups: (min, max) number of groups J drawn per simulated dataset.
        rows: (min, max) rows N_j drawn per simulated group.
        network: the networks' configuration: a NetworkConfig, or a nested dict of the parts to change (e.g.
            ``{"summary": {"hidden": 32}, "shift": None}``; see `NetworkConfig.from_dict`).
        local_summary: optional custom local summary module (interface in mlnpe.networks.summaries).
        global_summary: optional custom global summary module.
        seed: seed of the network initialization and the pilot simulations.
        pilot_size: number of pilot datasets used to standardize inputs and parameters.
    """

    def __init__(
        self,
        model: TwoLevelModel | None,
        groups: tuple[int, int] = (5, 30),
        rows: tuple[int, int] = (2, 50),
        network: NetworkConfig | dict[str, Any] | None = None,
        local_summary: nn.Module | None = None,
        global_summary: nn.Module | None = None,
        seed: int = 0,
        pilot_size: int = 1024,
        *,
        _specs: dict[str, Any] | None = None,
    ):
        self.model = model
        if model is None and _specs is None:
            raise ConfigError("`model` is required: pass a TwoLevelModel instance.")
        if model is not None and not isinstance(model, TwoLevelModel):
            raise ConfigError(f"`model` must be a TwoLevelModel, got {type(model).__name__}.")
        specs = _specs or _specs_of(model)
        self.global_params = tuple(ParamSpec.from_dict(p) for p in specs["global_params"])
        self.local_params = tuple(ParamSpec.from_dict(p) for p in specs["local_params"])
        if not self.global_params or not self.local_params:
            raise ConfigError("the model must declare at least one global and one local parameter.")
        self.y_dim, self.x_dim = int(specs["y_dim"]), int(specs["x_dim"])
        self.effects = tuple((int(g), int(x)) for g, x in specs.get("effects", ()))
        self.centring = tuple((int(a), tuple(int(c) for c in cols)) for a, cols in specs.get("centring", ()))
        self.groups = check_sizes("groups", groups)
        self.rows = check_sizes("rows", rows)
        changes = network_changes(network)
        self.network = changes if isinstance(changes, NetworkConfig) else NetworkConfig.from_dict(changes)
        self.seed = check_seed(seed, none=False)
        pilot_size = check_int(pilot_size, "pilot_size", 2)
        with torch.random.fork_rng():  # seeded initialization without touching the global RNG
            torch.manual_seed(self.seed)
            self.estimator = MultilevelEstimator(
                bijector_of(self.global_params),
                bijector_of(self.local_params),
                self.y_dim + self.x_dim,
                self.network,
                local_summary,
                global_summary,
                [(g, self.y_dim + x) for g, x in self.effects],
                self.centring,
            )
        self.custom_summaries = (local_summary is not None, global_summary is not None)
        self.history = TrainHistory()
        self.trained = False
        if model is not None and _specs is None:
            pilot = simulate_batch(model, pilot_size, self.groups, self.rows, torch.Generator().manual_seed(self.seed + 1))
            self.estimator.set_standardization(pilot.global_params, pilot.local_params, pilot.batch)

    # ---- names ----------------------------------------------------------------------------------------------
    @property
    def global_names(self) -> list[str]:
        return labels_of(self.global_params)

    @property
    def local_names(self) -> list[str]:
        return labels_of(self.local_params)

    # ---- training -------------------------------------------------------------------------------------------
    def simulate(self, n: int, generator: torch.Generator) -> SimulatedBatch:
        """n datasets from the model over the trained ranges of J and N_j."""
        if self.model is None:
            raise ConfigError("this estimator was loaded without its model; pass `model=` to `load` to simulate.")
        return simulate_batch(self.model, n, self.groups, self.rows, generator)

    def train(
        self,
        config: TrainConfig | None = None,
        *,
        observed: GroupedData | Sequence[GroupedData] | None = None,
        monitor: Callable[[int], str | None] | None = None,
        **overrides: Any,
    ) -> TrainHistory:
        """Trains (or continues training) the networks on simulations.

        Arguments:
            config: training settings; keyword overrides replace single fields (e.g. `steps=500`).
            observed: an observed dataset, or a list of them: with `config.observed_weight` > 0 (a model with
                tractable densities), every step adds `config.observed_loss` of one of them (in turn), and of
                leave-one-group-out subsets and bootstrap resamples of their groups
                (`mlnpe.consistency.ObservedSets`; Mishra et al. 2025).
            monitor: called every `config.check_every` steps; a string it returns stops training (e.g.
                `mlnpe.inference.certificate.Certificate`).
        Returns:
            the training history (also kept in `self.history`).
        """
        config = train_config(config, overrides)
        if observed is not None:
            many = isinstance(observed, (list, tuple))
            datasets = list(observed) if many else [observed]
            if not datasets or not all(isinstance(d, GroupedData) for d in datasets):
                got = type(observed).__name__
                if many:
                    got += " of " + (", ".join(sorted({type(d).__name__ for d in datasets})) or "nothing")
                raise DataError(f"`observed` must be a GroupedData, a non-empty list of them or None, got {got}.")
            for i, d in enumerate(datasets):
                self.check_design(d, argument=f"`observed`[{i}]" if many else "`observed`")
        if monitor is not None and not callable(monitor):
            raise ConfigError(f"`monitor` must be a function of the step or None, got {type(monitor).__name__}.")
        generator = torch.Generator().manual_seed(config.seed + 12345 * (1 + len(self.history.step)))
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            self.history = train_estimator(
                self.estimator, self.simulate, config, generator, self.history, self._consistency(config, observed),
                monitor,
            )
        self.trained = True
        self.train_config = config
        return self.history

    def _consistency(
        self, config: TrainConfig, observed: GroupedData | Sequence[GroupedData] | None = None
    ) -> Callable[[SimulatedBatch, float], Tensor] | None:
        """The extra losses of a training step (`mlnpe.consistency`): self-consistency on the simulated batch
        (`config.self_consistency`) and the unlabeled loss on observed data (`config.observed_loss`, weight
        `config.observed_weight`), or None when both are off.

        The observed data's loss starts once the NPE loss has shaped q: it is off for the first
        `OBSERVED_RAMP[0]` of training and reaches its full weight at `OBSERVED_RAMP[1]`. An untrained flow may draw
        group-level sds of 1e-30, whose reverse KL (1e36) overflows the gradients (sleepstudy's first steps)."""
        simulated = bool(config.self_consistency)
        on_observed = observed is not None and bool(config.observed_weight) and self.model is not None
        if on_observed and not has_likelihood(self.model):
            raise ConfigError(
                f"`observed` data train with self-consistency, which needs a model with log_prior_global, "
                f"log_prior_local and log_likelihood; {type(self.model).__name__} lacks them. Leave out `observed` "
                "or set TrainConfig observed_weight=0."
            )
        if not simulated and not on_observed:
            return None
        if simulated and (self.model is None or not has_likelihood(self.model)):
            raise ConfigError(
                "TrainConfig `self_consistency` needs a model with log_prior_global, log_prior_local and "
                f"log_likelihood; {type(self.model).__name__} lacks them. Set self_consistency=0."
            )
        generator = torch.Generator().manual_seed(config.seed + 7919)  # apart from the simulations' stream
        sets = ObservedSets(observed, self.groups[0]) if on_observed else None

        def loss(sims: SimulatedBatch, progress: float) -> Tensor:
            b = sims.global_params.shape[0]
            total = torch.zeros(b, device=sims.global_params.device)
            if simulated:
                # the first k datasets of a batch of independent simulations are a random subset of it; scaled by B / k
                k = min(config.consistency_datasets, b)
                term = self_consistency(
                    self.estimator, self.model, sims.batch.index(slice(0, k)), config.consistency_draws, generator
                )
                total = total + torch.nn.functional.pad(term * (config.self_consistency * b / k), (0, b - k))
            ramp = min(max((progress - OBSERVED_RAMP[0]) / (OBSERVED_RAMP[1] - OBSERVED_RAMP[0]), 0.0), 1.0)
            if sets is not None and ramp > 0:
                batch = sets.batch(config.observed_datasets, generator).to(sims.global_params.device)
                unlabeled = reverse_kl if config.observed_loss == "reverse_kl" else self_consistency
                term = unlabeled(self.estimator, self.model, batch, config.observed_draws, generator)
                total = total + ramp * config.observed_weight * term.mean()
            return total

        return loss

    # ---- inference ------------------------------------------------------------------------------------------
    def batch(self, data: Any, allow_extrapolation: bool = False) -> tuple[GroupedBatch, list[tuple[str, ...]]]:
        """Checks one dataset or a list of them against the trained design and collates them into a padded batch.

        Returns:
            The batch and each dataset's group levels.

        Raises:
            DataError: `data` is not GroupedData, or its columns differ from the model's.
            RangeError: J or N_j lie far outside the trained ranges (unless `allow_extrapolation`).
        """
        allow_extrapolation = check_flag(allow_extrapolation, "allow_extrapolation")
        datasets = [data] if isinstance(data, GroupedData) else list(data) if isinstance(data, (list, tuple)) else None
        if not datasets or not all(isinstance(d, GroupedData) for d in datasets):
            raise DataError(
                f"`data` must be a GroupedData or a list of them, got {type(data).__name__}. Build one with "
                "GroupedData.from_dataframe(df, response=..., group=...) or GroupedData.from_arrays(y, group)."
            )
        for i, d in enumerate(datasets):
            self.check_design(d, allow_extrapolation, "`data`" if isinstance(data, GroupedData) else f"`data`[{i}]")
        if not self.trained:
            import warnings

            warnings.warn("this estimator has not been trained yet; its draws are meaningless.", stacklevel=3)
        return collate(datasets), [d.levels for d in datasets]

    def check_design(self, data: GroupedData, allow_extrapolation: bool = False, argument: str = "`data`") -> None:
        """Checks that a dataset has the model's columns and lies in the trained ranges of J and N_j.

        Raises:
            DataError: its columns differ from the model's.
            RangeError: J or N_j lie far outside the trained ranges (unless `allow_extrapolation`).
        """
        if data.y_dim != self.y_dim or data.x_dim != self.x_dim:
            raise DataError(
                f"{argument} has {data.y_dim} response and {data.x_dim} covariate columns; the model expects "
                f"{self.y_dim} and {self.x_dim}."
            )
        check_range("groups", [data.n_groups], self.groups, allow=allow_extrapolation)
        check_range("rows per group", data.n_rows.tolist(), self.rows, allow=allow_extrapolation)
        for values, names in ((data.y, data.y_names), (data.x, data.x_names)):
            if values is None or not values.size:
                continue
            big = np.abs(values).max(axis=0) > MAX_INPUT
            if big.any():
                column = int(np.argmax(big))
                raise DataError(
                    f"{argument} column {names[column]!r} has values up to {float(np.abs(values[:, column]).max()):.3g}, "
                    f"beyond {MAX_INPUT:.0e}: the networks (float32, squares of the data) would overflow. Rescale "
                    "it (e.g. other units) and refit."
                )

    def sample(
        self,
        data: GroupedData | Sequence[GroupedData],
        n_draws: int = 1000,
        seed: int | None = None,
        allow_extrapolation: bool = False,
        log_prob: bool = True,
    ) -> PosteriorDraws | list[PosteriorDraws]:
        """Joint posterior draws for one dataset (PosteriorDraws) or several (a list), ancestral (eq. 14).

        Arguments:
            data: observed dataset(s).
            n_draws: number of joint draws.
            seed: seed of the draws (None: fresh randomness).
            allow_extrapolation: accept datasets far outside the trained J and N_j ranges.
            log_prob: also compute each draw's log density (`log_q`, needed for importance sampling); this
                evaluates the flows a second time.
        """
        n_draws, seed = check_int(n_draws, "n_draws"), check_seed(seed)
        log_prob = check_flag(log_prob, "log_prob")
        batch, levels = self.batch(data, allow_extrapolation)
        n_groups = batch.group_mask.shape[1]
        check_memory(
            self.estimator.sample_bytes(batch.batch_size, n_groups), n_draws,
            f"`n_draws`={n_draws} draws of {batch.batch_size} dataset(s) of up to {n_groups} groups",
            "Ask for at most {most} draws (and sample several times for more).",
        )
        generator = torch.Generator()
        generator.manual_seed(seed) if seed is not None else generator.seed()
        self.estimator.eval()
        if log_prob:
            g, l, lp_g, lp_l = self.estimator.sample(int(n_draws), batch, generator, return_log_prob=True)
            log_q = (lp_g + lp_l.sum(-1)).double().numpy()
        else:
            g, l = self.estimator.sample(int(n_draws), batch, generator)
            log_q = None
        local_ok = (torch.isfinite(l).all(-1) | ~batch.group_mask).all(-1)  # padded groups hold junk
        bad = ~(torch.isfinite(g).all(-1) & local_ok)  # (S, B)
        if log_q is not None:
            bad |= ~torch.from_numpy(np.isfinite(log_q))
        if bad.any():
            dataset = int(bad.any(0).nonzero()[0, 0])
            raise NumericalError(
                f"the amortized posterior of dataset {dataset} gave {int(bad[:, dataset].sum())} non-finite draws or "
                "densities of "
                f"{int(n_draws)}: its data lie where the networks were not trained (scale, sizes) or the weights are "
                "broken. Check the data's scale against the simulations, or retrain."
            )
        out = [
            PosteriorDraws(
                g[:, i].numpy().astype(np.float64),
                l[:, i, : len(lev)].numpy().astype(np.float64),
                tuple(self.global_names),
                tuple(self.local_names),
                lev,
                None if log_q is None else log_q[:, i],
            )
            for i, lev in enumerate(levels)
        ]
        return out[0] if isinstance(data, GroupedData) else out

    def sample_batch(
        self, batch: GroupedBatch, n_draws: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws for a padded batch (no checks; for simulation studies such as SBC).

        Returns:
            global draws (n_draws, B, G) and local draws (n_draws, B, J, L); padded groups hold junk.
        """
        self.estimator.eval()
        return self.estimator.sample(int(n_draws), batch, generator)

    @torch.no_grad()
    def local_proposal(
        self, group: GroupedData, global_draws: Any, n_local: int, generator: torch.Generator,
        flow_fraction: float = 0.5, model: TwoLevelModel | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Importance-sampling proposal for one group's local parameters given global draws.

        Draws lambda from the defensive mixture r = f q(lambda | tau, omega, x_j) + (1 - f) p(lambda | tau), with
        f = `flow_fraction`. The local flow sees only the group's own rows, so it proposes well for a group left
        out of the data that `global_draws` came from. The prior part bounds every weight p / r by 1 / (1 - f),
        so a local flow that is too narrow for some group cannot give the heavy-tailed weights of plain
        importance sampling. Used by leave-one-group-out CV: p(x_j | theta_s) is estimated by
        mean_m p(x_j | lambda_m, theta_s) exp(log_weight_m).

        Arguments:
            group: a GroupedData with exactly one group.
            global_draws: (S, G) constrained global draws (tensor or array).
            n_local: M draws per global draw.
            model: the model whose prior p(lambda | tau) is used (default: the estimator's).
        Returns:
            lambda (S * M, L), draw s's M draws contiguous, in float64, and log p(lambda | tau) - log r(lambda)
            (S * M,).
        """
        model = model or self.model
        if model is None:
            raise ConfigError("`local_proposal` needs the model's prior: pass `model=` or load the estimator with it.")
        if not isinstance(group, GroupedData) or group.n_groups != 1:
            raise DataError(f"`group` must be a GroupedData of exactly one group, got {group!r}.")
        n_local = check_int(n_local, "n_local")
        flow_fraction = check_float(flow_fraction, "flow_fraction", 0, 1, open_low=True, open_high=True)
        est = self.estimator.eval()
        g = torch.as_tensor(np.asarray(global_draws), dtype=torch.float32)
        h_local, _ = est.summarize(collate([group]))  # (1, 1, h)
        gu = est.global_bijector.inverse(g)[:, None]  # (S, 1, G)
        gu = gu.expand(n_local, -1, -1, -1)  # (M, S, 1, G)
        flow_u = est.local_sample(h_local, gu, generator)  # (M, S, 1, 1, L)
        g_full = g.double()[None].expand(n_local, -1, -1)  # (M, S, G)
        prior = model.sample_local(g.double(), n_local, generator).permute(1, 0, 2)  # (M, S, L)
        use_flow = torch.rand(n_local, g.shape[0], 1, generator=generator) < flow_fraction
        lam = torch.where(use_flow, est.local_bijector.forward(flow_u)[:, :, 0, 0].double(), prior)
        lu = est.local_bijector.inverse(lam.float())[:, :, None, None]
        log_q = est.local_log_prob(lu, h_local, gu) - est.local_bijector.log_abs_det_jacobian(lu)  # (M, S, 1, 1)
        log_prior = model.log_prior_local(lam[:, :, None], g_full)[..., 0].double()  # (M, S)
        log_mix = torch.logaddexp(
            log_q[..., 0, 0].double() + math.log(flow_fraction), log_prior + math.log1p(-flow_fraction)
        )
        lam = lam.permute(1, 0, 2).reshape(-1, lam.shape[-1])
        return lam, (log_prior - log_mix).permute(1, 0).reshape(-1)

    @torch.no_grad()
    def log_prob(self, draws: PosteriorDraws, data: GroupedData, allow_extrapolation: bool = False) -> np.ndarray:
        """Exact log density log q(tau, omega | x) + sum_j log q(lambda_j | tau, omega, x_j) of given draws: (draws,)."""
        batch, _ = self.batch(data, allow_extrapolation)
        g = torch.as_tensor(draws.global_draws, dtype=torch.float32)[:, None]
        l = torch.as_tensor(draws.local_draws, dtype=torch.float32)[:, None]
        if l.shape[2] != batch.group_mask.shape[1]:
            raise DataError(f"`draws` has {l.shape[2]} groups but `data` has {batch.group_mask.shape[1]}.")
        lp_g, lp_l = self.estimator.log_prob(g, l, batch)
        return (lp_g + lp_l.sum(-1))[:, 0].double().numpy()

    # ---- save / load ----------------------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        """Everything but the weights, as JSON-ready data."""
        return {
            "format_version": FORMAT_VERSION,
            "mlnpe_version": __version__,
            "torch_version": torch.__version__,
            "model": None if self.model is None else self.model.to_config(),
            "specs": {
                "global_params": [p.to_dict() for p in self.global_params],
                "local_params": [p.to_dict() for p in self.local_params],
                "y_dim": self.y_dim,
                "x_dim": self.x_dim,
                **({"effects": [list(p) for p in self.effects]} if self.effects else {}),
                **({"centring": [[a, list(c)] for a, c in self.centring]} if self.centring else {}),
            },
            "groups": list(self.groups),
            "rows": list(self.rows),
            "network": self.network.to_dict(),
            "custom_summaries": list(self.custom_summaries),
            "seed": self.seed,
            "trained": self.trained,
            "history": self.history.to_dict(),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Saves to a directory: config.json and weights.pt (tensors only, loadable with weights_only=True)."""
        return write_saved(check_path(path), self.config_dict(), self.estimator)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        model: TwoLevelModel | None = None,
        local_summary: nn.Module | None = None,
        global_summary: nn.Module | None = None,
    ) -> "MultilevelNPE":
        """Loads a saved estimator (of this or an older format version, see mlnpe.io); no pickle is involved.

        Arguments:
            path: the directory written by `save`.
            model: the model, needed to continue training (registered built-in models are rebuilt from JSON).
            local_summary, global_summary: custom summary modules, if the estimator was built with them.
        Raises:
            LoadError: missing or corrupt files, or a configuration that does not match the weights.
        """
        path = check_path(path)
        config, network = read_config(path)
        needs = config.get("custom_summaries", [False, False])
        if (needs[0] and local_summary is None) or (needs[1] and global_summary is None):
            raise LoadError(
                "this estimator was saved with custom summary networks: pass freshly built modules of the same "
                "architecture as `local_summary=` / `global_summary=`."
            )
        model = model or model_from_config(config.get("model") or {})
        try:
            npe = cls(
                model,
                tuple(config["groups"]),
                tuple(config["rows"]),
                network,
                local_summary,
                global_summary,
                int(config.get("seed", 0)),
                _specs=config["specs"],
            )
        except (KeyError, TypeError) as e:
            raise LoadError(f"{str(path / CONFIG_FILE)!r} lacks or mangles an entry ({e}); the save is corrupt.") from None
        load_weights(npe.estimator, path, config["format_version"], config)
        npe.trained = bool(config.get("trained", True))
        npe.history = TrainHistory(**config.get("history", {}))
        npe.estimator.eval()
        return npe


def _specs_of(model: TwoLevelModel) -> dict[str, Any]:
    return {
        "global_params": [p.to_dict() for p in model.global_params],
        "local_params": [p.to_dict() for p in model.local_params],
        "y_dim": model.y_dim,
        "x_dim": model.x_dim,
        **({"effects": [list(p) for p in model.level_effects]} if model.level_effects else {}),
        **({"centring": [[a, list(c)] for a, c in model.effect_centring]} if model.effect_centring else {}),
    }
