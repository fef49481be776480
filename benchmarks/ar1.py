"""Case study: the hierarchical AR(1) of Habermann et al. (2024), sec. 3.2 (eqs. 16-22), on simulated data.

Steps: train an ML-NPE (recurrent local summary, set-transformer global summary) amortized over J in [10, 30]
series of T in [5, 30] steps for a wall-clock budget, with the reverse KL of the Stan comparison's datasets (the
data at hand; `--observed-weight 0` trains on simulations alone); SBC on simulated datasets (global parameters, and local
ones pooled over groups) with ECDF-difference plots and 99 % simultaneous bands; recovery plots; comparison with
Stan (4 chains, 1000 warm-up + 1000 draws) on simulated datasets of J = 16 series of T = 16 steps (the size of
the paper's Eurostat data): per-parameter mean and sd agreement, 95 % interval overlap, pooling factors (eq. 15),
one-step-ahead posterior predictive intervals; the same comparison for the fits refined by HMC through the
amortizer (mlnpe.inference.refine; `--no-refine` skips it); runtime of Stan per fit against mlnpe's training and per-fit time
with the break-even number of fits.

    python benchmarks/ar1.py --quick         # < ~4 minutes when the Stan model is already compiled
    python benchmarks/ar1.py                 # default: 420 s training, about 12 minutes on 2 CPU cores

Figures go to benchmarks/figures/ar1_*.png; the last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mlnpe import TrainConfig
from mlnpe.case_studies.ar1 import (    GLOBAL_NAMES,
    LOCAL_NAMES,
    ar1_estimator,
    fit_ar1_stan,
    posterior_predictive,
)
from mlnpe.inference.calibration import pool_local_ranks, sbc_check, sbc_ranks
from mlnpe.inference.plots import plot_pooling, plot_recovery, plot_sbc_ecdf
from mlnpe.inference.pooling import pooling_factor
from mlnpe.inference.recovery import recovery
from mlnpe.core.draws import PosteriorDraws
from mlnpe.stan import StanDiagnosticWarning
from mlnpe.inference.refine import RefineConfig, refine
from mlnpe.core.spec import simulate_batch

FIGURES = Path(__file__).resolve().parent / "figures"
HYPER_LABELS = ("alpha", "beta", "gamma", "delta", "log_sigma")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=None, help="training wall-clock budget (default 420)")
    p.add_argument("--steps", type=int, default=None,
                   help="train for this many steps instead of a time limit (reproducible figures)")
    p.add_argument("--quick", action="store_true", help="small budget: 60 s training, 100 SBC datasets")
    p.add_argument("--sbc-datasets", type=int, default=150)
    p.add_argument("--sbc-draws", type=int, default=250)
    p.add_argument("--stan-datasets", type=int, default=2)
    p.add_argument("--fit-draws", type=int, default=4000, help="mlnpe draws per fit in the Stan comparison")
    p.add_argument("--observed-weight", type=float, default=1.0,
                   help="weight of the comparison datasets' reverse KL in training (0: simulations alone)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-refine", action="store_true", help="skip the HMC refinement (mlnpe.inference.refine) of each fit")
    args = p.parse_args()
    args.refine = not args.no_refine
    if args.quick:
        args.sbc_datasets, args.sbc_draws = 100, 200
    args.seconds = args.seconds or (60.0 if args.quick else 420.0)
    if args.sbc_datasets < 100 or args.stan_datasets < 1:
        p.error("--sbc-datasets must be >= 100 and --stan-datasets >= 1")
    return args


def comparison_datasets(model, n: int) -> list:
    """The `n` simulated datasets (J = 16, T = 16) that the Stan comparison fits."""
    return simulate_batch(model, n, (16, 16), (16, 16), torch.Generator().manual_seed(4242)).batch.to_datasets()


def train(args: argparse.Namespace):
    """Trains on simulations and, with `--observed-weight` > 0, the reverse KL of the comparison datasets (the data
    at hand, as `mlnpe()` trains on its data; `MultilevelNPE.train(observed=)`)."""
    npe = ar1_estimator(seed=args.seed)
    config = TrainConfig(steps=args.steps or 10**7, batch_size=64, learning_rate=1e-3,
                         time_limit=None if args.steps else args.seconds, seed=args.seed,
                         progress=False, observed_weight=args.observed_weight)  # fmt: skip
    observed = comparison_datasets(npe.model, args.stan_datasets) if args.observed_weight else None
    history = npe.train(config, observed=observed)
    return npe, {
        "observed_weight": args.observed_weight,
        "seconds": round(history.train_seconds, 1),
        "steps": int(history.datasets_seen) // config.batch_size,
        "datasets": int(history.datasets_seen),
        "final_loss": round(float(np.mean(history.loss[-5:])), 3) if history.loss else None,
    }


# ---- SBC and recovery --------------------------------------------------------------------------------------


def sbc(npe, args: argparse.Namespace) -> dict:
    sims = simulate_batch(npe.model, args.sbc_datasets, npe.groups, npe.rows, torch.Generator().manual_seed(777))
    g_chunks, l_chunks = [], []
    generator = torch.Generator().manual_seed(778)
    t0 = time.perf_counter()
    for start in range(0, args.sbc_datasets, 25):
        batch = sims.batch.index(slice(start, start + 25))
        g, l = npe.sample_batch(batch, args.sbc_draws, generator)
        pad = sims.batch.group_mask.shape[1] - l.shape[2]
        g_chunks.append(g.permute(1, 0, 2).numpy())
        l_chunks.append(np.pad(l.permute(1, 0, 2, 3).numpy(), ((0, 0), (0, 0), (0, pad), (0, 0))))
    sample_s = time.perf_counter() - t0
    g_draws, l_draws = np.concatenate(g_chunks), np.concatenate(l_chunks)
    g_true, l_true = sims.global_params.numpy(), sims.local_params.numpy()
    mask = sims.batch.group_mask.numpy()
    np.moveaxis(l_draws, 1, 2)[~mask] = 1.0  # padded groups hold junk (possibly inf); the diagnostics need finite values there
    rng = np.random.default_rng(1)
    ranks_g = sbc_ranks(g_draws, g_true, rng=rng)
    ranks_l = pool_local_ranks(sbc_ranks(l_draws, l_true, mask=mask, rng=rng), mask)
    local_labels = [*LOCAL_NAMES[:4], "sigma (= log sigma)"]
    plot_sbc_ecdf(ranks_g, args.sbc_draws, GLOBAL_NAMES, rng=np.random.default_rng(2), path=FIGURES / "ar1_sbc_global.png")
    plot_sbc_ecdf(ranks_l, args.sbc_draws, local_labels, rng=np.random.default_rng(3), path=FIGURES / "ar1_sbc_local.png")
    check_g = sbc_check(ranks_g, args.sbc_draws, rng=np.random.default_rng(2))
    check_l = sbc_check(ranks_l, args.sbc_draws, rng=np.random.default_rng(3))
    # recovery on the first 50 datasets (the paper's Figure 3 uses 50)
    n_rec = min(50, args.sbc_datasets)
    plot_recovery(g_draws[:n_rec], g_true[:n_rec], GLOBAL_NAMES, path=FIGURES / "ar1_recovery_global.png")
    l_log = np.concatenate([l_draws[..., :4], np.log(np.maximum(l_draws[..., 4:], 1e-300))], -1)
    l_true_log = np.concatenate([l_true[..., :4], np.log(l_true[..., 4:])], -1)
    plot_recovery(l_log[:n_rec], l_true_log[:n_rec], HYPER_LABELS, mask=mask[:n_rec],
                  path=FIGURES / "ar1_recovery_local.png")  # fmt: skip
    rec_g = recovery(g_draws, g_true)
    rec_l = recovery(l_log, l_true_log, mask=mask)

    def per_param(names, values):
        return {n: round(float(v), 3) for n, v in zip(names, values)}

    return {
        "datasets": args.sbc_datasets,
        "draws": args.sbc_draws,
        "local_cases": int(ranks_l.shape[0]),
        "sample_seconds": round(sample_s, 1),
        "global_inside_band": per_param(GLOBAL_NAMES, check_g["inside_band"]),
        "local_inside_band": per_param(LOCAL_NAMES, check_l["inside_band"]),
        "global_pvalue": per_param(GLOBAL_NAMES, check_g["pvalue"]),
        "local_pvalue": per_param(LOCAL_NAMES, check_l["pvalue"]),
        "global_pass": int(check_g["inside_band"].sum()),
        "local_pass": int(check_l["inside_band"].sum()),
        "global_coverage95": per_param(GLOBAL_NAMES, rec_g["coverage"]),
        "local_coverage95": per_param(HYPER_LABELS, rec_l["coverage"]),
        "global_correlation": per_param(GLOBAL_NAMES, rec_g["correlation"]),
        "local_correlation": per_param(HYPER_LABELS, rec_l["correlation"]),
    }


# ---- Stan comparison ---------------------------------------------------------------------------------------


def _stats(draws) -> dict[str, np.ndarray]:
    """Per scalar (globals, then locals parameter by parameter over groups; sigma on the log scale)."""
    local = draws.local_draws.copy()
    local[..., 4] = np.log(local[..., 4])
    m = np.concatenate([draws.global_draws, np.transpose(local, (0, 2, 1)).reshape(draws.n_draws, -1)], 1)
    lower, upper = np.quantile(m, [0.025, 0.975], axis=0)
    return {"mean": m.mean(0), "sd": m.std(0, ddof=1), "lower": lower, "upper": upper}


def _pooling(draws) -> np.ndarray:
    """(groups, 5) pooling factors of alpha, beta, gamma, delta and log sigma."""
    local = draws.local_draws.copy()
    local[..., 4] = np.log(local[..., 4])
    return pooling_factor(local, draws.global_draws[:, 0::2], draws.global_draws[:, 1::2])


def _agreement(ours, stan) -> dict:
    """Per-block agreement of two sets of draws of one dataset (ours against Stan's)."""
    a, b = _stats(ours), _stats(stan)
    inter = np.clip(np.minimum(a["upper"], b["upper"]) - np.maximum(a["lower"], b["lower"]), 0, None)
    union = np.maximum(a["upper"], b["upper"]) - np.minimum(a["lower"], b["lower"])
    n_g = len(GLOBAL_NAMES)
    z = np.abs(a["mean"] - b["mean"]) / b["sd"]
    ratio = a["sd"] / b["sd"]
    overlap = inter / union
    return {
        "global": {"median_abs_mean_diff_over_stan_sd": round(float(np.median(z[:n_g])), 3),
                   "max_abs_mean_diff_over_stan_sd": round(float(z[:n_g].max()), 3),
                   "median_sd_ratio": round(float(np.median(ratio[:n_g])), 3),
                   "sd_ratio_range": [round(float(ratio[:n_g].min()), 3), round(float(ratio[:n_g].max()), 3)],
                   "median_interval_overlap": round(float(np.median(overlap[:n_g])), 3)},
        "local": {"median_abs_mean_diff_over_stan_sd": round(float(np.median(z[n_g:])), 3),
                  "q90_abs_mean_diff_over_stan_sd": round(float(np.quantile(z[n_g:], 0.9)), 3),
                  "median_sd_ratio": round(float(np.median(ratio[n_g:])), 3),
                  "sd_ratio_q10_q90": [round(float(np.quantile(ratio[n_g:], q)), 3) for q in (0.1, 0.9)],
                  "median_interval_overlap": round(float(np.median(overlap[n_g:])), 3)},
        "per_global": {name: {"mean_mlnpe": round(float(a["mean"][k]), 3), "mean_stan": round(float(b["mean"][k]), 3),
                              "sd_mlnpe": round(float(a["sd"][k]), 3), "sd_stan": round(float(b["sd"][k]), 3),
                              "abs_mean_diff_over_stan_sd": round(float(z[k]), 3),
                              "sd_ratio": round(float(ratio[k]), 3), "overlap": round(float(overlap[k]), 3)}
                       for k, name in enumerate(GLOBAL_NAMES)},
        "pooling_abs_diff_median": round(float(np.median(np.abs(_pooling(ours) - _pooling(stan)))), 3),
    }  # fmt: skip


def _refined(npe, data, n_draws: int, seed: int):
    """HMC draws of the exact posterior through the amortizer (mlnpe.inference.refine), as PosteriorDraws."""
    result = refine(npe.estimator, npe.model, data, n_draws, RefineConfig(seed=seed),
                    labels=(npe.global_names, npe.local_names))
    draws = PosteriorDraws(result.global_draws[:n_draws], result.local_draws[:n_draws], tuple(npe.global_names),
                           tuple(npe.local_names), data.levels, None)
    diagnostics = {"seconds": round(result.seconds, 1), "rhat_max": round(result.max_rhat, 3),
                   "ess_bulk_min": round(result.min_ess), "divergences": result.divergences,
                   "accept_rate": round(result.accept_rate, 2)}
    return draws, diagnostics


def compare_with_stan(npe, args: argparse.Namespace) -> tuple[dict, list]:
    datasets = comparison_datasets(npe.model, args.stan_datasets)
    rows, kappas, timings, fits = [], [], [], []
    for i, data in enumerate(datasets):
        npe.sample(data, n_draws=100, seed=0, log_prob=False)  # warm-up call, not timed
        t0 = time.perf_counter()
        ours = npe.sample(data, n_draws=args.fit_draws, seed=i, log_prob=False)
        ours_s = time.perf_counter() - t0
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StanDiagnosticWarning)
            ref = fit_ar1_stan(data, chains=4, warmup=1000, draws=1000, seed=10 + i, backend="pystan")
        kappas.append((_pooling(ours), _pooling(ref.draws)))
        row = {"dataset": i, **_agreement(ours, ref.draws)}
        if args.refine:
            refined, diagnostics = _refined(npe, data, args.fit_draws, seed=100 + i)
            row["refined"] = {**_agreement(refined, ref.draws), "hmc": diagnostics}
        row.update({
            "stan": {k: (round(v, 3) if isinstance(v, float) else v) for k, v in ref.diagnostics.items()},
            "stan_warnings": [str(w.message)[:120] for w in caught],
            "mlnpe_fit_seconds": round(ours_s, 3),
        })  # fmt: skip
        rows.append(row)
        timings.append((ours_s, ref.diagnostics["sample_seconds"], ref.diagnostics["compile_seconds"]))
        fits.append((data, ours, ref.draws))
    ka = np.stack([k[0] for k in kappas])
    kb = np.stack([k[1] for k in kappas])
    plot_pooling(ka.reshape(-1, 5), kb.reshape(-1, 5), path=FIGURES / "ar1_pooling.png")  # all params, groups, datasets
    pooling = {
        "correlation": round(float(np.corrcoef(ka.ravel(), kb.ravel())[0, 1]), 3),
        "median_abs_diff": round(float(np.median(np.abs(ka - kb))), 3),
        "per_param_median_abs_diff": {h: round(float(np.median(np.abs(ka[..., k] - kb[..., k]))), 3)
                                      for k, h in enumerate(HYPER_LABELS)},  # fmt: skip
    }
    return {"datasets": rows, "pooling": pooling, "timings": timings}, fits


