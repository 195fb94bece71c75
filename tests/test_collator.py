"""SaconPretrainingCollator: entity blanking (rate, re-drawn per serve, keyed by epoch/batch), label rows, MLM safety."""

from __future__ import annotations

import random

import pytest
import torch

from modeling_sacon.data.collator import SERVE_KEY, SaconPretrainingCollator, ServedDataset, ServeKeyedBatchSampler
from modeling_sacon.data import RelationBalancedBatchSampler, UnknownRelationError, _rows_to_dataset

WORDS = (
    "the a city river company team album film born river member capital located near north south of in and "
    "for with founded played signed released country state province village school university party band"
).split()


def synthetic_rows(num_relations: int = 8, per_relation: int = 12, seed: int = 0) -> tuple[list[dict], dict]:
    """Canonical rows of `num_relations` relations (R0, R1, ...) and their label table; sentences of 8-20 words."""
    rng = random.Random(seed)
    rows, table = [], {}
    for r in range(num_relations):
        relation = f"R{r}"
        table[relation] = (f"relation {r} {rng.choice(WORDS)}", f"the {rng.choice(WORDS)} {rng.choice(WORDS)} of it")
        for _ in range(per_relation):
            tokens = [rng.choice(WORDS) for _ in range(rng.randint(8, 20))]
            head = rng.randrange(0, len(tokens) // 2 - 1)
            tail = rng.randrange(len(tokens) // 2, len(tokens) - 1)
            rows.append({
                "tokens": tokens,
                "head": {"name": tokens[head], "id": "", "indices": [head]},
                "tail": {"name": " ".join(tokens[tail : tail + 2]), "id": "", "indices": [tail, tail + 1]},
                "relation": relation,
            })
    return rows, table


def synthetic_dataset(num_relations: int = 8, per_relation: int = 12, seed: int = 0):
    rows, table = synthetic_rows(num_relations, per_relation, seed)
    return _rows_to_dataset(rows), table


@pytest.fixture(scope="module")
def rows_and_table():
    return synthetic_rows(num_relations=6, per_relation=40)


def blanks_per_row(processor, batch) -> torch.Tensor:
    """Blanked mentions per sentence (0, 1 or 2): MLM never masks nor draws the blank token."""
    return (batch["input_ids"] == processor.blank_id).sum(1)


def test_blanking_rate_and_redrawn_every_serve(processor, rows_and_table):
    rows, table = rows_and_table
    collator = SaconPretrainingCollator(processor, table, blank_probability=0.7, mlm_probability=0.15, seed=3)
    first, second = collator(rows), collator(rows)  # the same 240 instances served twice
    rate = blanks_per_row(processor, first).sum().item() / (2 * len(rows))
    assert 0.62 < rate < 0.78, rate  # 480 Bernoulli(0.7) mentions: 5 standard deviations wide
    assert not torch.equal(blanks_per_row(processor, first), blanks_per_row(processor, second))
    # reproducible: a fresh collator with the same seed replays the same sequence of draws
    again = SaconPretrainingCollator(processor, table, blank_probability=0.7, mlm_probability=0.15, seed=3)
    assert torch.equal(again(rows)["input_ids"], first["input_ids"])
    assert torch.equal(again(rows)["mlm_labels"], second["mlm_labels"])
    # the extremes
    none = SaconPretrainingCollator(processor, table, blank_probability=0.0, mlm_probability=0.0)(rows[:20])
    every = SaconPretrainingCollator(processor, table, blank_probability=1.0, mlm_probability=0.0)(rows[:20])
    assert blanks_per_row(processor, none).sum() == 0 and (blanks_per_row(processor, every) == 2).all()


def test_serve_keys_make_batches_a_function_of_epoch_and_index(processor):
    """Keyed rows: the same (epoch, batch) collates identically whatever came before; another epoch re-draws."""
    dataset, table = synthetic_dataset()
    sampler = ServeKeyedBatchSampler(RelationBalancedBatchSampler(dataset["relation"], 4, 2, seed=5, num_batches=6))
    served = ServedDataset(dataset)

    def batches(epoch: int, collator: SaconPretrainingCollator) -> list[dict]:
        sampler.set_epoch(epoch)
        return [collator(served.__getitems__(keys)) for keys in sampler]

    epoch0 = batches(0, SaconPretrainingCollator(processor, table, seed=1))
    keys = list(ServeKeyedBatchSampler(RelationBalancedBatchSampler(dataset["relation"], 4, 2, seed=5, num_batches=6)))
    assert keys[4][0][1:] == (0, 4)  # (epoch, batch index)
    assert SERVE_KEY in served[keys[4][0]] and served[3] == dataset[3]
    # batch 4 collated alone by a fresh collator (as after a resume that skipped batches 0-3) is identical
    alone = SaconPretrainingCollator(processor, table, seed=1)(served.__getitems__(keys[4]))
    for name, value in epoch0[4].items():
        assert torch.equal(value, alone[name]), name
    # same rows in another epoch: drawn again (different blanks / masks)
    same_rows = [(row, 1, 4) for row, _, _ in keys[4]]
    redrawn = SaconPretrainingCollator(processor, table, seed=1)(served.__getitems__(same_rows))
    assert not torch.equal(redrawn["input_ids"], alone["input_ids"])
    # a different collator seed changes the draws too
    other = SaconPretrainingCollator(processor, table, seed=2)(served.__getitems__(keys[4]))
    assert not torch.equal(other["input_ids"], alone["input_ids"])


def test_labels_and_label_rows_are_consistent(processor, rows_and_table):
    rows, table = rows_and_table
    relation_to_id = {relation: 100 + i for i, relation in enumerate(reversed(list(table)))}
    picked = [rows[i] for i in (0, 45, 1, 90, 46, 200)]  # relations R0 R1 R0 R2 R1 R5
    batch = SaconPretrainingCollator(processor, table, relation_to_id, mlm_probability=0.0)(picked)
    relations = [row["relation"] for row in picked]
    distinct = list(dict.fromkeys(relations))
    assert batch["label_input_ids"].shape[0] == len(distinct) == 4  # each distinct relation encoded once
    assert batch["labels"].tolist() == [distinct.index(r) for r in relations]
    assert batch["label_relation_ids"].tolist() == [relation_to_id[r] for r in distinct]
    expected = processor.encode_labels([table[r] for r in distinct])
    assert torch.equal(batch["label_input_ids"], expected["input_ids"])
    assert torch.equal(batch["label_attention_mask"], expected["attention_mask"])
    assert batch["entity_positions"].shape == (6, 2) and batch["input_ids"].shape[0] == 6
    assert set(batch) == {
        "input_ids", "attention_mask", "entity_positions", "label_input_ids", "label_attention_mask", "labels",
        "mlm_labels", "label_mlm_labels", "label_relation_ids",
    }


def test_mlm_never_touches_markers_blanks_or_special_tokens(processor, rows_and_table):
    rows, table = rows_and_table
    batch = SaconPretrainingCollator(processor, table, mlm_probability=0.6, seed=7)(rows)
    never = torch.tensor(sorted(processor.never_mask_ids))
    for ids_key, labels_key in (("input_ids", "mlm_labels"), ("label_input_ids", "label_mlm_labels")):
        chosen = batch[labels_key] != -100
        assert chosen.float().mean() > 0.2  # MLM did happen, on both encoders
        assert not torch.isin(batch[labels_key][chosen], never).any()
        # unchosen positions are unchanged; padding is never chosen
        original = batch[ids_key].clone()
        original[chosen] = batch[labels_key][chosen]
        assert not chosen[original == processor.tokenizer.pad_token_id].any()
    markers = torch.tensor(processor.marker_ids)
    assert (torch.isin(batch["input_ids"], markers).sum(1) == 4).all()
    rows_ = torch.arange(len(rows))
    starts = batch["input_ids"][rows_.unsqueeze(1), batch["entity_positions"]]
    assert torch.equal(starts, torch.tensor([[processor.marker_ids[0], processor.marker_ids[2]]] * len(rows)))


def test_unknown_relation_raises_naming_it(processor, rows_and_table):
    rows, table = rows_and_table
    collator = SaconPretrainingCollator(processor, table)
    stray = {**rows[0], "relation": "P9999"}
    with pytest.raises(UnknownRelationError, match="P9999"):
        collator([rows[1], stray])
    with pytest.raises(UnknownRelationError, match=r"'P9999'.*in corpus\.json"):
        collator.check_relations(["R0", "P9999"], source="corpus.json")
    collator.check_relations(["R0", "R1"])
    with pytest.raises(ValueError, match="blank_probability"):
        SaconPretrainingCollator(processor, table, blank_probability=1.5)
    with pytest.raises(ValueError, match="same id"):
        SaconPretrainingCollator(processor, table, relation_to_id={"R0": 0, "R1": 0})


def test_hard_label_negatives_are_the_batch_relations_nearest_outside_it(processor, rows_and_table):
    rows, table = rows_and_table
    neighbors = {"R0": ["R1", "R3", "R4"], "R1": ["R0", "R4", "R5"], "R2": ["R5"]}
    picked = [rows[i] for i in (0, 45, 1)]  # relations R0 R1 R0
    collator = SaconPretrainingCollator(processor, table, mlm_probability=0.0, label_negatives=3,
                                        label_negative_neighbors=neighbors)
    rows_of = lambda batch: [list(table)[i] for i in batch["label_relation_ids"].tolist()]  # noqa: E731
    # rank 0: R0 -> R1 (in the batch), R1 -> R0 (in the batch); rank 1: R3, R4; rank 2: R4 taken, R5
    assert rows_of(collator(picked)) == ["R0", "R1", "R3", "R4", "R5"]
    # neighbours running out: the rest are random relations outside the batch and the chosen ones, seeded
    collator.label_negatives = 4
    drawn = rows_of(collator(picked))
    assert drawn[:5] == ["R0", "R1", "R3", "R4", "R5"] and drawn[5] == "R2"


def test_nearest_relations_agree_with_the_label_encoder(processor, tiny_model, rows_and_table):
    from modeling_sacon.fewshot.evaluation import SaconEncoder
    from modeling_sacon.training.hard_negatives import nearest_relations

    _, table = rows_and_table
    tiny_model.train()
    neighbors = nearest_relations(tiny_model, processor, table, k=2, batch_size=4)  # two encoding batches
    assert tiny_model.training  # put back as it was
    features = torch.nn.functional.normalize(SaconEncoder(tiny_model.eval(), processor).encode_labels(
        [tuple(table[r]) for r in table]), dim=-1)
    relations = list(table)
    for i, relation in enumerate(relations):
        others = sorted((j for j in range(len(relations)) if j != i), key=lambda j: -float(features[i] @ features[j]))
        assert neighbors[relation] == [relations[j] for j in others[:2]]
    with pytest.raises(ValueError, match="k must be"):
        nearest_relations(tiny_model, processor, table, k=0)


def test_a_neighbour_without_a_corpus_id_is_not_a_negative(processor, rows_and_table):
    rows, table = rows_and_table
    relation_to_id = {r: i for i, r in enumerate(table) if r != "R3"}  # R3 has a label text but no id
    collator = SaconPretrainingCollator(processor, table, relation_to_id, mlm_probability=0.0, label_negatives=2,
                                        label_negative_neighbors={"R0": ["R3", "R4"]})
    batch = collator([rows[0], rows[45]])  # relations R0 R1
    ids = {i: r for r, i in relation_to_id.items()}
    assert [ids[i] for i in batch["label_relation_ids"].tolist()][:3] == ["R0", "R1", "R4"]
