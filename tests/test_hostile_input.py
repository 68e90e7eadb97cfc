"""Hostile input (tests/hostile_corpus.py) through the CLI, the Gradio API and the REST API.

Every kind is processed correctly (unusual but valid ones: the protected photo has the input's
size and stays within the budget of the photo as decoded) or refused with a clear message: a
one-line `error:` and exit code 2 from the CLI, a gr.Error from Gradio, a 4xx JSON
`{error, message}` from REST; never a traceback or a server path, never a write outside the
job's own folder. Decompression and zip bombs must not be inflated (memory stays bounded), and
after the whole corpus the server still answers /health and protects a normal photo.

The CLI cases call `deepshield.cli.main` in process (a subprocess per kind would cost seconds
each); `test_cli_subprocess_*` run the real `python -m deepshield` over the corpus in two calls.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import gradio as gr
import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from deepshield import cli, imaging
from deepshield.engine import Engine
from server import ui
from server.settings import Settings
from tests.conftest import REPO, run, tiny_models, write_photo
from tests.hostile_corpus import BATCH_LIMIT, NOT_AN_IMAGE, Kind, corpus, kinds
from tests.live_server import build_app, running

MODEL = "tiny-cyclegan"
EPSILON = 0.05
LEVELS = math.floor(EPSILON * 127.5)  # the written budget in 8-bit levels
GRADIO_OPTIONS = (MODEL, "pgd", EPSILON, 1, 0.01, 0, [])
REST_OPTIONS = {"model_type": MODEL, "attack_params": {"iterations": 1, "seed": 0}, "return_deepfakes": False}
BOMBS = ["png_header_bomb", "png_deflate_bomb", "jpeg_header_bomb", "gif_header_bomb", "zip_bomb", "zip_bomb_lying_sizes"]
MEMORY_GROWTH_LIMIT = 200 * 2**20  # a decoded bomb needs gigabytes

SINGLE = kinds(archive=False)
ARCHIVES = kinds(archive=True)
BY_NAME = {kind.name: kind for kind in corpus()}


def ids(kind: Kind) -> str:
    return kind.name


# ------------------------------------------------------------------------------ checks


def leaks(text: str) -> list[str]:
    """Traces of a traceback or of a server path in a message shown to a client."""
    markers = ["Traceback", 'File "', "site-packages", str(REPO), tempfile.gettempdir() + "/", gr.utils.get_upload_folder(), "<ZipInfo", " object at 0x"]
    return [marker for marker in markers if marker in text]


def assert_clear_refusal(message: str, pattern: str) -> None:
    assert re.search(pattern, message), f"expected /{pattern}/ in {message!r}"
    assert not leaks(message), f"{message!r} leaks {leaks(message)}"


def assert_protected(kind: Kind, written: bytes) -> None:
    """The written file is the input photo (as decoded: upright, first frame) within the budget."""
    out = imaging.decode_rgb(written)
    reference = imaging.load_photo(kind.data).rgb
    assert (out.shape[1], out.shape[0]) == kind.size
    assert np.abs(out.astype(int) - reference.astype(int)).max() <= LEVELS


def snapshot(root: Path) -> dict[Path, tuple[int, int]]:
    """Every file under `root` with its (size, mtime)."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def written_since(before: dict[Path, tuple[int, int]], root: Path) -> set[Path]:
    """Files under `root` created or modified since `before` was taken."""
    return {path for path, stamp in snapshot(root).items() if before.get(path) != stamp}


class RssPeak:
    """The peak resident memory of this process while the block runs, sampled every 5 ms."""

    def __init__(self) -> None:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    @staticmethod
    def _rss() -> int:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._rss())

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


# ------------------------------------------------------------------------------ the served app


