"""The benchmark harness behind `benchmarks/`'s entry points: budgets, the resumable unit store, the quality and
speed sections, the report, the training worker, and the profiling tools that `measure.py` runs."""
