"""Few-shot scoring functions and SaconForFewShotRelationClassification (episodic Trainer fine-tuning, save/reload)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments

from modeling_sacon import SaconConfig, SaconDualEncoderModel
from modeling_sacon.data import load_fewrel_json, load_label_table
from modeling_sacon.data.episodic import EpisodeCollator, EpisodeExample, EpisodicDataset
from modeling_sacon.modeling_sacon_fewshot import SaconFewShotConfig, SaconForFewShotRelationClassification
from modeling_sacon.scoring import append_nota, build_prototypes, prototype_logits

from conftest import tiny_bert_config

# --------------------------------------------------------------------------- scoring (hand-computed values)

# N=2 relations, K=2 shots, D=2; queries chosen so every number below is easy to verify by hand.
SUPPORT = torch.tensor([[[2.0, 0.0], [0.0, 2.0]],      # relation 0: unit vectors (1,0), (0,1) after L2
                        [[-3.0, 0.0], [-1.0, 0.0]]])   # relation 1: both (-1,0) after L2
LABELS = torch.tensor([[0.0, 5.0], [0.0, -1.0]])       # (0,1), (0,-1) after L2
QUERY = torch.tensor([[1.0, 1.0], [-2.0, 0.0]])        # (1,1)/sqrt2, (-1,0) after L2
R = 1 / math.sqrt(2)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_prototype_is_mean_of_normalised_support():
    protos = build_prototypes(SUPPORT, None, "prototype")
    assert torch.allclose(protos, torch.tensor([[0.5, 0.5], [-1.0, 0.0]]))
    raw = build_prototypes(SUPPORT, None, "prototype", normalize=False)
    assert torch.allclose(raw, torch.tensor([[1.0, 1.0], [-2.0, 0.0]]))


def test_cosine_prototype_logits():
    logits = prototype_logits(QUERY, SUPPORT, method="prototype", similarity="cosine", scale=10.0)
    # q0=(R,R): cos to (.5,.5) is 1, to (-1,0) is -R; q1=(-1,0): cos to (.5,.5) is -R, to (-1,0) is 1
    expected = 10.0 * torch.tensor([[1.0, -R], [-R, 1.0]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_euclidean_prototype_logits():
    logits = prototype_logits(QUERY, SUPPORT, method="prototype", similarity="euclidean", scale=2.0)
    # normalised: q0=(R,R), q1=(-1,0); prototypes (.5,.5), (-1,0)
    d00 = 2 * (R - 0.5) ** 2
    d01 = (R + 1) ** 2 + R**2
    d10 = 1.5**2 + 0.5**2
    expected = -2.0 * torch.tensor([[d00, d01], [d10, 0.0]])
    assert torch.allclose(logits, expected, atol=1e-6)
    raw = prototype_logits(QUERY, SUPPORT, method="prototype", similarity="euclidean", normalize=False)
    # raw prototypes (1,1), (-2,0): q0=(1,1) -> 0 and 9+1; q1=(-2,0) -> 9+1 and 0
    assert torch.allclose(raw, -torch.tensor([[0.0, 10.0], [10.0, 0.0]]))


def test_zero_shot_uses_labels_only():
    logits = prototype_logits(QUERY, None, LABELS, method="zero_shot")
    assert torch.allclose(logits, torch.tensor([[R, -R], [0.0, 0.0]]), atol=1e-6)
    # support, when given, is ignored
    assert torch.equal(prototype_logits(QUERY, SUPPORT, LABELS, method="zero_shot"), logits)


def test_label_augmented_adds_label_to_mean_support():
    protos = build_prototypes(SUPPORT, LABELS, "label_augmented")
    assert torch.allclose(protos, torch.tensor([[0.5, 1.5], [-1.0, -1.0]]))
    logits = prototype_logits(QUERY, SUPPORT, LABELS, method="label_augmented")
    # cos((R,R), (.5,1.5)) = 2R / sqrt(2.5); cos((R,R), (-1,-1)) = -1; cos((-1,0), (.5,1.5)) = -.5/sqrt(2.5); (-1,0).(-R,-R) = R
    expected = torch.tensor([[2 * R / math.sqrt(2.5), -1.0], [-0.5 / math.sqrt(2.5), R]])
    assert torch.allclose(logits, expected, atol=1e-6)


def test_nota_column_is_appended_unscaled():
    logits = prototype_logits(QUERY, SUPPORT, method="prototype", scale=10.0, nota_logit=torch.tensor(3.5))
    assert logits.shape == (2, 3)
    assert torch.allclose(logits[:, 2], torch.tensor([3.5, 3.5]))
    assert torch.allclose(logits[:, :2], prototype_logits(QUERY, SUPPORT, scale=10.0))
    # a query whose best relation logit is below the threshold is predicted NOTA (label N)
    far = prototype_logits(torch.tensor([[0.0, -1.0]]), SUPPORT, scale=10.0, nota_logit=2.0)
    assert far.argmax(-1).item() == 2
    # per-query thresholds broadcast
    assert torch.equal(append_nota(torch.zeros(2, 2), torch.tensor([1.0, 2.0]))[:, 2], torch.tensor([1.0, 2.0]))


def test_batched_episodes_match_single_episodes():
    torch.manual_seed(0)
    q, s, l = torch.randn(3, 4, 8), torch.randn(3, 2, 5, 8), torch.randn(3, 2, 8)
    for method in ("prototype", "zero_shot", "label_augmented"):
        for similarity in ("cosine", "euclidean"):
            batched = prototype_logits(q, s, l, method, similarity, 2.0, 0.5)
            assert batched.shape == (3, 4, 3)
            for e in range(3):
                single = prototype_logits(q[e], s[e], l[e], method, similarity, 2.0, 0.5)
                assert torch.allclose(batched[e], single, atol=1e-6)


def test_gradients_flow_through_scale_and_nota():
    scale, nota = torch.tensor(5.0, requires_grad=True), torch.tensor(0.0, requires_grad=True)
    logits = prototype_logits(QUERY, SUPPORT, LABELS, "label_augmented", "cosine", scale, nota)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert scale.grad is not None and nota.grad is not None and nota.grad != 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"support_emb": SUPPORT, "label_emb": None, "method": "zero_shot"}, "needs label"),
        ({"support_emb": SUPPORT, "label_emb": None, "method": "label_augmented"}, "needs label"),
        ({"support_emb": None, "label_emb": LABELS, "method": "prototype"}, "needs support"),
        ({"support_emb": SUPPORT, "method": "mean"}, "fewshot_method='mean' is unknown"),
        ({"support_emb": SUPPORT, "similarity": "dot"}, "similarity='dot' is unknown"),
        ({"support_emb": SUPPORT, "label_emb": LABELS[:1], "method": "label_augmented"}, "do not match"),
    ],
)
def test_scoring_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        prototype_logits(QUERY, **kwargs)


# --------------------------------------------------------------------------- the model


@pytest.fixture(scope="module")
def val_rows(data_dir):
    return load_fewrel_json(data_dir / "fewrel" / "val_wiki.json")


@pytest.fixture(scope="module")
def train_rows(data_dir):
    return load_fewrel_json(data_dir / "fewrel_train_sample" / "train_wiki_sample.json")


@pytest.fixture(scope="module")
def label_table(data_dir):
    return load_label_table(data_dir / "fewrel" / "pid2name.json")


def tiny_fewshot(processor, **options) -> SaconForFewShotRelationClassification:
    torch.manual_seed(0)
    config = SaconFewShotConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict(), **options)
    return SaconForFewShotRelationClassification(config)


def accuracy(eval_pred):
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    return {"accuracy": float((logits.reshape(-1, logits.shape[-1]).argmax(-1) == labels.reshape(-1)).mean())}


def test_episodic_dataset_and_collator(processor, val_rows, label_table):
    dataset = EpisodicDataset(val_rows, n_way=3, k_shot=2, q_query=2, na_rate=1, seed=5, num_episodes=10)
    again = EpisodicDataset(val_rows, n_way=3, k_shot=2, q_query=2, na_rate=1, seed=5, num_episodes=10)
    assert len(dataset) == 10 and dataset[7] == again[7]  # a pure function of (seed, index)
    example = dataset[7]
    assert isinstance(example, EpisodeExample) and example.n_way == 3 and example.k_shot == 2
    for label, shots in enumerate(example.support):
        assert all(row["relation"] == example.relations[label] for row in shots)
    for row, label in zip(example.query, example.query_labels):
        assert (row["relation"] not in example.relations) if label == 3 else row["relation"] == example.relations[label]
    batch = EpisodeCollator(processor, label_table)([dataset[0], dataset[1]])
    # episode-shaped: dimension 0 is the episode (the Trainer's batch dimension)
    assert batch["support_input_ids"].shape[:2] == (2, 3 * 2) and batch["support_entity_positions"].shape == (2, 6, 2)
    assert batch["query_input_ids"].shape[:2] == (2, 3 * 2 + 2) and batch["query_entity_positions"].shape == (2, 8, 2)
    assert batch["labels"].tolist() == [list(dataset[0].query_labels), list(dataset[1].query_labels)]
    assert batch["relation_input_ids"].shape[:2] == (2, 3) and (batch["n_way"], batch["k_shot"]) == (3, 2)
    markers = torch.tensor(processor.marker_ids)
    assert (torch.isin(batch["support_input_ids"], markers).sum(-1) == 4).all()
    assert "relation_input_ids" not in EpisodeCollator(processor)([dataset[0]])
    other = EpisodicDataset(val_rows, n_way=2, k_shot=2, q_query=2, seed=5, num_episodes=1)
    with pytest.raises(ValueError, match="must share N, K and Q"):
        EpisodeCollator(processor)([dataset[0], other[0]])


def test_forward_layouts_methods_and_errors(processor, val_rows, label_table):
    model = tiny_fewshot(processor, fewshot_nota=True).eval()
    dataset = EpisodicDataset(val_rows, n_way=3, k_shot=2, q_query=1, na_rate=1, seed=0, num_episodes=4)
    batch = EpisodeCollator(processor, label_table)([dataset[i] for i in range(3)])
    with torch.no_grad():
        shaped = model(**batch)
        assert shaped.logits.shape == (3, 4, 4) and torch.isfinite(shaped.loss)
        flat = {k: v.flatten(0, 1) if torch.is_tensor(v) else v for k, v in batch.items()}
        assert flat["support_input_ids"].dim() == 2 and flat["labels"].shape == (12,)
        flat_out = model(**flat)
        assert torch.allclose(flat_out.logits, shaped.logits, atol=1e-5) and torch.allclose(flat_out.loss, shaped.loss)
        zero = model(**{k: v for k, v in batch.items() if not k.startswith("support_")}, fewshot_method="zero_shot")
        assert zero.logits.shape == (3, 4, 4)
        augmented = model(**batch, fewshot_method="label_augmented", return_embeddings=True)
        expected = prototype_logits(
            augmented.query_embeds, augmented.support_embeds, augmented.label_embeds, "label_augmented", "cosine",
            model.sacon.logit_scale_value().exp(), model.nota_logit(),
        )
        assert torch.allclose(augmented.logits, expected, atol=1e-6)
        assert torch.allclose(augmented.logits[..., 3], model.nota_logit().expand(3, 4))
    no_labels = {k: v for k, v in batch.items() if not k.startswith("relation_")}
    for method in ("zero_shot", "label_augmented"):
        with pytest.raises(ValueError, match=f"fewshot_method='{method}' needs relation label texts"):
            model(**no_labels, fewshot_method=method)
    with pytest.raises(ValueError, match="none-of-the-above"):
        model(**batch, nota=False)
    with pytest.raises(ValueError, match="needs support sentences"):
        model(**{k: v for k, v in batch.items() if not k.startswith("support_")}, fewshot_method="prototype")
    with pytest.raises(ValueError, match="fewshot_method='nearest' is unknown"):
        model(**batch, fewshot_method="nearest")


def test_zero_shot_episodes_through_the_collator(processor, val_rows, label_table):
    model = tiny_fewshot(processor, fewshot_method="zero_shot").eval()
    dataset = EpisodicDataset(val_rows, n_way=4, k_shot=0, q_query=2, zero_shot=True, seed=0, num_episodes=2)
    batch = EpisodeCollator(processor, label_table)([dataset[0], dataset[1]])
    assert "support_input_ids" not in batch and batch["k_shot"] == 0
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.shape == (2, 8, 4) and torch.isfinite(out.loss)


def test_stock_trainer_reduces_loss_and_checkpoint_round_trips(processor, val_rows, train_rows, label_table, tmp_path):
    model = tiny_fewshot(processor, fewshot_method="label_augmented", fewshot_nota=True)
    # train on training relations; measure the loss on a fixed set of val_wiki episodes before and after
    train = EpisodicDataset(train_rows, n_way=3, k_shot=2, q_query=2, na_rate=1, seed=1, num_episodes=8)
    held_out = EpisodicDataset(val_rows, n_way=3, k_shot=2, q_query=2, na_rate=1, seed=2, num_episodes=8)
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, per_device_eval_batch_size=8,
        max_steps=40, learning_rate=3e-3, lr_scheduler_type="constant", logging_steps=5, save_strategy="no",
        report_to="none", seed=0, use_cpu=True, disable_tqdm=True,
    )
    collator = EpisodeCollator(processor, label_table)
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset={"train": train, "val": held_out},
                      data_collator=collator, compute_metrics=accuracy)
    before = trainer.evaluate()
    trainer.train()
    after = trainer.evaluate()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    print("before", before, "\nafter", after, "\ntrain losses", losses)
    assert after["eval_train_loss"] < 0.7 * before["eval_train_loss"]  # the episodes it was trained on
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    model.eval()
    with torch.no_grad():  # the oracle: the model's own predictions on every held-out episode, counted here
        whole = collator([held_out[i] for i in range(len(held_out))])
        correct = (model(**whole).logits.argmax(-1) == whole["labels"]).float().mean().item()
    assert after["eval_val_accuracy"] == pytest.approx(correct, abs=1e-6)

    batch = collator([held_out[i] for i in range(4)])
    with torch.no_grad():
        reference = model(**batch).logits
    model.save_pretrained(tmp_path / "fewshot")
    config = json.loads((tmp_path / "fewshot" / "config.json").read_text())
    assert config["fewshot_method"] == "label_augmented" and config["fewshot_nota"] is True
    assert "nota_threshold" in load_file(tmp_path / "fewshot" / "model.safetensors")
    reloaded = SaconForFewShotRelationClassification.from_pretrained(tmp_path / "fewshot").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, reference)
    # from the Hub alone, AutoModel reads it as the dual encoder it holds (code and auto_map saved beside it)
    assert config["auto_map"] == {"AutoConfig": "modeling_sacon_fewshot.SaconFewShotConfig",
                                  "AutoModel": "modeling_sacon.SaconDualEncoderModel"}
    code = {p.name for p in (tmp_path / "fewshot").glob("*.py")}
    assert {"modeling_sacon.py", "modeling_sacon_fewshot.py", "configuration_sacon.py", "losses.py"} <= code
    # the fine-tuned checkpoint is still a SaCon checkpoint: its sacon.* weights load into the dual encoder
    dual = SaconDualEncoderModel.from_pretrained(tmp_path / "fewshot").eval()
    with torch.no_grad():
        query = [batch[f"query_{key}"].flatten(0, 1) for key in ("input_ids", "attention_mask", "entity_positions")]
        assert torch.equal(dual.get_sentence_features(*query), model.sacon.get_sentence_features(*query))


def test_loads_a_dual_encoder_checkpoint(processor, tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    model, info = SaconForFewShotRelationClassification.from_pretrained(
        tmp_path, fewshot_method="zero_shot", fewshot_similarity="euclidean", output_loading_info=True
    )
    assert info["missing_keys"] == {"nota_threshold"} and not info["unexpected_keys"]
    assert model.config.fewshot_method == "zero_shot" and model.config.fewshot_similarity == "euclidean"
    assert model.nota_threshold.item() == pytest.approx(-1.0)  # euclidean default: 2 - 2 * 0.5
    assert model.sacon.logit_scale.item() == pytest.approx(tiny_model.logit_scale.item())
    sentences = processor.encode_instances([
        {"tokens": "paris is a city in france".split(), "h": ["paris", "", [[0]]], "t": ["france", "", [[5]]]},
        {"tokens": "apple was founded by steve jobs".split(), "h": ["apple", "", [[0]]], "t": ["jobs", "", [[4, 5]]]},
    ])
    labels = processor.encode_labels([("located in", "the place"), ("founded by", "who founded it")])
    with torch.no_grad():
        assert torch.equal(model.sacon.get_sentence_features(**sentences), tiny_model.get_sentence_features(**sentences))
        assert torch.equal(model.sacon.get_label_features(**labels), tiny_model.get_label_features(**labels))

    # a checkpoint without label-encoder weights: prototype still works, zero-shot is refused
    state = {k: v for k, v in load_file(tmp_path / "model.safetensors").items() if not k.startswith("label_encoder.")}
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    partial = SaconForFewShotRelationClassification.from_pretrained(tmp_path).eval()
    assert partial.label_encoder_loaded is False
    query = {f"query_{k}": v for k, v in sentences.items()}
    support = {f"support_{k}": v for k, v in sentences.items()}
    relation = {"relation_input_ids": labels["input_ids"], "relation_attention_mask": labels["attention_mask"]}
    with torch.no_grad():
        assert partial(**query, **support, n_way=2, k_shot=1, fewshot_method="prototype").logits.shape == (1, 2, 2)
    with pytest.raises(ValueError, match="needs a trained label encoder"):
        partial(**query, **relation, n_way=2, k_shot=0, fewshot_method="zero_shot")


def test_finetune_script_end_to_end_on_a_tiny_checkpoint(processor, tiny_model, data_dir, tmp_path, monkeypatch):
    from modeling_sacon.commands import finetune

    tiny_model.save_pretrained(tmp_path / "tiny")
    processor.save_pretrained(tmp_path / "tiny")
    out = tmp_path / "out"
    options = ["--model_name_or_path", str(tmp_path / "tiny"), "--output_dir", str(out), "--max_steps", "4",
               "--eval_steps", "2", "--save_steps", "2", "--eval_episodes", "4", "--train_episodes", "16",
               "--learning_rate", "1e-3", "--disable_tqdm", "true", "--torch_num_threads", "1"]
    with pytest.raises(ValueError, match="would select a checkpoint on --validation_file, the split the run reports"):
        finetune.main([*options, "--load_best_model_at_end", "true", "--eval_strategy", "steps"])
    metrics = finetune.main([*options, "--selection_relations", "5", "--eval_strategy", "steps",
                             "--load_best_model_at_end", "true"])
    # checkpoints are scored on 5 held-out training relations; val_wiki is scored once, on the kept model
    assert set(metrics["selection_accuracy_by_step"]) == {2, 4}
    best_step = max(metrics["selection_accuracy_by_step"], key=lambda step: (metrics["selection_accuracy_by_step"][step], -step))
    assert metrics["best_selection_accuracy"] == metrics["selection_accuracy_by_step"][best_step]
    assert metrics["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert "eval_accuracy" in metrics and not any(key.startswith("eval_") and key != "eval_accuracy_by_step"
                                                  and "selection" in key for key in metrics)
    model = SaconForFewShotRelationClassification.from_pretrained(out)
    assert model.config.fewshot_method == "label_augmented"
    assert (out / "tokenizer.json").is_file() and (out / "finetune_results.json").is_file()


def test_dual_encoder_config_loads_with_the_fewshot_defaults(tiny_model, tmp_path):
    """A dual encoder's config.json has no few-shot options: the few-shot model takes their defaults; one that has
    them (a fine-tuned checkpoint) is validated on load."""
    tiny_model.save_pretrained(tmp_path)
    old = json.loads((tmp_path / "config.json").read_text())
    assert not any(key.startswith("fewshot_") for key in old)
    model = SaconForFewShotRelationClassification.from_pretrained(tmp_path)
    assert (model.config.fewshot_method, model.config.fewshot_similarity, model.config.fewshot_nota) == ("prototype", "cosine", False)
    assert model.nota_threshold.item() == pytest.approx(0.5)
    (tmp_path / "config.json").write_text(json.dumps({**old, "fewshot_method": "nearest"}))
    with pytest.raises(ValueError, match="fewshot_method='nearest' is unknown"):
        SaconForFewShotRelationClassification.from_pretrained(tmp_path)
