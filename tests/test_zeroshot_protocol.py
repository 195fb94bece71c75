"""Zero-shot protocol (RE-Matching's FewRel splits): the ZS-BERT metric by hand, split validation, strictness, and a
tiny SaCon model end to end against independently computed predictions, through the library and the example script."""

import importlib
import json
import logging
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertModel, HfArgumentParser

from modeling_sacon import SaconDualEncoderModel
from modeling_sacon.data import DataFormatError, UnknownRelationError, load_fewrel_json, load_label_table
from modeling_sacon.fewshot.zeroshot_protocol import (
    PRETRAINING_RELATIONS_FILE,
    ZeroShotEvaluator,
    check_strictness,
    filter_corpus_for_split,
    gather_test_sentences,
    load_pretraining_relations,
    load_zeroshot_split,
    macro_prf,
    save_pretraining_relations,
    summarize,
)
from modeling_sacon.utils.defaults import default_backbone_path

from conftest import tiny_bert_config
from test_pretrain_push import write_fewrel
from test_trainer import pretrain  # noqa: F401 - fixture: examples/pretrain.py as a module

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import evaluate_zeroshot  # noqa: E402


def write_split(directory: Path, name: str, **fields) -> Path:
    path = directory / name
    path.write_text(json.dumps({k: {r: i for i, r in enumerate(v)} if isinstance(v, list) else v for k, v in fields.items()}))
    return path


# --------------------------------------------------------------------------- metric


def test_macro_prf_by_hand_with_an_unpredicted_relation():
    # gold  A A A B B C C D      m = 4 gold relations
    # pred  A A B B B A A A      2 distinct predicted relations, fewer than m (C and D never predicted)
    # A: predicted 5 times (positions 0, 1 right; 5, 6, 7 wrong) -> P = 2/5, R = 2/3, F1 = 2*(2/5)(2/3)/(16/15) = 1/2
    # B: predicted 3 times (positions 3, 4 right, 2 wrong)     -> P = 2/3, R = 2/2 = 1, F1 = 2*(2/3)/(5/3) = 4/5
    # C, D: never predicted -> P = 0, R = 0, F1 = 0
    # precision = (2/5 + 2/3 + 0 + 0) / 2 distinct predicted = (16/15) / 2 = 8/15   (not / m = 4: that gives 4/15)
    # recall    = (2/3 + 1 + 0 + 0) / 4 gold relations        = (5/3) / 4  = 5/12
    # F1 = 2 * (8/15)(5/12) / (8/15 + 5/12) = (4/9) / (57/60) = 80/171
    # per-relation F1 mean = (1/2 + 4/5 + 0 + 0) / 4 = 13/40; accuracy = 4/8
    scores = macro_prf(list("AAABBCCD"), list("AABBBAAA"))
    assert scores.precision == pytest.approx(8 / 15)
    assert scores.recall == pytest.approx(5 / 12)
    assert scores.f1 == pytest.approx(80 / 171)
    assert scores.per_relation_f1_mean == pytest.approx(13 / 40)
    assert scores.accuracy == pytest.approx(0.5)
    assert scores.per_relation["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "gold": 2, "predicted": 0, "correct": 0}
    assert scores.per_relation["A"]["predicted"] == 5 and scores.per_relation["B"]["f1"] == pytest.approx(4 / 5)


def test_macro_prf_counts_a_predicted_non_gold_relation_in_the_denominator_only():
    # gold A A B, pred A X B: A P=1 R=1/2, B P=1 R=1; precision = (1 + 1) / 3 distinct predicted {A, X, B} = 2/3,
    # recall = (1/2 + 1) / 2 = 3/4, F1 = 2 (2/3)(3/4) / (17/12) = 12/17
    scores = macro_prf(["A", "A", "B"], ["A", "X", "B"])
    assert (scores.precision, scores.recall) == (pytest.approx(2 / 3), pytest.approx(3 / 4))
    assert scores.f1 == pytest.approx(12 / 17) and "X" not in scores.per_relation
    perfect = macro_prf([0, 1, 2], [0, 1, 2])
    assert (perfect.precision, perfect.recall, perfect.f1, perfect.accuracy) == (1.0, 1.0, 1.0, 1.0)
    assert macro_prf([0, 1], [1, 0]).f1 == 0.0  # all wrong: both averages 0, F1 defined as 0
    with pytest.raises(ValueError, match="2 gold labels but 1 predictions"):
        macro_prf([0, 1], [0])
    with pytest.raises(ValueError, match="no labels"):
        macro_prf([], [])


def test_summary_mean_and_sample_spread():
    class R:
        def __init__(self, m, f1):
            self.m, self.split = m, f"m{m}/x"
            self.precision = self.recall = self.per_relation_f1_mean = self.accuracy = self.f1 = f1

    summary = summarize([R(5, 0.5), R(5, 0.7), R(5, 0.9), R(10, 0.4)])
    assert summary[5]["f1"]["mean"] == pytest.approx(0.7) and summary[5]["f1"]["std"] == pytest.approx(0.2)
    assert (summary[5]["f1"]["min"], summary[5]["f1"]["max"]) == (0.5, 0.9)
    assert summary[10]["f1"] == {"mean": 0.4, "std": 0.0, "min": 0.4, "max": 0.4}


# --------------------------------------------------------------------------- split files


def test_real_split_files_load(data_dir):
    split = load_zeroshot_split(data_dir / "zeroshot" / "fewrel_rel2id_5_ori.json")
    assert (split.m, split.name, split.key) == (5, "ori", "m5/ori")
    assert split.test == ("P177", "P364", "P361", "P641", "P59")
    assert len(split.train) == 70 and len(split.eval) == 5


@pytest.mark.parametrize("name", ["ori", "40", "41", "42", "43"])
def test_a_seeds_split_files_nest(data_dir, name):
    """What the zero-shot block's one run per seed rests on: a seed's m = 5 and 10 held-out (test and eval) relations
    are among its m = 15 ones, so excluding the seed's three files excludes exactly the m = 15 split's 20 relations."""
    splits = {m: load_zeroshot_split(data_dir / "zeroshot" / f"fewrel_rel2id_{m}_{name}.json") for m in (5, 10, 15)}
    assert splits[5].held_out <= splits[15].held_out and splits[10].held_out <= splits[15].held_out
    assert len(splits[15].held_out) == 20 and set(splits[5].test) <= set(splits[10].test) <= set(splits[15].test)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"train": ["P1"], "test": ["P2", "P3"]}, r"field 'eval': missing"),
        ('{"train": ["P1"], "eval": {"P4": 0, "P4": 1}, "test": ["P2", "P3"]}', r"duplicate key 'P4'"),
        ({"train": ["P1", "P1"], "eval": [], "test": ["P2", "P3"]}, r"field 'train': duplicate relation id\(s\) \['P1'\]"),
        ({"train": ["P1"], "eval": ["P3"], "test": ["P2", "P3"]}, r"fields 'eval' and 'test' share relation\(s\) \['P3'\]"),
        ({"train": ["P2"], "eval": [], "test": ["P2", "P3"]}, r"fields 'train' and 'test' share"),
        ({"train": ["P1"], "eval": [], "test": ["P2", "P3", "P4"]}, r"field 'test': 3 relations, but the file name says m = 2"),
        ({"train": ["P1"], "eval": [], "test": 7}, r"field 'test': expected"),
    ],
)
def test_bad_split_files_are_named(tmp_path, content, message):
    path = tmp_path / "fewrel_rel2id_2_x.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(DataFormatError, match=message) as err:
        load_zeroshot_split(path)
    assert str(path) in str(err.value)


