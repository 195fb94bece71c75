#!/usr/bin/env python
"""Single measurements outside the Results tables, each a tool of the harness:

    python benchmarks/measure.py step_breakdown [--threads 1]       # where the label tower's step overhead goes
    python benchmarks/measure.py cpu_threads [--output FILE]        # one torch thread against the process's cores
    python benchmarks/measure.py sentence_packing                   # packed against padded sentences, per step
    python benchmarks/measure.py synthetic_corpus --output DIR      # a paper-scale corpus in the authors' format

`python benchmarks/measure.py TOOL --help` lists a tool's options.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.harness`

TOOLS = ("step_breakdown", "cpu_threads", "sentence_packing", "synthetic_corpus")


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in TOOLS:
        raise SystemExit(f"usage: measure.py {{{','.join(TOOLS)}}} [options]\n\n{__doc__}")
    return importlib.import_module(f"benchmarks.harness.{argv[0]}").main(argv[1:])


if __name__ == "__main__":
    main()
