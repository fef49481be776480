"""Scale: a bernoulli GLMM with many groups, through mlnpe()'s default path, and the cost of a training step
against the number of rows.

Data: `y ~ x + (1 + x | g)`, bernoulli, J groups of n rows each (default 300 x 25 = 7,500 rows), simulated with
Intercept -0.5, b_x 1, sd_g__Intercept 0.8, sd_g__x 0.4, cor 0.3 and x ~ N(0, 1).

1. The first fit as `mlnpe()` runs it (`trained_model`, focus 1, the data's unlabeled loss and PSIS certificate):
   training seconds, why training stopped, the amortized draws' k-hat, and the error of the posterior means of
   the globals in posterior sds against the PSIS-reweighted draws (the reweighted ones are exact in the limit when
   k-hat < 0.7).
2. Seconds per training step (the default batch of 64 datasets, simulation included) for J groups and n rows per
   group at n = 5, 25 and 100: how the cost grows with the rows.

    python benchmarks/scale.py                    # both parts, 300 x 25
    python benchmarks/scale.py --steps-only       # part 2 only (about a minute)
    python benchmarks/scale.py --groups 100 --rows 10

The last line is one JSON object with `first_fit_s`, `stopped`, `khat`, `max_err_psis_sd` and `step_s` (rows per
group -> seconds per step).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings

import numpy as np
import pandas as pd
import torch

from mlnpe.formula.api import FormulaNPE
from mlnpe.formula.cache import trained_model, training_config
from mlnpe.inference.psis import ParetoKWarning, psis_moments

FORMULA = "y ~ x + (1 + x | g)"


def simulate(groups: int, rows: int, seed: int) -> pd.DataFrame:
    """The benchmark's data: `groups` groups of `rows` rows."""
    rng = np.random.default_rng(seed)
    sd, cor = np.array([0.8, 0.4]), 0.3
    cov = np.diag(sd) @ np.array([[1.0, cor], [cor, 1.0]]) @ np.diag(sd)
    r = rng.multivariate_normal(np.zeros(2), cov, size=groups)
    g = np.repeat(np.arange(groups), rows)
    x = rng.normal(size=groups * rows)
    eta = -0.5 + x + r[g, 0] + r[g, 1] * x
    y = (rng.uniform(size=eta.size) < 1 / (1 + np.exp(-eta))).astype(int)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{j:03d}" for j in g]})


def step_seconds(groups: int, rows: int, seed: int, steps: int = 20) -> float:
    """Seconds per training step (simulation, NPE loss and the data's unlabeled loss) after 5 warm-up steps."""
    model = FormulaNPE(FORMULA, simulate(groups, rows, seed), "bernoulli", seed=seed)
    config = training_config({"steps": 5, "progress": False, "check_every": 0})
    model.train(config)
    start = time.perf_counter()
    model.train(config.__class__.from_dict({**config.to_dict(), "steps": steps}))
    return (time.perf_counter() - start) / steps


def first_fit(groups: int, rows: int, seed: int) -> dict:
    data = simulate(groups, rows, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ParetoKWarning)
        start = time.perf_counter()
        model, _ = trained_model(FORMULA, data, "bernoulli", train={"seed": seed, "progress": False}, cache=False,
                                 seed=seed)  # fmt: skip
        fit = model.fit(n_draws=4000, seed=seed + 1, refine=False)
        seconds = time.perf_counter() - start
    names = [n for n in fit.draws.columns if n.split("_")[0] in ("b", "sd", "cor")]
    values = fit.draws[names].to_numpy()
    raw_mean, raw_sd = values.mean(0), values.std(0, ddof=1)
    psis_mean, psis_sd = psis_moments(values, fit.psis)
    err = np.abs(raw_mean - psis_mean) / psis_sd
    history = model.npe.history
    return {"first_fit_s": round(seconds, 1), "train_seconds": round(model.train_seconds, 1),
            "stopped": history.stopped, "checks": [[c["step"], round(c["khat"], 2)] for c in history.checks],
            "khat": round(float(fit.pareto_k), 3), "max_err_psis_sd": round(float(err.max()), 3),
            "sd_ratio": [round(float(v), 2) for v in (raw_sd / psis_sd)], "globals": names}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--groups", type=int, default=300)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--steps-only", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: dict = {"groups": args.groups, "rows": args.rows}
    out["step_s"] = {n: round(step_seconds(args.groups, n, args.seed), 3) for n in (5, 25, 100)}
    print(json.dumps(out), flush=True)
    if not args.steps_only:
        out.update(first_fit(args.groups, args.rows, args.seed))
    print(f"# {platform.machine()}, {args.threads} threads; python " + " ".join(sys.argv), file=sys.stderr)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
