"""NIH Pancreas-CT preparation: intensities, crops, orientation, DICOM, splits, bad cases, CLI."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from skimage import io as skio

from unet.errors import ConfigError, DataError
from unet.prep.nih import (
    axial_slice,
    case_number,
    crop_box,
    extract_window,
    find_cases,
    load_ct,
    load_dicom_series,
    load_label,
    prepare_nih,
    synthetic_case,
    window_and_scale,
    write_synthetic_nih,
)

from ..helpers.dicom import write_dicom_series, write_slices

REPO = Path(__file__).resolve().parents[2]
CLI = REPO / "preprocessing" / "nih_prepare.py"
# X >= 176 exercises the crop, Y < 112 the padding
SHAPE = (192, 96, 16)
N_CASES = 6


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_nih(tmp_path_factory.mktemp("nih") / "src", N_CASES, SHAPE, seed=3)


@pytest.fixture(scope="module")
def prepared(source: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("nihout") / "nih"
    report = prepare_nih(source / "images", source / "labels", out, progress=False)
    return out, report


def _names(root: Path, split: str) -> list[str]:
    return sorted(p.stem for p in (root / split / "images").glob("*.png"))


# ------------------------------------------------------------------ intensities and crops


def test_window_and_scale_exact_values() -> None:
    hu = np.array([[-50.0, 0.0, 100.0], [200.0, 255.0, 300.0]])
    np.testing.assert_array_equal(window_and_scale(hu), [[0, 0, 100], [200, 255, 255]])
    # max 100 -> 255: 50 -> 127.5 -> 128 (half to even), 25 -> 63.75 -> 64
    out = window_and_scale(np.array([[0.0, 50.0], [100.0, 25.0]]))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[0, 128], [255, 64]])
    # window (-100, 100): c = [0, 100, 150, 200] -> 255 * c / 200 = [0, 127.5, 191.25, 255]
    np.testing.assert_array_equal(
        window_and_scale(np.array([[-200.0, 0.0, 50.0, 500.0]]), (-100, 100)), [[0, 128, 191, 255]]
    )
    dark = window_and_scale(np.array([[-1000.0, -5.0], [0.0, -3.0]]))
    assert dark.dtype == np.uint8 and not dark.any()
    with pytest.raises(ValueError):
        window_and_scale(np.zeros((2, 2)), (10, 10))


def test_crop_box_centres_on_median_foreground() -> None:
    label = np.zeros((512, 512), bool)
    label[200:211, 300:321] = True  # median row 205, median column 310
    y0, x0 = crop_box(label, (112, 176))
    assert (y0, x0) == (205 - 56, 310 - 88)
    window = extract_window(label, y0, x0, (112, 176))
    assert window.shape == (112, 176) and window[56, 88] and window.sum() == label.sum()


def test_crop_box_clamps_at_borders() -> None:
    label = np.zeros((512, 512), bool)
    label[0:5, 0:5] = True
    assert crop_box(label, (112, 176)) == (0, 0)
    label[:] = False
    label[505:, 500:] = True
    assert crop_box(label, (112, 176)) == (512 - 112, 512 - 176)
    empty = np.zeros((300, 400), bool)
    assert crop_box(empty, (112, 176)) == (150 - 56, 200 - 88)


def test_crop_box_pads_small_slices() -> None:
    label = np.zeros((64, 100), bool)
    label[8:13, 88:93] = True  # centre (10, 90)
    y0, x0 = crop_box(label, (112, 176))
    assert (y0, x0) == (10 - 56, 0)  # row window within [-48, 0]; column clamps to 0
    image = np.full((64, 100), 7, np.uint8)
    out = extract_window(image, y0, x0, (112, 176))
    assert out.shape == (112, 176) and out.dtype == np.uint8
    assert (out == 7).sum() == 64 * 100 and (out == 0).sum() == 112 * 176 - 64 * 100
    assert extract_window(label, y0, x0, (112, 176)).sum() == label.sum()


def test_case_number() -> None:
    assert case_number("PANCREAS_0001.nii.gz") == 1
    assert case_number("0012.nii") == 12
    assert case_number("label0003.nii.gz") == 3
    assert case_number("PANCREAS_0042") == 42
    assert case_number("images") is None


# ------------------------------------------------------------------ orientation


def test_synthetic_volumes_reorient_to_the_generated_anatomy(source: Path) -> None:
    for number in (1, 2):  # stored LPS and LPI
        stored = nib.load(source / "images" / f"PANCREAS_{number:04d}.nii.gz")
        assert nib.aff2axcodes(stored.affine) != ("R", "A", "S")
        ct, affine = load_ct(source / "images" / f"PANCREAS_{number:04d}.nii.gz")
        label, label_affine = load_label(source / "labels" / f"label{number:04d}.nii.gz")
        expected_ct, expected_label = synthetic_case(SHAPE, 3 + number)
        np.testing.assert_array_equal(ct, expected_ct)
        np.testing.assert_array_equal(label, expected_label > 0)
        assert nib.aff2axcodes(affine) == ("R", "A", "S")
        np.testing.assert_allclose(affine, label_affine)
        assert abs(float(ct[label].mean()) - 40.0) < 5.0  # the pancreas under its label
        # display convention: the spine (bone) is posterior = bottom half of the image
        z = int(np.flatnonzero(label.any(axis=(0, 1)))[0])
        rows = np.nonzero(axial_slice(ct, z) > 300)[0]
        assert rows.mean() > SHAPE[1] / 2


def test_flipped_permuted_affine_keeps_label_on_structure(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    canon = rng.normal(-80, 5, size=(30, 24, 10)).astype(np.float32)
    canon[20:26, 4:9, 3:7] = 45.0  # a bright block towards Right, Posterior
    mask = np.zeros(canon.shape, np.uint8)
    mask[20:26, 4:9, 3:7] = 1
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [-10, 20, -30]
    ras = nib.orientations.axcodes2ornt(("R", "A", "S"))

    def stored(array: np.ndarray, codes: tuple[str, str, str]) -> nib.Nifti1Image:
        transform = nib.orientations.ornt_transform(ras, nib.orientations.axcodes2ornt(codes))
        return nib.Nifti1Image(array, affine).as_reoriented(transform)

    ct_img = stored(canon, ("P", "I", "L"))  # permuted and flipped
    lab_img = stored(mask, ("L", "P", "S"))  # a different storage of the same geometry
    assert ct_img.shape != canon.shape
    nib.save(ct_img, tmp_path / "ct.nii.gz")
    nib.save(lab_img, tmp_path / "lab.nii.gz")
    ct, ct_affine = load_ct(tmp_path / "ct.nii.gz")
    label, label_affine = load_label(tmp_path / "lab.nii.gz")
    np.testing.assert_allclose(ct, canon, atol=1e-4)
    np.testing.assert_allclose(ct_affine, affine, atol=1e-5)
    np.testing.assert_allclose(label_affine, affine, atol=1e-5)
    assert np.all(ct[label] == 45.0) and label.sum() == mask.sum()


# ------------------------------------------------------------------ DICOM


def _lps_volume(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (2 * rng.integers(-500, 300, size=shape)).astype(np.float32)


def test_dicom_series_matches_nifti_of_same_volume(tmp_path: Path) -> None:
    volume = _lps_volume((24, 20, 7))  # [column, row, slice]: 24 columns, 20 rows
    spacing_rc = (0.8, 0.6)
    origin = np.array([-100.0, -50.0, 30.0])
    write_dicom_series(tmp_path / "PANCREAS_0001" / "study" / "series", volume, spacing_rc, origin, 2.5)
    lps = np.eye(4)
    lps[:3, :3] = np.diag([spacing_rc[1], spacing_rc[0], 2.5])
    lps[:3, 3] = origin
    ras_affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nib.save(nib.Nifti1Image(volume, ras_affine), tmp_path / "same.nii.gz")

    from_dicom, dicom_affine = load_ct(tmp_path / "PANCREAS_0001")
    from_nifti, nifti_affine = load_ct(tmp_path / "same.nii.gz")
    assert from_dicom.shape == (24, 20, 7)
    np.testing.assert_array_equal(from_dicom, from_nifti)
    np.testing.assert_allclose(dicom_affine, nifti_affine, atol=1e-5)
    np.testing.assert_allclose(np.abs(np.diag(dicom_affine))[:3], [0.6, 0.8, 2.5])
    # the display slice is the DICOM image as stored (radiological convention)
    np.testing.assert_array_equal(axial_slice(from_dicom, 0), volume[:, :, 0].T)
    with pytest.raises(DataError):
        load_dicom_series(tmp_path / "PANCREAS_0001" / "study" / "missing")


def test_oblique_reversed_tilted_series_geometry_and_rescale(tmp_path: Path) -> None:
    """Slices written superior-first in shuffled files, rotated, with a gantry-tilt shear and a
    RescaleSlope/Intercept per slice: read in order, HU = stored * slope + intercept, and the
    affine P_0 + c dc u + r dr v + k s (s = (P_last - P_0) / (N - 1)) in RAS."""
    rng = np.random.default_rng(3)
    a, b = 0.5, 0.3
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    u, v = (rz @ rx)[:, 0], (rz @ rx)[:, 1]
    n, spacing_rc, origin = 5, (0.9, 0.7), np.array([-120.0, 40.0, 310.0])
    step = 2.0 * np.cross(u, v) + 0.25 * v  # tilted gantry: slices shift along the columns
    positions = [origin + k * step for k in range(n)]
    stored = rng.integers(0, 4000, size=(n, 9, 11))
    slopes, intercepts = [1.0, 0.5, 2.0, 1.0, 0.5], [-1024.0, -1000.0, -1024.0, 0.0, -512.0]
    # files in reverse anatomical order (last slice first in position order), names shuffled
    write_slices(tmp_path / "case" / "s", stored[::-1], np.r_[u, v], positions[::-1], spacing_rc, slopes[::-1],
                  intercepts[::-1], seed=1)
    hu = (stored * np.array(slopes)[:, None, None] + np.array(intercepts)[:, None, None]).astype(np.float32)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = u * spacing_rc[1], v * spacing_rc[0], step, origin
    ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    nib.save(nib.Nifti1Image(hu.transpose(2, 1, 0), ras), tmp_path / "same.nii.gz")  # [c, r, k]

    from_dicom, dicom_affine = load_dicom_series(tmp_path / "case")
    from_nifti, nifti_affine = load_ct(tmp_path / "same.nii.gz")
    assert from_dicom.dtype == np.float32
    np.testing.assert_array_equal(from_dicom, from_nifti)
    np.testing.assert_allclose(dicom_affine, nifti_affine, atol=1e-6)


def _one_slice_series(folder: Path, seed: int = 0) -> list[Path]:
    stored = np.random.default_rng(seed).integers(0, 100, size=(3, 4, 5))
    positions = [[0.0, 0.0, 2.0 * k] for k in range(3)]
    return write_slices(folder, stored, [1, 0, 0, 0, 1, 0], positions, (1.0, 1.0), [1] * 3, [0] * 3, seed)


def _write_report_without_pixels(path: Path) -> None:
    """A valid DICOM object without pixel data (a structured report) of its own series."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality = generate_uid(), generate_uid(), "SR"
    ds.save_as(path, enforce_file_format=True)


