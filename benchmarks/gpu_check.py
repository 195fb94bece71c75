#!/usr/bin/env python
"""GPU check: the default recipe at a GPU-sized batch and length in bf16, and a bert-base-sized model with its MLM heads.

Two runs of `examples/pretrain.py` on one CUDA GPU, nothing downloaded:

1. A bert-base-sized `BertForMaskedLM` (768 hidden, 12 layers, 30,522 tokens; random init, saved locally with the
   backbone's uncased tokenizer, which has bert-base-uncased's vocabulary), composed with `from_encoders_pretrained`,
   200 bf16 steps: the log shows both towers' MLM heads carried over and every loss term finite at the paper's size.
2. The packaged all-MiniLM-L6-v2 (or `--backbone`) with the tuned recipe (v2 corpus, shuffled batches,
   `budgets.CPU_RECIPE`: learning rate 1e-4, entity blanking 0.3), batch 128, bf16. Reports sentence tokens per
   second (non-padding, the Trainer's `include_num_input_tokens_seen`), sentences per second, and val_wiki 5-way
   1-shot prototypes, zero-shot 5-way and label-augmented 5-1 on 10,000 episodes.

    python benchmarks/gpu_check.py --output_dir /tmp/gpu_check
    python benchmarks/gpu_check.py --output_dir /tmp/gpu_check --minilm_steps 3000 --backbone path/to/minilm

Writes `<output_dir>/gpu_check.json` (and each run's log beside it; it is rewritten after every stage, so a run cut
short keeps what it finished) and prints it. Data come from SACON_DATA_DIR. `--allow_cpu` runs it without a GPU, to
check its plumbing (`tests/test_benchmarks.py`, tiny models).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, HfArgumentParser

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `benchmarks.harness`

from benchmarks.harness.budgets import CPU_RECIPE
from modeling_sacon.utils.defaults import default_backbone_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOSS_TERMS = ("contrastive_loss", "sentence_mlm_loss", "label_mlm_loss")


@dataclass
class GpuCheckArguments:
    output_dir: str = field(default="outputs/gpu_check", metadata={"help": "Checkpoints, logs and gpu_check.json."})
    backbone: str | None = field(default=None, metadata={"help": "MiniLM path (default: the packaged one)."})
    minilm_steps: int = field(default=1500, metadata={"help": "Pre-training steps of the MiniLM run."})
    minilm_batch_size: int = field(default=128, metadata={"help": "Sentences per batch (the authors: 128)."})
    minilm_learning_rate: float = field(
        default=float(CPU_RECIPE["learning_rate"]), metadata={"help": "Peak learning rate (the main command's)."}
    )
    minilm_blank_probability: float = field(
        default=float(CPU_RECIPE["blank_probability"]),
        metadata={"help": "Probability of blanking each entity mention (the main command's)."},
    )
    bert_steps: int = field(default=200, metadata={"help": "Steps of the bert-base-sized run."})
    bert_batch_size: int = field(default=64)
    bert_config: str | None = field(
        default=None, metadata={"help": "JSON of BertConfig fields over bert-base's sizes (tests shrink the model)."}
    )
    episodes: int = field(default=10_000, metadata={"help": "Episodes per evaluation setting."})
    dataloader_num_workers: int = field(default=4)
    seed: int = field(default=1)
    allow_cpu: bool = field(default=False, metadata={"help": "Run without a GPU: checks this script's plumbing only."})


def run_logged(command: list[str], log: Path) -> float:
    """Runs `command`, its output into `log`; returns wall seconds. A failure prints the log's end and stops."""
    print(f"$ {' '.join(command)}  (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        returncode = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT).returncode
    if returncode != 0:
        print(log.read_text()[-6000:], flush=True)
        raise SystemExit(f"{command[1]} failed with exit code {returncode}; log: {log}")
    return time.perf_counter() - start


def pretrain(
    backbone: str, output_dir: Path, steps: int, batch_size: int, args: GpuCheckArguments, extra: dict | None = None
) -> dict:
    log = output_dir.with_suffix(".log")
    options = {
        "sentence_model_name_or_path": backbone, "output_dir": str(output_dir), "overwrite_output_dir": True,
        "max_steps": steps, "per_device_train_batch_size": batch_size, "bf16": True, "seed": args.seed,
        "dataloader_num_workers": args.dataloader_num_workers, "save_steps": steps, "logging_steps": max(1, steps // 20),
        "include_num_input_tokens_seen": "non_padding", "report_to": "none", "skip_memory_metrics": False,
        **(extra or {}),
    }  # one JSON file: the command line cannot pass "non_padding" (HfArgumentParser reads `str | bool` as a bool)
    if not torch.cuda.is_available():  # --allow_cpu: bf16 autocast on the CPU
        options["use_cpu"] = True
    options_file = output_dir.with_suffix(".args.json")
    options_file.write_text(json.dumps(options, indent=2) + "\n")
    wall = run_logged([sys.executable, str(EXAMPLES / "pretrain.py"), str(options_file)], log)
    state = json.loads((output_dir / "trainer_state.json").read_text())
    train = json.loads((output_dir / "train_results.json").read_text())
    logged = [entry for entry in state["log_history"] if "contrastive_loss" in entry]
    tokens = max(entry.get("num_input_tokens_seen", 0) for entry in state["log_history"])
    config = json.loads((output_dir / "config.json").read_text())
    return {
        "steps": state["global_step"],
        "batch_size": batch_size,
        "wall_s": round(wall, 1),
        "train_runtime_s": train["train_runtime"],
        "sentences_per_s": train["train_samples_per_second"],
        "sentence_tokens_seen": tokens,
        "sentence_tokens_per_s": round(tokens / train["train_runtime"]) if tokens else None,
        "hf_flos_per_s": train["total_flos"] / train["train_runtime"],  # the Trainer's 6 x params x tokens estimate
        "memory": {k: v for k, v in train.items() if "_mem_" in k},
        "first_logged": {k: logged[0].get(k) for k in LOSS_TERMS} if logged else None,
        "last_logged": {k: logged[-1].get(k) for k in LOSS_TERMS} if logged else None,
        "all_losses_finite": all(math.isfinite(e[k]) for e in logged for k in LOSS_TERMS if k in e),
        "mlm_weights": {t: config.get(f"{t}_mlm_weight") for t in ("sentence", "label")},
        "head_log": [line.strip() for line in log.read_text().splitlines() if "MLM head" in line],
        "final_eval": json.loads(eval_file.read_text()) if (eval_file := output_dir / "eval_results.json").exists() else None,
    }


def evaluate(checkpoint: Path, args: GpuCheckArguments) -> dict:
    results = {}
    for method, settings, pubmed in (("prototype", "5-1,zs-5", "5-1"), ("label_augmented", "5-1", "")):
        out = checkpoint.parent / f"eval-{method}.json"
        command = [sys.executable, str(EXAMPLES / "evaluate_fewrel.py"), "--model_name_or_path", str(checkpoint),
                   "--settings", settings, "--method", method, "--episodes", str(args.episodes), "--no_progress", "True",
                   "--output_json", str(out)]
        command += ["--pubmed_settings", pubmed] if pubmed else ["--pubmed_file", ""]
        run_logged(command, out.with_suffix(".log"))
        for name, value in json.loads(out.read_text()).items():
            key = f"{name} ({method})" if method != "prototype" else name
            results[key] = {"accuracy": round(100 * value["accuracy"], 2), "ci95": round(100 * value["ci95"], 2)}
    return results


def bert_base_random(backbone: str, path: Path, overrides: str | None = None) -> str:
    """A bert-base-sized BertForMaskedLM with random weights and the backbone's (bert-base-uncased) vocabulary."""
    tokenizer = AutoTokenizer.from_pretrained(backbone)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, **json.loads(overrides or "{}"))  # defaults: bert-base's sizes
    model = BertForMaskedLM(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def main() -> dict:
    (args,) = HfArgumentParser(GpuCheckArguments).parse_args_into_dataclasses()
    if not torch.cuda.is_available() and not args.allow_cpu:
        raise SystemExit("benchmarks/gpu_check.py needs a CUDA GPU")
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    backbone = args.backbone or default_backbone_path()
    report = {
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "none (--allow_cpu)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "backbone": backbone,
    }
    result_file = output_dir / "gpu_check.json"

    def save() -> None:  # after every stage: a run stopped by a time limit keeps what it finished
        result_file.write_text(json.dumps(report, indent=2) + "\n")

    # 1. bert-base-sized BertForMaskedLM, random init: carried-over MLM heads and bf16 at the paper's size.
    bert_path = bert_base_random(backbone, output_dir / "bert-base-random", args.bert_config)
    report["bert_base_random"] = pretrain(  # no episodes: a random encoder's accuracy says nothing
        bert_path, output_dir / "bert-base-sacon", args.bert_steps, args.bert_batch_size, args, {"eval_fewrel": "none"}
    )
    save()
    # 2. MiniLM, the tuned recipe at a GPU-sized batch and length, then val_wiki / val_pubmed episodes.
    minilm_dir = output_dir / "minilm"
    report["minilm"] = pretrain(
        backbone, minilm_dir, args.minilm_steps, args.minilm_batch_size, args,
        {"learning_rate": args.minilm_learning_rate, "blank_probability": args.minilm_blank_probability},
    )
    save()
    report["minilm"]["evaluation"] = evaluate(minilm_dir, args)
    save()
    print(result_file.read_text())
    return report


if __name__ == "__main__":
    main()