@dataclass
class Served:
    url: str
    client: Client
    http: httpx.Client
    sandbox: Path  # holds the job roots and a sentinel; nothing else may appear in it
    job_roots: tuple[Path, ...]  # the UI's per-request folders (OutputStore.root), the batch jobs' data dir

    def job_folder(self, path: Path) -> Path | None:
        """The job folder (<job root>/<one job>/) that `path` lies in, if any."""
        for root in self.job_roots:
            if path.is_relative_to(root) and len(path.relative_to(root).parts) >= 2:
                return root / path.relative_to(root).parts[0]
        return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The app as `python app.py` builds it (UI + REST) over the tiny models, on loopback."""
    root = tmp_path_factory.mktemp("hostile-server")
    sandbox = root / "sandbox"
    store, jobs = sandbox / "ui-outputs", sandbox / "jobs"
    store.mkdir(parents=True)
    (sandbox / "sentinel.txt").write_text("must stay untouched")
    (root / "models").mkdir()
    engine = Engine(tiny_models(root / "models"), device="cpu", max_concurrent=1, max_queue=4)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("DEEPSHIELD_MODELS_DIR", str(root / "models"))
        env.setenv("DEEPSHIELD_CACHE_DIR", str(root / "cache"))
        engine.load(MODEL)
        env.setattr("server.ui.context.OutputStore", functools.partial(ui.OutputStore, store))  # where the handlers make their store
        settings = Settings(
            max_concurrent=1, max_queue_size=4, max_batch_size=BATCH_LIMIT, rate_limit_per_minute=0, log_level="WARNING", data_dir=str(jobs)
        )
        app = build_app(engine, settings)
    with running(app) as url, httpx.Client(base_url=url, timeout=120) as http:
        client = Client(url, verbose=False, download_files=str(root / "downloads"), analytics_enabled=False)
        yield Served(url, client, http, sandbox, (store, jobs))


def assert_confined(served: Served, before: dict[Path, tuple[int, int]], *, ok: bool) -> None:
    """Files were written only inside job folders, at most one per job root, and some were
    written for a processed photo."""
    written = written_since(before, served.sandbox)
    folders = {served.job_folder(path) for path in written}
    assert None not in folders, f"written outside a job folder: {[p for p in written if served.job_folder(p) is None]}"
    assert all(sum(f.parent == root for f in folders) <= 1 for root in served.job_roots), folders
    assert bool(folders) or not ok, "nothing written for a processed photo"


def upload_file(tmp_path: Path, kind: Kind, *, http: bool = False) -> Path:
    """`kind` written as <tmp_path>/upload/<its file name>. `http`: a name an HTTP client can
    send (undecodable bytes become U+FFFD, as browsers send them)."""
    name = kind.filename.encode("utf-8", "surrogateescape").decode("utf-8", "replace") if http else kind.filename
    path = tmp_path / "upload" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(kind.data)
    return path


def gradio_error(served: Served, *args: object, api_name: str) -> str:
    with pytest.raises(AppError) as caught:
        served.client.predict(*args, api_name=api_name)
    return str(caught.value)


def rest_protect(served: Served, data: bytes) -> httpx.Response:
    return served.http.post("/api/v1/protect/image", json={"image": base64.b64encode(data).decode(), **REST_OPTIONS})


# ------------------------------------------------------------------------------ memory (first: nothing inflated yet)


def test_bombs_are_refused_without_inflating_them(served, cli_env, monkeypatch, tmp_path, capsys):
    for key in ("DEEPSHIELD_MANIFEST", "DEEPSHIELD_MODELS_DIR"):
        monkeypatch.setenv(key, cli_env[key])
    served.http.get("/health").raise_for_status()
    bombs = [BY_NAME[name] for name in BOMBS]
    with RssPeak() as memory:
        for kind in bombs:
            path = tmp_path / kind.filename
            path.write_bytes(kind.data)
            if kind.archive:
                message = gradio_error(served, [handle_file(str(path))], *GRADIO_OPTIONS, api_name="/protect_batch")
            else:
                message = gradio_error(served, handle_file(str(path)), *GRADIO_OPTIONS, api_name="/protect")
                assert cli.main(["protect", str(path), "-o", str(tmp_path / "out.png"), "--model", "tiny", "--iterations", "1"]) == 2
                assert rest_protect(served, kind.data).status_code == 413
            assert_clear_refusal(message, kind.message)
    assert memory.growth < MEMORY_GROWTH_LIMIT, f"memory grew by {memory.growth / 2**20:.0f} MB"
    assert capsys.readouterr().err.count("error: ") == len([k for k in bombs if not k.archive])


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def cli_main(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Callable[..., tuple[int, str, str]]:
    """`python -m deepshield ARGS` in this process: (exit code, stdout, stderr)."""
    for key in ("DEEPSHIELD_MANIFEST", "DEEPSHIELD_MODELS_DIR"):
        monkeypatch.setenv(key, cli_env[key])

    def call(*argv: str) -> tuple[int, str, str]:
        code = cli.main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return call


@pytest.mark.parametrize("kind", corpus(), ids=ids)
def test_cli(kind, cli_main, tmp_path):
    source = upload_file(tmp_path, kind)
    out = tmp_path / "out"
    before = snapshot(tmp_path)
    code, stdout, stderr = cli_main("protect", str(source), "--out-dir", str(out), "--model", "tiny", "--iterations", "1", "--seed", "0")
    written = written_since(before, tmp_path)
    expect, pattern = kind.single(server=False)
    if expect == "ok":
        assert code == 0, stderr
        (output,) = written
        assert output.parent == out and output.name.endswith(".protected.png")
        assert_protected(kind, output.read_bytes())
        assert stdout.count("\n") == 1  # one summary line
        assert all(ch.isprintable() for ch in stdout.rstrip("\n")), repr(stdout)
    else:
        assert code == 2 and not written
        assert stderr.startswith("error: ") and stderr.count("\n") == 1, repr(stderr)
        assert all(ch.isprintable() for ch in stderr.rstrip("\n")), repr(stderr)
        assert_clear_refusal(stderr, pattern)


def test_cli_writes_any_output_name_the_file_system_takes(cli_main, tmp_path):
    source = write_photo(tmp_path / "in.png")
    longest = tmp_path / ("é" * 125 + ".png")  # 254 bytes: a temporary name built from it would not fit
    code, _, stderr = cli_main("protect", str(source), "-o", str(longest), "--model", "tiny", "--iterations", "1")
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.png", longest.name, "models", "manifest.yaml"])


def test_cli_unwritable_output_is_one_line(cli_main, tmp_path):
    source = write_photo(tmp_path / "in.png")
    (tmp_path / "taken").write_text("a file where the output folder should go")
    code, _, stderr = cli_main("protect", str(source), "--out-dir", str(tmp_path / "taken"), "--model", "tiny", "--iterations", "1")
    assert code == 2 and stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    assert "taken" in stderr and "exists" in stderr.lower()


def test_cli_subprocess_processes_every_valid_kind_in_one_run(cli_env, tmp_path):
    valid = [k for k in SINGLE if k.single(server=False)[0] == "ok"]
    paths = []
    for number, kind in enumerate(valid):
        path = tmp_path / "in" / str(number) / kind.filename
        path.parent.mkdir(parents=True)
        path.write_bytes(kind.data)
        paths.append(path)
    assert len({cli.output_stem(p) for p in paths}) == len(paths)  # else the CLI refuses the batch
    before = snapshot(tmp_path)
    proc = run(cli_env, "protect", *map(str, paths), "--out-dir", str(tmp_path / "out"), "--model", "tiny", "--iterations", "1", "--seed", "0")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    for kind, path in zip(valid, paths):
        assert_protected(kind, (tmp_path / "out" / f"{cli.output_stem(path)}.protected.png").read_bytes())
    written = written_since(before, tmp_path)
    assert len(written) == len(valid) and all(p.parent == tmp_path / "out" for p in written)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(valid) and all(line.isprintable() for line in lines)


def test_cli_subprocess_refuses_in_one_line(cli_env, tmp_path):
    """The real entry point: a refusal is one `error:` line, exit code 2, nothing written."""
    kind = BY_NAME["control_characters_in_refused_name"]
    source = upload_file(tmp_path, kind)
    proc = run(cli_env, "protect", str(source), "--out-dir", str(tmp_path / "out"), "--model", "tiny")
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and "\x1b" not in proc.stderr, repr(proc.stderr)
    assert_clear_refusal(proc.stderr, kind.message)


# ------------------------------------------------------------------------------ Gradio


@pytest.mark.parametrize("kind", corpus(), ids=ids)
def test_gradio_protect(kind, served, tmp_path):
    source = upload_file(tmp_path, kind, http=True)
    expect, pattern = kind.single(server=True)
    before = snapshot(served.sandbox)
    if expect == "ok":
        protected, *_, metrics = served.client.predict(handle_file(str(source)), *GRADIO_OPTIONS, api_name="/protect")
        assert_protected(kind, Path(protected).read_bytes())
        assert metrics["input"].isprintable() and "/" not in metrics["input"]
    else:
        message = gradio_error(served, handle_file(str(source)), *GRADIO_OPTIONS, api_name="/protect")
        assert_clear_refusal(message, pattern)
        assert "<img" not in message  # names are shown as text, never as markup
    assert_confined(served, before, ok=expect == "ok")


@pytest.mark.parametrize("kind", ARCHIVES, ids=ids)
def test_gradio_protect_batch_archive(kind, served, tmp_path):
    source = upload_file(tmp_path, kind)
    before = snapshot(served.sandbox)
    if kind.expect == "ok":
        gallery, archive, report = served.client.predict([handle_file(str(source))], *GRADIO_OPTIONS, api_name="/protect_batch")
        assert len(report) == len(gallery) == kind.outputs
        for item in report:
            assert item["output"].isprintable() and "/" not in item["output"] and "\\" not in item["output"]
            assert 0 < item["perturbation"]["linf"] <= EPSILON
        assert Path(archive).is_file()
    else:
        assert_clear_refusal(gradio_error(served, [handle_file(str(source))], *GRADIO_OPTIONS, api_name="/protect_batch"), kind.message)
    assert_confined(served, before, ok=kind.expect == "ok")


def test_zip_slip_writes_nothing_outside_the_job_folder(served, tmp_path):
    source = upload_file(tmp_path, BY_NAME["zip_slip"])
    before = snapshot(served.sandbox)
    served.client.predict([handle_file(str(source))], *GRADIO_OPTIONS, api_name="/protect_batch")
    evil = {p for p in written_since(before, served.sandbox) if p.name.startswith("evil")}
    assert evil and all(served.job_folder(p) for p in evil)
    uploads = Path(gr.utils.get_upload_folder())
    for folder in (uploads, uploads.parent, served.sandbox, *served.job_roots, REPO, REPO.parent, Path("/"), Path("/abs")):
        assert not list(folder.glob("evil*")), folder
    assert (served.sandbox / "sentinel.txt").read_text() == "must stay untouched"


def raw_gradio_call(served: Served, api: str, data: bytes, orig_name: str) -> tuple[str, object]:
    """Upload `data`, then call `api` with a hand-made FileData naming it `orig_name` (a client
    may send any name: gradio_client cleans names, a raw HTTP client need not).
    Returns ("complete" or "error", the event's data)."""
    (path,) = served.http.post("/gradio_api/upload", files=[("files", ("upload.bin", data))]).json()
    payload = {"path": path, "orig_name": orig_name, "meta": {"_type": "gradio.FileData"}}
    started = served.http.post(f"/gradio_api/call/{api}", json={"data": [payload, *GRADIO_OPTIONS, True, "off", False, 0, []]})  # ..., faces ([] = all)
    events = served.http.get(f"/gradio_api/call/{api}/{started.json()['event_id']}").text
    *_, event, data_line = [line for line in events.splitlines() if line]  # the last event: its name, then its data
    return event.removeprefix("event: "), json.loads(data_line.removeprefix("data: "))


HOSTILE_NAMES = {
    "bidi_override": "photo\u202egnp.png",
    "control_characters": "tab\there\x1b[31mred\x07\nline.png",
    "too_long_for_a_file_system": "é" * 140 + ".png",
    "markup": "<img src=x onerror=alert(1)>.png",
    "path": "../../../etc/cron.d/evil.png",
}


@pytest.mark.parametrize("name", HOSTILE_NAMES.values(), ids=HOSTILE_NAMES.keys())
def test_gradio_names_sent_by_hand_are_cleaned(served, name):
    before = snapshot(served.sandbox)
    event, data = raw_gradio_call(served, "protect", BY_NAME["jpeg_named_png"].data, name)
    assert event == "complete", data
    shown = data[3]["input"]
    assert shown.isprintable() and "/" not in shown and len(shown.encode()) <= 200 and shown.endswith(".png")
    assert_confined(served, before, ok=True)
    event, data = raw_gradio_call(served, "protect", b"not an image", name)
    assert event == "error", data
    assert_clear_refusal(data["error"], NOT_AN_IMAGE)
    assert data["error"].isprintable() and "<img" not in data["error"]


def test_gradio_batch_of_every_valid_kind(served, tmp_path):
    valid = [k for k in SINGLE if k.single(server=True)[0] == "ok"]
    assert len(valid) <= BATCH_LIMIT
    files = [handle_file(str(upload_file(tmp_path / str(number), kind, http=True))) for number, kind in enumerate(valid)]
    gallery, _, report = served.client.predict(files, *GRADIO_OPTIONS, api_name="/protect_batch")
    assert len(gallery) == len(report) == len(valid)
    for kind, item, entry in zip(valid, report, gallery):
        assert (item["width"], item["height"]) == kind.size
        assert_protected(kind, Path(entry["image"]).read_bytes())


# ------------------------------------------------------------------------------ REST


@pytest.mark.parametrize("kind", corpus(), ids=ids)
def test_rest_protect_image(kind, served):
    expect, pattern = kind.single(server=True)
    response = rest_protect(served, kind.data)
    assert response.status_code < 500, response.text
    body = response.json()
    if expect == "ok":
        assert response.status_code == 200, response.text
        assert_protected(kind, base64.b64decode(body["protected_image"]))
    else:
        assert 400 <= response.status_code < 500 and set(body) >= {"error", "message"}
        assert_clear_refusal(body["message"], pattern)
        assert not leaks(response.text)


# ------------------------------------------------------------------------------ afterwards


def test_the_server_still_serves_after_the_corpus(served, tmp_path):
    health = served.http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    photo = write_photo(tmp_path / "after.png", 40, 30)
    assert rest_protect(served, photo.read_bytes()).status_code == 200
    protected, *_ = served.client.predict(handle_file(str(photo)), *GRADIO_OPTIONS, api_name="/protect")
    with Image.open(protected) as image:
        assert image.size == (40, 30)
