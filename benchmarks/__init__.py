"""Benchmarks of unitrans_ds: scripts (`python benchmarks/bench_*.py`) and the transfer suite (`python -m benchmarks.transfer`)."""
