"""Training on a GPU gives the CPU's results within float tolerance, faster: the check of `TrainConfig(device=)`.

Trains the same amortizer twice from the same seed, on the CPU and on CUDA (`device="auto"` picks CUDA when torch
finds a GPU), on the exact normal model with the observed data's loss, and compares:
- the training losses step by step (relative difference; float32 kernels differ in summation order, so the
  curves agree closely at first and drift apart slowly);
- the posterior of one dataset after training, against the exact posterior (mu's and tau's errors in exact sds)
  for both devices;
- datasets per second of training on each device.

    python benchmarks/device_check.py --steps 300            # on a machine with a GPU (a few minutes)
    python benchmarks/device_check.py --steps 20 --cpu-only  # the CPU arm alone (what CI machines can run)

The last line is one JSON object: `cuda` (whether a GPU ran), the `cpu` and `gpu` arms (`device`, `seconds`,
`datasets_per_s`, `mu_err_sd`, `tau_err_sd`), `first_steps_rel_diff` (the largest relative difference of the first
logged losses) and `speedup` (GPU over CPU datasets per second).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.core.data import GroupedData
from mlnpe.core.models import NormalHierarchical
from mlnpe.examples.exact import normal_model_posterior


def _data(seed: int = 3) -> tuple[GroupedData, object]:
    rng = np.random.default_rng(seed)
    alpha = 0.5 + 0.7 * rng.normal(size=12)
    ys = [alpha[j] + rng.normal(size=int(n)) for j, n in enumerate(rng.integers(3, 20, 12))]
    return GroupedData.from_groups(ys), normal_model_posterior(ys)


def arm(device: str, steps: int, batch: int, seed: int) -> dict:
    data, exact = _data()
    npe = MultilevelNPE(NormalHierarchical(), groups=(5, 30), rows=(2, 30), seed=seed)
    t = time.perf_counter()
    history = npe.train(TrainConfig(steps=steps, batch_size=batch, learning_rate=2e-3, seed=seed, progress=False,
                                    device=device), observed=data)  # fmt: skip
    seconds = time.perf_counter() - t
    draws = npe.sample(data, 4000, seed=seed + 1)
    mu, tau = draws.global_draws[:, 0], draws.global_draws[:, 1]
    return {"device": history.device, "seconds": round(seconds, 1),
            "datasets_per_s": round(history.datasets_per_second, 1), "loss": history.loss,
            "mu_err_sd": round(abs(mu.mean() - exact.mu_mean) / exact.mu_sd, 3),
            "tau_err_sd": round(abs(tau.mean() - exact.tau_mean) / exact.tau_sd, 3)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cpu-only", action="store_true", help="run the CPU arm only")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.cpu_only
    if not cuda and not args.cpu_only:
        print("torch finds no CUDA GPU: running the CPU arm only (pass --cpu-only to silence this)", file=sys.stderr)
    cpu = arm("cpu", args.steps, args.batch, args.seed)
    out = {"cuda": cuda, "cpu": {k: v for k, v in cpu.items() if k != "loss"}}
    if cuda:
        gpu = arm("cuda", args.steps, args.batch, args.seed)
        n = min(10, len(cpu["loss"]), len(gpu["loss"]))
        diff = [abs(a - b) / max(abs(a), 1e-6) for a, b in zip(cpu["loss"][:n], gpu["loss"][:n])]
        out["first_steps_rel_diff"] = round(max(diff), 6)
        out["gpu"] = {k: v for k, v in gpu.items() if k != "loss"}
        out["speedup"] = round(gpu["datasets_per_s"] / cpu["datasets_per_s"], 2)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
