"""Loading `org/sacon-base` from a Hugging Face cache snapshot, offline: model, processor and pipeline, with the package
and with remote code only."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoTokenizer

from modeling_sacon import RelationClassificationPipeline

from test_inference import QUERIES, RELATIONS, SUPPORT
from test_modeling import TOY, TOY_LABELS, make_batch

SHA = "0123456789abcdef0123456789abcdef01234567"

LOAD = """
import sys, torch
{block}
from transformers import AutoModel, AutoTokenizer
model = AutoModel.from_pretrained("org/sacon-base"{remote}).eval()
assert type(model).__name__ == "SaconDualEncoderModel", type(model)
assert {package_check}, type(model).__module__
tokenizer = AutoTokenizer.from_pretrained("org/sacon-base")
saved = torch.load(sys.argv[1])
with torch.no_grad():
    out = model(**saved["batch"])
for key, expected in saved["outputs"].items():
    assert torch.allclose(getattr(out, key), expected, atol=1e-6), key
assert len(tokenizer) == saved["vocab"] and tokenizer.convert_tokens_to_ids("[E1]") == saved["e1"]
print("LOADED", type(model).__module__)
"""

# Makes `import modeling_sacon` fail, as for a user who only has the Hub repository.
BLOCK_PACKAGE = "sys.modules['modeling_sacon'] = None"


@pytest.fixture
def hub_cache(tmp_path, processor, tiny_model):
    """A cache laid out as huggingface_hub writes it: models--org--sacon-base/{refs/main, snapshots/<sha>/}."""
    repo = tmp_path / "hub" / "models--org--sacon-base"
    snapshot = repo / "snapshots" / SHA
    tiny_model.save_pretrained(snapshot)
    processor.save_pretrained(snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SHA)
    batch = make_batch(processor, TOY, ["P1", "P2", "P1"], TOY_LABELS)
    with torch.no_grad():
        out = tiny_model(**batch)
    keys = ("loss", "logits_per_sentence", "sentence_embeds", "label_embeds", "sentence_mlm_loss", "label_mlm_loss")
    torch.save(
        {
            "batch": batch,
            "outputs": {k: getattr(out, k) for k in keys},
            "vocab": len(processor.tokenizer),
            "e1": processor.marker_ids[0],
        },
        tmp_path / "reference.pt",
    )
    return tmp_path


def run_offline(hub_cache, code, stdin=None):
    """Runs `code` in a fresh interpreter that only sees the hand-built cache (offline), reference.pt as argv[1]."""
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(hub_cache),
        "HF_HUB_CACHE": str(hub_cache / "hub"),
        "HF_MODULES_CACHE": str(hub_cache / "modules"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", code, str(hub_cache / "reference.pt")], env=env, capture_output=True, text=True,
        cwd=hub_cache, timeout=300, input=stdin,
    )


def test_auto_model_from_cache_snapshot_with_package(hub_cache):
    code = LOAD.format(block="import modeling_sacon", remote="", package_check="type(model).__module__ == 'modeling_sacon.modeling_sacon'")
    result = run_offline(hub_cache, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED modeling_sacon.modeling_sacon" in result.stdout


def test_auto_model_with_trust_remote_code_without_package(hub_cache):
    code = LOAD.format(
        block=BLOCK_PACKAGE, remote=", trust_remote_code=True",
        package_check="type(model).__module__.startswith('transformers_modules.')",
    )
    result = run_offline(hub_cache, code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOADED transformers_modules." in result.stdout


def test_remote_code_is_needed_without_package(hub_cache):
    """Without the package and without trust_remote_code, loading must refuse rather than guess."""
    code = textwrap.dedent(f"""
        import sys
        {BLOCK_PACKAGE}
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained("org/sacon-base", trust_remote_code=False)
        except ValueError as err:
            print("REFUSED", err)
    """)
    result = run_offline(hub_cache, code)
    assert "REFUSED" in result.stdout, result.stderr[-3000:]


def test_saved_tokenizer_keeps_markers(hub_cache, processor):
    tokenizer = AutoTokenizer.from_pretrained(hub_cache / "hub" / "models--org--sacon-base" / "snapshots" / SHA)
    assert tokenizer.convert_tokens_to_ids(processor.head_markers + processor.tail_markers) == processor.marker_ids
    assert tokenizer.tokenize("[E1] paris [/E1]") == ["[E1]", "paris", "[/E1]"]


REMOTE_PIPELINE = f"""
import json, sys
{BLOCK_PACKAGE}
from transformers import AutoProcessor, pipeline
queries, relations, support = json.loads(sys.stdin.read())
processor = AutoProcessor.from_pretrained("org/sacon-base", trust_remote_code=True)
classifier = pipeline("relation-classification", model="org/sacon-base", trust_remote_code=True, device="cpu")
encoded = processor(queries)
print(json.dumps({{
    "modules": [type(processor).__module__, type(classifier).__module__, type(classifier.model).__module__],
    "input_ids": encoded["input_ids"].tolist(), "entity_positions": encoded["entity_positions"].tolist(),
    "zero_shot": classifier(queries, relations=relations, function_to_apply="none"),
    "few_shot": classifier(queries, support=support, function_to_apply="none", batch_size=2),
    "label_augmented": classifier(queries, relations=relations, support=support, nota_threshold=0.5),
}}))
"""


def test_processor_and_pipeline_from_the_snapshot_alone_match_the_package(hub_cache, processor, tiny_model):
    """Without the package: AutoProcessor encodes as the installed processor, the pipeline scores as the installed one."""
    result = run_offline(hub_cache, REMOTE_PIPELINE, stdin=json.dumps([QUERIES, RELATIONS, SUPPORT]))  # spans as lists
    assert result.returncode == 0, result.stderr[-3000:]
    remote = json.loads(result.stdout.strip().splitlines()[-1])
    assert all(module.startswith("transformers_modules.") for module in remote["modules"]), remote["modules"]

    encoded = processor(QUERIES)
    assert remote["input_ids"] == encoded["input_ids"].tolist()
    assert remote["entity_positions"] == encoded["entity_positions"].tolist()
    assert processor.marker_ids[0] in remote["input_ids"][0]  # the markers kept their ids

    local = RelationClassificationPipeline(model=tiny_model, processor=processor, device="cpu")
    expected = {
        "zero_shot": local(QUERIES, relations=RELATIONS, function_to_apply="none"),
        "few_shot": local(QUERIES, support=SUPPORT, function_to_apply="none", batch_size=2),
        "label_augmented": local(QUERIES, relations=RELATIONS, support=SUPPORT, nota_threshold=0.5),
    }
    for method, ranked in expected.items():
        for mine, theirs in zip(ranked, remote[method], strict=True):
            assert [e["label"] for e in theirs] == [e["label"] for e in mine], method
            assert [e["score"] for e in theirs] == pytest.approx([e["score"] for e in mine], abs=1e-5), method
