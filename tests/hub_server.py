"""A loopback fake of the Hugging Face Hub HTTP API, for offline push/pull tests.

Only the standard library is used, so the server can run inside the pytest process
while the *client* (``huggingface_hub`` / ``transformers``) runs in a subprocess.
The subprocess is needed because ``huggingface_hub`` reads ``HF_ENDPOINT`` (and the
cache/token/xet settings) once, at import time: see :func:`hub_env` and :func:`run_client`.

Storage is in memory. A repo is a list of commits, each commit is a full snapshot
``{path: bytes}`` with a 40-hex sha, and branches point at commits. Like the real Hub,
``create_repo`` makes an initial commit that holds a ``.gitattributes`` file.

The preupload endpoint answers ``uploadMode: "regular"`` for every file, so the client
sends file contents base64-encoded inside the commit call: no LFS or Xet endpoint is
needed. Requests that no route matches get a 404 and are logged to stderr and recorded
in :attr:`FakeHub.unknown_requests`, so a test can fail loudly on API drift.

Implemented endpoints (``{type}`` is ``models``, ``datasets``, ``spaces`` or ``kernels``;
dataset/space file URLs carry a ``datasets/`` or ``spaces/`` prefix):

- ``GET  /api/whoami-v2``, ``POST /api/validate-yaml``, ``GET /api/agent-harnesses``
- ``POST /api/repos/create`` (409 + ``url`` when it exists), ``DELETE /api/repos/delete``
- ``GET  /api/{type}/{repo}`` and ``/api/{type}/{repo}/revision/{rev}`` (repo info)
- ``GET  /api/{type}/{repo}/tree/{rev}[/{path}]?recursive=`` (single page)
- ``POST /api/{type}/{repo}/paths-info/{rev}``
- ``POST /api/{type}/{repo}/preupload/{rev}``, ``POST /api/{type}/{repo}/commit/{rev}`` (NDJSON;
  ``create_pr=1`` opens ``refs/pr/N``)
- ``GET  /api/{type}/{repo}/refs``, ``GET /api/{type}/{repo}/commits/{rev}``
- ``POST|DELETE /api/{type}/{repo}/branch/{branch}``
- ``HEAD|GET /[datasets/|spaces/]{repo}/resolve/{rev}/{path}`` (``Range`` supported)

These also serve ``datasets.load_dataset`` of a dataset repo (card, ``configs``, Parquet files; a revision such as
``refs/convert/parquet``, made with :meth:`FakeHub.create_branch`, URL-encoded in the path).

Fault injection (:meth:`FakeHub.inject`): the next requests matching a method and a path pattern get, in order, an
HTTP error status, a dropped connection (before or after the request takes effect), or a delay (a slow upload; a
timeout for a client with a shorter one). :attr:`FakeHub.injected` records what was injected where.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["DEFAULT_GITATTRIBUTES", "Commit", "Fault", "FakeHub", "HubError", "git_blob_sha", "hub_env", "run_client"]

_REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
# Second path segment values that mean "action", not "repo name" (lets 1-segment repo ids work).
_REPO_ACTIONS = {"revision", "tree", "preupload", "commit", "refs", "commits", "branch", "paths-info"}
_SHA_RE = re.compile(r"[0-9a-f]{40}")

# What the real Hub puts in the first commit of a new repo (shortened).
DEFAULT_GITATTRIBUTES = b"""\
*.bin filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
"""


def git_blob_sha(data: bytes) -> str:
    """Git blob sha1: the ETag / ``oid`` the Hub reports for regular (non-LFS) files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class Commit:
    """One immutable snapshot of a repo; ``files`` is the full tree, not a diff."""

    oid: str
    title: str
    description: str
    parent: str | None
    files: Mapping[str, bytes]
    date: datetime


@dataclass
class _Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    commits: dict[str, Commit] = field(default_factory=dict)  # insertion-ordered
    branches: dict[str, str] = field(default_factory=dict)  # "main" / "refs/pr/1" -> oid
    next_pr: int = 1


