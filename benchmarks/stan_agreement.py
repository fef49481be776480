"""Agreement of mlnpe's formula models with Stan (PyStan, same program and priors), per case.

For each case: train an amortizer, fit the dataset (4000 draws, PSIS certificate), fit the same model with Stan
(4 chains, 1000 warm-up + 1000 draws), and compare per parameter:
- |mean difference| / Stan sd (median over parameters; target <= 0.1);
- sd ratio mlnpe / Stan (target within [0.9, 1.1]).
Both are given for the raw amortized draws, for the PSIS-reweighted ones, and (keys `fit_*`) for what `fit()`
returns by default: refine="auto" replaces the amortized draws by HMC draws where PSIS rejects them
(mlnpe.inference.refine; a "quick" run's small budget usually triggers it, so "--quick" takes a few minutes longer than
before). Also reported: k-hat, ESS,
training time, mlnpe's per-fit time beside Stan's (compile and sampling), and for the Minnesota radon data the
posteriordb reference (rstan, 10 chains x 10,000 draws).

    python benchmarks/stan_agreement.py --quick      # gaussian + bernoulli, < 10 minutes; last line JSON
    python benchmarks/stan_agreement.py              # all cases
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlnpe import TrainConfig
from mlnpe.formula import FormulaNPE, prior
from mlnpe.inference.psis import ParetoKWarning, psis_moments
from mlnpe.stan import StanDiagnosticWarning, fit_stan

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def simulate_case(kind: str, seed: int) -> pd.DataFrame:
    """A simulated dataset of each family with J = 20 groups."""
    rng = np.random.default_rng(seed)
    J = 20
    n = rng.integers(5, 16, J) if kind == "gaussian" else rng.integers(10, 31, J)
    g = np.repeat(np.arange(J), n)
    N = len(g)
    x, z = rng.normal(size=N), rng.normal(size=N)
    df = pd.DataFrame({"g": [f"g{j:02d}" for j in g], "x": x, "z": z})
    if kind == "gaussian":
        a, b = rng.multivariate_normal([0, 0], [[0.6**2, 0.3 * 0.6 * 0.4], [0.3 * 0.6 * 0.4, 0.4**2]], J).T
        df["y"] = 2.0 + 0.5 * x + a[g] + b[g] * x + rng.normal(0, 1.0, N)
    elif kind == "bernoulli":
        a = rng.normal(0, 0.8, J)
        df["y"] = rng.binomial(1, 1 / (1 + np.exp(-(-0.3 + 0.8 * x + a[g]))))
    elif kind == "poisson":
        a = rng.normal(0, 0.5, J)
        df["y"] = rng.poisson(np.exp(1.0 + 0.4 * x - 0.3 * z + a[g]))
    elif kind == "lognormal":
        a = rng.normal(0, 0.5, J)
        df["y"] = np.exp(1.0 + 0.5 * x + a[g] + rng.normal(0, 0.6, N))
    elif kind == "negbinomial":
        a = rng.normal(0, 0.5, J)
        mu = np.exp(0.8 + 0.3 * x + a[g])
        df["y"] = rng.negative_binomial(3.0, 3.0 / (3.0 + mu))
    elif kind == "binomial":
        a = rng.normal(0, 0.6, J)
        df["n"] = rng.integers(5, 21, N)
        df["y"] = rng.binomial(df["n"], 1 / (1 + np.exp(-(0.2 + 0.6 * x + a[g]))))
    return df


def radon() -> pd.DataFrame:
    d = json.loads((SHARED / "posteriordb" / "radon_mn" / "data.json").read_text())
    return pd.DataFrame({"log_radon": d["log_radon"], "floor": d["floor_measure"],
                         "county": [f"{c:02d}" for c in d["county_idx"]]})


CASES = {
    "gaussian_slope": dict(formula="y ~ x + (1 + x | g)", family="gaussian", data=lambda s: simulate_case("gaussian", s),
                           prior=[prior("normal(0, 2)", "b"), prior("normal(0, 5)", "Intercept"),
                                  prior("normal(0, 1)", "sd"), prior("normal(0, 2)", "sigma"), prior("lkj(2)", "cor")]),
    "bernoulli": dict(formula="y ~ x + (1 | g)", family="bernoulli", data=lambda s: simulate_case("bernoulli", s),
                      prior=[prior("normal(0, 2)", "b"), prior("normal(0, 2)", "Intercept"), prior("normal(0, 1)", "sd")]),
    "poisson": dict(formula="y ~ x + z + (1 | g)", family="poisson", data=lambda s: simulate_case("poisson", s),
                    prior=[prior("normal(0, 1)", "b"), prior("normal(0, 2)", "Intercept"), prior("normal(0, 1)", "sd")]),
    "binomial": dict(formula="y | trials(n) ~ x + (1 | g)", family="binomial",
                     data=lambda s: simulate_case("binomial", s),
                     prior=[prior("normal(0, 2)", "b"), prior("normal(0, 2)", "Intercept"), prior("normal(0, 1)", "sd")]),
    "lognormal": dict(formula="y ~ x + (1 | g)", family="lognormal", data=lambda s: simulate_case("lognormal", s),
                      prior=[prior("normal(0, 2)", "b"), prior("normal(0, 2)", "Intercept"), prior("normal(0, 1)", "sd"),
                             prior("normal(0, 1)", "sigma")]),
    "negbinomial": dict(formula="y ~ x + (1 | g)", family="negbinomial",
                        data=lambda s: simulate_case("negbinomial", s),
                        prior=[prior("normal(0, 1)", "b"), prior("normal(0, 2)", "Intercept"),
                               prior("normal(0, 1)", "sd"), prior("gamma(2, 0.5)", "shape")]),
    "radon_partially_pooled": dict(formula="log_radon ~ 1 + (1 | county)", family="gaussian", data=lambda s: radon(),
                                   prior=[prior("normal(0, 10)", "Intercept"), prior("normal(0, 1)", "sd"),
                                          prior("normal(0, 1)", "sigma")]),
}


def compare(mine: pd.DataFrame, weights: np.ndarray | None, stan: pd.DataFrame) -> dict[str, float]:
    names = [c for c in mine.columns if c in stan.columns]
    s_mean, s_sd = stan[names].mean(), stan[names].std(ddof=1)
    out = {}
    for label, w in (("raw", None), ("psis", weights)):
        if w is None:
            m, sd = mine[names].mean(), mine[names].std(ddof=1)
        else:
            m_arr, sd_arr = psis_moments(mine[names].to_numpy(), w)
            m, sd = pd.Series(m_arr, index=names), pd.Series(sd_arr, index=names)
        err = (m - s_mean).abs() / s_sd
        ratio = sd / s_sd
        glob = [n for n in names if not n.startswith("r_")]
        out[label] = {
            "median_mean_err_sd": float(err.median()),
            "max_mean_err_sd": float(err.max()),
            "sd_ratio_min": float(ratio.min()),
            "sd_ratio_max": float(ratio.max()),
            "sd_ratio_median": float(ratio.median()),
            "global_mean_err_sd": {n: round(float(err[n]), 3) for n in glob},
            "global_sd_ratio": {n: round(float(ratio[n]), 3) for n in glob},
        }
    return out


def run_case(name: str, seconds: float, seed: int, threads: int, focus: int = 0, network: dict | None = None,
             steps: int | None = None) -> dict:
    spec = CASES[name]
    data = spec["data"](seed)
    torch.set_num_threads(threads)
    model = FormulaNPE(spec["formula"], data, spec["family"], spec["prior"], seed=seed, network=network)
    # --steps: a fixed step budget instead of the time limit, so that two runs give the same figures
    model.train(TrainConfig(steps=steps or 1_000_000, batch_size=64, learning_rate=2e-3,
                            time_limit=None if steps else seconds,
                            seed=seed, progress=False), focus=focus)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        model.fit(n_draws=4000, seed=seed + 1, refine=False)  # warm-up
        t = time.perf_counter()
        fit = model.fit(n_draws=4000, seed=seed + 1, refine=False)
        fit_seconds = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StanDiagnosticWarning)
        stan = fit_stan(model, data, chains=4, warmup=1000, draws=1000, seed=seed + 2)
    result = {
        "case": name,
        "formula": spec["formula"],
        "family": spec["family"],
        "n_groups": len(fit.design.levels),
        "n_rows": int(len(fit.design.y)),
        "trained_groups": list(model.groups),
        "trained_rows": list(model.rows),
        "focus": focus,
        "region": {k: [round(a, 4), round(b, 4)] for k, (a, b) in model.region.items()},
        "train_seconds": round(model.train_seconds, 1),
        "train_datasets": sum(r["datasets"] for r in model.rounds),
        "mlnpe_fit_seconds": round(fit_seconds, 3),
        "stan_compile_seconds": round(stan.diagnostics["compile_seconds"], 1),
        "stan_sample_seconds": round(stan.diagnostics["sample_seconds"], 1),
        "stan_divergences": int(stan.diagnostics["divergences"]),
        "stan_max_rhat": round(float(stan.diagnostics["max_rhat"]), 4),
        "khat": round(float(fit.pareto_k), 3),
        "psis_ess": round(float(fit.ess), 1),
        **compare(fit.draws, fit.psis, stan.draws),
    }
    # what a user gets from fit() by default: refine="auto" refines where PSIS rejects the amortized draws
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        default = model.fit(n_draws=4000, seed=seed + 1)
        default_seconds = time.perf_counter() - t
    result["default_fit"] = {**compare(default.draws, None, stan.draws)["raw"], "refined": default.refinement is not None,
                             "seconds": round(default_seconds, 2)}
    if name == "radon_partially_pooled":
        ref = pd.read_csv(SHARED / "posteriordb" / "radon_mn" / "reference_summary_partially_pooled.csv")
        ref = ref.set_index("variable")
        mapping = {"b_Intercept": "mu_alpha", "sd_county__Intercept": "sigma_alpha", "sigma": "sigma_y"}
        result["posteriordb"] = {
            k: {"ref_mean": round(float(ref.loc[v, "mean"]), 4), "ref_sd": round(float(ref.loc[v, "sd"]), 4),
                "mlnpe_mean": round(float(fit.draws[k].mean()), 4), "mlnpe_sd": round(float(fit.draws[k].std()), 4),
                "stan_mean": round(float(stan.draws[k].mean()), 4), "stan_sd": round(float(stan.draws[k].std()), 4)}
            for k, v in mapping.items()
        }
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="gaussian and bernoulli only, short training")
    parser.add_argument("--cases", nargs="*", default=None, help=f"cases among {list(CASES)}")
    parser.add_argument("--seconds", type=float, default=None, help="training seconds per case")
    parser.add_argument("--steps", type=int, default=None,
                        help="train for this many steps per round instead of a time limit (reproducible figures)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--focus", type=int, default=0, help="focusing rounds (FormulaNPE.train(focus=))")
    parser.add_argument("--network", type=json.loads, default=None, help='NetworkConfig parts to change as nested JSON, e.g. {"summary": {"hidden": 32}}')
    args = parser.parse_args(argv)
    cases = args.cases or (["gaussian_slope", "bernoulli"] if args.quick else list(CASES))
    seconds = args.seconds or (150.0 if args.quick else 480.0)
    results = [run_case(c, seconds, args.seed, args.threads, args.focus, args.network, args.steps) for c in cases]
    summary = {
        r["case"]: {
            "median_mean_err_sd": round(r["raw"]["median_mean_err_sd"], 3),
            "sd_ratio_min": round(r["raw"]["sd_ratio_min"], 3),
            "sd_ratio_max": round(r["raw"]["sd_ratio_max"], 3),
            "psis_median_mean_err_sd": round(r["psis"]["median_mean_err_sd"], 3),
            "psis_sd_ratio_min": round(r["psis"]["sd_ratio_min"], 3),
            "psis_sd_ratio_max": round(r["psis"]["sd_ratio_max"], 3),
            "max_khat": r["khat"],
            "fit_median_mean_err_sd": round(r["default_fit"]["median_mean_err_sd"], 3),
            "fit_sd_ratio_min": round(r["default_fit"]["sd_ratio_min"], 3),
            "fit_sd_ratio_max": round(r["default_fit"]["sd_ratio_max"], 3),
            "fit_refined": r["default_fit"]["refined"],
            "fit_seconds": r["default_fit"]["seconds"],
            "train_seconds": r["train_seconds"],
            "mlnpe_fit_seconds": r["mlnpe_fit_seconds"],
            "stan_seconds": round(r["stan_compile_seconds"] + r["stan_sample_seconds"], 1),
        }
        for r in results
    }
    summary["machine"] = f"{platform.machine()}, {args.threads} threads"
    summary["command"] = "python " + " ".join(sys.argv)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
