"""SaconTrainer: exact resume, logged loss terms and temperature, the logit_scale parameter group, gradient
accumulation scaling, disjoint batches per process, and the pre-training script's input validation."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from accelerate.data_loader import prepare_data_loader, skip_first_batches
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from modeling_sacon import SaconConfig, SaconDualEncoderModel
from modeling_sacon.data.collator import SERVE_KEY, SaconPretrainingCollator, ServedDataset, ServeKeyedBatchSampler
from modeling_sacon.data import DataFormatError, EvaluationLeakageError, RelationBalancedBatchSampler, UnknownRelationError
from modeling_sacon.training.trainer import LOSS_TERMS, SaconTrainer, SaconTrainingArguments, ShuffledBatchSampler

from conftest import save_tiny_backbone, tiny_bert_config
from test_collator import synthetic_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def grad_enabled():
    """Scripts that other tests run in-process turn gradients off globally (torch.set_grad_enabled(False))."""
    with torch.enable_grad():
        yield


@pytest.fixture(scope="module")
def data():
    return synthetic_dataset(num_relations=8, per_relation=12)  # 96 rows: 12 batches of 4 relations x 2


def tiny(processor, seed: int, dropout: float = 0.1) -> SaconDualEncoderModel:
    torch.manual_seed(seed)
    config = tiny_bert_config(len(processor.tokenizer))
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    return SaconDualEncoderModel(SaconConfig(sentence_config=config.to_dict()))


def arguments(output_dir, **overrides) -> SaconTrainingArguments:
    options = dict(
        output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=8, instances_per_relation=2,
        learning_rate=1e-3, warmup_steps=0.2, logging_steps=1, save_steps=3, save_total_limit=None, seed=0,
        disable_tqdm=True, report_to="none", use_cpu=True, dataloader_pin_memory=False,
    )
    options.update(overrides)
    return SaconTrainingArguments(**options)


def trainer_for(processor, data, model, args, **kwargs) -> SaconTrainer:
    dataset, table = data
    collator = kwargs.pop("data_collator", None) or SaconPretrainingCollator(processor, table, seed=args.seed)
    return SaconTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator, processing_class=processor, **kwargs)


class StopAt(TrainerCallback):
    """Interrupts training after `step` (once its checkpoint is written), like a killed job."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            control.should_training_stop = True


def train_logs(trainer) -> dict[int, dict]:
    return {entry["step"]: entry for entry in trainer.state.log_history if "loss" in entry}


def test_resume_reproduces_the_uninterrupted_run(processor, data, tmp_path):
    """6 steps straight == 3 steps, interrupted, then resumed in a fresh trainer (dropout on: RNG states restored)."""
    straight = trainer_for(processor, data, tiny(processor, 0), arguments(tmp_path / "a", save_strategy="no"))
    straight.train()

    interrupted = trainer_for(processor, data, tiny(processor, 0), arguments(tmp_path / "b"), callbacks=[StopAt(3)])
    interrupted.train()
    assert interrupted.state.global_step == 3 and (tmp_path / "b" / "checkpoint-3").is_dir()

    resumed = trainer_for(processor, data, tiny(processor, 123), arguments(tmp_path / "b", save_strategy="no"))  # other init
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-3"))
    assert resumed.state.global_step == 6

    expected, got = straight.model.state_dict(), resumed.model.state_dict()
    moved = [n for n in expected if not torch.equal(expected[n], tiny(processor, 0).state_dict()[n])]
    assert len(moved) > 10  # training did change the weights
    for name in expected:
        assert torch.allclose(expected[name], got[name], atol=1e-6), name
    reference = train_logs(straight)
    for step, entry in {**train_logs(interrupted), **train_logs(resumed)}.items():
        for key in ("loss", "grad_norm", "learning_rate", "temperature", *LOSS_TERMS):
            assert entry[key] == pytest.approx(reference[step][key], rel=1e-6, abs=1e-7), (step, key)
    assert sorted({**train_logs(interrupted), **train_logs(resumed)}) == [1, 2, 3, 4, 5, 6]


class Recorder(TrainerCallback):
    def __init__(self):
        self.logit_scales = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.logit_scales.append(model.logit_scale.item())


