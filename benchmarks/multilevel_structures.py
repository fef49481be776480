"""Several grouping factors on real data: crossed and nested formula models against Stan, and their SBC.

Cases (the data from R's lme4 through Rscript, speed_acc from ../shared/data):
- penicillin: `diameter ~ 1 + (1 | plate) + (1 | sample)`, 24 plates crossed with 6 samples (144 rows);
- pastes: `strength ~ 1 + (1 | batch/cask)`, 30 casks nested in 10 batches (60 rows);
- speed_acc: `log_rt ~ stim_cat + (1 | id) + (1 | stim)` (stim_cat: word or nonword), block 4 of Wagenmakers et
  al. (2008): 811 stimuli crossed with 17 participants (1,626 uncensored trials);
and two simulated designs checked by SBC alone (no Stan):
- nested3: pupils in classes in schools, `y ~ x + (1 | school/class)`, 8 schools x 4 classes x 6 pupils;
- crossed_bernoulli: `y ~ x + (1 | subj) + (1 | item)`, bernoulli, 20 subjects x 10 items x 2 trials.

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


def _nested3(seed: int = 11) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    school = np.repeat(np.arange(8), 24)
    cls = np.repeat(np.arange(32), 6)
    x = rng.normal(size=len(school))
    y = 1.0 + 0.4 * x + rng.normal(0, 0.6, 8)[school] + rng.normal(0, 0.4, 32)[cls] + rng.normal(0, 1.0, len(x))
    return pd.DataFrame({"y": y, "x": x, "school": [f"s{k}" for k in school], "class": [f"c{k}" for k in cls]})


def _crossed_bernoulli(seed: int = 12) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    subj, item = np.meshgrid(np.arange(20), np.arange(10), indexing="ij")
    subj, item = np.repeat(subj.ravel(), 2), np.repeat(item.ravel(), 2)
    x = rng.normal(size=len(subj))
    eta = -0.3 + 0.8 * x + rng.normal(0, 0.8, 20)[subj] + rng.normal(0, 0.5, 10)[item]
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "subj": [f"p{k}" for k in subj], "item": [f"w{k}" for k in item]})


# name: (data, formula, family, compared with Stan)
CASES = {
    "penicillin": (lambda: _lme4("Penicillin"), "diameter ~ 1 + (1 | plate) + (1 | sample)", "gaussian", True),
    "pastes": (lambda: _lme4("Pastes"), "strength ~ 1 + (1 | batch/cask)", "gaussian", True),
    "speed_acc": (_speed_acc, "log_rt ~ stim_cat + (1 | id) + (1 | stim)", "gaussian", True),
    "nested3": (_nested3, "y ~ x + (1 | school/class)", "gaussian", False),
    "crossed_bernoulli": (_crossed_bernoulli, "y ~ x + (1 | subj) + (1 | item)", "bernoulli", False),
}


def _moments(values: np.ndarray, weights) -> tuple[float, float]:
    if weights is None:
        return float(values.mean()), float(values.std(ddof=1))
    m, s = psis_moments(values[:, None], weights)
    return float(m[0]), float(s[0])


def run_case(name: str, seed: int, threads: int, sbc_datasets: int) -> dict:
    from mlnpe.stan.reference import fit_stan

    load, formula, family, with_stan = CASES[name]
    data = load()
    torch.set_num_threads(threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        t = time.perf_counter()
        model, _ = trained_model(formula, data, family, None, train={"seed": seed, "progress": False}, cache=False,
                                 seed=seed)  # fmt: skip
        fit = model.fit(n_draws=4000, seed=seed + 1, refine=False)
        first_fit = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(data, n_draws=4000, seed=seed + 2, refine=False)
        refit = time.perf_counter() - t
    sbc = model.sbc(n_datasets=sbc_datasets, n_draws=100, seed=seed + 3)
    outside = [row["parameter"] for row in sbc.table() if not row["inside_band"]]
    pooled_outside = [row["parameter"] for row in sbc.table() if row["pooled_inside_band"] is False]
    history = model.npe.history
    out = {"case": name, "formula": model.terms.formula, "family": family, "rows": len(data),
           "levels": {g: n for g, n in zip(model.terms.groups, [len(fit.design.levels)]
                                           + [len(c.levels) for c in model.crossed])},
           "stopped": history.stopped, "train_seconds": round(model.train_seconds, 1),
           "boxes": [[r.get("box"), r.get("box_khat") and round(r["box_khat"], 2)] for r in model.rounds],
           "first_fit_s": round(first_fit, 1), "refit_s": round(refit, 2), "khat": round(float(fit.pareto_k), 3),
           "sbc_pass": bool(sbc.passed), "sbc_outside": outside, "sbc_pooled_locals_outside": pooled_outside}
    if not with_stan:
        out.update(median_err_sd=None, max_err_sd=None, sd_ratio_min=None, sd_ratio_max=None, stan_s=None)
        print(json.dumps(out), flush=True)
        return out
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
    out.update(stan_s=round(float(ref.diagnostics.get("sample_seconds", stan_total)), 1),
               stan_divergences=int(ref.diagnostics.get("divergences", 0)), compared=len(table))
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
