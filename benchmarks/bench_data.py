#!/usr/bin/env python
"""Speed of the GM online augmentation, against its per-slice budget.

The GM trainer augments every training slice (SPEC §5): elastic deformation with probability
0.3, then a random affine, on the 200 x 200 centre crop. This benchmark times, on a smooth
200 x 200 float32 slice with its binary mask:

* ``random_affine`` and ``elastic_deform`` alone, and ``augment_gm`` (the trainer's call);
* per call: the median wall-clock time and the median CPU time of this process (all threads,
  ``time.process_time``), over ``--reps`` calls after one warm-up call each, the functions
  taking turns (round-robin) so that background load on a shared machine hits them alike.

Run from the repository root::

    python benchmarks/bench_data.py                  # about 2 s on 2 quiet cores
    python benchmarks/bench_data.py --reps 200 --json bench_data.json

Targets (printed with whether they hold): ``random_affine`` at most 5 ms and
``elastic_deform`` at most 10 ms of CPU time per 200 x 200 call. CPU time is the judged
figure because a busy machine stretches wall-clock time; both are printed. These targets
used to be wall-clock assertions in ``tests/data/test_augment.py`` (loose bounds 25 / 50 ms); a
test asserts behaviour, the speed lives here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unet.data.augment import augment_gm, elastic_deform, random_affine  # noqa: E402
from unet.fileio import atomic_write_text  # noqa: E402

#: CPU milliseconds per 200 x 200 call that each function must stay within.
TARGET_MS = {"random_affine": 5.0, "elastic_deform": 10.0}
FUNCTIONS: dict[str, Callable] = {
    "random_affine": random_affine,
    "elastic_deform": elastic_deform,
    "augment_gm": augment_gm,
}


def sample_slice(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth float32 image in [0, 1] with a few bright blobs, and its mask (image > 0.5)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    image = np.zeros((size, size), np.float32)
    for _ in range(4):
        cy, cx = rng.uniform(0.3, 0.7, size=2) * size
        r = rng.uniform(0.06, 0.12) * size
        image += np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * r * r))
    image = np.clip(image, 0, 1)
    return image, (image > 0.5).astype(np.uint8)


def measure(size: int, reps: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median wall and CPU milliseconds per call of each function (round-robin over ``reps``)."""
    image, mask = sample_slice(size, seed)
    rng = np.random.default_rng(seed)
    wall: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    cpu: dict[str, list[float]] = {name: [] for name in FUNCTIONS}
    for fn in FUNCTIONS.values():
        fn(image, mask, rng)  # warm-up: imports, caches
    for _ in range(reps):
        for name, fn in FUNCTIONS.items():
            w, c = time.perf_counter(), time.process_time()
            fn(image, mask, rng)
            cpu[name].append(1e3 * (time.process_time() - c))
            wall[name].append(1e3 * (time.perf_counter() - w))
    return {name: {"wall_ms": statistics.median(wall[name]), "cpu_ms": statistics.median(cpu[name])}
            for name in FUNCTIONS}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Time the GM augmentation per 200x200 slice.")
    parser.add_argument("--reps", type=int, default=50, help="timed calls per function (default 50)")
    parser.add_argument("--size", type=int, default=200, help="slice size in pixels (default 200, the GM crop)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.size < 16:
        parser.error("--reps must be >= 1 and --size >= 16")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = os.getloadavg()[0]
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results = measure(args.size, args.reps)
    print(f"GM augmentation, {args.size}x{args.size} float32 slice, median of {args.reps} calls "
          f"(round-robin), load average {load:.2f} on {cpus} CPUs")
    print(f"{'function':16s} {'wall ms':>8s} {'CPU ms':>8s} {'target':>8s}")
    for name, r in results.items():
        target = f"{TARGET_MS[name]:.0f}" if name in TARGET_MS else "-"
        print(f"{name:16s} {r['wall_ms']:8.2f} {r['cpu_ms']:8.2f} {target:>8s}")
    holds = {name: results[name]["cpu_ms"] <= TARGET_MS[name] for name in TARGET_MS}
    for name, ok in holds.items():
        r = results[name]
        print(f"target {name} <= {TARGET_MS[name]:.0f} ms CPU per call: {'holds' if ok else 'MISSED'} "
              f"({r['cpu_ms']:.2f} ms; wall/CPU {r['wall_ms'] / max(r['cpu_ms'], 1e-9):.2f})")
    if load > cpus + 0.5:
        print(f"warning: the machine was busy (load average {load:.1f} above its {cpus} CPUs): wall-clock "
              "figures are stretched; judge by CPU time or rerun on a quiet machine")
    if args.json:
        payload = {"size": args.size, "reps": args.reps, "load_average": load, "cpus": cpus,
                   "results": results, "targets_ms_cpu": TARGET_MS, "holds": holds}
        atomic_write_text(args.json, json.dumps(payload, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
