"""wasmlet benchmarks: numbers, not pass/fail. ``make bench`` runs them all (see bench/run.py)."""
