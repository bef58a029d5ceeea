"""The SCGM reader (unet.data.gm), the synthetic release and the gm_prepare command."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from unet.data.gm import GMDataset, load_subject_slices, resampled_shape, scan_release
from unet.errors import DataError, MissingDataError
from unet.prep.gm import check_release, inspect_release, write_synthetic_release

REPO = Path(__file__).resolve().parents[2]
ZOOMS = (0.5, 0.8, 5.0)
SHAPE = (40, 30, 4)  # resampled in-plane: 40 * 0.5 / 0.25 = 80, 30 * 0.8 / 0.25 = 96


def _affine(zooms=ZOOMS) -> np.ndarray:
    """Non-identity affine: a rotation about z, axis flips and an offset; column norms = zooms."""
    t = np.deg2rad(10.0)
    rot = np.array([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-zooms[0], zooms[1], -zooms[2]])
    affine[:3, 3] = [12.0, -30.5, 40.0]
    return affine


def _volumes(shape=SHAPE, empty_slices=(0,)) -> tuple[np.ndarray, np.ndarray]:
    """An image with a bright disc and its mask; the listed slices have an empty mask."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    disc = (x - shape[0] / 2) ** 2 + (y - shape[1] / 2) ** 2 <= 36
    image = np.zeros(shape, dtype=np.float32)
    mask = np.zeros(shape, dtype=np.uint8)
    for z in range(shape[2]):
        image[:, :, z] = 100.0 + 50.0 * disc + z
        if z not in empty_slices:
            mask[:, :, z] = disc
    return image, mask


def _write_subject(root: Path, site: int, sc: int, raters=(1, 2, 3, 4), shape=SHAPE, **kw) -> None:
    image, mask = _volumes(shape, **kw)
    root.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image, _affine()), root / f"site{site}-sc{sc:02d}-image.nii.gz")
    for r in raters:
        nib.save(nib.Nifti1Image(mask, _affine()), root / f"site{site}-sc{sc:02d}-mask-r{r}.nii.gz")


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """Two sites, subjects 01-03 and 09; slice 0 of every subject has an empty mask."""
    root = tmp_path_factory.mktemp("release")
    for site in (1, 2):
        for sc in (1, 2, 3, 9):
            _write_subject(root, site, sc)
    (root / "site1-sc01-levels.txt").write_text("ignored\n")
    return root


def _dataset(root, subjects, sites=None, drop_empty=True, augment=False, crop=(64, 64)):
    return GMDataset(root, subjects, sites, drop_empty, crop, "instance", augment, progress=False)


# ----------------------------------------------------------------------------- reader


def test_scan_release_lists_subjects_and_raters(release):
    subjects = scan_release(release)
    assert [(s.site, s.subject) for s in subjects] == [
        (1, 1), (1, 2), (1, 3), (1, 9), (2, 1), (2, 2), (2, 3), (2, 9)
    ]
    assert [r for r, _ in subjects[0].masks] == [1, 2, 3, 4]
    assert subjects[0].name == "site1-sc01"


def test_resampled_shape_follows_header_zooms(release):
    subject = scan_release(release)[0]
    assert nib.load(subject.image).header.get_zooms()[:2] == pytest.approx(ZOOMS[:2])
    samples = load_subject_slices(subject, resolution_mm=0.25)
    expected = (round(SHAPE[0] * ZOOMS[0] / 0.25), round(SHAPE[1] * ZOOMS[1] / 0.25))
    assert expected == (80, 96) == resampled_shape(SHAPE[:2], ZOOMS[:2], 0.25)
    image, mask, name = samples[4]
    assert image.shape == mask.shape == expected
    assert image.dtype == np.float32 and mask.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}
    assert name == "site1-sc01-r1-z001"
    # the disc (radius 6 px along both axes) covers ~ pi * (6 * 0.5 / 0.25) * (6 * 0.8 / 0.25) px
    area = np.pi * 12 * 19.2
    assert abs(int(mask.sum()) - area) / area < 0.1
    # intensities are the file's (linear interpolation keeps the range)
    assert 100.0 <= image.min() and image.max() <= 151.0


def test_every_rater_is_a_sample(release):
    samples = load_subject_slices(scan_release(release)[0])
    assert len(samples) == SHAPE[2] * 4
    names = [n for _, _, n in samples[:4]]
    assert names == [f"site1-sc01-r{r}-z000" for r in (1, 2, 3, 4)]
    # the four raters of one slice share the same image
    assert all(np.array_equal(samples[0][0], s[0]) for s in samples[:4])


