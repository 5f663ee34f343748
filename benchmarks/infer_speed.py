"""HTNet inference throughput: batched BatchRunner vs a per-window loop, in the same run (windows/s, medians).

Measures the product path (uint8 RGB flow pictures in, float32 probabilities out: conversion, model, sigmoid) on random
pictures; throughput does not depend on the weights, so a random seed-config model is used unless --weights is given.
Columns: median and best windows per wall-clock second over the repeats, and windows per CPU-second of this process
(a figure that other jobs on a shared machine disturb less; with the default OpenMP spin-waiting it counts spinning too).

    python benchmarks/infer_speed.py                       # CPU, batch sizes 1,32,256,1024
    python benchmarks/infer_speed.py --device cuda         # the GPU figure, where one is present
    OMP_WAIT_POLICY=PASSIVE python benchmarks/infer_speed.py --threads 2   # see docs/benchmarks.md on busy machines
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout without installing

from au_annotate.infer import BatchRunner, select_device  # noqa: E402
from au_annotate.model import HTNet, HTNetConfig  # noqa: E402
from au_annotate.weights import SEED25_AU_ORDER, LoadedModel, load_weights  # noqa: E402


def _random_loaded() -> LoadedModel:
    """A seed-config model with random weights (speed only)."""
    torch.manual_seed(0)
    model = HTNet().eval()
    return LoadedModel(
        model=model, config=HTNetConfig(), au_names=SEED25_AU_ORDER, thresholds=np.full(25, 0.5, np.float32),
        reliable=np.ones(25, bool), sha256="-", path=Path("-"), name="random", meta={},
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Wall times and process CPU times of `repeats` calls after one warm-up call."""
    fn()
    _sync(device)
    wall, cpu = [], []
    for _ in range(repeats):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        _sync(device)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return wall, cpu


def _row(mode: str, batch_size: int, windows: int, wall: list[float], cpu: list[float]) -> dict:
    """Windows per wall second (median, best) and per CPU second of this process (median)."""
    return {"mode": mode, "batch_size": batch_size, "windows": windows,
            "median_wps": windows / statistics.median(wall), "best_wps": windows / min(wall),
            "cpu_wps": windows / max(statistics.median(cpu), 1e-9)}


def run(device_spec: str, batch_sizes: list[int], windows: int, loop_windows: int, repeats: int,
        weights: str | None) -> dict:
    """Time the per-window loop and each batch size; returns a result dict (also printed as a table)."""
    loaded = _random_loaded() if weights is None else load_weights(weights)
    device = select_device(device_spec)
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, size=(windows, 28, 28, 3), dtype=np.uint8)
    rows = []

    single = BatchRunner(loaded, device=device_spec, batch_size=1)
    few = pictures[:loop_windows]

    def loop() -> None:
        for i in range(len(few)):
            single.predict(few[i : i + 1])

    rows.append(_row("per-window loop", 1, len(few), *_time(loop, repeats, device)))
    for bs in batch_sizes:
        runner = BatchRunner(loaded, device=device_spec, batch_size=bs)
        rows.append(_row("batched", bs, windows, *_time(lambda r=runner: r.predict(pictures), repeats, device)))
    info = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "repeats": repeats,
        "weights": loaded.name,
    }
    return {"info": info, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run, print (and optionally save JSON)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, auto (default cpu)")
    ap.add_argument("--batch-sizes", default="1,32,256,1024", help="comma-separated (default 1,32,256,1024)")
    ap.add_argument("--windows", type=int, default=4096, help="pictures per batched run (default 4096)")
    ap.add_argument("--loop-windows", type=int, default=512, help="pictures in the per-window loop (default 512)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats per mode; medians reported (default 5)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    ap.add_argument("--weights", default=None, help="a checkpoint to load (default: random seed-config weights)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args.device, [int(b) for b in args.batch_sizes.split(",")], args.windows, args.loop_windows,
                 args.repeats, args.weights)
    info = result["info"]
    print(" ".join(f"{k}={v}" for k, v in info.items()))
    print(f"{'mode':<16} {'batch':>6} {'windows':>8} {'median win/s':>13} {'best win/s':>11} {'win/CPU-s':>10}")
    loop_wps = result["rows"][0]["median_wps"]
    for row in result["rows"]:
        speedup = row["median_wps"] / loop_wps
        print(f"{row['mode']:<16} {row['batch_size']:>6} {row['windows']:>8} {row['median_wps']:>13,.0f} "
              f"{row['best_wps']:>11,.0f} {row['cpu_wps']:>10,.0f}   x{speedup:.1f} vs loop")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
