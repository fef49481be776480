"""The exact posterior of the two-level normal model (the benchmarks' ground truth) and the demo."""
