"""One SaCon training step on a fixed global batch, run by two processes or by one; `test_distributed.py` compares them.

Distributed (every rank takes its half of the global batch, gathers negatives across processes, DDP averages the
gradients)::

    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 tests/distributed_step.py OUT_DIR

Single process (the concatenated batch, labels deduplicated over the whole batch, no gathering)::

    python tests/distributed_step.py --single OUT_DIR

Each run writes `OUT_DIR/<mode>.pt` = {"loss", "grads" (every parameter, `logit_scale` included), ...}; every rank of
the distributed run also writes `OUT_DIR/rank<r>.json` with the world size it saw, so a launch that silently started
one process (as `accelerate launch --cpu --num_processes 2` does) cannot pass for two.

Why the two runs are comparable:

* determinism: the tiny BERT has hidden and attention dropout 0 (each process has its own RNG stream, so any dropout
  would make the two runs differ), the weights come from one seed (DDP also broadcasts rank 0's at wrap time), and
  the MLM masks are drawn once for the *global* batch and split by rows, so both runs corrupt exactly the same
  tokens of the same label rows and sentences;
* the loss: each rank reports `contrastive + mlm_r`. The contrastive term is computed on the gathered global batch,
  so it is the same on every rank; `mlm_r` is this rank's masked-token sum divided by (global masked count / world
  size). Hence the *mean over ranks* of the reported losses is contrastive + global-sum / global-count, the loss of
  one process on the concatenated batch -- and it is also the quantity whose gradient DDP's averaging produces;
* the gradients: after `backward` under DDP every rank holds the average over ranks; that average is what the
  single process must reproduce;
* labels: a relation on both ranks has a label row on both (as the collator builds them), the same row of the global
  label tensor here. The gathered contrastive loss keeps one row per relation (the first in rank order), and so does
  the label MLM (only that row's masked tokens count), so each relation's label text counts once, as on one process.

The distributed run then repeats the step cached (GradCache, `modeling_sacon.training.gradcache`, mini-batches of
`CACHED_MINI_BATCH`: 2 + 2 sentences and 2 + 1 label rows per rank), once as one micro-batch and once as two
accumulated half-weight micro-batches (the first inside `no_sync`), and saves the loss terms, the gradients and how
many buckets DDP's own hooks reduced (none: the re-runs bypass DDP's forward; `synchronize_gradients` averages once).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from modeling_sacon import SaconConfig, SaconDualEncoderModel, SaconProcessor
from modeling_sacon.utils.defaults import default_backbone_path

WORLD_SIZE = 2
SEED = 0
CACHED_MINI_BATCH = 2
MLM_PROBABILITY = 0.3

# Corpus-wide relation ids (as the pre-training data assigns them), and their label texts.
RELATION_IDS = {"P17": 0, "P131": 1, "P112": 2, "P50": 3}
LABEL_TEXTS = {
    "P17": ("country", "sovereign state of this item"),
    "P131": ("located in the administrative territorial entity", "the item is located on the territory of this entity"),
    "P112": ("founded by", "founder or co-founder of this organization"),
    "P50": ("author", "main creator of a written work"),
}


def _instance(sentence: str, head: int | list[int], tail: int | list[int]) -> dict:
    as_list = lambda span: [span] if isinstance(span, int) else span  # noqa: E731
    tokens = sentence.split()
    return {
        "tokens": tokens,
        "h": [" ".join(tokens[i] for i in as_list(head)), "", [as_list(head)]],
        "t": [" ".join(tokens[i] for i in as_list(tail)), "", [as_list(tail)]],
    }


# The global batch: rank 0 gets the first half, rank 1 the second. P17 and P131 are on both ranks (cross-process
# label deduplication), P112 only on rank 0, P50 only on rank 1; P17 and P50 repeat within a rank.
GLOBAL_BATCH = [
    (_instance("paris is the capital and largest city of france", 0, 8), "P17"),
    (_instance("the louvre is a museum in paris", 1, 6), "P131"),
    (_instance("apple was founded by steve jobs in a garage", 0, [4, 5]), "P112"),
    (_instance("berlin lies on the river spree in germany", 0, 7), "P17"),
    # ---- rank 1
    (_instance("the novel dune was written by frank herbert", 2, [6, 7]), "P50"),
    (_instance("kyoto was the imperial capital of japan for centuries", 0, 6), "P17"),
    (_instance("hamlet is a tragedy written by william shakespeare around 1600", 0, [6, 7]), "P50"),
    (_instance("the colosseum stands in the centre of rome", 1, 7), "P131"),
]


def tiny_config(vocab_size: int) -> SaconConfig:
    """The tests' tiny BERT (conftest.tiny_bert_config) with dropout off: no run may draw its own dropout masks."""
    from transformers import BertConfig

    encoder = BertConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
        max_position_embeddings=128, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return SaconConfig(sentence_config=encoder.to_dict())


