"""Data from the Hub, end to end against the loopback fake Hub: FewRel in the `thunlp/few_rel` layout (its Parquet
conversion, revision `refs/convert/parquet`) scores as the same rows from FewRel JSON; the pre-training corpus pushed
by `examples/push_corpus.py` loads back row for row and trains; a corpus with an evaluation relation is refused."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from modeling_sacon.commands import evaluate
from modeling_sacon.data import load_hub_few_rel, load_pretraining_corpus
from modeling_sacon.data.hub import CORPUS_DATA_FILE, CORPUS_LABELS_FILE, PARQUET_EXPORT_REVISION, few_rel_layout
from modeling_sacon.training.model_card import render_model_card

from conftest import save_tiny_backbone
from hub_server import hub_env
from test_collator import synthetic_rows
from test_pretrain_push import write_fewrel

REPO = Path(__file__).resolve().parent.parent
FEW_REL = "thunlp/few_rel"
CORPUS = "org/sacon-corpus"


def few_rel_parquet(rows: list[dict], table: dict) -> bytes:
    """Canonical rows -> Parquet in the thunlp/few_rel layout, written here field by field (not by the package)."""
    import datasets

    records = [
        {"relation": row["relation"], "tokens": row["tokens"], "names": list(table[row["relation"]]),
         "head": {"text": row["head"]["name"], "type": row["head"]["id"], "indices": [row["head"]["indices"]]},
         "tail": {"text": row["tail"]["name"], "type": row["tail"]["id"], "indices": [row["tail"]["indices"]]}}
        for row in rows
    ]
    buffer = io.BytesIO()
    datasets.Dataset.from_list(records).to_parquet(buffer)
    return buffer.getvalue()


def seed_few_rel(hub, rows: list[dict], table: dict, split: str = "val_wiki") -> None:
    """`thunlp/few_rel` as the Hub holds it: a loading script on main (which `datasets` refuses to run), the Parquet
    files alone on refs/convert/parquet."""
    hub.create_repo(FEW_REL, "dataset", exist_ok=True)
    hub.create_branch(FEW_REL, PARQUET_EXPORT_REVISION, repo_type="dataset")
    hub.commit(FEW_REL, {"few_rel.py": b"# loading script\n"}, repo_type="dataset")
    hub.commit(FEW_REL, {f"default/{split}/0000.parquet": few_rel_parquet(rows, table)},
               revision=PARQUET_EXPORT_REVISION, repo_type="dataset")


def run_script(script: str, argv: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "examples" / script), *argv], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_clean(hub) -> None:
    assert not hub.unknown_requests and not hub.errors, (hub.unknown_requests, hub.errors)


@pytest.fixture
def evaluation(tmp_path):
    """6 relations x 4 sentences as FewRel JSON + label table, and the same rows and texts."""
    rows, table = synthetic_rows(num_relations=6, per_relation=4, seed=3)
    rows = [{**row, "head": {**row["head"], "id": f"Q{i}"}} for i, row in enumerate(rows)]
    (tmp_path / "eval_labels.json").write_text(json.dumps(table))
    return rows, table, write_fewrel(rows, tmp_path / "eval.json"), str(tmp_path / "eval_labels.json")


def test_fewrel_from_the_hub_layout_scores_as_the_same_rows_from_json(fake_hub, tmp_path, tiny_model, processor, evaluation):
    rows, table, eval_file, label_file = evaluation
    seed_few_rel(fake_hub, rows, table)
    checkpoint = tmp_path / "ckpt"
    tiny_model.save_pretrained(checkpoint)
    processor.save_pretrained(checkpoint)
    render_model_card(model_name="tiny-sacon").save(checkpoint / "README.md")
    common = ["--model_name_or_path", str(checkpoint), "--settings", "3-1,zs-3", "--episodes", "30", "--no_progress",
              "--device", "cpu"]
    from_json = evaluate.main([*common, "--data_file", eval_file, "--label_file", label_file, "--pubmed_file", ""])
    out = tmp_path / "hub.json"
    result = run_script("evaluate_fewrel.py", [
        *common, "--dataset_name", FEW_REL, "--dataset_revision", PARQUET_EXPORT_REVISION, "--dataset_split", "val_wiki",
        "--pubmed_split", "", "--output_json", str(out),
    ], hub_env(fake_hub.endpoint, tmp_path), tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert_clean(fake_hub)
    from_hub = json.loads(out.read_text())
    assert from_hub == json.loads(json.dumps(from_json)) and set(from_hub) == {"3-1", "zs-3"}
    assert 0.0 < from_hub["3-1"]["accuracy"] < 1.0  # episodes were really scored, not a degenerate constant


@pytest.fixture
def corpus_data_dir(tmp_path):
    """A data directory in the embedded corpus' layout: 6 dense relations, 2 long-tail ones, their labels."""
    dense, table = synthetic_rows(num_relations=6, per_relation=8, seed=1)
    tail, tail_table = synthetic_rows(num_relations=2, per_relation=2, seed=2)
    tail = [{**row, "relation": "T" + row["relation"][1:]} for row in tail]
    table.update({"T" + k[1:]: v for k, v in tail_table.items()})
    root = tmp_path / "data"
    (root / "pretrain_v2").mkdir(parents=True)
    write_fewrel(dense, root / "pretrain_v2" / "sentences.json")
    write_fewrel(tail, root / "pretrain_v2" / "longtail.json")
    (root / "pretrain_v2" / "labels.json").write_text(json.dumps(table))
    return root