def test_subject_and_site_split(release):
    ds = _dataset(release, [9], drop_empty=False)
    assert ds.subjects == ["site1-sc09", "site2-sc09"]
    assert len(ds) == 2 * SHAPE[2] * 4
    assert {ds.sample_name(i).split("-r")[0] for i in range(len(ds))} == {
        "site1-sc09", "site2-sc09"
    }
    ds = _dataset(release, [1, 2], sites=[2], drop_empty=False)
    assert ds.subjects == ["site2-sc01", "site2-sc02"]
    with pytest.raises(DataError, match="site"):
        _dataset(release, [1], sites=[3])
    with pytest.raises(DataError, match="none of the subjects"):
        _dataset(release, [7])


def test_empty_slice_filter_train_drops_val_keeps(release):
    train = _dataset(release, [1, 2, 3], drop_empty=True)
    val = _dataset(release, [1, 2, 3], drop_empty=False)
    assert len(val) == 2 * 3 * SHAPE[2] * 4
    assert len(train) == 2 * 3 * (SHAPE[2] - 1) * 4  # slice 0 has an empty mask
    assert not any(train.sample_name(i).endswith("z000") for i in range(len(train)))
    assert any(val.sample_name(i).endswith("z000") for i in range(len(val)))


def test_getitem_shapes_crop_and_normalization(release):
    ds = _dataset(release, [1], crop=(64, 112))
    image, mask = ds[0]
    assert image.shape == mask.shape == (1, 64, 112)  # 80 x 96 cropped to 64, padded to 112
    assert image.dtype == mask.dtype == torch.float32
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert abs(float(image.mean())) < 1e-4 and abs(float(image.std()) - 1.0) < 1e-2
    assert ds.sample_name(0) == "site1-sc01-r1-z001"


def test_augmentation_is_repeatable_from_torch_seed(release):
    ds = _dataset(release, [1], augment=True)
    torch.manual_seed(3)
    first = [ds[i] for i in range(4)]
    torch.manual_seed(3)
    second = [ds[i] for i in range(4)]
    for (a, b), (c, d) in zip(first, second, strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)
    assert set(torch.unique(first[0][1]).tolist()) <= {0.0, 1.0}


def test_dataloader_workers_are_repeatable(release):
    ds = _dataset(release, [1], augment=True)

    def run():
        loader = torch.utils.data.DataLoader(
            ds, batch_size=4, num_workers=2, generator=torch.Generator().manual_seed(5)
        )
        return [batch[0] for batch in loader]

    assert all(torch.equal(a, b) for a, b in zip(run(), run(), strict=True))


# ----------------------------------------------------------------------------- errors


def test_missing_or_empty_folder(tmp_path):
    with pytest.raises(MissingDataError):
        scan_release(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingDataError):
        scan_release(tmp_path / "empty")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("x")
    with pytest.raises(MissingDataError, match="no SCGM files"):
        scan_release(tmp_path / "other")


def test_image_without_mask(tmp_path):
    _write_subject(tmp_path, 1, 1)
    _write_subject(tmp_path, 1, 11, raters=())
    with pytest.raises(DataError, match="site1-sc11-image.nii.gz: image volume without any mask"):
        scan_release(tmp_path)


def test_mask_without_image(tmp_path):
    _write_subject(tmp_path, 1, 1)
    _write_subject(tmp_path, 1, 2)
    (tmp_path / "site1-sc02-image.nii.gz").unlink()
    with pytest.raises(DataError, match="site1-sc02-mask-r1.nii.gz: mask without its image"):
        scan_release(tmp_path)


def test_4d_image(tmp_path):
    _write_subject(tmp_path, 1, 1)
    nib.save(
        nib.Nifti1Image(np.zeros(SHAPE + (3,), np.float32), _affine()),
        tmp_path / "site1-sc01-image.nii.gz",
    )
    with pytest.raises(DataError, match=r"site1-sc01-image.nii.gz: expected a 3-D volume"):
        load_subject_slices(scan_release(tmp_path)[0])


def test_mask_shape_mismatch(tmp_path):
    _write_subject(tmp_path, 1, 1)
    nib.save(
        nib.Nifti1Image(np.zeros((40, 31, 4), np.uint8), _affine()),
        tmp_path / "site1-sc01-mask-r3.nii.gz",
    )
    with pytest.raises(DataError, match=r"site1-sc01-mask-r3.nii.gz: mask shape"):
        load_subject_slices(scan_release(tmp_path)[0])


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_file(tmp_path, damage):
    _write_subject(tmp_path, 1, 1)
    path = tmp_path / "site1-sc01-mask-r2.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a nifti file")
    with pytest.raises(DataError, match=r"site1-sc01-mask-r2.nii.gz: cannot read NIfTI"):
        load_subject_slices(scan_release(tmp_path)[0])


