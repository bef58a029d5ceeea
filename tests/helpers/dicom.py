"""CT series in the public release's DICOM format (one file per axial slice), written with pydicom:
the NIH readers' and predict's DICOM tests share them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np


def write_slices(
    folder: Path,
    stored: np.ndarray,
    iop: Sequence[float],
    positions: Sequence[Sequence[float]],
    spacing_rc: tuple[float, float],
    slopes: Sequence[float],
    intercepts: Sequence[float],
    seed: int = 0,
) -> list[Path]:
    """Write stored[k, r, c] (uint16) as one CT series, slice k at positions[k], with its own
    RescaleSlope/Intercept, in a shuffled file order beside a non-DICOM file; return the files."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    series, study = generate_uid(), generate_uid()
    order = np.random.default_rng(seed).permutation(len(stored))
    files = []
    for k in range(len(stored)):
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.Modality, ds.PatientID = "CT", "PANCREAS_0001"
        ds.ImageOrientationPatient = [f"{v:.10g}" for v in iop]
        ds.ImagePositionPatient = [f"{v:.10g}" for v in positions[k]]
        ds.PixelSpacing = list(spacing_rc)
        ds.SliceThickness = 2.5
        ds.Rows, ds.Columns = stored.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = f"{slopes[k]:.10g}", f"{intercepts[k]:.10g}"
        ds.PixelData = stored[k].astype("<u2").tobytes()
        files.append(folder / f"IM{order[k]:04d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    (folder / "README.txt").write_text("not a DICOM file\n")
    return files


def write_dicom_series(
    folder: Path, volume_lps: np.ndarray, spacing_rc: tuple[float, float], origin: np.ndarray, dz: float, seed: int = 0
) -> None:
    """Write volume_lps[c, r, k] (HU, even integers) as axial CT slices, in a shuffled file order."""
    n = volume_lps.shape[2]
    stored = ((volume_lps.transpose(2, 1, 0) + 1000) / 2).astype(np.uint16)  # [k, r, c]
    positions = [origin + np.array([0.0, 0.0, k * dz]) for k in range(n)]
    write_slices(folder, stored, [1, 0, 0, 0, 1, 0], positions, spacing_rc, [2] * n, [-1000] * n, seed)
