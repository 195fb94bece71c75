"""Sentence packing (`pack_sentences`) against padded sentences: a diagnostic, not part of `run_all.py`.

    python benchmarks/measure.py sentence_packing                 # packaged MiniLM, torch's default threads
    python benchmarks/measure.py sentence_packing --batches 8 --repeats 4

Draws `--batches` batches of 32 rows of the embedded corpus (seeded), collates them as pre-training does, and times
full SaCon training steps (forward + backward + fused AdamW) with the sentences padded to each batch's longest and
packed into fewer rows, interleaved (padded, packed, padded, ...) so drifting load hits both arms alike. Before
timing it checks that both give the same sentence features (eval mode, no dropout). Reports the real / padded token
share, the median step of each arm, and the packed step's change.
"""

from __future__ import annotations

import argparse
import random
import time

from .budgets import CPU
from .common import median


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", default=None, help="default: the packaged all-MiniLM-L6-v2")
    args = parser.parse_args(argv)

    import torch

    from modeling_sacon import SaconDualEncoderModel, SaconProcessor
    from modeling_sacon.data import load_pretraining_corpus
    from modeling_sacon.data.collator import SaconPretrainingCollator
    from modeling_sacon.utils.defaults import default_backbone_path

    backbone = args.backbone or default_backbone_path()
    processor = SaconProcessor.from_pretrained(backbone)
    corpus, labels = load_pretraining_corpus()
    collator = SaconPretrainingCollator(processor, labels, relation_to_id={r: i for i, r in enumerate(labels)}, seed=args.seed)
    rng = random.Random(args.seed)
    size = CPU.pretrain_batch_size
    batches = [collator(corpus.select([rng.randrange(len(corpus)) for _ in range(size)]).to_list())
               for _ in range(args.batches)]
    batches = [{k: v for k, v in b.items() if not k.endswith("mlm_labels")} for b in batches]  # MiniLM: no MLM head
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)

    torch.manual_seed(args.seed)
    model = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=len(processor.tokenizer))
    model.eval()
    with torch.no_grad():
        features = {}
        for pack in (False, True):
            model.config.pack_sentences = pack
            features[pack] = torch.cat([model.get_sentence_features(b["input_ids"], b["attention_mask"], b["entity_positions"])
                                        for b in batches])
    difference = (features[True] - features[False]).abs().max().item()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=True)

    def step(batch, pack: bool) -> float:
        model.config.pack_sentences = pack
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    for batch in batches[:2]:  # warm-up
        step(batch, False), step(batch, True)
    times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeats):
        for batch in batches:
            for pack in (False, True):
                times[pack].append(step(batch, pack))
    padded_s, packed_s = median(times[False]), median(times[True])
    print(f"threads {torch.get_num_threads()}; {args.batches} batches of {size}: {real} real of {padded} padded sentence "
          f"tokens ({real / padded:.0%}); max |feature difference| packed vs padded {difference:.1e}")
    print(f"step, median of {len(times[False])}: padded {padded_s:.3f} s, packed {packed_s:.3f} s "
          f"({packed_s / padded_s - 1:+.1%})")
    return {"real_token_share": real / padded, "padded_step_s": padded_s, "packed_step_s": packed_s,
            "max_feature_difference": difference}