def test_dicom_errors_name_the_folder_or_file(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no DICOM images .* under .*empty"):
        load_dicom_series(tmp_path / "empty")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "IM0001.dcm").write_text("not DICOM")
    with pytest.raises(DataError, match="no DICOM images .* under .*text"):
        load_dicom_series(tmp_path / "text")

    _one_slice_series(tmp_path / "two" / "ct")
    _one_slice_series(tmp_path / "two" / "other", seed=1)
    with pytest.raises(DataError, match=r"two holds 2 DICOM series \(.*3 images in ct\); .*3 images in other\)\)"):
        load_dicom_series(tmp_path / "two")

    files = _one_slice_series(tmp_path / "corrupt" / "s")
    _write_report_without_pixels(tmp_path / "corrupt" / "s" / "SR0001.dcm")  # ignored, as before
    assert load_dicom_series(tmp_path / "corrupt")[0].shape == (5, 4, 3)
    broken = sorted(files)[1]
    broken.write_bytes(broken.read_bytes()[:-10])  # pixel data cut short: no slice may go missing
    with pytest.raises(DataError, match=f"cannot read DICOM file {re.escape(str(broken))}"):
        load_dicom_series(tmp_path / "corrupt")


def test_prepare_mixes_dicom_and_nifti_cases(tmp_path: Path) -> None:
    volume = _lps_volume((24, 20, 6), seed=1)
    volume[10:16, 8:12, 2:5] = 40.0
    lab = np.zeros(volume.shape, np.uint8)
    lab[10:16, 8:12, 2:5] = 1
    spacing_rc, origin = (0.8, 0.6), np.array([0.0, 0.0, 0.0])
    images, labels = tmp_path / "images", tmp_path / "labels"
    write_dicom_series(images / "PANCREAS_0001" / "a" / "b", volume, spacing_rc, origin, 2.0)
    ras = np.diag([-0.6, -0.8, 2.0, 1.0])
    labels.mkdir()
    nib.save(nib.Nifti1Image(lab, ras), labels / "label0001.nii.gz")
    nib.save(nib.Nifti1Image(volume, ras), images / "0002.nii")
    nib.save(nib.Nifti1Image(lab, ras), labels / "label0002.nii.gz")
    cases, rejected, _ = find_cases(images, labels)
    assert [(c.number, c.kind) for c in cases] == [(1, "dicom"), (2, "nifti")] and not rejected
    report = prepare_nih(images, labels, tmp_path / "out", val_cases=[2], progress=False)
    assert report.cases == {"train": [1], "val": [2]} and not report.skipped
    for split in ("train", "val"):
        names = _names(tmp_path / "out", split)
        assert len(names) == 3
        for name in names:
            image = skio.imread(tmp_path / "out" / split / "images" / f"{name}.png")
            mask = skio.imread(tmp_path / "out" / split / "masks" / f"{name}.png")
            assert image.shape == mask.shape == (112, 176)
            assert (mask > 0).sum() == 24  # the 6 x 4 block
    # the same volume read from DICOM (case 1) and NIfTI (case 2) gives the same pairs
    for name in _names(tmp_path / "out", "train"):
        twin = name.replace("case0001", "case0002")
        for sub in ("images", "masks"):
            np.testing.assert_array_equal(
                skio.imread(tmp_path / "out" / "train" / sub / f"{name}.png"),
                skio.imread(tmp_path / "out" / "val" / sub / f"{twin}.png"),
            )