def test_logs_loss_terms_and_temperature_and_logit_scale_group(processor, data, tmp_path):
    model = tiny(processor, 0)
    start = model.logit_scale.item()
    args = arguments(tmp_path, max_steps=2, warmup_steps=0, weight_decay=0.01, logit_scale_learning_rate=0.02, save_strategy="no")
    recorder = Recorder()
    trainer = trainer_for(processor, data, model, args, callbacks=[recorder])

    groups = trainer.create_optimizer().param_groups
    scale_groups = [g for g in groups if any(p is model.logit_scale for p in g["params"])]
    assert len(scale_groups) == 1 and len(scale_groups[0]["params"]) == 1
    assert scale_groups[0]["lr"] == 0.02 and scale_groups[0]["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            name = names[id(param)]
            no_decay = name.endswith("bias") or "LayerNorm" in name or name == "logit_scale"
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
            if name != "logit_scale":
                assert group.get("lr", args.learning_rate) == args.learning_rate, name
    assert sum(len(g["params"]) for g in groups) == len([p for p in model.parameters() if p.requires_grad])

    trainer.train()
    # AdamW's first step moves every parameter by about its learning rate: the temperature does move
    assert abs(recorder.logit_scales[0] - start) == pytest.approx(0.02, rel=1e-3)
    logs = train_logs(trainer)
    assert sorted(logs) == [1, 2]
    for entry in logs.values():
        for key in (*LOSS_TERMS, "temperature"):
            assert key in entry and math.isfinite(entry[key]), key
        assert entry["contrastive_loss"] == pytest.approx(
            (entry["sentence_anchored_loss"] + entry["label_anchored_loss"]) / 2, rel=1e-5
        )
        assert entry["loss"] == pytest.approx(
            entry["contrastive_loss"] + entry["sentence_mlm_loss"] + entry["label_mlm_loss"], rel=1e-5
        )
    assert logs[2]["temperature"] == pytest.approx(math.exp(-recorder.logit_scales[1]), rel=1e-6)


class RecordingCollator:
    """Keeps a copy of every batch it builds."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, features):
        batch = self.inner(features)
        self.batches.append({k: v.clone() for k, v in batch.items()})
        return batch

    def check_relations(self, relations, source=""):
        self.inner.check_relations(relations, source)


def test_gradient_accumulation_averages_the_micro_batch_gradients(processor, data, tmp_path):
    """GA=2, SGD: the update is -lr * mean of the two micro-batch gradients (loss divided by 2 exactly once)."""
    lr = 0.5
    model = tiny(processor, 0, dropout=0.0)
    initial = copy.deepcopy(model)
    collator = RecordingCollator(SaconPretrainingCollator(processor, data[1], seed=0))
    args = arguments(
        tmp_path, max_steps=1, gradient_accumulation_steps=2, optim="sgd", learning_rate=lr, logit_scale_learning_rate=lr,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0, save_strategy="no",
    )
    trainer = trainer_for(processor, data, model, args, data_collator=collator)
    trainer.train()

    gradients, losses = [], []
    for batch in collator.batches[:2]:  # the two micro-batches of the step (a third may be prefetched)
        initial.zero_grad()
        out = initial.train()(**batch)
        out.loss.backward()
        losses.append({k: float(getattr(out, k).detach()) for k in ("loss", "contrastive_loss")})
        gradients.append({n: p.grad.clone() for n, p in initial.named_parameters() if p.grad is not None})
    assert not torch.equal(collator.batches[0]["input_ids"][:, :5], collator.batches[1]["input_ids"][:, :5])

    trained = dict(model.named_parameters())
    checked = 0
    for name, param in initial.named_parameters():
        if name not in gradients[0]:
            continue
        mean = (gradients[0][name] + gradients[1][name]) / 2
        expected = param.detach() - lr * mean
        assert torch.allclose(trained[name].detach(), expected, atol=1e-5, rtol=1e-4), name
        checked += 1
    assert checked > 20
    # not the sum (no GA division) nor a quarter (divided twice)
    scale = initial.logit_scale.detach()
    g = (gradients[0]["logit_scale"] + gradients[1]["logit_scale"]) / 2
    assert abs(float(g)) > 1e-4
    for wrong in (scale - 2 * lr * g, scale - 0.5 * lr * g):
        assert not torch.allclose(trained["logit_scale"].detach(), wrong, atol=1e-6)

    entry = train_logs(trainer)[1]
    for key in ("loss", "contrastive_loss"):
        assert entry[key] == pytest.approx((losses[0][key] + losses[1][key]) / 2, rel=1e-5), key


def test_accelerate_deals_disjoint_batches_to_processes(data):
    """The global keyed stream, sharded by accelerate's BatchSamplerShard: process r takes batches r, r+2, ..."""
    dataset, _ = data

    def loader():
        sampler = RelationBalancedBatchSampler(dataset["relation"], 4, 2, seed=0, num_batches=8)
        return DataLoader(ServedDataset(dataset), batch_sampler=ServeKeyedBatchSampler(sampler), collate_fn=list)

    everything = [[(row["_sacon_serve_key"], row["tokens"]) for row in batch] for batch in loader()]
    shards = []
    for rank in range(2):
        prepared = prepare_data_loader(loader(), num_processes=2, process_index=rank, put_on_device=False)
        assert len(prepared) == 4
        shards.append([[(row["_sacon_serve_key"], row["tokens"]) for row in batch] for batch in prepared])
        # resuming skips this process's own consumed batches, keys intact
        resumed = [[row["_sacon_serve_key"] for row in batch] for batch in skip_first_batches(prepared, 1)]
        assert resumed == [[key for key, _ in batch] for batch in shards[rank][1:]]
    assert shards[0] == everything[0::2] and shards[1] == everything[1::2]


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("processes, skipped", [(1, 0), (1, 1), (2, 0), (2, 1)])
def test_the_dataloaders_set_epoch_reaches_the_keyed_sampler(processor, data, tmp_path, processes, skipped, balanced):
    """The Trainer calls `set_epoch` on its train dataloader before every epoch. It must reach the keyed sampler however
    accelerate wraps it: BatchSamplerShard under several processes, SkipBatchSampler over that when resuming (deeper
    than accelerate forwards to batch samplers; without it a resumed run replays epoch 0's batches)."""
    trainer = trainer_for(processor, data, tiny(processor, 0), arguments(tmp_path, balanced_batches=balanced))
    loader = trainer.get_train_dataloader()
    if processes > 1:
        loader = prepare_data_loader(loader, num_processes=processes, process_index=0, put_on_device=False)
    if skipped:
        loader = skip_first_batches(loader, skipped)
    loader.set_epoch(3)
    batches = list(loader.batch_sampler)  # of (row, epoch, batch index) keys
    assert {epoch for batch in batches for _, epoch, _ in batch} == {3}
    if balanced:
        epoch_3 = RelationBalancedBatchSampler(data[0]["relation"], 4, 2, seed=0, num_batches=12)  # 96 rows / 8
    else:
        epoch_3 = ShuffledBatchSampler(96, 8, seed=0, num_batches=12)
    epoch_3.set_epoch(3)
    assert [[row for row, _, _ in batch] for batch in batches] == list(epoch_3)[::processes][skipped:]


class KeyRecorder:
    """Records the serve keys of every batch the collator builds."""

    def __init__(self, inner):
        self.inner, self.keys = inner, []

    def __call__(self, features):
        self.keys.append(sorted({tuple(row[SERVE_KEY]) for row in features}))
        return self.inner(features)

    def check_relations(self, relations, source=""):
        self.inner.check_relations(relations, source)


def test_each_epoch_draws_its_own_batches(processor, data, tmp_path):
    """Two epochs of two batches: the Trainer's epoch reaches the sampler (keys (epoch, batch) = (0,0) (0,1) (1,0) (1,1))."""
    collator = KeyRecorder(SaconPretrainingCollator(processor, data[1], seed=0))
    args = arguments(tmp_path, max_steps=4, batches_per_epoch=2, save_strategy="no")
    trainer_for(processor, data, tiny(processor, 0), args, data_collator=collator).train()
    assert collator.keys[:4] == [[(0, 0)], [(0, 1)], [(1, 0)], [(1, 1)]]


# ----------------------------------------------------------------------------------------------------------------
# The pre-training command (examples/pretrain.py): bad inputs fail before any model is loaded, naming the file / relation / option.


@pytest.fixture(scope="module")
def pretrain():
    from modeling_sacon.commands import pretrain

    return pretrain


def fewrel_file(path: Path, content) -> str:
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


INSTANCE = {"tokens": "paris is the capital of france".split(), "h": ["paris", "Q90", [[0]]], "t": ["france", "Q142", [[5]]]}
LABELS = {"P1376": ["capital of", "country, state, department ..."], "P17": ["country", "sovereign state"]}


@pytest.fixture
def no_model_loading(pretrain, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs were validated")

    monkeypatch.setattr(pretrain, "build_model_and_processor", forbidden)


def run_script(pretrain, tmp_path, *options):
    return pretrain.main(["--output_dir", str(tmp_path / "out"), "--eval_fewrel", "none", *options])


def assert_rejected(pretrain, tmp_path, options, message):
    """The script refuses `options` on a valid two-relation corpus with `message` (before any model loads, where the
    test asks for `no_model_loading`)."""
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE] * 3, "P1376": [INSTANCE] * 3})
    labels = fewrel_file(tmp_path / "labels.json", LABELS)
    with pytest.raises(ValueError, match=message):
        run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels, *options)


