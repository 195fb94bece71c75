"""Speed and memory: every ratio is measured in one process, on one machine, on the same inputs.

1. Pre-training step (forward + backward + AdamW step on one fixed collated batch of the embedded corpus, default
   sizes): the full SaCon step against a *sentence-encoder-only* contrastive + MLM step, built explicitly because
   SaCon with `label_anchored_weight=0` still runs the label tower. The comparator is what CP (Peng et al., 2020)
   trains: the same sentence encoder and `[h ; t]` pooling, the same sentence MLM head and masked tokens, and an
   in-batch sentence-sentence InfoNCE (each sentence's positives are the other sentences of its relation, every
   other sentence a negative, same learnable temperature); no label tower, no label MLM, and an optimizer over the
   sentence side only. The difference is exactly what SaCon adds: the label tower over the batch's U *distinct*
   relation texts and its MLM. For reference, the full step is also timed with one label row per sentence (no
   deduplication: B label rows instead of U) and with the label texts padded instead of packed
   (`pack_label_texts=False`). Both optimizers are fused AdamW, the Trainer's default. Median of interleaved repeats
   after warm-up.
2. Evaluation: `FewShotEvaluator` on cached embeddings vs `FewShotEvaluator.evaluate_reencoding` (every episode
   encodes its own sentences, as the FewRel toolkit) on the same 1,000 val_wiki 5-way 1-shot episodes; episodes per
   second with and without the one-off encoding of the split, and both accuracies (they must be equal).
3. Encoding: `FewShotEvaluator.encode` (each distinct sentence tokenised once, batches sorted by token count) vs a
   naive loop in file order, every batch padded to `max_length`, over val_wiki, same model and batch size; the
   embeddings are compared.
4. Peak resident memory of the default pre-training run: measured by the quality section on its subprocesses.
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

from .budgets import Budget
from .common import UnitStore, median, quantile
from .quality import backbone_path, load_split

STEP_TARGET_OVERHEAD = 0.25
EVAL_TARGET_RATIO = 50.0
ENCODE_TARGET_RATIO = 1.5


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _stats(times: list[float]) -> dict:
    return {
        "median_s": median(times), "min_s": min(times), "q25_s": quantile(times, 0.25), "q75_s": quantile(times, 0.75),
        "repeats": len(times), "all_s": [round(t, 4) for t in times],
    }


# ----------------------------------------------------------------------------------------------------------------
# 1. Pre-training step


def _sentence_only_module(model):
    """CP-style comparator: SaCon's sentence side alone, with an in-batch sentence-sentence contrastive loss."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class SentenceContrastiveMLM(nn.Module):
        def __init__(self, sacon):
            super().__init__()
            self.encoder = sacon.sentence_encoder
            self.projection = sacon.sentence_projection
            self.mlm_head = sacon.sentence_mlm_head
            self.logit_scale = sacon.logit_scale
            self.max_log_scale = sacon.config.logit_scale_max

        def forward(self, input_ids, attention_mask, entity_positions, relation_ids, mlm_labels):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
            z = F.normalize(self.projection(hidden[rows, entity_positions].flatten(1)), dim=-1)
            logits = self.logit_scale.clamp(max=self.max_log_scale).exp() * z @ z.t()
            eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
            log_prob = F.log_softmax(logits.masked_fill(eye, float("-inf")), dim=-1)
            positives = (relation_ids.unsqueeze(0) == relation_ids.unsqueeze(1)) & ~eye
            anchors = positives.any(1)
            contrastive = -(log_prob.masked_fill(~positives, 0.0).sum(1) / positives.sum(1).clamp(min=1))[anchors].mean()
            selected = mlm_labels != -100
            mlm = F.cross_entropy(self.mlm_head(hidden[selected]), mlm_labels[selected])
            return contrastive + mlm

    return SentenceContrastiveMLM(model)


