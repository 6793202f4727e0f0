"""Benchmarks: pgworker against Node graphile-worker on the same database."""