def test_script_rejects_malformed_json(pretrain, tmp_path, no_model_loading):
    bad = fewrel_file(tmp_path / "corpus.json", '{"P17": [{"tokens": ["a"],}')
    with pytest.raises(DataFormatError, match=r"corpus\.json: malformed JSON at line 1"):
        run_script(pretrain, tmp_path, "--train_files", bad, "--label_files", fewrel_file(tmp_path / "l.json", LABELS))


def test_script_rejects_instance_without_head(pretrain, tmp_path, no_model_loading):
    headless = {k: v for k, v in INSTANCE.items() if k != "h"}
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE, INSTANCE], "P1376": [INSTANCE, headless]})
    with pytest.raises(DataFormatError, match=r"corpus\.json: relation 'P1376', instance 1, field 'h': missing"):
        run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", fewrel_file(tmp_path / "l.json", LABELS))


def test_script_rejects_relation_without_label_text(pretrain, tmp_path, no_model_loading):
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE] * 2, "P9999": [INSTANCE] * 2})
    labels = fewrel_file(tmp_path / "labels.json", LABELS)
    with pytest.raises(UnknownRelationError, match=r"no label text for relation\(s\) 'P9999' \(from .*corpus\.json\)"):
        run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels)


def test_script_rejects_fewrel_evaluation_relations(pretrain, tmp_path, no_model_loading):
    """P108 is a relation of FewRel's hidden test set: pre-training on it would inflate the few-shot results."""
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE] * 2, "P1376": [INSTANCE] * 2, "P108": [INSTANCE] * 2})
    labels = fewrel_file(tmp_path / "labels.json", {**LABELS, "P108": ["employer", "person's employer"]})
    leak = r"the training data contains FewRel evaluation relation\(s\) \['P108'\] \(FewRel 1.0 hidden test: P108\).*pass --allow_eval_relations"
    with pytest.raises(EvaluationLeakageError, match=leak):
        run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels)
    with pytest.raises(AssertionError, match="a model was loaded"):  # allowed: the checks pass, the model is next
        run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels, "--allow_eval_relations",
                   "--per_device_train_batch_size", "4")


