"""Real data with reference posteriors: mlnpe's default formula path against Stan and brms.

Cases: sleepstudy against brms (inst/extdata/sleepstudy_brms.csv; the data from lme4 through Rscript), and the
posteriordb models of ../shared/data/posteriordb written as brms formulas with the references' priors (rstan,
10 chains, 10,000 draws). Each case fits the data as `mlnpe()` does (`mlnpe.formula.cache.trained_model`:
`TrainConfig()` defaults, focus 1, the training data's unlabeled loss and PSIS certificate), then compares every
reference parameter (hyperparameters and every group's coefficient) with the reference:
- |mean - reference mean| / reference sd (targets: median <= 0.05, worst <= 0.2);
- sd / reference sd (target: within [0.9, 1.1] for >= 90 % of parameters);
for the amortized draws ("raw"), the PSIS-reweighted ones and, with --refine, HMC-refined ones, with k-hat, the
first fit's seconds (training included) and a refit's seconds (`fit(newdata=)`, as `update()` runs it).

    python benchmarks/real_data.py                       # every case, the default path
    python benchmarks/real_data.py --quick               # sleepstudy, seeds, radon ~ 1 + (1 | county)
    python benchmarks/real_data.py --seconds 150 --cases seeds --train '{"observed_weight": 0}'   # an A/B arm

The last line is one JSON object: a key per case with `khat`, `median_err_sd`, `max_err_sd`, `sd_ratio_min`,
`sd_ratio_max`, `first_fit_s` and `refit_s` (of the amortized draws).

Prior mismatches, stated per case: brms puts the `Intercept` prior on the intercept of centred predictors,
posteriordb on the raw intercept. With a normal(0, 10) prior against posterior sds of 0.05-0.1 (radon) the
difference is negligible; for seeds (normal(0, 1) on alpha0, centred x1 and x2) it is not, and the comparison of
alpha0 there is approximate. eight_schools (known measurement sds, brms's `se()`) and surgical (an inverse-gamma
prior on the variance) need terms mlnpe's formulas do not have, and are left out.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mlnpe.formula import prior
from mlnpe.formula.cache import trained_model
from mlnpe.inference.psis import ParetoKWarning, psis_moments

ROOT = Path(__file__).resolve().parents[1]
DB = ROOT.parent / "shared" / "data" / "posteriordb"
QUICK = ("sleepstudy", "seeds", "radon_partially_pooled")


def _sleepstudy() -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "sleepstudy.csv"
        subprocess.run(["Rscript", "-e", f"write.csv(lme4::sleepstudy, '{out}', row.names = FALSE)"], check=True,
                       capture_output=True)  # fmt: skip
        data = pd.read_csv(out)
    data["Subject"] = data["Subject"].astype(str)
    return data


def _radon() -> pd.DataFrame:
    d = json.loads((DB / "radon_mn" / "data.json").read_text())
    return pd.DataFrame({"log_radon": d["log_radon"], "floor": d["floor_measure"], "log_uppm": d["log_uppm"],
                         "county": [f"{c:02d}" for c in d["county_idx"]]})


def _seeds() -> pd.DataFrame:
    d = json.loads((DB / "seeds" / "data.json").read_text())
    return pd.DataFrame({"n": d["n"], "N": d["N"], "x1": d["x1"], "x2": d["x2"],
                         "plate": [f"{i + 1:02d}" for i in range(d["I"])]})


def _glmm1() -> pd.DataFrame:
    d = json.loads((DB / "glmm1_sites" / "data.json").read_text())
    return pd.DataFrame({"obs": d["obs"], "site": [f"{s:03d}" for s in d["obssite"]]})


def _county_coef(draws: pd.DataFrame, levels, stem: str, fixed: str, coef: str, group: str = "county") -> dict[str, np.ndarray]:
    return {f"{stem}[{j + 1}]": draws[fixed].to_numpy() + draws[f"r_{group}[{lev},{coef}]"].to_numpy()
            for j, lev in enumerate(levels)}


RADON_PRIORS = [prior("normal(0, 10)", "Intercept"), prior("normal(0, 1)", "sd"), prior("normal(0, 1)", "sigma")]

SLEEP_GLOBALS = ("b_Intercept", "b_Days", "sd_Subject__Intercept", "sd_Subject__Days", "cor_Subject__Intercept__Days",
                 "sigma")

CASES = {
    "sleepstudy": dict(
        data=_sleepstudy, formula="Reaction ~ Days + (1 + Days | Subject)", family="gaussian",
        prior=[prior("normal(0, 20)", "b")], reference=ROOT / "inst" / "extdata" / "sleepstudy_brms.csv",
        globals={v: v for v in SLEEP_GLOBALS},
        locals=lambda d, lv: {c: d[c].to_numpy() for c in d.columns if c.startswith("r_Subject[")},
    ),
    "radon_partially_pooled": dict(
        data=_radon, formula="log_radon ~ 1 + (1 | county)", family="gaussian", prior=RADON_PRIORS,
        reference="radon_mn/reference_summary_partially_pooled.csv",
        globals={"mu_alpha": "b_Intercept", "sigma_alpha": "sd_county__Intercept", "sigma_y": "sigma"},
        locals=lambda d, lv: _county_coef(d, lv, "alpha", "b_Intercept", "Intercept"),
    ),
    "radon_variable_intercept": dict(
        data=_radon, formula="log_radon ~ floor + (1 | county)", family="gaussian",
        prior=RADON_PRIORS + [prior("normal(0, 10)", "b")],
        reference="radon_mn/reference_summary_variable_intercept.csv",
        globals={"mu_alpha": "b_Intercept", "beta": "b_floor", "sigma_alpha": "sd_county__Intercept",
                 "sigma_y": "sigma"},
        locals=lambda d, lv: _county_coef(d, lv, "alpha", "b_Intercept", "Intercept"),
    ),
    "radon_variable_intercept_slope": dict(
        data=_radon, formula="log_radon ~ floor + (1 + floor || county)", family="gaussian",
        prior=RADON_PRIORS + [prior("normal(0, 10)", "b")],
        reference="radon_mn/reference_summary_variable_intercept_slope.csv",
        globals={"mu_alpha": "b_Intercept", "mu_beta": "b_floor", "sigma_alpha": "sd_county__Intercept",
                 "sigma_beta": "sd_county__floor", "sigma_y": "sigma"},
        locals=lambda d, lv: {**_county_coef(d, lv, "alpha", "b_Intercept", "Intercept"),
                              **_county_coef(d, lv, "beta", "b_floor", "floor")},
    ),
    "radon_hierarchical_intercept": dict(
        data=_radon, formula="log_radon ~ log_uppm + floor + (1 | county)", family="gaussian",
        prior=RADON_PRIORS + [prior("normal(0, 10)", "b")],
        reference="radon_mn/reference_summary_hierarchical_intercept.csv",
        globals={"mu_alpha": "b_Intercept", "beta[1]": "b_log_uppm", "beta[2]": "b_floor",
                 "sigma_alpha": "sd_county__Intercept", "sigma_y": "sigma"},
        locals=lambda d, lv: _county_coef(d, lv, "alpha", "b_Intercept", "Intercept"),
    ),
    "seeds": dict(
        data=_seeds, formula="n | trials(N) ~ x1 * x2 + (1 | plate)", family="binomial",
        prior=[prior("normal(0, 1)", "Intercept"), prior("normal(0, 1)", "b"), prior("cauchy(0, 1)", "sd")],
        reference="seeds/reference_summary.csv",
        globals={"alpha0": "b_Intercept", "alpha1": "b_x1", "alpha2": "b_x2", "alpha12": "b_x1:x2",
                 "sigma": "sd_plate__Intercept"},
        locals=lambda d, lv: {f"b[{j + 1}]": d[f"r_plate[{lev},Intercept]"].to_numpy() for j, lev in enumerate(lv)},
    ),
    "glmm1_sites": dict(
        data=_glmm1, formula="obs ~ 1 + (1 | site)", family="poisson",
        prior=[prior("normal(0, 10)", "Intercept"), prior("uniform(0, 5)", "sd")],
        reference="glmm1_sites/reference_summary.csv",
        globals={"mu_alpha": "b_Intercept", "sd_alpha": "sd_site__Intercept"},
        locals=lambda d, lv: _county_coef(d, lv, "alpha", "b_Intercept", "Intercept", "site"),
    ),
}


def _moments(values: np.ndarray, weights: np.ndarray | None) -> tuple[float, float]:
    if weights is None:
        return float(values.mean()), float(values.std(ddof=1))
    m, s = psis_moments(values[:, None], weights)
    return float(m[0]), float(s[0])


def run_case(
    name: str, seconds: float | None, seed: int, threads: int, focus: int, network: dict | None = None,
    refine: bool = False, train: dict | None = None,
) -> dict:
    """One case: fit as `mlnpe()` does (or on a fixed time budget), compare with the reference, print a JSON line."""
    spec = CASES[name]
    data = spec["data"]()
    ref = pd.read_csv(DB / spec["reference"]).set_index("variable")
    torch.set_num_threads(threads)
    config = {"seed": seed, "progress": False}
    if seconds is not None:  # a fixed time budget (A/B arms at equal wall time)
        config.update(steps=1_000_000, batch_size=64, learning_rate=2e-3, time_limit=seconds)
    config = {**config, **(train or {})}  # fields changed from mlnpe()'s budget (`training_config`)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        t = time.perf_counter()
        model, _ = trained_model(spec["formula"], data, spec["family"], spec["prior"], train=config, cache=False,
                                 focus=focus, seed=seed, network=network)  # fmt: skip
        fit = model.fit(n_draws=4000, seed=seed + 1, refine=False)
        first_fit = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(data, n_draws=4000, seed=seed + 2, refine=False)
        refit = time.perf_counter() - t
    refined = model.fit(n_draws=4000, seed=seed + 1, refine=True) if refine else None

    def values_of(draws: pd.DataFrame) -> dict[str, np.ndarray]:
        values = {k: draws[v].to_numpy() for k, v in spec["globals"].items()}
        values.update(spec["locals"](draws, fit.design.levels))
        return values

    arms = [("raw", values_of(fit.draws), None), ("psis", values_of(fit.draws), fit.psis)]
    if refined is not None:
        arms.append(("refined", values_of(refined.draws), None))
    rows = []
    for variable in arms[0][1]:
        if variable not in ref.index:
            continue
        r_mean, r_sd = float(ref.loc[variable, "mean"]), float(ref.loc[variable, "sd"])
        row = {"variable": variable, "global": variable in spec["globals"]}
        for label, values, w in arms:
            m, s = _moments(values[variable], w)
            row[f"{label}_err"], row[f"{label}_ratio"] = abs(m - r_mean) / r_sd, s / r_sd
        rows.append(row)
    table = pd.DataFrame(rows)
    history = model.npe.history
    out = {"case": name, "formula": spec["formula"], "family": spec["family"], "rows": len(data),
           "groups": len(fit.design.levels), "focus": focus, "train": {k: v for k, v in (train or {}).items()},
           "seconds": seconds, "stopped": history.stopped, "steps": history.step[-1] if history.step else 0,
           "checks": [[c["step"], round(c["khat"], 2)] for c in history.checks],
           "boxes": [[r.get("box"), r.get("box_khat") and round(r["box_khat"], 2)] for r in model.rounds],
           "train_seconds": round(model.train_seconds, 1), "train_datasets": sum(r["datasets"] for r in model.rounds),
           "first_fit_s": round(first_fit, 1), "refit_s": round(refit, 2), "khat": round(float(fit.pareto_k), 3),
           "psis_ess": round(float(fit.ess), 1), "compared": len(table)}
    if refined is not None:
        r = refined.refinement
        out["refine"] = {"seconds": round(r.seconds, 1), "chains": r.chains, "rhat_max": round(r.max_rhat, 3),
                         "ess_bulk_min": round(r.min_ess), "divergences": r.divergences,
                         "accept_rate": round(r.accept_rate, 2)}
    for label in [a[0] for a in arms]:
        ratio = table[f"{label}_ratio"]
        out[label] = {
            "median_err": round(float(table[f"{label}_err"].median()), 3),
            "max_err": round(float(table[f"{label}_err"].max()), 3),
            "ratio_range": [round(float(ratio.min()), 2), round(float(ratio.max()), 2)],
            "ratio_within": round(float(((ratio >= 0.9) & (ratio <= 1.1)).mean()), 3),
            "globals": {row["variable"]: [round(row[f"{label}_err"], 2), round(row[f"{label}_ratio"], 2)]
                        for row in rows if row["global"]},
        }
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=None, help=f"cases among {list(CASES)}")
    parser.add_argument("--quick", action="store_true", help=f"only {list(QUICK)}")
    parser.add_argument("--seconds", type=float, default=None,
                        help="train for this many seconds (all rounds) instead of the default budget")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--focus", type=int, default=1)
    parser.add_argument("--network", type=json.loads, default=None, help='NetworkConfig parts to change as nested JSON, e.g. {"summary": {"hidden": 32}}')
    parser.add_argument("--refine", action="store_true", help="add the HMC refinement (mlnpe.inference.refine) arm")
    parser.add_argument("--train", type=json.loads, default=None,
                        help='TrainConfig fields to change as JSON, e.g. {"observed_weight": 0, "check_every": 0}')
    args = parser.parse_args(argv)
    cases = args.cases or (list(QUICK) if args.quick else list(CASES))
    results = [run_case(c, args.seconds, args.seed, args.threads, args.focus, args.network, args.refine, args.train)
               for c in cases]  # fmt: skip
    summary = {r["case"]: {"khat": r["khat"], "median_err_sd": r["raw"]["median_err"], "max_err_sd": r["raw"]["max_err"],
                           "sd_ratio_min": r["raw"]["ratio_range"][0], "sd_ratio_max": r["raw"]["ratio_range"][1],
                           "first_fit_s": r["first_fit_s"], "refit_s": r["refit_s"]}
               for r in results}  # fmt: skip
    print(f"# {platform.machine()}, {args.threads} threads; python " + " ".join(sys.argv), file=sys.stderr)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
