"""Benchmarks and, later, the load-test harness."""
