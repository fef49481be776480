"""Case study: the hierarchical diffusion decision model (Habermann et al., section 3.3, Figures 8-10).

Steps, each printed as it finishes:
1. the exact first-passage sampler: cost per 10^5 trials (prior parameters) and accuracy against the analytic
   choice probability and mean decision time;
2. a prior predictive check against the lexical decision data (accuracy condition, one block);
3. training of both variants (shared beta, eq. 23; subject-level beta_j, eq. 25) for `--seconds` each, on
   simulations and the block's own reverse KL (`--observed-weight`, 1; 0: simulations alone);
4. SBC on `--sbc` simulated datasets (J in [10, 30], N in [1, 100]) with ECDF-difference plots (99 % bands) and
   a recovery plot;
5. the fit of the shared-beta model to the data against Stan (4 chains, 1000 warm-up + 1000 draws by default);
6. leave-one-subject-out CV (eq. 26) of both variants, the elpd difference with its SE and the refit time;
7. runtime against Stan and the break-even number of fits (Figure 10).

    python benchmarks/ddm.py --seconds 300          # the full run (about 20 min on 2 CPU cores)
    python benchmarks/ddm.py --quick                # under 5 min: small budgets, short Stan chains

PNGs go to benchmarks/figures/ddm_*.png; the last printed line is one JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.case_studies.ddm import (    DDMPriors,
    HierarchicalDDM,
    HierarchicalDDMBeta,
    compare_logo,
    ddm_network,
    fit_stan_ddm,
    load_speed_acc,
    logo_elpd,
    mean_decision_time,
    sample_wiener,
    upper_probability,
)
from mlnpe.core.data import make_masks
from mlnpe.core.draws import PosteriorDraws
from mlnpe.inference.sbc import sbc as run_sbc
from mlnpe.inference.refine import RefineConfig, refine
from mlnpe.core.spec import simulate_batch

ROOT = Path(__file__).resolve().parents[1]
FIGURES = ROOT / "benchmarks" / "figures"
DATA = ROOT.parent / "shared" / "data" / "speed_acc" / "speed_acc.csv"


def log(message: str) -> None:
    print(message, flush=True)


# ---- 1. simulator -------------------------------------------------------------------------------------------
def simulator_check(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    model = HierarchicalDDM()
    sample_wiener(torch.zeros(10), 1.0, 0.5, 0.3, g)  # builds the inverse-CDF table once
    glob = model.sample_global(1000, g)
    loc = model.sample_local(glob, 100, g).double()  # 10^5 trials with prior parameters
    start = time.perf_counter()
    sample_wiener(loc[..., 0], loc[..., 1], glob[:, None, 6].double(), loc[..., 2], g)
    cost = time.perf_counter() - start
    worst_p, worst_m = 0.0, 0.0
    n = 200_000
    for v, a, w in [(0.5, 1.0, 0.5), (-1.5, 1.2, 0.3), (2.5, 2.0, 0.6), (0.0, 0.8, 0.5), (4.0, 1.0, 0.5)]:
        rt, resp = sample_wiener(torch.full((n,), v), a, w, 0.0, g)
        p = float(upper_probability(torch.tensor(v), torch.tensor(a), torch.tensor(w)))
        m = float(mean_decision_time(torch.tensor(v), torch.tensor(a), torch.tensor(w)))
        worst_p = max(worst_p, abs(float(resp.mean()) - p) / math.sqrt(p * (1 - p) / n))
        worst_m = max(worst_m, abs(float(rt.mean()) - m) / (float(rt.std()) / math.sqrt(n)))
    return {"seconds_per_1e5_trials": round(cost, 3), "max_abs_z_choice_prob": round(worst_p, 2),
            "max_abs_z_mean_rt": round(worst_m, 2), "trials_per_case": n}  # fmt: skip


# ---- 2. prior predictive ------------------------------------------------------------------------------------
def statistics_of(rt: np.ndarray, resp: np.ndarray, subject: np.ndarray, n_subjects: int) -> dict:
    sds = [rt[subject == j].std() for j in range(n_subjects)]
    return {"q01": np.quantile(rt, 0.01), "median": np.median(rt), "q99": np.quantile(rt, 0.99),
            "p_upper": resp.mean(), "min_subject_sd": min(sds), "max_subject_sd": max(sds)}  # fmt: skip


def prior_predictive(data, n_sims: int, seed: int, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = torch.Generator().manual_seed(seed)
    model = HierarchicalDDM()
    j, n = data.n_groups, int(data.n_rows.max())
    group_mask, row_mask = make_masks(torch.full((n_sims,), j), torch.full((n_sims, j), n))
    sims = simulate_batch(model, n_sims, (j, j), (n, n), g)
    subject = np.repeat(np.arange(j), n)
    prior = {k: [] for k in ("q01", "median", "q99", "p_upper", "min_subject_sd", "max_subject_sd")}
    for i in range(n_sims):
        y = sims.batch.y[i].reshape(-1, 2).numpy()
        for k, value in statistics_of(y[:, 0], y[:, 1], subject, j).items():
            prior[k].append(value)
    observed = statistics_of(data.y[:, 0], data.y[:, 1], np.repeat(np.arange(j), data.n_rows), j)
    fig, axes = plt.subplots(1, 6, figsize=(16, 2.6))
    out = {}
    for ax, (k, values) in zip(axes, prior.items()):
        values = np.asarray(values)
        ax.hist(values, bins=30, color="0.7")
        ax.axvline(observed[k], color="tab:red")
        ax.set_title(k, fontsize=9)
        out[k] = {"data": round(float(observed[k]), 3), "prior_5%": round(float(np.quantile(values, 0.05)), 3),
                  "prior_95%": round(float(np.quantile(values, 0.95)), 3),
                  "data_percentile": round(float((values < observed[k]).mean() * 100), 1)}  # fmt: skip
    fig.suptitle("Prior predictive (grey) vs the data (red), shared-beta model, J and N of the data", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    # the two readings of xi ~ Gamma(5, 3)
    rng = np.random.default_rng(seed)
    for name, scale in (("xi_rate_3", 1 / 3), ("xi_scale_3", 3.0)):
        xi = rng.gamma(5.0, scale, 20_000)
        mu = rng.beta(50, 50, 20_000)
        b = rng.beta(mu * xi, (1 - mu) * xi)
        out[f"P(beta_j outside [0.1, 0.9]) {name}"] = round(float(((b < 0.1) | (b > 0.9)).mean()), 3)
    return out


# ---- 3. training --------------------------------------------------------------------------------------------
def train(
    model, seconds: float, n_sims: int, seed: int, steps: int | None = None, observed=None, observed_weight: float = 1.0
) -> tuple[MultilevelNPE, float]:
    """Offline training on `n_sims` simulations; with `observed` data (the block) and `observed_weight` > 0, every
    step adds the reverse KL of the amortized posterior from the exact one (Wiener density) for the block, its
    leave-one-subject-out subsets and bootstrap resamples of its subjects (`MultilevelNPE.train(observed=)`)."""
    npe = MultilevelNPE(model, groups=(10, 30), rows=(1, 100), network=ddm_network(), seed=seed, pilot_size=512)
    start = time.perf_counter()
    npe.train(TrainConfig(mode="offline", n_simulations=n_sims, steps=steps or 1_000_000, batch_size=32,
                          learning_rate=1e-3, time_limit=None if steps else seconds, patience=15, seed=seed,
                          progress=False, observed_weight=observed_weight),
              observed=observed if observed_weight else None)  # fmt: skip
    return npe, time.perf_counter() - start


# ---- 4. SBC and recovery ------------------------------------------------------------------------------------
def sbc(npe: MultilevelNPE, n_sims: int, n_draws: int, seed: int, name: str) -> dict:
    """SBC and recovery on `n_sims` prior simulations (mlnpe.inference.sbc.sbc): the band uses each dataset's first
    subject for the local parameters (independent ranks); `pooled_local_inside_99_band` pools every subject."""
    result = run_sbc(npe, n_sims, n_draws, seed, prob=0.99)
    rows = result.table()
    result.plot_ecdf(FIGURES / f"ddm_sbc_{name}.png")
    if name == "shared":
        result.plot_recovery(FIGURES / "ddm_recovery_global.png")
        result.plot_recovery(FIGURES / "ddm_recovery_local.png", local=True)
    return {
        "n_datasets": n_sims, "n_draws": n_draws,
        "inside_99_band": {r["parameter"]: r["inside_band"] for r in rows},
        "pooled_local_inside_99_band": {r["parameter"]: r["pooled_inside_band"] for r in rows if r["kind"] == "local"},
        "recovery_correlation": {r["parameter"]: round(r["correlation"], 3) for r in rows},
        "coverage_95": {r["parameter"]: round(r["coverage"], 3) for r in rows},
    }  # fmt: skip


# ---- 5. real data vs Stan -----------------------------------------------------------------------------------
def compare_with_stan(npe_draws, stan_draws, path: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a, b = npe_draws.to_matrix(), stan_draws.to_matrix()
    names = npe_draws.names
    z = np.abs(a.mean(0) - b.mean(0)) / b.std(0)
    ratio = a.std(0) / b.std(0)
    table = {n: {"npe_mean": round(float(a[:, i].mean()), 4), "npe_sd": round(float(a[:, i].std()), 4),
                 "stan_mean": round(float(b[:, i].mean()), 4), "stan_sd": round(float(b[:, i].std()), 4),
                 "abs_mean_diff_over_stan_sd": round(float(z[i]), 3), "sd_ratio": round(float(ratio[i]), 3)}
             for i, n in enumerate(names)}  # fmt: skip
    n_global = len(npe_draws.global_names)
    fig, axes = plt.subplots(2, 5, figsize=(16, 5.6))
    for ax, i in zip(axes.flat, range(n_global)):
        lo, hi = np.quantile(np.concatenate([a[:, i], b[:, i]]), [0.001, 0.999])
        bins = np.linspace(lo, hi, 50)
        ax.hist(a[:, i], bins=bins, density=True, alpha=0.5, color="tab:blue", label="ML-NPE")
        ax.hist(b[:, i], bins=bins, density=True, histtype="step", ls="--", color="tab:red", label="Stan")
        ax.set_title(names[i], fontsize=9)
    axes.flat[0].legend(fontsize=8)
    local = npe_draws.local_names
    for k, ax in enumerate(list(axes.flat)[n_global : n_global + len(local)]):
        cols = [i for i, n in enumerate(names) if n.startswith(local[k] + "[")]
        ax.errorbar(b[:, cols].mean(0), a[:, cols].mean(0), xerr=b[:, cols].std(0), yerr=a[:, cols].std(0), fmt="o", ms=3)
        span = [b[:, cols].mean(0).min(), b[:, cols].mean(0).max()]
        ax.plot(span, span, "k--", lw=0.7)
        ax.set_title(f"{local[k]}_j: mean +- sd", fontsize=9)
        ax.set_xlabel("Stan")
        ax.set_ylabel("ML-NPE")
    for ax in list(axes.flat)[n_global + len(local) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"max_abs_mean_diff_over_stan_sd": round(float(z.max()), 3),
            "median_abs_mean_diff_over_stan_sd": round(float(np.median(z)), 3),
            "sd_ratio_range": [round(float(ratio.min()), 3), round(float(ratio.max()), 3)], "per_parameter": table}  # fmt: skip


def refined_real_data(npe: MultilevelNPE, model, data, npe_draws, seed: int) -> dict:
    """HMC on the exact posterior of the real data through the amortizer (mlnpe.inference.refine), beside the NPE draws:
    each global's refined mean and sd, and the NPE draws' |mean difference| / refined sd and sd ratio."""
    result = refine(npe.estimator, model, data, 4000, RefineConfig(seed=seed), labels=(npe.global_names, npe.local_names))
    out = {"seconds": round(result.seconds, 1), "chains": result.chains, "rhat_max": round(result.max_rhat, 3),
           "ess_bulk_min": round(result.min_ess), "divergences": result.divergences,
           "accept_rate": round(result.accept_rate, 2), "pool_importance_ess": round(result.pool_ess, 2),
           "globals": {}}
    for k, name in enumerate(npe.global_names):
        mean, sd = float(result.global_draws[:, k].mean()), float(result.global_draws[:, k].std())
        out["globals"][name] = {"mean": round(mean, 4), "sd": round(sd, 4),
                                "npe_err_sd": round(abs(float(npe_draws[name].mean()) - mean) / sd, 2),
                                "npe_sd_ratio": round(float(npe_draws[name].std()) / sd, 2)}
    return out


def stan_reference(model, data, args) -> tuple[PosteriorDraws, dict]:
    """The Stan fit on `args.stan_cores` cores (4 chains), or the one saved in `args.stan_fit` for the same settings."""
    settings = {"block": args.block, "warmup": args.stan_warmup, "draws": args.stan_draws, "seed": args.seed}
    if args.coding != "stimulus":
        settings["coding"] = args.coding
    if args.stan_fit is not None and args.stan_fit.exists():
        saved = np.load(args.stan_fit)
        diag = json.loads(str(saved["diagnostics"]))
        if diag.get("settings") == settings:
            log(f"Stan: reusing the fit saved in {args.stan_fit} on {diag['date']}")
            return PosteriorDraws(saved["global_draws"], saved["local_draws"], tuple(diag["global_names"]),
                                  tuple(diag["local_names"]), data.levels), diag  # fmt: skip
    if hasattr(os, "sched_setaffinity"):
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, set(sorted(before)[: args.stan_cores]))  # Stan's worker processes inherit it
    try:
        draws, diag = fit_stan_ddm(model, data, chains=4, warmup=args.stan_warmup, draws=args.stan_draws, seed=args.seed)
    finally:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, before)
    diag.update(cores=args.stan_cores, settings=settings, date=datetime.datetime.now().isoformat(timespec="minutes"),
                global_names=list(draws.global_names), local_names=list(draws.local_names))  # fmt: skip
    if args.stan_fit is not None:
        np.savez(args.stan_fit, global_draws=draws.global_draws, local_draws=draws.local_draws,
                 diagnostics=json.dumps(diag))  # fmt: skip
    return draws, diag


# ---- 6. LOGO ------------------------------------------------------------------------------------------------
def plot_logo(diff: dict, levels, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.scatter(range(len(levels)), diff["diff_j"], color="tab:blue")
    ax.axhline(0, color="0.5", lw=0.7)
    ax.set_xticks(range(len(levels)), levels)
    ax.set_xlabel("subject")
    ax.set_ylabel("elpd_j(beta_j) - elpd_j(shared)")
    ax.set_title(f"LOGO: elpd_diff = {diff['elpd_diff']:.2f} (SE {diff['se_diff']:.2f})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- 7. runtime ---------------------------------------------------------------------------------------------
def plot_runtime(train_s: float, fit_s: float, stan_s: float, path: Path) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gain = stan_s - fit_s
    break_even = math.ceil(train_s / gain) if gain > 0 else -1
    fits = np.arange(0, max(2 * break_even, 20) + 1)
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(fits, fits * stan_s / 60, color="tab:red", label=f"Stan ({stan_s:.0f} s per fit)")
    ax.plot(fits, (train_s + fits * fit_s) / 60, color="tab:blue", label=f"ML-NPE ({train_s:.0f} s training)")
    ax.set_xlabel("number of fits")
    ax.set_ylabel("cumulative minutes")
    ax.set_title(f"break-even after {break_even} fits", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return break_even


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1200.0, help="training seconds per variant")
    parser.add_argument("--steps", type=int, default=None,
                        help="train for this many steps instead of a time limit (reproducible figures)")
    parser.add_argument("--quick", action="store_true", help="tiny budgets, short Stan chains (< 5 min)")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--coding", choices=("stimulus", "accuracy"), default="stimulus",
                        help="response coding: upper boundary = 'word' (stimulus) or = correct (accuracy)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sbc", type=int, default=200)
    parser.add_argument("--simulations", type=int, default=40_000, help="offline simulation budget per variant")
    parser.add_argument("--stan-warmup", type=int, default=1000)
    parser.add_argument("--stan-draws", type=int, default=1000)
    parser.add_argument("--stan-cores", type=int, default=1, help="CPU cores Stan's 4 chains may use")
    parser.add_argument("--logo-draws", type=int, default=500)
    parser.add_argument("--logo-local", type=int, default=100)
    parser.add_argument("--logo-refined", action="store_true",
                        help="also run LOGO on refined (HMC through the amortizer) posteriors: the reference for the "
                             "amortized LOGO, one HMC run per subject and variant")
    parser.add_argument("--observed-weight", type=float, default=1.0,
                        help="weight of the block's own reverse KL in training (0: amortized on simulations alone)")
    parser.add_argument("--logo-plugin", action="store_true",
                        help="also the plug-in LOGO (logo_elpd proposal='plugin': x_j used twice), a reading of the paper")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--stan-fit", type=Path, default=None,
                        help="npz file of the Stan fit: reused when it exists (same block and settings), else written")
    parser.add_argument("--stan-only", action="store_true", help="only run (and save) the Stan fit")
    parser.add_argument("--no-stan", action="store_true", help="skip the Stan fit (see --stan-seconds)")
    parser.add_argument("--no-refine", action="store_true", help="skip the HMC refinement of the real-data fit")
    parser.add_argument("--stan-seconds", type=float, default=372.0,
                        help="Stan seconds per fit for the break-even curve when Stan is skipped (paper: 372)")
    parser.add_argument("--npe-dir", type=Path, default=None, help="load trained estimators from here, or save them")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.sbc, args.simulations = 45.0, 100, 2000
        args.stan_warmup, args.stan_draws, args.logo_draws, args.logo_local = 150, 150, 100, 20
    torch.set_num_threads(1)
    FIGURES.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"command": "python benchmarks/ddm.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                    "date": datetime.date.today().isoformat(),
                    "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, no GPU, torch {torch.__version__}, 1 thread",
                    "block": args.block, "condition": "accuracy", "coding": args.coding}  # fmt: skip

    result["simulator"] = simulator_check(args.seed)
    log(f"simulator: {result['simulator']}")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_speed_acc(args.data, block=args.block, coding=args.coding)
    result["data"] = {"subjects": data.n_groups, "trials": int(data.n_rows.sum()),
                      "dropped": [str(w.message) for w in caught]}  # fmt: skip
    log(f"data: {result['data']}")
    result["prior_predictive"] = prior_predictive(data, 200, args.seed, FIGURES / "ddm_prior_predictive.png")
    log(f"prior predictive: {json.dumps(result['prior_predictive'])}")

    models = {"shared": HierarchicalDDM(DDMPriors()), "beta": HierarchicalDDMBeta(DDMPriors())}
    if args.stan_only:
        result["stan"] = stan_reference(models["shared"], data, args)[1]
        print(json.dumps(result))
        return result
    npes, train_seconds = {}, {}
    for name, model in models.items():
        saved = None if args.npe_dir is None else args.npe_dir / name
        if saved is not None and (saved / "config.json").exists():
            npes[name] = MultilevelNPE.load(saved, model=model)
            train_seconds[name] = npes[name].history.train_seconds
        else:
            npes[name], train_seconds[name] = train(model, args.seconds, args.simulations, args.seed, args.steps,
                                                   data, args.observed_weight)  # fmt: skip
            if saved is not None:
                npes[name].save(saved)
        h = npes[name].history
        log(f"trained {name}: {train_seconds[name]:.0f} s, {h.datasets_seen} datasets, last val loss {h.val_loss[-1]:.3f}")
    result["training"] = {n: {"seconds": round(s, 1), "datasets_seen": npes[n].history.datasets_seen,
                              "simulations": args.simulations, "observed_weight": args.observed_weight, "val_loss": round(npes[n].history.val_loss[-1], 3)}
                          for n, s in train_seconds.items()}  # fmt: skip

    result["sbc"] = {n: sbc(npes[n], args.sbc, 250, args.seed + 7, n) for n in models}
    for n, r in result["sbc"].items():
        failed = [k for k, ok in r["inside_99_band"].items() if not ok]
        log(f"SBC {n}: {r['n_datasets']} datasets, outside the 99% band: {failed or 'none'}")

    # the real data: ML-NPE against Stan
    npe = npes["shared"]
    npe.sample(data, 4000, seed=0, log_prob=False)  # warm-up
    start = time.perf_counter()
    npe_draws = npe.sample(data, 4000, seed=args.seed, log_prob=False)
    npe_fit_s = time.perf_counter() - start
    result["npe_real_data"] = {n: {"mean": round(float(npe_draws[n].mean()), 4), "sd": round(float(npe_draws[n].std()), 4)}
                               for n in npe_draws.global_names}  # fmt: skip
    log(f"ML-NPE on the data: {json.dumps(result['npe_real_data'])}")
    if not args.no_refine:
        result["refined_real_data"] = refined_real_data(npe, models["shared"], data, npe_draws, args.seed)
        log(f"refined by HMC (mlnpe.inference.refine): {json.dumps(result['refined_real_data'])}")
    if args.no_stan:
        diag = {"skipped": True, "sample_seconds": args.stan_seconds * (args.stan_warmup + args.stan_draws) / 2000,
                "compile_seconds": math.nan}  # fmt: skip
    else:
        stan_draws, diag = stan_reference(models["shared"], data, args)
        result["real_data_vs_stan"] = compare_with_stan(npe_draws, stan_draws, FIGURES / "ddm_stan_vs_npe.png")
        log("real data vs Stan: " + json.dumps({k: v for k, v in result["real_data_vs_stan"].items() if k != "per_parameter"}))
        if "refined_real_data" in result:  # the HMC refinement through the amortizer against Stan, per global
            g = stan_draws.global_draws
            result["refined_vs_stan"] = {
                name: {"abs_mean_diff_over_stan_sd": round(abs(v["mean"] - g[:, k].mean()) / g[:, k].std(), 3),
                       "sd_ratio": round(v["sd"] / g[:, k].std(), 3)}
                for k, (name, v) in enumerate(result["refined_real_data"]["globals"].items())
            }  # fmt: skip
            log(f"refined vs Stan: {json.dumps(result['refined_vs_stan'])}")
    result["stan"] = diag
    log(f"Stan: {json.dumps(diag)}")

    # LOGO
    logo = {n: logo_elpd(npes[n], models[n], data, n_draws=args.logo_draws, n_local=args.logo_local, seed=args.seed)
            for n in models}  # fmt: skip
    diff = compare_logo(logo["beta"], logo["shared"])
    plot_logo(diff, data.levels, FIGURES / "ddm_logo.png")
    result["logo"] = {
        "elpd_diff_beta_minus_shared": round(diff["elpd_diff"], 2), "se_diff": round(diff["se_diff"], 2),
        "paper": {"elpd_diff": 13.29, "se_diff": 1.53},
        **{n: {"elpd": round(r.elpd, 2), "se": round(r.se, 2), "min_mc_ess": round(float(r.ess_j.min()), 1),
               "refit_seconds_all_subjects": round(r.refit_seconds, 2), "elpd_eval_seconds": round(r.eval_seconds, 2)}
           for n, r in logo.items()},
        "stan_estimate_seconds_all_refits_1000_1000": round(data.n_groups * diag["sample_seconds"] * 2000 / (args.stan_warmup + args.stan_draws), 0),
    }  # fmt: skip
    log(f"LOGO: {json.dumps(result['logo'])}")
    if args.logo_plugin:  # the held-out subject's own parameters fitted to its data, then scored on it (x_j twice)
        plugin = {n: logo_elpd(npes[n], models[n], data, n_draws=args.logo_draws, n_local=args.logo_local,
                               seed=args.seed, proposal="plugin") for n in models}  # fmt: skip
        diff_p = compare_logo(plugin["beta"], plugin["shared"])
        result["logo_plugin"] = {"elpd_diff_beta_minus_shared": round(diff_p["elpd_diff"], 2),
                                 "se_diff": round(diff_p["se_diff"], 2),
                                 **{n: round(r.elpd, 2) for n, r in plugin.items()}}  # fmt: skip
        log(f"LOGO, plug-in reading: {json.dumps(result['logo_plugin'])}")
    if args.logo_refined:  # the same estimator on exact LOGO posteriors (HMC through the amortizer)
        refined = {n: logo_elpd(npes[n], models[n], data, n_draws=args.logo_draws, n_local=args.logo_local,
                                seed=args.seed, posterior="refined") for n in models}  # fmt: skip
        diff_r = compare_logo(refined["beta"], refined["shared"])
        result["logo_refined"] = {
            "elpd_diff_beta_minus_shared": round(diff_r["elpd_diff"], 2), "se_diff": round(diff_r["se_diff"], 2),
            "amortized_minus_refined_diff_j": [round(a - b, 2) for a, b in zip(diff["diff_j"], diff_r["diff_j"])],
            **{n: {"elpd": round(r.elpd, 2), "se": round(r.se, 2), "max_rhat": round(r.max_rhat, 3),
                   "amortized_minus_refined_elpd": round(logo[n].elpd - r.elpd, 2),
                   "refit_seconds_all_subjects": round(r.refit_seconds, 1)} for n, r in refined.items()},
        }  # fmt: skip
        log(f"LOGO, refined posteriors: {json.dumps(result['logo_refined'])}")

    # runtime and break-even (training of the shared variant against Stan sampling; compilation reported apart)
    # a shorter Stan run is scaled to the paper's 1000 warm-up + 1000 draws per chain (iterations cost alike)
    scale = 2000 / (args.stan_warmup + args.stan_draws)
    stan_s = diag["sample_seconds"] * scale
    break_even = plot_runtime(train_seconds["shared"], npe_fit_s, stan_s, FIGURES / "ddm_runtime.png")
    result["runtime"] = {"stan_seconds_per_fit_1000_1000": round(stan_s, 1), "stan_measured_seconds": round(diag["sample_seconds"], 1),
                         "stan_iterations_measured": [args.stan_warmup, args.stan_draws], "extrapolated": scale != 1,
                         "stan_time_source": "--stan-seconds (not measured)" if args.no_stan else "measured", "stan_compile_seconds": round(diag["compile_seconds"], 1),
                         "stan_cores": diag.get("cores", args.stan_cores), "npe_train_seconds": round(train_seconds["shared"], 1),
                         "npe_seconds_per_fit_4000_draws": round(npe_fit_s, 3), "break_even_fits": break_even}  # fmt: skip
    result["total_seconds"] = round(time.perf_counter() - started, 1)
    log(f"runtime: {json.dumps(result['runtime'])}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