@pytest.mark.parametrize(
    "options, message",
    [
        (["--balanced_batches", "true", "--per_device_train_batch_size", "2", "--instances_per_relation", "2"],
         r"per_device_train_batch_size \(2\) / instances_per_relation \(2\) = 1: a contrastive batch needs at least two relations"),
        (["--balanced_batches", "true", "--per_device_train_batch_size", "6", "--instances_per_relation", "2"],
         r"= 3 relations per batch, but the training data has only 2 relations"),
        (["--balanced_batches", "true", "--per_device_train_batch_size", "5", "--instances_per_relation", "2"],
         r"per_device_train_batch_size \(5\) must be divisible by instances_per_relation \(2\)"),
        (["--balanced_batches", "false", "--per_device_train_batch_size", "1"], r"per_device_train_batch_size \(1\) must be >= 2"),
        (["--instances_per_relation", "4", "--longtail_share", "0.25"],
         r"instances_per_relation=4, longtail_share=0.25: options of relation-balanced batches, but balanced_batches is False"),
    ],
)
def test_script_rejects_batches_without_two_relations(pretrain, tmp_path, no_model_loading, options, message):
    assert_rejected(pretrain, tmp_path, options, message)


def test_trainer_rejects_a_batch_of_one_relation(processor, data, tmp_path):
    with pytest.raises(ValueError, match=r"instances_per_relation \(4\) = 1: a contrastive batch needs at least two"):
        trainer_for(processor, data, tiny(processor, 0), arguments(tmp_path, per_device_train_batch_size=4, instances_per_relation=4,
                                                                     balanced_batches=True))


