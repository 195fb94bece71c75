"""examples/evaluate_fewrel.py end to end on a tiny checkpoint: JSON shape, model card update, bad input."""

import json

import pytest
import yaml

from modeling_sacon.commands import evaluate as evaluate_fewrel
from modeling_sacon.training.model_card import EVAL_SECTION_START, render_model_card


@pytest.fixture
def checkpoint(tmp_path, tiny_model, processor):
    path = tmp_path / "ckpt"
    tiny_model.save_pretrained(path)
    processor.save_pretrained(path)
    render_model_card(model_name="tiny-sacon").save(path / "README.md")
    return path


@pytest.fixture
def small_files(tmp_path, data_dir):
    """The first 10 instances of each relation of val_wiki and val_pubmed: same code path, seconds not minutes."""
    paths = []
    for name in ("val_wiki", "val_pubmed"):
        data = json.loads((data_dir / "fewrel" / f"{name}.json").read_text())
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({relation: rows[:10] for relation, rows in data.items()}))
        paths.append(str(path))
    return paths


def run(checkpoint, tmp_path, small_files, *extra):
    out = tmp_path / "results.json"
    argv = ["--model_name_or_path", str(checkpoint), "--episodes", "20", "--settings", "5-1,zs-5",
            "--data_file", small_files[0], "--pubmed_file", small_files[1],
            "--pubmed_settings", "5-1", "--no_progress", "--output_json", str(out), *extra]
    return evaluate_fewrel.main(argv), json.loads(out.read_text())


def test_json_and_model_card(checkpoint, tmp_path, small_files, tiny_model, processor, data_dir):
    results, written = run(checkpoint, tmp_path, small_files, "--update_card", str(checkpoint))
    assert set(written) == {"5-1", "zs-5", "pubmed/5-1"} and written == json.loads(json.dumps(results))
    # the oracle: the same episodes scored by the evaluator on the in-memory model that was saved
    from modeling_sacon.data import load_fewrel_json, load_label_table
    from modeling_sacon.fewshot.evaluation import FewShotEvaluator

    evaluator = FewShotEvaluator(tiny_model, processor, load_fewrel_json(small_files[0]),
                                 load_label_table(data_dir / "fewrel" / "pid2name.json"), show_progress=False)
    expected = evaluator.evaluate(["5-1", "zs-5"], 20, 0, "prototype", "cosine")
    for setting in ("5-1", "zs-5"):
        assert written[setting]["accuracy"] == pytest.approx(expected[setting]["accuracy"], abs=1e-9)
    for value in written.values():
        assert value["episodes"] == 20 and value["ci95"] > 0
    run(checkpoint, tmp_path, small_files, "--update_card", str(checkpoint))  # a second run replaces, not appends
    text = (checkpoint / "README.md").read_text()
    assert text.count(EVAL_SECTION_START) == 1
    meta = yaml.safe_load(text.split("---\n")[1])
    metrics = {
        (r["dataset"]["split"], m["name"]): m["value"]
        for r in meta["model-index"][0]["results"] for m in r["metrics"]
    }
    assert metrics[("val_wiki", "5-1 accuracy (%)")] == round(100 * written["5-1"]["accuracy"], 2)
    assert metrics[("val_pubmed", "5-1 accuracy (%)")] == round(100 * written["pubmed/5-1"]["accuracy"], 2)
    assert metrics[("val_wiki", "zs-5 accuracy (%), zero_shot")] == round(100 * written["zs-5"]["accuracy"], 2)


def test_bad_settings_and_labels_are_named(checkpoint, tmp_path, data_dir, small_files):
    with pytest.raises(ValueError, match="5-x"):
        evaluate_fewrel.main(["--model_name_or_path", str(checkpoint), "--settings", "5-1,5-x"])
    table = json.loads((data_dir / "fewrel" / "pid2name.json").read_text())
    del table["P177"]  # a val_wiki relation
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps(table))
    with pytest.raises(KeyError, match="P177.*val_wiki.json"):
        run(checkpoint, tmp_path, small_files, "--label_file", str(labels))
    with pytest.raises(ValueError, match="--encoder 'bm25' is unknown"):
        evaluate_fewrel.main(["--encoder", "bm25"])
