"""examples/pretrain.py killed with SIGKILL at several moments, then started again with the same command, ends with
exactly the weights of an uninterrupted run: a half-written checkpoint is never resumed from (see
`modeling_sacon.training.checkpoints`). The runs are forked from one interpreter by tests/kill_restart_driver.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_sacon.training.checkpoints import checkpoint_problem, last_complete_checkpoint

from test_pretrain_push import inputs  # noqa: F401 - fixture: tiny backbone, corpus, labels

REPO = Path(__file__).resolve().parent.parent
# moment -> the checkpoint the restart must resume from (None: from scratch); external: whichever was complete
EXPECTED_RESUME = {
    "mid_step": "checkpoint-2",
    "weights_only": "checkpoint-2",
    "truncated_weights": "checkpoint-2",
    "truncated_state": "checkpoint-2",
    "after_save": "checkpoint-4",
    "truncated_final": "checkpoint-6",
    "external": None,
}
SKIPPED = {  # the restart's log names the skipped checkpoint and why
    "weights_only": "checkpoint-4: trainer_state.json is missing",
    "truncated_weights": "checkpoint-4: trainer_state.json is missing",
    "truncated_state": "checkpoint-4: trainer_state.json is unreadable",
}


def test_killed_runs_restart_to_the_uninterrupted_weights(inputs, tmp_path):
    argv = [
        "--sentence_model_name_or_path", inputs["backbone"], "--train_files", inputs["train"],
        "--label_files", str(Path(inputs["train"]).parent / "labels.json"), "--eval_fewrel", "none",
        "--max_seq_length", "32", "--per_device_train_batch_size", "8", "--max_steps", "6", "--save_strategy", "steps",
        "--save_steps", "2", "--logging_steps", "1", "--seed", "5", "--use_cpu", "--dataloader_pin_memory", "false",
        "--report_to", "none", "--disable_tqdm", "true",
    ]
    spec = {"argv": argv, "reference": str(tmp_path / "reference"),
            "kills": {moment: str(tmp_path / moment) for moment in EXPECTED_RESUME}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    driver = [sys.executable, str(REPO / "tests" / "kill_restart_driver.py"), str(tmp_path / "spec.json")]
    done = subprocess.run(driver, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])

    def log(name: str) -> str:
        return (tmp_path / name).read_text()

    assert results["reference"] == {"exit": 0}, log("reference.log")[-3000:]
    reference = load_file(tmp_path / "reference" / "model.safetensors")
    assert reference["logit_scale"].item() != pytest.approx(torch.tensor(1 / 0.07).log().item())  # it trained
    for moment, expected in EXPECTED_RESUME.items():
        result = results[moment]
        assert result["signal"] == signal.SIGKILL, (moment, result, log(f"{moment}.victim.log")[-3000:])
        if expected is not None:
            assert result["resumes_from"] == expected, (moment, result)
        else:  # killed as soon as checkpoint-4 appeared: checkpoint-4 only if its save had already finished
            assert result["left"][-1] == "checkpoint-4" and result["resumes_from"] in ("checkpoint-2", "checkpoint-4")
        assert result["restart"] == {"exit": 0}, (moment, log(f"{moment}.restart.log")[-3000:])
        if moment in SKIPPED:
            assert SKIPPED[moment] in log(f"{moment}.restart.log"), moment
        final = load_file(tmp_path / moment / "model.safetensors")
        assert final.keys() == reference.keys(), moment
        different = [name for name in reference if not torch.equal(final[name], reference[name])]
        assert not different, (moment, different[:5])


def write_checkpoint(path: Path, step: int) -> Path:
    """The files `Trainer._save_checkpoint` writes, with small stand-in contents."""
    path.mkdir(parents=True)
    save_file({"w": torch.arange(64.0)}, path / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        torch.save({"state": torch.ones(16)}, path / name)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
    return path


def cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {  # damage -> the reason checkpoint_problem gives
    "no state": (lambda c: (c / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    "cut state": (lambda c: cut(c / "trainer_state.json"), "trainer_state.json is unreadable (JSONDecodeError"),
    "other step": (lambda c: (c / "trainer_state.json").write_text('{"global_step": 3}'), "trainer_state.json holds global_step 3, not 4"),
    "no weights": (lambda c: (c / "model.safetensors").unlink(), "no model weights (model.safetensors)"),
    "cut weights": (lambda c: cut(c / "model.safetensors"), "model.safetensors is unreadable (Error while deserializing"),
    "no optimizer": (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    "cut scheduler": (lambda c: cut(c / "scheduler.pt"), "scheduler.pt is truncated or corrupt"),
    "no rng": (lambda c: (c / "rng_state.pth").unlink(), "rng_state.pth is missing"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_an_incomplete_checkpoint_is_skipped_with_its_reason(damage, tmp_path, caplog):
    write_checkpoint(tmp_path / "checkpoint-2", 2)
    newest = write_checkpoint(tmp_path / "checkpoint-4", 4)
    (tmp_path / "checkpoint-10.tmp").mkdir()  # not a checkpoint name: ignored
    assert checkpoint_problem(newest) is None and last_complete_checkpoint(tmp_path) == str(newest)
    apply, reason = DAMAGES[damage]
    apply(newest)
    assert reason in checkpoint_problem(newest)
    with caplog.at_level("WARNING", logger="modeling_sacon.training.checkpoints"):
        assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert f"skipping {newest}: {reason}" in caplog.text


def test_training_state_files_are_optional_for_save_only_model_runs(tmp_path):
    checkpoint = write_checkpoint(tmp_path / "checkpoint-4", 4)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        (checkpoint / name).unlink()
    assert checkpoint_problem(checkpoint, require_training_state=False) is None
    assert last_complete_checkpoint(tmp_path) is None  # and without a complete one, no checkpoint at all
    assert last_complete_checkpoint(tmp_path / "absent") is None
