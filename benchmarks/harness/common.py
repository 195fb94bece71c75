"""Shared pieces of the benchmark harness: the resumable unit store, training subprocesses with their peak memory,
statistics, machine description."""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS_DIR = REPO_ROOT / "benchmarks"
EXAMPLES_DIR = REPO_ROOT / "examples"

# two-sided 95% Student t quantiles by degrees of freedom (CI of a mean over a handful of seeds)
_T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def fingerprint(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def write_json(path: Path, data: Any) -> None:
    """Atomic write (a crash mid-write never leaves a truncated unit that a resumed run would trust)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _jsonable(value: Any):
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


# ----------------------------------------------------------------------------------------------------------------
# Resumable units


class UnitStore:
    """One JSON file per unit under `root/units/`; a unit whose file exists with the same spec is not recomputed.

    `spec` is everything that determines a unit's result (its arguments, the budget fields it uses, the fingerprints
    of the units it depends on); a changed spec recomputes the unit. `force` recomputes every unit once.
    """

    def __init__(self, root: Path, force: bool = False):
        self.root = Path(root)
        self.force = force
        self.computed: list[str] = []
        self.cached: list[str] = []
        self.missing: list[str] = []
        self.failed: dict[str, str] = {}

    def path(self, name: str) -> Path:
        return self.root / "units" / f"{name}.json"

    def load(self, name: str) -> dict | None:
        path = self.path(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError:
            return None

    def fresh(self, name: str, spec: dict, computing: bool = True) -> dict | None:
        """The stored unit if it is valid for `spec`; with `--force`, only units computed in this invocation are
        (a section that is not being computed still reports what is stored: `computing=False`)."""
        if name in self.computed:
            return self.load(name)
        if self.force and computing:
            return None
        stored = self.load(name)
        if stored is None or stored.get("fingerprint") != fingerprint(spec):
            return None
        return stored

    def save(self, name: str, spec: dict, result: dict, wall_s: float, load_before=None) -> dict:
        entry = {
            "unit": name,
            "fingerprint": fingerprint(spec),
            "spec": spec,
            "result": result,
            "wall_s": round(wall_s, 3),
            "finished": now_iso(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        }
        write_json(self.path(name), entry)
        if name not in self.computed:
            self.computed.append(name)
        if name in self.missing:  # reported missing by a section not computed, then computed by another (a shared run)
            self.missing.remove(name)
        return entry

    def fail(self, name: str, message: str) -> None:
        self.failed[name] = message
        log(f"{name}: FAILED: {message.splitlines()[0] if message else ''}")

    def run(self, name: str, spec: dict, compute: Callable[[], dict], allowed: bool = True) -> dict | None:
        """The unit's stored entry, computing it when needed (and `allowed`); None when not allowed and not stored."""
        stored = self.fresh(name, spec, computing=allowed)
        if stored is not None:
            if name not in self.cached and name not in self.computed:
                self.cached.append(name)
                log(f"{name}: cached")
            return stored
        if not allowed:
            if name not in self.missing:
                self.missing.append(name)
            return None
        log(f"{name}: running")
        before, start = load_average(), time.perf_counter()
        try:
            result = compute()
        except Exception as err:  # noqa: BLE001 - one failed unit must not lose the others; run_all exits non-zero
            self.fail(name, f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
            return None
        entry = self.save(name, spec, result, time.perf_counter() - start, before)
        log(f"{name}: done in {entry['wall_s']:.1f}s")
        return entry


# ----------------------------------------------------------------------------------------------------------------
# Training runs in subprocesses


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_worker(units: Sequence[dict], log_path: Path, spec_path: Path) -> dict:
    """Run training units ({name, script, argv, result_path}) in one `train_worker.py` subprocess.

    Returns the subprocess's wall time, exit status and peak resident memory (`os.wait4` rusage of that child
    alone: `ru_maxrss`, KiB on Linux). Raises RuntimeError, naming the log, when the process fails.
    """
    write_json(spec_path, {"units": list(units)})
    log_path.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "benchmarks.harness.train_worker", str(spec_path)]
    start = time.perf_counter()
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=subprocess_env(), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    info = {
        "process_wall_s": round(wall, 3),
        "process_peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "process_user_s": round(usage.ru_utime, 2),
        "process_system_s": round(usage.ru_stime, 2),
        "exit_code": process.returncode,
        "log": str(log_path),
    }
    if process.returncode != 0:
        tail = "".join(Path(log_path).read_text(errors="replace").splitlines(keepends=True)[-30:])
        raise RuntimeError(f"training subprocess failed (exit {process.returncode}); log {log_path}:\n{tail}")
    return info


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and half-width of the 95% CI of the mean (Student t), None with a single value."""
    values = [float(v) for v in values]
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, None
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, _T_975.get(n - 1, 1.96) * sd / math.sqrt(n)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else 0.5 * (ordered[n // 2 - 1] + ordered[n // 2])


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ----------------------------------------------------------------------------------------------------------------
# Machine


def machine_info() -> dict:
    import torch
    import transformers

    info: dict[str, Any] = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": _memory_gb(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": load_average(),
    }
    return info


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True)
    except OSError:
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+uncommitted changes" if dirty.stdout.strip() else "")
