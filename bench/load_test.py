"""Load test: concurrent clients on the REST and Gradio APIs of `python app.py` at concurrency 1.

    python bench/load_test.py [--clients 20] [--requests 5] [--seconds 60] [--model cyclegan-vintage]
                              [--iterations 2] [--queue 4] [--rate-limit 60] [--json OUT]

Starts `python app.py` on a free 127.0.0.1 port (DEEPSHIELD_MAX_CONCURRENT=1, MAX_QUEUE_SIZE
`--queue`), then runs three phases: `--clients` REST clients (POST /api/v1/protect/image),
`--clients` real gradio_client clients (/protect), and both APIs at once (half each). A client
sends at most `--requests` protections of examples/synthetic-portrait.png, starts none after
`--seconds`, and after a refusal waits the server's Retry-After (REST) or RETRY_WITHOUT_HINT_S
(gradio_client does not show headers) before its next attempt; every attempt counts. Each client
sends its own X-Forwarded-For, which the server trusts from loopback (FORWARDED_ALLOW_IPS), so
the clients stand for different users behind a local proxy, each with its own rate-limit budget.

Alongside: a monitor polls /health throughout; during the last phase one client sends
RATE_LIMIT_PER_MINUTE + 3 cheap REST requests (an empty body, refused with 422 after it is
counted): exactly the first RATE_LIMIT_PER_MINUTE must pass and the rest be 429 with a message
and Retry-After, while another client is not limited. Afterwards `--queue` + 4 simultaneous raw
Gradio calls must overflow Gradio's queue into 503s with a message and Retry-After while every
admitted call completes, and one Gradio client sends RATE_LIMIT_PER_MINUTE + 3 cheap /protect
calls to see whether the Gradio API limits a client too.

Prints one row per phase and API and exits 1 when a check fails. `--model tiny` serves a random
tiny CycleGAN instead (what tests/test_load.py runs). Nothing leaves the loopback interface.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PHOTO = REPO / "examples" / "synthetic-portrait.png"
TINY = "tiny"
TINY_PARAMS = {"input_nc": 3, "output_nc": 3, "ngf": 8, "n_blocks": 2, "norm_affine": True}
RETRY_WITHOUT_HINT_S = 5.0  # as the server's Retry-After on a busy 503
REQUEST_TIMEOUT_S = 600.0
HEALTH_EVERY_S = 0.25
HEALTH_TIMEOUT_S = 5.0
STARTUP_TIMEOUT_S = 300.0
TRACE_MARKERS = ("Traceback", 'File "')


@dataclass(frozen=True)
class LoadConfig:
    """What to run; the defaults are the benchmark's."""

    clients: int = 20
    requests: int = 5  # attempts per client and phase, refusals included
    seconds: float = 60.0  # no client starts an attempt after this many seconds of a phase
    model: str = "cyclegan-vintage"
    iterations: int = 2
    queue: int = 4
    rate_limit: int = 60
    phases: tuple[str, ...] = ("rest", "gradio", "mixed")


@dataclass
class Attempt:
    """One request. `status`: the HTTP status for REST; for Gradio 200 = a result, 503 = queue
    full or engine busy, 429 = rate limited, 0 = any other error (for both: no answer)."""

    api: str
    status: int
    seconds: float
    message: str = ""
    retry_after: float | None = None
    clean: bool = True  # a refusal with a message (and for REST a Retry-After), no traceback
    valid_image: bool = False  # an accepted request: a decodable image of the photo's size
    client: int = -1  # which client of its API sent it (in a phase)


@dataclass
class PhaseResult:
    name: str
    wall_seconds: float
    attempts: list[Attempt]
    health: list[tuple[int, float]]  # (status, seconds) of each /health poll; 0 = no answer


