"""Benchmarks: run with ``make bench`` / ``make bench-failover`` (never collected by pytest)."""