def test_empty_after_filtering(tmp_path):
    _write_subject(tmp_path, 1, 1, empty_slices=range(SHAPE[2]))
    with pytest.raises(DataError, match="no slices left after filtering"):
        _dataset(tmp_path, [1], drop_empty=True)
    assert len(_dataset(tmp_path, [1], drop_empty=False)) == SHAPE[2] * 4


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("syn") / "gm"
    return write_synthetic_release(out, sites=(1, 3), subjects=range(1, 11), n_slices=4, size=48)


def test_synthetic_release_reads_and_splits(synthetic):
    subjects = scan_release(synthetic)
    assert len(subjects) == 20 and all(len(s.masks) == 4 for s in subjects)
    header = nib.load(subjects[-1].image).header
    assert header.get_zooms() == pytest.approx((0.3, 0.3, 2.5))
    assert not np.allclose(nib.load(subjects[0].image).affine, np.diag(list(header.get_zooms()) + [1]))
    train = _dataset(synthetic, list(range(1, 9)), drop_empty=True, crop=(96, 96))
    val = _dataset(synthetic, [9, 10], drop_empty=False, crop=(96, 96))
    assert len(train) == 2 * 8 * 2 * 4  # 4 slices, the two end slices have no grey matter
    assert len(val) == 2 * 2 * 4 * 4
    masks = [val[i][1] for i in range(len(val))]
    assert sum(bool(m.any()) for m in masks) == 2 * 2 * 2 * 4
    # raters differ, but only by about a pixel
    a, b = train[0][1], train[1][1]
    assert not torch.equal(a, b)
    inter = float((a * b).sum())
    assert 2 * inter / float(a.sum() + b.sum()) > 0.6


def test_synthetic_is_deterministic(tmp_path):
    a = write_synthetic_release(tmp_path / "a", sites=(2,), subjects=[9], n_slices=3, size=40)
    b = write_synthetic_release(tmp_path / "b", sites=(2,), subjects=[9], n_slices=3, size=40)
    for name in ("site2-sc09-image.nii.gz", "site2-sc09-mask-r4.nii.gz"):
        assert np.array_equal(nib.load(a / name).get_fdata(), nib.load(b / name).get_fdata())


def test_check_release_reports_problems(synthetic, tmp_path):
    text = check_release(synthetic)
    assert "sites: 1, 3" in text and "problems: none" in text and "usable: yes" in text
    assert "raters per subject: 4" in text and "0.3 x 0.3 x 2.5" in text
    _write_subject(tmp_path, 1, 1)
    _write_subject(tmp_path, 1, 9, raters=(1, 2))
    _write_subject(tmp_path, 1, 12, raters=())
    (tmp_path / "site1-sc01-mask-r1.nii.gz").write_bytes(b"junk")
    report = inspect_release(tmp_path)
    assert not report.usable
    assert len(report.problems) == 2
    assert any("2 rater mask(s)" in w for w in report.warnings)


# ----------------------------------------------------------------------------- command line


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO / "preprocessing" / "gm_prepare.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_synthetic_then_release(tmp_path):
    out = tmp_path / "gm"
    proc = _cli("--synthetic", "--out", str(out), "--sites", "1", "--slices", "3", "--size", "40")
    assert proc.returncode == 0, proc.stderr
    assert "synthetic" in proc.stdout and "usable: yes" in proc.stdout
    assert (out / "site1-sc10-mask-r4.nii.gz").is_file()
    proc = _cli("--release", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "site 1: 10 subjects" in proc.stdout and "problems: none" in proc.stdout


def test_cli_bad_folder_exits_2_with_one_line(tmp_path):
    proc = _cli("--release", str(tmp_path / "missing"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "missing" in lines[0]
    assert "Traceback" not in proc.stderr


def test_cli_unusable_release_exits_2(tmp_path):
    _write_subject(tmp_path, 1, 1)
    _write_subject(tmp_path, 1, 9)
    (tmp_path / "site1-sc09-image.nii.gz").write_bytes(b"junk")
    proc = _cli("--release", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "site1-sc09-image.nii.gz" in proc.stderr and "problems (1)" in proc.stdout
