"""EM (ISBI 2012) preparation: TIFF stacks or PNG pairs in, the PNG-pair folder out.

The public ISBI 2012 training release is two 30-page TIFF stacks of 512 x 512 uint8 slices:
``train-volume.tif`` (serial-section electron microscopy) and ``train-labels.tif``
(255 = cell interior, 0 = membrane). The positive class is the cell interior, about 78% of the
pixels. Preparation resizes every slice to 256 x 256, centre-crops 200 x 200, splits by slice
(no slice in both sets; by default the last fifth, slices 24-29 of 30, is validation),
optionally adds seeded offline augmentations of the training slices, and writes the layout of
:mod:`unet.prep.pngpairs` atomically.

:func:`synthetic_em_stack` draws an EM-like stand-in in the same format, so the pipeline runs
without the public data.

Modules: :mod:`.stacks` (TIFF stacks), :mod:`.synthetic` (the stand-in), :mod:`.slices` (split,
resize, augmentation, labels, intensities), :mod:`.preparing` (the two preparations).
"""

from unet.transforms import to_uint8  # the input transform's grey levels (re-exported)

from .preparing import (
    PAIR_SUFFIXES,
    labels_to_mask,
    list_images,
    prepare_em,
    prepare_em_from_pairs,
    read_plane,
)
from .slices import (
    DEFAULT_VAL_FRACTION,
    INTENSITY_OPTIONS,
    INTENSITY_SCALINGS,
    ISBI_NAME,
    MAX_ROTATION_DEG,
    ORIGINS,
    SYNTHETIC_NAME,
    augment_pair,
    choose_intensity,
    default_name,
    default_val_slices,
    describe_intensity,
    is_isbi_release,
    label_hint,
    max_rotation,
    parse_index_list,
    resize_pair,
)
from .stacks import (
    read_tiff_stack,
    write_tiff_stack,
)
from .synthetic import (
    synthetic_em_stack,
)

__all__ = [
    "DEFAULT_VAL_FRACTION", "INTENSITY_OPTIONS", "INTENSITY_SCALINGS", "ISBI_NAME", "MAX_ROTATION_DEG", "ORIGINS",
    "PAIR_SUFFIXES", "SYNTHETIC_NAME", "augment_pair", "choose_intensity", "default_name", "default_val_slices",
    "describe_intensity", "is_isbi_release", "label_hint", "labels_to_mask", "list_images", "max_rotation",
    "parse_index_list", "prepare_em", "prepare_em_from_pairs", "read_plane", "read_tiff_stack", "resize_pair",
    "synthetic_em_stack", "to_uint8", "write_tiff_stack",
]
