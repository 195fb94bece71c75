"""The default pre-training step with one torch thread (what `accelerate launch` left a single CPU process:
OMP_NUM_THREADS=1) against this process's share of the cores (what `examples/pretrain.py`'s `use_all_cores` sets).

    python benchmarks/measure.py cpu_threads                       # packaged MiniLM, batch 32, pretrain.py's default recipe
    python benchmarks/measure.py cpu_threads --output benchmarks/results/cpu_threads.json

One process, one batch (`speed.py`'s), one model and fused AdamW; the two arms alternate (A B A B ...) after warm-up,
so drifting load hits both alike; medians and spreads (min-max) of wall time per optimizer step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from .budgets import CPU
from .common import median
from .speed import pretraining_step_inputs


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from modeling_sacon import SaconDualEncoderModel
    from modeling_sacon.utils.defaults import default_backbone_path

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    backbone = default_backbone_path()
    processor, batch = pretraining_step_inputs(CPU, backbone)
    batch = {k: v for k, v in batch.items() if "mlm" not in k}  # the default recipe: no MLM without a pretrained head
    model = SaconDualEncoderModel.from_encoders_pretrained(
        backbone, vocab_size=len(processor.tokenizer), sentence_mlm_weight=0.0, label_mlm_weight=0.0
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(threads: int) -> float:
        torch.set_num_threads(threads)
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    arms = {"1 thread (accelerate launch before)": 1, f"{cores} threads (use_all_cores)": cores}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for i in range(args.warmup + args.repeats):
        for name, threads in arms.items():
            elapsed = step(threads)
            if i >= args.warmup:
                times[name].append(elapsed)
    one, many = (median(times[name]) for name in arms)
    result = {
        "cores": cores, "repeats": args.repeats, "batch": int(batch["input_ids"].shape[0]),
        "step_s": {name: {"median": median(v), "min": min(v), "max": max(v)} for name, v in times.items()},
        "speedup": one / many,
    }
    for name, v in times.items():
        print(f"{name:38s} {median(v):6.3f} s/step ({min(v):.3f}-{max(v):.3f})")
    print(f"speed-up with all cores: x{one / many:.2f}")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(result, indent=2) + "\n")
    return result
