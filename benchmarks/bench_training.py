#!/usr/bin/env python
"""Training-speed benchmark of the quantized U-Net and of the GM data pipeline.

Measures, in one process and one run:

* the median training-step time (forward, loss, backward, Adam step) of the real model of the
  EM recipe (``EM_BASE/config.yaml``: base_channels 64, batch 5, 200x200, its loss) for each
  quantization mode, after warm-up, with the modes' repetitions interleaved (round-robin) so
  that background load on a shared machine hits every mode alike; each mode's ratio to Normal;
* inference throughput (images/s, eval mode, ``torch.no_grad``) of each mode;
* the GM data pipeline (the NIfTI reader and the elastic + affine augmentation, through the
  trainer's own DataLoader) in samples/s on a synthetic SCGM release, against the rate at which
  the GM trainer consumes samples (batch 16 / median step time of the GM recipe's model;
  with ``--no-gm-step``: the EM batch / the fastest mode's step time);
* the peak resident memory (``resource.getrusage``) of this process and of its children.

Run from the repository root::

    python benchmarks/bench_training.py --json bench.json   # about 3.5 min on 2 quiet cores
    python benchmarks/bench_training.py --quick              # about 1.5 min
    python benchmarks/bench_training.py --no-channels-last --modes normal,fixed_nearest

The targets it checks (and prints): every quantized mode at most 1.10x the Normal step time;
the GM pipeline at least 5x the trainer's consumption rate.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
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

from unet.config import Config, load_config  # noqa: E402
from unet.losses import get_loss  # noqa: E402
from unet.model import build_model  # noqa: E402
from unet.train.loaders import make_loader  # noqa: E402

EM_BASE = REPO / "EM_BASE" / "config.yaml"
GM_BASE = REPO / "GM_BASE" / "config.yaml"

from modes import MODES  # noqa: E402

TARGET_STEP_RATIO = 1.10
TARGET_PIPELINE_FACTOR = 5.0


def em_config(overrides: list[str]) -> Config:
    """The EM recipe's config (its base file) with ``overrides``."""
    return load_config(EM_BASE, EM_BASE, overrides=overrides)


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": affinity,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg(),
    }


def peak_rss_mib() -> tuple[float, float]:
    """Peak resident set size (MiB) of this process and of its largest waited-for child."""
    scale = 1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / scale
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / scale
    return own, children


# --- training step and inference -------------------------------------------------------------


class Bench:
    """One mode's model, optimizer, loss and fixed input batch."""

    def __init__(self, key: str, batch: int, size: int, channels_last: bool, seed: int = 0) -> None:
        self.key = key
        self.cfg = em_config(MODES[key][1])
        torch.manual_seed(seed)
        self.model = build_model(self.cfg)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = self.model.to(memory_format=fmt)
        self.x = torch.rand(batch, 1, size, size).contiguous(memory_format=fmt)
        self.y = (torch.rand(batch, 1, size, size) > 0.5).float().contiguous(memory_format=fmt)
        self.loss_fn: Callable = get_loss(self.cfg.loss)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        self.step_s: list[float] = []
        self.step_cpu_s: list[float] = []
        self.infer_s: list[float] = []

    def train_step(self) -> tuple[float, float]:
        """One step as in the engine's ``_train_epoch``; returns (wall, process CPU) seconds."""
        self.model.train()
        cpu = time.process_time()
        start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.x), self.y)
        value = loss.item()
        loss.backward()
        self.optimizer.step()
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu
        if value != value:  # NaN would make the timing meaningless
            raise RuntimeError(f"{self.key}: the loss became NaN")
        return elapsed, cpu

    @torch.no_grad()
    def infer(self) -> float:
        self.model.eval()
        start = time.perf_counter()
        self.model(self.x)
        return time.perf_counter() - start


def bench_models(keys: list[str], args: argparse.Namespace, log: Callable[[str], None]) -> list[Bench]:
    benches = [Bench(k, args.batch, args.size, args.channels_last) for k in keys]
    rounds = args.warmup + args.reps
    for r in range(rounds):
        tag = "warm-up" if r < args.warmup else "timed"
        # round-robin, every other round in reverse: every mode sees the same background load
        for b in benches if r % 2 == 0 else benches[::-1]:
            t, cpu = b.train_step()
            if r >= args.warmup:
                b.step_s.append(t)
                b.step_cpu_s.append(cpu)
            log(f"  train round {r + 1}/{rounds} ({tag}) {b.key:14s} {t * 1e3:8.0f} ms wall {cpu * 1e3:8.0f} ms CPU")
    for r in range(args.infer_reps):
        for b in benches if r % 2 == 0 else benches[::-1]:
            b.infer_s.append(b.infer())
        log(f"  inference round {r + 1}/{args.infer_reps} done")
    return benches