def build_model(processor: SaconProcessor) -> SaconDualEncoderModel:
    torch.manual_seed(SEED)
    return SaconDualEncoderModel(tiny_config(len(processor.tokenizer))).train()


def global_tensors(processor: SaconProcessor) -> dict:
    """The global batch's sentences and distinct labels, with MLM masks drawn once for the whole batch."""
    instances = [instance for instance, _ in GLOBAL_BATCH]
    relations = [relation for _, relation in GLOBAL_BATCH]
    distinct = sorted(set(relations), key=RELATION_IDS.__getitem__)  # label rows ordered by corpus-wide id
    sentences = processor.encode_instances(instances)
    label_enc = processor.encode_labels([LABEL_TEXTS[r] for r in distinct])
    generator = torch.Generator().manual_seed(SEED)
    input_ids, mlm_labels = processor.mask_tokens(sentences["input_ids"], MLM_PROBABILITY, generator)
    label_ids, label_mlm = processor.mask_tokens(label_enc["input_ids"], MLM_PROBABILITY, generator)
    return {
        "relations": relations,
        "distinct": distinct,
        "input_ids": input_ids,
        "attention_mask": sentences["attention_mask"],
        "entity_positions": sentences["entity_positions"],
        "mlm_labels": mlm_labels,
        "label_input_ids": label_ids,
        "label_attention_mask": label_enc["attention_mask"],
        "label_mlm_labels": label_mlm,
    }


def _trim(ids: torch.Tensor, mask: torch.Tensor, *others: torch.Tensor) -> list[torch.Tensor]:
    """Drop the padding columns no row uses, as a per-process collator pads only to its own longest row."""
    length = int(mask.sum(1).max())
    return [t[:, :length] for t in (ids, mask, *others)]


def model_inputs(tensors: dict, rows: slice) -> dict:
    """The batch of the sentences `rows` with their own distinct labels (rows of the global label tensors)."""
    relations = tensors["relations"][rows]
    local = sorted(set(relations), key=RELATION_IDS.__getitem__)
    label_rows = torch.tensor([tensors["distinct"].index(r) for r in local])
    input_ids, attention_mask, mlm_labels = _trim(
        tensors["input_ids"][rows], tensors["attention_mask"][rows], tensors["mlm_labels"][rows]
    )
    label_input_ids, label_attention_mask, label_mlm_labels = _trim(
        tensors["label_input_ids"][label_rows],
        tensors["label_attention_mask"][label_rows],
        tensors["label_mlm_labels"][label_rows],
    )
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "entity_positions": tensors["entity_positions"][rows],
        "mlm_labels": mlm_labels,
        "label_input_ids": label_input_ids,
        "label_attention_mask": label_attention_mask,
        "label_mlm_labels": label_mlm_labels,
        "labels": torch.tensor([local.index(r) for r in relations]),
        "label_relation_ids": torch.tensor([RELATION_IDS[r] for r in local]),
    }


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every trainable parameter's gradient (a tied weight appears once, under its first name)."""
    grads = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            grads[name] = torch.zeros_like(param) if param.grad is None else param.grad.detach().clone()
    return grads


def run_single() -> dict:
    """One process, the concatenated batch, labels deduplicated over the global batch, no gathering."""
    processor = SaconProcessor.from_pretrained(default_backbone_path())
    model = build_model(processor)
    inputs = model_inputs(global_tensors(processor), slice(None))
    out = model(**inputs, gather_across_processes=False)
    out.loss.backward()
    return {
        "mode": "single",
        "world_size": 1,
        "loss": out.loss.item(),
        "contrastive_loss": out.contrastive_loss.item(),
        "sentence_mlm_loss": out.sentence_mlm_loss.item(),
        "label_mlm_loss": out.label_mlm_loss.item(),
        "grads": _grads(model),
    }


