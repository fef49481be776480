"""Latency and throughput of the ML-NPE engine on the CPU.

- Sampling: time to draw 1000 joint posterior draws (globals and every group's locals) for one dataset with
  J = 30 groups of N_j = 100 rows, on one CPU thread, after warm-up (median of repeats).
- Training: datasets per second of online training (simulation included) at the default network sizes.

    python benchmarks/latency.py            # last line: one JSON object
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import numpy as np
import torch

from mlnpe import GroupedData, MultilevelNPE, TrainConfig
from mlnpe.core.models import NormalHierarchical


def sampling_ms(npe: MultilevelNPE, data: GroupedData, n_draws: int, repeats: int) -> dict[str, float]:
    for _ in range(3):
        npe.sample(data, n_draws, seed=0, log_prob=False)
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        npe.sample(data, n_draws, seed=i, log_prob=False)
        times.append(1000 * (time.perf_counter() - t))
    return {"median_ms": statistics.median(times), "min_ms": min(times)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--train-threads", type=int, default=2)
    args = parser.parse_args(argv)

    npe = MultilevelNPE(NormalHierarchical(), groups=(5, 30), rows=(2, 100))
    torch.set_num_threads(args.train_threads)
    history = npe.train(TrainConfig(steps=args.train_steps, batch_size=128, progress=False))

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    data = GroupedData.from_groups([rng.normal(size=100) for _ in range(30)])
    sample = sampling_ms(npe, data, 1000, args.repeats)
    result = {
        "sample_1000_draws_J30_N100_ms": round(sample["median_ms"], 2),
        "sample_min_ms": round(sample["min_ms"], 2),
        "sample_threads": 1,
        "train_datasets_per_second": round(history.datasets_per_second, 1),
        "train_threads": args.train_threads,
        "train_batch_size": 128,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} thread(s) for sampling",
        "command": "python " + " ".join(sys.argv),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
