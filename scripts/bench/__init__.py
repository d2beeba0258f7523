"""Benchmarks, soak and torture runs: figures for docs/BENCHMARKS.md (scripts/bench/README.md)."""