def pretraining_step_inputs(budget: Budget, backbone: str):
    """(processor, batch): one collated batch of the embedded corpus at pretrain.py's default sizes, on the device."""
    import torch

    from modeling_sacon import SaconProcessor
    from modeling_sacon.data.collator import SaconPretrainingCollator
    from modeling_sacon.data import RelationBalancedBatchSampler, load_pretraining_corpus

    torch.manual_seed(0)
    processor = SaconProcessor.from_pretrained(backbone)
    corpus, labels = load_pretraining_corpus()
    relation_to_id = {relation: i for i, relation in enumerate(labels)}
    batch_size, per_relation = budget.pretrain_batch_size, 2  # pretrain.py's defaults: balanced, 2 per relation
    sampler = RelationBalancedBatchSampler(list(corpus["relation"]), batch_size // per_relation, per_relation, seed=0, num_batches=1)
    rows = corpus.select(next(iter(sampler))).to_list()
    collator = SaconPretrainingCollator(processor, labels, relation_to_id=relation_to_id, seed=0)
    return processor, {k: v.to(budget.device) for k, v in collator(rows).items()}


def measure_pretrain_step(budget: Budget, backbone: str) -> dict:
    import torch

    from modeling_sacon import SaconDualEncoderModel

    device = budget.device
    processor, batch = pretraining_step_inputs(budget, backbone)
    full = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=len(processor.tokenizer)).to(device).train()
    single = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=len(processor.tokenizer), share_encoders=True)
    comparator = _sentence_only_module(single).to(device).train()
    # fused AdamW: the Trainer's default optimizer (`optim="adamw_torch_fused"`), i.e. what pretrain.py steps with
    full_opt = torch.optim.AdamW(full.parameters(), lr=1e-5, fused=True)
    comparator_opt = torch.optim.AdamW([p for p in comparator.parameters() if p.requires_grad], lr=1e-5, fused=True)

    # the same batch without label deduplication: one label row per sentence (reference only)
    index = batch["labels"]
    undeduplicated = dict(batch)
    undeduplicated.update(
        label_input_ids=batch["label_input_ids"][index], label_attention_mask=batch["label_attention_mask"][index],
        label_mlm_labels=batch["label_mlm_labels"][index], label_relation_ids=batch["label_relation_ids"][index],
        labels=torch.arange(len(index), device=device),
    )
    relation_ids = batch["label_relation_ids"][index]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)

    def sacon_step(inputs, pack_label_texts: bool = True):
        def step():
            full.config.pack_label_texts = pack_label_texts
            full_opt.zero_grad(set_to_none=True)
            with autocast:
                loss = full(**inputs).loss
            loss.backward()
            full_opt.step()
        return step

    def comparator_step():
        comparator_opt.zero_grad(set_to_none=True)
        with autocast:
            loss = comparator(batch["input_ids"], batch["attention_mask"], batch["entity_positions"], relation_ids, batch["mlm_labels"])
        loss.backward()
        comparator_opt.step()

    variants = {
        "sacon_full": sacon_step(batch),
        "sentence_only_cp_mlm": comparator_step,
        "sacon_without_label_dedup": sacon_step(undeduplicated),
        "sacon_padded_label_texts": sacon_step(batch, pack_label_texts=False),
    }
    for _ in range(budget.speed_step_warmup):
        for step in variants.values():
            step()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(budget.speed_step_repeats):  # interleaved, so drifting machine load hits every variant alike
        for name, step in variants.items():
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    stats = {name: _stats(values) for name, values in times.items()}
    ratio = stats["sacon_full"]["median_s"] / stats["sentence_only_cp_mlm"]["median_s"]
    no_dedup_ratio = stats["sacon_without_label_dedup"]["median_s"] / stats["sentence_only_cp_mlm"]["median_s"]
    padded_ratio = stats["sacon_padded_label_texts"]["median_s"] / stats["sentence_only_cp_mlm"]["median_s"]
    shapes = {
        "sentences": list(batch["input_ids"].shape), "labels": list(batch["label_input_ids"].shape),
        "labels_without_dedup": list(undeduplicated["label_input_ids"].shape),
        "sentence_tokens": int(batch["attention_mask"].sum()), "label_tokens": int(batch["label_attention_mask"].sum()),
        "masked_sentence_tokens": int((batch["mlm_labels"] != -100).sum()),
        "masked_label_tokens": int((batch["label_mlm_labels"] != -100).sum()),
    }
    del full, single, comparator, full_opt, comparator_opt
    gc.collect()
    return {
        "device": device, "batch": shapes, "warmup": budget.speed_step_warmup, "timings": stats,
        "ratio_full_over_sentence_only": ratio, "overhead": ratio - 1.0,
        "ratio_without_dedup_over_sentence_only": no_dedup_ratio,
        "ratio_padded_label_texts_over_sentence_only": padded_ratio,
        "target_overhead": STEP_TARGET_OVERHEAD, "met": ratio - 1.0 <= STEP_TARGET_OVERHEAD,
        "comparator": "sentence encoder + [h;t] + in-batch sentence-sentence InfoNCE (CP-style) + sentence MLM; "
                      "optimizer over the sentence side only",
    }


