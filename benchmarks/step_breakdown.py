"""Where the label tower's pre-training step overhead goes (a diagnostic, not part of `run_all.py`).

    python benchmarks/step_breakdown.py              # packaged MiniLM, CPU, ~3 min on 2 cores

Times, on `speed.py`'s batch and comparator, the full SaCon step against the sentence-encoder-only step and two
variants that remove one label-side cost each: the label MLM (`label_mlm_weight=0`), and the gradient of the label
tower's word-embedding matrix (frozen; it is tied to the label MLM decoder, so this also drops the decoder's weight
gradient and that matrix's AdamW update). Both variants change the training objective; they only attribute time.
Interleaved repeats after warm-up, medians; prints one line per arm with its overhead over the comparator.
"""

from __future__ import annotations

import argparse
import copy
import time

from budgets import CPU
from common import median
from speed import _sentence_only_module, pretraining_step_inputs


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--backbone", default=None, help="default: the packaged all-MiniLM-L6-v2")
    args = parser.parse_args(argv)

    import torch

    from modeling_sacon import SaconDualEncoderModel
    from modeling_sacon.utils.defaults import default_backbone_path

    backbone = args.backbone or default_backbone_path()
    processor, batch = pretraining_step_inputs(CPU, backbone)
    vocab_size = len(processor.tokenizer)
    full = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=vocab_size).train()
    no_label_mlm = copy.deepcopy(full)
    no_label_mlm.config.label_mlm_weight = 0.0
    frozen = copy.deepcopy(full)
    frozen.label_encoder.get_input_embeddings().weight.requires_grad_(False)
    single = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=vocab_size, share_encoders=True)
    comparator = _sentence_only_module(single).train()
    relation_ids = batch["label_relation_ids"][batch["labels"]]

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
        "without the label MLM": arm(no_label_mlm, lambda: no_label_mlm(**batch).loss),
        "label word embeddings frozen (no gradient for the tied matrix)": arm(frozen, lambda: frozen(**batch).loss),
    }
    for _ in range(args.warmup):
        for step in arms.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):  # interleaved: drifting load hits every arm alike
        for name, step in arms.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    medians = {name: median(values) for name, values in times.items()}
    base = next(iter(medians.values()))
    for name, value in medians.items():
        print(f"{value:6.3f} s  {value / base - 1:+6.1%}  {name}")
    return medians


if __name__ == "__main__":
    main()
