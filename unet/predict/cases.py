"""One input, ready to predict: read it, apply the dataset's forward transform, and know how
to map the probabilities back and write the outputs (the glue of :mod:`.io` and
:mod:`.transforms`).

Which inputs a model takes:

* EM: PNG / TIFF images and TIFF stacks at the release's pixel size (resized by the
  record's factor), or with ``prepared`` at the training pixel size (not resized).
* GM: NIfTI volumes at any voxel size (axial slices along axis 2, resampled in-plane).
* NIH: CT volumes in HU, NIfTI or a DICOM series folder (reoriented to RAS+, HU window,
  per-slice scaling); with ``prepared`` PNG / TIFF slices in the prepared format.

Every refusal is a :class:`unet.errors.DataError` naming the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from unet.errors import DataError
from unet.transforms import EMInput, GMInput, NIHInput

from .. import imageio
from . import transforms

#: A region of interest: per axis (start, stop) voxel indices, None = the axis's end.
Roi = Sequence[tuple[int | None, int | None]]


@dataclass
class Case:
    """An input read and transformed: ``slices`` for the model, ``finish`` mapping the model-grid
    probabilities back to the output grid, and the writers of mask and probability map."""

    item: imageio.InputItem
    slices: list[np.ndarray]
    finish: Callable[[list[np.ndarray]], np.ndarray]
    write_mask: Callable[[Path, np.ndarray], None]
    write_probability: Callable[[Path, np.ndarray], None]
    description: str
    warnings: list[str] = field(default_factory=list)


def _missing(record: dict[str, Any], key: str, what: str, hint: str) -> DataError:
    origin = ("its input_transform record" if not record.get("rebuilt")
              else "it has no input_transform record and its stored config")
    return DataError(f"the checkpoint's {what} is unknown ({origin} gives no '{key}'); {hint}")


#: ``--intensity`` of predict: ``training`` applies the checkpoint's recorded scaling,
#: ``per-file`` scales each non-uint8 file by its own min..max (uint8 files as they are).
INTENSITY_OPTIONS = ("training", "per-file")


def intensity_rule(record: dict[str, Any], dtype: np.dtype, path: Path,
                   option: str = "training") -> tuple[str, list[float] | None, list[str]]:
    """``(scaling, range, warnings)`` for an image of pixel type ``dtype`` under the checkpoint's
    ``record`` (see :mod:`unet.input_transform`) and the ``--intensity`` ``option``.

    ``training``: a recorded ``range`` is applied to every file (a warning when the file's type
    is not one the preparation met); a model trained on 8-bit data scales another type by the
    file's own min..max with a warning; a record without a scaling (data prepared before it was
    recorded) keeps that per-file behaviour with a note. ``per-file``: each file's own min..max.
    """
    dtype = np.dtype(dtype)
    if option == "per-file":
        return "per-file", None, []
    scaling = record.get("intensity_scaling")
    value_range = record.get("intensity_range")
    trained = record.get("intensity_dtypes") or []
    if scaling == "range" and value_range is not None:
        warnings = []
        if trained and str(dtype) not in trained:
            warnings.append(f"warning: {path} holds {dtype} pixels but the model was trained on {', '.join(trained)} "
                            f"images; scaled by the training range {value_range[0]:g}..{value_range[1]:g} "
                            "(--intensity per-file scales it by its own min..max)")
        return "range", [float(v) for v in value_range], warnings
    if dtype == np.uint8 or scaling == "per-file":
        return "per-file", None, []
    if scaling == "uint8":
        return "per-file", None, [f"warning: {path} holds {dtype} pixels but the model was trained on 8-bit images; "
                                  "scaled by the file's own min..max to 0..255"]
    if record.get("dataset") != "EM":
        return "per-file", None, []
    return "per-file", None, [f"note: the checkpoint records no training intensity range (its data was prepared "
                              f"before the range was recorded); {path} ({dtype}) is scaled by its own min..max as "
                              "before: prepare and train again to apply one range to every file"]


def _image_case(item: imageio.InputItem, factor: Sequence[float] | None, record: dict[str, Any],
                intensity: str = "training") -> Case:
    image = imageio.read_image(item.path)
    n, h, w = image.pixels.shape
    scaling, value_range, notes = intensity_rule(record, image.pixels.dtype, item.path, intensity)
    transform = EMInput(factor, scaling, value_range)
    slices = transform(image.pixels)
    stack = image.stack

    def finish(probs: list[np.ndarray]) -> np.ndarray:
        return transform.inverse(probs, (h, w))

    def write_mask(path: Path, mask: np.ndarray) -> None:
        grey = mask.astype(np.uint8) * np.uint8(255)
        if item.kind == "png":
            imageio.write_png(path, grey[0])
        else:
            imageio.write_tiff(path, grey if stack else grey[0])

    def write_probability(path: Path, prob: np.ndarray) -> None:
        imageio.write_tiff(path, prob if stack else prob[0])

    shape = f"{n} x {h} x {w} stack" if stack else f"{h} x {w} image"
    model_shape = "x".join(str(v) for v in slices[0].shape)
    return Case(item, slices, finish, write_mask, write_probability,
                f"{shape}, model slices {model_shape}", image.warnings + notes)


def _resolve_roi(roi: Roi, shape: Sequence[int], item: imageio.InputItem) -> list[tuple[int, int]]:
    box = []
    for axis, ((start, stop), n) in enumerate(zip(roi, shape, strict=True)):
        a = 0 if start is None else start
        b = n if stop is None else stop
        if not 0 <= a < b <= n:
            raise DataError(f"--roi axis {axis} range {a}:{b} is outside {item.path} (size {n} on that axis)")
        box.append((a, b))
    return box


def _nih_volume_case(item: imageio.InputItem, window_hu: Sequence[float], roi: Roi | None) -> Case:
    from unet.prep.nih import load_ct

    volume, affine = load_ct(item.path)  # canonical RAS+, HU; DICOM through load_dicom_series
    reference = None
    if item.kind == "nifti":
        reference = imageio.read_nifti_header(item.path)
        own_shape = tuple(reference.shape[:3])
        out_affine = reference.affine
    else:
        own_shape, out_affine = volume.shape, affine
    rows = cols = zs = None
    if roi is not None:
        box = _resolve_roi(roi, own_shape, item)
        if reference is not None:
            box = transforms.canonical_box(box, own_shape, reference.affine)
        rows, cols, zs = transforms.display_roi(box, volume.shape)
    transform = NIHInput(tuple(window_hu), rows, cols, zs)
    slices = transform(volume)

    def finish(probs: list[np.ndarray]) -> np.ndarray:
        canonical = transform.inverse(probs, volume.shape)
        if reference is None:
            return canonical
        return transforms.from_canonical(canonical, reference.affine).reshape(reference.shape)

    def write(path: Path, array: np.ndarray) -> None:
        imageio.write_nifti(path, array, out_affine, reference)

    grid = "RAS+ grid of the series" if reference is None else "the input's grid"
    description = (f"CT {'x'.join(map(str, volume.shape))} voxels, {len(slices)} axial slices"
                   f"{' in the ROI' if roi is not None else ''} -> {grid}")
    return Case(item, slices, finish, lambda p, m: write(p, m.astype(np.uint8)),
                lambda p, a: write(p, a.astype(np.float32)), description)


def _gm_case(item: imageio.InputItem, resolution_mm: float) -> Case:
    from unet.data.gm import load_volume

    volume, zooms = load_volume(item.path)
    reference = imageio.read_nifti_header(item.path)
    transform = GMInput(resolution_mm)
    slices = transform(volume, zooms)

    def finish(probs: list[np.ndarray]) -> np.ndarray:
        return transform.inverse(probs, volume.shape[:2]).reshape(reference.shape)

    def write(path: Path, array: np.ndarray) -> None:
        imageio.write_nifti(path, array, reference.affine, reference)

    description = (f"MRI {'x'.join(map(str, volume.shape))} voxels at {zooms[0]:.3g} x {zooms[1]:.3g} mm, "
                   f"slices resampled to {'x'.join(map(str, slices[0].shape))} at {resolution_mm} mm")
    return Case(item, slices, finish, lambda p, m: write(p, m.astype(np.uint8)),
                lambda p, a: write(p, a.astype(np.float32)), description)


def prepare_case(item: imageio.InputItem, record: dict[str, Any], prepared: bool, roi: Roi | None = None,
                 intensity: str = "training") -> Case:
    """Read ``item`` and transform it as the checkpoint's ``record`` says (see the module doc);
    ``intensity`` is the ``--intensity`` option of 2-D images (:func:`intensity_rule`).

    Raises :class:`DataError` naming the input when this model cannot take its kind, the
    record lacks a value the transform needs, or the file is unreadable.
    """
    dataset = record["dataset"]
    kind = item.kind
    images = kind in ("png", "tiff")
    if dataset == "EM":
        if not images:
            raise DataError(f"{item.path}: an EM model takes PNG or TIFF images and TIFF stacks, not {kind} input")
        factor = None
        if not prepared:
            factor = record.get("resize_factor")
            if factor is None:
                raise _missing(record, "resize_factor", "EM resize factor (release pixel size -> training "
                               "pixel size)", f"pass --prepared with images already at the training pixel "
                               f"size to predict {item.path}")
        return _image_case(item, factor, record, intensity)
    if dataset == "NIH":
        if prepared:
            if not images:
                raise DataError(f"{item.path}: --prepared takes PNG/TIFF slices as nih_prepare.py writes "
                                "them; drop --prepared to predict a CT volume")
            return _image_case(item, None, record, intensity)
        if images:
            raise DataError(f"{item.path}: an NIH model takes CT volumes in HU (NIfTI or a DICOM series "
                            "folder); for PNG slices in the prepared format pass --prepared")
        window = record.get("window_hu")
        if window is None:
            raise _missing(record, "window_hu", "HU window", "retrain with prepared data that has its "
                           "prepare.json, or pass --prepared with slices in the prepared format")
        return _nih_volume_case(item, window, roi)
    if kind != "nifti":
        raise DataError(f"{item.path}: a GM model takes NIfTI volumes (.nii, .nii.gz), not {kind} input")
    return _gm_case(item, float(record["resolution_mm"]))


__all__ = ["INTENSITY_OPTIONS", "Case", "Roi", "intensity_rule", "prepare_case"]