def run_distributed(out_dir: Path) -> None:
    """Under `accelerate launch`: this rank's half of the global batch, DDP, negatives gathered from every rank."""
    import torch.distributed as dist
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    rank, world = accelerator.process_index, accelerator.num_processes
    info = {"rank": rank, "world_size": world, "distributed_type": str(accelerator.distributed_type)}
    print(f"[distributed_step] rank={rank} world_size={world} type={info['distributed_type']}", flush=True)
    processor = SaconProcessor.from_pretrained(default_backbone_path())
    model = accelerator.prepare(build_model(processor))
    ddp_reductions = _count_ddp_reductions(model)
    tensors = global_tensors(processor)
    per_rank = len(GLOBAL_BATCH) // world
    inputs = model_inputs(tensors, slice(rank * per_rank, (rank + 1) * per_rank))
    out = model(**inputs, gather_across_processes=True)
    accelerator.backward(out.loss)

    parts = torch.stack([out.loss, out.contrastive_loss, out.sentence_mlm_loss, out.label_mlm_loss]).detach()
    gathered = [parts]
    if world > 1:
        gathered = [torch.empty_like(parts) for _ in range(world)]
        dist.all_gather(gathered, parts)
    per_rank_parts = torch.stack(gathered)  # [world, 4]
    means = per_rank_parts.mean(0)
    info.update(
        num_sentences=int(inputs["input_ids"].shape[0]),
        label_relation_ids=inputs["label_relation_ids"].tolist(),
        loss=out.loss.item(),
    )
    (out_dir / f"rank{rank}.json").write_text(json.dumps(info) + "\n")
    uncached_reductions, uncached_grads = ddp_reductions[0], _grads(accelerator.unwrap_model(model))
    cached = _cached_steps(accelerator, model, inputs, ddp_reductions)
    if accelerator.is_main_process:
        torch.save(
            {
                **cached,
                "uncached_ddp_reductions": uncached_reductions,
                "mode": "distributed",
                "world_size": world,
                "rank_losses": per_rank_parts[:, 0].tolist(),
                "rank_contrastive_losses": per_rank_parts[:, 1].tolist(),
                "loss": means[0].item(),
                "contrastive_loss": means[1].item(),
                "sentence_mlm_loss": means[2].item(),
                "label_mlm_loss": means[3].item(),
                "grads": uncached_grads,
            },
            out_dir / "distributed.pt",
        )
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _count_ddp_reductions(model) -> list[int]:
    """A DDP communication hook that all-reduces as the default one and counts the buckets it reduced."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    count = [0]

    def hook(state, bucket):
        count[0] += 1
        return allreduce_hook(state, bucket)

    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model.register_comm_hook(None, hook)
    return count


def _mean_over_ranks(values: torch.Tensor) -> torch.Tensor:
    import torch.distributed as dist

    if not dist.is_initialized():
        return values
    values = values.detach().clone()
    dist.all_reduce(values)
    return values / dist.get_world_size()


def _cached_steps(accelerator, model, inputs: dict, ddp_reductions: list[int]) -> dict:
    """The same step cached, as one micro-batch and as two accumulated half-weight ones (the first in no_sync)."""
    from modeling_sacon.training.gradcache import cached_contrastive_step, synchronize_gradients

    unwrapped = accelerator.unwrap_model(model)
    results = {}
    for name, micro_batches in (("cached", 1), ("cached_accumulated", 2)):
        model.zero_grad(set_to_none=True)
        before = ddp_reductions[0]
        for i in range(micro_batches):
            sync = i == micro_batches - 1
            with accelerator.no_sync(model) if not sync else torch.enable_grad():
                out = cached_contrastive_step(
                    unwrapped, inputs, CACHED_MINI_BATCH, backward=lambda s: accelerator.backward(s / micro_batches),
                    gather_across_processes=True,
                )
                synchronize_gradients(model)
        terms = torch.stack([out.loss, out.contrastive_loss, out.sentence_mlm_loss, out.label_mlm_loss])
        means = _mean_over_ranks(terms)
        results[name] = {
            "loss": means[0].item(), "contrastive_loss": means[1].item(), "sentence_mlm_loss": means[2].item(),
            "label_mlm_loss": means[3].item(), "grads": _grads(unwrapped), "ddp_reductions": ddp_reductions[0] - before,
        }
    return results


def main(argv: list[str]) -> None:
    single = "--single" in argv
    positional = [a for a in argv if a != "--single"]
    out_dir = Path(positional[0] if positional else os.environ["SACON_DISTRIBUTED_OUT"])
    out_dir.mkdir(parents=True, exist_ok=True)
    if single:
        torch.save(run_single(), out_dir / "single.pt")
    else:
        run_distributed(out_dir)


if __name__ == "__main__":
    main(sys.argv[1:])
