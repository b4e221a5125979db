"""Benchmarks of the LRT model library (run as `python -m pipeline.benchmarks.step`)."""
