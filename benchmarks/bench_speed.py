#!/usr/bin/env python
"""Speed of every quantization mode against Normal: training step, whole epoch, eval forward.

For each mode (Normal, FIXED nearest, FIXED pow2, INT, BNN, Ternary), in one process with the
modes' repetitions interleaved (round-robin, every other round reversed, so background load
on a shared machine hits every mode alike), it measures

* the training step (forward, loss, backward, Adam) of the EM recipe's U-Net on a fixed batch;
* one whole epoch through the real trainer: ``unet.train.run`` in-process with
  ``num_epochs: 1`` on a small synthetic EM set written by the real preparation code
  (setup, training, validation with every metric, overlay figure, checkpoints);
* the forward pass in evaluation mode under ``torch.no_grad`` (what validation with
  ``val_bn_mode: eval``, ``inference`` and prediction run), as images per second;

each as wall-clock and process CPU time, minimum and median over the repetitions, and the
ratio to Normal (min to min, median to median). The target is every mode at most 1.05x
Normal; a target "holds" when both ratios meet it, "min only" when only the minimum does.
``--profile`` adds where the time goes: torch.profiler's top operators of one eval forward
per mode and a cProfile breakdown of one trainer epoch (training, validation forward,
per-slice metrics, overlay, checkpoints).

Run from the repository root::

    python benchmarks/bench_speed.py --quick            # about 25 s on 2 idle cores (under 2 minutes)
    python benchmarks/bench_speed.py --json speed.json  # the EM recipe's width: about 6 minutes
    python benchmarks/bench_speed.py --quick --no-kernels   # the PyTorch rules (quantizer.native off)
    python benchmarks/bench_speed.py --quick --profile --modes normal,fixed_pow2
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from quantizer import native  # noqa: E402
from unet.config import Config, load_config  # noqa: E402
from unet.losses import get_loss  # noqa: E402
from unet.model import build_model  # noqa: E402
from unet.recipes import png_pair_recipe  # noqa: E402
from unet.runtime import tune_allocator  # noqa: E402
from unet.train import run  # noqa: E402

EM_BASE = REPO / "EM_BASE" / "config.yaml"
TARGET = 1.05

from modes import MODES  # noqa: E402

METRICS = ("step", "epoch", "forward")


def em_config(overrides: list[str]) -> Config:
    """The EM recipe's config (its base file) with ``overrides``."""
    return load_config(EM_BASE, EM_BASE, overrides=overrides)


class Timer:
    """Wall-clock and process CPU seconds of a block: ``with Timer() as t: ...; t.wall, t.cpu``."""

    def __enter__(self) -> Timer:
        self._cpu, self._wall = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


class ModeBench:
    """One mode's model, optimizer and fixed batches; its timings per metric."""

    def __init__(self, key: str, args: argparse.Namespace) -> None:
        self.key = key
        self.cfg = em_config(MODES[key][1] + [f"base_channels={args.base_channels}"])
        torch.manual_seed(0)
        self.model = build_model(self.cfg)  # channels_last, as the engine
        cl = torch.channels_last
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(args.batch, 1, args.size, args.size, generator=g).contiguous(memory_format=cl)
        self.y = (torch.rand(args.batch, 1, args.size, args.size, generator=g) > 0.5).float()
        self.y = self.y.contiguous(memory_format=cl)
        self.xv = torch.rand(args.val_batch, 1, args.size, args.size, generator=g).contiguous(memory_format=cl)
        self.loss_fn: Callable = get_loss(self.cfg.loss)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.wall: dict[str, list[float]] = {m: [] for m in METRICS}
        self.cpu: dict[str, list[float]] = {m: [] for m in METRICS}

    def step(self) -> Timer:
        self.model.train()
        with Timer() as t:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss_fn(self.model(self.x), self.y)
            loss.item()
            loss.backward()
            self.optimizer.step()
        return t

    def release(self) -> None:
        """Drop the model, optimizer and batches (the timings stay)."""
        del self.model, self.optimizer, self.x, self.y, self.xv

    @torch.no_grad()
    def forward(self) -> Timer:
        self.model.eval()
        with Timer() as t:
            self.model(self.xv)
        return t