def test_unparsed_file_name_takes_m_from_the_test_set(tmp_path):
    split = load_zeroshot_split(write_split(tmp_path, "mine.json", train=["P1"], eval=[], test=["P2", "P3", "P4"]))
    assert (split.m, split.name) == (3, "mine")


# --------------------------------------------------------------------------- strictness


def test_filter_corpus_removes_test_and_eval_relations_only(tmp_path, data_dir):
    corpus = load_fewrel_json(data_dir / "fewrel_train_sample" / "train_wiki_sample.json")
    split = load_zeroshot_split(data_dir / "zeroshot" / "fewrel_rel2id_5_40.json")
    filtered, removed = filter_corpus_for_split(corpus, split)
    before, after = corpus["relation"][:], filtered["relation"][:]
    held_out = set(split.test) | set(split.eval)
    expected = {r: before.count(r) for r in sorted(held_out & set(before))}
    assert removed == expected and sum(expected.values()) > 0
    assert after == [r for r in before if r not in held_out]  # everything else kept, in order
    assert filtered["tokens"][:3] == [row for row, r in zip(corpus["tokens"][:], before) if r not in held_out][:3]
    # a split file path works too; a corpus without relations is refused
    assert filter_corpus_for_split(corpus, split.path)[1] == removed
    with pytest.raises(DataFormatError, match="no 'relation' column"):
        filter_corpus_for_split(corpus.remove_columns("relation"), split)


def test_pretraining_relations_round_trip(tmp_path):
    assert load_pretraining_relations(tmp_path) is None
    written = save_pretraining_relations(tmp_path / "ckpt", ["P1", "P2", "P1"])
    assert written.name == PRETRAINING_RELATIONS_FILE
    assert load_pretraining_relations(tmp_path / "ckpt") == ["P1", "P2"] == load_pretraining_relations(written)
    written.write_text(json.dumps({"relations": "P1"}))
    with pytest.raises(DataFormatError, match=f"{PRETRAINING_RELATIONS_FILE}: field 'relations'"):
        load_pretraining_relations(tmp_path / "ckpt")
    written.write_text("[1, 2")
    with pytest.raises(DataFormatError, match="malformed JSON"):
        load_pretraining_relations(written)


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def small_fewrel(tmp_path, data_dir):
    """The first 3 sentences of each relation of val_wiki and of the train sample: real rows, seconds to encode."""
    paths = []
    for name in ("fewrel/val_wiki.json", "fewrel_train_sample/train_wiki_sample.json"):
        data = json.loads((data_dir / name).read_text())
        path = tmp_path / Path(name).name
        path.write_text(json.dumps({relation: rows[:3] for relation, rows in data.items()}))
        paths.append(path)
    return paths


