"""SaconTrainer through public Trainer hooks: FewRel metrics from `evaluate()` (logged, returned, used for the best
model), and no override of a private Trainer method without a signature guard."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer, BertModel, Trainer

from modeling_sacon.data import first_per_relation
from modeling_sacon.fewshot.evaluation import FewShotEvaluator
from modeling_sacon.training.trainer import SaconTrainer
from modeling_sacon.utils.defaults import default_backbone_path

from conftest import tiny_bert_config
from test_collator import synthetic_dataset, synthetic_rows
from test_pretrain_push import write_fewrel
from test_trainer import arguments, data, grad_enabled, pretrain, tiny, trainer_for  # noqa: F401 - fixtures

FEWREL = {"fewrel_eval_settings": "5-1,3-2", "fewrel_eval_episodes": 20, "fewrel_eval_pool_per_relation": 4,
          "per_device_eval_batch_size": 7}
NAMES = ("fewrel_5_1_accuracy", "fewrel_5_1_ci95", "fewrel_3_2_accuracy", "fewrel_3_2_ci95")

# Private `Trainer` methods SaconTrainer overrides (none today), each with the parameter names of the transformers
# version it was written against; add one only where transformers offers no public route.
PRIVATE_OVERRIDES: dict[str, tuple[str, ...]] = {}


@pytest.fixture(scope="module")
def evaluation():
    return synthetic_dataset(num_relations=6, per_relation=5, seed=2)  # rows, label table


def reference_metrics(model, processor, evaluation, prefix: str = "eval") -> dict[str, float]:
    """What the former `SaconTrainer.evaluate` override computed: FewShotEvaluator on the first 4 rows per relation."""
    dataset, table = evaluation
    evaluator = FewShotEvaluator(model.eval(), processor, first_per_relation(dataset, 4), table, batch_size=7,
                                 show_progress=False)
    results = evaluator.evaluate(["5-1", "3-2"], num_episodes=20, seed=0, method="prototype")
    return {f"{prefix}_fewrel_{s.replace('-', '_')}_{k}": results[s][k] for s in results for k in ("accuracy", "ci95")}


def fewrel_part(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if "_fewrel_" in key}


def test_evaluate_logs_and_returns_the_fewrel_metrics(processor, data, evaluation, tmp_path, one_thread):
    """Evaluation at steps 2 and 4 of a tiny run, then `trainer.evaluate()` by hand (also with a named split): the
    FewRel metrics logged and returned are the evaluator's, under the former names, plus the Trainer's speed metrics."""
    args = arguments(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, save_strategy="no", **FEWREL)
    trainer = trainer_for(processor, data, tiny(processor, 0), args, eval_dataset=evaluation[0],
                          eval_label_table=evaluation[1])
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if fewrel_part(entry)]
    assert [entry["step"] for entry in logged] == [2, 4]

    final = trainer.evaluate()
    expected = reference_metrics(trainer.model, processor, evaluation)
    assert sorted(expected) == sorted(f"eval_{name}" for name in NAMES)
    assert fewrel_part(final) == expected  # the same numbers, not only close: the same computation
    assert fewrel_part(logged[-1]) == expected  # the model did not change after step 4
    assert fewrel_part(trainer.state.log_history[-1]) == expected
    assert {"eval_runtime", "eval_samples_per_second", "epoch"} <= set(final)
    assert final["eval_samples_per_second"] == pytest.approx(6 * 4 / final["eval_runtime"], rel=0.05)

    named = trainer.evaluate(eval_dataset={"wiki": evaluation[0]})
    assert fewrel_part(named) == reference_metrics(trainer.model, processor, evaluation, prefix="eval_wiki")


def test_best_fewrel_checkpoint_is_loaded_at_the_end(processor, data, evaluation, tmp_path, one_thread):
    """`metric_for_best_model="fewrel_5_1_accuracy"` with `load_best_model_at_end`: the Trainer picks the best logged
    accuracy (first of ties) and ends with that checkpoint's weights."""
    args = arguments(
        tmp_path, max_steps=6, learning_rate=2e-2, eval_strategy="steps", eval_steps=2, save_steps=2,
        metric_for_best_model="fewrel_5_1_accuracy", load_best_model_at_end=True,
        **{**FEWREL, "fewrel_eval_settings": "5-1", "fewrel_eval_episodes": 100, "fewrel_eval_pool_per_relation": 5},
    )
    trainer = trainer_for(processor, data, tiny(processor, 0), args, eval_dataset=evaluation[0],
                          eval_label_table=evaluation[1])
    trainer.train()
    scores = {e["step"]: e["eval_fewrel_5_1_accuracy"] for e in trainer.state.log_history if "eval_fewrel_5_1_accuracy" in e}
    assert sorted(scores) == [2, 4, 6] and len(set(scores.values())) > 1, scores
    best_step = max(scores, key=lambda step: (scores[step], -step))
    assert trainer.state.best_metric == scores[best_step]
    assert trainer.state.best_model_checkpoint == str(tmp_path / f"checkpoint-{best_step}")
    state = trainer.model.state_dict()
    for step in scores:
        saved = load_file(tmp_path / f"checkpoint-{step}" / "model.safetensors")
        assert all(torch.equal(state[name], tensor) for name, tensor in saved.items()) == (step == best_step), step


