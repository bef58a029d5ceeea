"""Image files in and out (predict reads its inputs and writes its masks here; preparation reads its pairs):

Kinds (by file name): ``png`` (2-D), ``tiff`` (``.tif``/``.tiff``: one page is a 2-D image,
several pages a stack, as the ISBI 2012 release), ``nifti`` (``.nii``, ``.nii.gz``) and
``dicom`` (a folder holding one DICOM series, searched recursively). Readers only read and
raise :class:`unet.errors.DataError` naming the file; writers write atomically
(:mod:`unet.fileio`), so an interrupted run never leaves an output that looks finished.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from unet.errors import DataError
from unet.fileio import atomic_path
from unet.nifti_check import check_nifti

NIFTI_SUFFIXES = (".nii.gz", ".nii")
TIFF_SUFFIXES = (".tif", ".tiff")
PNG_SUFFIXES = (".png",)
SUPPORTED = "PNG, TIFF (2-D or multi-page), NIfTI (.nii, .nii.gz) and DICOM series folders"
#: ITU-R BT.601 luma weights used to turn a colour image grey.
LUMA = (0.299, 0.587, 0.114)


@dataclass(frozen=True)
class InputItem:
    """One thing to predict: ``path`` of ``kind`` (png, tiff, nifti, dicom), shown as ``name``."""

    name: str
    path: Path
    kind: str

    @property
    def mask_name(self) -> str:
        """File name of the mask: the input's own name; ``NAME.nii.gz`` for a DICOM folder."""
        return f"{self.name}.nii.gz" if self.kind == "dicom" else self.path.name

    @property
    def probability_name(self) -> str:
        """File name of the probability map: float32 NIfTI for volumes, float32 TIFF for images."""
        if self.kind == "png":
            return f"{self.path.name[: -len('.png')]}.tif"
        return self.mask_name


def kind_of(path: Path) -> str | None:
    """``png``, ``tiff`` or ``nifti`` from the file name (any case), else None."""
    lower = path.name.lower()
    if lower.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if lower.endswith(TIFF_SUFFIXES):
        return "tiff"
    if lower.endswith(PNG_SUFFIXES):
        return "png"
    return None


def is_dicom_file(path: Path) -> bool:
    """Whether ``path`` is a DICOM Part 10 file: ``.dcm`` suffix or ``DICM`` at byte 128."""
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def find_inputs(path: str | Path) -> tuple[list[InputItem], list[Path]]:
    """The inputs under ``path`` and the files skipped for an unsupported type.

    A file is one input. In a folder (not recursive, hidden entries ignored): every PNG, TIFF
    and NIfTI file is an input, every subfolder is a DICOM series (searched recursively), and
    DICOM files lying directly in the folder make the folder itself one series. Inputs are
    sorted by name. Raises :class:`DataError` for a missing path, a single file of an
    unsupported type, or a folder with nothing to predict (listing what it holds).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"input {path} does not exist")
    if not path.is_file() and not path.is_dir():
        raise DataError(f"input {path} is not a regular file or a folder ({special_kind(path)}); give an image, a "
                        "volume or a folder of them")
    if path.is_file():
        kind = kind_of(path)
        if kind is None:
            hint = "; give the folder of its DICOM series" if is_dicom_file(path) else ""
            raise DataError(f"input {path}: unsupported file type (supported: {SUPPORTED}){hint}")
        return [InputItem(_stem(path), path, kind)], []
    items: list[InputItem] = []
    unsupported: list[Path] = []
    dicom_here = False
    for entry in sorted(p for p in path.iterdir() if not p.name.startswith(".")):
        if not entry.is_dir() and not entry.is_file():  # a FIFO, socket or device: never opened (it could block)
            unsupported.append(entry)
        elif entry.is_dir():
            items.append(InputItem(entry.name, entry, "dicom"))
        elif (kind := kind_of(entry)) is not None:
            items.append(InputItem(_stem(entry), entry, kind))
        elif is_dicom_file(entry):
            dicom_here = True
        else:
            unsupported.append(entry)
    if dicom_here:
        items.insert(0, InputItem(path.resolve().name, path, "dicom"))
    if not items:
        if unsupported:
            names = ", ".join(p.name for p in unsupported[:5]) + (" ..." if len(unsupported) > 5 else "")
            raise DataError(f"input folder {path} holds no file to predict (found {names}; supported: {SUPPORTED})")
        raise DataError(f"input folder {path} is empty; put the images or volumes to segment in it")
    return items, unsupported


def special_kind(path: Path) -> str:
    """What a path that is neither a regular file nor a folder is: ``a named pipe (FIFO)``, ..."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken link"
    for test, name in ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def _stem(path: Path) -> str:
    lower = path.name.lower()
    for suffix in (*NIFTI_SUFFIXES, *TIFF_SUFFIXES, *PNG_SUFFIXES):
        if lower.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


# --------------------------------------------------------------------------- 2-D images, stacks


@dataclass
class ImageStack:
    """A 2-D image (``stack`` False, N = 1) or a TIFF stack as ``pixels`` (N, H, W), stored dtype."""

    pixels: np.ndarray
    stack: bool
    warnings: list[str] = field(default_factory=list)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def to_grey(pixels: np.ndarray, path: Path) -> tuple[np.ndarray, list[str]]:
    """Colour samples (last axis of 2-4) to grey, with the warnings to show.

    2 samples (grey + alpha): the grey one. 3 or 4 (RGB, RGBA; alpha dropped): the red
    channel when R = G = B everywhere (a grey image saved as colour), else
    ``rint(0.299 R + 0.587 G + 0.114 B)`` in the stored dtype, with a warning naming the file.
    """
    channels = pixels.shape[-1]
    if channels == 2:
        return pixels[..., 0], []
    rgb = pixels[..., :3]
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
        return rgb[..., 0], []
    grey = rgb.astype(np.float64) @ np.asarray(LUMA)
    if np.issubdtype(pixels.dtype, np.integer):
        info = np.iinfo(pixels.dtype)
        grey = np.clip(np.rint(grey), info.min, info.max)
    warning = (f"warning: {path} is a colour image; converted to grey ({LUMA[0]} R + {LUMA[1]} G + "
               f"{LUMA[2]} B) as the model was trained on grey images")
    return grey.astype(pixels.dtype), [warning]


