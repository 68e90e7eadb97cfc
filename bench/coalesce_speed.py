"""Pooling concurrent single-photo requests (Engine.protect with `coalesce`) against one at a time.

    python bench/coalesce_speed.py [--model cyclegan-vintage] [--clients 8] [--rounds 2] [--iterations 10]

`--clients` threads each send `--rounds` single-photo protections (faces-dev photos, one seed per
request) to one engine at concurrency 1, as the REST API and the UI do, first with `coalesce`
off, then on, after a warm-up each. Prints the throughput, the mean latency, the mean pass size,
the speed-up, and the paired disruption (same photo, same seed) of the two runs.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from photos import dev_photos

from deepshield.engine import Engine


def run(engine: Engine, photos: list[Path], clients: int, rounds: int, options: dict[str, Any]) -> dict[str, Any]:
    """Every client protects its photos one request at a time; all clients at once."""
    latencies: list[float] = []
    passes: list[int] = []
    mse: dict[int, float] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        for round_ in range(rounds):
            request = index * rounds + round_
            started = time.perf_counter()
            result = engine.protect(photos[request % len(photos)], seed=request, on_step=lambda s, t, loss: passes.append(loss.shape[0]), **options)
            with lock:
                latencies.append(time.perf_counter() - started)
                mse[request] = result.metrics["disruption"]["mse"]

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    return {
        "images_per_s": len(latencies) / seconds,
        "latency_s": statistics.mean(latencies),
        "pass_size": statistics.mean(passes),
        "mse": [mse[k] for k in sorted(mse)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cyclegan-vintage")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=10)
    args = parser.parse_args()
    photos = dev_photos()
    options = {"model": args.model, "iterations": args.iterations, "allow_download": False}
    rows = {}
    for coalesce in (False, True):
        engine = Engine(device="cpu" if not torch.cuda.is_available() else "cuda", max_concurrent=1, max_queue=4 * args.clients, coalesce=coalesce)
        engine.protect(photos[0], seed=0, **options)  # warm-up: load, first-call overheads
        rows["pooled" if coalesce else "one at a time"] = run(engine, photos, args.clients, args.rounds, options)
    base = rows["one at a time"]["images_per_s"]
    print(f"{args.model}, PGD {args.iterations} iterations, {args.clients} clients x {args.rounds} requests, concurrency 1, "
          f"{torch.get_num_threads()} threads, device {'cuda' if torch.cuda.is_available() else 'cpu'}")
    print("| mode | images/s | mean latency (s) | photos per pass | speed-up | mean disruption mse |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['images_per_s']:.3f} | {row['latency_s']:.1f} | {row['pass_size']:.2f} | "
              f"{row['images_per_s'] / base:.2f}x | {np.mean(row['mse']):.4f} |")
    gap = np.abs(np.array(rows["pooled"]["mse"]) - np.array(rows["one at a time"]["mse"]))
    print(f"paired disruption (same photo and seed): max |mse pooled - mse alone| = {gap.max():.5f}")


if __name__ == "__main__":
    main()
