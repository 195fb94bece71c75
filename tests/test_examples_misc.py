"""examples/predict_fewrel_leaderboard.py, plot_embeddings.py and plot_training_curves.py on tiny saved SaCon models
and synthetic Trainer histories."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from modeling_sacon import SaconConfig, SaconDualEncoderModel
from modeling_sacon.data.episodes import load_test_episodes
from modeling_sacon.utils.defaults import default_backbone_path

from conftest import tiny_bert_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_example(name: str):
    """Import examples/<name>.py as a module (examples/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def leaderboard():
    return load_example("predict_fewrel_leaderboard")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, processor) -> Path:
    """A tiny random SaCon model + processor saved as a checkpoint directory."""
    torch.manual_seed(0)
    config = SaconConfig(sentence_config=tiny_bert_config(len(processor.tokenizer)).to_dict())
    path = tmp_path_factory.mktemp("tiny_sacon")
    SaconDualEncoderModel(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return path


def as_raw(instance: dict) -> dict:
    """A val_wiki instance in the leaderboard's form (tokens, h, t; no relation field)."""
    return {"tokens": instance["tokens"], "h": instance["h"], "t": instance["t"]}


def make_episodes(val_wiki, n_way: int, k_shot: int, count: int, seed: int, oracle: bool = False):
    """`count` leaderboard episodes from val_wiki with their gold answers.

    oracle=True: the query is an exact copy of one support instance of the gold relation.
    """
    rng = np.random.default_rng(seed)
    relations = list(val_wiki)
    episodes, gold = [], []
    for _ in range(count):
        drawn = [relations[i] for i in rng.choice(len(relations), n_way, replace=False)]
        answer = int(rng.integers(n_way))
        support, query = [], None
        for j, relation in enumerate(drawn):
            picks = rng.choice(len(val_wiki[relation]), k_shot + 1, replace=False)
            support.append([as_raw(val_wiki[relation][p]) for p in picks[:k_shot]])
            if j == answer:
                query = support[j][int(rng.integers(k_shot))] if oracle else as_raw(val_wiki[relation][picks[k_shot]])
        episodes.append({"meta_train": support, "meta_test": json.loads(json.dumps(query)), "relation": drawn})
        gold.append(answer)
    return episodes, gold


def write_test_file(path: Path, episodes) -> Path:
    path.write_text(json.dumps(episodes))
    return path


# --------------------------------------------------------------------------- leaderboard


def test_leaderboard_predictions_for_several_files(leaderboard, tiny_checkpoint, val_wiki, tmp_path):
    one_shot, _ = make_episodes(val_wiki, 5, 1, 20, seed=1)
    two_shot, _ = make_episodes(val_wiki, 5, 2, 12, seed=2)
    files = [write_test_file(tmp_path / "test-5-1.json", one_shot), write_test_file(tmp_path / "test-5-2.json", two_shot)]
    out = tmp_path / "submission"
    written = leaderboard.main(["--model_name_or_path", str(tiny_checkpoint), "--test_file", *map(str, files),
                                "--output_dir", str(out)])
    assert sorted(Path(p).name for p in written.values()) == ["pred-5-1.json", "pred-5-2.json"]
    for name, count in (("pred-5-1.json", 20), ("pred-5-2.json", 12)):
        predictions = json.loads((out / name).read_text())
        assert len(predictions) == count
        assert all(type(p) is int and 0 <= p < 5 for p in predictions)


def test_leaderboard_oracle_query_is_found(leaderboard, tiny_checkpoint, val_wiki, tmp_path):
    """The query is one of the support sentences: identical sentence, identical embedding, the maximal cosine."""
    episodes, gold = make_episodes(val_wiki, 5, 1, 20, seed=3, oracle=True)
    assert len(set(gold)) > 1  # the answers are not all the same index
    test_file = write_test_file(tmp_path / "oracle.json", episodes)
    for method in ("prototype", "label_augmented"):
        out = tmp_path / method
        leaderboard.main(["--model_name_or_path", str(tiny_checkpoint), "--test_file", str(test_file),
                          "--output_dir", str(out), "--method", method])
        predictions = json.loads((out / "pred-5-1.json").read_text())
        if method == "prototype":
            assert predictions == gold
        else:  # the label text shifts the prototypes: only check the shape there
            assert len(predictions) == 20 and all(0 <= p < 5 for p in predictions)


def test_leaderboard_matches_per_episode_encoding(leaderboard, tiny_checkpoint, processor, val_wiki, tmp_path):
    """The cached, batched path predicts what encoding each episode on its own (the toolkit's way) predicts."""
    from modeling_sacon.fewshot.evaluation import SaconEncoder
    from modeling_sacon.scoring import prototype_logits

    episodes, _ = make_episodes(val_wiki, 5, 2, 15, seed=7)
    test_file = write_test_file(tmp_path / "test.json", episodes)
    leaderboard.main(["--model_name_or_path", str(tiny_checkpoint), "--test_file", str(test_file),
                      "--output_dir", str(tmp_path), "--batch_size", "16"])
    predictions = json.loads((tmp_path / "pred-5-2.json").read_text())
    encoder = SaconEncoder(SaconDualEncoderModel.from_pretrained(tiny_checkpoint).eval(), processor)
    expected = []
    for episode in episodes:
        embeddings = encoder.encode_sentences(leaderboard.episode_instances(episode))
        logits = prototype_logits(embeddings[-1:], embeddings[:-1].view(5, 2, -1))
        expected.append(int(logits.argmax(-1)))
    assert predictions == expected


def test_each_distinct_sentence_is_encoded_once(leaderboard, val_wiki):
    episodes, _ = make_episodes(val_wiki, 5, 1, 10, seed=4, oracle=True)  # every query repeats a support sentence
    episodes.append(json.loads(json.dumps(episodes[0])))  # and a whole episode repeats
    cache = leaderboard.SentenceCache()
    support, query = leaderboard.episode_rows(episodes, cache)
    assert support.shape == (11, 5, 1) and query.shape == (11,)
    assert len(cache.instances) == len({leaderboard.sentence_key(i) for e in episodes
                                        for i in leaderboard.episode_instances(e)}) == 50
    seen = []

    class FakeEncoder:  # encode_sentences only: sorted by word counts
        def encode_sentences(self, instances):
            seen.extend(leaderboard.sentence_key(i) for i in instances)
            return torch.stack([torch.tensor([float(len(i["tokens"])), float(i["h"][2][0][0])]) for i in instances])

    fake_encode = FakeEncoder()
    embeddings = cache.encode(fake_encode, batch_size=7)
    assert len(seen) == len(set(seen)) == 50
    for instance, row in cache.index.items():  # row r holds the embedding of instance r (despite length sorting)
        assert embeddings[row, 0] == len(instance[0])
    assert cache.encode(fake_encode) is embeddings and len(seen) == 50  # nothing new: nothing encoded


def test_leaderboard_same_setting_twice_is_refused(leaderboard, val_wiki, tmp_path):
    a = write_test_file(tmp_path / "a.json", make_episodes(val_wiki, 5, 1, 2, seed=5)[0])
    b = write_test_file(tmp_path / "b.json", make_episodes(val_wiki, 5, 1, 2, seed=6)[0])
    with pytest.raises(ValueError, match="pred-5-1.json"):
        leaderboard.main(["--test_file", str(a), str(b), "--output_dir", str(tmp_path)])
    assert load_test_episodes(a)  # our synthetic files are valid leaderboard files


# --------------------------------------------------------------------------- plots


@pytest.fixture(scope="module")
def plots():
    pytest.importorskip("matplotlib")
    return load_example("plot_embeddings")


@pytest.fixture(scope="module")
def curves():
    pytest.importorskip("matplotlib")
    return load_example("plot_training_curves")


def assert_png(path: Path, min_bytes: int = 2000) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes


def test_plot_embeddings_on_a_tiny_checkpoint(plots, tiny_checkpoint, val_wiki, tmp_path):
    small = {relation: val_wiki[relation][:12] for relation in list(val_wiki)[:6]}
    data_file = tmp_path / "small.json"
    data_file.write_text(json.dumps(small))
    output = tmp_path / "emb.png"
    written = plots.main(["--model_name_or_path", str(tiny_checkpoint), "--data_file", str(data_file),
                          "--per_relation", "5", "--output", str(output)])
    assert written == str(output)
    assert_png(output, 10_000)


def test_plot_training_curves_of_a_run(curves, tmp_path):
    state = {"log_history": [{"loss": 3.0 - 0.1 * s, "contrastive_loss": 2.0 - 0.1 * s, "step": s, "epoch": s / 10}
                             for s in range(1, 6)]}
    (tmp_path / "run" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-5" / "trainer_state.json").write_text(json.dumps(state))
    output = tmp_path / "curves.png"
    assert curves.main([str(tmp_path / "run"), "--output", str(output)]) == str(output)
    assert_png(output)
    with pytest.raises(FileNotFoundError, match="no trainer_state.json"):
        curves.main([str(tmp_path / "elsewhere")])


def test_select_instances_is_seeded(plots, val_wiki, tmp_path):
    from modeling_sacon.data import load_fewrel_json

    data_file = tmp_path / "small.json"
    data_file.write_text(json.dumps({relation: val_wiki[relation][:20] for relation in list(val_wiki)[:3]}))
    dataset = load_fewrel_json(data_file)
    first, again = plots.select_instances(dataset, 5, seed=0), plots.select_instances(dataset, 5, seed=0)
    assert first == again and len(first) == 15
    assert [r["relation"] for r in first] == [r for r in list(val_wiki)[:3] for _ in range(5)]
    assert first != plots.select_instances(dataset, 5, seed=1)
    assert len(plots.select_instances(dataset, 50)) == 60  # fewer than asked: all of them


def test_plot_training_curves_on_a_synthetic_history(curves, tmp_path):
    history = [
        {"loss": 4.0 / s, "contrastive_loss": 2.0 / s, "sentence_anchored_loss": 1.0 / s, "label_anchored_loss": 1.5 / s,
         "sentence_mlm_loss": 3.0, "label_mlm_loss": 2.5, "temperature": 0.07, "learning_rate": 1e-5, "grad_norm": 1.0,
         "epoch": s / 20, "step": 10 * s}
        for s in range(1, 21)
    ]
    history.insert(5, {"eval_5-1_accuracy": 0.6, "eval_loss": 1.2, "eval_runtime": 3.4, "epoch": 0.25, "step": 50})
    history.append({"loss": float("nan"), "grad_norm": float("inf"), "flag": True, "note": "text", "step": 205})
    history.append({"train_runtime": 100.0, "train_loss": 1.0, "total_flos": 1e12, "epoch": 1.0, "step": 200})
    path = tmp_path / "nested" / "curves.png"
    keys = curves.plot_training_curves(history, path)
    assert_png(path)
    assert keys[:7] == ["loss", "contrastive_loss", "sentence_anchored_loss", "label_anchored_loss", "sentence_mlm_loss",
                        "label_mlm_loss", "temperature"]
    assert {"eval_5-1_accuracy", "eval_loss", "grad_norm", "learning_rate"} <= set(keys)
    assert len(keys) == 11  # not step, epoch, runtimes, the final summary (train_loss...), NaN, bools or strings
    assert curves.curve_series(history)["eval_loss"] == ([50], [1.2])
    assert curves.plot_training_curves([], tmp_path / "empty.png") == []
    assert_png(tmp_path / "empty.png")


def test_find_trainer_state(curves, tmp_path):
    for step in (5, 40, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert curves.find_trainer_state(tmp_path) == tmp_path / "checkpoint-100" / "trainer_state.json"  # numeric, not str
    (tmp_path / "trainer_state.json").write_text("{}")
    assert curves.find_trainer_state(tmp_path) == tmp_path / "trainer_state.json"
    assert curves.find_trainer_state(tmp_path / "trainer_state.json") == tmp_path / "trainer_state.json"
    with pytest.raises(FileNotFoundError):
        curves.find_trainer_state(tmp_path / "missing")


def test_project_2d_shape_and_determinism(plots):
    x = torch.randn(40, 16, generator=torch.Generator().manual_seed(0))
    points = plots.project_2d(x)
    assert points.shape == (40, 2) and points.dtype == torch.float32
    assert torch.equal(points, plots.project_2d(x.clone()))
    assert torch.allclose(points, plots.project_2d(x.numpy()))
    # PCA: centred, first axis carries at least as much variance as the second, the two are uncorrelated
    assert torch.allclose(points.mean(0), torch.zeros(2), atol=1e-5)
    assert points[:, 0].var() >= points[:, 1].var()
    assert abs(float((points[:, 0] * points[:, 1]).mean())) < 1e-4
    # the sign convention makes the projection invariant to negating the input
    assert torch.allclose(points, plots.project_2d(-x), atol=1e-5)
    assert plots.project_2d(torch.randn(1, 8)).shape == (1, 2)
    assert plots.project_2d(torch.randn(5, 1)).shape == (5, 2)
    with pytest.raises(ValueError):
        plots.project_2d(torch.randn(3, 4, 5))


# --------------------------------------------------------------------------- the examples' loading helper


def test_load_sacon_model_loads_or_composes(tiny_checkpoint, processor, tmp_path):
    from transformers import BertModel

    from modeling_sacon.modeling_sacon_fewshot import SaconForFewShotRelationClassification
    from modeling_sacon.utils.loading import load_sacon_model

    saved = SaconDualEncoderModel.from_pretrained(tiny_checkpoint).state_dict()
    model, loaded_processor = load_sacon_model(str(tiny_checkpoint))
    assert not model.training and loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items())

    fewshot, _ = load_sacon_model(str(tiny_checkpoint), model_class=SaconForFewShotRelationClassification,
                                  fewshot_method="zero_shot")
    assert fewshot.config.fewshot_method == "zero_shot" and torch.equal(fewshot.sacon.logit_scale, model.logit_scale)

    # a plain encoder, composed: both towers start as copies of it, the markers added to its vocabulary
    torch.manual_seed(1)
    plain = BertModel(tiny_bert_config(len(processor.tokenizer) - 5), add_pooling_layer=False)
    plain.save_pretrained(tmp_path / "plain")
    AutoTokenizer.from_pretrained(default_backbone_path()).save_pretrained(tmp_path / "plain")
    composed, composed_processor = load_sacon_model(str(tmp_path / "plain"), compose=True)
    assert type(composed) is SaconDualEncoderModel and len(composed_processor.tokenizer) == len(processor.tokenizer)
    layer = "encoder.layer.1.output.dense.weight"
    for tower in (composed.sentence_encoder, composed.label_encoder):
        assert torch.equal(tower.state_dict()[layer], plain.state_dict()[layer])
    wrapped, _ = load_sacon_model(str(tmp_path / "plain"), compose=True, model_class=SaconForFewShotRelationClassification)
    assert type(wrapped) is SaconForFewShotRelationClassification and wrapped.config.fewshot_method == "prototype"
