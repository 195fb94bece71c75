"""Pushes to a failing Hub lose nothing: transient failures (5xx answers, dropped connections, lost answers, slow
uploads) of the repository's creation, of checkpoint pushes and of the final push are logged and retried with
back-off (`modeling_sacon.training.hub_pushes`), and no commit holds files of two checkpoints."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import Future
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError

from modeling_sacon.training.hub_pushes import HubPushError, is_transient, retry_with_backoff

from hub_server import hub_env
from test_pretrain_push import CODE_FILES, REPO, REPO_ID, inputs  # noqa: F401 - fixture
from test_trainer import arguments, data, tiny, trainer_for  # noqa: F401 - fixture


def http_error(status: int) -> HfHubHTTPError:
    request = httpx2.Request("POST", "http://hub.invalid/api/models/org/x/commit/main")
    return HfHubHTTPError(f"HTTP {status}", response=httpx2.Response(status, request=request))


class Flaky:
    """A call that raises the given errors, one per call, then returns "done"."""

    def __init__(self, *errors: BaseException):
        self.errors, self.calls = list(errors), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def test_transient_errors_are_retried_with_doubling_waits(caplog):
    call = Flaky(http_error(503), httpx2.RemoteProtocolError("Server disconnected"), httpx2.ReadTimeout("timed out"))
    waits: list[float] = []
    with caplog.at_level("WARNING", logger="modeling_sacon.training.hub_pushes"):
        assert retry_with_backoff(call, "push of step 3", retries=3, backoff=0.5, max_backoff=1.5, sleep=waits.append) == "done"
    assert call.calls == 4 and waits == [0.5, 1.0, 1.5]
    assert "push of step 3 failed (attempt 1 of 4): HfHubHTTPError: HTTP 503; retrying in 0.5 s" in caplog.text
    assert "(attempt 3 of 4): ReadTimeout: timed out; retrying in 1.5 s" in caplog.text


def test_permanent_and_exhausted_failures_raise_naming_the_push():
    waits: list[float] = []
    with pytest.raises(HubPushError, match=r"^push of x failed after 1 attempt \(a permanent error\): HfHubHTTPError: HTTP 401"):
        retry_with_backoff(Flaky(http_error(401)), "push of x", sleep=waits.append)
    assert waits == []
    call = Flaky(*[http_error(502)] * 3)
    with pytest.raises(HubPushError, match=r"^push of x failed after 3 attempts \(transient errors\): .*HTTP 502") as caught:
        retry_with_backoff(call, "push of x", retries=2, backoff=0.0, sleep=waits.append)
    assert call.calls == 3 and isinstance(caught.value.__cause__, HfHubHTTPError)


def test_transient_means_408_429_5xx_timeouts_and_lost_connections():
    assert [is_transient(http_error(s)) for s in (408, 429, 500, 504, 400, 401, 404, 412)] == [True] * 4 + [False] * 4
    wrapped = RuntimeError("upload failed")
    wrapped.__cause__ = httpx2.ConnectError("refused")
    assert is_transient(wrapped) and not is_transient(ValueError("bad folder"))


def test_pretrain_pushes_everything_through_a_failing_hub(fake_hub, inputs, tmp_path):
    fake_hub.inject("POST", r"^/api/repos/create$", 503)
    # commit calls, in order: step 1 (503, lost by the Trainer's future; pushed again when step 2's push begins:
    # dropped connection, then it lands), step 2 (slow), the final push (502, then committed with its answer lost:
    # the retry finds every file already there and makes no second commit)
    fake_hub.inject("POST", r"/commit/main$", 503, "drop", "ok", 0.3, 502, "drop_after")
    env = hub_env(fake_hub.endpoint, tmp_path)
    out = tmp_path / "out"
    command = [
        sys.executable, str(REPO / "examples" / "pretrain.py"),
        "--sentence_model_name_or_path", inputs["backbone"], "--train_files", inputs["train"],
        "--label_files", str(tmp_path / "labels.json"), "--eval_fewrel", "none", "--max_seq_length", "32",
        "--per_device_train_batch_size", "8", "--max_steps", "2", "--save_steps", "1", "--logging_steps", "1",
        "--output_dir", str(out), "--use_cpu", "--dataloader_pin_memory", "false", "--report_to", "none",
        "--push_to_hub", "--hub_model_id", REPO_ID, "--hub_push_backoff", "0.01", "--hub_push_retries", "3",
    ]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:]
    assert not fake_hub.unknown_requests and not fake_hub.errors, (fake_hub.unknown_requests, fake_hub.errors)
    assert [fault for _, _, fault in fake_hub.injected] == [503, 503, "drop", 0.3, 502, "drop_after"]

    assert "creating the Hub repository org/sacon-base failed (attempt 1 of 4): HfHubHTTPError" in log
    assert "the push 'Training in progress, step 1' failed (HfHubHTTPError" in log
    assert "push 'Training in progress, step 1' to org/sacon-base failed (attempt 1 of 4): RemoteProtocolError" in log
    assert "push 'End of training' to org/sacon-base failed (attempt 1 of 4): HfHubHTTPError" in log
    assert "push 'End of training' to org/sacon-base failed (attempt 2 of 4): RemoteProtocolError" in log

    commits = fake_hub.commits(REPO_ID)
    titles = [commit.title for commit in commits[1:]]
    assert titles == ["Training in progress, step 1", "Training in progress, step 2", "End of training"]
    final = (out / "model.safetensors").read_bytes()
    weights = {1: (out / "checkpoint-1" / "model.safetensors").read_bytes(),
               2: (out / "checkpoint-2" / "model.safetensors").read_bytes()}
    assert weights[1] != weights[2] and final == weights[2]
    for commit, step in zip(commits[1:], (1, 2, 2)):
        files = fake_hub.files(REPO_ID, commit.oid)
        assert files["model.safetensors"] == weights[step], commit.title  # one checkpoint's weights ...
        assert json.loads(files["config.json"]) == json.loads((out / f"checkpoint-{step}" / "config.json").read_text())
        assert {"README.md", "tokenizer.json", *CODE_FILES} <= set(files), commit.title  # ... with all it needs
    assert fake_hub.files(REPO_ID)["model.safetensors"] == final


class StubApi:
    """Stands for the Hub client of the Trainer (`hf_api()`): each upload takes the next failure (None: succeeds)."""

    def __init__(self, *failures: BaseException | None):
        self.failures, self.uploads = list(failures), []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, **kwargs):
        self.uploads.append(kwargs["commit_message"])
        error = self.failures.pop(0) if self.failures else None
        if kwargs.get("run_as_future"):  # the Trainer's checkpoint pushes: the error stays in the future
            job = Future()
            job.set_exception(error) if error else job.set_result("ok")
            return job
        if error:
            raise error
        return "ok"


@pytest.fixture
def stub_hub(monkeypatch):
    def install(*failures):
        api = StubApi(*failures)
        for module in ("transformers.trainer", "modeling_sacon.training.trainer", "modeling_sacon.training.hub_pushes"):
            monkeypatch.setattr(f"{module}.hf_api", lambda: api)
        return api

    return install


def test_a_final_push_that_keeps_failing_raises_saying_where_the_model_is(stub_hub, processor, data, tmp_path):
    api = stub_hub(http_error(503), httpx2.ReadTimeout("timed out"), http_error(500))
    args = arguments(tmp_path, save_strategy="no", push_to_hub=True, hub_model_id="org/x", hub_push_retries=2,
                     hub_push_backoff=0.0)
    trainer = trainer_for(processor, data, tiny(processor, 0), args)
    with pytest.raises(HubPushError) as caught:
        trainer.push_to_hub()
    assert str(caught.value) == (
        f"push 'End of training' to org/x failed after 3 attempts (transient errors): HfHubHTTPError: HTTP 500. The "
        f"model is saved in {tmp_path}: upload it later with `hf upload org/x {tmp_path}`"
    )
    assert api.uploads == ["End of training"] * 3 and (tmp_path / "model.safetensors").is_file()


def test_a_checkpoint_push_that_fails_for_good_is_logged_and_training_goes_on(stub_hub, processor, data, tmp_path, caplog,
                                                                              one_thread):
    # step 1's push fails, and so do both its retries; step 2's push and the final push succeed
    api = stub_hub(http_error(503), http_error(503), http_error(503))
    args = arguments(tmp_path, max_steps=2, save_steps=1, push_to_hub=True, hub_model_id="org/x", hub_push_retries=1,
                     hub_push_backoff=0.0)
    trainer = trainer_for(processor, data, tiny(processor, 0), args)
    with caplog.at_level("WARNING", logger="modeling_sacon.training.hub_pushes"):
        trainer.train()
        trainer.push_to_hub()
    assert trainer.state.global_step == 2
    assert api.uploads == ["Training in progress, step 1"] * 3 + ["Training in progress, step 2", "End of training"]
    assert "the push 'Training in progress, step 1' failed (HfHubHTTPError: HTTP 503); pushing it again" in caplog.text
    assert ("push 'Training in progress, step 1' to org/x failed after 2 attempts (transient errors): HfHubHTTPError: "
            "HTTP 503; training goes on, the next push carries newer files") in caplog.text


TIMEOUT_CLIENT = """
import httpx2
from huggingface_hub import HfApi, set_client_factory
from huggingface_hub.utils._http import hf_request_event_hook
from modeling_sacon.training.hub_pushes import retry_with_backoff

