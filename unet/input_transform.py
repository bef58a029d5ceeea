"""The input-transform record: how a run turned raw data into what its model saw.

Every checkpoint carries a small JSON-able dict under ``"input_transform"`` so that the
prediction command (:mod:`unet.predict`) can take raw data as the public releases have it and
reproduce the training preprocessing exactly. The record is built from the run's config and,
when it exists, the prepared data's ``prepare.json`` (EM, NIH); a value that neither fixes is
stored as ``None`` and the predict command refuses the inputs that would need it.

Fields common to every dataset: ``dataset`` (``"EM"``, ``"GM"`` or ``"NIH"``), ``version``
(:data:`RECORD_VERSION`), ``window`` (the training crop ``[H, W]`` in pixels, the sliding
window's size), ``normalize`` (the config's ``normalize``: ``"none"`` or ``"instance"``,
applied per window after padding with 0, as training applied it per crop) and ``source``
(the ``prepare.json`` read, or ``None``); EM and NIH also ``data_name`` (the name the
preparation gave the data, ``--name``, or ``None``). Then per dataset:

* EM: ``resize_factor`` ``[fy, fx]``, prepared size / release size per axis
  (512 -> 256 gives ``[0.5, 0.5]``; ``[1.0, 1.0]`` when the preparation did not resize;
  ``None`` when unknown); the grey levels as the preparation scaled them (its
  ``prepare.json``, see :func:`unet.prep.em.choose_intensity`): ``intensity_scaling``
  (``"uint8"``: value / 255; ``"range"``: every file scaled from ``intensity_range``
  ``[lo, hi]`` to 0..255; ``"per-file"``: each non-uint8 file by its own min..max; ``None``:
  data prepared before the scaling was recorded, read as per-file), ``intensity_range``,
  ``intensity_dtypes`` (the pixel types the preparation met, or ``None``) and ``intensity``
  (the same in words).
* GM: ``resolution_mm`` (in-plane resampling target), ``slice_axis`` 2, ``interpolation``
  ``"linear"`` (header voxel sizes, pixel edges aligned), ``intensity`` ``"raw"``.
* NIH: ``orientation`` ``"RAS"`` (canonical voxel axes, axial slices along axis 2, shown rows
  anterior -> posterior and columns patient right -> left), ``window_hu`` ``[lo, hi]`` (or
  ``None``), ``intensity`` ``"rint(255 (clip(HU, lo, hi) - lo) / slice max) / 255"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import DataError

#: Version of the record layout; a reader refuses a newer one. 2: the EM intensity scaling
#: and range (a version-1 record is read as per-file scaling of non-uint8 inputs).
RECORD_VERSION = 2

DATASETS = ("EM", "GM", "NIH")

EM_INTENSITY = "uint8 / 255"
GM_INTENSITY = "raw"
NIH_INTENSITY = "rint(255 (clip(HU, lo, hi) - lo) / slice max) / 255"


def canonical_dataset_name(name: str) -> str:
    """``"em"``/``"EM"`` -> ``"EM"`` (likewise GM, NIH); DataError for anything else."""
    upper = str(name).upper()
    if upper not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    return upper


def read_prepare_manifest(dataset_path: str | Path | None) -> tuple[dict[str, Any] | None, Path | None]:
    """``(manifest, path)`` of ``dataset_path/prepare.json``, or ``(None, None)`` when the file
    is missing or unreadable (the record then leaves what it would have fixed as ``None``)."""
    if dataset_path is None:
        return None, None
    path = Path(dataset_path) / "prepare.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    return (manifest, path) if isinstance(manifest, dict) else (None, None)


def _em_resize_factor(manifest: Mapping[str, Any] | None) -> list[float] | None:
    """Prepared / release size per axis from an EM ``prepare.json``.

    ``resize`` null: ``[1, 1]``; ``resize`` r with ``input_shape`` ``[n, h, w]``:
    ``[r / h, r / w]`` (the preparation resizes every slice to r x r); otherwise unknown.
    """
    if manifest is None or "resize" not in manifest:
        return None
    resize = manifest["resize"]
    if resize is None:
        return [1.0, 1.0]
    shape = manifest.get("input_shape")
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and v > 0 for v in shape):
        return [float(resize) / shape[1], float(resize) / shape[2]]
    return None


def em_intensity(manifest: Mapping[str, Any] | None) -> dict[str, Any]:
    """The EM record's intensity fields from a ``prepare.json`` (see the module docstring)."""
    scaling = None if manifest is None else manifest.get("intensity_scaling")
    value_range = None if manifest is None else manifest.get("intensity_range")
    dtypes = None if manifest is None else manifest.get("intensity_dtypes")
    valid_range = (isinstance(value_range, list) and len(value_range) == 2
                   and all(isinstance(v, int | float) for v in value_range) and value_range[1] > value_range[0])
    if scaling == "range" and valid_range:
        lo, hi = (float(v) for v in value_range)
        words = f"rint(255 clip((v - {lo:g}) / ({hi:g} - {lo:g}), 0, 1)) / 255, every file"
        return {"intensity_scaling": "range", "intensity_range": [lo, hi], "intensity_dtypes": dtypes,
                "intensity": words}
    if scaling == "uint8":
        return {"intensity_scaling": "uint8", "intensity_range": [0.0, 255.0], "intensity_dtypes": dtypes,
                "intensity": EM_INTENSITY}
    if scaling == "per-file":
        return {"intensity_scaling": "per-file", "intensity_range": None, "intensity_dtypes": dtypes,
                "intensity": f"{EM_INTENSITY}, other pixel types min-max scaled per file"}
    return {"intensity_scaling": None, "intensity_range": None, "intensity_dtypes": None,
            "intensity": f"{EM_INTENSITY} (other pixel types min-max scaled per file: no range recorded)"}


def input_transform_record(cfg: Mapping[str, Any], dataset_name: str) -> dict[str, Any]:
    """The input-transform record of a run (see the module docstring for every field).

    ``cfg`` is the run's config (a :class:`unet.config.Config` or the plain dict a checkpoint
    stores); ``dataset_name`` the recipe's name (``"EM"``, ``"GM"``, ``"NIH"``, any case).
    Pure apart from reading ``dataset_path/prepare.json`` (EM, NIH) when it exists.
    """
    dataset = canonical_dataset_name(dataset_name)
    record: dict[str, Any] = {
        "dataset": dataset,
        "version": RECORD_VERSION,
        "window": [int(v) for v in cfg["crop_size"]],
        "normalize": str(cfg["normalize"]),
        "source": None,
    }
    if dataset == "GM":
        record.update(resolution_mm=float(cfg["resolution_mm"]), slice_axis=2, interpolation="linear",
                      intensity=GM_INTENSITY)
        return record
    manifest, path = read_prepare_manifest(cfg.get("dataset_path"))
    record["source"] = None if path is None else str(path)
    record["data_name"] = None if manifest is None or not manifest.get("name") else str(manifest["name"])
    if dataset == "EM":
        record.update(resize_factor=_em_resize_factor(manifest), **em_intensity(manifest))
    else:
        window = None if manifest is None else manifest.get("window_hu")
        valid = isinstance(window, list) and len(window) == 2 and float(window[1]) > float(window[0])
        record.update(orientation="RAS", window_hu=[float(v) for v in window] if valid else None,
                      intensity=NIH_INTENSITY)
    return record


__all__ = ["DATASETS", "RECORD_VERSION", "canonical_dataset_name", "em_intensity", "input_transform_record",
           "read_prepare_manifest"]