def test_script_rejects_hard_label_negatives_without_a_count(pretrain, tmp_path, no_model_loading):
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE] * 3, "P1376": [INSTANCE] * 3})
    labels = fewrel_file(tmp_path / "labels.json", LABELS)
    with pytest.raises(ValueError, match=r"--hard_label_negatives chooses the --label_negatives: give --label_negatives N"):
        run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels, "--hard_label_negatives")


@pytest.mark.parametrize("options, message", [
    (["--share_encoders", "True"], r"--freeze_label_encoder with --share_encoders would lock the sentence encoder too"),
    (["--label_mlm_weight", "1"], r"--freeze_label_encoder trains nothing in the label encoder: --label_mlm_weight 1"),
])
def test_script_rejects_a_locked_label_encoder_that_cannot_be(pretrain, tmp_path, no_model_loading, options, message):
    assert_rejected(pretrain, tmp_path, ["--freeze_label_encoder", "True", *options], message)


def test_a_locked_label_encoder_keeps_its_pretrained_weights(pretrain, tmp_path):
    """--freeze_label_encoder: after training, every label-encoder weight is the backbone's (the marker rows added to
    the vocabulary aside) while the sentence encoder's have moved; the model card says the tower was locked."""
    from transformers import AutoTokenizer, BertModel

    from modeling_sacon.utils.defaults import default_backbone_path

    tokenizer = AutoTokenizer.from_pretrained(default_backbone_path())
    torch.manual_seed(0)
    backbone = BertModel(tiny_bert_config(len(tokenizer)), add_pooling_layer=False)
    backbone.save_pretrained(tmp_path / "backbone")
    tokenizer.save_pretrained(tmp_path / "backbone")
    other = dict(INSTANCE, tokens="lyon is a city of france".split())
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE, other] * 2, "P1376": [other, INSTANCE] * 2})
    labels = fewrel_file(tmp_path / "labels.json", LABELS)
    run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels, "--freeze_label_encoder", "True",
               "--sentence_model_name_or_path", str(tmp_path / "backbone"), "--max_steps", "2", "--learning_rate", "1e-2",
               "--per_device_train_batch_size", "4", "--save_strategy", "no", "--use_cpu", "--report_to", "none",
               "--dataloader_pin_memory", "false", "--max_seq_length", "32")
    model = SaconDualEncoderModel.from_pretrained(tmp_path / "out")
    start = backbone.state_dict()
    vocab = len(tokenizer)

    def same(encoder, name):
        return torch.equal(encoder.state_dict()[name][:vocab] if "word_embeddings" in name else encoder.state_dict()[name],
                           start[name][:vocab] if "word_embeddings" in name else start[name])

    assert all(same(model.label_encoder, name) for name in start)
    assert not all(same(model.sentence_encoder, name) for name in start)
    assert model.config.label_mlm_weight == 0.0
    assert "| label encoder | locked (its pretrained weights) |" in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("options, message", [
    (["--label_encoder_interpolation", "1.5"], r"--label_encoder_interpolation must be in \[0, 1\] \(1: as trained\), got 1.5"),
    (["--label_encoder_interpolation", "0.5", "--share_encoders", "True"],
     r"--label_encoder_interpolation 0.5 needs a label encoder of its own that trains: not with --share_encoders"),
    (["--label_encoder_interpolation", "0.5", "--freeze_label_encoder", "True"],
     r"--label_encoder_interpolation 0.5 needs a label encoder of its own that trains"),
])
def test_script_rejects_an_interpolation_that_cannot_be(pretrain, tmp_path, no_model_loading, options, message):
    assert_rejected(pretrain, tmp_path, options, message)


