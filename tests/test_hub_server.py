"""End-to-end checks of the loopback FakeHub against the real huggingface_hub / transformers clients.

Client code runs in a subprocess because huggingface_hub reads HF_ENDPOINT at import time.
Each client script prints one JSON line as its last stdout line; the test compares it with
the server's own state, and every test also asserts the fake saw no unknown route, so any
drift in the client's HTTP usage fails loudly here rather than in the push/pull tests.
"""

from __future__ import annotations

import base64
import json
import textwrap
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

try:
    from tests.hub_server import FakeHub, git_blob_sha, hub_env, run_client
except ImportError:  # tests/ is not a package: pytest puts tests/ itself on sys.path
    from hub_server import FakeHub, git_blob_sha, hub_env, run_client

REPO = "org/some-repo"
CONFIG_V1 = b'{"model_type": "bert", "hidden_size": 32}\n'
CONFIG_V2 = b'{"model_type": "bert", "hidden_size": 64}\n'
WEIGHTS = bytes(range(256)) * 8 + b"\x00\xff" * 10
NOTES = b"nested file\n"
FILES_V1 = {"config.json": CONFIG_V1, "weights.bin": WEIGHTS, "sub/notes.txt": NOTES}


def run(hub: FakeHub, tmp_path: Path, code: str, **args: Any) -> Any:
    """Run client `code` (which sees `ARGS`) against `hub`; return its last stdout line as JSON."""
    env = hub_env(hub.endpoint, tmp_path)
    env["CLIENT_ARGS"] = json.dumps(args)
    prelude = "import json, os\nARGS = json.loads(os.environ['CLIENT_ARGS'])\n"
    proc = run_client(prelude + textwrap.dedent(code), env)
    assert proc.returncode == 0, f"client failed\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    assert hub.unknown_requests == [], hub.unknown_requests
    assert hub.errors == [], hub.errors[0]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def seed_two_commits(hub: FakeHub) -> tuple[str, str]:
    """Repo with FILES_V1 then a commit changing only config.json; returns both commit oids."""
    first = hub.commit(REPO, FILES_V1, message="v1")
    second = hub.commit(REPO, {"config.json": CONFIG_V2}, message="v2")
    return first, second


def write_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def test_create_repo_and_upload_folder_twice(fake_hub: FakeHub, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, FILES_V1)
    out = run(
        fake_hub,
        tmp_path,
        """
        from pathlib import Path
        from huggingface_hub import HfApi
        from huggingface_hub.errors import HfHubHTTPError

        api = HfApi()
        url = api.create_repo(ARGS["repo"], exist_ok=True)
        again = api.create_repo(ARGS["repo"], exist_ok=True)  # 409 swallowed by exist_ok
        try:
            api.create_repo(ARGS["repo"])
            conflict = None
        except HfHubHTTPError as err:
            conflict = err.response.status_code
        first = api.upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["src"], commit_message="v1")
        Path(ARGS["src"], "config.json").write_bytes(ARGS["config_v2"].encode())
        second = api.upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["src"], commit_message="v2")
        info = api.model_info(ARGS["repo"])
        print(json.dumps({
            "repo_id": url.repo_id, "again": again.repo_id, "conflict": conflict,
            "first": first.oid, "second": second.oid, "commit_url": second.commit_url,
            "sha": info.sha, "siblings": [s.rfilename for s in info.siblings],
        }))
        """,
        repo=REPO,
        src=str(src),
        config_v2=CONFIG_V2.decode(),
    )
    assert out["repo_id"] == out["again"] == REPO
    assert out["conflict"] == 409
    history = fake_hub.commits(REPO)
    assert [c.oid for c in history[1:]] == [out["first"], out["second"]]
    assert [c.title for c in history] == ["initial commit", "v1", "v2"]
    assert out["sha"] == out["second"] and out["commit_url"].endswith(f"/{REPO}/commit/{out['second']}")
    assert out["siblings"] == [".gitattributes", "config.json", "sub/notes.txt", "weights.bin"]
    files = fake_hub.files(REPO)
    assert files.pop(".gitattributes")
    assert files == {**FILES_V1, "config.json": CONFIG_V2}
    v1, v2 = history[1].files, history[2].files
    assert v1["config.json"] == CONFIG_V1
    assert {p for p in v1.keys() | v2.keys() if v1.get(p) != v2.get(p)} == {"config.json"}