# ------------------------------------------------------------------ the driver


def test_outputs_have_the_crop_size_and_binary_masks(prepared: tuple[Path, object]) -> None:
    out, report = prepared
    assert not report.skipped and report.used == list(range(1, N_CASES + 1))
    total = 0
    for split in ("train", "val"):
        names = _names(out, split)
        assert names and len(names) == report.slices[split]
        for name in names:
            assert name.startswith("case00") and "_z" in name
            image = skio.imread(out / split / "images" / f"{name}.png")
            mask = skio.imread(out / split / "masks" / f"{name}.png")
            assert image.shape == mask.shape == (112, 176)
            assert image.dtype == mask.dtype == np.uint8
            assert set(np.unique(mask)) <= {0, 255} and mask.any()
        total += len(names)
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["size"] == [112, 176] and manifest["window_hu"] == [0.0, 255.0]
    assert manifest["split"] == "patient" and manifest["seed"] == 0 and manifest["skipped"] == []
    assert manifest["cases"] == report.cases and sum(manifest["slices"].values()) == total


def test_patient_split_keeps_patients_apart(prepared: tuple[Path, object]) -> None:
    out, report = prepared
    train = {n.split("_")[0] for n in _names(out, "train")}
    val = {n.split("_")[0] for n in _names(out, "val")}
    assert train and val and not train & val
    assert len(report.cases["val"]) == round(0.2 * N_CASES)
    assert {f"case{n:04d}" for n in report.cases["val"]} == val


