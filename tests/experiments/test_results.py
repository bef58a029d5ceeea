"""The sweep and the results table: short real runs through the real commands, the memory
arithmetic of the headline configuration by hand, and missing / unfinished / failed rows."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from unet.config import load_config
from unet.experiments import collect, paper_order_key
from unet.results import model_memory, write_results
from unet.sweep import last_error_line

from ..conftest import REPO, run_command
from ..helpers.experiments import make_experiment

SLOW = pytest.mark.slow
FULL_PRECISION_PARAMS = 4_837_249


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --- memory arithmetic (fast) --------------------------------------------------------------


def headline_quantized_weights(c: int = 64) -> int:
    """Weights of the 12 quantized 3x3 convolutions: all but the first block's two and the head."""
    shapes = [(c, 2 * c), (2 * c, 2 * c),  # enc2
              (2 * c, 4 * c), (4 * c, 4 * c),  # enc3
              (4 * c, 4 * c), (4 * c, 4 * c),  # bottom
              (8 * c, 4 * c), (4 * c, 4 * c),  # dec3: [up 4c, skip 4c] -> 4c
              (6 * c, 2 * c), (2 * c, 2 * c),  # dec2: [up 4c, skip 2c] -> 2c
              (3 * c, c), (c, c)]  # dec1: [up 2c, skip c] -> c
    return sum(i * o * 9 for i, o in shapes)


def running_stat_values(c: int = 64) -> int:
    """BatchNorm running mean and variance: two values per channel of the 14 conv units (36 c)."""
    return 2 * 2 * (c + 2 * c + 4 * c + 4 * c + 4 * c + 2 * c + c)


def test_headline_memory_by_hand() -> None:
    """EM Q6.0 / Q0.4 (pow2, exponents from 2^-8): weights stored as sign + index of 10 magnitudes
    (0, 2^-8 ... 2^-1, 0.9375) = 5 bits, bit-packed; every other tensor in float32."""
    cfg = load_config(REPO / "EM_BASE" / "config.yaml", REPO / "em" / "a6.0_w0.4" / "config.yaml")
    fp_cfg = load_config(REPO / "EM_BASE" / "config.yaml", REPO / "em" / "full_precision" / "config.yaml")
    assert cfg.pow2_min_exponent == -8
    quantized = headline_quantized_weights()
    assert quantized == 4_792_320
    float_bytes = 4 * (FULL_PRECISION_PARAMS + running_stat_values())
    expected_bytes = quantized * 5 // 8 + 4 * (FULL_PRECISION_PARAMS - quantized + running_stat_values())
    assert expected_bytes == 3_193_348
    q = model_memory(cfg, 64)
    fp = model_memory(fp_cfg, 64)
    assert q.params == fp.params == FULL_PRECISION_PARAMS
    assert fp.bits == fp.float_bits == 8 * float_bytes and fp.reduction == 1.0
    assert q.bits == 8 * expected_bytes and q.quantized_bits == quantized * 5
    assert q.mib == pytest.approx(expected_bytes / 2**20) == pytest.approx(3.0454, abs=1e-4)
    assert fp.mib == pytest.approx(18.4703, abs=1e-4)
    assert q.reduction == pytest.approx(float_bytes / expected_bytes) == pytest.approx(6.0649, abs=1e-4)


