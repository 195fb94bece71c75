"""Hub pushes that survive a failing Hub: transient failures are logged and retried with exponential back-off.

What huggingface_hub 2.4 already retries (`utils/_http.py`, `http_backoff`: 5 retries, waits 1, 2, 4, 8, 8 s, on
HTTP 408/429/5xx, timeouts, network errors and dropped connections): the `preupload` call and LFS/Xet transfers of
`upload_folder`, and its commit call on the Xet pipeline only. Not retried: the commit call of the regular (non-Xet)
path, `create_repo`, and anything once a request fails past those retries. Its HTTP client has no timeout.

What the Trainer (transformers 5.x) does with a failure: a checkpoint push runs as a `Future` whose exception nobody
reads (`PushInProgress.wait_until_done` only waits), so it is lost without a word; the final `push_to_hub` raises.

Here: `retry_with_backoff` retries a call on transient errors (the same classes as `http_backoff`), logging each; the
`CheckpointPushRetryCallback` finds a failed checkpoint push when the next push begins (before the Trainer copies the
next checkpoint's files into `output_dir`, so the folder still holds the failed push's files) and pushes it again;
`SaconTrainer.push_to_hub` / `init_hf_repo` retry the final push and the repository creation. A Hub commit is atomic,
and `output_dir` is never changed while an upload reads it, so no commit holds files of two checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

import httpx2
from huggingface_hub.errors import HfHubHTTPError
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy
from transformers.utils import logging
from transformers.utils.hub import hf_api

logger = logging.get_logger(__name__)

T = TypeVar("T")
TRANSIENT_STATUS_CODES = (408, 429, 500, 502, 503, 504)  # as huggingface_hub's http_backoff
TRANSIENT_EXCEPTIONS = (httpx2.TimeoutException, httpx2.NetworkError, httpx2.RemoteProtocolError)
# The Trainer's own arguments of a checkpoint push (transformers.Trainer._push_from_checkpoint).
PUSH_IGNORE_PATTERNS = ["_*", f"{PREFIX_CHECKPOINT_DIR}-*"]

__all__ = ["CheckpointPushRetryCallback", "HubPushError", "is_transient", "retry_with_backoff"]


class HubPushError(RuntimeError):
    """A push to the Hub failed for good (a permanent error, or transient ones past the retries)."""


def is_transient(error: BaseException) -> bool:
    """An error worth retrying: HTTP 408/429/5xx, a timeout, a network error or a dropped connection, raised or
    as the cause of what was raised."""
    while error is not None:
        if isinstance(error, TRANSIENT_EXCEPTIONS):
            return True
        if isinstance(error, HfHubHTTPError) and error.response is not None:
            return error.response.status_code in TRANSIENT_STATUS_CODES
        error = error.__cause__ or error.__context__
    return False


def retry_with_backoff(
    call: Callable[[], T], what: str, retries: int = 5, backoff: float = 2.0, max_backoff: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """`call()`, retried up to `retries` times on transient errors after waits of backoff, 2 x backoff, ... (at most
    `max_backoff` seconds), each failure logged with `what`. Raises `HubPushError` naming `what`, the attempts and the
    last error when it fails for good."""
    for attempt in range(retries + 1):
        try:
            return call()
        except Exception as err:  # noqa: BLE001 - classified just below
            transient = is_transient(err)
            if not transient or attempt == retries:
                tries = f"{attempt + 1} attempt{'s' if attempt else ''}"
                kind = "transient errors" if transient else "a permanent error"
                raise HubPushError(f"{what} failed after {tries} ({kind}): {type(err).__name__}: {err}") from err
            wait = min(max_backoff, backoff * 2**attempt)
            logger.warning(f"{what} failed (attempt {attempt + 1} of {retries + 1}): {type(err).__name__}: {err}; "
                           f"retrying in {wait:g} s")
            sleep(wait)
    raise AssertionError("unreachable")


class CheckpointPushRetryCallback(TrainerCallback):
    """Pushes a failed checkpoint push again, with back-off, when the next push begins (`on_push_begin`).

    `on_save` notes which step the push started by that save belongs to. Register it before any callback that writes
    into `output_dir` at `on_push_begin` (the model card): the retry must upload the failed push's files. A checkpoint
    push that fails for good is logged and training goes on (the next push carries newer files); only the model
    folder is retried, not `hub_strategy="checkpoint"`'s extra upload of the checkpoint folder (logged if it failed).

    Args:
        trainer: the trainer whose `push_in_progress` to watch; `args.hub_push_retries` / `hub_push_backoff` (when
            set) size the retries.
    """

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.pushes: dict[Future, str | None] = {}  # each push not yet checked -> its commit message (None: not retried)
        self.seen: set[Future] = set()

    def on_save(self, args, state, control, **kwargs):
        pending = getattr(self.trainer, "push_in_progress", None)
        new = [job for job in (pending.jobs if pending is not None else []) if job not in self.seen]
        # as the Trainer words it; it starts the model folder's push first (then, maybe, the checkpoint folder's)
        step = f"step {state.global_step}" if args.save_strategy == SaveStrategy.STEPS else f"epoch {int(state.epoch or 0)}"
        for index, job in enumerate(new):
            self.pushes[job] = f"Training in progress, {step}" if index == 0 else None
        self.seen.update(new)
        return control

    def on_push_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.pushes:
            return control
        pending = self.trainer.push_in_progress
        if pending is not None and not pending.is_done():
            pending.wait_until_done()
        pushes, self.pushes = self.pushes, {}
        for job, message in pushes.items():
            error = job.exception()
            if error is None:
                continue
            if message is None:
                logger.error(f"a push of a checkpoint folder failed and is not retried: {error}")
                continue
            logger.warning(f"the push {message!r} failed ({type(error).__name__}: {error}); pushing it again")
            try:
                retry_with_backoff(
                    lambda: hf_api().upload_folder(
                        repo_id=self.trainer.hub_model_id, folder_path=args.output_dir, commit_message=message,
                        token=args.hub_token, ignore_patterns=PUSH_IGNORE_PATTERNS, revision=args.hub_revision,
                    ),
                    what=f"push {message!r} to {self.trainer.hub_model_id}", **push_retry_options(args),
                )
            except HubPushError as err:
                logger.error(f"{err}; training goes on, the next push carries newer files")
        return control


def push_retry_options(args) -> dict[str, float]:
    """`retry_with_backoff`'s retries and back-off from `SaconTrainingArguments` (defaults for plain ones)."""
    options = {}
    if getattr(args, "hub_push_retries", None) is not None:
        options["retries"] = args.hub_push_retries
    if getattr(args, "hub_push_backoff", None) is not None:
        options["backoff"] = args.hub_push_backoff
    return options