def test_patient_split_is_deterministic_and_explicit(source: Path, tmp_path: Path) -> None:
    a = prepare_nih(source / "images", source / "labels", tmp_path / "a", seed=5, progress=False)
    b = prepare_nih(source / "images", source / "labels", tmp_path / "b", seed=5, progress=False)
    assert a.cases == b.cases and _names(tmp_path / "a", "val") == _names(tmp_path / "b", "val")
    c = prepare_nih(source / "images", source / "labels", tmp_path / "c", val_cases=[2, 4], progress=False)
    assert c.cases == {"train": [1, 3, 5, 6], "val": [2, 4]}
    with pytest.raises(ConfigError, match="99"):
        prepare_nih(source / "images", source / "labels", tmp_path / "d", val_cases=[99])
    with pytest.raises(ConfigError):
        prepare_nih(source / "images", source / "labels", tmp_path / "d", split="slice", val_cases=[1])


def test_slice_split(source: Path, prepared: tuple[Path, object], tmp_path: Path) -> None:
    report = prepare_nih(source / "images", source / "labels", tmp_path / "s", split="slice", seed=1, progress=False)
    total = sum(prepared[1].slices.values())
    assert sum(report.slices.values()) == total
    assert report.slices["val"] == round(0.2 * total)
    train, val = set(_names(tmp_path / "s", "train")), set(_names(tmp_path / "s", "val"))
    assert not train & val and len(train | val) == total
    # random slices across patients: more patients in val than a patient split would give
    assert len({n.split("_")[0] for n in val}) > 1
    again = prepare_nih(source / "images", source / "labels", tmp_path / "t", split="slice", seed=1, progress=False)
    assert set(_names(tmp_path / "t", "val")) == val and again.slices == report.slices


