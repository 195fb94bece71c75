#!/usr/bin/env python
"""Paper-scale data pipeline: start-up, memory and collation throughput on an 800k-sentence, 700-relation corpus.

    python benchmarks/pipeline_throughput.py                      # writes benchmarks/results/pipeline_throughput.{json,md}
    python benchmarks/pipeline_throughput.py --num_sentences 20000 --num_relations 100 --results_dir /tmp/r   # quick

Steps (each measured in a fresh child process, so wall time and peak RSS are that process's own):

1. the corpus: ``measure.py synthetic_corpus`` writes the authors' format (``cpdata.json`` + labels + rel2scope) to
   ``--work_dir`` (outside the repository), once; reused while its size and seed match;
2. start-up, cold and warm: ``examples/pretrain.py --train_files cpdata.json --max_steps 1`` at batch 256 on a
   saved tiny BERT (hidden 32, 2 layers, the packaged MiniLM tokenizer), from process start to exit: reading +
   validating the corpus into Arrow (cold: the ``datasets`` cache emptied first; warm: the Arrow file reused),
   label texts, the relation-balanced sampler, the collator, the first batch, one optimizer step and the save;
3. the same data path without a model, phase by phase (load, label texts, sampler, processor, first batch);
4. collation throughput of one worker (one torch thread): ``SaconPretrainingCollator`` at the default length
   (64 tokens), batch 256 (128 relations x 2), rows fetched from the memory-mapped dataset as a DataLoader worker
   does, after ``--warmup_batches``; per wall-second and per CPU-second (the cores are shared: CPU time is what a
   worker with a core of its own would spend), the best of ``--repeats`` repeats, and from it the workers that a
   40 ms GPU step at batch 256 (6,400 sentences/s) needs; then the same without the processor's word-piece cache.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
GPU_STEP_SECONDS = 0.040
BATCH = 256
INSTANCES_PER_RELATION = 2


# --------------------------------------------------------------------------- children (run in fresh processes)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_data_path(args: argparse.Namespace) -> dict[str, Any]:
    """The pre-training data path phase by phase, as examples/pretrain.py runs it, without a model."""
    phases: dict[str, float] = {}
    start = time.perf_counter()

    def mark(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        phases[name] = round(now - start, 3)
        start = now

    from modeling_sacon import SaconProcessor
    from modeling_sacon.data import (
        RelationBalancedBatchSampler, label_texts, load_label_table, load_relation_corpus, relation_corpus_label_table,
    )
    from modeling_sacon.data.collator import SaconPretrainingCollator
    from modeling_sacon.utils.defaults import default_backbone_path

    mark("imports")
    dataset = load_relation_corpus(args.corpus)
    mark("load + validate (Arrow)")
    relations = dataset["relation"][:]
    table = {**relation_corpus_label_table(args.corpus), **load_label_table(args.labels)}
    labels = label_texts(dict.fromkeys(relations), table, source=args.corpus)
    mark("label texts")
    sampler = RelationBalancedBatchSampler(relations, BATCH // INSTANCES_PER_RELATION, INSTANCES_PER_RELATION, seed=0)
    first = next(iter(sampler))
    mark("sampler + first indices")
    processor = SaconProcessor.from_pretrained(default_backbone_path())
    collator = SaconPretrainingCollator(processor, labels, relation_to_id={r: i for i, r in enumerate(labels)})
    mark("processor + collator")
    batch = collator(dataset.__getitems__(first))
    mark("first batch (fetch + collate)")
    return {"rows": len(dataset), "relations": len(labels), "phases_s": phases,
            "total_s": round(sum(phases.values()), 3), "peak_rss_mb": round(_peak_rss_mb()),
            "batch_shape": list(batch["input_ids"].shape)}


def child_collate(args: argparse.Namespace) -> dict[str, Any]:
    """Sentences/s of one worker: fetch rows + collate, and collate alone; best of ``repeats``."""
    import torch

    torch.set_num_threads(1)
    from modeling_sacon import SaconProcessor
    from modeling_sacon.data import RelationBalancedBatchSampler, load_label_table, load_relation_corpus
    from modeling_sacon.data.collator import SaconPretrainingCollator
    from modeling_sacon.utils.defaults import default_backbone_path

    dataset = load_relation_corpus(args.corpus)
    labels = load_label_table(args.labels)
    processor = SaconProcessor.from_pretrained(default_backbone_path())
    if args.child == "collate_uncached":  # the reference: every word tokenised again in every batch
        tokenizer = processor.tokenizer
        processor._word_pieces = lambda words: tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
    collator = SaconPretrainingCollator(processor, labels, relation_to_id={r: i for i, r in enumerate(labels)})
    sampler = RelationBalancedBatchSampler(dataset["relation"][:], BATCH // INSTANCES_PER_RELATION,
                                           INSTANCES_PER_RELATION, seed=0)
    batches = iter(sampler)
    begin = time.perf_counter()
    for _ in range(args.warmup_batches):  # a worker's steady state: its word-piece cache holds the frequent words
        collator(dataset.__getitems__(next(batches)))
    warmup_s = time.perf_counter() - begin
    wall, cpu, collate_wall, tokens = [], [], [], []
    for _ in range(args.repeats):
        indices = [next(batches) for _ in range(args.batches)]
        begin, begin_cpu = time.perf_counter(), time.process_time()
        rows = [dataset.__getitems__(batch) for batch in indices]
        fetched = time.perf_counter()
        outputs = [collator(batch) for batch in rows]
        done, done_cpu = time.perf_counter(), time.process_time()
        sentences = BATCH * args.batches
        wall.append(sentences / (done - begin))
        cpu.append(sentences / (done_cpu - begin_cpu))
        collate_wall.append(sentences / (done - fetched))
        tokens.append(sum(int(out["attention_mask"].sum()) for out in outputs) / sentences)
    needed = BATCH / GPU_STEP_SECONDS
    return {
        "batch": BATCH, "max_length": processor.max_length, "warmup_batches": args.warmup_batches,
        "warmup_s": round(warmup_s, 1), "batches_per_repeat": args.batches, "repeats": args.repeats,
        "torch_threads": torch.get_num_threads(),
        "fetch_collate_sentences_per_s": [round(x) for x in wall],
        "fetch_collate_sentences_per_cpu_s": [round(x) for x in cpu],
        "collate_only_sentences_per_s": [round(x) for x in collate_wall],
        "best_fetch_collate_sentences_per_s": round(max(wall)),
        "best_fetch_collate_sentences_per_cpu_s": round(max(cpu)),
        "best_collate_only_sentences_per_s": round(max(collate_wall)),
        "mean_real_tokens_per_sentence": round(sum(tokens) / len(tokens), 1),
        "gpu_step_s": GPU_STEP_SECONDS, "needed_sentences_per_s": round(needed),
        "workers_needed": math.ceil(needed / max(cpu)),
        "workers_needed_at_wall_rate": math.ceil(needed / max(wall)),
    }


# --------------------------------------------------------------------------- parent


def run_child(command: list[str], env: dict[str, str] | None = None, log: Path | None = None) -> dict[str, Any]:
    """Run ``command``; its wall time, CPU time and peak RSS (of it and the children it waited for), its stdout."""
    begin = time.perf_counter()
    out = open(log, "w") if log else subprocess.PIPE
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, **(env or {})}, stdout=out,
                               stderr=subprocess.STDOUT, text=True)
    stdout = process.stdout.read() if log is None else ""
    _, status, usage = os.wait4(process.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - begin
    if process.returncode:
        tail = (log.read_text() if log else stdout)[-3000:]
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024),
            "stdout": stdout}


def child_result(kind: str, args: argparse.Namespace, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", kind, "--corpus", args.corpus, "--labels", args.labels,
               "--repeats", str(args.repeats), "--batches", str(args.batches),
               "--warmup_batches", str(args.warmup_batches)]
    run = run_child(command, env)
    result = json.loads(run["stdout"].strip().splitlines()[-1])
    result["process_wall_s"], result["process_cpu_s"] = run["wall_s"], run["cpu_s"]
    result["process_peak_rss_mb"] = run["peak_rss_mb"]
    return result


def ensure_corpus(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The synthetic corpus in the authors' format, written once per (size, relations, seed)."""
    stem = work / f"cpdata-{args.num_sentences}-{args.num_relations}-seed{args.seed}"
    corpus, labels = Path(f"{stem}.json"), Path(f"{stem}.labels.json")
    info = {"corpus": str(corpus), "labels": str(labels)}
    if not (corpus.is_file() and labels.is_file()):
        run = run_child([sys.executable, "benchmarks/measure.py", "synthetic_corpus", "--output", str(corpus),
                         "--num_sentences", str(args.num_sentences), "--num_relations", str(args.num_relations),
                         "--seed", str(args.seed)])
        info["generation"] = {"wall_s": run["wall_s"], "peak_rss_mb": run["peak_rss_mb"]}
    info["size_mb"] = round(corpus.stat().st_size / 2**20)
    return info


