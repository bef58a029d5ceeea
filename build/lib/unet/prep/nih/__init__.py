"""NIH Pancreas-CT preparation: CT volumes + pancreas labels -> PNG pairs (SPEC section 7).

Input (the TCIA release, or anything laid out the same way):

* an images folder holding one CT per case, either a NIfTI file (``PANCREAS_0001.nii.gz``,
  ``0001.nii.gz``, ``.nii`` also accepted) or a DICOM series folder whose name contains the
  case number (``PANCREAS_0001/``, nested subfolders allowed as in the TCIA download);
* a labels folder holding ``label0001.nii.gz`` (pancreas = non-zero).

Cases are matched by case number (the last run of digits in the name, as an int).

Processing, per case:

1. CT (HU) and label are reoriented to canonical RAS+ voxel axes (``nibabel``'s
   ``as_closest_canonical``): axis 0 runs towards the patient's Right, axis 1 towards
   Anterior, axis 2 towards Superior. CT and label are reoriented the same way, so equal
   indices are the same voxel.
2. Every axial slice ``z`` (canonical axis 2) whose label contains pancreas is turned into a
   display image (radiological convention, as a DICOM viewer shows a standard axial CT):
   rows run anterior -> posterior, columns run from the patient's right -> left
   (``display[r, c] = volume[X - 1 - c, Y - 1 - r, z]``), see :func:`axial_slice`.
3. Intensities: :func:`window_and_scale` (clip to the HU window, scale by the slice's max).
4. A ``size = (H, W)`` window (112 x 176 by default) centred on the median foreground pixel
   of the label is cut from image and label (:func:`crop_box`, :func:`extract_window`).
5. The pair is written as ``case0001_z045`` (``z`` = canonical slice index) in the PNG-pair
   format of :mod:`unet.prep.pngpairs`.

Finally the cases (``split="patient"``, default) or the slices (``split="slice"``, the
original's slice-level hold-out) are split into train and val, deterministically from the
seed. Cases that cannot be used (no label, unreadable file, shape mismatch, empty label)
are skipped and listed in the :class:`Report` and the manifest.

The package: :mod:`.reading` (NIfTI / DICOM to canonical RAS+), :mod:`.slicing` (axial slices,
window and scale, crop), :mod:`.preparing` (cases, split, manifest, report) and
:mod:`.synthetic` (the synthetic stand-in).
"""

from .preparing import Case, Report, case_number, find_cases, prepare_nih
from .reading import load_ct, load_dicom_series, load_label
from .slicing import DEFAULT_SIZE, DEFAULT_WINDOW, axial_slice, crop_box, extract_window, slice_pairs, window_and_scale
from .synthetic import synthetic_case, write_synthetic_nih

__all__ = [
    "DEFAULT_SIZE", "DEFAULT_WINDOW", "Case", "Report", "axial_slice", "case_number", "crop_box", "extract_window",
    "find_cases", "load_ct", "load_dicom_series", "load_label", "prepare_nih", "slice_pairs", "synthetic_case",
    "window_and_scale", "write_synthetic_nih",
]
