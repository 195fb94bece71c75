"""Resume only from complete checkpoints: a run killed while saving leaves a half-written `checkpoint-N`.

`Trainer._save_checkpoint` (transformers 5.x) writes straight into `checkpoint-N` (no temporary directory, no rename):
weights and config, then optimizer, scheduler and RNG states, then `trainer_state.json`, then pushes and deletes the
oldest checkpoints. A kill at any point leaves a directory that `get_last_checkpoint` takes for the newest checkpoint:
without weights the Trainer refuses it ("Can't find a valid checkpoint"), without optimizer or RNG state it resumes
*silently inexactly* (the Trainer skips missing states with an info line), with a truncated file it fails to read it.
`last_complete_checkpoint` checks each checkpoint, newest first, and logs why it skips one.
"""

from __future__ import annotations

import glob
import json
import os
import re
import zipfile

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, WEIGHTS_NAME, logging

from ..checkpoint_files import safetensors_problem

logger = logging.get_logger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"  # as transformers.trainer names them
OPTIMIZER_NAMES = ("optimizer.pt", "optimizer.bin")
SCHEDULER_NAME = "scheduler.pt"
_CHECKPOINT_RE = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")

__all__ = ["checkpoint_problem", "last_complete_checkpoint"]


def _torch_file_problem(path: str) -> str | None:
    """torch.save writes a zip archive whose directory is at its end: a truncated file has none."""
    if not os.path.isfile(path):
        return f"{os.path.basename(path)} is missing"
    if not zipfile.is_zipfile(path):
        return f"{os.path.basename(path)} is truncated or corrupt (not a complete torch archive)"
    return None


def _weights_problem(checkpoint: str) -> str | None:
    index = os.path.join(checkpoint, SAFE_WEIGHTS_INDEX_NAME)
    if os.path.isfile(index):
        try:
            shards = sorted(set(json.load(open(index))["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as err:
            return f"{SAFE_WEIGHTS_INDEX_NAME} is unreadable ({err})"
    elif os.path.isfile(os.path.join(checkpoint, SAFE_WEIGHTS_NAME)):
        shards = [SAFE_WEIGHTS_NAME]
    elif os.path.isfile(os.path.join(checkpoint, WEIGHTS_NAME)):
        return _torch_file_problem(os.path.join(checkpoint, WEIGHTS_NAME))
    else:
        return f"no model weights ({SAFE_WEIGHTS_NAME})"
    for shard in shards:
        path = os.path.join(checkpoint, shard)
        if not os.path.isfile(path):
            return f"{shard} is missing"
        problem = safetensors_problem(path)
        if problem is not None:
            return f"{shard} is unreadable ({problem})"
    return None


def checkpoint_problem(checkpoint: str | os.PathLike, require_training_state: bool = True) -> str | None:
    """Why `checkpoint` cannot be resumed from exactly; None when it is complete.

    Complete: `trainer_state.json` parses and its `global_step` is the directory's step (the Trainer writes it last),
    the weights read (safetensors headers, and every byte they promise), and, with `require_training_state` (False for
    `save_only_model` runs), optimizer, scheduler and at least one RNG state are complete torch archives.
    """
    checkpoint = str(checkpoint)
    state_file = os.path.join(checkpoint, TRAINER_STATE_NAME)
    if not os.path.isfile(state_file):
        return f"{TRAINER_STATE_NAME} is missing (the save did not finish)"
    try:
        with open(state_file) as handle:
            step = json.load(handle)["global_step"]
    except (ValueError, KeyError, TypeError) as err:
        return f"{TRAINER_STATE_NAME} is unreadable ({type(err).__name__}: {err})"
    match = _CHECKPOINT_RE.match(os.path.basename(os.path.normpath(checkpoint)))
    if match is not None and int(match[1]) != step:
        return f"{TRAINER_STATE_NAME} holds global_step {step}, not {match[1]}"
    problem = _weights_problem(checkpoint)
    if problem is None and require_training_state:
        optimizer = next((name for name in OPTIMIZER_NAMES if os.path.isfile(os.path.join(checkpoint, name))), OPTIMIZER_NAMES[0])
        rng_files = sorted(glob.glob(os.path.join(checkpoint, "rng_state*.pth"))) or [os.path.join(checkpoint, "rng_state.pth")]
        for path in [os.path.join(checkpoint, optimizer), os.path.join(checkpoint, SCHEDULER_NAME), *rng_files]:
            problem = problem or _torch_file_problem(path)
    return problem


def last_complete_checkpoint(output_dir: str | os.PathLike, require_training_state: bool = True) -> str | None:
    """The newest `checkpoint-N` in `output_dir` that `checkpoint_problem` accepts (None: there is none), logging a
    warning for each newer one skipped and why. A drop-in for `transformers.trainer_utils.get_last_checkpoint`."""
    output_dir = str(output_dir)
    if not os.path.isdir(output_dir):
        return None
    steps = {
        int(match[1]): os.path.join(output_dir, name)
        for name in os.listdir(output_dir)
        if (match := _CHECKPOINT_RE.match(name)) and os.path.isdir(os.path.join(output_dir, name))
    }
    for step in sorted(steps, reverse=True):
        problem = checkpoint_problem(steps[step], require_training_state)
        if problem is None:
            return steps[step]
        logger.warning(f"skipping {steps[step]}: {problem}; resuming from an earlier checkpoint")
    return None