@dataclass
class Report:
    config: LoadConfig
    phases: list[PhaseResult]
    rate_limit: dict[str, Any]  # REST, probed during the last phase
    gradio_queue: dict[str, Any]
    gradio_rate_limit: dict[str, Any]
    health_after: int
    server_errors: list[str]  # ERROR records and tracebacks on the server's stderr
    failures: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------------ server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tiny_model_env(directory: Path) -> dict[str, str]:
    """Environment for a manifest with one random tiny CycleGAN, `tiny` (32 px), in `directory`."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from deepshield.models import get_architecture

    torch.manual_seed(0)
    module = get_architecture("cyclegan").build(**TINY_PARAMS)
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(directory / f"{TINY}.safetensors"))
    weights = {"local": f"{TINY}.safetensors", "format": "vintagify"}
    manifest = {"models": {TINY: {"architecture": "cyclegan", "params": TINY_PARAMS, "image_size": 32, "weights": weights}}}
    (directory / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    return {"DEEPSHIELD_MANIFEST": str(directory / "manifest.yaml"), "DEEPSHIELD_MODELS_DIR": str(directory)}


@contextmanager
def running_app(config: LoadConfig, workdir: Path) -> Iterator[tuple[str, Path]]:
    """`python app.py` on a free loopback port with the model loaded; yields (base URL, its stderr)."""
    port = free_port()
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "DEEPSHIELD_DEVICE": "cpu",
        "DEEPSHIELD_MAX_CONCURRENT": "1",
        "MAX_QUEUE_SIZE": str(config.queue),
        "RATE_LIMIT_PER_MINUTE": str(config.rate_limit),
        "DEFAULT_MODEL": config.model,
        "PRELOAD_MODELS": config.model,
        "FORWARDED_ALLOW_IPS": "127.0.0.1",
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio-server"),
    }
    if config.model == TINY:
        env |= tiny_model_env(workdir)
    log = workdir / "server.log"
    url = f"http://127.0.0.1:{port}/"
    with log.open("wb") as stderr:
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            try:
                wait_until_loaded(url, config.model, process)
            except (RuntimeError, TimeoutError) as error:
                raise RuntimeError(f"{error}; its log ends:\n{log.read_text(errors='replace')[-3000:]}") from None
            yield url, log
        finally:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(30)


def wait_until_loaded(url: str, model: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"python app.py exited with status {process.returncode} before serving")
        try:
            if model in httpx.get(f"{url}health", timeout=2).json().get("models_loaded", []):
                return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not load {model} within {STARTUP_TIMEOUT_S:.0f} s")


def server_errors(log: Path) -> list[str]:
    """ERROR / CRITICAL records and traceback lines the server wrote."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict):
            if record.get("level") in ("ERROR", "CRITICAL"):
                found.append(str(record.get("message", line))[:300])
        elif any(marker in line for marker in TRACE_MARKERS):
            found.append(line[:300])
    return found


# ------------------------------------------------------------------------------------ clients


def identity(group: int, index: int) -> dict[str, str]:
    """Headers of simulated client `index` of `group`: its own X-Forwarded-For address."""
    return {"X-Forwarded-For": f"10.{group}.{index // 250}.{index % 250 + 1}"}