def test_predictions_match_an_independent_cosine_argmax(tiny_model, processor, small_fewrel, data_dir, tmp_path):
    table = load_label_table(data_dir / "fewrel" / "pid2name.json")
    # test relations from both sources: P177, P364 (val_wiki) and P1001 (train sample)
    split = load_zeroshot_split(write_split(tmp_path, "fewrel_rel2id_3_t.json", train=["P31"], eval=["P361"],
                                            test=["P177", "P1001", "P364"]))
    sources = [load_fewrel_json(path) for path in small_fewrel]
    evaluator = ZeroShotEvaluator(tiny_model, processor, sources, table, batch_size=4)
    gold, pred = evaluator.predict(split)

    rows = list(gather_test_sentences(sources, split.test))
    assert [row["relation"] for row in rows] == ["P177"] * 3 + ["P1001"] * 3 + ["P364"] * 3
    with torch.no_grad():  # the oracle: one sentence, one label at a time, no batching, no sorting
        sentences = torch.cat([tiny_model.get_sentence_features(**processor.encode_instances([row])) for row in rows])
        labels = torch.cat([tiny_model.get_label_features(**processor.encode_labels([table[r]])) for r in split.test])
    cosine = F.cosine_similarity(sentences[:, None], labels[None], dim=-1)
    assert gold == [split.test.index(row["relation"]) for row in rows]
    assert pred == cosine.argmax(-1).tolist()

    result = evaluator.evaluate_split(split)
    expected = macro_prf(gold, pred)
    assert (result.precision, result.recall, result.f1, result.accuracy) == (
        expected.precision, expected.recall, expected.f1, expected.accuracy)
    pairs = list(zip(gold, pred))
    assert result.num_sentences == 9 and result.num_predicted_relations == len(set(pred))
    assert result.confusion == [[pairs.count((g, p)) for p in range(3)] for g in range(3)]
    for pair in result.top_confusions:
        assert pair["count"] == pairs.count((split.test.index(pair["gold"]), split.test.index(pair["predicted"])))
        assert pair["gold_name"] == table[pair["gold"]][0] and pair["gold"] != pair["predicted"]


def test_missing_sentences_labels_and_seen_test_relations_are_named(tiny_model, processor, small_fewrel, data_dir,
                                                                     tmp_path, caplog):
    table = load_label_table(data_dir / "fewrel" / "pid2name.json")
    sources = [load_fewrel_json(path) for path in small_fewrel]
    no_rows = load_zeroshot_split(write_split(tmp_path, "a.json", train=[], eval=[], test=["P177", "P999"]))
    with pytest.raises(DataFormatError, match=r"no sentence for test relation\(s\) P999 in .*a\.json"):
        ZeroShotEvaluator(tiny_model, processor, sources, {**table, "P999": ("x", "y")}).predict(no_rows)
    split = load_zeroshot_split(write_split(tmp_path, "b.json", train=[], eval=["P364"], test=["P177", "P1001"]))
    with pytest.raises(UnknownRelationError, match=r"'P1001'.*b\.json"):
        ZeroShotEvaluator(tiny_model, processor, sources, {"P177": table["P177"]}).predict(split)
    with pytest.raises(ValueError, match=r"pre-trained on test relation\(s\) P1001 \(" + table["P1001"][0] + r"\) of .*b\.json"):
        ZeroShotEvaluator(tiny_model, processor, sources, table, pretraining_relations=["P31", "P1001"]).predict(split)
    with caplog.at_level(logging.WARNING, logger="modeling_sacon"):
        caplog.clear()
        ZeroShotEvaluator(tiny_model, processor, sources, table, pretraining_relations=None).predict(split)
        ZeroShotEvaluator(tiny_model, processor, sources, table, pretraining_relations=["P364"]).predict(split)
    messages = [record.getMessage() for record in caplog.records]
    assert sum("cannot check" in m and "b.json" in m for m in messages) == 1
    assert any("eval relation(s) ['P364']" in m for m in messages)


