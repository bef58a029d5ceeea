"""``python -m unet.predict``: sliding window, input transforms, file kinds, and bad input.

One tiny model per dataset is trained for one epoch by the real trainer command (in-process)
on small synthetic data in the public releases' formats, once for the module. Most predictions
call :func:`unet.predict.cli.main` in-process (the command's own code path); the exit-status
and one-line-error tests run the real command line in a subprocess.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch

from unet import imageio
from unet.checkpoint import load_checkpoint, save_checkpoint
from unet.data.pairs import PngPairDataset, read_grey_png, read_mask_png
from unet.errors import DataError
from unet.metrics import slice_metrics
from unet.predict import cli, sliding, transforms

from ..conftest import REPO
from ..helpers.dicom import write_dicom_series

TRAIN_ARGS = {
    "em": ["-o", "crop_size=[48,48]", "-o", "batch_size=4", "-o", "val_batch_size=4"],
    "gm": ["-o", "crop_size=[80,80]", "-o", "batch_size=16", "-o", "val_batch_size=16", "-o", "sites=[1]"],
    "nih": ["-o", "crop_size=[112,176]", "-o", "batch_size=4", "-o", "val_batch_size=4"],
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _trainer(dataset: str):
    """The recipe ``<DATASET>_BASE/<dataset>_unet.py`` runs."""
    from unet.recipes import recipe_for_trainer

    return recipe_for_trainer(REPO / f"{dataset.upper()}_BASE" / f"{dataset}_unet.py")


def train_cli(dataset: str, folder: Path, *args: str) -> int:
    """The trainer's command line (``python <dataset>_unet.py -f config.yaml -t UNET ...``), in-process."""
    from unet.cli import main

    return main(_trainer(dataset), ["-f", str(folder / "config.yaml"), "-t", "UNET", *args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    """Synthetic EM / GM / NIH data in the releases' formats, prepared as the preparation
    commands do, and one run per dataset (the quick starts: headline Q6.0 / Q0.4; base_channels 4, 1 epoch)."""
    from unet.prep.em import prepare_em, synthetic_em_stack, write_tiff_stack
    from unet.prep.gm import write_synthetic_release
    from unet.prep.nih import prepare_nih, write_synthetic_nih

    root = tmp_path_factory.mktemp("predict")
    volume, labels = synthetic_em_stack(8, 128, seed=0)
    write_tiff_stack(root / "em-src" / "train-volume.tif", volume)
    write_tiff_stack(root / "em-src" / "train-labels.tif", labels)
    prepare_em(volume, labels, root / "em", resize=64, crop=48)
    write_synthetic_release(root / "gm", sites=[1], n_slices=4, size=40)
    write_synthetic_nih(root / "nih-src", n_cases=3, shape=(96, 96, 12))
    prepare_nih(root / "nih-src" / "images", root / "nih-src" / "labels", root / "nih", progress=False)
    out: dict[str, dict[str, Path]] = {}
    for dataset in ("em", "gm", "nih"):
        folder = root / f"exp_{dataset}"
        folder.mkdir()
        shutil.copy(REPO / dataset / "quickstart" / "config.yaml", folder / "config.yaml")
        data = root / dataset
        status = train_cli(dataset, folder, "-o", "base_channels=4", "-o", "num_epochs=1",
                           "-o", f"dataset_path={data}", *TRAIN_ARGS[dataset])
        assert status == 0
        out[dataset] = {"folder": folder, "run": folder / "runs" / f"exp_{dataset}", "data": data,
                        "source": root / f"{dataset}-src"}
    return out


def predict(*args: str | Path) -> int:
    return cli.main([str(a) for a in args])


def predict_cmd(tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess:
    """The real command line in a subprocess (one thread, as the in-process calls)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "unet.predict", *[str(a) for a in args]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, env=env)


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def no_temporaries(folder: Path) -> None:
    assert not [p for p in folder.rglob(".*") if p.is_file()], list(folder.rglob(".*"))


# --------------------------------------------------------------------------- sliding window


def _toy_model(batch: np.ndarray) -> np.ndarray:
    """A deterministic non-linear 'network' whose output depends on position and context."""
    rolled = np.roll(batch, 1, axis=3) + 0.5 * np.roll(batch, -2, axis=2)
    return 1.0 / (1.0 + np.exp(-(3.0 * rolled - 1.0 + 0.01 * np.arange(batch.shape[3]))))


def test_window_starts_cover_the_axis_with_the_requested_overlap() -> None:
    for length in range(16, 140, 7):
        for window in (16, 24, 48):
            if window > length:
                continue
            for step in (0.25, 0.5, 0.8, 1.0):
                starts = sliding.window_starts(length, window, step)
                assert starts[0] == 0 and starts[-1] == length - window
                assert all(0 < b - a <= step * window + 1 for a, b in zip(starts, starts[1:], strict=False))
    assert sliding.window_starts(48, 48) == [0]
    with pytest.raises(ValueError):
        sliding.window_starts(40, 48)


def test_image_of_the_window_size_gives_the_direct_output() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((48, 64)).astype(np.float32)
    out = sliding.sliding_window(image, _toy_model, (48, 64), step=0.5)
    np.testing.assert_array_equal(out, _toy_model(image[None, None])[0, 0].astype(np.float32))


def test_blending_identical_windows_is_the_identity() -> None:
    """When every window predicts exactly what lies under it (here: the model is the identity),
    the Gaussian-weighted average gives the image back, whatever the overlap."""
    rng = np.random.default_rng(1)
    image = rng.random((131, 77)).astype(np.float32)
    for step in (0.25, 0.5, 1.0):
        out = sliding.sliding_window(image, lambda b: b.copy(), (48, 32), step=step, batch_size=3)
        np.testing.assert_allclose(out, image, rtol=0, atol=1e-6)
    constant = sliding.sliding_window(image, lambda b: np.full_like(b, 0.3), (48, 32))
    np.testing.assert_allclose(constant, 0.3, atol=1e-6)


def test_gaussian_importance_is_nnunet_like() -> None:
    weights = sliding.gaussian_importance((48, 64))
    assert weights.max() == pytest.approx(1.0) and weights.min() > 0
    np.testing.assert_allclose(weights, weights[::-1, ::-1])  # symmetric: mirroring is consistent
    # sigma = window / 8: one sigma from the centre the weight is exp(-1/2)
    centre = (48 - 1) / 2
    axis = np.exp(-((np.arange(48) - centre) ** 2) / (2 * 6.0**2))
    np.testing.assert_allclose(weights[:, 31] / weights[:, 31].max(), axis / axis.max(), rtol=1e-5)


def test_small_slices_are_padded_and_cropped_back() -> None:
    image = np.arange(30 * 20, dtype=np.float32).reshape(30, 20) / 600
    seen = []

    def model(batch: np.ndarray) -> np.ndarray:
        seen.append(batch.copy())
        return batch + 1.0

    out = sliding.sliding_window(image, model, (48, 32))
    assert seen[0].shape == (1, 1, 48, 32)
    assert seen[0][0, 0, :9].max() == 0 and seen[0][0, 0, 39:].max() == 0  # (48 - 30) // 2 = 9 rows above
    np.testing.assert_array_equal(out, image + 1.0)


def test_stream_batches_across_slices_and_keeps_order() -> None:
    rng = np.random.default_rng(2)
    images = [rng.random(shape).astype(np.float32) for shape in ((48, 48), (70, 90), (20, 30), (48, 48))]
    sizes = []

    def model(batch: np.ndarray) -> np.ndarray:
        sizes.append(batch.shape[0])
        return _toy_model(batch)

    results = list(sliding.sliding_window_stream(enumerate(images), model, (48, 48), batch_size=4))
    assert [key for key, _ in results] == [0, 1, 2, 3]
    assert all(s == 4 for s in sizes[:-1])  # full batches span slices
    for (_, got), image in zip(results, images, strict=True):
        np.testing.assert_allclose(got, sliding.sliding_window(image, _toy_model, (48, 48)), atol=1e-6)


def test_mirror_tta_averages_the_flipped_predictions() -> None:
    rng = np.random.default_rng(3)
    batch = rng.random((2, 1, 16, 24)).astype(np.float32)
    tta = sliding.mirror_tta(_toy_model)
    expected = sum(np.flip(_toy_model(np.flip(batch, axes)), axes) for axes in ((), (3,), (2,), (2, 3))) / 4
    np.testing.assert_allclose(tta(batch), expected, atol=1e-6)
    np.testing.assert_allclose(tta(batch[..., ::-1]), tta(batch)[..., ::-1], atol=1e-6)  # mirror-equivariant
    assert not np.allclose(_toy_model(batch[..., ::-1]), _toy_model(batch)[..., ::-1], atol=1e-3)
    np.testing.assert_allclose(sliding.mirror_tta(lambda b: b)(batch), batch, atol=1e-7)


# --------------------------------------------------------------------------- input transforms


def test_checkpoints_record_the_input_transform(runs) -> None:
    em = load_checkpoint(runs["em"]["run"] / "best.pt")["input_transform"]
    assert em == {"dataset": "EM", "version": 2, "window": [48, 48], "normalize": "none",
                  "source": str(runs["em"]["data"] / "prepare.json"), "data_name": "user data",
                  "resize_factor": [0.5, 0.5],
                  "intensity": "uint8 / 255", "intensity_scaling": "uint8", "intensity_range": [0.0, 255.0],
                  "intensity_dtypes": ["uint8"]}
    gm = load_checkpoint(runs["gm"]["run"] / "last.pt")["input_transform"]
    assert gm["dataset"] == "GM" and gm["resolution_mm"] == 0.25 and gm["normalize"] == "instance"
    nih = load_checkpoint(runs["nih"]["run"] / "best.pt")["input_transform"]
    assert nih["window_hu"] == [0.0, 255.0] and nih["orientation"] == "RAS" and nih["window"] == [112, 176]
    json.dumps(nih)  # JSON-able


def test_em_forward_reproduces_the_prepared_slices(runs) -> None:
    stack = tifffile.imread(runs["em"]["source"] / "train-volume.tif")
    slices = transforms.em_forward(stack, [0.5, 0.5])
    from unet.data.transforms import center_crop_or_pad

    for index in (6, 7):  # the validation slices
        prepared = read_grey_png(runs["em"]["data"] / "val" / "images" / f"slice_{index:02d}.png")
        np.testing.assert_array_equal(center_crop_or_pad(slices[index], (48, 48)), prepared / np.float32(255))


def test_gm_forward_reproduces_the_reader_and_inverse_resamples_back(runs) -> None:
    from unet.data.gm import load_subject_slices, load_volume, scan_release

    subject = scan_release(runs["gm"]["data"])[-1]
    volume, zooms = load_volume(subject.image)
    slices = transforms.gm_forward(volume, zooms, 0.25)
    reader = load_subject_slices(subject)
    for z, image in enumerate(slices):
        np.testing.assert_array_equal(image, reader[4 * z][0])
    smooth = np.clip(np.linspace(0, 1, volume.shape[0])[:, None, None] * np.ones(volume.shape), 0, 1)
    there = transforms.gm_forward(smooth, zooms, 0.25)
    back = transforms.gm_inverse(there, volume.shape[:2])
    assert back.shape == volume.shape
    np.testing.assert_allclose(back[1:-1], smooth[1:-1], atol=0.02)


def test_nih_forward_reproduces_the_prepared_crops(runs) -> None:
    from unet.prep.nih import axial_slice, crop_box, extract_window, load_ct, load_label

    manifest = json.loads((runs["nih"]["data"] / "prepare.json").read_text())
    case = manifest["cases"]["val"][0]
    ct, _ = load_ct(runs["nih"]["source"] / "images" / f"PANCREAS_{case:04d}.nii.gz")
    label, _ = load_label(runs["nih"]["source"] / "labels" / f"label{case:04d}.nii.gz")
    names = sorted(p.stem for p in (runs["nih"]["data"] / "val" / "images").glob(f"case{case:04d}_z*.png"))
    slices = transforms.nih_forward(ct, [0.0, 255.0])
    for name in names:
        z = int(name.split("_z")[1])
        y0, x0 = crop_box(axial_slice(label, z), (112, 176))
        prepared = read_grey_png(runs["nih"]["data"] / "val" / "images" / f"{name}.png")
        np.testing.assert_array_equal(extract_window(slices[z], y0, x0, (112, 176)), prepared / np.float32(255))


def test_nih_inverse_undoes_the_display_and_the_reorientation() -> None:
    rng = np.random.default_rng(4)
    canonical = rng.random((6, 5, 4)).astype(np.float32)
    from unet.prep.nih import axial_slice

    np.testing.assert_array_equal(
        transforms.nih_inverse([axial_slice(canonical, z) for z in range(4)], canonical.shape), canonical)
    stored = rng.random((6, 5, 4)).astype(np.float32)
    for codes in (("L", "P", "S"), ("L", "P", "I"), ("A", "S", "R"), ("I", "R", "P")):
        affine = nib.orientations.inv_ornt_aff(nib.orientations.axcodes2ornt(codes), stored.shape)
        image = nib.Nifti1Image(stored, affine)
        canon = np.asanyarray(nib.as_closest_canonical(image).dataobj)
        np.testing.assert_array_equal(transforms.from_canonical(canon, affine), stored)


# --------------------------------------------------------------------------- same Dice as inference


def _split_threshold(probabilities: list[np.ndarray]) -> float:
    """The median of the distinct probability values: some pixels lie above it and some below
    (a barely trained model may put most pixels at exactly 1.0), so Dice is neither 0 nor 100."""
    values = np.unique(np.concatenate([p.ravel() for p in probabilities]))
    assert values.size > 2, "the model predicts a constant; the comparison would say nothing"
    return float(values[values.size // 2])


def _inference_dice(runs, dataset: str, threshold: float) -> float:
    folder = runs[dataset]["folder"]
    status = train_cli(dataset, folder, "-o", "base_channels=4", "-o", "operation_mode=inference",
                       "-o", f"threshold={threshold!r}", "-o", f"dataset_path={runs[dataset]['data']}",
                       *TRAIN_ARGS[dataset])
    assert status == 0
    bn_mode = "train" if dataset == "em" else "eval"
    tag = f"best_t{threshold}_bn-{bn_mode}"
    return json.loads((runs[dataset]["run"] / "inference" / tag / "metrics.json").read_text())["dice"]


@pytest.mark.parametrize("dataset", ["em", "nih"])
def test_predicting_prepared_validation_images_gives_the_inference_dice(runs, tmp_path: Path, dataset: str) -> None:
    """The run's validation PNGs (the prepared format, ``--prepared``) are exactly the images
    ``operation_mode: inference`` scores, and each is one window (the crop size), so the model
    sees the same pixels. Alignment: the same threshold (the median of the distinct
    predicted probabilities, so that Dice is neither 0 nor 100; passed to both), the recipe's BatchNorm
    mode (EM validates in train mode: ``--bn-mode train --batch-size 4`` = val_batch_size, over
    the files in name order as the dataset batches them; NIH in eval mode) and the same
    per-slice Dice averaged over slices."""
    bn = ["--bn-mode", "train", "--batch-size", "4"] if dataset == "em" else []
    val = runs[dataset]["data"] / "val"
    out = tmp_path / "out"
    assert predict("-m", runs[dataset]["run"], "-i", val / "images", "-o", out, "--prepared",
                   "--probabilities", *bn) == 0
    names = PngPairDataset(runs[dataset]["data"], "val", None, "none").names
    probs = [tifffile.imread(out / "probabilities" / f"{name}.tif") for name in names]
    threshold = _split_threshold(probs)
    dice = np.mean([slice_metrics(p, read_mask_png(val / "masks" / f"{n}.png"), threshold)["dice"]
                    for p, n in zip(probs, names, strict=True)])
    assert 1.0 < dice < 99.0
    assert dice == pytest.approx(_inference_dice(runs, dataset, threshold), abs=0.5)


def test_predicting_gm_volumes_gives_the_inference_dice(runs, tmp_path: Path) -> None:
    """GM validation samples are (axial slice, rater) pairs of subjects 09-10, resampled to
    0.25 mm. To score on the grid ``operation_mode: inference`` scores on, the validation
    volumes are given to the command already at 0.25 mm in-plane (written with the reader's own
    resampling), so its resampling and inverse are the identity; each 80x80 slice is one
    window (crop_size 80), normalized per window as the dataset normalizes each crop. Same
    threshold (median distinct probability), BatchNorm in eval mode as the GM recipe, Dice per
    (slice, rater) sample averaged."""
    from unet.data.gm import load_subject_slices, scan_release

    volumes = tmp_path / "volumes"
    volumes.mkdir()
    truth = {}
    for subject in scan_release(runs["gm"]["data"]):
        if subject.subject not in (9, 10):
            continue
        samples = load_subject_slices(subject)  # ordered by slice, then rater (4 raters)
        image = np.stack([samples[4 * z][0] for z in range(len(samples) // 4)], axis=-1)
        nib.save(nib.Nifti1Image(image, np.diag([0.25, 0.25, 5.0, 1.0])), volumes / f"{subject.name}.nii.gz")
        truth[subject.name] = samples
    out = tmp_path / "out"
    assert predict("-m", runs["gm"]["run"], "-i", volumes, "-o", out, "--probabilities") == 0
    probs = {name: np.asanyarray(nib.load(out / "probabilities" / f"{name}.nii.gz").dataobj) for name in truth}
    threshold = _split_threshold(list(probs.values()))
    dice = np.mean([slice_metrics(probs[name][:, :, i // 4], mask, threshold)["dice"]
                    for name, samples in truth.items() for i, (_, mask, _) in enumerate(samples)])
    assert 1.0 < dice < 99.0
    assert dice == pytest.approx(_inference_dice(runs, "gm", threshold), abs=0.5)


def test_mask_is_the_probability_above_the_threshold(runs, tmp_path: Path) -> None:
    source = runs["em"]["source"] / "train-volume.tif"
    assert predict("-m", runs["em"]["run"], "-i", source, "-o", tmp_path, "--probabilities",
                   "--threshold", "0.5", "--tta") == 0
    mask = tifffile.imread(tmp_path / "train-volume.tif")
    prob = tifffile.imread(tmp_path / "probabilities" / "train-volume.tif")
    assert mask.shape == prob.shape == (8, 128, 128) and mask.dtype == np.uint8 and prob.dtype == np.float32
    np.testing.assert_array_equal(mask, np.where(prob > 0.5, 255, 0))
    manifest = json.loads((tmp_path / "predict.json").read_text())
    assert manifest["options"]["threshold"] == 0.5 and manifest["options"]["tta"] is True
    assert manifest["files"][0]["ok"] is True and manifest["input_transform"]["resize_factor"] == [0.5, 0.5]


# --------------------------------------------------------------------------- volumes: geometry


def _oblique_affine() -> np.ndarray:
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-0.8, -0.8, 2.5])  # flipped and rotated in-plane: LPS-like, oblique
    affine[:3, 3] = [12.5, -40.25, 7.0]
    return affine


@pytest.mark.parametrize("dataset", ["nih", "gm"])
def test_nifti_output_keeps_shape_affine_and_orientation(runs, tmp_path: Path, dataset: str) -> None:
    rng = np.random.default_rng(5)
    inputs = tmp_path / "in"
    inputs.mkdir()
    volume = (rng.normal(40, 80, size=(60, 52, 3))).astype(np.int16)
    lps = np.diag([-0.7, -0.7, 2.5, 1.0])
    lps[:3, 3] = [30, 20, -10]
    cases = {"oblique.nii.gz": _oblique_affine(), "lps.nii": lps}
    for name, affine in cases.items():
        image = nib.Nifti1Image(volume, affine)
        image.header.set_qform(affine, 1)
        image.header.set_sform(affine, 2)
        nib.save(image, inputs / name)
    out = tmp_path / "out"
    assert predict("-m", runs[dataset]["run"], "-i", inputs, "-o", out, "--probabilities") == 0
    for name in cases:
        source, mask = nib.load(inputs / name), nib.load(out / name)
        prob = nib.load(out / "probabilities" / name)
        for result in (mask, prob):
            assert result.shape == source.shape
            np.testing.assert_array_equal(result.affine, source.affine)
            np.testing.assert_array_equal(result.header.get_qform(), source.header.get_qform())
            assert int(result.header["sform_code"]) == 2 and int(result.header["qform_code"]) == 1
            assert nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine)
        assert mask.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
        assert set(np.unique(np.asanyarray(mask.dataobj))) <= {0, 1}


def test_volume_in_any_orientation_gives_the_same_mask_on_its_voxels(runs, tmp_path: Path) -> None:
    """The same CT stored in RAS, LPS and LPI voxel order: the masks are the same voxels."""
    from unet.prep.nih import synthetic_case

    ct, _ = synthetic_case((96, 80, 5), seed=7)  # canonical RAS
    inputs = tmp_path / "in"
    inputs.mkdir()
    ras = np.diag([0.7, 0.7, 2.5, 1.0])
    for codes in (("R", "A", "S"), ("L", "P", "S"), ("L", "P", "I")):
        transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"),
                                                    nib.orientations.axcodes2ornt(codes))
        nib.save(nib.Nifti1Image(ct, ras).as_reoriented(transform), inputs / f"{''.join(codes)}.nii.gz")
    out = tmp_path / "out"
    assert predict("-m", runs["nih"]["run"], "-i", inputs, "-o", out, "--probabilities") == 0
    reference = np.asanyarray(nib.load(out / "probabilities" / "RAS.nii.gz").dataobj)
    assert reference.std() > 0
    for name in ("LPS", "LPI"):
        prob = nib.as_closest_canonical(nib.load(out / "probabilities" / f"{name}.nii.gz"))
        np.testing.assert_allclose(np.asanyarray(prob.dataobj), reference, atol=1e-6)


def test_dicom_series_round_trip_keeps_the_slice_order(runs, tmp_path: Path) -> None:
    """A DICOM series (files shuffled) and the same volume as NIfTI give the same probabilities
    slice for slice; the output NAME.nii.gz lies on the series' grid (RAS+ voxel order)."""
    from unet.prep.nih import synthetic_case

    ct, _ = synthetic_case((64, 56, 5), seed=3)  # canonical RAS, HU
    for k in range(5):  # a bright block that moves from slice to slice makes the order visible
        ct[8 + 9 * k: 16 + 9 * k, 10:20, k] = 200
    volume_lps = (2 * np.round(np.clip(ct[::-1, ::-1, :], -1000, 3000) / 2)).astype(np.float32)  # [c, r, k], LPS
    spacing_rc, origin, dz = (0.8, 0.6), np.array([-20.0, -15.0, 30.0]), 2.5
    inputs = tmp_path / "in"
    write_dicom_series(inputs / "CASE_A", volume_lps, spacing_rc, origin, dz)
    lps = np.eye(4)
    lps[:3, :3] = np.diag([spacing_rc[1], spacing_rc[0], dz])
    lps[:3, 3] = origin
    nib.save(nib.Nifti1Image(volume_lps, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), inputs / "same.nii.gz")
    out = tmp_path / "out"
    assert predict("-m", runs["nih"]["run"], "-i", inputs, "-o", out, "--probabilities") == 0
    dicom = nib.load(out / "probabilities" / "CASE_A.nii.gz")
    nifti = nib.as_closest_canonical(nib.load(out / "probabilities" / "same.nii.gz"))
    assert (out / "CASE_A.nii.gz").is_file()
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-4)
    a, b = np.asanyarray(dicom.dataobj), np.asanyarray(nifti.dataobj)
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a, a[:, :, ::-1], atol=1e-3)  # the slices differ, so the order was checked


def test_roi_limits_the_prediction_to_a_box(runs, tmp_path: Path) -> None:
    source = runs["nih"]["source"] / "images" / "PANCREAS_0001.nii.gz"
    shape = nib.load(source).shape
    assert predict("-m", runs["nih"]["run"], "-i", source, "-o", tmp_path, "--probabilities",
                   "--roi", "10:70,:60,2:9") == 0
    prob = np.asanyarray(nib.load(tmp_path / "probabilities" / "PANCREAS_0001.nii.gz").dataobj)
    assert prob.shape == shape
    inside = np.zeros(shape, dtype=bool)
    inside[10:70, :60, 2:9] = True
    assert np.all(prob[~inside] == 0) and np.all(prob[inside] > 0)


# --------------------------------------------------------------------------- 2-D kinds


def test_folder_of_pngs_and_tiffs_keeps_names_kinds_and_sizes(runs, tmp_path: Path) -> None:
    stack = tifffile.imread(runs["em"]["source"] / "train-volume.tif")
    inputs = tmp_path / "in"
    inputs.mkdir()
    import imageio.v3 as iio

    iio.imwrite(inputs / "a.png", stack[0][:100, :90])
    tifffile.imwrite(inputs / "b.tif", stack[1])
    tifffile.imwrite(inputs / "c.tiff", stack[:3], photometric="minisblack")
    iio.imwrite(inputs / "small.png", stack[2][:30, :40])  # smaller than the window after resizing
    out = tmp_path / "out"
    assert predict("-m", runs["em"]["run"], "-i", inputs, "-o", out, "--probabilities") == 0
    assert iio.imread(out / "a.png").shape == (100, 90)
    assert tifffile.imread(out / "b.tif").shape == (128, 128)
    assert tifffile.imread(out / "c.tiff").shape == (3, 128, 128)
    assert iio.imread(out / "small.png").shape == (30, 40)
    assert set(np.unique(iio.imread(out / "a.png"))) <= {0, 255}
    assert tifffile.imread(out / "probabilities" / "a.tif").dtype == np.float32
    # a stack's slices are predicted like the same images one by one
    np.testing.assert_array_equal(tifffile.imread(out / "c.tiff")[1], tifffile.imread(out / "b.tif"))


def test_rgb_image_is_converted_to_grey_with_a_warning(runs, tmp_path: Path, capsys) -> None:
    import imageio.v3 as iio

    grey = tifffile.imread(runs["em"]["source"] / "train-volume.tif")[0]
    rgb = np.stack([grey, np.roll(grey, 3, axis=1), grey // 2], axis=-1)
    inputs = tmp_path / "in"
    inputs.mkdir()
    iio.imwrite(inputs / "colour.png", rgb)
    luma = np.clip(np.rint(rgb.astype(np.float64) @ np.array(imageio.LUMA)), 0, 255).astype(np.uint8)
    iio.imwrite(inputs / "luma.png", luma)
    assert predict("-m", runs["em"]["run"], "-i", inputs, "-o", tmp_path / "out", "--probabilities") == 0
    assert "colour.png is a colour image; converted to grey" in capsys.readouterr().err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "probabilities" / "colour.tif"),
                                  tifffile.imread(tmp_path / "out" / "probabilities" / "luma.tif"))


# --------------------------------------------------------------------------- bad input


def test_empty_input_folder_exits_2_with_one_line(runs, tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert predict("-m", runs["em"]["run"], "-i", tmp_path / "empty", "-o", tmp_path / "out") == 2
    assert "empty is empty" in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_unsupported_files_are_listed_and_the_rest_predicted(runs, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(runs["em"]["data"] / "val" / "images" / "slice_06.png", inputs / "slice_06.png")
    (inputs / "notes.txt").write_text("not an image\n")
    (inputs / "photo.jpg").write_bytes(b"\xff\xd8\xff")
    result = predict_cmd(tmp_path, "-m", runs["em"]["run"], "-i", inputs, "-o", "out", "--prepared")
    assert result.returncode == 1, result.stderr
    assert "notes.txt" in result.stderr and "photo.jpg" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "out" / "slice_06.png").is_file()
    assert "slice_06: " in result.stdout and " s" in result.stdout  # one line per file with its time


def test_corrupt_file_is_named_and_the_others_still_predicted(runs, tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(runs["em"]["data"] / "val" / "images" / "slice_06.png", inputs / "good.png")
    (inputs / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    result = predict_cmd(tmp_path, "-m", runs["em"]["run"], "-i", inputs, "-o", "out", "--prepared")
    assert result.returncode == 2
    assert "bad.png" in one_error_line(result.stderr)
    assert (tmp_path / "out" / "good.png").is_file() and not (tmp_path / "out" / "bad.png").exists()
    no_temporaries(tmp_path / "out")


@pytest.mark.parametrize("dataset", ["gm", "nih"])
def test_four_d_and_corrupt_nifti_exit_2_naming_the_file(runs, tmp_path: Path, capsys, dataset: str) -> None:
    nib.save(nib.Nifti1Image(np.zeros((20, 20, 3, 2), np.float32), np.eye(4)), tmp_path / "fourd.nii.gz")
    assert predict("-m", runs[dataset]["run"], "-i", tmp_path / "fourd.nii.gz", "-o", tmp_path / "out") == 2
    assert "fourd.nii.gz" in one_error_line(capsys.readouterr().err)
    good = (runs["gm"]["data"] / "site1-sc09-image.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(good[: len(good) // 2])
    assert predict("-m", runs[dataset]["run"], "-i", tmp_path / "cut.nii.gz", "-o", tmp_path / "out") == 2
    assert "cut.nii.gz" in one_error_line(capsys.readouterr().err)
    assert not list((tmp_path / "out").glob("*.nii*"))


def test_wrong_kind_for_the_model_is_refused_with_a_hint(runs, tmp_path: Path, capsys) -> None:
    png = runs["nih"]["data"] / "val" / "images"
    assert predict("-m", runs["nih"]["run"], "-i", next(png.glob("*.png")), "-o", tmp_path / "o") == 2
    assert "--prepared" in one_error_line(capsys.readouterr().err)
    assert predict("-m", runs["em"]["run"], "-i", runs["gm"]["data"] / "site1-sc09-image.nii.gz",
                   "-o", tmp_path / "o") == 2
    assert "EM model takes PNG or TIFF" in one_error_line(capsys.readouterr().err)


def test_checkpoint_not_of_this_project_exits_2(runs, tmp_path: Path, capsys) -> None:
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    (tmp_path / "text.pt").write_text("hello\n")
    state = load_checkpoint(runs["em"]["run"] / "best.pt")
    save_checkpoint(tmp_path / "noconfig.pt", {"model": state["model"]})
    save_checkpoint(tmp_path / "wrongwidth.pt", {**state, "config": {**state["config"], "base_channels": 8}})
    image = runs["em"]["data"] / "val" / "images" / "slice_06.png"
    for name in ("other.pt", "text.pt", "noconfig.pt", "wrongwidth.pt", "missing.pt"):
        assert predict("-m", tmp_path / name, "-i", image, "-o", tmp_path / "out", "--prepared") == 2, name
        assert name in one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_output_folder_with_masks_needs_overwrite_or_continue(runs, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("slice_06", "slice_07"):
        shutil.copy(runs["em"]["data"] / "val" / "images" / f"{name}.png", inputs / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "slice_06.png").write_bytes(b"an older mask")
    args = ["-m", runs["em"]["run"], "-i", inputs, "-o", out, "--prepared"]
    assert predict(*args) == 2
    assert "--overwrite" in one_error_line(capsys.readouterr().err)
    assert (out / "slice_06.png").read_bytes() == b"an older mask" and not (out / "slice_07.png").exists()
    assert predict(*args, "--continue") == 0
    assert (out / "slice_06.png").read_bytes() == b"an older mask" and (out / "slice_07.png").is_file()
    assert predict(*args, "--overwrite") == 0
    assert read_grey_png(out / "slice_06.png").shape == (48, 48)
    assert predict("-m", runs["em"]["run"], "-i", inputs, "-o", inputs, "--prepared", "--overwrite") == 2
    assert "replace" in one_error_line(capsys.readouterr().err)  # never over the inputs


def test_interrupted_run_leaves_whole_files_and_continue_finishes(runs, tmp_path: Path, monkeypatch) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("slice_06", "slice_07"):
        shutil.copy(runs["em"]["data"] / "val" / "images" / f"{name}.png", inputs / f"{name}.png")
    real = cli.make_forward
    calls = []

    def interrupting(*args, **kwargs):
        forward = real(*args, **kwargs)

        def wrapped(batch):
            calls.append(1)
            if len(calls) == 2:
                raise KeyboardInterrupt
            return forward(batch)

        return wrapped

    monkeypatch.setattr(cli, "make_forward", interrupting)
    out = tmp_path / "out"
    assert predict("-m", runs["em"]["run"], "-i", inputs, "-o", out, "--prepared", "--batch-size", "1") == 130
    assert (out / "slice_06.png").is_file() and not (out / "slice_07.png").exists()
    no_temporaries(out)
    monkeypatch.setattr(cli, "make_forward", real)
    assert predict("-m", runs["em"]["run"], "-i", inputs, "-o", out, "--prepared", "--continue") == 0
    assert (out / "slice_07.png").is_file()


@pytest.mark.parametrize("engine", ["integer", "onnx", "onnx-int"])
def test_missing_engine_gives_a_clear_error(runs, tmp_path: Path, monkeypatch, capsys, engine: str) -> None:
    module = {"integer": "unet.integer", "onnx": "unet.export.onnx", "onnx-int": "unet.export.onnx_int"}[engine]
    monkeypatch.setitem(sys.modules, module, None)  # the import fails as when the module is absent
    image = runs["em"]["data"] / "val" / "images" / "slice_06.png"
    assert predict("-m", runs["em"]["run"], "-i", image, "-o", tmp_path / "o", "--prepared", "--engine", engine) == 2
    assert f"--engine {engine}" in one_error_line(capsys.readouterr().err)
    assert predict("-m", runs["em"]["run"], "-i", image, "-o", tmp_path / "o", "--prepared", "--engine", engine,
                   "--bn-mode", "train") == 2
    assert "--bn-mode train needs --engine float" in one_error_line(capsys.readouterr().err)


def test_bad_options_exit_2(runs, tmp_path: Path, capsys) -> None:
    image = runs["em"]["data"] / "val" / "images" / "slice_06.png"
    nih = runs["nih"]["source"] / "images" / "PANCREAS_0001.nii.gz"
    cases = [
        (runs["em"]["run"], image, ["--step", "0"], "--step"),
        (runs["em"]["run"], image, ["--threshold", "1.5"], "--threshold"),
        (runs["em"]["run"], image, ["--roi", "1:2,3:4,5:6"], "--roi applies to NIH"),
        (runs["nih"]["run"], nih, ["--roi", "1:2,3:4"], "three index ranges"),
        (runs["nih"]["run"], nih, ["--roi", "0:500,:,:"], "outside"),
        (runs["gm"]["run"], nih, ["--prepared"], "GM has no prepared format"),
        (runs["em"]["run"], image, ["--device", "tpu"], "--device"),
    ]
    for model, source, extra, message in cases:
        assert predict("-m", model, "-i", source, "-o", tmp_path / "o", *extra) == 2, extra
        assert message in one_error_line(capsys.readouterr().err), extra


def test_old_checkpoint_without_record(runs, tmp_path: Path, capsys) -> None:
    """A checkpoint written before the record: rebuilt from its config while prepare.json is
    where the config says; when it is not, raw EM input is refused naming the missing record
    and --prepared input still works."""
    state = load_checkpoint(runs["em"]["run"] / "best.pt")
    del state["input_transform"]
    state.pop("format_version")
    save_checkpoint(tmp_path / "old.pt", state)
    source = runs["em"]["source"] / "train-volume.tif"
    assert predict("-m", tmp_path / "old.pt", "-i", source, "-o", tmp_path / "a") == 0
    assert "no input_transform record; rebuilt" in capsys.readouterr().err
    state["config"] = {**state["config"], "dataset_path": str(tmp_path / "moved")}
    save_checkpoint(tmp_path / "moved.pt", state)
    assert predict("-m", tmp_path / "moved.pt", "-i", source, "-o", tmp_path / "b") == 2
    line = one_error_line(capsys.readouterr().err)
    assert "input_transform record" in line and "resize_factor" in line and "--prepared" in line
    image = runs["em"]["data"] / "val" / "images" / "slice_06.png"
    assert predict("-m", tmp_path / "moved.pt", "-i", image, "-o", tmp_path / "c", "--prepared") == 0


def test_find_inputs_rules(tmp_path: Path) -> None:
    (tmp_path / "series").mkdir()
    (tmp_path / "a.PNG").write_bytes(b"")
    (tmp_path / "b.nii.gz").write_bytes(b"")
    (tmp_path / ".hidden.png").write_bytes(b"")
    (tmp_path / "c.doc").write_bytes(b"")
    items, unsupported = imageio.find_inputs(tmp_path)
    assert [(i.name, i.kind, i.mask_name) for i in items] == [
        ("a", "png", "a.PNG"), ("b", "nifti", "b.nii.gz"), ("series", "dicom", "series.nii.gz")]
    assert [p.name for p in unsupported] == ["c.doc"]
    with pytest.raises(DataError, match="unsupported file type"):
        imageio.find_inputs(tmp_path / "c.doc")


@pytest.mark.parametrize("dataset", ["em", "nih"])
def test_integer_and_onnx_engines_predict_what_the_float_model_predicts(runs, tmp_path: Path, dataset: str) -> None:
    """``--engine integer`` (the bit-true integer engine), ``--engine onnx`` (onnxruntime) and
    ``--engine onnx-int`` (the integer ONNX under onnxruntime) give the float model's masks pixel for
    pixel and its probabilities within 1e-5, through the command, on the EM quick start's pow2 model
    and the NIH quick start's saturating fixed point (eval BatchNorm)."""
    images = runs[dataset]["data"] / "val" / "images"
    probabilities = {}
    for engine in ("float", "integer", "onnx", "onnx-int"):
        out = tmp_path / engine
        assert predict("-m", runs[dataset]["run"], "-i", images, "-o", out, "--prepared", "--engine", engine,
                       "--probabilities", "--threshold", "0.5") == 0
        probabilities[engine] = {p.name: tifffile.imread(p) for p in sorted((out / "probabilities").iterdir())}
    names = sorted(probabilities["float"])
    assert names and all(sorted(probabilities[e]) == names for e in probabilities)
    for engine in ("integer", "onnx", "onnx-int"):
        for name in names:
            expected, got = probabilities["float"][name], probabilities[engine][name]
            assert np.abs(got - expected).max() <= 1e-5, (engine, name)
            assert np.array_equal(got > 0.5, expected > 0.5), (engine, name)