# ----------------------------------------------------------------------------------------------------------------
# 2 + 3. Evaluation and encoding


def naive_encode(model, processor, dataset, batch_size: int, device: str):
    """File order, no deduplication, every batch padded to `max_length`: what a plain evaluation loop does."""
    import torch
    import torch.nn.functional as F

    rows = list(dataset)
    pad_id = processor.tokenizer.pad_token_id
    vectors = []
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            encoded = processor.encode_instances(rows[start : start + batch_size])
            extra = processor.max_length - encoded["input_ids"].shape[1]
            inputs = {
                "input_ids": F.pad(encoded["input_ids"], (0, extra), value=pad_id),
                "attention_mask": F.pad(encoded["attention_mask"], (0, extra), value=0),
                "entity_positions": encoded["entity_positions"],
            }
            if "token_type_ids" in encoded:
                inputs["token_type_ids"] = F.pad(encoded["token_type_ids"], (0, extra), value=0)
            vectors.append(model.get_sentence_features(**{k: v.to(device) for k, v in inputs.items()}).float().cpu())
    return torch.cat(vectors)


def measure_evaluation(budget: Budget, backbone: str) -> dict:
    import torch
    import torch.nn.functional as F

    from modeling_sacon import SaconDualEncoderModel, SaconProcessor
    from modeling_sacon.data import first_per_relation, load_label_table, resolve_data_path
    from modeling_sacon.fewshot.evaluation import FewShotEvaluator

    device = budget.device
    processor = SaconProcessor.from_pretrained(backbone)
    model = SaconDualEncoderModel.from_encoders_pretrained(backbone, vocab_size=len(processor.tokenizer)).to(device).eval()
    dataset = first_per_relation(load_split(resolve_data_path("fewrel/val_wiki.json")), budget.speed_pool_per_relation)
    label_table = load_label_table(resolve_data_path("fewrel/pid2name.json"))
    episodes, seed, batch_size = budget.speed_reencode_episodes, budget.eval_seed, budget.eval_batch_size

    def evaluator():
        return FewShotEvaluator(model, processor, dataset, label_table, batch_size=batch_size, show_progress=False)

    with torch.no_grad():
        encode_times, naive_times = [], []
        for _ in range(budget.speed_encode_repeats):  # interleaved arms
            cached = evaluator()
            _sync(device)
            start = time.perf_counter()
            cached.encode()
            _sync(device)
            encode_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            naive = naive_encode(model, processor, dataset, batch_size, device)
            _sync(device)
            naive_times.append(time.perf_counter() - start)
        score_times = []
        for _ in range(budget.speed_scoring_repeats):
            start = time.perf_counter()
            scored = cached.evaluate(["5-1"], episodes, seed)["5-1"]
            score_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reencoded = evaluator().evaluate_reencoding("5-1", episodes, seed)
        reencode_s = time.perf_counter() - start

    embeddings = cached.sentence_embeddings
    cosine = F.cosine_similarity(embeddings, naive, dim=-1)
    encode_s, score_s, naive_s = median(encode_times), median(score_times), median(naive_times)
    with_encoding = reencode_s / (encode_s + score_s)
    scoring_only = reencode_s / score_s
    ten_x = 10 * reencode_s / (encode_s + 10 * score_s)  # linear in episodes: both per-episode costs are constant
    del model
    gc.collect()
    return {
        "device": device,
        "evaluation": {
            "setting": "5-1", "episodes": episodes, "episode_seed": seed, "sentences_in_split": len(dataset),
            "cached_encode": _stats(encode_times), "cached_scoring": _stats(score_times), "reencoding_s": reencode_s,
            "episodes_per_s": {
                "cached_scoring_only": episodes / score_s,
                "cached_including_encoding": episodes / (encode_s + score_s),
                "reencoding": episodes / reencode_s,
            },
            "ratio_scoring_only": scoring_only,
            "ratio_including_encoding": with_encoding,
            "ratio_including_encoding_at_10x_episodes": ten_x,
            "break_even_episodes": episodes * encode_s / max(reencode_s - score_s, 1e-9),
            "accuracy_cached": scored["accuracy"], "accuracy_reencoding": reencoded["accuracy"],
            "accuracy_equal": abs(scored["accuracy"] - reencoded["accuracy"]) < 1e-9,
            "accuracy_abs_diff": abs(scored["accuracy"] - reencoded["accuracy"]),
            "target_ratio": EVAL_TARGET_RATIO,
            "met_scoring_only": scoring_only >= EVAL_TARGET_RATIO,
            "met_including_encoding": with_encoding >= EVAL_TARGET_RATIO,
        },
        "encoding": {
            "sentences": len(dataset), "batch_size": batch_size, "max_length": processor.max_length,
            "length_sorted": _stats(encode_times), "naive_padded": _stats(naive_times),
            "sentences_per_s": {"length_sorted": len(dataset) / encode_s, "naive_padded": len(dataset) / naive_s},
            "ratio": naive_s / encode_s,
            "min_cosine_between_arms": float(cosine.min()),
            "target_ratio": ENCODE_TARGET_RATIO, "met": naive_s / encode_s >= ENCODE_TARGET_RATIO,
        },
        "model": "SaCon composed from the backbone, untrained (cost does not depend on the weights)",
    }