def test_example_script_on_a_tiny_checkpoint(tiny_model, processor, small_fewrel, data_dir, tmp_path, capsys):
    checkpoint = tmp_path / "ckpt"
    tiny_model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    save_pretraining_relations(checkpoint, ["P31", "P17"])  # neither is a test relation of the two splits
    splits = [str(data_dir / "zeroshot" / f"fewrel_rel2id_5_{name}.json") for name in ("ori", "40")]
    out, plot = tmp_path / "zs.json", tmp_path / "zs.png"
    argv = ["--model_name_or_path", str(checkpoint), "--splits", *splits, "--fewrel_files", *map(str, small_fewrel),
            "--label_files", str(data_dir / "fewrel" / "pid2name.json"), "--batch_size", "8", "--device", "cpu",
            "--no_progress", "--output_json", str(out), "--plot", str(plot)]
    document = evaluate_zeroshot.main(argv)
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(document))
    assert [s["split"] for s in written["splits"]] == ["m5/40", "m5/ori"] and set(written["summary"]) == {"5"}
    for split in written["splits"]:
        assert split["num_sentences"] == 15 and split["m"] == 5  # 3 sentences x 5 test relations
    f1s = [s["f1"] for s in written["splits"]]
    assert written["summary"]["5"]["f1"]["mean"] == pytest.approx(sum(f1s) / 2)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert f"{100 * written['summary']['5']['f1']['mean']:.2f}" in table and f"ori {100 * f1s[1]:.2f}" in table
    assert f" ± {100 * written['summary']['5']['f1']['std']:.2f}" in table  # the spread over the two splits
    evaluate_zeroshot.main([*argv[:3], splits[0], *argv[5:]])  # one split: no spread to print (not "± 0.00")
    assert f"| 5 | {100 * written['splits'][1]['precision']:.2f} |" in capsys.readouterr().out

    save_pretraining_relations(checkpoint, ["P31", "P641"])  # P641 (sport) is a test relation of 5_ori
    with pytest.raises(ValueError, match=r"P641 \(sport\) of .*fewrel_rel2id_5_ori\.json"):
        evaluate_zeroshot.main(argv)


def test_split_files_are_found_as_given_or_in_the_data_dir(data_dir, tmp_path, monkeypatch):
    """`--splits` takes a file, a glob, or either relative to the data dir (as `--exclude_relations_from` does); a name
    found nowhere is an error naming it."""
    monkeypatch.chdir(tmp_path)  # no zeroshot/ here: relative names can only come from the data dir
    in_data = [str(data_dir / "zeroshot" / f"fewrel_rel2id_10_{name}.json") for name in ("40", "41", "42", "43", "ori")]
    assert evaluate_zeroshot.expand_splits(["zeroshot/fewrel_rel2id_10_41.json"], str(data_dir)) == [in_data[1]]
    assert evaluate_zeroshot.expand_splits(["zeroshot/fewrel_rel2id_10_*.json"], str(data_dir)) == in_data
    assert evaluate_zeroshot.expand_splits([in_data[4]], str(data_dir)) == [in_data[4]]
    assert len(evaluate_zeroshot.expand_splits([], str(data_dir))) == 15  # the default: every split of the data dir
    (tmp_path / "mine.json").write_text("{}")
    assert evaluate_zeroshot.expand_splits(["mine.json"], str(data_dir)) == ["mine.json"]
    with pytest.raises(FileNotFoundError, match="'zeroshot/fewrel_rel2id_20_40.json': no such split file"):
        evaluate_zeroshot.expand_splits(["zeroshot/fewrel_rel2id_20_40.json"], str(data_dir))


