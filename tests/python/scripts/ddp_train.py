"""Trains the exact normal model's amortizer for a fixed budget and writes its loss curve and a fingerprint of its
weights (per rank) to OUT: run directly (one process) or by torchrun (several). Used by test_distributed.py."""

import json
import os
import sys

import torch

from mlnpe import MultilevelNPE, TrainConfig
from mlnpe.core.models import NormalHierarchical

out, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
npe = MultilevelNPE(NormalHierarchical(), groups=(5, 15), rows=(2, 20), seed=0)
history = npe.train(TrainConfig(steps=steps, batch_size=batch, learning_rate=2e-3, seed=0, progress=False))
rank = int(os.environ.get("RANK", "0"))
weights = torch.cat([p.detach().flatten() for p in npe.estimator.parameters()])
with open(f"{out}.{rank}.json", "w") as f:
    json.dump({"loss": history.loss, "step": history.step, "datasets": history.datasets_seen,
               "fingerprint": [float(weights.sum()), float(weights.abs().sum()), float(weights[:50].sum())]}, f)
