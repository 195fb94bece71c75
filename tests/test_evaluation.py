"""FewShotEvaluator: cached-embedding accuracy equals per-episode re-encoding; settings, NOTA, errors."""

import pytest
import torch

from modeling_sacon.data import label_texts, load_fewrel_json, load_label_table
from modeling_sacon.fewshot.evaluation import FewShotEvaluator


@pytest.fixture(scope="module")
def small_split(data_dir):
    """8 val_wiki relations x 12 instances: small enough to re-encode every episode in a test."""
    full = load_fewrel_json(data_dir / "fewrel" / "val_wiki.json")
    relations = list(dict.fromkeys(full["relation"]))[:8]
    keep = [i for i, r in enumerate(full["relation"]) if r in relations]
    per_relation = {}
    rows = [i for i in keep if per_relation.setdefault(full[i]["relation"], []).append(i) or len(per_relation[full[i]["relation"]]) <= 12]
    return full.select(rows), load_label_table(data_dir / "fewrel" / "pid2name.json")


def test_cached_accuracy_equals_reencoding_exactly(tiny_model, processor, small_split):
    dataset, table = small_split
    evaluator = FewShotEvaluator(tiny_model, processor, dataset, table, batch_size=16, show_progress=False)
    for setting, method in (("5-1", "prototype"), ("3-2", "label_augmented"), ("zs-4", "prototype")):
        cached = evaluator.evaluate([setting], num_episodes=40, seed=7, method=method)[setting]
        fresh = evaluator.evaluate_reencoding(setting, num_episodes=40, seed=7, method=method)
        assert cached["episodes"] == fresh["episodes"] == 40
        assert cached["accuracy"] == fresh["accuracy"] and cached["ci95"] == fresh["ci95"]  # the oracle: re-encoding


def test_each_distinct_sentence_encoded_once(tiny_model, processor, small_split):
    dataset, table = small_split
    doubled = dataset.select(list(range(len(dataset))) * 2)  # every sentence twice
    evaluator = FewShotEvaluator(tiny_model, processor, doubled, table, batch_size=16, show_progress=False)
    calls = []
    original = evaluator.encoder.encode_tokenized  # the length-sorted path: tokenised once, then batched
    evaluator.encoder.encode_tokenized = lambda rows: calls.append(len(rows)) or original(rows)
    evaluator.encode()
    assert sum(calls) == len(dataset)
    assert torch.equal(evaluator.sentence_embeddings[: len(dataset)], evaluator.sentence_embeddings[len(dataset) :])


def test_same_seed_same_result_and_nota_threshold(tiny_model, processor, small_split):
    dataset, table = small_split
    evaluator = FewShotEvaluator(tiny_model, processor, dataset, table, show_progress=False)
    first = evaluator.evaluate(["5-1", "nota-5-1-0.5"], num_episodes=30, seed=3)
    second = evaluator.evaluate(["5-1", "nota-5-1-0.5"], num_episodes=30, seed=3)
    assert first == second
    assert "nota_threshold" in first["nota-5-1-0.5"] and "nota_threshold" not in first["5-1"]


class OracleEncoder:
    """Each relation maps to its own axis: in-episode queries have cosine 1 to their prototype, NOTA ones 0."""

    has_labels, logit_scale = True, 10.0

    def __init__(self, relations):
        self.axis = {r: i for i, r in enumerate(dict.fromkeys(relations))}

    def encode_sentences(self, rows):
        return torch.nn.functional.one_hot(torch.tensor([self.axis[r["relation"]] for r in rows]), len(self.axis)).float()


def test_nota_threshold_separates_an_oracle_perfectly(small_split):
    dataset, table = small_split
    evaluator = FewShotEvaluator(OracleEncoder(dataset["relation"]), None, dataset, table, show_progress=False)
    result = evaluator.evaluate(["nota-5-1-0.5", "5-1"], num_episodes=50, seed=1)
    assert result["nota-5-1-0.5"]["accuracy"] == 1.0 and result["5-1"]["accuracy"] == 1.0
    assert 0.0 < result["nota-5-1-0.5"]["nota_threshold"] <= 10.0


def test_bad_input_is_named(tiny_model, processor, small_split):
    dataset, table = small_split
    with pytest.raises(ValueError, match="accepted"):
        FewShotEvaluator(tiny_model, processor, dataset, table, show_progress=False).evaluate(["5-one"], 5)
    missing = {k: v for k, v in table.items() if k != dataset[0]["relation"]}
    evaluator = FewShotEvaluator(tiny_model, processor, dataset, missing, show_progress=False, source="val_wiki.json")
    with pytest.raises(KeyError, match=f"{dataset[0]['relation']}.*val_wiki.json"):
        evaluator.evaluate(["zs-5"], 5)
    with pytest.raises(ValueError, match="label table"):
        FewShotEvaluator(tiny_model, processor, dataset, None, show_progress=False).evaluate(["zs-5"], 5)
    with pytest.raises(ValueError, match="only 8 relations"):
        FewShotEvaluator(tiny_model, processor, dataset, table, show_progress=False).evaluate(["10-1"], 5)
    with pytest.raises(ValueError, match="method='nearest' is unknown"):
        FewShotEvaluator(tiny_model, processor, dataset, table, show_progress=False).evaluate(["5-1"], 5, method="nearest")


def test_zero_shot_needs_a_label_encoder(tiny_model, processor, small_split):
    """An encoder with no label tower (e.g. a sentence-only wrapper) cannot do zero-shot: say so."""
    dataset, table = small_split

    relations = sorted(set(dataset["relation"]))

    class SentenceOnly:  # an oracle encoder: each sentence is its relation's one-hot vector
        has_labels, logit_scale = False, 1.0

        def encode_sentences(self, rows):
            return torch.nn.functional.one_hot(torch.tensor([relations.index(row["relation"]) for row in rows]),
                                               len(relations)).float()

    evaluator = FewShotEvaluator(SentenceOnly(), None, dataset, table, show_progress=False)
    assert evaluator.evaluate(["5-1"], 5)["5-1"]["accuracy"] == 1.0  # the prototypes separate the relations exactly
    with pytest.raises(ValueError, match="no label encoder"):
        evaluator.evaluate(["zs-5"], 5)