def test_sentence_and_label_files_are_found_in_the_data_dir(data_dir, tmp_path, monkeypatch):
    """`--fewrel_files` and `--label_files` given by relative name are taken from `--data_dir`, as the split files
    are (not only from the working directory or SACON_DATA_DIR); a name found in neither is an error naming it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SACON_DATA_DIR", raising=False)
    base = ["--model_name_or_path", "unused", "--data_dir", str(data_dir)]
    (args,) = HfArgumentParser(evaluate_zeroshot.ZeroShotArguments).parse_args_into_dataclasses(
        args=[*base, "--fewrel_files", "fewrel/val_wiki.json", "--label_files", "fewrel/pid2name.json"])
    (sentences,), table, source = evaluate_zeroshot.load_sentences_and_labels(args)
    assert source == "val_wiki.json" and len(sentences) == 16 * 700 and table["P641"][0] == "sport"
    (args,) = HfArgumentParser(evaluate_zeroshot.ZeroShotArguments).parse_args_into_dataclasses(
        args=[*base, "--fewrel_files", "fewrel/val_wikii.json"])
    with pytest.raises(FileNotFoundError, match=r"fewrel/val_wikii\.json not found"):
        evaluate_zeroshot.load_sentences_and_labels(args)


def test_pretraining_on_a_filtered_corpus_records_only_unseen_relations(pretrain, small_fewrel, data_dir, tmp_path):
    """examples/pretrain.py writes the relations it saw next to the model and into every checkpoint; with
    `--exclude_relations_from SPLIT` (filter_corpus_for_split on the loaded corpus) they hold no test or eval relation
    of the split, so the evaluator accepts the checkpoint on that split, and the model card says what was removed."""
    split = load_zeroshot_split(data_dir / "zeroshot" / "fewrel_rel2id_5_40.json")
    relations = [split.test[0], split.eval[0], *[r for r in split.train if r in {"P17", "P31", "P27", "P106"}][:2]]
    sample = load_fewrel_json(small_fewrel)  # val_wiki + the train sample: every FewRel relation, 3 rows each
    corpus = sample.select([i for i, r in enumerate(sample["relation"][:]) if r in relations])
    filtered, removed = filter_corpus_for_split(corpus, split)
    assert set(removed) == set(relations[:2]) and set(filtered["relation"][:]) == set(relations[2:])
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    out = tmp_path / "out"
    pretrain.main([
        "--sentence_model_name_or_path", str(tmp_path / "backbone"), "--train_files", write_fewrel(list(corpus), tmp_path / "t.json"),
        "--exclude_relations_from", "zeroshot/fewrel_rel2id_5_40.json",  # relative: resolved in the data dir
        "--label_files", str(data_dir / "fewrel" / "pid2name.json"), "--eval_fewrel", "none", "--max_seq_length", "32",
        "--per_device_train_batch_size", "6", "--balanced_batches", "false", "--max_steps", "2", "--save_steps", "1",
        "--output_dir", str(out), "--use_cpu", "--dataloader_pin_memory", "false", "--report_to", "none",
    ])
    recorded = load_pretraining_relations(out)
    assert sorted(recorded) == sorted(relations[2:])
    checkpoints = sorted(p.name for p in out.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # the default keeps both
    assert all(load_pretraining_relations(out / name) == recorded for name in checkpoints)
    card = (out / "README.md").read_text()
    assert f"zero-shot split `fewrel_rel2id_5_40.json` ({', '.join(sorted(split.held_out))})" in card
    assert f"({sum(removed.values())} rows)" in card
    check_strictness(split, recorded)  # accepted: no test relation was seen
    with pytest.raises(ValueError, match=split.test[0]):
        check_strictness(split, [*recorded, split.test[0]])


def test_exclude_relations_from_loads_the_filtered_corpus(pretrain, small_fewrel, data_dir, tmp_path):
    """`--exclude_relations_from` is applied to the loaded corpus, one split file after another (union of their held-out
    relations), before any model is built; a missing split file is named."""
    corpus = load_fewrel_json(small_fewrel)
    first = write_split(tmp_path, "a.json", train=["P31"], eval=["P17"], test=["P641", "P177"])
    second = write_split(tmp_path, "b.json", train=["P17"], eval=[], test=["P31"])
    data_args = pretrain.DataArguments(train_files=[str(p) for p in small_fewrel], exclude_relations_from=[str(first)])
    dataset, labels, card = pretrain.load_training_data(data_args)
    assert dataset["relation"][:] == [r for r in corpus["relation"][:] if r not in {"P17", "P641", "P177"}]
    assert not {"P17", "P641", "P177"} & set(labels) and "P31" in labels
    assert "`a.json` (P17, P177, P641) were removed before training (9 rows)" in card["corpus_description"]
    data_args.exclude_relations_from = [str(first), str(second)]
    dataset, labels, card = pretrain.load_training_data(data_args)
    assert not {"P17", "P641", "P177", "P31"} & (set(dataset["relation"][:]) | set(labels))
    assert card["corpus_description"].count("were removed before training") == 2
    data_args.exclude_relations_from = [str(tmp_path / "missing.json")]
    with pytest.raises(FileNotFoundError, match="missing.json"):
        pretrain.load_training_data(data_args)


def test_example_script_reads_the_hub_layout_like_the_json_files(tiny_model, processor, small_fewrel, data_dir, tmp_path):
    """The same rows as a local dataset in the thunlp/few_rel layout (splits train_wiki / val_wiki, label texts in the
    `names` column) give the same scores as the FewRel JSON files with pid2name.json."""
    import datasets

    checkpoint = tmp_path / "ckpt"
    tiny_model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    table = json.loads((data_dir / "fewrel" / "pid2name.json").read_text())
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for split, path in zip(("val_wiki", "train_wiki"), small_fewrel):
        rows = [
            {"relation": relation, "tokens": row["tokens"], "names": table[relation],
             "head": {"text": row["h"][0], "type": row["h"][1], "indices": row["h"][2]},
             "tail": {"text": row["t"][0], "type": row["t"][1], "indices": row["t"][2]}}
            for relation, instances in json.loads(path.read_text()).items() for row in instances
        ]
        datasets.Dataset.from_list(rows).to_parquet(tmp_path / "hub" / "data" / f"{split}-00000-of-00001.parquet")
    common = ["--model_name_or_path", str(checkpoint), "--splits", str(data_dir / "zeroshot" / "fewrel_rel2id_5_40.json"),
              "--device", "cpu", "--no_progress"]
    from_files = evaluate_zeroshot.main([*common, "--fewrel_files", *map(str, small_fewrel)])
    from_hub = evaluate_zeroshot.main([*common, "--dataset_name", str(tmp_path / "hub")])
    assert from_hub["splits"] == from_files["splits"] and from_hub["splits"][0]["num_sentences"] == 15


# --------------------------------------------------------------------------- inference-time levers (benchmarks/)


def test_direction_aware_and_transductive_scores_by_hand():
    levers = importlib.import_module("benchmarks.zeroshot_levers")
    scores = torch.tensor([[0.9, 0.8], [0.2, 0.6]])
    swapped = torch.tensor([[0.5, 1.0], [0.4, 0.6]])  # sentence 0 read backwards fits label 1 better than forwards
    # only a label matching the backwards reading *better* loses: 0.8 - 2 * 0.2, 0.2 - 2 * 0.2; the rest unchanged
    assert torch.allclose(levers.direction_aware(scores, swapped, 2.0), torch.tensor([[0.9, 0.4], [-0.2, 0.6]]))
    assert torch.allclose(levers.transductive(scores), torch.tensor([[0.35, 0.1], [-0.35, -0.1]]))
    # centring: (0.6, 0.8) - (0.6, 0) = (0, 0.8) -> (0, 1); (0.8, 0.6) - (0.6, 0) = (0.2, 0.6) -> (0.316, 0.949)
    labels = torch.tensor([[0.6, 0.8], [0.8, 0.6]])
    expected = torch.tensor([[0.0, 1.0], [0.2, 0.6]]) / torch.tensor([[1.0], [0.4 ** 0.5]])
    assert torch.allclose(levers.centred(labels, torch.tensor([0.6, 0.0])), expected, atol=1e-6)
    # the label nearest a sentence changes once the shared direction is removed: 0.993 > 0.920, then 0.866 < 0.980
    sentence = torch.tensor([[0.5, 0.866]])
    both = levers.lever_scores(sentence, sentence, dict.fromkeys(levers.LABEL_FORMS, labels),
                               {"label": torch.tensor([0.6, 0.0]), "sentence": torch.zeros(2), "sentences": labels})
    assert both["protocol: name [SEP] description"].argmax().item() == 0
    assert both["centred labels (corpus label mean)"].argmax().item() == 1
    assert torch.allclose(both["centred labels (corpus label mean)"], sentence @ expected.T)
    assert torch.allclose(both["centred labels and sentences (corpus means)"], sentence @ expected.T, atol=1e-4)  # 0 mean
    # the oracle reference: relation 0's prototype is (1, 0) + (0.6, 0.8) = (1.6, 0.8) -> (0.894, 0.447); relation 1's (0, 1)
    sentences = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    prototypes = levers.oracle_prototypes(sentences, [0, 0, 1], 2)
    assert torch.allclose(prototypes, torch.tensor([[2 / 5 ** 0.5, 1 / 5 ** 0.5], [0.0, 1.0]]), atol=1e-6)
    bound = levers.lever_scores(sentences, sentences, dict.fromkeys(levers.LABEL_FORMS, labels), gold=[0, 0, 1])
    assert torch.allclose(bound[levers.ORACLE], sentences @ prototypes.T)
    assert levers.ORACLE not in both  # only with the gold relations


def test_hubness_correction_by_hand():
    """CSLS: a label's hubness is its mean cosine to its k nearest corpus sentences; subtracting it can hand a sentence
    from a label that is near everything (a hub) to the one that describes it."""
    levers = importlib.import_module("benchmarks.zeroshot_levers")
    labels = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    corpus = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]])
    # label 0: cosines 1, 0.8, 0 -> two nearest 1 and 0.8, mean 0.9; label 1: 0.6, 0.96, 0.8 -> 0.96 and 0.8, mean 0.88
    assert torch.allclose(levers.hubness(labels, corpus, k=2), torch.tensor([0.9, 0.88]))
    assert torch.allclose(levers.hubness(labels, corpus, k=10), torch.tensor([0.6, 2.36 / 3]))  # k capped at the corpus
    # label 1 is the hub (0.787 > 0.6 over the whole corpus: k = HUBNESS_NEIGHBOURS >= 3): 0.9 > 0.8 becomes 0.113 < 0.2
    scores = torch.tensor([[0.8, 0.9]])
    corrected = levers.hubness_corrected(scores, labels, corpus, 1.0)
    assert torch.allclose(corrected, torch.tensor([[0.8 - 0.6, 0.9 - 2.36 / 3]]))
    assert scores.argmax().item() == 1 and corrected.argmax().item() == 0
    sentence = torch.tensor([[0.8, 0.6]])
    rows = levers.lever_scores(sentence, sentence, dict.fromkeys(levers.LABEL_FORMS, labels),
                               {"label": torch.zeros(2), "sentence": torch.zeros(2), "sentences": corpus},
                               interpolated={0.5: labels.flip(0)})
    assert torch.allclose(rows[levers.hubness_lever(0.5)], sentence @ labels.T - 0.5 * torch.tensor([0.6, 2.36 / 3]))
    assert torch.allclose(rows[levers.hubness_lever(1.0, 0.5)], sentence @ labels.flip(0).T - torch.tensor([2.36 / 3, 0.6]))
    assert len([lever for lever in rows if lever.startswith("hubness")]) == 2 * len(levers.HUBNESS_WEIGHTS)


def test_levers_combine_merges_checkpoints_scored_on_disjoint_splits(tmp_path):
    levers = importlib.import_module("benchmarks.zeroshot_levers")
    P = "protocol: name [SEP] description"
    a = {"model": "a", "splits": ["m5/40", "m10/40"], "per_split": {P: {"m5/40": 80.0, "m10/40": 70.0}}}
    b = {"model": "b", "splits": ["m5/41", "m10/41"], "per_split": {P: {"m5/41": 91.0, "m10/41": 75.5}}}
    files = []
    for result in (a, b):
        files.append(tmp_path / f"{result['model']}.json")
        files[-1].write_text(json.dumps(result))
    out = tmp_path / "both.json"
    both = levers.main(["--combine", *map(str, files), "--output_json", str(out)])
    assert both["mean_f1"] == {P: {"5": 85.5, "10": 72.75}} and both["model"] == ["a", "b"]
    assert json.loads(out.read_text())["per_split"][P] == {"m5/40": 80.0, "m10/40": 70.0, "m5/41": 91.0, "m10/41": 75.5}
    with pytest.raises(ValueError, match=r"\['m5/40'\] scored by more than one checkpoint"):
        levers.combine([a, {**b, "per_split": {P: {"m5/40": 1.0}}}])
    (tmp_path / "other.json").write_text(json.dumps({"splits": []}))
    with pytest.raises(ValueError, match=r"other\.json: field 'model' missing"):
        levers.main(["--combine", str(files[0]), str(tmp_path / "other.json")])


def test_levers_protocol_row_is_the_evaluators_f1(tiny_model, processor, small_fewrel, data_dir, tmp_path):
    levers = importlib.import_module("benchmarks.zeroshot_levers")
    checkpoint = tmp_path / "ckpt"
    tiny_model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    save_pretraining_relations(checkpoint, ["P31", "P17"])
    out = tmp_path / "levers.json"
    argv = ["--model_name_or_path", str(checkpoint), "--data_dir", str(data_dir), "--splits",
            "zeroshot/fewrel_rel2id_5_ori.json", "zeroshot/fewrel_rel2id_10_40.json",
            "--fewrel_files", *map(str, small_fewrel), "--batch_size", "8", "--output_json", str(out)]
    result = levers.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    splits = [load_zeroshot_split(data_dir / "zeroshot" / f) for f in ("fewrel_rel2id_5_ori.json", "fewrel_rel2id_10_40.json")]
    table = load_label_table(data_dir / "fewrel" / "pid2name.json")
    evaluator = ZeroShotEvaluator(tiny_model.eval(), processor, [load_fewrel_json(small_fewrel)], table, batch_size=4)
    protocol = result["per_split"]["protocol: name [SEP] description"]
    for split in splits:
        assert protocol[split.key] == pytest.approx(100 * evaluator.evaluate_split(split).f1, abs=0.006)
    assert result["mean_f1"]["protocol: name [SEP] description"] == {"5": protocol["m5/ori"], "10": protocol["m10/40"]}
    # label forms, their ensemble, direction weights, the centred pair, the hubness weights, transductive, oracle; the
    # corpus vectors come from the embedded corpus' sentences and labels of the checkpoint's own relations (P31, P17),
    # 20 sentences each
    assert len(result["per_split"]) == 4 + 1 + 2 + 2 + 2 + 1 + 1  # ... and the oracle reference
    assert result["reference"]["labels"] == 2 and result["reference"]["sentences"] == 40

    save_pretraining_relations(checkpoint, ["P31", "P641"])  # P641 (sport): a test relation of 5_ori
    with pytest.raises(ValueError, match=r"P641 \(sport\) of .*fewrel_rel2id_5_ori\.json"):
        levers.main(argv)


def test_curve_scores_every_complete_checkpoint_by_step(tiny_model, processor, small_fewrel, data_dir, tmp_path):
    """benchmarks/zeroshot_curve.py: one point per saved step (a final model equal to the last checkpoint's step is
    not scored twice, a checkpoint killed before its trainer state is skipped), each point the evaluator's F1 for
    that checkpoint's own weights, and a checkpoint that saw a test relation refused."""
    curve = importlib.import_module("benchmarks.zeroshot_curve")
    run = tmp_path / "run"
    other = SaconDualEncoderModel(tiny_model.config)  # different weights: the two points must differ in what they score
    models = {"checkpoint-20": tiny_model, "checkpoint-10": other, ".": tiny_model, "checkpoint-30": other}
    for name, model in models.items():
        model.save_pretrained(run / name)
        processor.save_pretrained(run / name)
        save_pretraining_relations(run / name, ["P31", "P17"])
        if name != "checkpoint-30":  # killed while saving: no trainer state
            step = 20 if name == "." else int(name.split("-")[1])
            (run / name / "trainer_state.json").write_text(json.dumps({"global_step": step, "train_batch_size": 4}))
    argv = ["--run_dir", str(run), "--data_dir", str(data_dir), "--splits", "zeroshot/fewrel_rel2id_5_ori.json",
            "--fewrel_files", *map(str, small_fewrel), "--batch_size", "8", "--output_json", str(tmp_path / "c.json")]
    result = curve.main(argv)
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(result))
    assert [(p["checkpoint"], p["step"], p["sentences"]) for p in result["points"]] == [
        ("checkpoint-10", 10, 40), ("checkpoint-20", 20, 80)]
    split = load_zeroshot_split(data_dir / "zeroshot" / "fewrel_rel2id_5_ori.json")
    table = load_label_table(data_dir / "fewrel" / "pid2name.json")
    for point, model in zip(result["points"], (other, tiny_model)):
        evaluator = ZeroShotEvaluator(model.eval(), processor, [load_fewrel_json(small_fewrel)], table, batch_size=4)
        assert point["per_split"]["m5/ori"] == pytest.approx(100 * evaluator.evaluate_split(split).f1, abs=0.006)
        assert point["mean_f1"] == {"5": point["per_split"]["m5/ori"]}

    save_pretraining_relations(run / "checkpoint-10", ["P31", "P641"])  # P641 (sport): a test relation of 5_ori
    with pytest.raises(ValueError, match=r"P641 \(sport\) of .*fewrel_rel2id_5_ori\.json"):
        curve.main(argv)
    with pytest.raises(FileNotFoundError, match="no checkpoint-N directory"):
        curve.main([*argv[:1], str(tmp_path / "empty"), *argv[2:]])
    (run / "checkpoint-10" / "trainer_state.json").write_text('{"global_step": 10,')  # cut off mid-write
    with pytest.raises(ValueError, match=r"checkpoint-10/trainer_state\.json: not a JSON Trainer state"):
        curve.main(argv)
    (run / "checkpoint-10" / "trainer_state.json").write_text('{"step": 10}')
    with pytest.raises(ValueError, match=r"checkpoint-10/trainer_state\.json: field 'global_step' missing"):
        curve.main(argv)