def make_em_data(root: Path, args: argparse.Namespace) -> Path:
    """A small synthetic EM set in the prepared PNG-pair format (the real preparation code)."""
    from unet.prep.em import prepare_em, synthetic_em_stack

    n = args.epoch_slices
    volume, labels = synthetic_em_stack(n_slices=n, size=2 * args.epoch_size, seed=0)
    val = list(range(n - max(1, n // 5), n))
    prepare_em(volume, labels, root, val_slices=val, resize=args.epoch_size, crop=args.epoch_size)
    return root


def epoch_run(key: str, data: Path, out: Path, tag: str, args: argparse.Namespace) -> Timer:
    """One ``num_epochs: 1`` run of the EM trainer through ``unet.train.run``, output silenced."""
    recipe = png_pair_recipe("EM", EM_BASE, "benchmarks/bench_speed.py makes its own data", isbi_metrics=True)
    cfg = em_config(MODES[key][1] + [
        f"dataset_path={data}", f"crop_size=[{args.epoch_size}, {args.epoch_size}]",
        f"base_channels={args.epoch_base_channels}", "num_epochs=1", f"log_output_dir={out}",
        f"experiment_name={key}-{tag}", f"batch_size={args.batch}", f"val_batch_size={args.val_batch}"])
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink), Timer() as t:
        status = run(cfg, recipe, script="bench_speed.py")
    if status != 0:
        raise RuntimeError(f"{key}: the trainer exited with status {status}:\n{sink.getvalue()[-2000:]}")
    return t


def interleaved(benches: list[ModeBench], metric: str, rounds: int, warmup: int,
                fn: Callable[[ModeBench, int], Timer], log: Callable[[str], None]) -> None:
    for r in range(warmup + rounds):
        for b in benches if r % 2 == 0 else benches[::-1]:
            t = fn(b, r)
            if r >= warmup:
                b.wall[metric].append(t.wall)
                b.cpu[metric].append(t.cpu)
        log(f"  {metric} round {r + 1}/{warmup + rounds}{' (warm-up)' if r < warmup else ''}: " + "  ".join(
            f"{b.key} {b.wall[metric][-1] * 1e3:.0f}" for b in benches if r >= warmup) + (" ms" if r >= warmup else ""))


def summarize(benches: list[ModeBench], batch_for: dict[str, int]) -> dict:
    normal = next((b for b in benches if b.key == "normal"), None)
    out: dict = {}
    for b in benches:
        row: dict = {"label": MODES[b.key][0]}
        for m in METRICS:
            if not b.wall[m]:
                continue
            stats = {"wall_min_s": min(b.wall[m]), "wall_median_s": statistics.median(b.wall[m]),
                     "cpu_min_s": min(b.cpu[m]), "cpu_median_s": statistics.median(b.cpu[m]),
                     "wall_all_s": b.wall[m], "cpu_all_s": b.cpu[m]}
            if m == "forward":
                stats["images_per_s_best"] = batch_for[m] / stats["wall_min_s"]
                stats["images_per_s_median"] = batch_for[m] / stats["wall_median_s"]
            if normal is not None and normal.wall[m]:
                for k in ("wall_min", "wall_median", "cpu_min", "cpu_median"):
                    ref = {"wall_min": min, "cpu_min": min}.get(k, statistics.median)
                    base = ref(normal.wall[m] if k.startswith("wall") else normal.cpu[m])
                    stats[f"{k}_ratio"] = stats[f"{k}_s"] / base
                lo, med = stats["wall_min_ratio"], stats["wall_median_ratio"]
                stats["target"] = "holds" if max(lo, med) <= TARGET else ("min only" if lo <= TARGET else "MISSED")
            row[m] = stats
        out[b.key] = row
    return out


def print_table(rows: dict, args: argparse.Namespace) -> None:
    side = f"{args.size}x{args.size}"
    titles = {"step": f"training step, batch {args.batch} at {side}, base_channels {args.base_channels}",
              "epoch": f"one epoch through the trainer ({args.epoch_slices} synthetic EM slices at "
                       f"{args.epoch_size}px, base_channels {args.epoch_base_channels}; setup, validation, "
                       "overlay, checkpoints included)",
              "forward": f"eval forward, batch {args.val_batch} at {args.size}x{args.size}, "
                         f"base_channels {args.base_channels}, no_grad"}
    for m in METRICS:
        if not any(m in r for r in rows.values()):
            continue
        print(f"\n{titles[m]}")
        extra = "  img/s" if m == "forward" else ""
        print(f"{'mode':31s} {'min ms':>8s} {'med ms':>8s} {'x min':>6s} {'x med':>6s} {'CPU x min':>9s} "
              f"{'CPU x med':>9s}{extra}  target <= {TARGET:.2f}x")
        for row in rows.values():
            s = row.get(m)
            if s is None:
                continue
            ratio = [f"{s.get(k, float('nan')):.3f}" for k in
                     ("wall_min_ratio", "wall_median_ratio", "cpu_min_ratio", "cpu_median_ratio")]
            ips = f"  {s['images_per_s_best']:5.2f}" if m == "forward" else ""
            print(f"{row['label']:31s} {s['wall_min_s'] * 1e3:8.0f} {s['wall_median_s'] * 1e3:8.0f} {ratio[0]:>6s} "
                  f"{ratio[1]:>6s} {ratio[2]:>9s} {ratio[3]:>9s}{ips}  {s.get('target', '-')}")


# --- profile -------------------------------------------------------------------------------

#: Functions whose cumulative time the epoch profile reports, by label.
EPOCH_PARTS = {
    "training steps (_train_epoch)": "_train_epoch",
    "validation (evaluate, all)": "evaluate",
    "  of which per-slice metrics": "slice_metrics",
    "    Hausdorff": "_hausdorff",
    "    adapted Rand error": "_adapted_rand_error",
    "overlay figure": "save_overlay_figure",
    "checkpoints (save_checkpoint)": "save_checkpoint",
    "metrics.csv": "_write_csv",
    "data set construction": "builder",
}


def profile_epoch(key: str, data: Path, out: Path, args: argparse.Namespace) -> dict[str, float]:
    """cProfile one trainer epoch; cumulative seconds of :data:`EPOCH_PARTS` and the total."""
    prof = cProfile.Profile()
    prof.enable()
    t = epoch_run(key, data, out, "profile", args)
    prof.disable()
    stats = pstats.Stats(prof)
    found = {label: 0.0 for label in EPOCH_PARTS}
    for (_file, _line, name), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():  # type: ignore[attr-defined]
        for label, fn in EPOCH_PARTS.items():
            if name == fn:
                found[label] = max(found[label], ct)
    found["whole run"] = t.wall
    return found


def profile_forward(bench: ModeBench, top: int) -> list[tuple[str, float, int]]:
    """torch.profiler on one eval forward: the ``top`` operators by self CPU time (ms, calls)."""
    from torch.profiler import ProfilerActivity, profile

    bench.forward()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        bench.forward()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    return [(e.key, e.self_cpu_time_total / 1e3, e.count) for e in events[:top]]


# --- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--quick", action="store_true", help="a narrower model and fewer repetitions: under 2 minutes")
    p.add_argument("--reps", type=int, default=None, help="timed interleaved rounds per metric (default 5, quick 7)")
    p.add_argument("--epoch-reps", type=int, default=None, help="timed epoch rounds (default 5, quick 4)")
    p.add_argument("--base-channels", type=int, default=None, help="width for step and forward (default 64, quick 16)")
    p.add_argument("--size", type=int, default=None, help="input side for step and forward (default 200, quick 128)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the EM recipe's, 5)")
    p.add_argument("--val-batch", type=int, default=None, help="eval batch (default: the EM recipe's, 4)")
    p.add_argument("--epoch-slices", type=int, default=None, help="synthetic EM slices (default 30, quick 15)")
    p.add_argument("--epoch-size", type=int, default=None, help="slice side for the epoch (default 96, quick 64)")
    p.add_argument("--epoch-base-channels", type=int, default=None,
                   help="width for the epoch (default 64, the EM recipe's; quick 8)")
    p.add_argument("--no-epoch", dest="epoch", action="store_false", help="skip the trainer epochs")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                   help="leave glibc's allocator as it is (the commands call unet.runtime.tune_allocator)")
    p.add_argument("--no-kernels", dest="kernels", action="store_false",
                   help="run the PyTorch rules instead of the fused kernels of quantizer.native (same values)")
    p.add_argument("--profile", action="store_true", help="also profile one eval forward and one epoch per mode")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the tables")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    defaults = {"reps": (5, 7), "epoch_reps": (5, 4), "base_channels": (64, 16), "size": (200, 128),
                "epoch_slices": (30, 15), "epoch_size": (96, 64), "epoch_base_channels": (64, 8)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    base = em_config([])
    args.batch = args.batch or base.batch_size
    args.val_batch = args.val_batch or base.val_batch_size
    if args.size % 8 or args.epoch_size % 8:
        p.error("--size and --epoch-size must be multiples of 8")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    allocator = tune_allocator() if args.tune_allocator else False
    if args.threads:
        torch.set_num_threads(args.threads)
    native.set_enabled(args.kernels)
    kernels = native.status()
    began = time.perf_counter()
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load_start[0]:.2f}; "
          f"modes {', '.join(args.modes)}; allocator tuned: {allocator}; fused kernels: {kernels}")
    benches = [ModeBench(k, args) for k in args.modes]
    interleaved(benches, "step", args.reps, 1, lambda b, _r: b.step(), log)
    interleaved(benches, "forward", args.reps, 1, lambda b, _r: b.forward(), log)
    profile: dict = {}
    forward_ops = {b.key: profile_forward(b, 8) for b in benches} if args.profile else {}
    for b in benches:  # an epoch runs with only its own model in memory, as a real run does
        b.release()
    gc.collect()
    with tempfile.TemporaryDirectory(prefix="bench_speed_") as tmp:
        if args.epoch or args.profile:
            data = make_em_data(Path(tmp) / "em", args)
        if args.epoch:
            interleaved(benches, "epoch", args.epoch_reps, 1,
                        lambda b, r: epoch_run(b.key, data, Path(tmp) / "runs", str(r), args), log)
        if args.profile:
            for b in benches:
                profile[b.key] = {"forward_top_ops": forward_ops[b.key],
                                  "epoch_parts_s": profile_epoch(b.key, data, Path(tmp) / "runs", args)}
    rows = summarize(benches, {"forward": args.val_batch})
    print_table(rows, args)
    if profile:
        print("\nprofile: one eval forward, top operators by self CPU ms (calls)")
        for key, p in profile.items():
            print(f"  {key}: " + ", ".join(f"{name} {ms:.0f} ({n})" for name, ms, n in p["forward_top_ops"]))
        print("\nprofile: one trainer epoch (cProfile, cumulative s; profiling slows Python-heavy parts)")
        labels = list(EPOCH_PARTS) + ["whole run"]
        print(f"{'':32s}" + "".join(f"{k:>14s}" for k in profile))
        for label in labels:
            print(f"{label:32s}" + "".join(f"{p['epoch_parts_s'][label]:14.2f}" for p in profile.values()))
    load_end = os.getloadavg()
    total = time.perf_counter() - began
    print(f"\nbenchmark time {total:.0f} s; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if max(load_start[0], load_end[0]) > usable + 0.5:
        print(f"warning: the machine was busy (load above its {usable} CPUs): wall-clock ratios are unreliable; "
              "read the CPU-time columns and the minima, or rerun on a quiet machine")
    if args.json:
        payload = {"torch": torch.__version__, "threads": torch.get_num_threads(), "args": {
            k: v for k, v in vars(args).items() if k not in ("json",)}, "modes": rows, "profile": profile,
            "loadavg": [load_start, load_end], "benchmark_s": total, "target": TARGET,
            "allocator_tuned": allocator, "kernels": kernels}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
