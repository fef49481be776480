"""Training on several processes: torch DistributedDataParallel, launched by `torchrun`.

A training script that calls `MultilevelNPE.train` (or `FormulaNPE.train`) trains data-parallel when `torchrun`
starts it on several processes (its WORLD_SIZE environment variable above 1):

    torchrun --nproc_per_node=2 train.py          # 2 processes on this machine (CPU: gloo; GPUs: nccl)
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_endpoint=host:29500 train.py   # 8 processes on 2 nodes

Each process simulates its own `batch_size` datasets per step from its own random stream; DistributedDataParallel
averages the gradients, so a step of P processes is a step at P times the batch. Every process ends with the same
weights; the script saves them on rank 0 (`torch.distributed.get_rank() == 0`). The learning-rate schedule, the end of
training (steps or time limit) and a monitor's verdict (the certificate, which runs on rank 0) are rank 0's,
broadcast every step, so the processes stay in step. Offline training (a fixed simulation budget) is not
distributed. With `TrainConfig(device="cuda")` (or "auto" on a GPU machine) process k trains on GPU LOCAL_RANK.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Group", "process_group"]


@dataclass
class Group:
    """The process group of a torchrun launch: this process's rank and the number of processes."""

    rank: int
    world: int

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` in DistributedDataParallel (rank 0's weights and buffers broadcast to every process)."""
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def leader(self, values: list[float]) -> list[float]:
        """Rank 0's `values` on every process."""
        t = torch.tensor(values, dtype=torch.float64)
        dist.broadcast(t, src=0)
        return t.tolist()

    def leader_object(self, value: Any) -> Any:
        """Rank 0's `value` (any picklable object) on every process."""
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def process_group(device: torch.device | None = None) -> Group | None:
    """The process group of this training: the one already initialized, or one initialized here from torchrun's
    environment (backend nccl for CUDA, else gloo); None for a single process."""
    if not dist.is_available():
        return None
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        dist.init_process_group(backend="nccl" if device is not None and device.type == "cuda" else "gloo")
    if dist.get_world_size() <= 1:
        return None
    return Group(dist.get_rank(), dist.get_world_size())


def local_device(device: torch.device) -> torch.device:
    """A CUDA device without an index becomes this process's GPU (LOCAL_RANK) under torchrun."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device