def image_ok(data: bytes | Path, size: tuple[int, int]) -> bool:
    """A decodable image of `size` (file bytes, or a path)."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            image.load()
            return image.size == size
    except (OSError, ValueError):
        return False


def rest_attempt(http: httpx.Client, body: dict[str, Any], size: tuple[int, int]) -> Attempt:
    started = time.perf_counter()
    response = http.post("api/v1/protect/image", json=body)
    elapsed = time.perf_counter() - started
    if response.status_code == 200:
        return Attempt("rest", 200, elapsed, valid_image=image_ok(base64.b64decode(response.json()["protected_image"]), size))
    try:
        payload = response.json()
    except ValueError:
        payload = None
    message = str(payload.get("message", "")) if isinstance(payload, dict) else ""
    hint = response.headers.get("retry-after", "")
    retry_after = float(hint) if hint.isdigit() and int(hint) > 0 else None
    clean = bool(message) and retry_after is not None and not any(m in response.text for m in TRACE_MARKERS)
    return Attempt("rest", response.status_code, elapsed, message or response.text[:200], retry_after, clean)


def gradio_attempt(client: Any, args: tuple[Any, ...], size: tuple[int, int] | None = None) -> Attempt:
    """One /protect call through gradio_client; `size`: check the result is an image of it."""
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    started = time.perf_counter()
    try:
        protected, *_ = client.submit(*args, api_name="/protect").result(timeout=REQUEST_TIMEOUT_S)
    except (AppError, QueueError) as error:
        message = str(error)
        lowered = message.lower()
        status = 503 if isinstance(error, QueueError) or "busy" in lowered else 429 if "too many requests" in lowered else 0
        clean = bool(message) and not any(m in message for m in TRACE_MARKERS)
        return Attempt("gradio", status, time.perf_counter() - started, message[:200], None, clean)
    return Attempt("gradio", 200, time.perf_counter() - started, valid_image=size is not None and image_ok(Path(protected), size))


def client_loop(
    api: str, client: int, attempt: Callable[[], Attempt], config: LoadConfig, start: threading.Barrier, out: list[Attempt], lock: threading.Lock
) -> None:
    """Up to `config.requests` attempts within `config.seconds` of the common start, waiting the
    retry hint after a refusal."""
    start.wait()
    deadline = time.monotonic() + config.seconds
    for _ in range(config.requests):
        if time.monotonic() >= deadline:
            return
        began = time.perf_counter()
        try:
            result = attempt()
        except Exception as error:  # noqa: BLE001 - a lost request is an outcome to report
            result = Attempt(api, 0, time.perf_counter() - began, f"{type(error).__name__}: {error}"[:200], clean=False)
        result.client = client
        with lock:
            out.append(result)
        if result.status in (429, 503):
            time.sleep(max(0.0, min(result.retry_after or RETRY_WITHOUT_HINT_S, deadline - time.monotonic())))


def monitor_health(url: str, stop: threading.Event, out: list[tuple[int, float]]) -> None:
    with httpx.Client(base_url=url, timeout=HEALTH_TIMEOUT_S) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                status = http.get("health").status_code
            except httpx.HTTPError:
                status = 0
            out.append((status, time.perf_counter() - started))
            stop.wait(HEALTH_EVERY_S)


def gradio_client(url: str, workdir: Path, name: str, headers: dict[str, str]) -> Any:
    from gradio_client import Client

    return Client(url, verbose=False, analytics_enabled=False, download_files=str(workdir / name), headers=headers)


def run_phase(
    url: str, name: str, rest_clients: int, gradio_clients: int, config: LoadConfig, workdir: Path, alongside: Callable[[], None] | None = None
) -> PhaseResult:
    """`rest_clients` + `gradio_clients` clients released together (and `alongside`, if given);
    returns when all are done."""
    from gradio_client import handle_file

    with Image.open(PHOTO) as image:
        size = image.size
    body = {
        "image": base64.b64encode(PHOTO.read_bytes()).decode("ascii"),
        "model_type": config.model,
        "attack_params": {"iterations": config.iterations, "seed": 0},
        "return_deepfakes": False,
    }
    args = (handle_file(str(PHOTO)), config.model, "pgd", 0.05, config.iterations, 0.01, 0, [])
    attempts: list[Attempt] = []
    health: list[tuple[int, float]] = []
    lock = threading.Lock()
    https = [httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S, headers=identity(1, i)) for i in range(rest_clients)]
    gradios = [gradio_client(url, workdir, f"{name}-{i}", identity(2, i)) for i in range(gradio_clients)]
    start = threading.Barrier(rest_clients + gradio_clients + 1)
    workers = [
        threading.Thread(target=client_loop, args=("rest", i, lambda h=h: rest_attempt(h, body, size), config, start, attempts, lock))
        for i, h in enumerate(https)
    ] + [
        threading.Thread(target=client_loop, args=("gradio", i, lambda g=g: gradio_attempt(g, args, size), config, start, attempts, lock))
        for i, g in enumerate(gradios)
    ]
    stop = threading.Event()
    monitor = threading.Thread(target=monitor_health, args=(url, stop, health))
    for thread in [monitor, *workers]:
        thread.start()
    start.wait()  # every client is connected: release them together
    began = time.perf_counter()
    extra = threading.Thread(target=alongside) if alongside else None
    if extra:
        extra.start()
    for thread in [*workers, *([extra] if extra else [])]:
        thread.join()
    wall = time.perf_counter() - began
    stop.set()
    monitor.join()
    for http in https:
        http.close()
    for client in gradios:
        client.close()
    return PhaseResult(name, wall, attempts, health)


# ------------------------------------------------------------------------------------ probes


def probe_rate_limit(url: str, limit: int) -> dict[str, Any]:
    """`limit` + 3 cheap REST POSTs as one client, one after another, then one as another client."""
    statuses, refusals = [], []
    with httpx.Client(base_url=url, timeout=30, headers=identity(9, 0)) as http:
        for _ in range(limit + 3):
            response = http.post("api/v1/protect/image", json={})
            statuses.append(response.status_code)
            if response.status_code == 429:
                refusals.append({"message": response.json().get("message", ""), "retry_after": response.headers.get("retry-after", "")})
    other = httpx.post(f"{url}api/v1/protect/image", json={}, headers=identity(9, 1), timeout=30).status_code
    first = statuses.index(429) + 1 if 429 in statuses else None
    clean = all(r["message"] and r["retry_after"].isdigit() and int(r["retry_after"]) > 0 for r in refusals)
    return {
        "limit": limit,
        "sent": len(statuses),
        "passed": sum(s != 429 for s in statuses),
        "first_429_at": first,
        "other_client_status": other,
        "holds": 429 not in statuses[:limit] and statuses[limit:] == [429] * 3 and clean and other != 429,
        "sample_refusal": refusals[0] if refusals else None,
    }


def probe_gradio_queue(url: str, config: LoadConfig) -> dict[str, Any]:
    """`config.queue` + 4 simultaneous raw calls of /protect: the overflow must be 503s with a
    message and Retry-After, and every admitted call must complete."""
    uploaded = httpx.post(f"{url}gradio_api/upload", files={"files": (PHOTO.name, PHOTO.read_bytes(), "image/png")}, timeout=30).json()[0]
    photo = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}
    data = [photo, config.model, "pgd", 0.05, config.iterations, 0.01, 0, [], True, "off", False, 0, []]  # the raw API takes every input (faces last: [] = all)

    def call(index: int) -> httpx.Response:
        return httpx.post(f"{url}gradio_api/call/protect", json={"data": data}, headers=identity(8, index), timeout=30)

    def outcome(event_id: str) -> str:
        """`complete` or `error`: the last event of the call's stream."""
        stream = httpx.get(f"{url}gradio_api/call/protect/{event_id}", timeout=REQUEST_TIMEOUT_S).text
        events = [line.removeprefix("event:").strip() for line in stream.splitlines() if line.startswith("event:")]
        return events[-1] if events else "none"

    with ThreadPoolExecutor(config.queue + 4) as pool:
        responses = list(pool.map(call, range(config.queue + 4)))
        accepted = [r.json()["event_id"] for r in responses if r.status_code == 200]
        outcomes = list(pool.map(outcome, accepted))
    refused = [r for r in responses if r.status_code == 503]
    refusals = [{"detail": r.json().get("detail", ""), "retry_after": r.headers.get("retry-after", "")} for r in refused]
    clean = all(r["detail"] and r["retry_after"].isdigit() and int(r["retry_after"]) > 0 for r in refusals)
    others = [r.status_code for r in responses if r.status_code not in (200, 503)]
    return {
        "sent": len(responses),
        "accepted": len(accepted),
        "completed": outcomes.count("complete"),
        "refused_503": len(refused),
        "other_statuses": others,
        "holds": bool(refused) and clean and not others and outcomes.count("complete") == len(accepted),
        "sample_refusal": refusals[0] if refusals else None,
    }