# huggingface_hub's client waits for ever; this one, as a user on a flaky network may set it, gives up after 0.2 s
set_client_factory(lambda: httpx2.Client(event_hooks={"request": [hf_request_event_hook]}, follow_redirects=True, timeout=0.2))
api = HfApi()
attempts = []


def upload():
    attempts.append(1)
    return api.upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["src"], commit_message="v1")


info = retry_with_backoff(upload, "upload", backoff=0.01)
print(json.dumps({"oid": info.oid, "attempts": len(attempts)}))
"""


def test_a_timed_out_commit_is_retried_and_every_commit_is_whole(fake_hub, tmp_path):
    from test_hub_server import FILES_V1, run, write_tree

    write_tree(tmp_path / "src", FILES_V1)
    fake_hub.create_repo("org/slow")
    fake_hub.inject("POST", r"/commit/main$", 0.6)  # the first commit is served after 0.6 s: the client timed out
    out = run(fake_hub, tmp_path, TIMEOUT_CLIENT, repo="org/slow", src=str(tmp_path / "src"))
    assert out["attempts"] == 2 and fake_hub.injected == [("POST", "/api/models/org/slow/commit/main", 0.6)]
    deadline = time.monotonic() + 3
    while len(fake_hub.commits("org/slow")) < 3 and time.monotonic() < deadline:  # the timed-out commit lands late
        time.sleep(0.05)
    commits = fake_hub.commits("org/slow")[1:]
    # the retry's commit and the late one (which the retry skips as empty when it lands first): the same files
    assert 1 <= len(commits) <= 2 and out["oid"] in [commit.oid for commit in commits]
    for commit in commits:
        assert {path: data for path, data in commit.files.items() if path != ".gitattributes"} == FILES_V1
