"""The `relation-classification` pipeline as the one inference API: easy predictions with the packaged MiniLM, the three
sentence forms, span validation, loading checkpoints (a fine-tuned few-shot one, one without label-encoder weights)."""

from __future__ import annotations

import pytest
import torch
from transformers import pipeline
from safetensors.torch import load_file, save_file

from modeling_sacon import SaconConfig, SaconDualEncoderModel
from modeling_sacon.utils.defaults import default_backbone_path
from modeling_sacon.pipeline_sacon import RelationClassificationPipeline
from modeling_sacon.sentence_forms import to_instance, word_tokenize
from modeling_sacon.modeling_sacon_fewshot import SaconForFewShotRelationClassification

from conftest import tiny_bert_config


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def minilm(processor):
    """Two untrained all-MiniLM-L6-v2 towers: easy cases only (near-duplicate templates, lexical descriptions)."""
    model = SaconDualEncoderModel.from_encoders_pretrained(default_backbone_path(), vocab_size=len(processor.tokenizer))
    return Classifier(RelationClassificationPipeline(model=model.eval(), processor=processor))


class Classifier:
    """The pipeline with (relation, score) lists: the assertions below compare rankings."""

    def __init__(self, pipe: RelationClassificationPipeline):
        self.pipe = pipe

    @classmethod
    def load(cls, path) -> "Classifier":
        return cls(pipeline("relation-classification", model=str(path), trust_remote_code=True))

    @property
    def label_encoder_loaded(self) -> bool:
        return self.pipe.label_encoder_loaded

    def encode_sentences(self, sentences, batch_size: int = 32) -> torch.Tensor:
        return self.pipe.encode_sentences(sentences, None, batch_size)

    def predict(self, sentences, scores: str = "logits", **kwargs) -> list[list[tuple[str, float]]]:
        function = "softmax" if scores == "probabilities" else "none"
        ranked = self.pipe(sentences, function_to_apply=function, **kwargs)
        return [[(entry["label"], entry["score"]) for entry in entries] for entries in ranked]


RELATIONS = {
    "capital of": "the country of which this city is the capital",
    "founded by": "the person who founded this company",
    "spouse": "the person this person is married to",
}
SUPPORT = {
    "capital of": ["<e1>Rome</e1> is the capital city of <e2>Italy</e2> .", "<e1>Madrid</e1> is the capital city of <e2>Spain</e2> ."],
    "founded by": [{"text": "Apple was founded by Steve Jobs .", "head": (0, 5), "tail": (21, 31)}],
    "spouse": [(["Hillary", "is", "married", "to", "Bill", "."], (0, 1), (4, 5))],
}
QUERIES = [
    "<e1>Paris</e1> is the capital city of <e2>France</e2> .",
    "[E1] Microsoft [/E1] was founded by [E2] Bill Gates [/E2] .",
    {"text": "Michelle is married to Barack .", "head": (0, 8), "tail": (23, 29)},
]
GOLD = ["capital of", "founded by", "spouse"]


def test_prototype_zero_shot_and_label_augmented_rank_the_right_relation(minilm):
    for kwargs in ({"support": SUPPORT}, {"relations": RELATIONS}, {"relations": RELATIONS, "support": SUPPORT}):
        ranked = minilm.predict(QUERIES, **kwargs)
        assert [r[0][0] for r in ranked] == GOLD, kwargs
        assert all(len(r) == 3 and r[0][1] >= r[1][1] >= r[2][1] for r in ranked)
    top = minilm.predict(QUERIES, relations=list(RELATIONS.items()), top_k=1, scores="probabilities")
    assert [len(r) for r in top] == [1, 1, 1] and [r[0][0] for r in top] == GOLD
    probabilities = minilm.predict(QUERIES[:1], relations=RELATIONS, scores="probabilities")[0]
    assert sum(p for _, p in probabilities) == pytest.approx(1.0, abs=1e-5)
    euclidean = minilm.predict(QUERIES, support=SUPPORT, similarity="euclidean")
    assert [r[0][0] for r in euclidean] == GOLD and all(score <= 0 for r in euclidean for _, score in r)