def probe_gradio_rate_limit(url: str, limit: int, workdir: Path) -> dict[str, Any]:
    """`limit` + 3 cheap /protect calls (no photo: a quick error) from one gradio_client client.
    Reports whether any was refused as rate limited and, if so, whether after exactly `limit`."""
    client = gradio_client(url, workdir, "probe", identity(9, 2))
    try:
        results = [gradio_attempt(client, (None, "none", "pgd", 0.05, 1, 0.01)) for _ in range(limit + 3)]
    finally:
        client.close()
    limited = [a.status == 429 for a in results]
    return {
        "limit": limit,
        "sent": len(results),
        "limited": sum(limited),
        "present": any(limited),
        "exact": not any(limited[:limit]) and all(limited[limit:]),
        "other_messages": sorted({a.message for a in results if a.status != 429})[:3],
    }


# ------------------------------------------------------------------------------------ report


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def is_server_error(attempt: Attempt) -> bool:
    """A 5xx other than a clean busy refusal (a 503 with a message and a retry hint)."""
    return attempt.status >= 500 and not (attempt.status == 503 and attempt.clean)


def rows(report: Report) -> list[dict[str, Any]]:
    """One row per phase and API: counts, clients served at least once, latency percentiles (ms),
    accepted requests per second."""
    table = []
    for phase in report.phases:
        for api in sorted({a.api for a in phase.attempts}):
            group = [a for a in phase.attempts if a.api == api]
            accepted = [a.seconds for a in group if a.status == 200]
            refused = [a.seconds for a in group if a.status in (429, 503)]
            row: dict[str, Any] = {
                "phase": phase.name,
                "api": api,
                "requests": len(group),
                "200": len(accepted),
                "429": sum(a.status == 429 for a in group),
                "503": sum(a.status == 503 for a in group),
                "other": sum(a.status not in (200, 429, 503) for a in group),
                "5xx": sum(is_server_error(a) for a in group),
                "served": f"{len({a.client for a in group if a.status == 200})}/{len({a.client for a in group})}",
            }
            for label, values in (("ok", accepted), ("refused", refused)):
                for q, name in ((50, "p50"), (90, "p90"), (99, "p99"), (100, "max")):
                    value = percentile(values, q)
                    row[f"{label} {name}"] = None if value is None else round(value * 1000)
            row["ok/s"] = round(len(accepted) / phase.wall_seconds, 2)
            table.append(row)
    return table


