"""Benchmarks: run each as a script (`python bench/<name>.py`); never part of the test suite."""
