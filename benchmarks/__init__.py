"""Benchmarks and reports: run as scripts (``python benchmarks/bench_op.py``) with PYTHONPATH=."""