def check(report: Report) -> list[str]:
    """The load test's pass conditions; an empty list when all hold."""
    failures = []
    for phase in report.phases:
        for a in phase.attempts:
            where = f"{phase.name}/{a.api}"
            if is_server_error(a):
                failures.append(f"{where}: server error {a.status}: {a.message}")
            elif a.status in (429, 503) and not a.clean:
                failures.append(f"{where}: refusal {a.status} without a message and retry hint: {a.message}")
            elif a.status == 200 and not a.valid_image:
                failures.append(f"{where}: an accepted request returned no valid image")
            elif a.status not in (200, 429, 503):
                failures.append(f"{where}: unexpected outcome {a.status}: {a.message}")
        unanswered = sum(status != 200 for status, _ in phase.health)
        if unanswered or not phase.health:
            failures.append(f"{phase.name}: /health failed {unanswered} of {len(phase.health)} polls")
    if report.health_after != 200:
        failures.append(f"/health after the load: {report.health_after}")
    if not report.rate_limit["holds"]:
        failures.append(f"REST rate limit did not hold: {report.rate_limit}")
    if not report.gradio_queue["holds"]:
        failures.append(f"Gradio queue overflow not refused cleanly (or never reached): {report.gradio_queue}")
    if report.gradio_rate_limit["present"] and not report.gradio_rate_limit["exact"]:
        failures.append(f"Gradio rate limit not exact: {report.gradio_rate_limit}")
    failures += [f"server log: {line}" for line in report.server_errors]
    return failures