@pytest.fixture
def backbone(tmp_path):
    return save_tiny_backbone(tmp_path / "backbone")


PRETRAIN_TINY = ["--max_seq_length", "32", "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_strategy",
                 "no", "--logging_steps", "1", "--use_cpu", "--dataloader_pin_memory", "false", "--report_to", "none"]


def test_corpus_pushed_to_the_hub_loads_back_and_trains(fake_hub, tmp_path, corpus_data_dir, backbone, evaluation):
    env = hub_env(fake_hub.endpoint, tmp_path)
    # a failing Hub: the repository's creation answers 503 once; the commit is dropped before it lands, then lands
    # with its answer lost (the retry finds every file there and commits nothing more)
    fake_hub.inject("POST", r"^/api/repos/create$", 503)
    fake_hub.inject("POST", r"/commit/main$", "drop", "drop_after")
    pushed = run_script("push_corpus.py", ["--repo_id", CORPUS, "--private", "--data_dir", str(corpus_data_dir),
                                           "--output_dir", str(tmp_path / "repo"), "--push_backoff", "0.01"], env, tmp_path)
    assert pushed.returncode == 0, pushed.stdout[-3000:] + pushed.stderr[-5000:]
    assert [fault for _, _, fault in fake_hub.injected] == [503, "drop", "drop_after"]
    assert "creating the Hub dataset org/sacon-corpus failed (attempt 1 of 6)" in pushed.stderr
    assert f"push of the corpus to {CORPUS} failed (attempt 2 of 6)" in pushed.stderr
    assert len(fake_hub.commits(CORPUS, repo_type="dataset")) == 2  # the repository's first commit, then the corpus: whole
    files = fake_hub.files(CORPUS, repo_type="dataset")
    assert {CORPUS_DATA_FILE, CORPUS_LABELS_FILE, "README.md"} <= set(files)
    assert all(files[name] == (tmp_path / "repo" / name).read_bytes() for name in (CORPUS_DATA_FILE, "README.md"))
    card = files["README.md"].decode()
    meta = yaml.safe_load(card.split("---\n")[1])
    assert meta["license"] == "cc-by-sa-4.0" and meta["configs"][0]["data_files"][0]["split"] == "train"
    assert "52 sentences of 8 Wikidata relations" in card and "$" not in card

    # the repository folder reads back exactly as the embedded corpus it came from
    expected, expected_labels = load_pretraining_corpus(corpus_data_dir)
    loaded, labels = load_hub_few_rel(str(tmp_path / "repo"), "train")
    assert loaded[:] == expected[:] and labels == expected_labels
    assert pq.read_table(io.BytesIO(files[CORPUS_DATA_FILE])).equals(few_rel_layout(expected, expected_labels))

    # pre-training on it from the Hub, scored in training on FewRel from the Hub
    rows, table, _, _ = evaluation
    seed_few_rel(fake_hub, [{**row, "relation": "E" + row["relation"][1:]} for row in rows],
                 {"E" + k[1:]: v for k, v in table.items()})
    result = run_script("pretrain.py", [
        "--dataset_name", CORPUS, "--sentence_model_name_or_path", backbone, "--eval_dataset_name", FEW_REL,
        "--eval_dataset_revision", PARQUET_EXPORT_REVISION, "--fewrel_eval_settings", "3-1",
        "--fewrel_eval_episodes", "10", "--fewrel_eval_pool_per_relation", "0", "--output_dir", str(tmp_path / "out"),
        *PRETRAIN_TINY,
    ], env, tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert_clean(fake_hub)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    evaluated = {key: value for entry in state["log_history"] for key, value in entry.items() if "fewrel_3_1" in key}
    assert evaluated and all(0.0 <= value <= 1.0 for key, value in evaluated.items() if key.endswith("_accuracy"))
    seen = json.loads((tmp_path / "out" / "pretraining_relations.json").read_text())
    assert sorted(seen["relations"]) == sorted(expected_labels)


def test_a_hub_corpus_with_an_evaluation_relation_is_refused(fake_hub, tmp_path, backbone, evaluation):
    rows, table, _, _ = evaluation
    leaky = [{**row, "relation": "P177" if row["relation"] == "R0" else row["relation"]} for row in rows]
    leaky_table = {("P177" if k == "R0" else k): v for k, v in table.items()}
    fake_hub.commit(CORPUS, {CORPUS_DATA_FILE: few_rel_parquet(leaky, leaky_table)}, repo_type="dataset")
    eval_file = write_fewrel([row for row in leaky if row["relation"] == "P177"], tmp_path / "val.json")
    (tmp_path / "labels.json").write_text(json.dumps(leaky_table))
    result = run_script("pretrain.py", [
        "--dataset_name", CORPUS, "--sentence_model_name_or_path", backbone, "--eval_fewrel", eval_file,
        "--eval_label_files", str(tmp_path / "labels.json"), "--output_dir", str(tmp_path / "out"), *PRETRAIN_TINY,
    ], hub_env(fake_hub.endpoint, tmp_path), tmp_path)
    assert result.returncode != 0
    assert "evaluation relation" in result.stderr and "P177" in result.stderr, result.stderr[-3000:]
    assert not (tmp_path / "out" / "trainer_state.json").exists()