def test_evaluate_without_fewrel_rows_names_the_fix(processor, data, tmp_path):
    trainer = trainer_for(processor, data, tiny(processor, 0), arguments(tmp_path, save_strategy="no"))
    with pytest.raises(ValueError, match="needs an eval_dataset of FewRel rows"):
        trainer.evaluate()


def test_private_trainer_overrides_are_guarded():
    """Private Trainer methods change without notice: SaconTrainer overrides only those listed in PRIVATE_OVERRIDES,
    and each still exists in the installed transformers with the parameters it was written against."""
    private = {
        name for name, value in vars(SaconTrainer).items()
        if name.startswith("_") and not name.startswith("__") and callable(value) and hasattr(Trainer, name)
    }
    assert private == set(PRIVATE_OVERRIDES), f"unguarded private Trainer overrides: {sorted(private - set(PRIVATE_OVERRIDES))}"
    for name, parameters in PRIVATE_OVERRIDES.items():
        assert hasattr(Trainer, name), f"transformers no longer has Trainer.{name}: rewrite SaconTrainer.{name}"
        assert tuple(inspect.signature(getattr(Trainer, name)).parameters) == parameters, name


def test_pretrain_evaluates_a_finished_checkpoint_without_training(pretrain, tmp_path):
    """examples/pretrain.py on an output_dir whose last checkpoint reached --max_steps: no further step (the Trainer
    would take one), the checkpoint's weights are scored, with the metrics the run itself logged at its end."""
    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    torch.manual_seed(0)
    BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False).save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    train, table = synthetic_rows(num_relations=6, per_relation=6, seed=1)
    evaluation = [{**row, "relation": "E" + row["relation"][1:]} for row in synthetic_rows(5, 3, seed=2)[0]]
    (tmp_path / "labels.json").write_text(json.dumps(table))
    argv = [
        "--sentence_model_name_or_path", str(tmp_path / "backbone"), "--train_files", write_fewrel(train, tmp_path / "t.json"),
        "--label_files", str(tmp_path / "labels.json"), "--eval_fewrel", write_fewrel(evaluation, tmp_path / "e.json"),
        "--fewrel_eval_episodes", "10", "--fewrel_eval_pool_per_relation", "0", "--max_seq_length", "32",
        "--per_device_train_batch_size", "8", "--balanced_batches", "false", "--max_steps", "2", "--save_steps", "2",
        "--output_dir", str(tmp_path / "out"), "--use_cpu", "--dataloader_pin_memory", "false", "--report_to", "none",
    ]
    first = pretrain.main(argv)
    assert first["train_runtime"] > 0 and "eval_fewrel_5_1_accuracy" in first  # its value is checked against the rerun's
    again = pretrain.main(argv)  # finds out/checkpoint-2, which reached --max_steps
    assert "train_runtime" not in again
    assert fewrel_part(again) == fewrel_part(first)
    state = json.loads((tmp_path / "out" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    final, checkpoint = (load_file(tmp_path / "out" / path / "model.safetensors") for path in ("", "checkpoint-2"))
    assert final.keys() == checkpoint.keys() and all(torch.equal(final[k], checkpoint[k]) for k in final)