def test_bad_cases_are_skipped_and_named(source: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(source, src)
    (src / "labels" / "label0002.nii.gz").unlink()
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5), np.uint8), np.eye(4)), src / "labels" / "label0003.nii.gz")
    empty = nib.load(src / "labels" / "label0004.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(empty.shape, np.uint8), empty.affine), src / "labels" / "label0004.nii.gz")
    (src / "images" / "PANCREAS_0005.nii.gz").write_bytes(b"this is not a NIfTI file")
    report = prepare_nih(src / "images", src / "labels", tmp_path / "out", progress=False)
    assert report.used == [1, 6]
    reasons = dict(report.skipped)
    assert set(reasons) == {f"PANCREAS_000{n}.nii.gz" for n in (2, 3, 4, 5)}
    assert "no label" in reasons["PANCREAS_0002.nii.gz"]
    assert "shape" in reasons["PANCREAS_0003.nii.gz"]
    assert "empty label" in reasons["PANCREAS_0004.nii.gz"]
    assert "unreadable" in reasons["PANCREAS_0005.nii.gz"]
    assert "4 skipped" in report.summary() and "2 of 6 cases used" in report.summary()
    manifest = json.loads((tmp_path / "out" / "prepare.json").read_text())
    assert {s["case"] for s in manifest["skipped"]} == set(reasons)
    cases = {n.split("_")[0] for s in ("train", "val") for n in _names(tmp_path / "out", s)}
    assert cases == {"case0001", "case0006"}


def test_all_bad_raises_data_error(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    (images / "PANCREAS_0001.nii.gz").write_bytes(b"garbage")
    (images / "0002.nii").write_bytes(b"garbage")
    with pytest.raises(DataError, match="PANCREAS_0001.nii.gz"):
        prepare_nih(images, labels, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    with pytest.raises(DataError, match="no CT volumes"):
        prepare_nih(labels, labels, tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="does not exist"):
        prepare_nih(tmp_path / "missing", labels, tmp_path / "out", progress=False)


# ------------------------------------------------------------------ the command line


def test_cli_synthetic(tmp_path: Path) -> None:
    out = tmp_path / "nih"
    result = subprocess.run(
        [
            sys.executable,
            str(CLI),
            "--synthetic",
            "--synthetic-cases",
            "3",
            "--synthetic-shape",
            "64",
            "64",
            "12",
            "--out",
            str(out),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "nih-synthetic-source" / "images" / "PANCREAS_0003.nii.gz").is_file()
    assert "3 of 3 cases used" in result.stdout and str(out) in result.stdout
    assert _names(out, "train") and _names(out, "val")
    image = skio.imread(next((out / "val" / "images").glob("*.png")))
    assert image.shape == (112, 176)


def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(CLI),
            "--images",
            str(tmp_path / "nope"),
            "--labels",
            str(tmp_path),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_prints_skipped_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("nih_prepare_cli", CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    src = write_synthetic_nih(tmp_path / "src", 3, (40, 40, 10), seed=0)
    (src / "labels" / "label0002.nii.gz").unlink()
    code = module.main(
        [
            "--images",
            str(src / "images"),
            "--labels",
            str(src / "labels"),
            "--out",
            str(tmp_path / "out"),
            "--no-progress",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    assert "warning: skipped PANCREAS_0002.nii.gz: no label" in captured.err
    assert "train: 1 cases" in captured.out and "val: 1 cases" in captured.out
    assert module.main(["--labels", str(src)]) == 2
    assert capsys.readouterr().err.startswith("error: give --images")


def test_find_cases_same_folder_and_duplicates(source: Path, tmp_path: Path) -> None:
    both = tmp_path / "both"
    shutil.copytree(source / "images", both)
    for label in (source / "labels").iterdir():
        shutil.copy(label, both / label.name)
    (both / "PANCREAS_0003").mkdir()  # a second source for case 3
    cases, rejected, notes = find_cases(both, both)
    assert [c.number for c in cases] == [1, 2, 4, 5, 6] and all(c.label for c in cases)
    assert len(rejected) == 1 and "several CT sources" in rejected[0][1] and notes == []
    report = prepare_nih(both, both, tmp_path / "out", val_cases=[1], progress=False)
    assert report.used == [1, 2, 4, 5, 6] and "PANCREAS_0003" in report.skipped[0][0]
