"""The strict protocol: every pre-training corpus is checked against every known FewRel evaluation relation, whatever
the evaluation options, and against the evaluation file's sentences; `--allow_eval_relations` is the only way out."""

from __future__ import annotations

import json

import pytest
from test_trainer import INSTANCE, LABELS, fewrel_file, no_model_loading, pretrain, run_script  # noqa: F401

from modeling_sacon.data import EvaluationLeakageError, load_fewrel_json
from modeling_sacon.data.protocol import (
    FEWREL_EVAL_RELATIONS,
    FEWREL_PUBMED_RELATIONS,
    FEWREL_VAL_WIKI_RELATIONS,
    check_relation_leakage,
    check_sentence_overlap,
    normalised_sentences,
)


def test_constants_are_the_evaluation_files_relations(data_dir):
    """The package holds the lists as constants (no data at run time); they must match the files they come from."""
    assert set(json.loads((data_dir / "fewrel" / "val_wiki.json").read_text())) == FEWREL_VAL_WIKI_RELATIONS
    assert set(json.loads((data_dir / "fewrel" / "val_pubmed.json").read_text())) == FEWREL_PUBMED_RELATIONS
    assert len(FEWREL_EVAL_RELATIONS) == 16 + 20 + 7 + 10


def test_pretraining_on_val_wiki_is_refused_without_an_evaluation_file(pretrain, tmp_path, data_dir, no_model_loading):
    """The issue's case: --eval_fewrel none used to skip every val_wiki check."""
    with pytest.raises(EvaluationLeakageError, match=r"'P177'.*FewRel 1.0 val_wiki: P155, P177"):
        run_script(pretrain, tmp_path, "--train_files", str(data_dir / "fewrel" / "val_wiki.json"))


@pytest.mark.parametrize("relation, split", [("P1056", "FewRel 2.0 val_nyt"), ("ingredient_of", "FewRel 2.0 val_pubmed"),
                                             ("P50", "FewRel 1.0 hidden test")])
def test_every_known_split_is_checked(relation, split):
    with pytest.raises(EvaluationLeakageError, match=rf"\['{relation}'\] \({split}: {relation}\)"):
        check_relation_leakage(["P17", relation], source="corpus")
    assert check_relation_leakage(["P17", relation], source="corpus", allow=True) == [relation]
    assert check_relation_leakage(["P17"], ["P17"], source="corpus", allow=True) == ["P17"]  # the eval file's own


def test_normalised_text_ignores_case_and_whitespace():
    sentences = normalised_sentences([["Paris", " is\tthe ", "Capital"], ["x"], ["  a", "", "b  "]])
    assert sentences.to_pylist() == ["paris is the capital", "x", "a b"]


def test_evaluation_sentences_in_the_corpus_are_refused(pretrain, tmp_path, no_model_loading):
    """A sentence of the evaluation file under a non-evaluation relation, in another case and spacing, is found."""
    copied = {**INSTANCE, "tokens": ["Paris", "is", "the", " CAPITAL ", "of", "France"]}
    other = {**INSTANCE, "tokens": "paris lies in france".split()[:4] + ["today", "!"]}
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [other, copied], "P1376": [other, other]})
    evaluation = fewrel_file(tmp_path / "eval.json", {"P26": [INSTANCE, INSTANCE]})
    labels = fewrel_file(tmp_path / "labels.json", LABELS)
    options = ["--output_dir", str(tmp_path / "out"), "--train_files", corpus, "--label_files", labels,
               "--eval_fewrel", evaluation, "--eval_label_files", labels]
    with pytest.raises(EvaluationLeakageError, match=r"contains 1 sentence\(s\) of the evaluation file .* row 1: "
                                                     r"'paris is the capital of france'"):
        pretrain.main(options)
    with pytest.raises(AssertionError, match="a model was loaded"):  # the explicit way out
        pretrain.main([*options, "--allow_eval_relations", "--per_device_train_batch_size", "4"])
    assert pretrain.strict_override_note([], 1) == "1 sentence(s) of the evaluation file"


def test_overlap_count_covers_every_batch(tmp_path):
    rows = {"P17": [INSTANCE, {**INSTANCE, "tokens": ["other"] * 6}] * 3}
    train = load_fewrel_json(fewrel_file(tmp_path / "train.json", rows))
    evaluation = load_fewrel_json(fewrel_file(tmp_path / "eval.json", {"P26": [INSTANCE]}))
    assert check_sentence_overlap(train, evaluation, source="t", allow=True, batch_rows=4) == 3
    assert check_sentence_overlap(train.select([1, 3]), evaluation, source="t") == 0  # a selection is respected


def test_model_card_says_when_the_check_was_overridden():
    from modeling_sacon.training.model_card import render_model_card

    card = " ".join(str(render_model_card(model_name="m", excludes_fewrel_eval=False,
                                          eval_leakage_allowed="FewRel evaluation relation(s) P177")).split())
    assert "The strict-protocol check was overridden** (`--allow_eval_relations`): pre-training contains FewRel " \
           "evaluation relation(s) P177." in card
    assert "overridden" not in str(render_model_card(model_name="m", excludes_fewrel_eval=True))
