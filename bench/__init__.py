"""Benchmarks: `python -m bench.<name>` from the project root (see BENCHMARKS.md)."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"  # git ignores it