class HubError(Exception):
    """An HTTP error answer, carrying the ``X-Error-Code`` the client maps to exception types."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = headers or {}


class FakeHub:
    """In-memory Hub served on 127.0.0.1; use as a context manager or call start()/stop()."""

    def __init__(self, user: str = "fake-user", host: str = "127.0.0.1", port: int = 0) -> None:
        self.user = user
        self._addr = (host, port)
        self._lock = threading.RLock()
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._counter = itertools.count()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.endpoint = ""
        #: Every ``(method, path)`` served, in order: handy to assert on what a client did.
        self.requests: list[tuple[str, str]] = []
        #: Requests no route matched (answered 404): should stay empty in a healthy test.
        self.unknown_requests: list[tuple[str, str]] = []
        #: Tracebacks of requests that crashed the fake (answered 500).
        self.errors: list[str] = []
        #: Seconds each preupload call waits: a slow upload, so a client's background commit is still pending
        #: while its caller moves on (the client hashes files before this call and reads them again after it).
        self.preupload_delay = 0.0
        self._faults: list[tuple[str, re.Pattern[str], collections.deque[Fault]]] = []
        #: ``(method, path, fault)`` of every fault injected, in order.
        self.injected: list[tuple[str, str, Fault]] = []

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> FakeHub:
        """Bind (port 0 = a free port) and serve in a daemon thread."""
        if self._server is not None:
            return self
        server = ThreadingHTTPServer(self._addr, _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        host, port = server.server_address[:2]
        self.endpoint = f"http://{host}:{port}"
        self._server = server
        # Short poll interval: stop() waits up to one interval, once per test.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-hub", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test-side API

    def create_repo(
        self, repo_id: str, repo_type: str = "model", private: bool = False, exist_ok: bool = False
    ) -> None:
        """Create a repo directly (no HTTP), with the Hub's initial ``.gitattributes`` commit."""
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                if exist_ok:
                    return
                raise ValueError(f"{repo_type} repo {repo_id} already exists")
            repo = _Repo(repo_type, repo_id, private, datetime.now(timezone.utc))
            self._repos[(repo_type, repo_id)] = repo
            self._add_commit(repo, "main", {".gitattributes": DEFAULT_GITATTRIBUTES}, "initial commit", "")

    def commit(
        self,
        repo_id: str,
        files: Mapping[str, bytes],
        *,
        deletions: tuple[str, ...] = (),
        message: str = "seed",
        revision: str = "main",
        repo_type: str = "model",
    ) -> str:
        """Seed a commit on a branch directly (no HTTP), creating the repo if needed; returns its oid.

        Lets pull tests set up a repo without running a push client first.
        """
        with self._lock:
            self.create_repo(repo_id, repo_type, exist_ok=True)
            repo = self._repos[(repo_type, repo_id)]
            if revision not in repo.branches:
                raise KeyError(f"unknown branch {revision!r} of {repo_type} {repo_id}")
            snapshot = dict(repo.commits[repo.branches[revision]].files)
            for path in deletions:
                snapshot.pop(path, None)
            snapshot.update(files)
            return self._add_commit(repo, revision, snapshot, message, "").oid

    def create_branch(self, repo_id: str, branch: str, repo_type: str = "model", start: str = "main") -> None:
        """A branch at ``start`` (e.g. ``refs/convert/parquet``, where the Hub keeps a dataset's Parquet conversion)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = self._resolve(repo, start)
            if commit is None:
                raise KeyError(f"unknown revision {start!r} of {repo_type} {repo_id}")
            repo.branches[branch] = commit.oid

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """Full ``{path: bytes}`` snapshot at a branch or commit sha (KeyError if unknown)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = self._resolve(repo, revision)
            if commit is None:
                raise KeyError(f"unknown revision {revision!r} of {repo_type} {repo_id}")
            return dict(commit.files)

    def commits(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[Commit]:
        """History reachable from ``revision``, oldest first (index 0 is the initial commit)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            commit = self._resolve(repo, revision)
            history: list[Commit] = []
            while commit is not None:
                history.append(commit)
                commit = repo.commits.get(commit.parent) if commit.parent else None
            return history[::-1]

    def inject(self, method: str, path_pattern: str, *faults: Fault) -> None:
        """The next ``len(faults)`` requests whose method is ``method`` and whose path matches ``path_pattern`` (a regex,
        searched) get these faults, one each, in order: an ``int`` HTTP status (answered with an error), ``"drop"``
        (the connection closed before the request takes effect, no answer), ``"drop_after"`` (it takes effect, then
        the connection is closed: the answer is lost), a ``float`` delay in seconds before serving it normally, or
        ``"ok"`` (served normally)."""
        with self._lock:
            self._faults.append((method, re.compile(path_pattern), collections.deque(faults)))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for wanted, pattern, queue in self._faults:
                if queue and wanted == method and pattern.search(path):
                    fault = queue.popleft()
                    if fault != "ok":
                        self.injected.append((method, path, fault))
                    return fault
        return None

    def repo_exists(self, repo_id: str, repo_type: str = "model") -> bool:
        with self._lock:
            return (repo_type, repo_id) in self._repos

    # ------------------------------------------------------------------ internals

    def _add_commit(self, repo: _Repo, branch: str, files: dict[str, bytes], title: str, description: str) -> Commit:
        parent = repo.branches.get(branch)
        seed = f"{repo.repo_type}/{repo.repo_id}\n{parent}\n{title}\n{next(self._counter)}\n"
        seed += "\n".join(f"{p}:{git_blob_sha(d)}" for p, d in sorted(files.items()))
        oid = hashlib.sha1(seed.encode()).hexdigest()
        commit = Commit(oid, title, description, parent, dict(files), datetime.now(timezone.utc))
        repo.commits[oid] = commit
        repo.branches[branch] = oid
        return commit

    @staticmethod
    def _resolve(repo: _Repo, revision: str) -> Commit | None:
        if revision in repo.branches:
            return repo.commits[repo.branches[revision]]
        return repo.commits.get(revision) if _SHA_RE.fullmatch(revision) else None

    def _repo_url(self, repo: _Repo) -> str:
        return f"{self.endpoint}/{_URL_PREFIX[repo.repo_type]}{repo.repo_id}"


# ---------------------------------------------------------------------- HTTP layer

_Answer = tuple[int, dict[str, str], bytes]
Fault = int | float | str  # see FakeHub.inject


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> _Answer:
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(payload).encode()


class _Handler(BaseHTTPRequestHandler):
    """Routes one request to the FakeHub; keep-alive HTTP/1.1 like the real Hub."""

    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    timeout = 60

    @property
    def hub(self) -> FakeHub:
        return self.server.hub  # type: ignore[attr-defined]

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Silence the per-request access log; only problems go to stderr."""

    # -------------------------------------------------------------- plumbing

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        self.hub.requests.append((method, split.path))
        try:
            body = self._read_body()
            fault = self.hub._take_fault(method, split.path)
            if fault == "drop":
                self.close_connection = True
                return
            if isinstance(fault, float):
                time.sleep(fault)
            if isinstance(fault, int):
                raise HubError(fault, f"FakeHub: injected HTTP {fault}")
            answer = self._route(method, split.path, parse_qs(split.query), body)
            if fault == "drop_after":
                self.close_connection = True
                return
            if answer is None:
                self.hub.unknown_requests.append((method, self.path))
                self.log_error("FakeHub: no route for %s %s -> 404", method, self.path)
                answer = _json({"error": f"FakeHub: no route for {method} {split.path}"}, 404)
        except HubError as err:
            headers = {"X-Error-Message": err.message, **err.headers}
            if err.code:
                headers["X-Error-Code"] = err.code
            answer = _json({"error": err.message}, err.status, headers)
        except Exception:
            tb = traceback.format_exc()
            self.hub.errors.append(tb)
            self.log_error("FakeHub: crash on %s %s\n%s", method, self.path, tb)
            answer = _json({"error": "FakeHub internal error", "traceback": tb}, 500)
        status, headers, payload = answer
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(payload)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(payload)

    def _route(self, method: str, raw_path: str, query: dict[str, list[str]], body: bytes) -> _Answer | None:
        parts = raw_path.lstrip("/").split("/")
        if parts[0] != "api":
            if "resolve" in parts and method in ("GET", "HEAD"):
                return self._resolve_file(parts)
            return None
        api = parts[1:]
        hub = self.hub
        if api == ["whoami-v2"] and method == "GET":
            return _json(_whoami(hub.user))
        if api == ["validate-yaml"] and method == "POST":
            return _json({"errors": [], "warnings": []})
        if api == ["agent-harnesses"] and method == "GET":
            return _json({"standardEnvVars": [], "harnesses": {}})
        if api == ["repos", "create"] and method == "POST":
            return self._create_repo(json.loads(body or b"{}"))
        if api == ["repos", "delete"] and method == "DELETE":
            return self._delete_repo(json.loads(body or b"{}"))
        if len(api) >= 2 and api[0] in _REPO_TYPES:
            rest = api[1:]
            if len(rest) >= 2 and rest[1] not in _REPO_ACTIONS:
                repo_id, tail = f"{unquote(rest[0])}/{unquote(rest[1])}", rest[2:]
            else:
                repo_id, tail = unquote(rest[0]), rest[1:]
            return self._repo_api(method, _REPO_TYPES[api[0]], repo_id, tail, query, body)
        return None

    # -------------------------------------------------------------- helpers

    def _get_repo(self, repo_type: str, repo_id: str) -> _Repo:
        repo = self.hub._repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository not found: {repo_type} {repo_id}", "RepoNotFound")
        return repo

    def _get_commit(self, repo: _Repo, revision: str) -> Commit:
        commit = self.hub._resolve(repo, revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    # -------------------------------------------------------------- repos

    def _create_repo(self, payload: dict[str, Any]) -> _Answer:
        hub = self.hub
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or hub.user}/{payload['name']}"
        private = payload.get("visibility", "public") != "public" or bool(payload.get("private"))
        with hub._lock:
            existing = hub._repos.get((repo_type, repo_id))
            if existing is not None:
                url = hub._repo_url(existing)
                return _json({"error": f"You already created this {repo_type} repo", "url": url}, 409)
            hub.create_repo(repo_id, repo_type, private)
            return _json({"url": hub._repo_url(hub._repos[(repo_type, repo_id)]), "name": repo_id})

    def _delete_repo(self, payload: dict[str, Any]) -> _Answer:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        with self.hub._lock:
            self._get_repo(repo_type, repo_id)
            del self.hub._repos[(repo_type, repo_id)]
        return _json({})

    def _repo_api(
        self, method: str, repo_type: str, repo_id: str, tail: list[str], query: dict[str, list[str]], body: bytes
    ) -> _Answer | None:
        action = tail[0] if tail else ""
        arg = unquote(tail[1]) if len(tail) > 1 else None
        if action and action not in _REPO_ACTIONS:
            return None  # unknown even if the repo is missing: report it as such, not as RepoNotFound
        with self.hub._lock:
            repo = self._get_repo(repo_type, repo_id)
            if method == "GET" and (not tail or (action == "revision" and arg and len(tail) == 2)):
                return self._repo_info(repo, arg or "main", blobs=query.get("blobs", [""])[0].lower() == "true")
            if method == "GET" and action == "tree" and arg:
                path = unquote("/".join(tail[2:])).strip("/")
                recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                return _json(self._tree(self._get_commit(repo, arg), path, recursive))
            if method == "POST" and action == "paths-info" and arg:
                form = parse_qs(body.decode())
                files = self._get_commit(repo, arg).files
                return _json([e for p in form.get("paths", []) if (e := _path_entry(files, p.strip("/")))])
            if method == "POST" and action == "preupload" and arg:
                time.sleep(self.hub.preupload_delay)
                files = self._get_commit(repo, arg).files if "create_pr" not in query else {}
                return _json(
                    {
                        "files": [
                            {
                                "path": f["path"],
                                "uploadMode": "regular",
                                "shouldIgnore": False,
                                "oid": git_blob_sha(files[f["path"]]) if f["path"] in files else None,
                            }
                            for f in json.loads(body)["files"]
                        ]
                    }
                )
            if method == "POST" and action == "commit" and arg:
                return self._commit(repo, arg, body, create_pr=query.get("create_pr") == ["1"])
            if method == "GET" and action == "refs":
                return _json(_refs(repo))
            if method == "GET" and action == "commits" and arg:
                history = self.hub.commits(repo.repo_id, self._get_commit(repo, arg).oid, repo.repo_type)
                return _json([_commit_json(c, self.hub.user) for c in reversed(history)])
            if action == "branch" and arg and method in ("POST", "DELETE"):
                return self._branch(repo, method, arg, json.loads(body or b"{}"))
        return None

    def _repo_info(self, repo: _Repo, revision: str, blobs: bool) -> _Answer:
        commit = self._get_commit(repo, revision)
        siblings = []
        for path in sorted(commit.files):
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                sibling.update(size=len(commit.files[path]), blobId=git_blob_sha(commit.files[path]))
            siblings.append(sibling)
        info = {
            "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
            "id": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": commit.oid,
            "lastModified": _iso(commit.date),
            "createdAt": _iso(repo.created_at),
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(d) for d in commit.files.values()),
        }
        if repo.repo_type == "model":
            info["modelId"] = repo.repo_id
        return _json(info)

    def _tree(self, commit: Commit, path: str, recursive: bool) -> list[dict[str, Any]]:
        prefix = f"{path}/" if path else ""
        below = [p for p in commit.files if p.startswith(prefix)]
        if path and not below:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        entries: dict[str, dict[str, Any]] = {}
        for file_path in below:
            relative = file_path[len(prefix) :].split("/")
            depth = len(relative) if recursive else 1
            for i in range(1, min(depth, len(relative) - 1) + 1):  # parent folders
                folder = prefix + "/".join(relative[:i])
                entries.setdefault(folder, _folder_entry(folder))
            if recursive or len(relative) == 1:
                entries[file_path] = _path_entry(commit.files, file_path)  # type: ignore[assignment]
        return [entries[p] for p in sorted(entries)]

    def _commit(self, repo: _Repo, revision: str, body: bytes, create_pr: bool) -> _Answer:
        hub = self.hub
        head = self._get_commit(repo, revision)
        if revision not in repo.branches:
            raise HubError(400, f"Can only commit to a branch, got {revision!r}", "BadRequest")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((item["value"] for item in lines if item["key"] == "header"), {})
        parent = header.get("parentCommit")
        if parent is not None and parent != head.oid:
            raise HubError(412, f"Parent commit {parent} is not the head of {revision} ({head.oid})")
        files = dict(head.files)
        for item in lines:
            key, value = item["key"], item["value"]
            path = value.get("path", "").strip("/") if isinstance(value, dict) else ""
            if key == "file":
                raw = value["content"]
                files[path] = base64.b64decode(raw) if value.get("encoding") == "base64" else raw.encode()
            elif key == "deletedFile":
                if files.pop(path, None) is None:
                    raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound")
            elif key == "deletedFolder":
                doomed = [p for p in files if p.startswith(f"{path}/")]
                if not doomed:
                    raise HubError(404, f"A folder with this name doesn't exist: {path}", "EntryNotFound")
                for p in doomed:
                    del files[p]
            elif key != "header":
                raise HubError(400, f"FakeHub does not support commit operation {key!r} (LFS/xet are not served)")
        branch = revision
        pr_url = None
        if create_pr:
            num, repo.next_pr = repo.next_pr, repo.next_pr + 1
            branch = f"refs/pr/{num}"
            repo.branches[branch] = head.oid
            pr_url = f"{hub._repo_url(repo)}/discussions/{num}"
        commit = hub._add_commit(repo, branch, files, header.get("summary", ""), header.get("description", ""))
        answer: dict[str, Any] = {
            "success": True,
            "commitOid": commit.oid,
            "commitUrl": f"{hub._repo_url(repo)}/commit/{commit.oid}",
            "hookOutput": "",
        }
        if pr_url is not None:
            answer["pullRequestUrl"] = pr_url
        return _json(answer)

    def _branch(self, repo: _Repo, method: str, branch: str, payload: dict[str, Any]) -> _Answer:
        if method == "DELETE":
            if repo.branches.pop(branch, None) is None:
                raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
            return _json({})
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = self._get_commit(repo, payload.get("startingPoint") or "main")
        repo.branches[branch] = start.oid
        return _json({})

    # -------------------------------------------------------------- file downloads

    def _resolve_file(self, parts: list[str]) -> _Answer:
        repo_type = "model"
        if parts[0] in _REPO_TYPES and parts[0] != "models":
            repo_type, parts = _REPO_TYPES[parts[0]], parts[1:]
        idx = parts.index("resolve")
        if idx == 0 or len(parts) < idx + 3:
            raise HubError(400, f"Malformed resolve URL: /{'/'.join(parts)}")
        repo_id = unquote("/".join(parts[:idx]))
        revision = unquote(parts[idx + 1])
        path = unquote("/".join(parts[idx + 2 :]))
        with self.hub._lock:
            commit = self._get_commit(self._get_repo(repo_type, repo_id), revision)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": commit.oid})
        headers = {
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "ETag": f'"{git_blob_sha(data)}"',
            "X-Repo-Commit": commit.oid,
        }
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match and data:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            if start > end:
                raise HubError(416, "Range not satisfiable", headers={"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return 206, headers, data[start : end + 1]
        return 200, headers, data


def _path_entry(files: Mapping[str, bytes], path: str) -> dict[str, Any] | None:
    """Tree / paths-info entry for a file or folder, or None if the path does not exist."""
    if path in files:
        return {"type": "file", "oid": git_blob_sha(files[path]), "size": len(files[path]), "path": path}
    if any(p.startswith(f"{path}/") for p in files):
        return _folder_entry(path)
    return None


def _folder_entry(path: str) -> dict[str, Any]:
    return {"type": "directory", "oid": hashlib.sha1(f"tree {path}".encode()).hexdigest(), "size": 0, "path": path}


def _refs(repo: _Repo) -> dict[str, Any]:
    def ref(name: str, full: str) -> dict[str, str]:
        return {"name": name, "ref": full, "targetCommit": repo.branches[name]}

    return {
        "branches": [ref(b, f"refs/heads/{b}") for b in repo.branches if not b.startswith("refs/")],
        "converts": [ref(b, b) for b in repo.branches if b.startswith("refs/convert/")],
        "tags": [],
        "pullRequests": [ref(b, b) for b in repo.branches if b.startswith("refs/pr/")],
    }


def _commit_json(commit: Commit, user: str) -> dict[str, Any]:
    return {
        "id": commit.oid,
        "title": commit.title,
        "message": commit.description,
        "authors": [{"user": user, "avatar": ""}],
        "date": _iso(commit.date),
    }


def _whoami(user: str) -> dict[str, Any]:
    return {
        "type": "user",
        "id": hashlib.sha1(user.encode()).hexdigest()[:24],
        "name": user,
        "fullname": user,
        "email": f"{user}@example.invalid",
        "emailVerified": True,
        "isPro": False,
        "orgs": [],
        "auth": {"type": "access_token", "accessToken": {"displayName": "fake", "role": "write"}},
    }


# ---------------------------------------------------------------------- client side


def hub_env(endpoint: str, tmp_path: str | os.PathLike[str], token: str = "hf_fake_token") -> dict[str, str]:
    """Environment for a client subprocess talking to ``endpoint`` with a private, empty cache.

    huggingface_hub freezes these at import time, hence a subprocess. Offline flags and
    cache overrides inherited from the parent are removed (they would shadow HF_HOME or
    block the loopback calls); Xet is disabled so uploads take the plain commit path.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    home = Path(tmp_path) / "hf_home"
    home.mkdir(parents=True, exist_ok=True)
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    repo_root = str(Path(__file__).resolve().parent.parent)
    env.update(
        HF_ENDPOINT=endpoint,
        HF_TOKEN=token,
        HF_HOME=str(home),
        HF_HUB_OFFLINE="0",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        HF_HUB_DISABLE_SYMLINKS_WARNING="1",
        HF_HUB_ETAG_TIMEOUT="30",
        HF_HUB_DOWNLOAD_TIMEOUT="30",
        NO_PROXY=no_proxy,
        no_proxy=no_proxy,
        PYTHONPATH=os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH", "")])),
        PYTHONUNBUFFERED="1",
    )
    return env


def run_client(code: str, env: Mapping[str, str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    """Run (dedented) client ``code`` in a fresh interpreter with ``env``; never raises on failure."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
