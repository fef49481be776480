"""Demo: train a two-level model for a couple of minutes, then fit a new dataset in milliseconds.

    python -m mlnpe.examples.demo [--seconds 120] [--threads 2]

Model: y_ij ~ Normal(alpha_j, 1), alpha_j ~ Normal(mu, tau), mu ~ Normal(0, 1), tau ~ HalfNormal(1). Its exact
posterior is known (mlnpe.examples.exact), so the demo prints mlnpe's posterior beside the truth and the exact answer.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ..amortizer import MultilevelNPE
from ..core.data import GroupedData
from .exact import normal_model_posterior
from ..core.models import NormalHierarchical
from ..train import TrainConfig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0, help="training time in seconds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    model = NormalHierarchical()
    npe = MultilevelNPE(model, groups=(5, 30), rows=(2, 50), seed=args.seed)
    print(f"Training for {args.seconds:.0f} s on {args.threads} CPU thread(s) (J in [5, 30], N_j in [2, 50]) ...")
    history = npe.train(TrainConfig(steps=1_000_000, batch_size=128, time_limit=args.seconds, seed=args.seed))
    print(f"trained on {history.datasets_seen} simulated datasets ({history.datasets_per_second:.0f}/s)\n")

    # A new dataset with known truth: mu = 0.5, tau = 0.8, 12 groups of 3 to 40 rows.
    rng = np.random.default_rng(args.seed)
    mu, tau = 0.5, 0.8
    alpha = rng.normal(mu, tau, size=12)
    groups = [rng.normal(a, 1.0, size=rng.integers(3, 41)) for a in alpha]
    data = GroupedData.from_groups(groups, levels=[f"g{j + 1}" for j in range(12)])

    t = time.perf_counter()
    draws = npe.sample(data, 4000, seed=args.seed)
    ms = 1000 * (time.perf_counter() - t)
    exact = normal_model_posterior(groups)
    summary = draws.summary()
    summary.insert(0, "true", [mu, tau, *alpha])
    summary["exact_mean"] = [exact.mu_mean, exact.tau_mean, *exact.alpha_mean]
    summary["exact_sd"] = [exact.mu_sd, exact.tau_sd, *exact.alpha_sd]
    print(f"4000 posterior draws in {ms:.1f} ms:")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
