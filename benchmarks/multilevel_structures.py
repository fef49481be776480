"""Several grouping factors on real data: crossed and nested formula models against Stan, and their SBC.

Cases (the data from R's lme4 through Rscript, speed_acc from ../shared/data):
- penicillin: `diameter ~ 1 + (1 | plate) + (1 | sample)`, 24 plates crossed with 6 samples (144 rows);
- pastes: `strength ~ 1 + (1 | batch/cask)`, 30 casks nested in 10 batches (60 rows);
- speed_acc: `log_rt ~ stim_cat + (1 | id) + (1 | stim)` (stim_cat: word or nonword), block 4 of Wagenmakers et
  al. (2008): 811 stimuli crossed with 17 participants (1,626 uncensored trials).

Each case is fitted as `mlnpe()` fits it (`mlnpe.formula.cache.trained_model`, brms's default priors, focus 1) and
compared over every parameter (population-level, sds, every level's effect of every factor, sigma) with NUTS on the
same Stan program and priors (`mlnpe.stan.fit_stan`: 4 chains x (1000 + 1000), adapt_delta 0.99), which is brms's
model with brms's default priors (mlnpe's autoscaled normal for class b). Figures for the amortized draws ("raw") and the
PSIS-reweighted ones: |mean error| / Stan sd (targets: median <= 0.1) and sd / Stan sd (target: >= 90 % within
[0.9, 1.1]); k-hat, the first fit's seconds (training included) and Stan's seconds (compile excluded). SBC: the
trained amortizer's calibration (`FormulaNPE.sbc`, on the prior of its last focusing round; every parameter
inside the 99 % band: `sbc_pass`).

    python benchmarks/multilevel_structures.py --quick     # penicillin and pastes, SBC over 100 datasets
    python benchmarks/multilevel_structures.py             # every case, SBC over 200 datasets

The last line is one JSON object with a key per case: `median_err_sd`, `max_err_sd`, `sd_ratio_min`, `sd_ratio_max`,
`khat`, `sbc_pass` (of the amortized draws), and the rest of the case's figures.
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

from mlnpe.formula.cache import trained_model
from mlnpe.inference.psis import ParetoKWarning, psis_moments

ROOT = Path(__file__).resolve().parents[1]
SPEED_ACC = ROOT.parent / "shared" / "data" / "speed_acc" / "speed_acc.csv"
QUICK = ("penicillin", "pastes")


def _lme4(name: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{name}.csv"
        subprocess.run(["Rscript", "-e", f"write.csv(lme4::{name}, '{out}', row.names = FALSE)"], check=True,
                       capture_output=True)  # fmt: skip
        return pd.read_csv(out, dtype={"plate": str, "sample": str, "batch": str, "cask": str})


def _speed_acc() -> pd.DataFrame:
    d = pd.read_csv(SPEED_ACC)
    d = d[(d["block"] == 4) & ~d["censor"]].copy()
    d["log_rt"] = np.log(d["rt"])
    d["id"], d["stim"] = d["id"].astype(str), d["stim"].astype(str)
    return d[["log_rt", "stim_cat", "id", "stim"]].reset_index(drop=True)


CASES = {
    "penicillin": (lambda: _lme4("Penicillin"), "diameter ~ 1 + (1 | plate) + (1 | sample)"),
    "pastes": (lambda: _lme4("Pastes"), "strength ~ 1 + (1 | batch/cask)"),
    "speed_acc": (_speed_acc, "log_rt ~ stim_cat + (1 | id) + (1 | stim)"),
}


def _moments(values: np.ndarray, weights) -> tuple[float, float]:
    if weights is None:
        return float(values.mean()), float(values.std(ddof=1))
    m, s = psis_moments(values[:, None], weights)
    return float(m[0]), float(s[0])


def run_case(name: str, seed: int, threads: int, sbc_datasets: int) -> dict:
    from mlnpe.stan.reference import fit_stan

    load, formula = CASES[name]
    data = load()
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        t = time.perf_counter()
        model, _ = trained_model(formula, data, "gaussian", None, train={"seed": seed, "progress": False}, cache=False,
                                 seed=seed)  # fmt: skip
        fit = model.fit(n_draws=4000, seed=seed + 1, refine=False)
        first_fit = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(data, n_draws=4000, seed=seed + 2, refine=False)
        refit = time.perf_counter() - t
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        ref = fit_stan(model, data, seed=seed, adapt_delta=0.99)
        stan_total = time.perf_counter() - t
    r = ref.draws
    names = [c for c in r.columns if not c.startswith(".")]
    rows = []
    for variable in names:
        r_mean, r_sd = float(r[variable].mean()), float(r[variable].std())
        row = {"variable": variable}
        for label, w in (("raw", None), ("psis", fit.psis)):
            m, s = _moments(fit.draws[variable].to_numpy(), w)
            row[f"{label}_err"], row[f"{label}_ratio"] = abs(m - r_mean) / r_sd, s / r_sd
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variable")
    sbc = model.sbc(n_datasets=sbc_datasets, n_draws=100, seed=seed + 3)
    outside = [row["parameter"] for row in sbc.table() if not row["inside_band"]]
    pooled_outside = [row["parameter"] for row in sbc.table() if row["pooled_inside_band"] is False]
    history = model.npe.history
    out = {"case": name, "formula": model.terms.formula, "rows": len(data),
           "levels": {g: n for g, n in zip(model.terms.groups, [len(fit.design.levels)]
                                           + [len(c.levels) for c in model.crossed])},
           "stopped": history.stopped, "train_seconds": round(model.train_seconds, 1),
           "boxes": [[r.get("box"), r.get("box_khat") and round(r["box_khat"], 2)] for r in model.rounds],
           "first_fit_s": round(first_fit, 1), "refit_s": round(refit, 2), "khat": round(float(fit.pareto_k), 3),
           "stan_s": round(float(ref.diagnostics.get("sample_seconds", stan_total)), 1),
           "stan_divergences": int(ref.diagnostics.get("divergences", 0)), "compared": len(table),
           "sbc_pass": bool(sbc.passed), "sbc_outside": outside, "sbc_pooled_locals_outside": pooled_outside}
    for label in ("raw", "psis"):
        ratio = table[f"{label}_ratio"]
        out[label] = {
            "median_err": round(float(table[f"{label}_err"].median()), 3),
            "max_err": round(float(table[f"{label}_err"].max()), 3),
            "worst": table[f"{label}_err"].idxmax(),
            "ratio_range": [round(float(ratio.min()), 2), round(float(ratio.max()), 2)],
            "ratio_within": round(float(((ratio >= 0.9) & (ratio <= 1.1)).mean()), 3),
        }
    out.update(median_err_sd=out["raw"]["median_err"], max_err_sd=out["raw"]["max_err"],
               sd_ratio_min=out["raw"]["ratio_range"][0], sd_ratio_max=out["raw"]["ratio_range"][1])
    print(json.dumps(out), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=None, help=f"cases among {list(CASES)}")
    parser.add_argument("--quick", action="store_true", help=f"only {list(QUICK)}, SBC over 100 datasets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    cases = args.cases or (list(QUICK) if args.quick else list(CASES))
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        parser.error(f"unknown cases {unknown}; choose among {list(CASES)}")
    print(json.dumps({"machine": platform.machine(), "python": sys.version.split()[0], "torch": torch.__version__,
                      "threads": args.threads}), flush=True)  # fmt: skip
    results = {}
    for name in cases:
        results[name] = run_case(name, args.seed, args.threads, 100 if args.quick else 200)
    keys = ("median_err_sd", "max_err_sd", "sd_ratio_min", "sd_ratio_max", "khat", "sbc_pass")
    summary = {name: {k: r[k] for k in keys} | {"first_fit_s": r["first_fit_s"], "stan_s": r["stan_s"]}
               for name, r in results.items()}
    print(json.dumps(summary), flush=True)
    return summary


if __name__ == "__main__":
    main()
