#!/usr/bin/env python
"""The one command to run on a CUDA machine: does everything that needs a GPU work, and how fast?

    python benchmarks/gpu_check.py               # on a CUDA machine; under 5 minutes on one GPU
    python benchmarks/gpu_check.py --json out.json
    python benchmarks/gpu_check.py --cpu         # a small dry run of the script itself on the CPU

On synthetic EM data it writes itself (``preprocessing/em_prepare.py --synthetic``) it checks,
one line each (``ok``/``FAIL``/``skipped``):

* one short epoch of every quantization mode (Normal, FIXED, INT, BNN, Ternary) through the real
  trainer, with ``precision`` 32 and 16-mixed (bf16 with ``--cpu``);
* one run over all visible GPUs under torchrun (NCCL; with one GPU torchrun starts one process and
  no process group; ``--cpu``: two gloo processes), and with ``sync_batchnorm`` on two or more GPUs;
* an interrupted run (SIGINT after its first epoch) that resumes to the end;
* the training-step time of every mode and precision at the paper's size (base_channels 64,
  batch 5, 200x200; ``--cpu``: a tiny model), median of timed steps after warm-up.

Exit status 1 when any check failed; without CUDA (and without ``--cpu``) every line says
``skipped`` and the exit status is 0.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from unet.config import load_config  # noqa: E402
from unet.losses import get_loss  # noqa: E402
from unet.model import build_model  # noqa: E402
from unet.precision import autocast, grad_scaler  # noqa: E402

#: Quantization modes: the experiment folder copied and its overrides.
MODES: dict[str, tuple[str, list[str]]] = {
    "normal": ("full_precision", []),
    "fixed": ("a6.0_w0.4", []),
    "int": ("full_precision", ["quantization=INT", "activation_i_width=8", "weight_i_width=8"]),
    "bnn": ("bnn", []),
    "ternary": ("ternary", []),
}


class Checks:
    """Prints one line per check and remembers the results."""

    def __init__(self) -> None:
        self.rows: list[dict[str, str]] = []

    def report(self, status: str, name: str, detail: str = "") -> None:
        self.rows.append({"status": status, "check": name, "detail": detail})
        print(f"{status:<8}{name}" + (f": {detail}" if detail else ""), flush=True)

    @property
    def failed(self) -> int:
        return sum(r["status"] == "FAIL" for r in self.rows)


def python(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def why(result: subprocess.CompletedProcess) -> str:
    lines = [s for s in (result.stderr + "\n" + result.stdout).splitlines() if s.strip() and "%|" not in s]
    errors = [s for s in lines if "error" in s.lower()]
    return f"exit {result.returncode}: {(errors or lines or ['(no output)'])[-1].strip()}"


def experiment(root: Path, mode: str, name: str) -> Path:
    """A copy of the mode's experiment folder with a link to the EM trainer."""
    folder = root / name
    folder.mkdir(parents=True)
    shutil.copy(REPO / "em" / MODES[mode][0] / "config.yaml", folder / "config.yaml")
    (folder / "em_unet.py").symlink_to(REPO / "EM_BASE" / "em_unet.py")
    return folder


def overrides(mode: str, base: list[str], *extra: str) -> list[str]:
    return [a for o in (*MODES[mode][1], *base, *extra) for a in ("-o", o)]


def epoch_seconds(run: Path) -> float:
    with open(run / "metrics.csv", newline="") as handle:
        return float(list(csv.DictReader(handle))[-1]["seconds"])


def check_modes(checks: Checks, root: Path, base: list[str], precisions: list[str], modes: list[str]) -> None:
    for precision in precisions:
        for mode in modes:
            name = f"{mode}-{precision}"
            folder = experiment(root, mode, name)
            result = python(["em_unet.py", "-f", "config.yaml", *overrides(mode, base, f"precision={precision}")],
                            folder)
            label = f"train {mode:<8} precision {precision:<8}"
            if result.returncode != 0:
                checks.report("FAIL", label, why(result))
            else:
                checks.report("ok", label, f"1 epoch in {epoch_seconds(folder / 'runs' / name):.2f} s")


def check_torchrun(checks: Checks, root: Path, base: list[str], nproc: int, sync_batchnorm: bool) -> None:
    name = "torchrun-syncbn" if sync_batchnorm else "torchrun"
    folder = experiment(root, "fixed", name)
    args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "em_unet.py", "-f",
            "config.yaml", *overrides("fixed", base, f"sync_batchnorm={str(sync_batchnorm).lower()}")]
    result = python(args, folder)
    label = f"torchrun {nproc} process(es)" + (" sync_batchnorm" if sync_batchnorm else "")
    if result.returncode != 0:
        checks.report("FAIL", label, why(result))
        return
    log = (folder / "runs" / name / "train.log").read_text()
    backend = log.split("backend ")[1].split(")")[0] if "backend " in log else "none (world size 1)"
    checks.report("ok", label, f"backend {backend}, 1 epoch in {epoch_seconds(folder / 'runs' / name):.2f} s")