# --- the GM data pipeline --------------------------------------------------------------------


def bench_pipeline(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    """GM reader + augmentation through the trainer's DataLoader, per ``num_workers``."""
    from unet.data.gm import GMDataset
    from unet.prep.gm import write_synthetic_release
    from unet.recipes import GM_KEYS

    result: dict = {"loaders": {}}
    with tempfile.TemporaryDirectory(prefix="gm_bench_") as tmp:
        start = time.perf_counter()
        root = write_synthetic_release(Path(tmp) / "gm", sites=(1, 2), subjects=range(1, 9), n_slices=6)
        result["write_release_s"] = time.perf_counter() - start
        cfg = load_config(GM_BASE, GM_BASE, overrides=[f"dataset_path={root}"], extra_keys=GM_KEYS)
        start = time.perf_counter()
        dataset = GMDataset(root, subjects=cfg.train_subjects, sites=cfg.sites, drop_empty=True,
                            crop_size=tuple(cfg.crop_size), normalize=cfg.normalize, augment=cfg.augment,
                            resolution_mm=cfg.resolution_mm, progress=False)
        result["read_s"] = time.perf_counter() - start
        result["samples"] = len(dataset)
        result["batch_size"] = cfg.batch_size
        result["config_num_workers"] = cfg.num_workers
        workers = sorted({cfg.num_workers, *args.workers})
        for n in workers:
            loader_cfg = Config({**cfg, "num_workers": n}, cfg.sources)
            torch.manual_seed(0)
            loader = make_loader(dataset, cfg.batch_size, True, loader_cfg, torch.Generator().manual_seed(0))
            epochs: list[tuple[int, float]] = []
            start = time.perf_counter()
            first_batch_s = None
            for _ in range(args.pipeline_epochs + 1):  # the first epoch starts the workers: not counted
                count, epoch_start = 0, time.perf_counter()
                for images, _masks in loader:
                    if first_batch_s is None:
                        first_batch_s = time.perf_counter() - start
                    count += images.shape[0]
                epochs.append((count, time.perf_counter() - epoch_start))
            del loader
            timed = epochs[1:]
            rate = sum(c for c, _ in timed) / sum(s for _, s in timed)
            result["loaders"][n] = {"samples_per_s": rate, "first_batch_s": first_batch_s,
                                    "epoch_s": [s for _, s in epochs]}
            log(f"  GM pipeline num_workers={n}: {rate:.1f} samples/s (first batch after {first_batch_s:.2f} s)")
    return result


def bench_gm_step(args: argparse.Namespace, log: Callable[[str], None]) -> float:
    """Median step time of the GM recipe's model (Normal, -Dice loss) at its batch size 16."""
    from unet.recipes import GM_KEYS

    cfg = load_config(GM_BASE, GM_BASE, extra_keys=GM_KEYS)
    torch.manual_seed(0)
    model = build_model(cfg)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt).train()
    x = torch.randn(cfg.batch_size, 1, *cfg.crop_size).contiguous(memory_format=fmt)
    y = (torch.rand(cfg.batch_size, 1, *cfg.crop_size) > 0.5).float().contiguous(memory_format=fmt)
    loss_fn, opt = get_loss(cfg.loss), torch.optim.Adam(model.parameters(), lr=cfg.lr)
    times = []
    for r in range(1 + args.gm_step_reps):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.item()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
        log(f"  GM step batch {cfg.batch_size} ({'warm-up' if r == 0 else 'timed'}): {times[-1] * 1e3:.0f} ms")
    return cfg.batch_size / statistics.median(times[1:])