def test_label_encoder_interpolation_ends_training_between_backbone_and_trained_weights(pretrain, tmp_path):
    """--label_encoder_interpolation W: the saved label encoder is backbone + W x (trained - backbone), the trained
    weights being those of the run's last checkpoint (which keeps them, to resume from); the sentence encoder is the
    checkpoint's; config and card record W."""
    from transformers import AutoTokenizer, BertModel

    from modeling_sacon.utils.defaults import default_backbone_path

    backbone = save_tiny_backbone(tmp_path / "backbone")
    start = BertModel.from_pretrained(backbone).state_dict()
    other = dict(INSTANCE, tokens="lyon is a city of france".split())
    corpus = fewrel_file(tmp_path / "corpus.json", {"P17": [INSTANCE, other] * 2, "P1376": [other, INSTANCE] * 2})
    labels = fewrel_file(tmp_path / "labels.json", LABELS)
    run_script(pretrain, tmp_path, "--train_files", corpus, "--label_files", labels, "--label_encoder_interpolation", "0.25",
               "--sentence_model_name_or_path", backbone, "--max_steps", "2", "--learning_rate", "1e-2",
               "--per_device_train_batch_size", "4", "--save_steps", "2", "--use_cpu", "--report_to", "none",
               "--dataloader_pin_memory", "false", "--max_seq_length", "32")
    final = SaconDualEncoderModel.from_pretrained(tmp_path / "out")
    trained = SaconDualEncoderModel.from_pretrained(tmp_path / "out" / "checkpoint-2")
    vocab = len(AutoTokenizer.from_pretrained(default_backbone_path()))
    moved = 0
    for name, end in trained.label_encoder.state_dict().items():
        got, reference = final.label_encoder.state_dict()[name], start[name]
        if "word_embeddings" in name:  # the marker rows have no backbone value: kept as trained
            torch.testing.assert_close(got[vocab:], end[vocab:])
            got, end = got[:vocab], end[:vocab]
        torch.testing.assert_close(got, reference + 0.25 * (end - reference))
        moved += not torch.equal(end, reference)
    assert moved > 0  # training moved the label encoder, so the check above is not trivially met
    for name, tensor in trained.sentence_encoder.state_dict().items():
        assert torch.equal(final.sentence_encoder.state_dict()[name], tensor)
    assert final.config.label_encoder_interpolation == 0.25
    card = (tmp_path / "out" / "README.md").read_text()
    assert "| label encoder | interpolated with its backbone after training, weight 0.25 (WiSE-FT) |" in card


def test_label_encoder_learning_rate_has_its_own_groups(processor, data, tmp_path):
    """`label_encoder_learning_rate`: every label-encoder weight (and only those) sits in a group at that rate, split
    by weight decay as the others are; AdamW's first step then moves a label weight by about that rate, a sentence
    weight by about --learning_rate. A model without a label encoder of its own is refused."""
    model = tiny(processor, 0, dropout=0.0)
    args = arguments(tmp_path, max_steps=1, warmup_steps=0, weight_decay=0.01, learning_rate=1e-3,
                     label_encoder_learning_rate=1e-5, save_strategy="no")
    trainer = trainer_for(processor, data, model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    for group in trainer.create_optimizer().param_groups:
        for param in group["params"]:
            name = names[id(param)]
            expected = 1e-5 if name.startswith("label_encoder.") else 1e-2 if name == "logit_scale" else 1e-3
            assert group.get("lr", 1e-3) == pytest.approx(expected), name
            no_decay = name.endswith("bias") or "LayerNorm" in name or name == "logit_scale"
            assert group["weight_decay"] == (0.0 if no_decay else 0.01), name
    query = "encoder.layer.0.attention.self.query.weight"
    before = {tower: getattr(model, f"{tower}_encoder").state_dict()[query].clone() for tower in ("sentence", "label")}
    trainer.train()
    for tower, rate in (("sentence", 1e-3), ("label", 1e-5)):
        step = (getattr(model, f"{tower}_encoder").state_dict()[query] - before[tower]).abs().max().item()
        assert step == pytest.approx(rate, rel=0.05), tower

    shared = SaconDualEncoderModel(SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict(),
                                               share_encoders=True))
    with pytest.raises(ValueError, match="label_encoder_learning_rate: the model has no trainable label encoder"):
        trainer_for(processor, data, shared, args).create_optimizer()
    with pytest.raises(ValueError, match="label_encoder_learning_rate must be >= 0, got -1"):
        arguments(tmp_path, label_encoder_learning_rate=-1.0)
