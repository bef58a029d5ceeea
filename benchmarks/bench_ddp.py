#!/usr/bin/env python
"""Training-step time of one run on 1 and on 2 processes (torchrun, gloo on the CPU).

    python benchmarks/bench_ddp.py                 # EM recipe model, base_channels 16, global batch 4, 96x96
    python benchmarks/bench_ddp.py --channels 64 --batch 4 --crop 200 --steps 10

The global batch stays the same (each of the 2 ranks takes half), as in the trainer. Each world
size runs as ``python -m torch.distributed.run --standalone --nproc_per_node=N`` of this script
(``OMP_NUM_THREADS`` = CPUs / N per rank, or ``--threads``); a rank times the median of ``--steps`` steps after 3
warm-up steps (forward, loss, backward with DDP's gradient all-reduce, Adam) in wall-clock and in
CPU seconds. The scaling itself is a GPU matter; on a 2-core CPU two ranks share the same cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unet import distributed  # noqa: E402
from unet.config import load_config  # noqa: E402
from unet.launchers import cpu_count  # noqa: E402
from unet.losses import get_loss  # noqa: E402
from unet.model import build_model  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    """One rank: time ``args.steps`` steps of the FIXED a6.0_w0.4 model on its share of the batch."""
    world = distributed.init(distributed.env_world())
    cfg = load_config(REPO / "EM_BASE" / "config.yaml", REPO / "em" / "a6.0_w0.4" / "config.yaml", "UNET",
                      [f"base_channels={args.channels}"])
    torch.manual_seed(0)
    model = build_model(cfg)
    net = distributed.wrap(model, world, torch.device("cpu"), False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = get_loss(cfg.loss)
    share = args.batch // world.size
    images = torch.rand(share, 1, args.crop, args.crop).contiguous(memory_format=torch.channels_last)
    masks = (torch.rand(share, 1, args.crop, args.crop) > 0.5).float()
    wall, cpu = [], []
    for i in range(args.steps + 3):
        distributed.barrier(world)
        started, started_cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(images), masks).backward()
        optimizer.step()
        if i >= 3:
            wall.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    rows = distributed.all_gather(world, (statistics.median(wall), statistics.median(cpu)))
    if world.is_main:
        print(json.dumps({"world_size": world.size, "step_ms": max(r[0] for r in rows) * 1000,
                          "cpu_ms_per_rank": [r[1] * 1000 for r in rows], "threads": torch.get_num_threads()}))
    distributed.teardown(world)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--batch", type=int, default=4, help="global batch (even)")
    parser.add_argument("--crop", type=int, default=96)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=0,
                        help="threads per rank (default: the CPUs split over the ranks)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if "WORLD_SIZE" in os.environ:
        worker(args)
        return 0
    results = []
    for size in (1, 2):
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads or max(1, cpu_count() // size))}
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              f"--nproc_per_node={size}", __file__, *sys.argv[1:]], capture_output=True, text=True,
                             env=env, check=False)
        line = [s for s in out.stdout.splitlines() if s.startswith("{")]
        if out.returncode != 0 or not line:
            print(f"error: world size {size} failed: {out.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
            return 1
        results.append(json.loads(line[-1]))
        r = results[-1]
        print(f"world size {size}: {r['step_ms']:.0f} ms per step (slowest rank, wall), CPU "
              f"{', '.join(f'{c:.0f}' for c in r['cpu_ms_per_rank'])} ms per rank, {r['threads']} thread(s) per rank")
    print(f"ratio 2 / 1: x{results[1]['step_ms'] / results[0]['step_ms']:.2f} (wall); base_channels {args.channels}, "
          f"global batch {args.batch}, {args.crop}x{args.crop}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": None}, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