# --- main ------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--quick", action="store_true",
                   help="fewer repetitions (1 warm-up + 2 timed, 1 inference pass, no GM step): about 1.5 min")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per mode (default 1)")
    p.add_argument("--reps", type=int, default=None, help="timed steps per mode (default 4, --quick 2)")
    p.add_argument("--infer-reps", type=int, default=None, help="timed inference passes per mode (default 2)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: the EM recipe's, 5)")
    p.add_argument("--size", type=int, default=200, help="input height and width (default 200)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                   help="model and inputs in channels_last memory format (default: on, as the engine)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--workers", default="0,2", help="DataLoader num_workers values to time for the GM pipeline")
    p.add_argument("--pipeline-epochs", type=int, default=1, help="timed epochs per num_workers (after one untimed)")
    p.add_argument("--no-pipeline", dest="pipeline", action="store_false", help="skip the GM pipeline")
    p.add_argument("--gm-step", action=argparse.BooleanOptionalAction, default=None,
                   help="time the GM recipe's own step (batch 16, about 35 s on 2 cores) as the trainer's consumption "
                        "rate (default: on, off with --quick); without it the pipeline is compared with the fastest "
                        "mode's EM step")
    p.add_argument("--gm-step-reps", type=int, default=1, help="timed GM steps (after 1 warm-up; default 1)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this path")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the summary table")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in MODES]
    if unknown:
        p.error(f"unknown mode(s) {unknown}; choose from {list(MODES)}")
    args.workers = [int(w) for w in args.workers.split(",") if w.strip()]
    args.warmup = args.warmup if args.warmup is not None else 1
    args.reps = args.reps if args.reps is not None else (2 if args.quick else 4)
    args.gm_step = (not args.quick) if args.gm_step is None else args.gm_step
    args.infer_reps = args.infer_reps if args.infer_reps is not None else (1 if args.quick else 2)
    if args.batch is None:
        args.batch = em_config([]).batch_size
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    began = time.perf_counter()
    log = (lambda _m: None) if args.quiet else (lambda m: print(m, flush=True))
    info = machine_info()
    layout = "channels_last" if args.channels_last else "contiguous (NCHW)"
    log(f"machine: {info['cpu']}, {info['cpus_usable']} usable CPUs, torch {info['torch']} with "
        f"{info['torch_threads']} threads ({info['torch_interop_threads']} inter-op), load average "
        f"{info['loadavg_start'][0]:.2f}")
    log(f"model: EM recipe U-Net, base_channels 64, batch {args.batch}, {args.size}x{args.size}, {layout}; "
        f"{args.warmup} warm-up + {args.reps} timed steps per mode, round-robin")

    pipeline = bench_pipeline(args, log) if args.pipeline else None
    benches = bench_models(args.modes, args, log)
    em_rss, _ = peak_rss_mib()
    gm_rate = bench_gm_step(args, log) if args.gm_step else None
    own_rss, child_rss = peak_rss_mib()
    info["loadavg_end"] = os.getloadavg()

    rows = {}
    normal = next((b for b in benches if b.key == "normal"), None)
    normal_ms = statistics.median(normal.step_s) * 1e3 if normal else None
    normal_cpu = statistics.median(normal.step_cpu_s) * 1e3 if normal else None
    for b in benches:
        med = statistics.median(b.step_s) * 1e3
        cpu = statistics.median(b.step_cpu_s) * 1e3
        rows[b.key] = {
            "label": MODES[b.key][0],
            "step_ms_median": med,
            "step_ms_min": min(b.step_s) * 1e3,
            "step_ms_all": [t * 1e3 for t in b.step_s],
            "ratio_to_normal": med / normal_ms if normal_ms else None,
            "cpu_ms_median": cpu,
            "cpu_ms_all": [t * 1e3 for t in b.step_cpu_s],
            "cpu_ratio_to_normal": cpu / normal_cpu if normal_cpu else None,
            "infer_images_per_s": args.batch / statistics.median(b.infer_s) if b.infer_s else None,
        }

    print()
    print(f"Training step, batch {args.batch} at {args.size}x{args.size}, base_channels 64, {layout}, "
          f"torch {info['torch_threads']} threads, median of {args.reps} (after {args.warmup} warm-up)")
    print(f"{'mode':32s} {'step ms':>9s} {'min ms':>9s} {'ratio':>7s} {'CPU ms':>9s} {'CPU ratio':>9s} "
          f"{'infer img/s':>12s}")
    for row in rows.values():
        ratio = f"{row['ratio_to_normal']:.3f}" if row["ratio_to_normal"] else "-"
        cpu_ratio = f"{row['cpu_ratio_to_normal']:.3f}" if row["cpu_ratio_to_normal"] else "-"
        infer = f"{row['infer_images_per_s']:.2f}" if row["infer_images_per_s"] else "-"
        print(f"{row['label']:32s} {row['step_ms_median']:9.0f} {row['step_ms_min']:9.0f} {ratio:>7s} "
              f"{row['cpu_ms_median']:9.0f} {cpu_ratio:>9s} {infer:>12s}")
    print("(step ms: wall clock, the target; CPU ms: CPU time of all threads of this process, "
          "less sensitive to other processes on a shared machine)")

    targets: dict[str, dict] = {}
    quantized = [k for k in rows if k != "normal"]
    if normal_ms and quantized:
        worst = max(quantized, key=lambda k: rows[k]["ratio_to_normal"])
        ratio = rows[worst]["ratio_to_normal"]
        targets["step_ratio"] = {"target": TARGET_STEP_RATIO, "worst_mode": worst, "worst_ratio": ratio,
                                 "holds": ratio <= TARGET_STEP_RATIO}
    if pipeline:
        fastest = min(rows.values(), key=lambda r: r["step_ms_median"])
        consume = gm_rate if gm_rate else args.batch / (fastest["step_ms_median"] / 1e3)
        basis = (f"GM recipe step at batch {pipeline['batch_size']} (Normal)" if gm_rate
                 else f"fastest mode's step at batch {args.batch} ({fastest['label']})")
        cfg_workers = pipeline["config_num_workers"]
        print()
        print(f"GM pipeline (synthetic SCGM release, {pipeline['samples']} training samples, reader "
              f"{pipeline['read_s']:.2f} s once, then augmentation per sample; batch {pipeline['batch_size']})")
        print(f"trainer consumes {consume:.2f} samples/s ({basis})")
        for n, res in pipeline["loaders"].items():
            mark = "  <- config num_workers" if n == cfg_workers else ""
            print(f"  num_workers={n}: {res['samples_per_s']:8.1f} samples/s = {res['samples_per_s'] / consume:7.1f}x "
                  f"consumption{mark}")
        factor = pipeline["loaders"][cfg_workers]["samples_per_s"] / consume
        pipeline["consumption_samples_per_s"] = consume
        pipeline["consumption_basis"] = basis
        targets["pipeline"] = {"target": TARGET_PIPELINE_FACTOR, "factor": factor,
                               "holds": factor >= TARGET_PIPELINE_FACTOR}
    print()
    print(f"peak RSS: {em_rss:.0f} MiB after the EM steps ({len(benches)} models and optimizers alive at once), "
          f"{own_rss:.0f} MiB at the end{' (GM step at batch 16 included)' if gm_rate else ''}; "
          f"{child_rss:.0f} MiB largest DataLoader worker")
    for name, t in targets.items():
        if name == "step_ratio":
            print(f"target step <= {t['target']:.2f}x Normal: {'holds' if t['holds'] else 'MISSED'} "
                  f"(worst {t['worst_mode']} {t['worst_ratio']:.3f}x)")
        else:
            print(f"target pipeline >= {t['target']:.0f}x consumption: {'holds' if t['holds'] else 'MISSED'} "
                  f"({t['factor']:.1f}x)")
    total = time.perf_counter() - began
    print(f"benchmark time {total:.0f} s; load average {info['loadavg_start'][0]:.2f} at start, "
          f"{info['loadavg_end'][0]:.2f} at end")
    if max(info["loadavg_start"][0], info["loadavg_end"][0]) > (info["cpus_usable"] or 1) + 0.5:
        print(f"warning: the machine was busy (load average above its {info['cpus_usable']} CPUs): other processes "
              "stretch wall-clock steps unevenly; compare the CPU ratios, or rerun on a quiet machine")

    if args.json:
        payload = {
            "machine": info, "layout": layout, "batch": args.batch, "size": args.size, "base_channels": 64,
            "warmup": args.warmup, "reps": args.reps, "infer_reps": args.infer_reps,
            "modes": rows, "pipeline": pipeline,
            "peak_rss_mib": {"after_em_steps": em_rss, "self": own_rss, "children": child_rss},
            "targets": targets, "benchmark_s": total,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
