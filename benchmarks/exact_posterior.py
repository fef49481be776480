"""Exact-posterior benchmark of the ML-NPE engine.

Model: y_ij ~ Normal(alpha_j, 1), alpha_j ~ Normal(mu, tau), mu ~ Normal(0, 1), tau ~ HalfNormal(1), whose
posterior mlnpe.examples.exact computes exactly. Trains an estimator for J in [5, 30] and N_j in [2, 50], then reports
over held-out datasets the error of posterior means in units of the exact posterior sd, the sd ratio, and SBC
rank uniformity over many datasets (local parameters pooled over groups).

    python benchmarks/exact_posterior.py --quick     # < 3 minutes; last line: one JSON object
    python benchmarks/exact_posterior.py             # the full run reported in BENCHMARKS.md
    python benchmarks/exact_posterior.py --refine 20 # also HMC-refined draws (mlnpe.inference.refine) on 20 datasets
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch

from mlnpe import MultilevelNPE, NetworkConfig, TrainConfig
from mlnpe.inference.calibration import pool_local_ranks, sbc_ranks, sbc_uniformity_pvalues
from mlnpe.examples.exact import normal_model_posterior
from mlnpe.core.models import NormalHierarchical
from mlnpe.inference.refine import RefineConfig, refine
from mlnpe.core.spec import simulate_batch

GROUPS, ROWS = (5, 30), (2, 50)


def _errors(datasets, draws) -> dict[str, dict[str, float]]:
    """Posterior-mean error (in exact sds) and sd ratio per block over datasets; draws: (mu, tau, alpha) each."""
    err = {"mu": [], "tau": [], "alpha": []}
    ratio = {"mu": [], "tau": [], "alpha": []}
    for data, (mu, tau, alpha) in zip(datasets, draws):
        exact = normal_model_posterior([data.group(j)[0][:, 0] for j in range(data.n_groups)])
        for name, d, m, s in (("mu", mu, exact.mu_mean, exact.mu_sd), ("tau", tau, exact.tau_mean, exact.tau_sd)):
            err[name].append(abs(d.mean() - m) / s)
            ratio[name].append(d.std(ddof=1) / s)
        err["alpha"].extend(np.abs(alpha.mean(0) - exact.alpha_mean) / exact.alpha_sd)
        ratio["alpha"].extend(alpha.std(0, ddof=1) / exact.alpha_sd)
    return {
        k: {
            "mean_err_sd": float(np.mean(err[k])),
            "sd_ratio": float(np.mean(ratio[k])),
            "median_err_sd": float(np.median(err[k])),
            "median_sd_ratio": float(np.median(ratio[k])),
            "max_sd_ratio": float(np.max(ratio[k])),
        }
        for k in err
    }


def accuracy(
    npe: MultilevelNPE, n_datasets: int, n_draws: int, seed: int, refined: int = 0
) -> tuple[dict[str, dict[str, float]], dict | None]:
    """Errors of the amortized draws over held-out datasets; with `refined` > 0 also, on the first `refined`
    datasets, those of the amortized and of the HMC-refined draws (mlnpe.inference.refine) side by side."""
    sims = simulate_batch(npe.model, n_datasets, GROUPS, ROWS, torch.Generator().manual_seed(seed))
    datasets = sims.batch.to_datasets()
    draws = [(d["mu"], d["tau"], d["alpha"]) for d in npe.sample(datasets, n_draws, seed=seed)]
    if not refined:
        return _errors(datasets, draws), None
    runs = [refine(npe.estimator, npe.model, data, n_draws, RefineConfig(seed=seed + i),
                   labels=(npe.global_names, npe.local_names)) for i, data in enumerate(datasets[:refined])]
    hmc = [(r.global_draws[:, 0], r.global_draws[:, 1], r.local_draws[..., 0]) for r in runs]
    comparison = {
        "datasets": refined,
        "amortized": _errors(datasets[:refined], draws[:refined]),
        "refined": _errors(datasets[:refined], hmc),
        "seconds_per_fit": round(float(np.mean([r.seconds for r in runs])), 1),
        "max_rhat": round(max(r.max_rhat for r in runs), 3),
        "min_ess_bulk": round(min(r.min_ess for r in runs)),
        "divergences": int(sum(r.divergences for r in runs)),
    }
    return _errors(datasets, draws), comparison


def sbc(npe: MultilevelNPE, n_datasets: int, n_draws: int, seed: int) -> dict[str, float]:
    """SBC rank-uniformity p-values (chi-square) for mu, tau and alpha pooled over groups."""
    sims = simulate_batch(npe.model, n_datasets, GROUPS, ROWS, torch.Generator().manual_seed(seed))
    g, l = npe.sample_batch(sims.batch, n_draws, torch.Generator().manual_seed(seed + 1))
    rng = np.random.default_rng(seed)
    g_ranks = sbc_ranks(g.permute(1, 0, 2).numpy(), sims.global_params.numpy(), rng=rng)
    l_ranks = sbc_ranks(l.permute(1, 0, 2, 3).numpy(), sims.local_params.numpy(), rng=rng)
    pooled = pool_local_ranks(l_ranks, sims.batch.group_mask.numpy())
    p_global = sbc_uniformity_pvalues(g_ranks, n_draws)
    p_local = sbc_uniformity_pvalues(pooled, n_draws)
    return {"mu": float(p_global[0]), "tau": float(p_global[1]), "alpha": float(p_local[0])}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short training and fewer datasets (< 3 minutes)")
    parser.add_argument("--seconds", type=float, default=None, help="training time limit in seconds")
    parser.add_argument("--steps", type=int, default=None, help="train for this many steps instead of a time limit")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--save", default=None, help="directory to save the trained estimator")
    parser.add_argument("--network", default="{}", help='NetworkConfig parts to change as nested JSON, e.g. {"summary": {"hidden": 32}}')
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ema", type=float, default=0.0,
                        help="TrainConfig.ema_decay: average the weights over training (0: off)")
    parser.add_argument("--self-consistency", type=float, default=0.0,
                        help="TrainConfig.self_consistency: weight of the self-consistency loss (0: off)")
    parser.add_argument("--refine", type=int, default=0,
                        help="also refine the first N held-out fits by HMC (mlnpe.inference.refine) and report both")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seconds = args.seconds or (90.0 if args.quick else 420.0)
    n_heldout, n_sbc = (20, 200) if args.quick else (50, 500)

    network = NetworkConfig.from_dict(json.loads(args.network))
    npe = MultilevelNPE(NormalHierarchical(), groups=GROUPS, rows=ROWS, network=network, seed=args.seed)
    config = TrainConfig(
        steps=args.steps or 1_000_000,
        batch_size=args.batch,
        learning_rate=args.lr,
        time_limit=None if args.steps else seconds,
        seed=args.seed,
        ema_decay=args.ema,
        self_consistency=args.self_consistency,
    )
    history = npe.train(config)
    if args.save:
        npe.save(args.save)
    t0 = time.perf_counter()
    acc, refined = accuracy(npe, n_heldout, 2000, seed=10_000 + args.seed, refined=args.refine)
    p = sbc(npe, n_sbc, 100, seed=20_000 + args.seed)
    result = {
        "mean_err_sd": max(v["mean_err_sd"] for v in acc.values()),
        "sd_ratio_min": min(v["sd_ratio"] for v in acc.values()),
        "sd_ratio_max": max(v["sd_ratio"] for v in acc.values()),
        "sbc_min_p": min(p.values()),
        "median_sd_ratio_min": min(v["median_sd_ratio"] for v in acc.values()),
        "median_sd_ratio_max": max(v["median_sd_ratio"] for v in acc.values()),
        "train_seconds": round(history.train_seconds, 1),
        "per_parameter": {k: {**acc[k], "sbc_p": p[k]} for k in acc},
        "datasets_per_second": round(history.datasets_per_second, 1),
        "steps": history.step[-1] if history.step else 0,
        "eval_seconds": round(time.perf_counter() - t0, 1),
        "heldout_datasets": n_heldout,
        "sbc_datasets": n_sbc,
        "threads": args.threads,
        "network": network.to_dict(),
        "learning_rate": args.lr,
        "batch_size": args.batch,
        "ema_decay": args.ema,
        "self_consistency": args.self_consistency,
        "machine": f"{platform.machine()} {platform.processor() or ''} ({torch.get_num_threads()} threads)".strip(),
        "command": "python " + " ".join(sys.argv),
    }
    if refined is not None:
        result["refined"] = refined
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
