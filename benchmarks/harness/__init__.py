"""The benchmark harness behind `benchmarks/`'s entry points: budgets, the resumable unit store, the quality and
speed sections, the report, the training worker, and the profiling tools that `measure.py` runs."""

import os
from pathlib import Path

# The benchmarks read the development layout (the data beside the checkout) unless SACON_DATA_DIR says otherwise;
# set here, on import, so every entry point and the training workers they start see the same directory.
_DEVELOPMENT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
if _DEVELOPMENT_DATA.is_dir():
    os.environ.setdefault("SACON_DATA_DIR", str(_DEVELOPMENT_DATA))