def test_levers_interpolation_rows_are_the_evaluators_f1_of_the_interpolated_model(tiny_model, processor, small_fewrel,
                                                                                    data_dir, tmp_path):
    """--label_interpolation: weight 0.5 scores as the evaluator does on the checkpoint interpolated by the package's
    rule (examples/interpolate_label_encoder.py); weight 1, scored after it, as the protocol row (each weight starts
    from the checkpoint's own weights)."""
    import copy

    from modeling_sacon.training.interpolation import interpolate_label_encoder, load_reference_weights

    from conftest import save_tiny_backbone

    levers = importlib.import_module("benchmarks.zeroshot_levers")
    checkpoint, backbone = tmp_path / "ckpt", save_tiny_backbone(tmp_path / "backbone")
    tiny_model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    save_pretraining_relations(checkpoint, ["P31", "P17"])
    result = levers.main(["--model_name_or_path", str(checkpoint), "--data_dir", str(data_dir), "--splits",
                          "zeroshot/fewrel_rel2id_5_ori.json", "--fewrel_files", *map(str, small_fewrel), "--batch_size", "8",
                          "--reference_per_relation", "0", "--label_interpolation", "0.5", "1", "--backbone", backbone])
    rows = result["per_split"]
    assert rows[levers.interpolation_lever(1.0)] == rows["protocol: name [SEP] description"]
    wise = copy.deepcopy(tiny_model).eval()
    interpolate_label_encoder(wise, load_reference_weights(backbone), 0.5)
    split = load_zeroshot_split(data_dir / "zeroshot" / "fewrel_rel2id_5_ori.json")
    table = load_label_table(data_dir / "fewrel" / "pid2name.json")
    evaluator = ZeroShotEvaluator(wise, processor, [load_fewrel_json(small_fewrel)], table, batch_size=4)
    assert rows[levers.interpolation_lever(0.5)]["m5/ori"] == pytest.approx(100 * evaluator.evaluate_split(split).f1, abs=0.006)
    assert rows[levers.interpolation_lever(0.5)] != rows["protocol: name [SEP] description"]  # the row can tell them apart

    with pytest.raises(SystemExit, match=r"--label_interpolation needs the label encoder's backbone: give --backbone"):
        levers.main(["--model_name_or_path", str(checkpoint), "--data_dir", str(data_dir), "--splits",
                     "zeroshot/fewrel_rel2id_5_ori.json", "--fewrel_files", *map(str, small_fewrel),
                     "--reference_per_relation", "0", "--label_interpolation", "0.5"])
