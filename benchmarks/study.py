"""Many-fit workflows: batched inference and simulation studies with one trained amortizer (`mlnpe.study`).

Model: the exact normal model of `exact_posterior.py` (y_ij ~ N(alpha_j, 1), alpha_j ~ N(mu, tau), mu ~ N(0, 1),
tau ~ N+(0, 1)), trained over J in [5, 30] and N_j in [2, 50]. Reports:
- `sample_many()`'s throughput for datasets of J = 30 groups of N_j = 20 rows (`--draws` posterior draws each,
  summaries out) against a loop of single fits (`MultilevelNPE.sample`, the same draws), side by side;
- a simulation study (`simulate_study`) over a grid of mu and tau: its wall time, and the coverage of the 50, 90
  and 95 % intervals of mu and tau against the nominal levels (the largest absolute difference);
- the same study on a local dask cluster of 2 single-threaded workers against this process (`client=`);
- training throughput (datasets per second, online, batch 64 per process, 1 thread each) of 2 processes under
  `torchrun` (DistributedDataParallel, gloo on CPU; `mlnpe.distributed`) against 1 process.

    python benchmarks/study.py --quick     # last line: one JSON object
    python benchmarks/study.py --device cuda   # the same with training on the GPU (a GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.core.models import NormalHierarchical
from mlnpe.core.spec import simulate_batch
from mlnpe.study import sample_many, simulate_study, study_client

GROUPS, ROWS = (5, 30), (2, 50)


def throughput(npe: MultilevelNPE, n_datasets: int, n_loop: int, draws: int, seed: int) -> dict[str, float]:
    """Datasets per second of `sample_many` (chunks of 256) and of a loop of single fits, J = 30, N_j = 20."""
    sims = simulate_batch(npe.model, n_datasets, (30, 30), (20, 20), torch.Generator().manual_seed(seed))
    datasets = sims.batch.to_datasets()
    t = time.perf_counter()
    sample_many(npe, datasets, n_draws=draws, seed=seed, chunk=256)
    batched = n_datasets / (time.perf_counter() - t)
    t = time.perf_counter()
    for i, d in enumerate(datasets[:n_loop]):
        npe.sample(d, draws, seed=seed + i, log_prob=False)
    loop = n_loop / (time.perf_counter() - t)
    return {"datasets_per_s": round(batched, 1), "loop_datasets_per_s": round(loop, 1),
            "speedup_vs_loop": round(batched / loop, 1)}  # fmt: skip


def coverage(npe: MultilevelNPE, n_datasets: int, draws: int, seed: int) -> dict:
    """A study over mu in {0, 1} and tau in {0.3, 1}, J in {10, 30}, N_j = 10: coverage against nominal."""
    truths = np.array([[mu, tau] for mu in (0.0, 1.0) for tau in (0.3, 1.0)])
    study = simulate_study(npe, truths, [10, 30], [10], n_datasets, draws, seed)
    s = study.summary
    errors = {f"{row.parameter}@{row.point},J={row.n_groups}": max(abs(row.coverage_50 - 0.5),
                                                                   abs(row.coverage_90 - 0.9),
                                                                   abs(row.coverage_95 - 0.95))
              for row in s.itertuples()}  # fmt: skip
    # a coverage estimated from n datasets errs by about sqrt(p (1 - p) / n) (0.035 at 50 %, n = 200) by chance
    return {"study_seconds": round(study.seconds, 1), "study_datasets": len(study.datasets),
            "coverage_abs_err_max": round(max(errors.values()), 3),
            "coverage_abs_err_median": round(float(np.median(list(errors.values()))), 3),
            "unreliable": study.n_unreliable,
            "table": s[["point", "n_groups", "parameter", "truth", "bias", "rmse", "coverage_50", "coverage_90",
                        "coverage_95", "power_interval"]].round(3).to_dict("records")}  # fmt: skip


def workers(npe: MultilevelNPE, n_datasets: int, draws: int, seed: int) -> dict:
    """The coverage study's wall time in this process and on a local cluster of 2 single-threaded workers."""
    truths = np.array([[mu, tau] for mu in (0.0, 1.0) for tau in (0.3, 1.0)])
    t = time.perf_counter()
    here = simulate_study(npe, truths, [10, 30], [10], n_datasets, draws, seed)
    one = time.perf_counter() - t
    with study_client(2) as client:
        client.run(lambda: None)  # the workers are up before the clock starts
        t = time.perf_counter()
        spread = simulate_study(npe, truths, [10, 30], [10], n_datasets, draws, seed, client=client)
        two = time.perf_counter() - t
    same = bool(np.allclose(here.summary["bias"], spread.summary["bias"], rtol=1e-4, atol=1e-6))
    return {"study_s_1_process": round(one, 1), "study_s_2_workers": round(two, 1),
            "study_speedup_2_workers": round(one / two, 2), "study_same_numbers": same}  # fmt: skip


