"""The `relation-classification` pipeline: scores by hand, output format, batching, NOTA, errors, FewRel agreement."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import pipeline

from modeling_sacon import RelationClassificationPipeline, SaconDualEncoderModel
from modeling_sacon.data import first_per_relation, load_fewrel_json, load_label_table
from modeling_sacon.fewshot.evaluation import FewShotEvaluator
from modeling_sacon.scoring import prototype_logits
from modeling_sacon.utils.defaults import default_backbone_path

from test_inference import GOLD, QUERIES, RELATIONS, SUPPORT

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def minilm_pipe(processor) -> RelationClassificationPipeline:
    """Untrained all-MiniLM-L6-v2 towers behind the registered task, from loaded objects (no remote code)."""
    model = SaconDualEncoderModel.from_encoders_pretrained(default_backbone_path(), vocab_size=len(processor.tokenizer))
    return pipeline("relation-classification", model=model.eval(), processor=processor, device="cpu")


def test_registered_task_builds_the_package_pipeline(minilm_pipe):
    assert type(minilm_pipe) is RelationClassificationPipeline
    assert minilm_pipe.tokenizer is minilm_pipe.processor.tokenizer  # batches pad with the processor's tokenizer


def test_logits_are_scaled_cosines_of_the_two_towers(minilm_pipe):
    model, processor = minilm_pipe.model, minilm_pipe.processor
    with torch.no_grad():
        sentences = model.get_sentence_features(**processor(QUERIES))
        labels = model.get_label_features(**processor.encode_labels(list(RELATIONS.items())))
        expected = model.logit_scale_value().exp() * F.normalize(sentences, dim=-1) @ F.normalize(labels, dim=-1).T
    ranked = minilm_pipe(QUERIES, relations=RELATIONS, function_to_apply="none")
    names = list(RELATIONS)
    for row, entries in zip(expected, ranked):
        assert [e["label"] for e in entries] == [names[i] for i in row.argsort(descending=True).tolist()]
        assert [e["score"] for e in entries] == pytest.approx(sorted(row.tolist(), reverse=True), abs=1e-4)


def test_zero_shot_few_shot_and_label_augmented_rank_in_text_classification_layout(minilm_pipe):
    for candidates in ({"relations": RELATIONS}, {"support": SUPPORT}, {"relations": RELATIONS, "support": SUPPORT}):
        ranked = minilm_pipe(QUERIES, **candidates)
        assert [entries[0]["label"] for entries in ranked] == GOLD, candidates
        for entries in ranked:
            assert set(entries[0]) == {"label", "score"} and len(entries) == 3
            assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
            assert sum(e["score"] for e in entries) == pytest.approx(1.0, abs=1e-5)  # softmax over the candidates
    single = minilm_pipe(QUERIES[0], relations=RELATIONS, top_k=1)
    assert single == minilm_pipe(QUERIES[:1], relations=RELATIONS)[0][:1] and single[0]["label"] == GOLD[0]


def test_batches_keep_input_order_and_scores(minilm_pipe):
    long = "<e1>Paris</e1> , a city on the Seine with many museums and bridges , is the capital of <e2>France</e2> ."
    sentences = [long, *QUERIES, "<e1>A</e1> of <e2>B</e2>"]
    alone = [minilm_pipe(s, support=SUPPORT, function_to_apply="none") for s in sentences]
    batched = minilm_pipe(sentences, support=SUPPORT, batch_size=2, function_to_apply="none")
    for one, many in zip(alone, batched):
        assert [e["label"] for e in one] == [e["label"] for e in many]
        assert [e["score"] for e in one] == pytest.approx([e["score"] for e in many], abs=1e-4)


def test_none_of_the_above_threshold(minilm_pipe):
    logits = minilm_pipe(QUERIES[:1], relations=RELATIONS, function_to_apply="none")[0]
    best, worst = logits[0]["score"], logits[-1]["score"]
    above = minilm_pipe(QUERIES[:1], relations=RELATIONS, nota_threshold=best + 1.0, nota_label="NOTA")[0]
    assert above[0]["label"] == "NOTA" and len(above) == 4
    below = minilm_pipe(QUERIES[:1], relations=RELATIONS, nota_threshold=worst - 1.0, function_to_apply="none")[0]
    assert below[-1] == {"label": "none of the above", "score": pytest.approx(worst - 1.0)}
    assert below[:3] == logits  # the relations' logits do not change


@pytest.mark.parametrize(
    "sentences, candidates, message",
    [
        (QUERIES, {"relations": {}}, "relations is empty"),
        (QUERIES, {"relations": []}, "relations is empty"),
        (QUERIES, {"support": {}}, "support is empty"),
        (QUERIES, {}, "give candidate relations"),
        (QUERIES, {"support": {"capital of": []}}, r"support\['capital of'\] must be a non-empty list"),
        ([QUERIES[0], "Paris is the capital of <e2>France</e2>."], {"relations": RELATIONS}, "sentence 1: the head start marker is missing"),
        ([QUERIES[0], {"text": "Paris is big.", "head": (0, 3), "tail": (9, 12)}], {"relations": RELATIONS}, r"sentence 1: .*'Par' cuts the word 'Paris'"),
        ([QUERIES[0], {"tokens": ["a", "b"], "head": (0, 1), "tail": (1, 5)}], {"relations": RELATIONS}, r"sentence 1: the tail token span \(1, 5\) lies outside"),
        ("<e1>Paris</e1> is big", {"relations": RELATIONS}, "sentence: the tail start marker is missing"),
        ([], {"relations": RELATIONS}, "no sentences given"),
        (QUERIES, {"support": {**SUPPORT, "spouse": ["no markers"]}}, r"support\['spouse'\]\[0\]: the head start marker is missing"),
    ],
)
def test_bad_input_names_the_problem(minilm_pipe, sentences, candidates, message):
    with pytest.raises(ValueError, match=message):
        minilm_pipe(sentences, **candidates)


def test_bad_options_are_refused(minilm_pipe):
    for options, message in (({"top_k": 0}, "top_k must be"), ({"function_to_apply": "sigmoid"}, "function_to_apply"),
                             ({"similarity": "dot"}, "similarity"), ({"nota_threshold": "high"}, "nota_threshold")):
        with pytest.raises(ValueError, match=message):
            minilm_pipe(QUERIES, relations=RELATIONS, **options)


def test_val_wiki_top1_matches_the_evaluators_zero_shot_scoring(minilm_pipe, data_dir):
    """200 val_wiki sentences of its 16 relations against their descriptions: same predictions, same accuracy."""
    full = load_fewrel_json(data_dir / "fewrel" / "val_wiki.json")
    dataset = first_per_relation(full, 13).select(range(200))
    table = load_label_table(data_dir / "fewrel" / "pid2name.json")
    pids = list(dict.fromkeys(full["relation"]))
    assert len(pids) == 16 and len(set(dataset["relation"])) == 16

    evaluator = FewShotEvaluator(minilm_pipe.model, minilm_pipe.processor, dataset, table, batch_size=32, show_progress=False)
    evaluator.encode()
    labels = evaluator.encode_labels()
    logits = prototype_logits(
        evaluator.sentence_embeddings, None, torch.stack([labels[p] for p in pids]), "zero_shot", "cosine",
        evaluator.encoder.logit_scale,
    )
    evaluator_top1 = [pids[i] for i in logits.argmax(-1).tolist()]

    name_to_pid = {table[p][0]: p for p in pids}
    ranked = minilm_pipe(list(dataset), relations={table[p][0]: table[p][1] for p in pids}, batch_size=32, top_k=1)
    pipeline_top1 = [name_to_pid[entries[0]["label"]] for entries in ranked]

    gold = dataset["relation"]
    accuracy = [sum(p == g for p, g in zip(top1, gold)) / len(gold) for top1 in (pipeline_top1, evaluator_top1)]
    assert accuracy[0] == accuracy[1]
    assert pipeline_top1 == evaluator_top1
    assert accuracy[0] > 2 / 16  # well above chance: the towers read the descriptions


def test_saved_pipeline_reloads_with_the_same_scores(minilm_pipe, tmp_path):
    minilm_pipe.save_pretrained(tmp_path)
    reloaded = pipeline("relation-classification", model=str(tmp_path), pipeline_class=RelationClassificationPipeline,
                        device="cpu")
    assert type(reloaded.processor).__name__ == "SaconProcessor"
    before = minilm_pipe(QUERIES, relations=RELATIONS, support=SUPPORT, function_to_apply="none")
    after = reloaded(QUERIES, relations=RELATIONS, support=SUPPORT, function_to_apply="none")
    for mine, theirs in zip(before, after, strict=True):
        assert [e["label"] for e in theirs] == [e["label"] for e in mine]
        assert [e["score"] for e in theirs] == pytest.approx([e["score"] for e in mine], abs=1e-5)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["custom_pipelines"]["relation-classification"]["impl"] == "pipeline_sacon.RelationClassificationPipeline"