def run(config: LoadConfig, workdir: Path) -> Report:
    """Start the app, run the phases and probes, stop the app; `report.failures` lists failed checks."""
    splits = {"rest": (config.clients, 0), "gradio": (0, config.clients), "mixed": (config.clients // 2, config.clients - config.clients // 2)}
    with running_app(config, workdir) as (url, log):
        probed: dict[str, Any] = {}

        def probe() -> None:
            probed.update(probe_rate_limit(url, config.rate_limit))

        phases = [run_phase(url, name, *splits[name], config, workdir) for name in config.phases[:-1]]
        phases += [run_phase(url, name, *splits[name], config, workdir, alongside=probe) for name in config.phases[-1:]]
        if not probed:  # no phase at all
            probe()
        gradio_queue = probe_gradio_queue(url, config)
        gradio_rate_limit = probe_gradio_rate_limit(url, config.rate_limit, workdir)
        health_after = httpx.get(f"{url}health", timeout=HEALTH_TIMEOUT_S).status_code
    report = Report(config, phases, probed, gradio_queue, gradio_rate_limit, health_after, server_errors(log))
    report.failures = check(report)
    return report


def format_table(table: list[dict[str, Any]]) -> str:
    """A Markdown table; None shows as `-`."""
    columns = list(table[0]) if table else []
    cells = [["-" if row[c] is None else str(row[c]) for c in columns] for row in table]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    return "\n".join(lines + ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells])


def summary(report: Report) -> str:
    """The table, one line per probe and one sample message per kind of refusal, as printed."""
    config, probe, queue, gradio = report.config, report.rate_limit, report.gradio_queue, report.gradio_rate_limit
    polls = [poll for phase in report.phases for poll in phase.health]
    p50, top = (round((percentile([t for _, t in polls], q) or 0) * 1000) for q in (50, 100))
    setup = (f"{config.clients} clients per phase, at most {config.requests} attempts each within {config.seconds:g} s; "
             f"model {config.model}, PGD {config.iterations} iterations; DEEPSHIELD_MAX_CONCURRENT=1, "
             f"MAX_QUEUE_SIZE={config.queue}, RATE_LIMIT_PER_MINUTE={config.rate_limit}")
    health = f"/health during the load: {sum(s == 200 for s, _ in polls)}/{len(polls)} polls 200, p50 {p50} ms, max {top} ms; after: {report.health_after}"
    rest = (f"REST rate limit {probe['limit']}/min, {probe['sent']} requests from one client during the last phase: "
            f"{probe['passed']} passed, first 429 at #{probe['first_429_at']} (Retry-After "
            f"{(probe['sample_refusal'] or {}).get('retry_after')}); another client then: {probe['other_client_status']}")
    overflow = (f"Gradio queue, {queue['sent']} simultaneous raw /protect calls: {queue['accepted']} admitted "
                f"({queue['completed']} completed), {queue['refused_503']} refused 503, e.g. {queue['sample_refusal']}")
    limited = (f"Gradio rate limit: {gradio['limited']} of {gradio['sent']} cheap /protect calls from one client refused as rate limited"
               f"{'' if gradio['present'] else ' (the Gradio API has no per-client rate limit)'}")
    legend = ("served = clients with at least one 200; latencies in ms (ok = 200, refused = 429 / 503); "
              "5xx = server errors other than a clean busy 503; ok/s = 200s per second of the phase")
    lines = [setup, legend, "", format_table(rows(report)), "", health, rest, overflow, limited]
    samples: dict[tuple[str, int], str] = {}
    for a in (a for phase in report.phases for a in phase.attempts if a.status != 200):
        samples.setdefault((a.api, a.status), a.message)
    lines += [f"{api} {status}, e.g.: {message}" for (api, status), message in sorted(samples.items())]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=LoadConfig.clients, help="clients per phase")
    parser.add_argument("--requests", type=int, default=LoadConfig.requests, help="attempts per client and phase")
    parser.add_argument("--seconds", type=float, default=LoadConfig.seconds, help="no new attempt after this long in a phase")
    parser.add_argument("--model", default=LoadConfig.model, help=f"a model whose weights are on this machine, or {TINY!r}")
    parser.add_argument("--iterations", type=int, default=LoadConfig.iterations, help="PGD iterations of each protection")
    parser.add_argument("--queue", type=int, default=LoadConfig.queue, help="MAX_QUEUE_SIZE")
    parser.add_argument("--rate-limit", type=int, default=LoadConfig.rate_limit, help="RATE_LIMIT_PER_MINUTE (at least 1)")
    parser.add_argument("--json", type=Path, help="also write the whole report here")
    args = parser.parse_args(argv)
    if args.rate_limit < 1 or args.clients < 2:
        parser.error("--rate-limit must be at least 1 (it is probed) and --clients at least 2")
    config = LoadConfig(args.clients, args.requests, args.seconds, args.model, args.iterations, args.queue, args.rate_limit)
    with tempfile.TemporaryDirectory(prefix="deepshield-load-") as workdir:
        report = run(config, Path(workdir))
    print(summary(report))
    if args.json:
        args.json.write_text(json.dumps({**asdict(report), "table": rows(report)}, indent=2, default=str))
    for failure in report.failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("all checks passed" if not report.failures else f"{len(report.failures)} check(s) failed")
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