def test_the_three_sentence_forms_give_identical_embeddings(minilm):
    text = "Paris is the capital of France."
    tokens = [w for w, _, _ in word_tokenize(text)]
    assert tokens == ["Paris", "is", "the", "capital", "of", "France", "."]
    forms = [
        {"tokens": tokens, "head": (0, 1), "tail": (5, 6)},
        (tokens, (0, 1), (5, 6)),
        {"tokens": tokens, "h": ["Paris", "", [[0]]], "t": ["France", "", [[5]]]},  # FewRel instance
        {"text": text, "head": (0, 5), "tail": (24, 30)},
        (text, (0, 6), (23, 30)),  # whitespace at a span's edge is ignored
        "<e1>Paris</e1> is the capital of <e2>France</e2>.",
        "<E1>Paris</E1> is the capital of <E2> France </E2>.",
        "[E1] Paris [/E1] is the capital of [E2] France [/E2].",
    ]
    embeddings = minilm.encode_sentences(forms)
    for i in range(1, len(forms)):
        assert torch.equal(embeddings[i], embeddings[0]), forms[i]
    # the tail may come first; multi-word mentions map to several tokens
    swapped = to_instance("<e2>Gates</e2> founded <e1>Microsoft Corp</e1> .", "s")
    assert swapped["head"]["indices"] == [2, 3] and swapped["tail"]["indices"] == [0]


TEXT = "Paris is the capital of France."


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"text": TEXT, "head": (0, 3), "tail": (24, 30)}, r"head character span \(0, 3\) = 'Par' cuts the word 'Paris'"),
        ({"text": TEXT, "head": (1, 5), "tail": (24, 30)}, "cuts the word 'Paris'"),
        ({"text": TEXT, "head": (0, 5), "tail": (24, 24)}, r"tail character span \(24, 24\) is empty"),
        ({"text": TEXT, "head": (0, 5), "tail": (5, 6)}, r"tail character span \(5, 6\) is empty"),
        ({"text": TEXT, "head": (0, 5), "tail": (24, 99)}, "lies outside the text of 31 characters"),
        ({"text": TEXT, "head": (-1, 5), "tail": (24, 30)}, "lies outside the text"),
        ({"text": TEXT, "head": (0, 12), "tail": (9, 20)}, "overlap"),
        ({"text": TEXT, "head": (0, 5)}, "tail span must be a"),
        ({"tokens": TEXT.split(), "head": (0, 1), "tail": (5, 9)}, "outside the sentence of 6 tokens"),
        ({"tokens": TEXT.split(), "head": (2, 2), "tail": (5, 6)}, r"head token span \(2, 2\) is empty"),
        ({"tokens": TEXT.split(), "head": (0, 3), "tail": (2, 4)}, "overlap"),
        ({"tokens": TEXT.split(), "h": ["x", "", [[0]]], "t": ["y", "", [[9]]]}, "lies outside the sentence"),
        ("Paris is the capital of France.", "head start marker is missing"),
        ("<e1>Paris</e1> is the capital of France.", "tail start marker is missing"),
        ("<e1>Paris</e1> is the capital of <e2>France.", "tail end marker is missing"),
        ("<e1>Paris</e1> is <e1>the</e1> capital of <e2>France</e2>.", "head start marker appears 2 times"),
        ("</e1>Paris<e1> is the capital of <e2>France</e2>.", "head end marker comes before its start"),
        ("<e1>Paris <e2>is</e1> the</e2> capital of France.", "overlap or nest"),
        ("<e1></e1> is the capital of <e2>France</e2>.", "head character span .* is empty"),
        ("<e1>Par</e1>is is the capital of <e2>France</e2>.", "'Par' cuts the word 'Paris' at \\(0, 5\\)"),
        (42, "unsupported sentence int"),
    ],
)
def test_bad_spans_are_rejected_with_the_sentence_and_the_problem(minilm, bad, message):
    good = "<e1>Paris</e1> is the capital of <e2>France</e2>."
    with pytest.raises(ValueError, match=rf"sentence 1: .*{message}"):
        minilm.predict([good, bad], relations=RELATIONS)


