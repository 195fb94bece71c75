"""Runs examples/pretrain.py in forked processes, SIGKILLs them at chosen moments and restarts them (for
tests/test_kill_restart.py).

One interpreter imports torch, transformers and the script once (about 9 s on two cores), then forks one process per
run, so each run costs its training only. Usage: `python tests/kill_restart_driver.py SPEC.json`, where SPEC holds
`argv` (the script's options but --output_dir), `reference` (an output_dir trained without interruption) and `kills`
({moment: output_dir}). Prints one JSON line: per moment, the signal that ended the victim, the checkpoints it left,
the one `last_complete_checkpoint` picks and the restart's exit code. Each process's output goes to OUTPUT_DIR.*.log.

Moments (a victim kills itself with SIGKILL at a deterministic point, except `external`):
    mid_step: after step 3's backward pass, before its optimizer step (checkpoint-2 is the last saved).
    weights_only: while saving checkpoint-4, after its weights and config, before optimizer/scheduler/RNG/state.
    truncated_weights: as weights_only, with checkpoint-4/model.safetensors cut to half its size (killed mid-write).
    truncated_state: halfway through writing checkpoint-4/trainer_state.json.
    after_save: checkpoint-4 complete, before the Trainer deletes old checkpoints.
    truncated_final: halfway through writing the final output_dir/model.safetensors (after the last checkpoint).
    external: the driver polls for the checkpoint-4 directory and SIGKILLs the run as soon as it appears.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import torch
import transformers.trainer as trainer_module
from transformers import TrainerState

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from modeling_sacon.training.checkpoints import last_complete_checkpoint  # noqa: E402
from modeling_sacon.training.trainer import SaconTrainer  # noqa: E402

KILL_CHECKPOINT = "checkpoint-4"


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_script", REPO / "examples" / "pretrain.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def truncate(path: str) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def install(moment: str) -> None:
    """Patch the forked victim so that it kills itself at `moment`."""
    if moment == "mid_step":
        step = SaconTrainer.training_step

        def training_step(self, *args, **kwargs):
            loss = step(self, *args, **kwargs)
            if self.state.global_step == 2:
                die()
            return loss

        SaconTrainer.training_step = training_step
    elif moment in ("weights_only", "truncated_weights"):
        save = trainer_module.Trainer._save_optimizer_and_scheduler

        def save_optimizer_and_scheduler(self, checkpoint):
            if os.path.basename(checkpoint) == KILL_CHECKPOINT:
                if moment == "truncated_weights":
                    truncate(os.path.join(checkpoint, "model.safetensors"))
                die()
            return save(self, checkpoint)

        trainer_module.Trainer._save_optimizer_and_scheduler = save_optimizer_and_scheduler
    elif moment == "truncated_state":
        save_state = TrainerState.save_to_json

        def save_to_json(self, path):
            if os.path.basename(os.path.dirname(path)) == KILL_CHECKPOINT:
                text = json.dumps(self.__dict__, indent=2)
                with open(path, "w") as handle:
                    handle.write(text[: len(text) // 2])
                die()
            return save_state(self, path)

        TrainerState.save_to_json = save_to_json
    elif moment == "after_save":
        rotate = trainer_module.rotate_checkpoints

        def rotate_checkpoints(output_dir, *args, **kwargs):
            if os.path.isdir(os.path.join(output_dir, KILL_CHECKPOINT)):
                die()
            return rotate(output_dir, *args, **kwargs)

        trainer_module.rotate_checkpoints = rotate_checkpoints
    elif moment == "truncated_final":
        save_model = SaconTrainer.save_model

        def final_save(self, output_dir=None, _internal_call=False):
            save_model(self, output_dir, _internal_call)
            if output_dir is None:  # the script's final save, not a checkpoint's
                truncate(os.path.join(self.args.output_dir, "model.safetensors"))
                die()

        SaconTrainer.save_model = final_save
    elif moment != "external":
        raise ValueError(f"unknown moment {moment!r}")


def fork_run(script, argv: list[str], log: str, moment: str | None = None) -> int:
    """Run script.main(argv) in a forked child with stdout/stderr in `log`; returns its pid."""
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        if moment is not None:
            install(moment)
        script.main(argv, defaults=script.CPU_BUDGET)  # exactly `python examples/pretrain.py ARGV`
        code = 0
    except BaseException:  # noqa: BLE001 - report anything, then leave without the parent's cleanup
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def outcome(pid: int) -> dict:
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return {"signal": os.WTERMSIG(status)}
    return {"exit": os.WEXITSTATUS(status)}


def kill_when_checkpoint_appears(pid: int, output_dir: str) -> None:
    target = os.path.join(output_dir, KILL_CHECKPOINT)
    while not os.path.isdir(target):
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            raise RuntimeError(f"{output_dir}: the run ended before {KILL_CHECKPOINT} appeared")
        time.sleep(0.0002)
    os.kill(pid, signal.SIGKILL)


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    torch.set_num_threads(1)  # before any fork: no OpenMP pool exists yet, and runs stay deterministic
    script = load_script()
    argv = spec["argv"]
    results: dict[str, dict] = {}
    reference = spec["reference"]
    results["reference"] = outcome(fork_run(script, [*argv, "--output_dir", reference], f"{reference}.log"))
    for moment, output_dir in spec["kills"].items():
        command = [*argv, "--output_dir", output_dir]
        pid = fork_run(script, command, f"{output_dir}.victim.log", moment)
        if moment == "external":
            kill_when_checkpoint_appears(pid, output_dir)
        result = outcome(pid)
        result["left"] = sorted(name for name in os.listdir(output_dir) if name.startswith("checkpoint-"))
        picked = last_complete_checkpoint(output_dir)
        result["resumes_from"] = os.path.basename(picked) if picked else None
        result["restart"] = outcome(fork_run(script, command, f"{output_dir}.restart.log"))
        results[moment] = result
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
