"""A local stand-in for the Hugging Face Hub's file-download protocol (loopback only).

It answers what `huggingface_hub.hf_hub_download` asks of the Hub when it downloads one file over
plain HTTP (no Xet):

* `HEAD /{repo_id}/resolve/{revision}/{filename}` -> 200 with the metadata headers read by
  `huggingface_hub.file_download.get_hf_file_metadata`: `X-Repo-Commit` (40-hex commit sha; the
  download is refused without it), `ETag` / `X-Linked-Etag` (the sha256 of the content, as the Hub
  sends for LFS files; it names the blob in the cache) and `Content-Length` / `X-Linked-Size`.
* `GET` on the same path -> the bytes, honouring `Range: bytes=N-` (what `http_get` sends to
  resume a download whose connection dropped) with `206` and `Content-Range`.
* unknown repo -> 404 `X-Error-Code: RepoNotFound`; unknown revision -> 404 `RevisionNotFound`;
  unknown file -> 404 `EntryNotFound` (with `X-Repo-Commit`, as the Hub does).

Files are registered as (repo_id, revision, filename) -> bytes. The commit sha of a revision is
derived from its files, so replacing a file's bytes (a new upload, or a tampered one) also moves
the commit, as on the real Hub. Every request is recorded so tests can count downloads. No Xet
headers are ever sent, so huggingface_hub always uses plain HTTP.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import pytest

_RESOLVE = re.compile(r"^/(?P<repo>.+?)/resolve/(?P<revision>[^/]+)/(?P<filename>.+)$")
_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass(frozen=True)
class Request:
    """One request the stand-in received (path parts already percent-decoded)."""

    method: str
    repo_id: str | None
    revision: str | None
    filename: str | None
    range: str | None


class HubStandIn:
    """In-memory Hub: register files, serve them on 127.0.0.1, record requests, inject faults."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, str, str], bytes] = {}
        self._cuts: dict[tuple[str, str, str], list[int | None]] = {}  # [offset, remaining GETs or None]
        self._lock = threading.Lock()
        self.requests: list[Request] = []
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ content

    def add(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Serve `data` as `filename` of `repo_id` at `revision`; returns its sha256."""
        with self._lock:
            self._files[(repo_id, revision, filename)] = bytes(data)
        return hashlib.sha256(data).hexdigest()

    def replace(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> str:
        """Swap the bytes of an existing file (a re-upload or a tampered file); returns the new sha256."""
        if (repo_id, revision, filename) not in self._files:
            raise KeyError(f"{repo_id}@{revision}:{filename} is not served")
        return self.add(repo_id, filename, data, revision)

    def remove(self, repo_id: str, filename: str, revision: str = "main") -> None:
        """Stop serving a file (the repository stays if it has others)."""
        with self._lock:
            del self._files[(repo_id, revision, filename)]

    def cut_connection(self, repo_id: str, filename: str, at: int, *, times: int | None = None, revision: str = "main") -> None:
        """Announce the full length on GET but close the connection once byte offset `at` is sent.

        `times`: how many GETs to sabotage (None: all of them). A resumed GET (`Range: bytes=N-`)
        starting at or past `at` is served normally only once the sabotage is used up.
        """
        self._cuts[(repo_id, revision, filename)] = [at, times]

    def commit(self, repo_id: str, revision: str = "main") -> str:
        """The 40-hex commit sha of a revision: a hash of its files, so it moves when they change."""
        digest = hashlib.sha1(f"{repo_id}@{revision}".encode())
        with self._lock:
            for (repo, rev, name), data in sorted(self._files.items()):
                if (repo, rev) == (repo_id, revision):
                    digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()

    # ------------------------------------------------------------------ bookkeeping

    def count(self, method: str, filename: str | None = None, repo_id: str | None = None) -> int:
        """Number of `method` requests received, optionally for one file / one repo."""
        return sum(
            1
            for r in list(self.requests)
            if r.method == method and filename in (None, r.filename) and repo_id in (None, r.repo_id)
        )

    @property
    def url(self) -> str:
        assert self._server is not None, "stand-in not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubStandIn:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, args=(0.05,), name="hub-standin", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ------------------------------------------------------------------ protocol

    def _lookup(self, repo_id: str, revision: str, filename: str) -> tuple[int, dict[str, str], bytes | None]:
        """(status, headers, content) for a resolve URL, before any Range handling."""
        with self._lock:
            revisions = {rev for (repo, rev, _) in self._files if repo == repo_id}
        if not revisions:
            return 404, {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"}, None
        # A revision is a branch/tag name that was registered or the current commit sha of one.
        branch = next((rev for rev in revisions if revision in (rev, self.commit(repo_id, rev))), None)
        if branch is None:
            return 404, {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"}, None
        commit = self.commit(repo_id, branch)
        data = self._files.get((repo_id, branch, filename))
        if data is None:
            return 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found", "X-Repo-Commit": commit}, None
        sha = hashlib.sha256(data).hexdigest()
        headers = {
            "X-Repo-Commit": commit,
            "ETag": f'"{sha}"',
            "X-Linked-Etag": f'"{sha}"',
            "X-Linked-Size": str(len(data)),
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        return 200, headers, data

    def _take_cut(self, key: tuple[str, str, str], start: int) -> int | None:
        """The absolute offset to drop this GET's connection at, if a sabotage applies."""
        with self._lock:
            cut = self._cuts.get(key)
            if cut is None or cut[1] == 0:
                return None
            if cut[1] is not None:
                cut[1] -= 1
            return max(int(cut[0] or 0), start)


def _handler_for(hub: HubStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_HEAD(self) -> None:
            self._answer(send_body=False)

        def do_GET(self) -> None:
            self._answer(send_body=True)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - keep test output quiet
            pass

        def _answer(self, *, send_body: bool) -> None:
            match = _RESOLVE.match(urlsplit(self.path).path)
            parts = {k: unquote(v) for k, v in match.groupdict().items()} if match else {}
            requested_range = self.headers.get("Range")
            hub.requests.append(Request(self.command, parts.get("repo"), parts.get("revision"), parts.get("filename"), requested_range))
            if match is None:
                return self._send(404, {"X-Error-Code": "EntryNotFound"}, b"not a /resolve/ url", send_body)
            status, headers, data = hub._lookup(parts["repo"], parts["revision"], parts["filename"])
            if data is None:
                return self._send(status, headers, b"not found", send_body)
            start = 0
            if send_body and requested_range:
                ranged = _RANGE.match(requested_range)
                start = int(ranged.group(1)) if ranged else len(data)
                if start >= len(data):
                    return self._send(416, {"Content-Range": f"bytes */{len(data)}"}, b"", send_body)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            cut = hub._take_cut((parts["repo"], parts["revision"], parts["filename"]), start) if send_body else None
            if cut is not None:
                body, self.close_connection = body[: cut - start], True
                headers["Content-Length"] = str(len(data) - start)  # promise more than is sent
            self._send(status, headers, body, send_body)

        def _send(self, status: int, headers: dict[str, str], body: bytes, send_body: bool) -> None:
            self.send_response(status)
            headers.setdefault("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if send_body:
                self.wfile.write(body)
                self.wfile.flush()

    return Handler


@pytest.fixture(name="hub")
def hub_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    """A running stand-in with `HF_ENDPOINT` pointing at it for the test's duration."""
    standin = HubStandIn().start()
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    try:
        yield standin
    finally:
        standin.stop()