def check_resume(checks: Checks, root: Path, base: list[str]) -> None:
    folder = experiment(root, "fixed", "resume")
    args = ["em_unet.py", "-f", "config.yaml", *overrides("fixed", base, "num_epochs=30")]
    process = subprocess.Popen([sys.executable, *args], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    metrics = folder / "runs" / "resume" / "metrics.csv"
    deadline = time.monotonic() + 120
    while not metrics.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    if process.returncode != 130:
        checks.report("FAIL", "interrupt and resume", f"the interrupted run ended with exit {process.returncode}: "
                      f"{(err or out).strip().splitlines()[-1:]}")
        return
    result = python([*args, "-o", "operation_mode=resume"], folder)
    if result.returncode != 0 or "resuming after epoch" not in result.stdout:
        checks.report("FAIL", "interrupt and resume", why(result))
        return
    checks.report("ok", "interrupt and resume", result.stdout.split("resuming ")[1].splitlines()[0])


def step_times(checks: Checks, device: torch.device, precisions: list[str], modes: list[str],
               size: tuple[int, int, int], steps: int) -> dict[str, float]:
    """Median training-step milliseconds of every mode and precision (forward, loss, backward, Adam)."""
    channels, batch, crop = size
    times: dict[str, float] = {}
    for precision in precisions:
        for mode in ["normal", *(m for m in modes if m != "normal")]:
            opts = [*MODES[mode][1], f"base_channels={channels}", f"precision={precision}"]
            cfg = load_config(REPO / "EM_BASE" / "config.yaml", REPO / "em" / MODES[mode][0] / "config.yaml", "UNET",
                              opts)
            model = build_model(cfg).to(device).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
            scaler = grad_scaler(device, precision)
            loss_fn = get_loss(cfg.loss)
            images = torch.rand(batch, 1, crop, crop, device=device).contiguous(memory_format=torch.channels_last)
            masks = (torch.rand(batch, 1, crop, crop, device=device) > 0.5).float()
            samples = []
            for i in range(steps + 3):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    probs = model(images)
                loss = loss_fn(probs.float(), masks)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i >= 3:
                    samples.append(time.perf_counter() - started)
            key = f"{mode}/{precision}"
            times[key] = statistics.median(samples) * 1000
            ratio = times[key] / times[f"normal/{precision}"]
            checks.report("ok", f"step    {mode:<8} precision {precision:<8}",
                          f"{times[key]:.1f} ms (x{ratio:.2f} Normal), base_channels {channels}, batch {batch}, "
                          f"{crop}x{crop}")
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU: tiny sizes, bf16, two gloo processes")
    parser.add_argument("--json", type=Path, help="also write the lines and step times here")
    parser.add_argument("--modes", default=",".join(MODES),
                        help=f"comma-separated quantization modes to check (default all: {','.join(MODES)})")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (its path is printed)")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        print(f"error: --modes {args.modes}: choose from {', '.join(MODES)}", file=sys.stderr)
        return 2
    checks = Checks()
    cuda = torch.cuda.is_available()
    if not cuda and not args.cpu:
        print("no CUDA device: nothing to check here (python benchmarks/gpu_check.py --cpu dry-runs the script)")
        for name in ("train every mode, precision 32 and 16-mixed", "torchrun over all GPUs (nccl)",
                     "interrupt and resume", "step times"):
            checks.report("skipped", name, "no CUDA")
        return 0
    device = torch.device("cuda" if cuda and not args.cpu else "cpu")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    where = f"{gpus} x {torch.cuda.get_device_name(0)}" if gpus else f"CPU dry run ({torch.get_num_threads()} threads)"
    print(f"gpu_check: {where}, torch {torch.__version__}", flush=True)
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    precisions = ["32", "16-mixed"] if device.type == "cuda" else ["32", "bf16"]
    if device.type == "cuda":
        prep, base = ["--synthetic-slices", "30", "--synthetic-size", "256", "--resize", "0", "--crop", "200"], [
            "base_channels=16", "num_epochs=1", "batch_size=4", "val_batch_size=4", "crop_size=[200,200]"]
        size, steps = (64, 5, 200), 10
    else:
        prep, base = ["--synthetic-slices", "10", "--synthetic-size", "64", "--resize", "0", "--crop", "32"], [
            "base_channels=2", "num_epochs=1", "batch_size=2", "val_batch_size=2", "crop_size=[32,32]"]
        size, steps = (4, 2, 32), 2
    try:
        result = python(["preprocessing/em_prepare.py", "--synthetic", *prep, "--out", str(root / "data")], REPO)
        if result.returncode != 0:
            checks.report("FAIL", "synthetic EM data", why(result))
            return 1
        base = [f"dataset_path={root / 'data'}", *base]
        check_modes(checks, root, base, precisions, modes)
        check_torchrun(checks, root, base, max(gpus, 1) if device.type == "cuda" else 2, False)
        if gpus >= 2:
            check_torchrun(checks, root, base, gpus, True)
        else:
            checks.report("skipped", "torchrun sync_batchnorm", "needs two or more GPUs")
        check_resume(checks, root, base)
        times = step_times(checks, device, precisions, modes, size, steps)
    except Exception as exc:  # noqa: BLE001 - a crash of the script is a failed check too
        checks.report("FAIL", "gpu_check itself", f"{type(exc).__name__}: {exc}")
        times = {}
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    seconds = time.perf_counter() - started
    print(f"{len(checks.rows)} checks, {checks.failed} failed, {seconds:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": where, "torch": torch.__version__, "seconds": seconds,
                                         "checks": checks.rows, "step_ms": times}, indent=2) + "\n")
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