# ----------------------------------------------------------------------------------------------------------------


def run_speed(budget: Budget, output_dir: Path, store: UnitStore, compute: bool, quality: dict | None) -> dict:
    backbone = backbone_path(budget, output_dir, store, compute)
    common = {"backbone": budget.backbone, "device": budget.device}
    step = store.run(
        "speed/pretrain-step",
        {**common, "batch_size": budget.pretrain_batch_size, "warmup": budget.speed_step_warmup,
         "repeats": budget.speed_step_repeats},
        lambda: measure_pretrain_step(budget, backbone), compute,
    )
    evaluation = store.run(
        "speed/evaluation",
        {**common, "episodes": budget.speed_reencode_episodes, "pool": budget.speed_pool_per_relation,
         "batch_size": budget.eval_batch_size, "encode_repeats": budget.speed_encode_repeats,
         "scoring_repeats": budget.speed_scoring_repeats, "seed": budget.eval_seed},
        lambda: measure_evaluation(budget, backbone), compute,
    )
    memory = None
    runs = (quality or {}).get("training_runs", {})
    pretrain_runs = {name: run for name, run in runs.items() if "/pretrain-seed" in name}
    if pretrain_runs:
        peaks = {name.split("/")[-1]: run["peak_rss_mb"] for name, run in pretrain_runs.items()}
        first = next(iter(pretrain_runs.values()))
        memory = {
            "peak_rss_mb_per_run": peaks, "peak_rss_mb_max": max(peaks.values()),
            "argv": first["argv"],
            "source": "os.wait4 rusage of each pre-training subprocess (ru_maxrss)" if budget.processes == "one"
            else "VmHWM of the worker process during the run (smoke: several runs share one process)",
        }
    return {
        "pretrain_step": step["result"] if step else None,
        "evaluation": evaluation["result"]["evaluation"] if evaluation else None,
        "encoding": evaluation["result"]["encoding"] if evaluation else None,
        "pretrain_memory": memory,
        "notes": "timings are wall-clock on the machine described under `machine`; the load average around each unit "
                 "is stored in its unit file (timings taken on a shared machine are inflated)",
    }