def test_other_formats_by_hand() -> None:
    base = REPO / "EM_BASE" / "config.yaml"
    quantized = headline_quantized_weights()
    rest = 4 * (FULL_PRECISION_PARAMS - quantized + running_stat_values())  # float32 bytes
    betas = 14  # ternarytanh (ternary and Q8.0 / Q0.8 rows): one float32 b per conv unit
    bnn = model_memory(load_config(base, REPO / "em" / "bnn" / "config.yaml"), 64)
    assert bnn.bits == 8 * (quantized // 8 + rest)
    ternary = model_memory(load_config(base, REPO / "em" / "ternary" / "config.yaml"), 64)
    scales = sum(o for o in (128, 128, 256, 256, 256, 256, 256, 256, 128, 128, 64, 64))  # one per out channel
    assert ternary.bits == 8 * (quantized * 2 // 8 + rest + 4 * scales + 4 * betas)
    # Q0.8 pow2: 0, 2^-8 ... 2^-1 and M = 1 - 2^-8: 10 magnitudes, 5 bits like Q0.4
    q8 = model_memory(load_config(base, REPO / "em" / "a8.0_w0.8" / "config.yaml"), 64)
    assert q8.bits == 8 * (quantized * 5 // 8 + rest + 4 * betas)
    # nearest wrap Q0.8 needs 2 + 0 + 8 bits; saturate 1 + 0 + 8
    for overflow, bits in (("wrap", 10), ("saturate", 9)):
        cfg = load_config(base, REPO / "em" / "a8.0_w0.8" / "config.yaml",
                          overrides=["fixed_rounding=nearest", f"fixed_overflow={overflow}"])
        assert model_memory(cfg, 64).bits == 8 * (quantized * bits // 8 + rest + 4 * betas)
    narrow = model_memory(load_config(base, REPO / "em" / "a6.0_w0.4" / "config.yaml"), 2)
    assert narrow.base_channels == 2
    packed = sum(-(-n * 5 // 8) for n in conv_weights(2))  # each tensor padded to whole bytes
    assert narrow.bits == 8 * (packed + 4 * (narrow.params - headline_quantized_weights(2) + running_stat_values(2)))


def conv_weights(c: int) -> list[int]:
    """The element counts of the 12 quantized convolutions' weights."""
    shapes = [(c, 2 * c), (2 * c, 2 * c), (2 * c, 4 * c), (4 * c, 4 * c), (4 * c, 4 * c), (4 * c, 4 * c),
              (8 * c, 4 * c), (4 * c, 4 * c), (6 * c, 2 * c), (2 * c, 2 * c), (3 * c, c), (c, c)]
    return [i * o * 9 for i, o in shapes]


def test_paper_order_of_the_real_folders() -> None:
    em = [e.name for e in sorted(collect([REPO / "em"]), key=lambda e: paper_order_key(e.cfg, e.name))]
    assert em == ["full_precision", "a8.0_w0.8", "a6.0_w0.4", "quickstart", "a4.0_w0.2", "bnn", "ternary"]
    gm = [e.name for e in sorted(collect([REPO / "gm"]), key=lambda e: paper_order_key(e.cfg, e.name))]
    assert gm == ["full_precision", "a8.8_w8.8", "a8.0_w0.8", "a6.0_w0.4", "quickstart", "a4.0_w0.2", "a2.0_w0.2",
                  "bnn", "ternary"]


def test_last_error_line() -> None:
    stderr = "bar 10%|##  |\rerror: key 'lr' must be > 0\n"
    assert last_error_line(["epoch 1/2"], stderr) == "error: key 'lr' must be > 0"
    assert last_error_line([], "Traceback (most recent call last):\n  ...\nValueError: boom\n") == "ValueError: boom"
    assert last_error_line(["error: the loss became nan"], "") == "error: the loss became nan"


@pytest.mark.parametrize("command", ["unet.results", "unet.sweep"])
def test_folder_without_experiments_is_one_line_error(tmp_path: Path, command: str) -> None:
    result = run_command(["-m", command, str(tmp_path)], cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no experiments in") and "Traceback" not in result.stderr


# --- short real runs (slow) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Tiny synthetic EM data; a folder with three experiments, two of them swept (2 epochs,
    base_channels 2), then the results of all three written by ``python -m unet.results``."""
    tmp = tmp_path_factory.mktemp("sweep")
    data = tmp / "em_data"
    result = run_command(["preprocessing/em_prepare.py", "--synthetic", "--synthetic-slices", "8", "--synthetic-size",
                          "128", "--resize", "64", "--crop", "48", "--out", str(data)], cwd=REPO)
    assert result.returncode == 0, result.stderr
    root = tmp / "em"
    for experiment in ("full_precision", "a6.0_w0.4", "bnn"):
        make_experiment(root, "em", experiment, name=experiment)
    overrides = ["-o", "base_channels=2", "-o", "num_epochs=2", "-o", f"dataset_path={data}", "-o",
                 "crop_size=[48,48]", "-o", "batch_size=4", "-o", "val_batch_size=4", "-o", "lr_scheduler=cosine",
                 "-o", "lr=0.005"]
    result = run_command(["-m", "unet.sweep", str(root), "--only", "full_precision", "a6.0_w0.4", *overrides],
                         cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    table = run_command(["-m", "unet.results", str(root), *overrides], cwd=REPO)
    assert table.returncode == 0, table.stdout + table.stderr
    return {"root": root, "overrides": overrides, "first": result, "data": data, "table": table}


@SLOW
def test_sweep_output_and_run_folders(swept: dict) -> None:
    root, result = swept["root"], swept["first"]
    assert "experiment/s" not in result.stderr  # its progress bar shows only on a terminal
    assert "[em/full_precision] epoch 2/2" in result.stdout
    for name in ("full_precision", "a6.0_w0.4"):
        assert (root / name / "runs" / name / "summary.json").is_file()
    assert not (root / "bnn" / "runs").exists()
    summary = result.stdout[result.stdout.index("experiment  "):]
    assert "em/full_precision" in summary and "finished" in summary
    assert summary.index("em/full_precision") < summary.index("em/a6.0_w0.4")  # the paper's order


@SLOW
def test_results_table(swept: dict) -> None:
    root = swept["root"]
    rows = read_csv(root / "results.csv")
    assert [r["experiment"] for r in rows] == ["full_precision", "a6.0_w0.4", "bnn"]
    fp, q, bnn = rows
    assert (fp["activations"], fp["weights"]) == ("float", "float")
    assert (q["activations"], q["weights"]) == ("Q6.0", "Q0.4") and q["quantizer"] == "FIXED pow2"
    assert (bnn["activations"], bnn["weights"]) == ("binary", "binary")
    for row in (fp, q):
        metrics = read_csv(root / row["experiment"] / "runs" / row["experiment"] / "metrics.csv")
        best = max(metrics, key=lambda m: float(m["dice"]))
        assert float(row["dice"]) == pytest.approx(float(best["dice"]), abs=1e-9)
        assert float(row["dice_std"]) == pytest.approx(float(best["dice_std"]), abs=1e-9)
        assert int(row["best_epoch"]) == int(best["epoch"])
        assert row["status"] == "finished" and row["num_epochs"] == "2" and row["epochs_done"] == "2"
        assert row["rand_error"] != "" and row["hausdorff"] != ""
    points = float(q["dice"]) - float(fp["dice"])
    assert float(q["dice_change_points"]) == pytest.approx(points)
    if float(fp["dice"]) > 0:
        assert float(q["dice_change_percent"]) == pytest.approx(100 * points / float(fp["dice"]))
    assert float(fp["dice_change_points"]) == 0.0
    # missing: no numbers, not zeros
    assert bnn["status"] == "missing" and bnn["dice"] == "" and bnn["best_epoch"] == "" and \
        bnn["dice_change_points"] == ""
    # memory at the run's width (2) and at the paper's (64)
    assert q["base_channels"] == "2" and float(fp["memory_reduction"]) == 1.0
    small = headline_quantized_weights(2)
    packed = sum(-(-n * 5 // 8) for n in conv_weights(2))
    expected = packed + 4 * (int(q["params"]) - small + running_stat_values(2))
    assert float(q["weight_memory_mib"]) * 2**20 == pytest.approx(expected)
    assert int(q["params_c64"]) == FULL_PRECISION_PARAMS
    assert float(q["weight_memory_mib_c64"]) * 2**20 == pytest.approx(3_193_348)
    assert float(q["memory_reduction_c64"]) == pytest.approx(19_367_428 / 3_193_348)
    rest = 4 * (FULL_PRECISION_PARAMS - 4_792_320 + running_stat_values())
    assert float(bnn["weight_memory_mib_c64"]) * 2**20 == pytest.approx(4_792_320 // 8 + rest)

    md = (root / "results.md").read_text()
    assert md.index("`full_precision`") < md.index("`a6.0_w0.4`") < md.index("`bnn`")
    assert "Q6.0 / Q0.4" in md and "| missing |" in md and "reference" in md
    assert "synthetic" in md and "num_epochs 2" in md and "base_channels 2" in md
    assert "6.06x" in md and "8x" in md
    for name in ("dice_vs_bits.png", "dice_vs_memory.png", "training_curves.png", "overlays_em.png",
                 "weights_full_precision.png", "weights_a6.0_w0.4.png"):
        assert (root / name).stat().st_size > 5_000, name
        assert f"({name})" in md
    assert not (root / "weights_bnn.png").exists()
    assert not list(root.glob(".*tmp"))


@SLOW
def test_second_sweep_skips_finished_runs_then_writes_results(swept: dict, tmp_path: Path) -> None:
    root = swept["root"]
    metrics = root / "full_precision" / "runs" / "full_precision" / "metrics.csv"
    before = metrics.stat().st_mtime_ns
    result = run_command(["-m", "unet.sweep", str(root), "--only", "full_precision", "a6.0_w0.4", "--results",
                          "--out", str(tmp_path), *swept["overrides"]], cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("skipped") >= 2 and "--force" in result.stdout
    assert metrics.stat().st_mtime_ns == before
    rows = read_csv(tmp_path / "results.csv")  # --only reaches the results too
    assert [r["experiment"] for r in rows] == ["full_precision", "a6.0_w0.4"]
    assert rows == [r for r in read_csv(root / "results.csv") if r["experiment"] != "bnn"]
    for name in ("results.md", "dice_vs_memory.png", "overlays_em.png"):
        assert (tmp_path / name).stat().st_size > 1_000


@SLOW
def test_unfinished_run_shown_with_its_progress(swept: dict, tmp_path: Path) -> None:
    root = tmp_path / "em"
    shutil.copytree(swept["root"] / "full_precision", root / "full_precision", symlinks=True)
    (root / "full_precision" / "runs" / "full_precision" / "summary.json").unlink()
    written = write_results([root], overrides=[], overlays=False)
    (row,) = written["groups"]["em"]
    assert row.status_text == "unfinished (epoch 2 of 2)" and row.dice is not None
    table = read_csv(root / "results.csv")
    assert table[0]["status"] == "unfinished (epoch 2 of 2)" and table[0]["dice"] != ""
    assert "(so far)" in (root / "results.md").read_text()


@SLOW
def test_force_reruns_and_a_failure_does_not_stop_the_sweep(swept: dict) -> None:
    root = swept["root"]
    broken = make_experiment(root, "em", "full_precision", name="broken")
    (broken / "config.yaml").write_text("UNET:\n  quantization: Normal\n  lr: -1\n")
    try:
        result = run_command(["-m", "unet.sweep", str(root), "--only", "broken", "full_precision", "--force",
                              *swept["overrides"]], cwd=REPO)
    finally:
        shutil.rmtree(broken)
    assert result.returncode == 1
    assert "[em/broken] FAILED" in result.stdout and "key 'lr' must be > 0" in result.stdout
    assert "1 of 2 experiment(s) failed: em/broken" in result.stdout
    runs = root / "full_precision" / "runs"
    old = list(runs.glob("full_precision.old-*"))
    assert len(old) == 1 and (old[0] / "summary.json").is_file()
    assert (runs / "full_precision" / "summary.json").is_file()
    assert "moved" in result.stdout and "[em/full_precision] epoch 2/2" in result.stdout


@SLOW
def test_terminal_table_is_compact_and_the_wide_one_in_results_md(swept: dict) -> None:
    out = swept["table"].stdout
    lines = [line for line in out[out.index("experiment "):].split("\n\n")[0].splitlines()
             if not line.startswith("note:")]
    assert [line.split()[0] for line in lines[1:]] == ["full_precision", "a6.0_w0.4", "bnn"]
    assert max(len(line) for line in lines) <= 120 and "|" not in "".join(lines)
    assert "Rand error" not in out and "Rand error" in (swept["root"] / "results.md").read_text()
    md = swept["root"] / "results.md"
    assert f"all columns (precision, recall, IoU, Hausdorff, memory at c=64 ...) in {md}" in out


@SLOW
def test_numbered_and_moved_aside_runs_are_listed(swept: dict, tmp_path: Path) -> None:
    root = tmp_path / "em"
    shutil.copytree(swept["root"] / "full_precision", root / "full_precision", symlinks=True)
    runs = root / "full_precision" / "runs"
    for other in runs.iterdir():  # what other tests left beside the run (a --force sweep's .old-*)
        if other.name != "full_precision":
            shutil.rmtree(other)
    shutil.copytree(runs / "full_precision", runs / "full_precision-2")
    shutil.copytree(runs / "full_precision", runs / "full_precision.old-20260101-000000")
    shutil.copytree(runs / "full_precision", runs / "full_precision-3")
    (runs / "full_precision-3" / "summary.json").unlink()
    shutil.copytree(runs / "full_precision", runs / "full_precision_other")  # another experiment's name
    written = write_results([root], overrides=[], overlays=False, weights=False)
    (row,) = written["groups"]["em"]
    assert [o.run_dir.name for o in row.other_runs] == ["full_precision-2", "full_precision-3",
                                                        "full_precision.old-20260101-000000"]
    md = (root / "results.md").read_text()
    assert "Each row is the run in the experiment's own folder" in md
    assert "full_precision-2 (finished, best val Dice" in md and "full_precision-3 (unfinished, 2 epoch(s) logged" in md
    assert "full_precision_other" not in md


@SLOW
def test_figures_label_what_they_show(swept: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from unet import plots
    from unet.results import collect_results, figures

    drawn: dict[str, object] = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path, **_: drawn.__setitem__(Path(path).name, fig))
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.__setitem__(Path(path).name, fig))
    groups = collect_results([swept["root"]], swept["overrides"][1::2])
    ran = [r for r in groups["em"] if r.dice is not None]
    assert len(ran) == 2
    try:
        figures.plot_dice_vs_memory(tmp_path / "memory.png", groups)
        ax = drawn["memory.png"].axes[0]
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{m:.3g}" for m in sorted(r.memory.mib for r in ran)]
        assert "threshold 0.999" in ax.get_ylabel() and "MiB" in ax.get_xlabel()

        figures.plot_training_curves(tmp_path / "curves.png", groups)
        colours: dict[str, set] = {}
        for ax in drawn["curves.png"].axes:
            for line in ax.get_lines():
                colours.setdefault(line.get_label(), set()).add(line.get_color())
        assert len(colours) == len(ran) and all(len(c) == 1 for c in colours.values())  # one colour each ...
        assert len({c.pop() for c in colours.values()}) == len(ran)  # ... and a different one per experiment
        assert drawn["curves.png"].axes[0].get_title() == "em (synthetic EM stand-in): val Dice (%), threshold 0.999"

        figures.write_weight_grids(tmp_path, groups)
        fig = drawn["weights_a6.0_w0.4.png"]
        panels = [ax for ax in fig.axes if ax.get_title()]
        assert all(ax.get_xlabel() == "weight value" for ax in panels)
        assert panels[0].get_ylabel() == "count (float)"
        assert any(ax.get_ylabel() == "count (quantized)" for ax in fig.axes)
        legend = [t.get_text() for t in fig.legends[0].get_texts()]
        assert legend[0].startswith("float weights") and legend[1].startswith("quantized values")
        assert all(t.get_fontsize() >= 8 for ax in panels for t in ax.get_xticklabels())
    finally:
        plt.close("all")


@SLOW
def test_the_deployed_dice_stands_beside_the_protocols_and_only_where_it_was_logged(swept: dict,
                                                                                   tmp_path: Path) -> None:
    root = tmp_path / "em"
    shutil.copytree(swept["root"] / "full_precision", root / "full_precision", symlinks=True)
    run = root / "full_precision" / "runs" / "full_precision"
    history = read_csv(run / "metrics.csv")
    write_results([root], overrides=[], overlays=False, weights=False)
    (row,) = read_csv(root / "results.csv")
    best = next(r for r in history if r["epoch"] == row["best_epoch"])
    assert float(row["eval_dice"]) == pytest.approx(float(best["eval_dice"]))
    assert float(row["dice"]) == pytest.approx(float(best["dice"]))  # the protocol's column keeps its meaning
    md = (root / "results.md").read_text()
    assert "deployed Dice (eval mode)" in md and f"{float(best['eval_dice']):.2f} ± " in md
    assert "Which Dice is which" in md

    # a run logged before the eval-mode figure existed: no such column, no note
    keep = [k for k in history[0] if not k.startswith("eval_")]
    with open(run / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keep, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)
    write_results([root], overrides=[], overlays=False, weights=False)
    assert read_csv(root / "results.csv")[0]["eval_dice"] == ""
    md = (root / "results.md").read_text()
    assert "deployed Dice" not in md and "Which Dice is which" not in md


# --- the Dice figures plot the table --------------------------------------------------------


def _plotted(fig) -> dict[str, list[tuple[float, float, float]]]:
    """(x, Dice, error) of every errorbar point per panel title, read back from the figure's artists."""
    out: dict[str, list[tuple[float, float, float]]] = {}
    for ax in fig.axes:
        for container in ax.containers:
            line, _caps, (bars,) = container.lines[0], container.lines[1], container.lines[2]
            segments = bars.get_segments()
            for (x, y), segment in zip(line.get_xydata(), segments, strict=True):
                out.setdefault(ax.get_title(), []).append((float(x), float(y), float(segment[1][1] - y)))
    return out


@SLOW
def test_figure_points_and_error_bars_are_the_table_rows(swept: dict, monkeypatch: pytest.MonkeyPatch,
                                                          tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    from unet.results import collect_results, figures

    drawn: dict[str, object] = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path, **_: drawn.__setitem__(Path(path).name, fig))
    groups = collect_results([swept["root"]], swept["overrides"][1::2])
    rows = {r["experiment"]: r for r in read_csv(swept["root"] / "results.csv") if r["dice"] != ""}
    assert len(rows) == 2
    try:
        for name, x_column in (("memory", "weight_memory_mib"), ("bits", "weight_bits")):
            x_of = (lambda r: r.memory.mib) if name == "memory" else figures.weight_bits
            (series,) = figures.figure_series(groups, x_of)
            assert {p.experiment for p in series.points} == set(rows)
            for p in series.points:
                row = rows[p.experiment]
                assert (p.x, p.dice, p.std) == pytest.approx((float(row[x_column]), float(row["dice"]),
                                                              float(row["dice_std"])))
                assert p.delta == pytest.approx(float(row["dice_change_points"]))
            assert series.reference == pytest.approx(float(rows["full_precision"]["dice"]))
            plot = figures.plot_dice_vs_memory if name == "memory" else figures.plot_dice_vs_bits
            plot(tmp_path / f"{name}.png", groups)
            fig = drawn[f"{name}.png"]
            (points,) = _plotted(fig).values()
            expected = sorted((float(r[x_column]), float(r["dice"]), float(r["dice_std"])) for r in rows.values())
            assert sorted(points) == pytest.approx(expected)
            ax = fig.axes[0]
            assert not [line for line in ax.get_lines() if line.get_linestyle() == "-"]  # no line joining rows
            reference = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
            assert [line.get_ydata()[0] for line in reference] == pytest.approx([series.reference])
            labels = [t for t in ax.texts if t.get_text().split(" (")[0] in {p.label for p in series.points}]
            assert len(labels) == 2
            boxes = [t.get_window_extent() for t in labels]
            assert not boxes[0].overlaps(boxes[1])
    finally:
        plt.close("all")


def test_labels_of_crowded_points_do_not_overlap() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unet.results.figures import place_labels

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    points = [(3.05, 97.9, "Q6.0/Q0.4 (6.1x)"), (3.05, 98.1, "Q4.0/Q0.2 (6.1x)"), (3.06, 96.9, "Q8.0/Q0.8 (6.1x)"),
              (0.76, 96.5, "BNN (24.3x)"), (1.34, 97.3, "Ternary (13.8x)"), (18.5, 98.0, "FP (1.0x)")]
    ax.plot([p[0] for p in points], [p[1] for p in points], "o")
    ax.set_xscale("log")
    ax.set_xlim(0.4, 40)
    ax.set_ylim(95, 99.5)
    fig.tight_layout()
    try:
        labels = place_labels(ax, [(x, y, text, "C0") for x, y, text in points])
        renderer = fig.canvas.get_renderer()
        boxes = [a.get_window_extent(renderer) for a in labels]
        assert len(boxes) == len(points)
        assert not [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
        frame = ax.get_window_extent(renderer)
        assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
        again = place_labels(ax, [(x, y, text, "C0") for x, y, text in points])  # deterministic
        assert [a.xyann for a in again] == [a.xyann for a in labels]
    finally:
        plt.close(fig)


@SLOW
def test_rows_of_another_data_set_are_said_and_compared_to_their_own_reference(swept: dict, tmp_path: Path) -> None:
    """A folder whose experiments ran on two data sets: the table says so, the Δ Dice of each row
    is against full precision on its own data, and the figures draw two series."""
    from unet.results import collect_results, figures

    root = tmp_path / "em"
    for name in ("full_precision", "a6.0_w0.4"):
        shutil.copytree(swept["root"] / name, root / name, symlinks=True)
    shutil.copytree(swept["root"] / "full_precision", root / "other_fp", symlinks=True)
    other_data = tmp_path / "other_data"
    shutil.copytree(swept["data"], other_data)
    (root / "other_fp" / "runs" / "full_precision").rename(root / "other_fp" / "runs" / "other_fp")
    saved = root / "other_fp" / "runs" / "other_fp" / "config.yaml"
    saved.write_text(saved.read_text().replace(str(swept["data"]), str(other_data)))
    overrides = [o for o in swept["overrides"][1::2] if not o.startswith("dataset_path=")]
    groups = collect_results([root], overrides)
    by_name = {r.experiment.name: r for r in groups["em"]}
    assert by_name["a6.0_w0.4"].reference is by_name["full_precision"]
    assert by_name["other_fp"].reference is by_name["other_fp"]
    series = figures.figure_series(groups, lambda r: r.memory.mib)
    assert sorted(len(s.points) for s in series) == [1, 2] and all(", data " in s.label for s in series)
    write_results([root], overrides=overrides, overlays=False, weights=False)
    md = (root / "results.md").read_text()
    assert "**These rows come from 2 different data sets**" in md and str(other_data) in md


def test_overlay_grid_shows_each_experiment_its_own_images() -> None:
    import numpy as np

    from unet.results.figures import overlay_layout

    a = [("s1", np.zeros((4, 4)), None, None), ("s2", np.ones((4, 4)), None, None)]
    b = [("s1", np.full((4, 4), 7.0), None, None), ("s2", np.ones((4, 4)), None, None)]
    assert overlay_layout([a, a, a]) == [("image", 0), ("overlay", 0), ("overlay", 1), ("overlay", 2)]
    assert overlay_layout([a, b, b, a]) == [("image", 0), ("overlay", 0), ("image", 1), ("overlay", 1),
                                            ("overlay", 2), ("image", 3), ("overlay", 3)]