def save_tiny_bert(work: Path) -> Path:
    """A tiny random BERT with the packaged MiniLM tokenizer: start-up is then the data path's, not a model's."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from modeling_sacon.utils.defaults import default_backbone_path

    path = work / "tiny-bert"
    if not (path / "config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
        config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=37, max_position_embeddings=128)
        BertModel(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def startup(args: argparse.Namespace, work: Path, tiny: Path, env: dict[str, str], name: str) -> dict[str, Any]:
    output = work / f"pretrain-{name}"
    command = [sys.executable, "examples/pretrain.py", "--train_files", args.corpus, "--label_files", args.labels,
               "--sentence_model_name_or_path", str(tiny), "--max_steps", "1", "--per_device_train_batch_size",
               str(BATCH), "--instances_per_relation", str(INSTANCES_PER_RELATION), "--eval_fewrel", "none",
               "--output_dir", str(output), "--overwrite_output_dir", "--save_strategy", "no", "--report_to", "none",
               "--logging_steps", "1"]
    run = run_child(command, env, log=work / f"pretrain-{name}.log")
    return {key: run[key] for key in ("wall_s", "cpu_s", "peak_rss_mb")} | {"log": str(work / f"pretrain-{name}.log")}


def machine() -> dict[str, Any]:
    import torch
    import transformers

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}


def render_markdown(result: dict[str, Any]) -> str:
    c, s, d, m, mach = result["corpus"], result["startup"], result["data_path"], result["collation"], result["machine"]
    u = result["collation_without_word_piece_cache"]
    warm_ok = s["warm"]["wall_s"] < 60
    rss_ok = max(s["cold"]["peak_rss_mb"], s["warm"]["peak_rss_mb"]) < 4096
    lines = [
        f"# Data pipeline at paper scale ({c['sentences']:,} sentences, {c['relations']} relations)",
        "",
        f"`{result['command']}` on {m_cpus(result)}; {result['date']}, commit {result['commit']}. The cores are "
        f"shared with other work (load average {mach['load_average_at_start'][0]} at start, "
        f"{mach['load_average_at_end'][0]} at end), so wall times are upper bounds; CPU times are the process's own.",
        f"Corpus: synthetic, the authors' format (`cpdata.json`, {c['size_mb']} MB), "
        "`benchmarks/measure.py synthetic_corpus`.",
        "",
        "| measurement | wall | CPU | peak RSS |",
        "|---|---:|---:|---:|",
        f"| `examples/pretrain.py --max_steps 1`, batch 256, tiny BERT, cold (Arrow cache emptied): process start to "
        f"exit | {s['cold']['wall_s']:.1f} s | {s['cold']['cpu_s']:.1f} s | {s['cold']['peak_rss_mb']:,} MB |",
        f"| same, warm (Arrow cache reused) | {s['warm']['wall_s']:.1f} s | {s['warm']['cpu_s']:.1f} s | "
        f"{s['warm']['peak_rss_mb']:,} MB |",
        f"| data path to the first collated batch, warm, no model: "
        f"{', '.join(f'{k} {v:.2f} s' for k, v in d['phases_s'].items())} | {d['process_wall_s']:.1f} s | "
        f"{d['process_cpu_s']:.1f} s | {d['peak_rss_mb']:,} MB |",
        "",
        f"Targets (2 cores): warm start-up under 60 s: **{'met' if warm_ok else 'not met'}**; "
        f"peak RSS under 4 GB: **{'met' if rss_ok else 'not met'}**.",
        "",
        f"Collation, one worker (1 torch thread), batch {m['batch']} at max length {m['max_length']} "
        f"({m['mean_real_tokens_per_sentence']} real tokens per sentence on average), rows fetched from the "
        f"memory-mapped dataset, after {m['warmup_batches']} warm-up batches, best of {m['repeats']} repeats of "
        f"{m['batches_per_repeat']} batches (all repeats in the JSON): "
        f"**{m['best_fetch_collate_sentences_per_cpu_s']:,} sentences per CPU-second** "
        f"({m['best_fetch_collate_sentences_per_s']:,} per wall-second on the shared cores). A "
        f"{m['gpu_step_s'] * 1000:.0f} ms GPU step at batch {m['batch']} consumes {m['needed_sentences_per_s']:,} "
        f"sentences/s: **{m['workers_needed']} dataloader workers** on cores of their own "
        f"(`--dataloader_num_workers {m['workers_needed']}`; {m['workers_needed_at_wall_rate']} at the wall rate "
        "measured here).",
        f"Without `SaconProcessor`'s word-piece cache (every word tokenised again in every batch): "
        f"{u['best_fetch_collate_sentences_per_cpu_s']:,} sentences per CPU-second, {u['workers_needed']} workers.",
    ]
    return "\n".join(lines) + "\n"


def m_cpus(result: dict[str, Any]) -> str:
    m = result["machine"]
    return f"{m['cpus']} CPU core(s), Python {m['python']}, torch {m['torch']}, transformers {m['transformers']}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_sentences", type=int, default=800_000)
    parser.add_argument("--num_relations", type=int, default=700)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work_dir", default="/tmp/sacon_pipeline", help="Corpus, caches, logs (not the repo).")
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--repeats", type=int, default=5, help="Collation repeats (the best is reported).")
    parser.add_argument("--batches", type=int, default=4, help="Batches of 256 per collation repeat.")
    parser.add_argument("--warmup_batches", type=int, default=20, help="Batches collated before the repeats.")
    parser.add_argument("--child", choices=["data_path", "collate", "collate_uncached"], help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--labels", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        result = (child_data_path if args.child == "data_path" else child_collate)(args)
        print(json.dumps(result))
        return result

    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "command": "python benchmarks/pipeline_throughput.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                 text=True).stdout.strip(),
        "machine": machine(),
    }
    corpus = ensure_corpus(args, work)
    args.corpus, args.labels = corpus["corpus"], corpus["labels"]
    result["corpus"] = {**corpus, "sentences": args.num_sentences, "relations": args.num_relations, "format": "cp"}
    tiny = save_tiny_bert(work)
    cache = work / "hf_datasets"
    env = {"HF_DATASETS_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    shutil.rmtree(cache, ignore_errors=True)
    result["startup"] = {"cold": startup(args, work, tiny, env, "cold"), "warm": startup(args, work, tiny, env, "warm")}
    result["data_path"] = child_result("data_path", args, env)
    result["collation"] = child_result("collate", args, env)
    result["collation_without_word_piece_cache"] = child_result("collate_uncached", args, env)

    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (results / "pipeline_throughput.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / "pipeline_throughput.md").write_text(render_markdown(result))
    print(render_markdown(result))
    return result


if __name__ == "__main__":
    main()
