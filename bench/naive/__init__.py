"""The naive designs stocksync is measured against: `python -m bench.naive` (BENCHMARKS.md)."""
