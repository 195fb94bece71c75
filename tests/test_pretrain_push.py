"""examples/pretrain.py --push_to_hub against the loopback fake Hub: every checkpoint and the final model land in
`org/sacon-base` with code, tokenizer and model card, and a fresh process loads exactly the pushed weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load as load_safetensors

from conftest import save_tiny_backbone
from hub_server import hub_env, run_client
from test_collator import synthetic_rows

REPO = Path(__file__).resolve().parent.parent
REPO_ID = "org/sacon-base"
CODE_FILES = ("configuration_sacon.py", "modeling_sacon.py", "losses.py")


def write_fewrel(rows: list[dict], path: Path) -> str:
    """Canonical rows -> a FewRel JSON file ({relation: [{tokens, h, t}]})."""
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row["relation"], []).append({
            "tokens": row["tokens"],
            "h": [row["head"]["name"], "", [row["head"]["indices"]]],
            "t": [row["tail"]["name"], "", [row["tail"]["indices"]]],
        })
    path.write_text(json.dumps(grouped))
    return str(path)


@pytest.fixture
def inputs(tmp_path):
    """A tiny random BERT saved as the "backbone" (with the packaged tokenizer), a corpus and an evaluation split."""
    save_tiny_backbone(tmp_path / "backbone")
    train, table = synthetic_rows(num_relations=6, per_relation=6, seed=1)
    evaluation, eval_table = synthetic_rows(num_relations=6, per_relation=3, seed=2)
    evaluation = [{**row, "relation": "E" + row["relation"][1:]} for row in evaluation]
    (tmp_path / "labels.json").write_text(json.dumps(table))
    (tmp_path / "eval_labels.json").write_text(json.dumps({"E" + k[1:]: v for k, v in eval_table.items()}))
    return {
        "backbone": str(tmp_path / "backbone"),
        "train": write_fewrel(train, tmp_path / "train.json"),
        "eval": write_fewrel(evaluation, tmp_path / "eval.json"),
    }


LOAD = """
import sys, torch
sys.modules["modeling_sacon"] = None  # 1. nothing but transformers: the code comes from the repository
from transformers import AutoModel
remote = AutoModel.from_pretrained("org/sacon-base", trust_remote_code=True)
assert type(remote).__name__ == "SaconDualEncoderModel" and not type(remote).__module__.startswith("modeling_sacon.")
del sys.modules["modeling_sacon"]
import modeling_sacon  # 2. with the package installed
model = AutoModel.from_pretrained("org/sacon-base")
assert type(model).__module__ == "modeling_sacon.modeling_sacon", type(model).__module__
from modeling_sacon import SaconProcessor
processor = SaconProcessor.from_pretrained("org/sacon-base")
assert processor.max_length == 32 and len(processor.tokenizer) == model.get_input_embeddings().num_embeddings
torch.save({"package": model.state_dict(), "remote": remote.state_dict()}, OUT_PATH)
print("LOADED")
"""


def test_pretrain_pushes_every_checkpoint_and_a_loadable_final_model(fake_hub, inputs, tmp_path):
    env = hub_env(fake_hub.endpoint, tmp_path)
    fake_hub.preupload_delay = 2.0  # uploads slower than a training step: each push is still pending at the next save
    command = [
        sys.executable, str(REPO / "examples" / "pretrain.py"),
        "--sentence_model_name_or_path", inputs["backbone"],
        "--train_files", inputs["train"], "--label_files", str(tmp_path / "labels.json"),
        "--eval_fewrel", inputs["eval"], "--eval_label_files", str(tmp_path / "eval_labels.json"),
        "--fewrel_eval_episodes", "10", "--fewrel_eval_pool_per_relation", "0",
        "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "1",
        "--logging_steps", "1", "--output_dir", str(tmp_path / "out"), "--use_cpu", "--dataloader_pin_memory", "false",
        "--push_to_hub", "--hub_model_id", REPO_ID,
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert not fake_hub.unknown_requests and not fake_hub.errors, (fake_hub.unknown_requests, fake_hub.errors)

    # every saved checkpoint was pushed, each a loadable snapshot (code + card), then the final model
    commits = fake_hub.commits(REPO_ID)
    titles = [commit.title for commit in commits]
    assert titles[1:] == ["Training in progress, step 1", "Training in progress, step 2", "End of training"], titles
    first_push = fake_hub.files(REPO_ID, commits[1].oid)
    assert {"config.json", "model.safetensors", "README.md", *CODE_FILES} <= set(first_push)
    for step, commit in ((1, commits[1]), (2, commits[2])):
        # each step's commit holds that step's weights, byte for byte
        saved = (tmp_path / "out" / f"checkpoint-{step}" / "model.safetensors").read_bytes()
        assert fake_hub.files(REPO_ID, commit.oid)["model.safetensors"] == saved, step

    files = fake_hub.files(REPO_ID)
    expected = {"config.json", "model.safetensors", *CODE_FILES, "tokenizer.json", "tokenizer_config.json",
                "processor_config.json", "processing_sacon.py", "pipeline_sacon.py", "README.md"}
    assert expected <= set(files), sorted(files)
    assert not any(path.startswith("checkpoint-") for path in files)
    config = json.loads(files["config.json"])
    assert config["auto_map"] == {"AutoConfig": "configuration_sacon.SaconConfig", "AutoModel": "modeling_sacon.SaconDualEncoderModel"}
    assert "max_length" not in config and json.loads(files["processor_config.json"])["max_length"] == 32

    card = files["README.md"].decode()
    assert card.startswith("---\n")
    metadata = yaml.safe_load(card.split("---\n", 2)[1])
    assert metadata["library_name"] == "transformers" and {"sacon", "relation-extraction", "few-shot"} <= set(metadata["tags"])
    (result_entry,) = metadata["model-index"][0]["results"]
    assert metadata["model-index"][0]["name"] == "sacon-base"
    assert result_entry["dataset"]["type"] == "few_rel" and result_entry["metrics"][0]["type"] == "accuracy"
    logged = json.loads((tmp_path / "out" / "eval_results.json").read_text())  # what the run itself measured
    assert result_entry["metrics"][0]["value"] == pytest.approx(100 * logged["eval_fewrel_5_1_accuracy"], abs=0.05)
    assert "# sacon-base" in card and "AutoModel.from_pretrained(\"org/sacon-base\", trust_remote_code=True)" in card

    # a fresh process loads exactly the pushed weights, with and without the package
    loaded = run_client(LOAD.replace("OUT_PATH", repr(str(tmp_path / "loaded.pt"))), env, timeout=180)
    assert loaded.returncode == 0 and "LOADED" in loaded.stdout, loaded.stderr[-5000:]
    pushed = load_safetensors(files["model.safetensors"])
    states = torch.load(tmp_path / "loaded.pt")
    for kind in ("package", "remote"):
        for name, tensor in pushed.items():
            assert torch.equal(states[kind][name], tensor), (kind, name)
        # the tied MLM decoder (not stored) is the word embedding matrix
        assert torch.equal(
            states[kind]["sentence_mlm_head.decoder.weight"], pushed["sentence_encoder.embeddings.word_embeddings.weight"]
        )


def test_model_card_renders_offline_valid_metadata(tmp_path):
    from huggingface_hub import EvalResult, ModelCard

    from modeling_sacon.training.model_card import render_model_card, validate_card_metadata

    card = render_model_card(
        model_name="sacon-base", model_id=REPO_ID, base_model="sentence-transformers/all-MiniLM-L6-v2",
        datasets=["thunlp/few_rel"], training={"optimizer steps": 10},
        eval_results=[
            {"setting": "5-1", "accuracy": 0.8123, "ci95": 0.012, "episodes": 300},
            EvalResult(task_type="text-classification", dataset_type="few_rel", dataset_name="FewRel 1.0 validation (val_wiki)",
                       dataset_split="val_wiki", metric_type="accuracy", metric_value=90.5, metric_name="5-5 accuracy (%)"),
        ],
    )
    metadata = validate_card_metadata(card)
    assert metadata["base_model"] == "sentence-transformers/all-MiniLM-L6-v2" and metadata["license"] == "apache-2.0"
    metrics = metadata["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [81.23, 90.5]
    assert "| 5-1 | val_wiki | prototype | 81.23 | ± 1.20 | 300 |" in str(card)
    card.save(tmp_path / "README.md")
    assert ModelCard.load(tmp_path / "README.md").data.eval_results[0].metric_value == 81.23
    assert "model-index" not in validate_card_metadata(render_model_card(model_name="plain"))
    broken = str(card).replace("type: accuracy", "typo: accuracy", 1)
    with pytest.raises(ValueError):
        validate_card_metadata(broken)
    with pytest.raises(ValueError, match="fraction"):
        render_model_card(eval_results=[{"setting": "5-1", "accuracy": 81.2}])
