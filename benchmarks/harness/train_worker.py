"""Runs training units in this process: `python -m benchmarks.harness.train_worker spec.json` (from the repository root).

`spec.json` is `{"units": [{"name", "script", "argv", "result_path"}, ...]}`; each unit calls `main(argv)` of
the package command (`modeling_sacon.commands.pretrain` / `.finetune`) and writes `result_path`: the script's returned metrics, wall and
CPU time, and the peak resident memory of this process during the unit (VmHWM, reset between units where the kernel
allows it). `run_all.py` starts one worker per run (budgets cpu/gpu: crash isolation, exact per-run peak memory from
`os.wait4`) or one per section (smoke: process start-up would dominate).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import resource
import sys
import time
from pathlib import Path



# The commands a training unit runs: `script` names -> modules of `modeling_sacon.commands`.
COMMANDS = {"pretrain": "pretrain", "finetune_fewrel": "finetune"}


def load_script(name: str):
    """The package command behind a unit's `script` (`pretrain` or `finetune_fewrel`)."""
    if name not in COMMANDS:
        raise ValueError(f"unknown training script {name!r}; known: {sorted(COMMANDS)}")
    return importlib.import_module(f"modeling_sacon.commands.{COMMANDS[name]}")


def script_defaults(name: str) -> dict:
    """The defaults of `examples/<name>.py`'s argument dataclasses (`*Arguments`), by field.

    A training unit's specification holds them beside its argv: a run stored under earlier defaults (a recipe changed
    in the script, not on the command line) is then not reused as if it had run under today's.
    """
    module = load_script(name)
    defaults = {}
    for cls in vars(module).values():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls) and cls.__name__.endswith("Arguments"):
            for f in dataclasses.fields(cls):
                if f.default is not dataclasses.MISSING:
                    defaults[f.name] = f.default
                elif f.default_factory is not dataclasses.MISSING:
                    defaults[f.name] = f.default_factory()
    return defaults


def _reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux >= 4.0); False where not allowed."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    modules = {}
    for unit in spec["units"]:
        print(f"=== unit {unit['name']}: {unit['script']} {' '.join(unit['argv'])}", flush=True)
        reset = _reset_peak_rss()
        if unit["script"] not in modules:
            modules[unit["script"]] = load_script(unit["script"])
        start, cpu = time.perf_counter(), time.process_time()
        metrics = modules[unit["script"]].main(list(unit["argv"]))
        result = {
            "metrics": metrics,
            "wall_s": round(time.perf_counter() - start, 3),
            "cpu_s": round(time.process_time() - cpu, 2),
            "peak_rss_mb": _peak_rss_mb(),
            "peak_rss_scope": "this unit" if reset else "the worker process so far",
        }
        path = Path(unit["result_path"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str) + "\n")
        tmp.replace(path)
        print(f"=== unit {unit['name']} done in {result['wall_s']:.1f}s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
