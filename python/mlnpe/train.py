"""The training loop: online simulation (fresh data every step) or a fixed simulation budget.

Adam with linear warm-up and cosine decay, gradient-norm clipping, a progress bar with the loss, training
curves kept in a :class:`TrainHistory`, reproducible from a seed (no global seeding).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from .checks import SEED, Bound, check_choice, check_flag
from .errors import ConfigError, NumericalError
from .estimator import MultilevelEstimator
from .core.spec import SimulatedBatch
from .distributed import local_device, process_group

__all__ = ["TrainConfig", "TrainHistory", "resolve_device", "train_config", "train_estimator"]


OBSERVED_LOSSES = ("reverse_kl", "self_consistency")
SCHEDULES = ("cosine", "wsd")
# The "wsd" schedule's cooldown, as a fraction of the budget's steps: the learning rate falls linearly from its
# peak to `min_lr_fraction` over it, at the end of the budget or as soon as a monitor's verdict comes.
COOLDOWN = 0.2

# Every numeric field of TrainConfig and its range (`mlnpe.checks.Bound`; the meaning is what the message says).
_RANGES: dict[str, Bound] = {
    "steps": Bound(int, 1, meaning="a positive number of steps"),
    "batch_size": Bound(int, 1, meaning="a positive number of datasets"),
    "learning_rate": Bound(float, 0, 1, True, True, meaning="a learning rate in (0, 1)"),
    "warmup_fraction": Bound(float, 0, 1, True, True, meaning="a fraction in (0, 1)"),
    "min_lr_fraction": Bound(float, 0, 1, True, meaning="a fraction in (0, 1]"),
    "clip_norm": Bound(float, 0, open_low=True, infinite=True, meaning="a positive gradient norm"),
    "n_simulations": Bound(int, 1, meaning="a positive number of datasets"),
    "validation_fraction": Bound(float, 0, 1, True, True, meaning="a fraction in (0, 1)"),
    "patience": Bound(int, 1, meaning="a positive number of epochs"),
    "time_limit": Bound(float, 0, open_low=True, infinite=True, meaning="positive seconds or None"),
    "seed": SEED,
    "num_threads": Bound(int, 1, 4096, meaning="a positive number of threads or None"),
    "ema_decay": Bound(float, 0, 1, open_high=True, meaning="a decay in [0, 1) (0: no averaging)"),
    "self_consistency": Bound(float, 0, infinite=True, meaning="a weight >= 0 (0: off)"),
    "consistency_draws": Bound(int, 2, meaning="at least 2 (a variance over draws)"),
    "consistency_datasets": Bound(int, 1, meaning="a positive number of datasets"),
    "observed_weight": Bound(float, 0, infinite=True, meaning="a weight >= 0 (0: off)"),
    "observed_draws": Bound(int, 2, meaning="at least 2 draws"),
    "observed_datasets": Bound(int, 1, meaning="a positive number of datasets"),
    "check_every": Bound(int, 0, meaning="a number of steps >= 0 (0: no checks)"),
}


@dataclass(frozen=True)
class TrainConfig:
    """Training settings.

    Attributes:
        mode: "online" (fresh simulations every step) or "offline" (a fixed budget of `n_simulations`
            datasets, a validation split and early stopping).
        steps: optimizer steps (online) or the cap on steps (offline; epochs = steps / batches per epoch).
        batch_size: datasets per step.
        learning_rate: peak learning rate of Adam.
        warmup_fraction: fraction of steps with a linear warm-up.
        min_lr_fraction: final learning rate as a fraction of the peak.
        schedule: the learning rate after the warm-up: "cosine" (a cosine decay over the whole budget) or "wsd"
            (warm-up, stable, decay: the peak rate until a cooldown of `COOLDOWN` (20 %) of the budget's steps, a
            linear decay that starts at the end of the budget or once the training monitor's verdict comes, so
            that training can stop early on a converged loss; Hu et al. 2024, Hägele et al. 2024).
        clip_norm: gradient-norm clipping threshold.
        n_simulations: offline budget of datasets.
        validation_fraction: offline validation split.
        patience: offline early stopping after this many epochs without improvement.
        time_limit: optional wall-clock limit in seconds (the schedule is then set by elapsed time).
        seed: seed of the simulations and of the network initialization.
        num_threads: torch threads during training (None leaves torch's setting alone).
        progress: show a progress bar.
        ema_decay: 0 (off) or the decay of an exponential moving average of the weights (Polyak averaging),
            e.g. 0.998: the trained estimator gets the averaged weights, which smooth out the noise of the last
            few hundred steps of stochastic gradients on fresh simulations. In offline mode the average is also
            what the validation loss is computed on. On the exact normal benchmark, behind the cosine decay of the
            learning rate, it did not improve the posteriors (BENCHMARKS.md, exact posterior), so it is off by default.
        self_consistency: weight of the self-consistency loss (`mlnpe.consistency`; 0: off), for models with
            tractable densities: the variance over `consistency_draws` draws from q of log p(theta, x) - log q(theta |
            x), added to the NPE loss of every simulated dataset.
        consistency_draws: draws per dataset for that variance (at least 2).
        consistency_datasets: datasets of each batch that get the self-consistency term (a random subset, since
            the datasets of a batch are independent; the term is scaled by batch_size / consistency_datasets).
        observed_loss: the loss on observed data, added to each step when training is given observed data
            (`MultilevelNPE.train(observed=)`; the dataset, its leave-one-group-out subsets and bootstrap resamples
            of its groups, `mlnpe.consistency.ObservedSets`): "reverse_kl" (the negative evidence lower bound
            over reparameterized draws, `mlnpe.consistency.reverse_kl`) or "self_consistency" (as on simulations).
        observed_weight: its weight (0: off).
        observed_draws: draws per observed dataset for that loss (at least 2).
        observed_datasets: observed datasets per step: the dataset itself and observed_datasets - 1 subsets or
            resamples.
        device: where the networks train: "auto" (CUDA when torch finds a GPU, else the CPU), "cpu", "cuda" or
            "cuda:<index>". Simulations and the model's densities stay on the CPU; the trained estimator returns to
            the CPU, where sampling runs.
        check_every: steps between two checks of a training monitor, when training is given one (the PSIS
            certificate of `mlnpe.inference.certificate`, which `FormulaNPE.train` uses whenever it has the
            data); 0: no checks, train the whole budget. A verdict stops training at once under the "cosine"
            schedule, and after the cooldown under "wsd".
    """

    mode: str = "online"
    steps: int = 3000
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_fraction: float = 0.02
    min_lr_fraction: float = 0.01
    schedule: str = "cosine"
    clip_norm: float = 5.0
    n_simulations: int = 20000
    validation_fraction: float = 0.1
    patience: int = 10
    time_limit: float | None = None
    seed: int = 0
    num_threads: int | None = None
    progress: bool = True
    ema_decay: float = 0.0
    self_consistency: float = 0.0
    consistency_draws: int = 4
    consistency_datasets: int = 16
    observed_loss: str = "reverse_kl"
    observed_weight: float = 1.0
    observed_draws: int = 16
    observed_datasets: int = 4
    device: str = "auto"
    check_every: int = 250

    def __post_init__(self) -> None:
        for name, bound in _RANGES.items():
            value = getattr(self, name)
            if value is None and name in ("time_limit", "num_threads"):
                continue
            object.__setattr__(self, name, bound.check(value, name, "TrainConfig"))
        choices = (("mode", ("online", "offline")), ("observed_loss", OBSERVED_LOSSES), ("schedule", SCHEDULES))
        for name, allowed in choices:
            check_choice(getattr(self, name), name, allowed, owner="TrainConfig")
        object.__setattr__(self, "progress", check_flag(self.progress, "progress", owner="TrainConfig"))
        if self.mode == "offline" and self.n_simulations * self.validation_fraction < 1:
            raise ConfigError("TrainConfig: `n_simulations * validation_fraction` leaves no validation datasets.")
        if not isinstance(self.device, str) or not (
            self.device in ("auto", "cpu", "cuda") or (self.device.startswith("cuda:") and self.device[5:].isdigit())
        ):
            raise ConfigError(
                f"TrainConfig `device` must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {self.device!r}."
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        if not isinstance(d, Mapping):
            raise ConfigError(
                f"TrainConfig.from_dict needs a dict of fields, e.g. {{'steps': 500}} in Python or list(steps = 500) "
                f"in R, got {type(d).__name__} {d!r}."
            )
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known, key=str)
        if unknown:
            raise ConfigError(f"TrainConfig got unknown keys {unknown}; known keys: {sorted(known)}.")
        return cls(**d)


def train_config(config: TrainConfig | dict[str, Any] | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The TrainConfig of a `train(config, **overrides)` call: `config` (a TrainConfig, a dict of its fields or None
    for the defaults) with the fields in `overrides` replaced.

    Raises:
        ConfigError: `config` is something else, or a field is unknown or out of range.
    """
    if config is None:
        config = TrainConfig()
    elif isinstance(config, dict):
        config = TrainConfig.from_dict(config)
    elif not isinstance(config, TrainConfig):
        raise ConfigError(
            f"`config` must be a TrainConfig, a dict of its fields or None, got {type(config).__name__}."
        )
    return TrainConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config


def resolve_device(device: str) -> torch.device:
    """The torch device of `TrainConfig.device`: "auto" is CUDA when torch finds a GPU, else the CPU.

    Raises:
        ConfigError: CUDA was asked for and torch finds no GPU.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"TrainConfig `device` is {device!r} but torch finds no CUDA GPU; use 'auto' or 'cpu'.")
    return torch.device(device)


@dataclass
class TrainHistory:
    """Training curves: per logged step the mean training loss, the learning rate and elapsed seconds;
    per epoch (offline) the validation loss; why training stopped (`stopped`: "steps", "time limit", "early
    stopping" or the reason a monitor gave, e.g. "certificate"), the monitor's records (`checks`) and the device
    of the last training."""

    step: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    datasets_seen: int = 0
    train_seconds: float = 0.0
    stopped: str = ""
    checks: list[dict[str, Any]] = field(default_factory=list)
    device: str = "cpu"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def datasets_per_second(self) -> float:
        return self.datasets_seen / max(self.train_seconds, 1e-9)


class _Progress:
    """A minimal progress bar on stderr (no extra dependency); silent when disabled."""

    def __init__(self, schedule: "_Schedule", enabled: bool):
        self.schedule, self.enabled, self.last = schedule, enabled, 0.0

    def update(self, step: int, loss: float, force: bool = False) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.5 and not force):
            return
        self.last = now
        done = min(int(30 * self.schedule.progress(step)), 30)
        elapsed = now - self.schedule.start
        sys.stderr.write(f"\r[{'#' * done}{'.' * (30 - done)}] step {step} {elapsed:6.0f}s loss {loss:8.3f}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")


def _lr_factor(progress: float, config: TrainConfig, cooldown: tuple[float, float] | None = None) -> float:
    """The learning rate as a fraction of its peak at `progress` in [0, 1]: a linear warm-up, then a cosine decay to
    `min_lr_fraction` or ("wsd") the peak until a linear cooldown from progress `cooldown[0]` to `cooldown[1]`
    (by default the last `COOLDOWN` of the budget)."""
    if progress < config.warmup_fraction:
        return max(progress / config.warmup_fraction, 1e-3)
    if config.schedule == "wsd":
        start, end = cooldown or (1.0 - COOLDOWN, 1.0)
        if progress <= start:
            return 1.0
        return config.min_lr_fraction + (1 - config.min_lr_fraction) * max(1 - (progress - start) / (end - start), 0.0)
    p = (progress - config.warmup_fraction) / max(1 - config.warmup_fraction, 1e-9)
    return config.min_lr_fraction + (1 - config.min_lr_fraction) * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def train_estimator(
    estimator: MultilevelEstimator,
    simulate: Callable[[int, torch.Generator], SimulatedBatch],
    config: TrainConfig,
    generator: torch.Generator,
    history: TrainHistory | None = None,
    extra_loss: Callable[[SimulatedBatch, float], Tensor] | None = None,
    monitor: Callable[[int], str | None] | None = None,
) -> TrainHistory:
    """Trains the estimator in place.

    Arguments:
        estimator: the networks (standardization already set).
        simulate: (n, generator) -> SimulatedBatch of n datasets.
        config: training settings.
        generator: randomness of the simulations.
        history: an earlier history to extend (resumed training).
        extra_loss: (batch, progress in [0, 1]) -> a per-dataset loss (B,) (or a scalar) added to the NPE loss of
            each training batch (self-consistency, the observed data's loss).
        monitor: called every `config.check_every` steps with the step number (the estimator in eval mode, no
            gradients); a returned string ends training (at once, or after the "wsd" schedule's cooldown) and is
            recorded as the reason (`TrainHistory.stopped`).
    """
    history = history or TrainHistory()
    old_threads = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    device = local_device(resolve_device(config.device))
    group = process_group(device)
    if group is not None and config.mode != "online":
        raise ConfigError("training on several processes (torchrun) needs TrainConfig mode='online'.")
    if device.type != "cpu":
        estimator.to(device)
        cpu_simulate = simulate

        def simulate(n: int, gen: torch.Generator) -> SimulatedBatch:
            return cpu_simulate(n, gen).to(device)

    try:
        if config.mode == "online":
            _train_online(estimator, simulate, config, generator, history, extra_loss, monitor, group, device)
        else:
            _train_offline(estimator, simulate, config, generator, history, extra_loss, monitor)
    finally:
        torch.set_num_threads(old_threads)
        estimator.to("cpu")
    history.device = str(device)
    estimator.eval()
    return history


class _Objective(torch.nn.Module):
    """A step's per-dataset loss as a module's forward (what DistributedDataParallel wraps): the NPE loss plus the
    extra losses. Summed in float64: an untrained flow's reverse KL on the data can reach 1e36 per dataset, whose
    float32 sum overflows although every term is finite (its gradient then overflows too, and the step is
    skipped)."""

    def __init__(self, estimator: MultilevelEstimator, extra_loss: Callable[[SimulatedBatch, float], Tensor] | None):
        super().__init__()
        self.estimator, self.extra_loss = estimator, extra_loss

    def forward(self, sims: SimulatedBatch, progress: float) -> Tensor:
        loss = self.estimator.loss(sims.global_params, sims.local_params, sims.batch).double()
        if self.extra_loss is not None:
            loss = loss + self.extra_loss(sims, progress).double()
        return loss


def _step(estimator, optimizer, sims: SimulatedBatch, config: TrainConfig, objective: torch.nn.Module,
          progress: float = 0.0) -> float:
    loss = objective(sims, progress).mean()
    if not torch.isfinite(loss):
        raise NumericalError(
            "the training loss became non-finite; lower `learning_rate`, or check the scale of the simulator's output "
            "and of the training data (`observed`)."
        )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(estimator.parameters(), config.clip_norm)
    if torch.isfinite(norm):  # a non-finite gradient (an overflow in one draw of an extra loss) skips the step
        optimizer.step()
    return float(loss.detach())


class _Average:
    """Exponential moving average of the trainable weights (Polyak averaging). Its early steps average with
    weight (1 + n) / (10 + n) instead of `decay`, so the initial weights wash out quickly."""

    def __init__(self, estimator, decay: float):
        self.params = [p for p in estimator.parameters() if p.requires_grad]
        self.decay, self.count = decay, 0
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        decay = min(self.decay, (1 + self.count) / (10 + self.count))
        for shadow, p in zip(self.shadow, self.params):
            shadow.lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchanges the averaged and the live weights (call twice to undo)."""
        for shadow, p in zip(self.shadow, self.params):
            live = p.detach().clone()
            p.copy_(shadow)
            shadow.copy_(live)


class _Schedule:
    """Progress by steps or, with a time limit, by elapsed wall-clock time; the learning rate; the end of training,
    which a monitor's verdict brings forward (at once, or after a "wsd" cooldown)."""

    def __init__(self, config: TrainConfig, total_steps: int):
        self.config, self.total, self.start = config, total_steps, time.perf_counter()
        self.cooldown: tuple[float, float] | None = None  # (start, end) progress of a cooldown a verdict began
        self.verdict: str | None = None

    def progress(self, step: int) -> float:
        by_steps = step / self.total
        if self.config.time_limit is None:
            return by_steps
        return max(by_steps, (time.perf_counter() - self.start) / self.config.time_limit)

    def set_lr(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self.config.learning_rate * _lr_factor(self.progress(step), self.config, self.cooldown)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def decide(self, step: int, verdict: str | None) -> None:
        """Takes a monitor's verdict at `step`: "wsd" cools down from here over `COOLDOWN` of the budget (unless
        its cooldown has begun already), the cosine schedule ends now."""
        if not verdict or self.verdict:
            return
        self.verdict = verdict
        now = self.progress(step)
        if self.config.schedule == "wsd" and now < 1.0 - COOLDOWN:
            self.cooldown = (now, now + COOLDOWN)
        elif self.config.schedule != "wsd":
            self.cooldown = (now, now)

    def done(self, step: int) -> bool:
        """Whether training ends before `step`: the budget is spent, or a verdict's cooldown is over."""
        p = self.progress(step)
        return step >= self.config.steps or p >= 1.0 or (self.cooldown is not None and p >= self.cooldown[1])

    def should_check(self, step: int) -> bool:
        """Whether a monitor runs after `step`: every `check_every` steps until a verdict, not after the last."""
        every = self.config.check_every
        return bool(every) and step % every == 0 and self.verdict is None and not self.done(step)

    def reason(self, step: int) -> str:
        """Why training stopped: the monitor's verdict, its steps, or else its time limit."""
        if self.verdict:
            return self.verdict
        return "time limit" if self.config.time_limit is not None and step < self.config.steps else "steps"


def _log(history: TrainHistory, step: int, losses: list[float], lr: float, start: float, seen: int) -> None:
    history.step.append(step)
    history.loss.append(sum(losses) / len(losses))
    history.lr.append(lr)
    history.seconds.append(history.train_seconds + time.perf_counter() - start)
    del losses[:]


def _check(estimator, monitor, step: int, average: "_Average | None") -> str | None:
    """Runs the monitor on the weights training would return (the average, with EMA)."""
    if average is not None:
        average.swap()
    estimator.eval()
    with torch.no_grad():
        reason = monitor(step)
    estimator.train()
    if average is not None:
        average.swap()
    return reason


def _train_online(estimator, simulate, config, generator, history, extra_loss=None, monitor=None, group=None,
                  device=None) -> None:
    estimator.train()
    objective: torch.nn.Module = _Objective(estimator, extra_loss)
    if group is not None:  # data-parallel (`mlnpe.distributed`): each process its own simulations
        objective = group.wrap(objective, device or torch.device("cpu"))
        generator = torch.Generator().manual_seed(generator.initial_seed() + 1_000_003 * group.rank)
    optimizer = torch.optim.Adam(estimator.parameters(), lr=config.learning_rate)
    schedule = _Schedule(config, config.steps)
    bar = _Progress(schedule, config.progress and (group is None or group.rank == 0))
    average = _Average(estimator, config.ema_decay) if config.ema_decay else None
    start, losses, seen = time.perf_counter(), [], 0
    log_every = max(min(config.steps // 200, 25), 1)
    step = 0
    while True:
        done, progress = schedule.done(step), schedule.progress(step)
        lr = schedule.set_lr(optimizer, step)
        if group is not None:  # rank 0's clock rules: the processes step, stop and check together
            done, progress, lr = group.leader([float(done), progress, lr])
            for param_group in optimizer.param_groups:
                param_group["lr"] = lr
        if done:
            break
        sims = simulate(config.batch_size, generator)
        losses.append(_step(estimator, optimizer, sims, config, objective, progress))
        if average is not None:
            average.update()
        seen += config.batch_size * (1 if group is None else group.world)
        step += 1
        if step % log_every == 0:
            bar.update(step, losses[-1])
            _log(history, step, losses, lr, start, seen)
        if monitor is not None:
            check = schedule.should_check(step)
            if group is not None:
                check = bool(group.leader([float(check)])[0])
            if check:
                verdict = _check(estimator, monitor, step, average) if group is None or group.rank == 0 else None
                schedule.decide(step, verdict if group is None else group.leader_object(verdict))
    bar.close()
    history.stopped = schedule.reason(step)
    if average is not None:
        average.swap()  # the estimator keeps the averaged weights
    history.datasets_seen += seen
    history.train_seconds += time.perf_counter() - start


@torch.no_grad()
def _validation_loss(estimator, batches: list[SimulatedBatch]) -> float:
    estimator.eval()
    total = sum(float(estimator.loss(s.global_params, s.local_params, s.batch).sum()) for s in batches)
    estimator.train()
    return total / sum(s.global_params.shape[0] for s in batches)


def _train_offline(estimator, simulate, config, generator, history, extra_loss=None, monitor=None) -> None:
    # Store the budget as chunks of batch_size datasets, each padded only to its own maximum sizes.
    n_chunks = max(config.n_simulations // config.batch_size, 2)
    n_val = max(int(round(n_chunks * config.validation_fraction)), 1)
    chunks = [simulate(config.batch_size, generator) for _ in range(n_chunks)]
    train_chunks, val_chunks = chunks[n_val:], chunks[:n_val]
    objective = _Objective(estimator, extra_loss)
    estimator.train()
    optimizer = torch.optim.Adam(estimator.parameters(), lr=config.learning_rate)
    schedule = _Schedule(config, config.steps)
    bar = _Progress(schedule, config.progress)
    average = _Average(estimator, config.ema_decay) if config.ema_decay else None
    start, losses, seen, step = time.perf_counter(), [], 0, 0
    best, best_state, stale = math.inf, None, 0
    while not schedule.done(step) and stale < config.patience:
        order = torch.randperm(len(train_chunks), generator=generator).tolist()
        for i in order:
            if schedule.done(step):
                break
            lr = schedule.set_lr(optimizer, step)
            losses.append(_step(estimator, optimizer, train_chunks[i], config, objective, schedule.progress(step)))
            if average is not None:
                average.update()
            seen += config.batch_size
            step += 1
            if monitor is not None and schedule.should_check(step):
                schedule.decide(step, _check(estimator, monitor, step, average))
        bar.update(step, losses[-1], force=True)
        _log(history, step, losses, lr, start, seen)
        if average is not None:
            average.swap()  # validate (and keep) the averaged weights
        val = _validation_loss(estimator, val_chunks)
        history.val_loss.append(val)
        if val < best - 1e-4:
            best, best_state, stale = val, copy.deepcopy(estimator.state_dict()), 0
        else:
            stale += 1
        if average is not None:
            average.swap()
    bar.close()
    verdict = schedule.verdict
    history.stopped = verdict or ("early stopping" if stale >= config.patience else schedule.reason(step))
    if best_state is not None and not verdict:  # a monitor's verdict is on the current weights: keep them
        estimator.load_state_dict(best_state)
    history.datasets_seen += seen
    history.train_seconds += time.perf_counter() - start