def test_model_info_and_listings_match_commits(fake_hub: FakeHub, tmp_path: Path) -> None:
    first, second = seed_two_commits(fake_hub)
    out = run(
        fake_hub,
        tmp_path,
        """
        from huggingface_hub import HfApi, RepoFolder

        api = HfApi()
        latest = api.model_info(ARGS["repo"], files_metadata=True)
        pinned = api.model_info(ARGS["repo"], revision=ARGS["first"])
        root = api.list_repo_tree(ARGS["repo"])
        print(json.dumps({
            "sha": latest.sha, "pinned_sha": pinned.sha,
            "siblings": {s.rfilename: [s.size, s.blob_id] for s in latest.siblings},
            "files": api.list_repo_files(ARGS["repo"]),
            "root": sorted((e.path, isinstance(e, RepoFolder)) for e in root),
            "sub": [e.path for e in api.list_repo_tree(ARGS["repo"], path_in_repo="sub")],
            "commits": [c.commit_id for c in api.list_repo_commits(ARGS["repo"])],
            "main": api.list_repo_refs(ARGS["repo"]).branches[0].target_commit,
        }))
        """,
        repo=REPO,
        first=first,
    )
    files = fake_hub.files(REPO)
    assert out["sha"] == out["main"] == second and out["pinned_sha"] == first
    assert out["siblings"] == {p: [len(d), git_blob_sha(d)] for p, d in files.items()}
    assert out["files"] == sorted(files)
    assert out["root"] == [
        [".gitattributes", False], ["config.json", False], ["sub", True], ["weights.bin", False]
    ]
    assert out["sub"] == ["sub/notes.txt"]
    assert out["commits"] == [c.oid for c in reversed(fake_hub.commits(REPO))]


def test_snapshot_download_returns_identical_bytes(fake_hub: FakeHub, tmp_path: Path) -> None:
    _, second = seed_two_commits(fake_hub)
    out = run(
        fake_hub,
        tmp_path,
        """
        import base64
        from pathlib import Path
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(ARGS["repo"]))
        files = {
            p.relative_to(root).as_posix(): base64.b64encode(p.read_bytes()).decode()
            for p in root.rglob("*") if p.is_file()
        }
        print(json.dumps({"dir": root.name, "files": files}))
        """,
        repo=REPO,
    )
    assert out["dir"] == second  # cache snapshot folder is named after the resolved commit
    assert {p: base64.b64decode(d) for p, d in out["files"].items()} == fake_hub.files(REPO)


def test_download_errors_map_to_hub_exceptions(fake_hub: FakeHub, tmp_path: Path) -> None:
    seed_two_commits(fake_hub)
    out = run(
        fake_hub,
        tmp_path,
        """
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        caught = []
        for kwargs, expected in [
            (dict(repo_id=ARGS["repo"], filename="missing.bin"), EntryNotFoundError),
            (dict(repo_id="org/no-such-repo", filename="config.json"), RepositoryNotFoundError),
            (dict(repo_id=ARGS["repo"], filename="config.json", revision="no-such-branch"), RevisionNotFoundError),
        ]:
            try:
                hf_hub_download(**kwargs)
            except expected as err:
                caught.append(type(err).__name__)
            else:
                raise AssertionError(f"{kwargs} did not raise {expected.__name__}")
        print(json.dumps(caught))
        """,
        repo=REPO,
    )
    assert out == ["RemoteEntryNotFoundError", "RepositoryNotFoundError", "RevisionNotFoundError"]


