"""Shared fixtures. Tests run on CPU with one thread so timings and results are reproducible."""

import torch

torch.set_num_threads(1)