def plot_ppc(fit, path: Path, n_groups: int = 6) -> None:
    """One-step-ahead 95 % posterior predictive intervals of mlnpe (band) and Stan (lines), as in Figure 2."""
    from matplotlib.figure import Figure

    data, ours, ref = fit
    pp_a = posterior_predictive(ours, data, seed=1)
    pp_b = posterior_predictive(ref, data, seed=2)
    fig = Figure(figsize=(10, 5.6), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    for j, ax in enumerate(axes[:n_groups]):
        sel = pp_a["group"] == j
        t = pp_a["step"][sel] + 1
        lo_a, hi_a = np.quantile(pp_a["y_rep"][:, sel], [0.025, 0.975], axis=0)
        lo_b, hi_b = np.quantile(pp_b["y_rep"][:, sel], [0.025, 0.975], axis=0)
        ax.fill_between(t, lo_a, hi_a, color="tab:blue", alpha=0.3, label="mlnpe 95%")
        ax.plot(t, lo_b, color="tab:red", lw=1, label="Stan 95%")
        ax.plot(t, hi_b, color="tab:red", lw=1)
        ax.plot(np.arange(1, data.n_rows[j] + 1), data.group(j)[0][:, 0], "o", color="tab:blue", ms=3, label="y")
        ax.set_title(f"series {data.levels[j]}", fontsize=9)
        ax.set_xlabel("t")
    axes[0].legend(fontsize=7, frameon=False)
    fig.savefig(path, dpi=110)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    FIGURES.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/ar1.py " + " ".join(sys.argv[1:])
    t_start = time.perf_counter()
    npe, training = train(args)
    print(f"trained: {training}", flush=True)
    calibration = sbc(npe, args)
    print(f"SBC: global pass {calibration['global_pass']}/10, local pass {calibration['local_pass']}/5", flush=True)
    stan, fits = compare_with_stan(npe, args)
    plot_ppc(fits[0], FIGURES / "ar1_ppc.png")
    ours_s = float(np.mean([t[0] for t in stan["timings"]]))
    stan_s = float(np.mean([t[1] for t in stan["timings"]]))
    runtime = {
        "train_seconds": training["seconds"],
        "mlnpe_seconds_per_fit": round(ours_s, 3),
        "stan_sample_seconds_per_fit": round(stan_s, 2),
        "stan_compile_seconds_first_fit": round(stan["timings"][0][2], 1),
        "break_even_fits": math.ceil(training["seconds"] / (stan_s - ours_s)) if stan_s > ours_s else None,
    }
    for row in stan["datasets"]:
        print(f"Stan dataset {row['dataset']}: global {row['global']}, local {row['local']}, "
              f"pooling |diff| {row['pooling_abs_diff_median']}, Stan {row['stan']}", flush=True)  # fmt: skip
        if "refined" in row:
            r = row["refined"]
            print(f"  refined (HMC {r['hmc']}): global {r['global']}, local {r['local']}, "
                  f"pooling |diff| {r['pooling_abs_diff_median']}", flush=True)  # fmt: skip
    print(f"pooling: {stan['pooling']}; runtime: {runtime}", flush=True)
    result = {
        "benchmark": "ar1",
        "command": command,
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''}, torch threads {args.threads}".strip(),
        "torch": torch.__version__,
        "training": training,
        "sbc": calibration,
        "stan_comparison": {"datasets": stan["datasets"], "pooling": stan["pooling"], "J": 16, "T": 16,
                            "mlnpe_draws": args.fit_draws, "stan_chains": 4, "stan_warmup": 1000, "stan_draws": 1000},
        "runtime": runtime,
        "total_seconds": round(time.perf_counter() - t_start, 1),
        "figures": sorted(str(p.relative_to(FIGURES.parent.parent)) for p in FIGURES.glob("ar1_*.png")),
    }  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