def test_bad_support_and_candidates(minilm):
    with pytest.raises(ValueError, match=r"support\['spouse'\]\[1\]: the head start marker is missing"):
        minilm.predict(QUERIES[:1], support={**SUPPORT, "spouse": [SUPPORT["spouse"][0], "no markers here"]})
    with pytest.raises(ValueError, match="must name the same relations"):
        minilm.predict(QUERIES[:1], relations=RELATIONS, support={"capital of": SUPPORT["capital of"]})
    with pytest.raises(ValueError, match="give candidate relations"):
        minilm.predict(QUERIES[:1])
    with pytest.raises(ValueError, match="non-empty list of example sentences"):
        minilm.predict(QUERIES[:1], support={"capital of": []})
    single = minilm.pipe(QUERIES[0], relations=RELATIONS)  # one sentence in, one ranking out
    assert [entry["label"] for entry in single][0] == "capital of" and len(single) == 3


def test_from_pretrained_checkpoints_and_missing_label_encoder(processor, tmp_path):
    torch.manual_seed(0)
    config = SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict())
    fewshot = SaconForFewShotRelationClassification(config).eval()
    fewshot.save_pretrained(tmp_path / "fewshot")  # a fine-tuned few-shot checkpoint: sacon.* keys
    processor.save_pretrained(tmp_path / "fewshot")
    classifier = Classifier.load(tmp_path / "fewshot")
    expected = fewshot.sacon.get_sentence_features(**processor.encode_instances([to_instance(QUERIES[0])]))
    assert torch.allclose(classifier.encode_sentences(QUERIES[:1]), expected, atol=1e-6)
    assert len(classifier.predict(QUERIES, relations=RELATIONS)[0]) == 3

    fewshot.sacon.save_pretrained(tmp_path / "dual")
    processor.save_pretrained(tmp_path / "dual")
    state = load_file(tmp_path / "dual" / "model.safetensors")
    save_file({k: v for k, v in state.items() if not k.startswith("label_encoder.")},
              tmp_path / "dual" / "model.safetensors", metadata={"format": "pt"})
    partial = Classifier.load(tmp_path / "dual")
    assert partial.label_encoder_loaded is False
    with pytest.raises(ValueError, match="need the label encoder"):
        partial.predict(QUERIES, relations=RELATIONS)
    assert [len(r) for r in partial.predict(QUERIES, support=SUPPORT)] == [3, 3, 3]


def test_encode_sentences_batches_by_length_and_keeps_input_order(processor):
    torch.manual_seed(0)
    model = SaconDualEncoderModel(SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict()))
    classifier = Classifier(RelationClassificationPipeline(model=model.eval(), processor=processor))
    long = "<e1>Paris</e1> , a city on the Seine with many museums and bridges , is the capital of <e2>France</e2> ."
    sentences = [long, QUERIES[0], "<e1>A</e1> of <e2>B</e2>", QUERIES[1], long.replace("Seine", "river Seine")]
    alone = torch.cat([classifier.encode_sentences([s], batch_size=2) for s in sentences])
    calls, encode_instances = [], processor.encode_instances
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(processor, "encode_instances", lambda items, names: calls.append(names) or encode_instances(items, names=names))
        together = classifier.encode_sentences(sentences, batch_size=2)
    assert calls == [["sentence 2", "sentence 3"], ["sentence 1", "sentence 0"], ["sentence 4"]]  # 3, 7, 8, 19, 20 words
    assert torch.allclose(together, alone, atol=1e-5)
    assert not torch.allclose(together[0], together[4], atol=1e-3)  # rows stay distinct, in input order