def read_image(path: str | Path) -> ImageStack:
    """Read a PNG or TIFF as an :class:`ImageStack`.

    PNG (Pillow): one 2-D image, 1-, 8- or 16-bit grey or colour. TIFF (tifffile): the first
    series; axes ``YX`` is an image, one more leading axis (pages) a stack, an ``S`` axis
    colour samples (interleaved or planar). Colour is turned grey by :func:`to_grey`. Raises DataError for an
    unreadable file or another layout (e.g. a multi-channel hyperstack).
    """
    path = Path(path)
    kind = kind_of(path)
    try:
        if kind == "png":
            import imageio.v3 as iio

            pixels = np.asarray(iio.imread(path, plugin="pillow"))
            colour = pixels.ndim == 3
            leading = 0
        else:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes = series.axes
                pixels = np.asarray(series.asarray())
            colour = "S" in axes  # colour samples, interleaved (YXS) or in planes (SYX)
            if colour:
                pixels = np.moveaxis(pixels, axes.index("S"), -1)
            leading = len(axes) - 2 - int(colour)
    except Exception as exc:  # noqa: BLE001 - any decoder failure means an unreadable file
        raise DataError(f"cannot read {path} ({_reason(exc)}); the file is corrupt or not a {kind} image") from None
    if leading not in (0, 1) or pixels.ndim != 2 + leading + int(colour):
        raise DataError(f"{path} has array shape {pixels.shape}; expected a 2-D image or a stack of 2-D pages")
    warnings: list[str] = []
    if colour:
        if pixels.shape[-1] not in (2, 3, 4):
            raise DataError(f"{path} has {pixels.shape[-1]} colour samples per pixel; expected grey, RGB or RGBA")
        pixels, warnings = to_grey(pixels, path)
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    if not (np.issubdtype(pixels.dtype, np.integer) or np.issubdtype(pixels.dtype, np.floating)):
        raise DataError(f"{path} has pixel type {pixels.dtype}; expected integer or float grey levels")
    if min(pixels.shape[-2:]) < 1:
        raise DataError(f"{path} is an empty image (shape {pixels.shape})")
    stack = leading == 1
    return ImageStack(pixels if stack else pixels[np.newaxis], stack, warnings)


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W) image as a greyscale PNG, atomically."""
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, np.ascontiguousarray(image), extension=".png", plugin="pillow")


def write_tiff(path: Path, array: np.ndarray) -> None:
    """Write (H, W) or (N, H, W) grey pages (any dtype tifffile takes) as a TIFF, atomically."""
    import tifffile

    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.ascontiguousarray(array), photometric="minisblack")


# --------------------------------------------------------------------------- NIfTI


def read_nifti_header(path: str | Path) -> nib.spatialimages.SpatialImage:
    """The NIfTI image object of ``path`` (header and affine; data not read yet)."""
    try:
        img = nib.load(str(path))
    except Exception as exc:  # noqa: BLE001 - nibabel raises many types for a damaged file
        raise DataError(f"cannot read NIfTI file {path} ({type(exc).__name__}: {_reason(exc)})") from None
    check_nifti(path, img)
    return img


def nifti_bytes(array: np.ndarray, affine: np.ndarray, reference: nib.spatialimages.SpatialImage | None,
                gz: bool) -> bytes:
    """The file content of a NIfTI holding ``array`` (its dtype, no scaling).

    With ``reference`` (the input image) its header is copied, so the affine (sform and
    qform with their codes), voxel sizes, units and the NIfTI version are the input's; else a
    NIfTI-1 header with ``affine`` as sform and qform (code 1, scanner). ``gz``: gzip the bytes.
    """
    if reference is not None:
        klass = type(reference) if isinstance(reference, (nib.Nifti1Image, nib.Nifti2Image)) else nib.Nifti1Image
        header = reference.header.copy()
        image = klass(array, reference.affine, header)
        image.header.set_sform(reference.header.get_sform(), int(reference.header["sform_code"]))
        image.header.set_qform(reference.header.get_qform(), int(reference.header["qform_code"]))
    else:
        image = nib.Nifti1Image(array, affine)
        image.header.set_sform(affine, 1)
        image.header.set_qform(affine, 1)
    image.set_data_dtype(array.dtype)
    image.header.set_slope_inter(1.0, 0.0)
    data = image.to_bytes()
    return gzip.compress(data, compresslevel=1, mtime=0) if gz else data


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray,
                reference: nib.spatialimages.SpatialImage | None = None) -> None:
    """Write ``array`` as a NIfTI (``.nii.gz`` gzipped by name) atomically; see :func:`nifti_bytes`."""
    content = nifti_bytes(array, affine, reference, gz=path.name.lower().endswith(".gz"))
    with atomic_path(path) as tmp:
        tmp.write_bytes(content)


__all__ = ["ImageStack", "InputItem", "find_inputs", "is_dicom_file", "kind_of", "nifti_bytes",
           "read_image", "read_nifti_header", "to_grey", "write_nifti", "write_png", "write_tiff"]
