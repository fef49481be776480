"""Data-parallel training (`mlnpe.distributed`): torchrun with 2 CPU processes (gloo) against 1 process at twice the
batch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "ddp_train.py"
STEPS = 150


def _run(args: list[str], tmp: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT")}  # fmt: skip
    result = subprocess.run(args, cwd=tmp, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def curves(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun (installed with torch) is missing"
    _run([torchrun, "--standalone", "--nproc_per_node=2", str(SCRIPT), str(tmp / "two"), "32", str(STEPS)], tmp)
    _run([sys.executable, str(SCRIPT), str(tmp / "one"), "64", str(STEPS)], tmp)
    read = lambda name: json.loads((tmp / name).read_text())  # noqa: E731
    return read("two.0.json"), read("two.1.json"), read("one.0.json")


def test_processes_end_with_the_same_weights(curves):
    rank0, rank1, _ = curves
    assert np.allclose(rank0["fingerprint"], rank1["fingerprint"], rtol=1e-5, atol=1e-5)
    assert rank0["datasets"] == 2 * 32 * STEPS  # each step sees both processes' batches


def test_loss_curve_matches_one_process_at_twice_the_batch(curves):
    """The same number of datasets per step: the two curves fall alike, their late losses within the noise of the
    simulations (0.1-0.2 nats between seeds here). Processes that did not average their gradients, or stepped
    apart, end with different weights (the test above)."""
    two, _, one = curves
    assert two["step"] == one["step"]
    a, b = np.array(two["loss"]), np.array(one["loss"])
    assert a[0] > a[-1] + 1.0 and b[0] > b[-1] + 1.0  # both learn
    late = slice(len(a) * 2 // 3, None)
    assert abs(a[late].mean() - b[late].mean()) < 0.35, (a[late].mean(), b[late].mean())
