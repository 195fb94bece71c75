"""Where the label tower's pre-training step overhead goes (a diagnostic, not part of `run_all.py`).

    python benchmarks/measure.py step_breakdown                  # packaged MiniLM, CPU, torch's default threads
    python benchmarks/measure.py step_breakdown --threads 1      # one thread: CPU time is then the work, whatever the load

Times, on `speed.py`'s batch and comparator, the full SaCon step against the sentence-encoder-only step and variants
that remove one label-side cost each: the label MLM (`label_mlm_weight=0`); the gradient of the label tower's
word-embedding matrix (frozen; it is tied to the label MLM decoder, so this also drops the decoder's weight gradient
and that matrix's AdamW update); and the whole label tower's backward and update (every label-tower parameter
frozen: its forward alone remains). These variants change the training objective; they only attribute time. One
exact variant changes no number: both towers' word embeddings with sparse gradients (`nn.Embedding(sparse=True)`;
the tied decoder's dense gradient absorbs the sparse rows, so AdamW still sees the same dense gradient), which skips
the zero-filled 30,527 x 384 buffer of each embedding backward and its dense add.

Interleaved repeats after warm-up (A B C ... A B C ...), so drifting load hits every arm alike; per arm the median
and the spread (min-max) of wall time and of the process's CPU time. On shared cores wall time includes the time
the threads wait for a core; with `--threads 1` CPU time does not, and is the steadier measure of the work.
"""

from __future__ import annotations

import argparse
import copy
import time

from .budgets import CPU
from .common import median
from .speed import _sentence_only_module, pretraining_step_inputs


def sparse_word_embedding_gradients(model) -> None:
    """Both towers' word embeddings produce sparse gradients, densified once accumulated (AdamW takes dense ones)."""

    def densify(param) -> None:
        if param.grad is not None and param.grad.is_sparse:
            param.grad = param.grad.to_dense()

    for encoder in {id(model.sentence_encoder): model.sentence_encoder, id(model.label_tower): model.label_tower}.values():
        embedding = encoder.get_input_embeddings()
        embedding.sparse = True
        embedding.weight.register_post_accumulate_grad_hook(densify)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--backbone", default=None, help="default: the packaged all-MiniLM-L6-v2")
    args = parser.parse_args(argv)

    import torch

    from modeling_sacon import SaconDualEncoderModel
    from modeling_sacon.utils.defaults import default_backbone_path

    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = args.backbone or default_backbone_path()
    processor, batch = pretraining_step_inputs(CPU, backbone)
    vocab_size = len(processor.tokenizer)
    full = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=vocab_size).train()
    sparse = copy.deepcopy(full)
    sparse_word_embedding_gradients(sparse)
    no_label_mlm = copy.deepcopy(full)
    no_label_mlm.config.label_mlm_weight = 0.0
    frozen = copy.deepcopy(full)
    frozen.label_encoder.get_input_embeddings().weight.requires_grad_(False)
    forward_only = copy.deepcopy(full)
    forward_only.label_encoder.requires_grad_(False)
    forward_only.label_mlm_head.requires_grad_(False)
    single = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=vocab_size, share_encoders=True)
    comparator = _sentence_only_module(single).train()
    relation_ids = batch["label_relation_ids"][batch["labels"]]

    # the sparse variant is exact: the same gradients as the dense one under the same dropout masks
    for model in (full, sparse):
        torch.manual_seed(0)
        model(**batch).loss.backward()
    exact = max((a.grad - b.grad).abs().max().item() for a, b in zip(full.parameters(), sparse.parameters()) if a.grad is not None)
    full.zero_grad(set_to_none=True), sparse.zero_grad(set_to_none=True)

    def arm(module, forward):
        optimizer = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-5, fused=True)

        def step() -> None:
            optimizer.zero_grad(set_to_none=True)
            forward().backward()
            optimizer.step()

        return step

    arms = {
        "sentence-encoder-only contrastive + MLM (comparator)": arm(comparator, lambda: comparator(
            batch["input_ids"], batch["attention_mask"], batch["entity_positions"], relation_ids, batch["mlm_labels"])),
        "full SaCon step": arm(full, lambda: full(**batch).loss),
        "full, sparse word-embedding gradients (exact)": arm(sparse, lambda: sparse(**batch).loss),
        "without the label MLM": arm(no_label_mlm, lambda: no_label_mlm(**batch).loss),
        "label word embeddings frozen (no gradient for the tied matrix)": arm(frozen, lambda: frozen(**batch).loss),
        "label tower frozen (its forward only)": arm(forward_only, lambda: forward_only(**batch).loss),
    }
    for _ in range(args.warmup):
        for step in arms.values():
            step()
    wall: dict[str, list[float]] = {name: [] for name in arms}
    cpu: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleaved: drifting load hits every arm alike
        for name, step in arms.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    tokens = (int(batch["attention_mask"].sum()), tuple(batch["attention_mask"].shape),
              int(batch["label_attention_mask"].sum()), tuple(batch["label_attention_mask"].shape))
    print(f"threads {torch.get_num_threads()}, {args.repeats} interleaved repeats; sentence tokens {tokens[0]} in "
          f"{tokens[1]}, label tokens {tokens[2]} in {tokens[3]} (packed); sparse vs dense max |grad diff| {exact:.1e}")
    results = {}
    for clock, times in (("wall", wall), ("cpu", cpu)):
        medians = {name: median(values) for name, values in times.items()}
        base = next(iter(medians.values()))
        print(f"{clock} time: median (min-max) and the median's overhead over the comparator")
        for name, value in medians.items():
            print(f"  {value:6.3f} s ({min(times[name]):.3f}-{max(times[name]):.3f})  {value / base - 1:+6.1%}  {name}")
        results[clock] = medians
    return results
