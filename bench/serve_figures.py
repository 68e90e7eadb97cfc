"""Web-app figures: start-up time, one protection through the browser UI, and what the queue
does with 20 simultaneous gradio_client requests.

    python bench/serve_figures.py [--clients 20] [--concurrency 1] [--queue 8] [--iterations 10]

Starts `python app.py` as a new user would (loopback only, a free port), so every figure
includes the real Gradio server. The browser step needs Debian's chromium and the playwright
package (pointed at /usr/bin/chromium).
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "synthetic-portrait.png"
CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(url: str, timeout: float) -> float:
    """Seconds until `url` answers 200."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.perf_counter() - started
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{url} did not answer within {timeout} s")


@contextmanager
def running_app(**env: str) -> Iterator[tuple[str, float]]:
    """`python app.py` on a free loopback port; yields (base url, seconds to the first page)."""
    port = free_port()
    environment = {**os.environ, "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "WARNING", **env}
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(f"http://127.0.0.1:{port}/", timeout=180)
        yield f"http://127.0.0.1:{port}", time.perf_counter() - started
    finally:
        process.terminate()
        process.wait(30)


def browser_protection(url: str) -> float:
    """Seconds from clicking Protect (defaults: offline model, PGD 10 iterations) to the four
    images and the metrics table shown."""
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(url)
        expect(page.locator("#protect-button")).to_be_visible(timeout=60_000)
        page.locator("#original-image input[type=file]").set_input_files(str(EXAMPLE))
        expect(page.locator("#original-image img").first).to_be_visible(timeout=30_000)
        started = time.perf_counter()
        page.locator("#protect-button").click()
        for selector in ("#protected-image", "#deepfake-original", "#deepfake-protected", "#perturbation-image"):
            expect(page.locator(f"{selector} img").first).to_be_visible(timeout=600_000)
        expect(page.locator("#metrics-table")).to_contain_text("disruption mse", timeout=60_000)
        elapsed = time.perf_counter() - started
        browser.close()
    return elapsed


def queue_storm(url: str, clients: int, iterations: int) -> tuple[Counter, list[float]]:
    """Fire `clients` /protect calls at once; count completed / rejected / errors."""
    from gradio_client import Client, handle_file

    outcomes: Counter = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one() -> None:
        client = Client(url, verbose=False)
        barrier.wait()
        started = time.perf_counter()
        try:
            client.predict(handle_file(str(EXAMPLE)), "cyclegan-vintage", "pgd", 0.05, iterations, 0.01, api_name="/protect")
            kind = "completed"
        except Exception as error:  # gradio_client raises AppError / generic errors for a full queue
            text = str(error).lower()
            kind = "rejected" if ("queue" in text and "full" in text) or "busy" in text else f"error: {str(error)[:80]}"
        with lock:
            outcomes[kind] += 1
            if kind == "completed":
                latencies.append(time.perf_counter() - started)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    return outcomes, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--queue", type=int, default=8)
    parser.add_argument("--storm-iterations", type=int, default=2, help="PGD iterations of each simultaneous request")
    args = parser.parse_args()

    with running_app() as (url, startup):
        print(f"python app.py -> first page served: {startup:.1f} s")
        seconds = browser_protection(url)
        print(f"one protection through the browser UI (defaults: cyclegan-vintage, PGD 10 it, 384x448 photo): {seconds:.1f} s")
    limits = {"DEEPSHIELD_MAX_CONCURRENT": str(args.concurrency), "MAX_QUEUE_SIZE": str(args.queue)}
    with running_app(**limits) as (url, _):
        outcomes, latencies = queue_storm(url, args.clients, args.storm_iterations)
    print(f"{args.clients} simultaneous gradio_client /protect calls, concurrency {args.concurrency}, queue size {args.queue}, "
          f"PGD {args.storm_iterations} it each:")
    for kind, count in sorted(outcomes.items()):
        print(f"  {kind}: {count}")
    if latencies:
        print(f"  completed latency: median {statistics.median(latencies):.1f} s, max {max(latencies):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