def ddp(steps: int, device: str) -> dict:
    """Training datasets per second of 1 process and of 2 under torchrun (batch 64 per process, 1 thread each)."""
    out: dict[str, float] = {}
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    with tempfile.TemporaryDirectory() as tmp:
        for procs in (1, 2):
            target = Path(tmp) / f"p{procs}.json"
            command = [sys.executable, __file__, "--ddp-worker", str(target), "--steps", str(steps), "--device", device]
            if procs > 1:
                command = [torchrun, "--standalone", f"--nproc_per_node={procs}", __file__, "--ddp-worker", str(target),
                           "--steps", str(steps), "--device", device]  # fmt: skip
            subprocess.run(command, check=True, env=env, capture_output=True, text=True)
            out[f"ddp_datasets_per_s_{procs}"] = json.loads(target.read_text())["datasets_per_s"]
    out["ddp_speedup_2_procs"] = round(out["ddp_datasets_per_s_2"] / out["ddp_datasets_per_s_1"], 2)
    return out


def ddp_worker(target: str, steps: int, device: str) -> None:
    torch.set_num_threads(1)
    npe = MultilevelNPE(NormalHierarchical(), groups=GROUPS, rows=ROWS, seed=0)
    history = npe.train(TrainConfig(steps=steps, batch_size=64, learning_rate=3e-3, progress=False, device=device))
    if int(os.environ.get("RANK", "0")) == 0:
        Path(target).write_text(json.dumps({"datasets_per_s": round(history.datasets_seen / history.train_seconds, 1)}))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="90 s of training, smaller studies")
    parser.add_argument("--seconds", type=float, default=None, help="training time limit (default 300, quick 90)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draws", type=int, default=100, help="posterior draws per dataset in the throughput test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300, help="training steps of each DDP arm")
    parser.add_argument("--device", default="cpu", help="TrainConfig device of the training and DDP arms")
    parser.add_argument("--ddp-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ddp_worker:
        ddp_worker(args.ddp_worker, args.steps, args.device)
        return {}
    torch.set_num_threads(args.threads)
    seconds = args.seconds or (90.0 if args.quick else 300.0)
    npe = MultilevelNPE(NormalHierarchical(), groups=GROUPS, rows=ROWS, seed=args.seed)
    npe.train(TrainConfig(steps=100_000, time_limit=seconds, batch_size=128, learning_rate=3e-3, seed=args.seed,
                          progress=False, device=args.device))  # fmt: skip
    out = {"machine": platform.machine(), "python": platform.python_version(), "torch": torch.__version__,
           "threads": args.threads, "train_seconds": round(npe.history.train_seconds, 1)}  # fmt: skip
    out.update(throughput(npe, 2000 if args.quick else 10000, 100, args.draws, args.seed + 1))
    out.update(coverage(npe, 200 if args.quick else 500, 500, args.seed + 2))
    out.update(workers(npe, 400 if args.quick else 1000, 500, args.seed + 3))
    out.update(ddp(150 if args.quick else args.steps, args.device))
    table = out.pop("table")
    for row in table:
        print(row)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main(sys.argv[1:])