def test_download_pinned_to_first_commit_returns_old_content(fake_hub: FakeHub, tmp_path: Path) -> None:
    first, _ = seed_two_commits(fake_hub)
    out = run(
        fake_hub,
        tmp_path,
        """
        from pathlib import Path
        from huggingface_hub import hf_hub_download

        old = Path(hf_hub_download(ARGS["repo"], "config.json", revision=ARGS["first"])).read_text()
        new = Path(hf_hub_download(ARGS["repo"], "config.json", revision="main")).read_text()
        print(json.dumps({"old": old, "new": new}))
        """,
        repo=REPO,
        first=first,
    )
    assert out == {"old": CONFIG_V1.decode(), "new": CONFIG_V2.decode()}


def test_upload_folder_run_as_future(fake_hub: FakeHub, tmp_path: Path) -> None:
    src = tmp_path / "src"
    write_tree(src, FILES_V1)
    out = run(
        fake_hub,
        tmp_path,
        """
        from huggingface_hub import HfApi

        api = HfApi()
        api.create_repo(ARGS["repo"], exist_ok=True)
        future = api.upload_folder(repo_id=ARGS["repo"], folder_path=ARGS["src"], run_as_future=True)
        print(json.dumps(future.result(timeout=60).oid))
        """,
        repo=REPO,
        src=str(src),
    )
    assert out == fake_hub.commits(REPO)[-1].oid
    assert {p: d for p, d in fake_hub.files(REPO).items() if p != ".gitattributes"} == FILES_V1


def test_transformers_autoconfig_and_push_to_hub(fake_hub: FakeHub, tmp_path: Path) -> None:
    bert_config = {
        "model_type": "bert", "architectures": ["BertModel"], "vocab_size": 99, "hidden_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 37,
    }
    fake_hub.commit(REPO, {"config.json": json.dumps(bert_config).encode()})
    out = run(
        fake_hub,
        tmp_path,
        """
        from transformers import AutoConfig, BertConfig

        loaded = AutoConfig.from_pretrained(ARGS["repo"])
        url = BertConfig(hidden_size=48, num_attention_heads=3).push_to_hub("org/pushed-config")
        reloaded = AutoConfig.from_pretrained("org/pushed-config")
        print(json.dumps({
            "cls": type(loaded).__name__, "hidden": loaded.hidden_size, "layers": loaded.num_hidden_layers,
            "url": str(url), "reloaded": [type(reloaded).__name__, reloaded.hidden_size],
        }))
        """,
        repo=REPO,
    )
    assert out["cls"] == "BertConfig" and (out["hidden"], out["layers"]) == (32, 2)
    assert out["reloaded"] == ["BertConfig", 48]
    pushed = fake_hub.files("org/pushed-config")
    assert {"config.json", "README.md"} <= set(pushed)
    assert json.loads(pushed["config.json"])["hidden_size"] == 48


def test_resolve_headers_and_unknown_routes(fake_hub: FakeHub) -> None:
    """The raw HTTP contract the download path relies on, checked without any client library."""
    _, second = seed_two_commits(fake_hub)
    head = urllib.request.Request(f"{fake_hub.endpoint}/{REPO}/resolve/main/weights.bin", method="HEAD")
    with urllib.request.urlopen(head) as resp:
        assert resp.headers["X-Repo-Commit"] == second
        assert resp.headers["ETag"] == f'"{git_blob_sha(WEIGHTS)}"'
        assert int(resp.headers["Content-Length"]) == len(WEIGHTS)
    ranged = urllib.request.Request(
        f"{fake_hub.endpoint}/{REPO}/resolve/main/weights.bin", headers={"Range": "bytes=10-"}
    )
    with urllib.request.urlopen(ranged) as resp:
        assert resp.status == 206 and resp.read() == WEIGHTS[10:]
    for path, code in [(f"/{REPO}/resolve/main/missing.bin", "EntryNotFound"), ("/api/no/such/route", None)]:
        try:
            urllib.request.urlopen(f"{fake_hub.endpoint}{path}")
        except urllib.error.HTTPError as err:
            assert err.code == 404 and err.headers.get("X-Error-Code") == code
            assert "error" in json.loads(err.read())
        else:
            raise AssertionError(f"{path} did not 404")
    assert fake_hub.unknown_requests == [("GET", "/api/no/such/route")]
